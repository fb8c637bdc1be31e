"""Run the real gateway (uvicorn + the app) in a background thread on a free loopback port."""

from __future__ import annotations

import asyncio
import socket
import threading
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from aigw.api.server import HeadWithBodyProtocol
from aigw.app import create_app
from aigw.config import Settings
from aigw.store.migrate import upgrade_to_head

ADMIN_KEY = "test-admin-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RunningGateway:
    def __init__(self, settings: Settings, *, migrate: bool = True) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            loop="asyncio",
            http=HeadWithBodyProtocol,  # as `aigw serve` runs it
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._migrate = migrate
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self) -> RunningGateway:
        if self._migrate:
            upgrade_to_head(self.settings.database_url)
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop
            asyncio.set_event_loop(loop)

            async def serve() -> None:
                task = asyncio.ensure_future(self.server.serve())
                while not self.server.started and not task.done():
                    await asyncio.sleep(0.01)
                ready.set()
                await task

            try:
                loop.run_until_complete(serve())
            finally:
                ready.set()
                loop.close()

        self._thread = threading.Thread(target=run, name=f"gateway-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(30)
        if not self.server.started:
            raise RuntimeError("gateway did not start")
        return self

    def call(self, coro: Any, timeout: float = 10) -> Any:
        """Run a coroutine on the gateway's own loop (e.g. flush the usage recorder)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def services(self) -> Any:
        return self.app.state.aigw

    def flush_usage(self) -> None:
        self.call(self.services.recorder.flush())

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def __enter__(self) -> RunningGateway:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- admin helpers ------------------------------------------------------------------------------------------
    def admin(self, method: str, path: str, json: Any = None) -> httpx.Response:
        key = self.settings.admin_key.get_secret_value()
        with httpx.Client(base_url=self.url, timeout=10) as c:
            return c.request(method, path, json=json, headers={"authorization": f"Bearer {key}"})

    def new_tenant(self, name: str = "t", **limits: Any) -> dict[str, Any]:
        r = self.admin("POST", "/admin/tenants", {"name": name, **limits})
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body
