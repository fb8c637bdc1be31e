"""A light closed-loop load generator (aiohttp): N requests at a fixed concurrency, latencies recorded.

``unique=True`` sends deterministic requests (``temperature: 0``, so cacheable) that each carry a nonce no other
request of this process has used, so every one is a response-cache miss that still does the lookup and the store.
The body is three pre-built byte strings around the nonce: building it costs one join per request.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from dataclasses import dataclass

import aiohttp

BODY = (
    b'{"model":"MODEL","messages":[{"role":"system","content":"You are terse."},'
    b'{"role":"user","content":"Say hello to the benchmark, please."}],"max_tokens":64}'
)
STREAM_BODY = BODY[:-1] + b',"stream":true}'
# The unique variant: temperature 0 (cacheable) and a nonce at the end of the user message.
_UNIQUE = (
    b'{"model":"MODEL","temperature":0,"messages":[{"role":"system","content":"You are terse."},'
    b'{"role":"user","content":"Say hello to the benchmark, please. #NONCE"}],"max_tokens":64}'
)
_RUN_TAG = f"{os.getpid():x}{time.time_ns():x}".encode()  # nonces differ between bench runs sharing a cache too
_nonces = itertools.count()


@dataclass
class Result:
    latencies: list[float]  # seconds per request (or to the first chunk, for ttfb runs)
    elapsed: float
    errors: int
    cpu_s: float | None = None  # the measured process's CPU over the run, where the caller measured it

    def pct(self, p: float) -> float:
        xs = sorted(self.latencies)
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, int(p / 100.0 * len(xs)))]

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    @property
    def count(self) -> int:
        """Requests sent, failed ones included."""
        return len(self.latencies) + self.errors


def _body_parts(model: str, stream: bool, unique: bool) -> tuple[bytes, bytes]:
    """(before the nonce, after it); for a non-unique body the whole body and nothing after."""
    if not unique:
        return (STREAM_BODY if stream else BODY).replace(b"MODEL", model.encode()), b""
    template = _UNIQUE[:-1] + b',"stream":true}' if stream else _UNIQUE
    head, tail = template.replace(b"MODEL", model.encode()).split(b"NONCE")
    return head + _RUN_TAG + b"-", tail


async def run(
    url: str, key: str, model: str, *, n: int, concurrency: int, stream: bool = False, unique: bool = False
) -> Result:
    head, tail = _body_parts(model, stream, unique)
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    latencies: list[float] = []
    errors = 0
    remaining = n
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                body = b"".join((head, str(next(_nonces)).encode(), tail)) if unique else head
                t0 = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as resp:
                    if stream:
                        first = await resp.content.readline()
                        ttfb = time.perf_counter() - t0
                        rest = await resp.read()
                        ok = resp.status == 200 and first.startswith(b"data: ") and rest.endswith(b"data: [DONE]\n\n")
                    else:
                        await resp.read()
                        ok = resp.status == 200
                if not ok:
                    errors += 1
                    continue
                latencies.append(ttfb if stream else time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return Result(latencies, elapsed, errors)
