"""Per-request ids (aigw.ids): the width asked for, lowercase hex, no repeats, and a forked child's differ."""

from __future__ import annotations

import os
import re

from aigw.ids import hex_id


def test_width_and_alphabet() -> None:
    for n in (1, 12, 16):
        for _ in range(200):
            assert re.fullmatch(f"[0-9a-f]{{{2 * n}}}", hex_id(n))


def test_no_repeats() -> None:
    ids = {hex_id(16) for _ in range(100_000)}
    assert len(ids) == 100_000


def test_a_forked_child_does_not_repeat_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, to the parent
        os.write(write, hex_id(16).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    assert len(child) == 32 and child != hex_id(16)
