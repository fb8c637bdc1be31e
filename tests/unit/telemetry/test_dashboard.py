"""The Grafana dashboard only queries series that GET /metrics actually exposes, with labels those series have."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aigw.telemetry.metrics import Metrics

DASHBOARD = Path(__file__).parents[3] / "deploy" / "grafana" / "aigw-dashboard.json"

# PromQL words that look like our names but are not series or labels.
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"\{([^}]*)\}")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def exposed() -> tuple[set[str], set[str]]:
    """Sample names and label names render() produces once every recording method has been called."""
    m = Metrics()
    m.request_done(
        tenant="t", model="m", provider="p", status=200, cache="miss", stream=True, duration_s=1.0,
        overhead_s=0.001, cost_usd=Decimal("0.1"),
    )  # fmt: skip
    m.upstream_attempt(
        provider_kind="openai", provider="p", operation="chat", request_model="m", response_model="m",
        duration_s=1.0, ttfc_s=0.1, error_type=None, input_tokens=1, output_tokens=1,
    )  # fmt: skip
    m.rejected(tenant="t", reason="rpm")
    m.cache_lookup(result="hit")
    m.breaker_transition(target="p/m", state="open")
    m.usage_queue(depth=1, dropped_total=1)
    names: set[str] = set()
    labels: set[str] = set()
    for family in text_string_to_metric_families(m.render()[0].decode()):
        for sample in family.samples:
            names.add(sample.name)
            labels.update(sample.labels)
    return names, labels


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard["panels"]) for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v.get("type") == "query"]
    return exprs


def test_every_query_uses_exposed_metrics_and_labels(
    dashboard: dict[str, Any], exposed: tuple[set[str], set[str]]
) -> None:
    names, labels = exposed
    exprs = _exprs(dashboard)
    assert len(exprs) >= 20
    used_metrics: set[str] = set()
    for expr in exprs:
        unquoted = _STRINGS.sub('""', expr)  # quoted values may hold commas or braces
        referenced_labels = {x.strip() for g in _GROUPING.findall(unquoted) for x in g.split(",") if x.strip()}
        referenced_labels |= {
            m.split("=")[0].rstrip("!~").strip() for g in _MATCHERS.findall(unquoted) for m in g.split(",")
        }
        assert referenced_labels <= labels | {"le"}, f"unknown label(s) in {expr!r}"
        # label_values(metric, label): the second argument is a label, not a series.
        lv = re.match(r"label_values\((\w+),\s*(\w+)\)", expr)
        if lv:
            assert lv.group(2) in labels
            bare = lv.group(1)
        else:
            bare = _GROUPING.sub("", _MATCHERS.sub("", _STRINGS.sub("", expr)))
        metrics = {w for w in _IDENT.findall(bare) if w.startswith(("aigw_", "gen_ai_"))}
        assert metrics, f"no metric in {expr!r}"
        assert metrics <= names, f"{sorted(metrics - names)} not exposed (used in {expr!r})"
        used_metrics |= metrics
    # The panels: each family is on the dashboard.
    for required in (
        "aigw_requests_total",
        "aigw_gateway_overhead_seconds_bucket",
        "gen_ai_client_token_usage_sum",
        "aigw_cost_usd_total",
        "aigw_cache_lookups_total",
        "aigw_breaker_state",
        "aigw_ratelimit_rejections_total",
        "aigw_usage_queue_depth",
        "aigw_usage_dropped_total",
        "gen_ai_client_operation_time_to_first_chunk_seconds_bucket",
    ):
        assert required in used_metrics


def test_datasource_is_an_input(dashboard: dict[str, Any]) -> None:
    assert dashboard["__inputs"][0]["name"] == "DS_PROMETHEUS"
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    for panel in _panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
    ids = [p["id"] for p in _panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
