"""A stream's chunks leave in batches: what the gateway decoded from one upstream read goes to the client in one
write (one HTTP/1.1 chunk), the first chunk and whatever came with it included. Counted on the wire, from the
chunked transfer encoding the client receives (a cached answer replayed: tests/cache/test_cache_replay_write.py)."""

from __future__ import annotations

import json
from typing import Any

from tests.api.conftest import TenantKey
from tests.fakes import faults
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.chunked import http_chunks
from tests.support.gateway import RunningGateway

N_CONTENT = 12


def frames(n: int) -> bytes:
    """An OpenAI stream in one body: the fake writes it at once, the gateway reads it in one go."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        c = {
            "id": "chatcmpl-batch",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(c).encode() + b"\n\n"

    return (
        chunk({"role": "assistant", "content": ""})
        + b"".join(chunk({"content": f"t{i} "}) for i in range(n))
        + chunk({}, "stop")
        + b"data: [DONE]\n\n"
    )


def events(parts: list[bytes]) -> list[bytes]:
    return [e for e in b"".join(parts).split(b"\n\n") if e]


def test_what_one_upstream_read_brought_leaves_in_one_write(
    gw: RunningGateway, oai: FakeOpenAI, tenant: TenantKey
) -> None:
    oai.inject(faults.raw(200, frames(N_CONTENT), "text/event-stream; charset=utf-8"))
    body = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    _, parts = http_chunks(gw, tenant.key, body)
    sent = events(parts)
    texts = [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in sent[:-1]]
    assert "".join(t or "" for t in texts) == "".join(f"t{i} " for i in range(N_CONTENT))
    assert sent[-1] == b"data: [DONE]"
    # One write per event would be 15 HTTP chunks. The body came in one piece of 1.5 KB (so, almost surely, in one
    # read): a few writes at most, and the first of them carries more than the first event.
    assert len(parts) <= 4, [len(p) for p in parts]
    assert parts[0].count(b"data: ") > 1
