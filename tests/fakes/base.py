"""What both fakes share: the server lifecycle, request recording, fault application and the stream writer.

Disconnect detection: the server runs with aiohttp's ``handler_cancellation``, so when the client's connection
closes while a handler is waiting or streaming, the handler task is cancelled; a failed write counts too. Either
way the request's ``outcome`` becomes ``"client_disconnected"``, ``client_disconnects`` goes up and waiters wake —
tests synchronise on :meth:`FakeUpstream.wait_for_disconnects` / :meth:`RecordedRequest.wait_done`, never sleeps.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from tests.fakes.faults import Fault, FaultQueue, Outcome, RecordedRequest
from tests.fakes.server import RunningServer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_RECORD = web.RequestKey("fake_record", RecordedRequest)
_FAULT = web.RequestKey("fake_fault", Fault)
_CLOSING = web.AppKey("fake_closing", asyncio.Event)


class _Disconnected(Exception):
    pass


class FakeUpstream:
    """Base class: subclasses add routes in ``_add_routes`` and define the provider's error shapes."""

    stream_content_type = "application/octet-stream"
    json_content_type = "application/json"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = RunningServer(self._make_app, host=host, port=port)
        self.faults = FaultQueue()
        self._cond = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._disconnects = 0

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        self._add_routes(app.router)
        self._configure(app)
        return app

    # -- subclass hooks ----------------------------------------------------------------------------------------

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        raise NotImplementedError

    def _configure(self, app: web.Application) -> None:
        """Extra per-app setup (signals…); the app is rebuilt on every start."""

    def error_body(self, status: int, fault: Fault | None, message: str | None = None) -> Any:
        """The provider's JSON error body for ``status``."""
        raise NotImplementedError

    def stream_error_frame(self, message: str | None) -> bytes:
        """The bytes a provider sends when an error happens after the stream started."""
        raise NotImplementedError

    def authorize(self, request: web.Request) -> web.StreamResponse | None:
        """Return an error response to refuse the request's credentials (runs after pre-response faults)."""
        return None

    def encode_json(self, body: Any) -> bytes:
        return json.dumps(body, separators=(",", ":")).encode()

    @staticmethod
    def record(request: web.Request) -> RecordedRequest:
        """The :class:`RecordedRequest` of the request being handled (its parsed ``json`` body, headers…)."""
        return request[_RECORD]

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start serving; after a :meth:`stop` this comes back on the same port (an upstream restart)."""
        self.server.start()
        return self

    def stop(self) -> None:
        """Stop serving: parked requests are hung up, then the port is closed. Recorded requests are kept."""
        self.server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    # -- fault injection ---------------------------------------------------------------------------------------

    def inject(self, fault: Fault, *, times: int = 1, path: str | None = None) -> None:
        """Queue ``fault`` for the next ``times`` requests (to ``path``, if given, else the fault's own filter)."""
        self.faults.push(fault, times=times, path=path)

    # -- observation -------------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._cond:
            return list(self._requests)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    @property
    def last_request(self) -> RecordedRequest:
        with self._cond:
            if not self._requests:
                raise AssertionError("the fake has received no request")
            return self._requests[-1]

    @property
    def client_disconnects(self) -> int:
        with self._cond:
            return self._disconnects

    def wait_for_requests(self, n: int = 1, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self._requests) >= n, timeout)

    def wait_for_disconnects(self, n: int = 1, timeout: float = 5.0) -> bool:
        """Block until at least ``n`` requests ended because their client went away; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._disconnects >= n, timeout)

    async def wait_for_disconnects_async(self, n: int = 1, timeout: float = 5.0) -> bool:
        return await asyncio.to_thread(self.wait_for_disconnects, n, timeout)

    async def wait_for_requests_async(self, n: int = 1, timeout: float = 5.0) -> bool:
        return await asyncio.to_thread(self.wait_for_requests, n, timeout)

    def reset(self) -> None:
        """Forget recorded requests, the disconnect count and queued faults."""
        self.faults.clear()
        with self._cond:
            self._requests.clear()
            self._disconnects = 0

    # -- machinery ---------------------------------------------------------------------------------------------

    async def _on_startup(self, app: web.Application) -> None:
        app[_CLOSING] = asyncio.Event()

    async def _on_shutdown(self, app: web.Application) -> None:
        app[_CLOSING].set()  # releases handlers parked in hang/stall so shutdown is quick

    def _finish(self, rec: RecordedRequest, outcome: Outcome) -> None:
        with self._cond:
            if rec.outcome is None:
                rec.outcome = outcome
                if rec.outcome == "client_disconnected":
                    self._disconnects += 1
            rec.done.set()
            self._cond.notify_all()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        rec = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            json=parsed,
            fault=self.faults.pop_for(request.path),
        )
        with self._cond:
            self._requests.append(rec)
            self._cond.notify_all()
        request[_RECORD] = rec
        outcome: Outcome = "completed"
        try:
            resp = await self._with_fault(request, rec, handler)
            rec.status = resp.status
            return resp
        except asyncio.CancelledError:
            outcome = "server_shutdown" if request.app[_CLOSING].is_set() else "client_disconnected"
            raise
        finally:
            self._finish(rec, outcome)

    async def _with_fault(self, request: web.Request, rec: RecordedRequest, handler: Handler) -> web.StreamResponse:
        fault = rec.fault
        if fault is None:
            return await self._call(request, handler)
        if fault.kind in ("status", "raw"):
            body = fault.body if fault.kind == "raw" else self.encode_json(self.error_body(fault.status, fault))
            return web.Response(
                status=fault.status,
                body=body,
                content_type=None,
                headers={
                    "Content-Type": fault.content_type,
                    **fault.headers,
                },
            )
        if fault.kind == "hang":
            if fault.seconds is None:
                await self._park(request)  # never returns: ends in a disconnect or the fake's shutdown
            else:
                await asyncio.sleep(fault.seconds)
            return await self._call(request, handler)
        request[_FAULT] = fault  # a stream-phase fault: applied by send_stream / send_json
        return await self._call(request, handler)

    async def _call(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        denied = self.authorize(request)
        return denied if denied is not None else await handler(request)

    async def _park(self, request: web.Request) -> None:
        """Wait until the client disconnects (we get cancelled) or the fake shuts down (we hang up)."""
        await request.app[_CLOSING].wait()
        await self._hang_up(request, "server_shutdown")

    async def _hang_up(self, request: web.Request, outcome: Outcome) -> None:
        rec = request[_RECORD]
        self._finish(rec, outcome)
        if request.transport is not None:
            request.transport.abort()
        await asyncio.Event().wait()  # connection_lost cancels this handler

    # -- response writers used by the subclasses ---------------------------------------------------------------

    async def send_json(
        self,
        request: web.Request,
        body: Any,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> web.StreamResponse:
        fault = request.get(_FAULT)
        if fault is not None:
            if fault.kind == "drop_after":
                await self._hang_up(request, "dropped")
            elif fault.kind == "stall_after":
                await self._park(request)
            elif fault.kind == "error_after":
                status, body = 500, self.error_body(500, fault, fault.message)
            elif fault.kind == "slow":
                await asyncio.sleep(fault.seconds or 0)
        return web.Response(
            status=status,
            body=self.encode_json(body),
            content_type=None,
            headers={"Content-Type": content_type or self.json_content_type, **(headers or {})},
        )

    async def send_stream(
        self,
        request: web.Request,
        frames: Sequence[bytes],
        *,
        terminator: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        """Stream ``frames`` (already framed: SSE events or NDJSON lines), then ``terminator``, honouring faults."""
        rec = request[_RECORD]
        rec.streamed = True
        fault = request.get(_FAULT)
        cut = fault.chunks if fault is not None and fault.kind.endswith("_after") else None
        delay = fault.seconds if fault is not None and fault.kind == "slow" else None
        resp = web.StreamResponse(status=200, headers={"Content-Type": self.stream_content_type, **(headers or {})})
        try:
            await resp.prepare(request)
            for i, frame in enumerate(frames):
                if cut is not None and i >= cut:
                    break
                if delay:
                    await asyncio.sleep(delay)
                await self._write(resp, frame)
                rec.chunks_sent += 1
            if fault is not None and cut is not None and cut <= len(frames):  # a cut past the end never fires
                if fault.kind == "drop_after":
                    await self._hang_up(request, "dropped")
                elif fault.kind == "stall_after":
                    await self._park(request)
                else:  # error_after
                    await self._write(resp, self.stream_error_frame(fault.message))
                    await resp.write_eof()
                    return resp
            if terminator:
                await self._write(resp, terminator)
            await resp.write_eof()
        except _Disconnected:
            await self._hang_up(request, "client_disconnected")
        return resp

    @staticmethod
    async def _write(resp: web.StreamResponse, data: bytes) -> None:
        try:
            await resp.write(data)
        except ConnectionResetError as e:  # aiohttp's ClientConnectionResetError: the peer is gone
            raise _Disconnected from e
