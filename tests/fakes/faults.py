"""Fault injection and request recording shared by the fakes.

Faults are queued on a fake (``fake.inject(fault, times=n)``) and consumed one per request, first come first
served, skipping faults whose ``path`` filter does not match the request's path. Build them with the
constructors below::

    fake.inject(faults.status(429, retry_after="2"))              # 429 with the provider's error body
    fake.inject(faults.hang(), path="/v1/chat/completions")       # no headers until the client goes away
    fake.inject(faults.hang(0.5))                                 # headers after 0.5 s, then a normal reply
    fake.inject(faults.drop_after(3))                             # 3 stream chunks, then the TCP connection dies
    fake.inject(faults.error_after(2, "boom"))                    # 2 chunks, then a provider error event, end
    fake.inject(faults.stall_after(2))                            # 2 chunks, then silence until the client leaves
    fake.inject(faults.slow(0.05))                                # 50 ms before every chunk
    fake.inject(faults.raw(502, b"<html>bad gateway</html>", "text/html"))

On a non-streaming request the stream faults degrade to their nearest equivalent: ``drop_after`` closes the
connection without any response, ``error_after`` answers 500 with the provider's error body, ``stall_after``
hangs before the headers, ``slow`` waits its delay once before the body.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

FaultKind = Literal["status", "raw", "hang", "drop_after", "error_after", "stall_after", "slow"]
Outcome = Literal["completed", "client_disconnected", "dropped", "server_shutdown"]


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    status: int = 500
    message: str | None = None
    code: str | None = None
    error_type: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    content_type: str = "application/json"
    seconds: float | None = None
    chunks: int = 0
    path: str | None = None

    def matches(self, path: str) -> bool:
        return self.path is None or self.path == path


def status(
    status: int,
    message: str | None = None,
    *,
    retry_after: str | float | None = None,
    code: str | None = None,
    error_type: str | None = None,
    headers: Mapping[str, str] | None = None,
    path: str | None = None,
) -> Fault:
    """Answer ``status`` with the provider-shaped error body (a default message/type/code per status)."""
    hdrs = dict(headers or {})
    if retry_after is not None:
        hdrs["retry-after"] = str(retry_after)
    return Fault("status", status=status, message=message, code=code, error_type=error_type, headers=hdrs, path=path)


def raw(
    status: int,
    body: bytes,
    content_type: str = "text/plain",
    *,
    headers: Mapping[str, str] | None = None,
    path: str | None = None,
) -> Fault:
    """Answer with exactly these bytes (e.g. a load balancer's HTML error page)."""
    return Fault("raw", status=status, body=body, content_type=content_type, headers=dict(headers or {}), path=path)


def hang(seconds: float | None = None, *, path: str | None = None) -> Fault:
    """Send nothing for ``seconds`` (then answer normally), or — ``None`` — until the client disconnects."""
    return Fault("hang", seconds=seconds, path=path)


def drop_after(chunks: int, *, path: str | None = None) -> Fault:
    """Stream ``chunks`` chunks, then abort the TCP connection (no terminator, no final zero-length chunk)."""
    return Fault("drop_after", chunks=chunks, path=path)


def error_after(chunks: int, message: str | None = None, *, path: str | None = None) -> Fault:
    """Stream ``chunks`` chunks, then the provider's in-stream error event, then end the body normally."""
    return Fault("error_after", chunks=chunks, message=message, path=path)


def stall_after(chunks: int, *, path: str | None = None) -> Fault:
    """Stream ``chunks`` chunks, then send nothing more until the client disconnects (or the fake stops)."""
    return Fault("stall_after", chunks=chunks, path=path)


def slow(seconds: float, *, path: str | None = None) -> Fault:
    """Wait ``seconds`` before each chunk of a stream (before the body of a plain response)."""
    return Fault("slow", seconds=seconds, path=path)


class FaultQueue:
    """Thread-safe FIFO of faults; tests push from their thread, handlers pop on the server's loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: deque[Fault] = deque()

    def push(self, fault: Fault, *, times: int = 1, path: str | None = None) -> None:
        if path is not None:
            fault = replace(fault, path=path)
        with self._lock:
            self._items.extend([fault] * times)

    def pop_for(self, path: str) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self._items):
                if fault.matches(path):
                    del self._items[i]
                    return fault
        return None

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass
class RecordedRequest:
    """One request as the fake saw it. Fields after ``fault`` are filled in as the response progresses; read them
    after :meth:`wait_done` (or once :attr:`done` is set) to get a consistent view."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    json: Any
    fault: Fault | None = None
    status: int | None = None
    streamed: bool = False
    chunks_sent: int = 0
    outcome: Outcome | None = None
    done: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def wait_done(self, timeout: float = 5.0) -> bool:
        return self.done.wait(timeout)

    @property
    def client_disconnected(self) -> bool:
        return self.outcome == "client_disconnected"
