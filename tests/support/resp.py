"""Watching what the lean Redis client (aigw.state.resp) writes, for the tests of its coalescing."""

from __future__ import annotations

from typing import Any

from aigw.state.resp import RespClient


def record_writes(client: RespClient) -> list[tuple[int, bytes]]:
    """From now on, each write on the client's live connections, as (slot, bytes), in order. The default loop's
    transports take an instance attribute (uvloop's would not)."""
    writes: list[tuple[int, bytes]] = []
    for slot, conn in enumerate(client._slots):
        if conn is not None and conn.transport is not None:
            real = conn.transport.write

            def recording(data: bytes | bytearray | memoryview, real: Any = real, slot: int = slot) -> None:
                writes.append((slot, bytes(data)))
                real(data)

            conn.transport.write = recording  # type: ignore[method-assign]
    return writes
