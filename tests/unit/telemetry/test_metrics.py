"""Metrics: what render() exposes after each recording call, OTLP export when configured, and recording cost."""

from __future__ import annotations

import os
import time
from decimal import Decimal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aigw.telemetry import semconv
from aigw.telemetry.metrics import Metrics
from tests.support.otlp import OtlpHttpReceiver

Labels = dict[str, str]


def samples(m: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, content_type = m.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(m: Metrics, name: str, **labels: str) -> float:
    """The sample's value; 0 when absent (as Prometheus would treat a series that never moved)."""
    return samples(m).get((name, frozenset(labels.items())), 0.0)


REQ = dict(tenant="t1", model="gpt-4o", provider="openai", status=200, cache="miss", stream=False)
REQ_LABELS = dict(tenant="t1", model="gpt-4o", provider="openai", status="200", cache="miss", stream="false")
GENAI = dict(
    gen_ai_operation_name="chat",
    gen_ai_provider_name="aws.bedrock",
    aigw_provider="bedrock-us",
    gen_ai_request_model="claude",
    gen_ai_response_model="claude-v2",
)


def attempt(m: Metrics, **overrides: object) -> None:
    args: dict[str, object] = dict(
        provider_kind="bedrock", provider="bedrock-us", operation="chat", request_model="claude",
        response_model="claude-v2", duration_s=0.3, ttfc_s=None, error_type=None, input_tokens=100, output_tokens=7,
    )  # fmt: skip
    args.update(overrides)
    m.upstream_attempt(**args)  # type: ignore[arg-type]


def test_request_done_moves_counters_and_histograms() -> None:
    m = Metrics()
    m.request_done(**REQ, duration_s=0.5, overhead_s=0.0007, cost_usd=Decimal("0.25"))  # type: ignore[arg-type]
    m.request_done(**REQ, duration_s=1.5, overhead_s=0.003, cost_usd=Decimal("0.5"))  # type: ignore[arg-type]
    m.request_done(**{**REQ, "status": 502, "provider": None}, duration_s=0.1, overhead_s=0.001, cost_usd=None)  # type: ignore[arg-type]

    assert value(m, "aigw_requests_total", **REQ_LABELS) == 2
    assert value(m, "aigw_requests_total", **{**REQ_LABELS, "status": "502", "provider": ""}) == 1
    assert value(m, "aigw_cost_usd_total", tenant="t1", model="gpt-4o", provider="openai") == pytest.approx(0.75)
    dur = dict(model="gpt-4o", provider="openai", stream="false")
    assert value(m, "aigw_request_duration_seconds_count", **dur) == 2
    assert value(m, "aigw_request_duration_seconds_sum", **dur) == pytest.approx(2.0)
    assert value(m, "aigw_request_duration_seconds_bucket", **dur, le="0.64") == 1
    over = dict(stream="false", cache="miss")
    assert value(m, "aigw_gateway_overhead_seconds_count", **over) == 3
    assert value(m, "aigw_gateway_overhead_seconds_bucket", **over, le="0.001") == 2  # 0.0007 and 0.001


def test_upstream_attempt_uses_genai_names_buckets_and_token_types() -> None:
    m = Metrics()
    attempt(m)
    attempt(m, ttfc_s=0.05, input_tokens=5000, output_tokens=None)
    attempt(m, response_model=None, error_type="timeout", input_tokens=None, output_tokens=None, duration_s=30.0)

    assert value(m, "gen_ai_client_token_usage_count", **GENAI, gen_ai_token_type="input") == 2
    assert value(m, "gen_ai_client_token_usage_sum", **GENAI, gen_ai_token_type="input") == 5100
    assert value(m, "gen_ai_client_token_usage_count", **GENAI, gen_ai_token_type="output") == 1
    assert value(m, "gen_ai_client_token_usage_bucket", **GENAI, gen_ai_token_type="input", le="256.0") == 1
    assert value(m, "gen_ai_client_operation_duration_seconds_count", **GENAI, error_type="") == 2
    errored = {**GENAI, "gen_ai_response_model": "", "error_type": "timeout"}
    assert value(m, "gen_ai_client_operation_duration_seconds_count", **errored) == 1
    assert value(m, "gen_ai_client_operation_duration_seconds_bucket", **errored, le="20.48") == 0
    assert value(m, "gen_ai_client_operation_duration_seconds_bucket", **errored, le="40.96") == 1
    assert value(m, "gen_ai_client_operation_time_to_first_chunk_seconds_count", **GENAI) == 1

    # The buckets the GenAI conventions specify.
    les = sorted(
        float(dict(labels)["le"])
        for (name, labels) in samples(m)
        if name == "gen_ai_client_token_usage_bucket" and dict(labels).get("gen_ai_token_type") == "output"
    )
    assert les[:-1] == list(semconv.TOKEN_BUCKETS) and les[-1] == float("inf")
    assert semconv.TOKEN_BUCKETS[0] == 1 and semconv.TOKEN_BUCKETS[-1] == 67108864
    assert semconv.DURATION_BUCKETS == (
        0.01,
        0.02,
        0.04,
        0.08,
        0.16,
        0.32,
        0.64,
        1.28,
        2.56,
        5.12,
        10.24,
        20.48,
        40.96,
        81.92,
    )


def test_rejections_cache_breaker_and_queue() -> None:
    m = Metrics()
    m.rejected(tenant="t1", reason="rpm")
    m.rejected(tenant="t1", reason="rpm")
    m.rejected(tenant="t2", reason="budget")
    for result in ("hit", "hit", "miss", "bypass"):
        m.cache_lookup(result=result)
    m.breaker_transition(target="openai/gpt-4o", state="open")
    m.breaker_transition(target="openai/gpt-4o", state="half_open")
    m.breaker_transition(target="local/llama3", state="open")
    m.usage_queue(depth=12, dropped_total=3)
    m.usage_queue(depth=4, dropped_total=5)

    assert value(m, "aigw_ratelimit_rejections_total", tenant="t1", reason="rpm") == 2
    assert value(m, "aigw_ratelimit_rejections_total", tenant="t2", reason="budget") == 1
    assert value(m, "aigw_cache_lookups_total", result="hit") == 2
    assert value(m, "aigw_cache_lookups_total", result="miss") == 1
    assert value(m, "aigw_breaker_state", target="openai/gpt-4o") == 1  # half_open
    assert value(m, "aigw_breaker_state", target="local/llama3") == 2  # open
    assert value(m, "aigw_breaker_transitions_total", target="openai/gpt-4o", state="open") == 1
    assert value(m, "aigw_usage_queue_depth") == 4
    assert value(m, "aigw_usage_dropped_total") == 5
    m.usage_queue(depth=0, dropped_total=2)  # a new recorder starts counting from zero again
    assert value(m, "aigw_usage_dropped_total") == 7
    with pytest.raises(ValueError):
        m.breaker_transition(target="x", state="ajar")


def test_instances_do_not_share_values() -> None:
    a, b = Metrics(), Metrics()
    a.cache_lookup(result="hit")
    assert value(a, "aigw_cache_lookups_total", result="hit") == 1
    assert value(b, "aigw_cache_lookups_total", result="hit") == 0


def test_registry_dir_without_multiprocess_env_is_refused(tmp_path: object) -> None:
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        Metrics(registry_dir=str(tmp_path))


def test_otlp_export_when_configured(otlp: OtlpHttpReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", f"{otlp.endpoint}/v1/metrics")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "600000")  # only flush() exports
    m = Metrics(environ=os.environ)
    try:
        attempt(m, ttfc_s=0.2)
        m.request_done(**REQ, duration_s=0.5, overhead_s=0.001, cost_usd=Decimal("0.01"))  # type: ignore[arg-type]
        m.cache_lookup(result="hit")
        assert m.flush()
        got = otlp.wait_for_metrics(lambda ms: semconv.TOKEN_USAGE in {x["name"] for x in ms})
    finally:
        m.close()
    by_name = {x["name"]: x for x in got}
    usage = by_name[semconv.TOKEN_USAGE]
    assert usage["unit"] == "{token}"
    points = {p["attributes"]["gen_ai.token.type"]: p for p in usage["points"]}
    assert points["input"]["sum"] == 100 and points["output"]["sum"] == 7
    assert points["input"]["bounds"] == list(semconv.TOKEN_BUCKETS)
    assert points["input"]["attributes"]["gen_ai.provider.name"] == "aws.bedrock"
    duration = by_name[semconv.OPERATION_DURATION]
    assert duration["unit"] == "s" and duration["points"][0]["bounds"] == list(semconv.DURATION_BUCKETS)
    assert by_name[semconv.TIME_TO_FIRST_CHUNK]["points"][0]["count"] == 1
    assert {"aigw.requests", "aigw.gateway.overhead", "aigw.cost", "aigw.cache.lookups"} <= set(by_name)
    assert usage["resource"]["service.name"] == "aigw"
    # Prometheus still works alongside.
    assert value(m, "aigw_cache_lookups_total", result="hit") == 1


def test_no_otel_unless_configured() -> None:
    m = Metrics(environ={"OTEL_SERVICE_NAME": "aigw"})
    assert m._otel is None


def test_recording_is_cheap() -> None:
    """request_done + upstream_attempt on warm series: the target is well under 10 µs (about 5 µs measured on the
    2-core dev machine, single process); the bound here leaves room for slow CI machines but catches a regression
    such as calling .labels() per record.
    """
    m = Metrics()
    cost = Decimal("0.001")

    def one() -> None:
        m.request_done(**REQ, duration_s=0.4, overhead_s=0.0008, cost_usd=cost)  # type: ignore[arg-type]
        attempt(m)

    for _ in range(200):
        one()
    n, best = 2000, float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            one()
        best = min(best, (time.perf_counter() - start) / n)
    assert best < 20e-6, f"{best * 1e6:.1f} µs per request"
