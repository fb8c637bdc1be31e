"""A client that gives up before any response byte cancels the upstream call (and the request is still metered)."""

from __future__ import annotations

import httpx
import pytest

from tests.api.conftest import TenantKey
from tests.api.test_streams_faults import wait_for_ledger
from tests.fakes import faults
from tests.fakes.ollama_fake import FakeOllama
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.gateway import RunningGateway

MSG = [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize("model", ["gpt", "llama"])
@pytest.mark.parametrize("stream", [False, True])
def test_client_timeout_cancels_upstream(
    model: str, stream: bool, gw: RunningGateway, tenant: TenantKey, oai: FakeOpenAI, olla: FakeOllama
) -> None:
    fake: FakeOpenAI | FakeOllama = oai if model == "gpt" else olla
    fake.inject(faults.hang())  # the upstream never answers: only the client's departure can end this
    with (
        httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {tenant.key}"}, timeout=0.5) as c,
        pytest.raises(httpx.ReadTimeout),
    ):
        c.post("/v1/chat/completions", json={"model": model, "messages": MSG, "stream": stream})
    assert fake.wait_for_disconnects(1, timeout=5), "the gateway kept the upstream request open"
    rows = wait_for_ledger(gw, tenant.id, 1)
    assert [r["status"] for r in rows] == [499]
