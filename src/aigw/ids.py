"""Identifiers made per request (``x-request-id``, ``chatcmpl-…``): unique, not secret.

They came from ``os.urandom``, a system call each (two per request, measurable on the request path); a generator
seeded from it once per process (and again in a forked child) gives ids as unique, with no call into the kernel.
Nothing that must be unguessable (API keys, signing secrets) is made here.
"""

from __future__ import annotations

import os
import random

__all__ = ["hex_id"]

_rng = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _rng.seed(os.urandom(32)))


def hex_id(nbytes: int) -> str:
    """``nbytes`` random bytes as lowercase hex (2 * nbytes characters)."""
    return f"{_rng.getrandbits(nbytes * 8):0{nbytes * 2}x}"
