"""A cached answer replayed as a stream leaves in one write (one HTTP/1.1 chunk), then ``[DONE]``."""

from __future__ import annotations

from tests.cache.conftest import Tenant
from tests.support.chunked import http_chunks
from tests.support.gateway import RunningGateway


def test_a_cached_answer_is_replayed_in_one_write(gw: RunningGateway, tenant: Tenant) -> None:
    body = {
        "model": "gpt",
        "messages": [{"role": "user", "content": "replay me in one write"}],
        "stream": True,
        "temperature": 0,
    }
    first_headers, _ = http_chunks(gw, tenant.key, body)
    headers, parts = http_chunks(gw, tenant.key, body)
    assert (first_headers["x-aigw-cache"], headers["x-aigw-cache"]) == ("miss", "hit")
    assert len(parts) == 2, [len(p) for p in parts]  # the answer, then [DONE]
    assert parts[0].count(b"data: ") > 1 and parts[1] == b"data: [DONE]\n\n"
