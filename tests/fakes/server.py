"""Run an ``aiohttp.web.Application`` on a real loopback socket, in a background thread with its own loop.

Sync tests, async tests (on pytest-asyncio's loop) and a gateway running in another thread or process can all talk
to it over real TCP, so disconnects, chunked bodies and timeouts behave as they do against a real upstream.

    with RunningServer(app) as server:        # port=0 → a free port; or RunningServer(app, port=18080)
        httpx.get(server.url + "/health")

``app`` may be a factory (a callable returning a fresh ``Application``): then the server can be stopped and started
again — on the same port, so clients configured with its URL reconnect (an upstream that restarts). A plain
``Application`` can only be served once (aiohttp binds it to its first loop).

``handler_cancellation=True``: when the client's connection goes away aiohttp cancels the handler task, which is
what lets the fakes notice a disconnect while they are waiting (hang, stall, slow stream) instead of only when a
write happens to fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from aiohttp import web

T = TypeVar("T")

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


class RunningServer:
    """An aiohttp app served on ``host:port`` from a daemon thread. ``start()``/``stop()`` are idempotent."""

    def __init__(
        self,
        app: web.Application | Callable[[], web.Application],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        shutdown_timeout: float = 1.0,
    ) -> None:
        self._app_source = app
        self.app: web.Application | None = app if isinstance(app, web.Application) else None
        self.host = host
        self._requested_port = port
        self._shutdown_timeout = shutdown_timeout
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # -- addresses ---------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server is not running")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("server is not running")
        return self._loop

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._thread is not None:
            return self
        if not isinstance(self._app_source, web.Application):
            self.app = self._app_source()
        self._ready.clear()
        self._startup_error = None
        self._thread = threading.Thread(target=self._run, name=f"fake-upstream-{self._requested_port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            raise RuntimeError("fake upstream server did not start in time")
        if self._startup_error is not None:
            self._thread.join(_STOP_TIMEOUT)
            self._thread = None
            raise RuntimeError(f"fake upstream server failed to start: {self._startup_error!r}") from (
                self._startup_error
            )
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if thread.is_alive() and not loop.is_closed():
            fut = asyncio.run_coroutine_threadsafe(self._cleanup(), loop)
            with contextlib.suppress(Exception):
                fut.result(_STOP_TIMEOUT)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(_STOP_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError("fake upstream server thread did not stop")
        self._thread = None
        self._loop = None
        if self._port is not None:
            self._requested_port = self._port  # a restart comes back on the same port
        self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run a coroutine on the server's loop from another thread and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # -- thread body -------------------------------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self._setup())
            except BaseException as e:  # reported to start()
                self._startup_error = e
                self._ready.set()
                return
            self._ready.set()
            loop.run_forever()
        finally:
            self._close_loop(loop)

    async def _setup(self) -> None:
        assert self.app is not None
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=self._shutdown_timeout,
            access_log=None,
        )
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, self.host, self._requested_port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            self._runner = None
            raise
        self._port = int(runner.addresses[0][1])

    async def _cleanup(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @staticmethod
    def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
