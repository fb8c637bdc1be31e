"""A client that gives up before any response byte cancels the upstream call (and the request is still metered)."""

from __future__ import annotations

import json
import socket

import pytest

from tests.api.conftest import Stack, TenantKey
from tests.api.test_streams_faults import bedrock_signed, make_case  # noqa: F401 - autouse
from tests.fakes import faults
from tests.support.gateway import RunningGateway
from tests.support.ledger import wait_for_ledger


def raw_request(gw: RunningGateway, key: str, body: dict[str, object]) -> socket.socket:
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    sock.sendall(head + payload)
    return sock


@pytest.mark.parametrize("model", ["gpt", "llama", "claude", "bedrock"])
@pytest.mark.parametrize("stream", [False, True])
def test_client_leaving_cancels_upstream(
    model: str, stream: bool, gw: RunningGateway, tenant: TenantKey, stack: Stack
) -> None:
    fake = make_case(model, stack).fake
    fake.inject(faults.hang())  # the upstream never answers: only the client's departure can end this
    sock = raw_request(
        gw, tenant.key, {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    )
    try:
        assert fake.wait_for_requests(1, timeout=10), "the request never reached the upstream"
    finally:
        sock.close()  # the client gives up while the upstream is still thinking
    assert fake.wait_for_disconnects(1, timeout=10), "the gateway kept the upstream request open"
    rows = wait_for_ledger(gw, tenant.id, 1)
    assert [r["status"] for r in rows] == [499]
