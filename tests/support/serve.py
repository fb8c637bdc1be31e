"""``aigw serve`` as a real subprocess on a free loopback port, for the tests that need a whole process (CLI, signals,
workers, replicas, soak). Every process is stopped in ``finally`` (SIGTERM, then SIGKILL), even when a test fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.gateway import free_port

AIGW = Path(sys.executable).parent / "aigw"
ADMIN = "cli-admin-key-0123456789"
STARTUP_DEADLINE_S = 30.0
STOP_DEADLINE_S = 5.0


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any AIGW_* variable (a test names its config itself)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIGW_")}
    return env | extra


class Served:
    """A running ``aigw serve``; ``stop()`` sends SIGTERM and returns the exit code (None if it had to be killed)."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path, admin_key: str = ADMIN) -> None:
        self.proc, self.log = proc, log
        self.url = f"http://127.0.0.1:{port}"
        self._admin_key = admin_key

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def get(self, path: str, key: str | None = None) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.get(self.url + path, headers=headers, timeout=10)

    def admin(self, method: str, path: str, json: Any = None) -> httpx.Response:
        return httpx.request(
            method, self.url + path, json=json, headers={"authorization": f"Bearer {self._admin_key}"}, timeout=10
        )

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"aigw serve exited with {self.proc.returncode} at start:\n{self.output()}")
            try:
                if self.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        pytest.fail(f"aigw serve did not answer /healthz within {STARTUP_DEADLINE_S}s:\n{self.output()}")

    def chat(self, key: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(self.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})

    def stop(self, timeout: float = STOP_DEADLINE_S) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                return None
        return self.proc.returncode


@contextmanager
def serving(tmp_path: Path, *args: str, env: dict[str, str] | None = None, admin_key: str = ADMIN) -> Iterator[Served]:
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    with log.open("wb") as out:
        cmd = [str(AIGW), "serve", *args, "--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen(cmd, env=env or clean_env(), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
        served = Served(proc, port, log, admin_key)
        try:
            served.wait_healthy()
            yield served
        finally:
            served.stop()
