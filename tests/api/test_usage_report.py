"""GET /admin/tenants/{id}/usage with from/to/group_by, and ``aigw usage``, against the e2e stack (SQLite)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.api.conftest import TenantKey
from tests.support.gateway import ADMIN_KEY, RunningGateway
from tests.support.ledger import wait_for_ledger

AIGW = Path(sys.executable).parent / "aigw"
MSG = [{"role": "user", "content": "count me in the daily rollups"}]


def _chat(http: httpx.Client, model: str, n: int) -> None:
    for _ in range(n):
        r = http.post("/v1/chat/completions", json={"model": model, "messages": MSG})
        assert r.status_code == 200, r.text


def _sums(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "requests": len(rows),
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "completion_tokens": sum(r["completion_tokens"] for r in rows),
        "cost_usd": sum((r["cost_usd"] or Decimal(0) for r in rows), Decimal(0)),
    }


def _report(gw: RunningGateway, tenant_id: str, query: str = "") -> dict[str, Any]:
    r = gw.admin("GET", f"/admin/tenants/{tenant_id}/usage{query}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _totals(body: dict[str, Any]) -> dict[str, Any]:
    keys = ("requests", "prompt_tokens", "completion_tokens")
    return {k: body[k] for k in keys} | {"cost_usd": Decimal(str(body["cost_usd"]))}


def test_report_by_model_and_day_with_a_period(http: httpx.Client, gw: RunningGateway, tenant: TenantKey) -> None:
    _chat(http, "gpt", 3)
    _chat(http, "llama", 2)
    rows = wait_for_ledger(gw, tenant.id, 5)
    assert len(rows) == 5
    days = {r["created_at"].astimezone(UTC).date() for r in rows}
    first, last = min(days), max(days)  # one day, unless this ran across midnight UTC

    plain = _report(gw, tenant.id)
    assert set(plain) == {
        *("requests", "prompt_tokens", "completion_tokens", "cost_usd", "by_model"),
        *("cache_hits", "saved_cost_usd"),
    }
    assert plain["cache_hits"] == 0 and Decimal(str(plain["saved_cost_usd"])) == 0
    assert _totals(plain) == _sums(rows)
    assert [(m["model"], m["requests"]) for m in plain["by_model"]] == [("gpt", 3), ("llama", 2)]
    for m in plain["by_model"]:
        assert _totals(m) == _sums([r for r in rows if r["model"] == m["model"]])

    by_day = _report(gw, tenant.id, f"?from={first}&to={last}&group_by=day")
    assert _totals(by_day) == _sums(rows) and by_day["by_model"] == plain["by_model"]
    assert [d["day"] for d in by_day["by_day"]] == sorted(str(d) for d in days)
    assert sum(d["requests"] for d in by_day["by_day"]) == 5
    assert set(by_day["by_day"][0]) == {"day", "requests", "prompt_tokens", "completion_tokens", "cost_usd"}

    before = _report(gw, tenant.id, f"?to={first - timedelta(days=1)}&group_by=day")
    assert (before["requests"], before["cost_usd"], before["by_model"], before["by_day"]) == (0, 0, [], [])
    after = _report(gw, tenant.id, f"?from={last + timedelta(days=1)}")
    assert after["requests"] == 0 and "by_day" not in after


@pytest.mark.parametrize(
    ("query", "param"),
    [("?from=2026-13-01", "from"), ("?to=yesterday", "to"), ("?from=20261101", "from"),
     ("?from=2026-11-02&to=2026-11-01", "from"), ("?group_by=hour", "group_by")],
)  # fmt: skip
def test_bad_parameters_are_400(query: str, param: str, gw: RunningGateway, tenant: TenantKey) -> None:
    r = gw.admin("GET", f"/admin/tenants/{tenant.id}/usage{query}")
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


def test_unknown_tenant_is_404(gw: RunningGateway) -> None:
    assert gw.admin("GET", "/admin/tenants/nope/usage?group_by=day").status_code == 404


def test_cli_prints_the_period_table(http: httpx.Client, gw: RunningGateway, tenant: TenantKey, tmp_path: Path) -> None:
    _chat(http, "llama", 2)
    rows = wait_for_ledger(gw, tenant.id, 2)
    day = min(r["created_at"].astimezone(UTC).date() for r in rows)
    config = tmp_path / "aigw.yaml"
    config.write_text(yaml.safe_dump({"admin_key": ADMIN_KEY, "database_url": gw.settings.database_url}))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(AIGW), "usage", "--config", str(config), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)

    done = run("--tenant", tenant.id, "--from", str(day))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"usage {day} .. now")
    assert lines[1].split() == ["TENANT", "NAME", "REQUESTS", "PROMPT", "COMPLETION", "COST_USD"]
    sums = _sums(rows)
    expected = [tenant.id, "e2e", "2", str(sums["prompt_tokens"]), str(sums["completion_tokens"])]
    assert lines[2].split()[:5] == expected
    assert Decimal(lines[2].split()[5]) == sums["cost_usd"]
    assert lines[3].split()[:2] == ["TOTAL", "2"]

    everyone = run()  # all tenants of the shared stack, all time
    assert everyone.returncode == 0, everyone.stderr
    assert any(line.split()[0] == tenant.id for line in everyone.stdout.splitlines()[2:])

    empty = run("--tenant", tenant.id, "--to", str(day - timedelta(days=1)))
    assert empty.returncode == 0 and empty.stdout.splitlines()[2].split() == ["TOTAL", "0", "0", "0", "0.000000000"]

    bad = run("--from", "tomorrow")
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr
