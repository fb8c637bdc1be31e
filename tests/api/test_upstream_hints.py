"""Small promises about what the client learns from a failing upstream."""

from __future__ import annotations

import httpx

from tests.fakes import faults
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.openapi import validate

MSG = [{"role": "user", "content": "hello there"}]


def test_openai_error_right_after_its_role_chunk_is_still_before_the_commit_point(
    http: httpx.Client, oai: FakeOpenAI
) -> None:
    oai.inject(faults.error_after(1, "overloaded right after the role chunk"))
    r = http.post("/v1/chat/completions", json={"model": "gpt", "messages": MSG, "stream": True})
    assert r.status_code == 502 and r.headers["content-type"].startswith("application/json")
    validate("ErrorResponse", r.json())
    assert "overloaded right after the role chunk" in r.json()["error"]["message"]


def test_throttled_chain_passes_the_wait_on(http: httpx.Client, oai: FakeOpenAI) -> None:
    oai.inject(faults.status(429, retry_after="7"))
    r = http.post("/v1/chat/completions", json={"model": "gpt", "messages": MSG})
    assert r.status_code == 502 and r.headers["retry-after"] == "7"
    assert r.headers["x-aigw-attempts"] == "1"

    oai.inject(faults.status(500))
    r = http.post("/v1/chat/completions", json={"model": "gpt", "messages": MSG})
    assert r.status_code == 502 and "retry-after" not in r.headers
