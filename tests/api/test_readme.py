"""The README's walk-through, run exactly as written against `aigw serve --config config.example.yaml`.

Only three things are substituted: the gateway's address (``http://localhost:8080`` → this test's port), the
placeholder value of ``export AIGW_KEY=…`` (the ``api_key`` the first command printed, as the README says) and
``<tenant id>``. The upstream is a fake Ollama (``OLLAMA_BASE_URL``); no admin or OpenAI key is set, so the
documented default admin key must be the one that works.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import REPO
from tests.fakes.ollama_fake import FakeOllama
from tests.support.gateway import free_port
from tests.support.openapi import validate, validate_sse_stream

README = REPO / "README.md"
EXAMPLE_CONFIG = REPO / "config.example.yaml"
AIGW = Path(sys.executable).parent / "aigw"
DOC_URL = "http://localhost:8080"
STARTUP_DEADLINE_S = 30.0
USAGE_DEADLINE_S = 5.0  # contract: usage records are visible within 5 s of the response
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"README has no '## {title}' section"
    return m.group(1)


def blocks(text: str, lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(text) if kind == lang]


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


@pytest.fixture
def readme_gateway(tmp_path: Path) -> Iterator[Served]:
    """``aigw serve --config config.example.yaml`` (what ``make run`` runs) in front of a fake Ollama."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIGW_", "OPENAI_", "ANTHROPIC_", "OLLAMA_"))}
    log = tmp_path / "gateway.log"
    port = free_port()
    with FakeOllama() as olla, log.open("wb") as out:
        env |= {"OLLAMA_BASE_URL": olla.url, "AIGW_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'aigw.db'}"}
        cmd = [str(AIGW), "serve", "--config", str(EXAMPLE_CONFIG), "--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
        try:
            served = Served(f"http://127.0.0.1:{port}", proc, log)
            wait_healthy(served)
            yield served
        finally:
            stop(proc)


def wait_healthy(s: Served) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while time.monotonic() < deadline:
        if s.proc.poll() is not None:
            pytest.fail(f"aigw exited with {s.proc.returncode} at start:\n{s.log.read_text(errors='replace')}")
        try:
            if httpx.get(s.url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail(f"aigw did not answer /healthz within {STARTUP_DEADLINE_S}s:\n{s.log.read_text(errors='replace')}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def run_bash(block: str, url: str, env: dict[str, str]) -> str:
    assert DOC_URL in block, f"a walk-through command does not talk to {DOC_URL}:\n{block}"
    script = block.replace(DOC_URL, url)
    done = subprocess.run(["bash", "-e", "-c", script], env=env, capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, f"{script}\nexit {done.returncode}\n{done.stderr.decode(errors='replace')}"
    return done.stdout.decode()


def test_walkthrough_as_written(readme_gateway: Served) -> None:
    if shutil.which("curl") is None:
        pytest.skip("!!! curl is not installed: the README walk-through (curl commands) CANNOT be checked !!!")
    walk = section("Walk-through")
    bash, python, documented = blocks(walk, "bash"), blocks(walk, "python"), blocks(walk, "json")
    assert len(bash) == 4 and len(python) == 1 and len(documented) == 1, "walk-through layout changed"
    create, chat, stream, usage = bash
    url = readme_gateway.url
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIGW_")}
    env |= {"NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}  # the local gateway, whatever proxy is configured

    # 1. Create a tenant: the documented default admin key works; the answer has the documented fields.
    tenant: dict[str, Any] = json.loads(run_bash(create, url, env))
    shown: dict[str, Any] = json.loads(documented[0])
    assert set(tenant) == set(shown), f"fields differ from the README's example: {set(tenant) ^ set(shown)}"
    for field, value in shown.items():
        if not (isinstance(value, str) and "…" in value):
            assert tenant[field] == value, field
    assert tenant["api_key"].startswith("gw-sk-") and tenant["key_id"].startswith("key_")

    # 2. export AIGW_KEY=<the api_key above>, then the chat call.
    export = re.compile(r"^export AIGW_KEY=\S+", re.M)
    assert export.search(chat), "the README no longer says where AIGW_KEY comes from"
    chat = export.sub(f"export AIGW_KEY={tenant['api_key']}", chat)
    completion = json.loads(run_bash(chat, url, env))
    validate("CreateChatCompletionResponse", completion)
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": "Echo: Hello!", "refusal": None}
    assert completion["usage"]["completion_tokens"] == 2
    env["AIGW_KEY"] = tenant["api_key"]  # the export persists in the reader's shell

    # 3. Streaming: OpenAI's SSE framing, ending in data: [DONE].
    raw = run_bash(stream, url, env)
    assert raw.rstrip("\n").endswith("data: [DONE]")
    chunks = validate_sse_stream(raw.encode())
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "Echo: Hello!"

    # 4. The official SDK, unchanged but for the base URL.
    code = python[0]
    assert f'base_url="{DOC_URL}/v1"' in code
    done = subprocess.run(
        [sys.executable, "-c", code.replace(DOC_URL, url)], env=env, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    printed = done.stdout.decode()
    first, _, streamed = printed.partition("\n")
    assert first.startswith("Echo: Hello! CompletionUsage(") and "prompt_tokens=1" in first, printed
    assert streamed == "Echo: Hello!", printed

    # 5. The usage report: two curl calls and two SDK calls, 1 prompt and 2 completion tokens each.
    assert "<tenant id>" in usage
    usage = usage.replace("<tenant id>", tenant["id"])
    want = {"requests": 4, "prompt_tokens": 4, "completion_tokens": 8}
    deadline = time.monotonic() + USAGE_DEADLINE_S
    while True:
        report = json.loads(run_bash(usage, url, env))
        if {k: report.get(k) for k in want} == want or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert {k: report.get(k) for k in want} == want, report
    assert report["cost_usd"] == 0  # ollama costs nothing
    assert [m["model"] for m in report["by_model"]] in (["llama3"], ["llama3:8b"])


def test_quick_start_names_make_run_and_make_test() -> None:
    quick = section("Quick start")
    assert [b.strip() for b in blocks(quick, "bash")] == ["make run", "make test"]
    commands = set(re.findall(r"`(make [a-z-]+)`", README.read_text(encoding="utf-8")))
    assert {"make run", "make test"} <= commands


def test_make_help_lists_the_documented_targets() -> None:
    done = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    plain = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout.decode())
    listed = {line.split()[0] for line in plain.splitlines() if line.strip()}
    assert {"run", "test", "lint", "dev", "migrate", "bench"} <= listed, plain
    documented = set(re.findall(r"`make ([a-z-]+)`", section("Development")))
    assert documented <= listed, f"README documents targets make help does not list: {documented - listed}"


def test_readme_links_resolve() -> None:
    text = README.read_text(encoding="utf-8")
    local = [t for t in re.findall(r"\]\(([^)#]+)\)", text) if "://" not in t]
    assert local, "no relative links found"
    missing = [t for t in local if not (REPO / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"
