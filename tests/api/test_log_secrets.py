"""No key, secret or message body in the gateway's logs — even at log_level: debug, on success and on failure."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.api.test_cli import sqlite, write_config
from tests.fakes import faults
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.serve import ADMIN, serving

UPSTREAM_KEY = "sk-UPSTREAM-SECRET-0123456789abcdef"
PROMPT = "my-private-prompt-text-4242"


def test_debug_logs_hold_no_secrets_or_bodies(tmp_path: Path) -> None:
    with FakeOpenAI(api_key=UPSTREAM_KEY) as oai:
        providers = [{"name": "oai", "type": "openai", "base_url": oai.url + "/v1", "api_key": UPSTREAM_KEY}]
        models = [{"name": "gpt", "targets": [{"provider": "oai", "model": "gpt-4o-mini"}]}]
        cfg = write_config(
            tmp_path / "c.yaml", sqlite(tmp_path / "a.db"), log_level="debug", providers=providers, models=models
        )
        with serving(tmp_path, "--config", str(cfg)) as gw:
            tenant = gw.admin("POST", "/admin/tenants", {"name": "t"}).json()
            key = tenant["api_key"]
            body = {"model": "gpt", "messages": [{"role": "user", "content": PROMPT}]}
            headers = {"authorization": f"Bearer {key}"}
            assert (
                httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=10).status_code == 200
            )
            oai.inject(faults.status(401))  # the upstream refuses the gateway's key: the error path logs too
            r = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=10)
            assert r.status_code == 502 and UPSTREAM_KEY not in r.text
            bad = {"authorization": f"Bearer {key}x"}
            assert httpx.post(gw.url + "/v1/chat/completions", json=body, headers=bad, timeout=10).status_code == 401
            assert gw.admin("DELETE", f"/admin/keys/{tenant['key_id']}").status_code == 200
        logs = gw.output()
    assert "aigw ready" in logs  # the log was really captured
    for secret in (ADMIN, key, key[6:], UPSTREAM_KEY, PROMPT):
        assert secret not in logs, f"found {secret[:8]}… in the logs"
