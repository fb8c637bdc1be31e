"""Gateway metrics: prometheus_client on the request path (about 1 µs a record), rendered at ``GET /metrics``, and
mirrored into OTel instruments exported over OTLP only when the ``OTEL_*`` variables ask for it.

Multi-worker: with ``PROMETHEUS_MULTIPROC_DIR`` set in the environment *before* ``prometheus_client`` is imported
(the CLI sets it before uvicorn spawns its workers), every worker writes its values to mmap files in that directory
and :meth:`Metrics.render` aggregates them all: counters and histograms are summed, the usage queue depth is summed
over live workers, the breaker state is the latest transition recorded by a live worker. A worker that stops
cleanly calls :meth:`Metrics.close`, which drops its live gauges; one that crashes keeps its last gauge values until
the directory is cleared by :func:`prepare_multiproc_dir` at the next start (or :func:`mark_process_dead` is called).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from aigw.telemetry import otel_env, semconv
from aigw.telemetry.multiproc import mark_process_dead, prepare_multiproc_dir, render_multiprocess

if TYPE_CHECKING:
    from aigw.telemetry.otel_metrics import OtelMetrics

__all__ = ["BREAKER_STATES", "Metrics", "mark_process_dead", "prepare_multiproc_dir", "render_multiprocess"]

BREAKER_STATES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}

# Label names of the GenAI instruments, translated the way OTel's Prometheus exporters translate attribute keys.
_GENAI_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "aigw_provider", "gen_ai_request_model")


def _label(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Metrics:
    """All the gateway's metrics. Recording costs one dict lookup per call (per series set) plus the prometheus_client
    updates: labelled children are cached, since ``.labels()`` alone costs more than an update.
    """

    def __init__(self, *, registry_dir: str | None = None, environ: Mapping[str, str] = os.environ) -> None:
        self._dir = registry_dir
        if registry_dir is not None and (
            not getattr(values.ValueClass, "_multiprocess", False)
            or os.path.normpath(os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")) != os.path.normpath(registry_dir)
        ):
            # prometheus_client picks its value storage once, at import, from this variable, and writes its files
            # into the directory the variable names: registry_dir can only confirm it, not choose it.
            raise RuntimeError(
                "Metrics(registry_dir=...) needs PROMETHEUS_MULTIPROC_DIR set to that directory in the environment "
                "before prometheus_client is first imported (set it in the parent before starting the workers)"
            )
        # In multiprocess mode the values live in the mmap files and render() reads those; a registry would only
        # produce a per-process view, so the metrics are not registered anywhere.
        self._registry = CollectorRegistry(auto_describe=True) if registry_dir is None else None
        reg = self._registry
        genai = _GENAI_LABELS
        self._tokens = Histogram(
            "gen_ai_client_token_usage",
            "Number of input and output tokens used, per upstream attempt.",
            [*genai, "gen_ai_response_model", "gen_ai_token_type"],
            buckets=semconv.TOKEN_BUCKETS,
            registry=reg,
        )
        self._op_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration, per upstream attempt.",
            [*genai, "gen_ai_response_model", "error_type"],
            buckets=semconv.DURATION_BUCKETS,
            registry=reg,
        )
        self._ttfc = Histogram(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "Time from sending a streamed upstream request to receiving its first chunk.",
            [*genai, "gen_ai_response_model"],
            buckets=semconv.DURATION_BUCKETS,
            registry=reg,
        )
        self._requests = Counter(
            "aigw_requests",
            "Requests served, by tenant, model, provider, HTTP status, cache result and streaming.",
            ["tenant", "model", "provider", "status", "cache", "stream"],
            registry=reg,
        )
        self._duration = Histogram(
            "aigw_request_duration_seconds",
            "Time from receiving a request to its last byte, upstream included.",
            ["model", "provider", "stream"],
            buckets=semconv.DURATION_BUCKETS,
            registry=reg,
        )
        self._overhead = Histogram(
            "aigw_gateway_overhead_seconds",
            "Time spent in the gateway itself, upstream excluded.",
            ["stream", "cache"],
            buckets=semconv.OVERHEAD_BUCKETS,
            registry=reg,
        )
        self._cost = Counter(
            "aigw_cost_usd", "Cost of served requests in US dollars.", ["tenant", "model", "provider"], registry=reg
        )
        self._rejections = Counter(
            "aigw_ratelimit_rejections", "Requests rejected by a limit (rpm, tpm, budget).", ["tenant", "reason"],
            registry=reg,
        )  # fmt: skip
        self._cache = Counter("aigw_cache_lookups", "Response cache lookups by result.", ["result"], registry=reg)
        self._transitions = Counter(
            "aigw_breaker_transitions", "Circuit breaker state changes.", ["target", "state"], registry=reg
        )
        self._breaker = Gauge(
            "aigw_breaker_state",
            "Circuit breaker state per target: 0 closed, 1 half_open, 2 open (latest transition seen by any worker).",
            ["target"],
            # Breakers are shared through Redis, and only the worker that sees a transition records it: the newest
            # value is the truth, where max would keep an "open" that another worker has since closed.
            multiprocess_mode="livemostrecent",
            registry=reg,
        )
        self._queue_depth = Gauge(
            "aigw_usage_queue_depth",
            "Usage records waiting to be written (summed over live workers).",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self._dropped = Counter("aigw_usage_dropped", "Usage records dropped because the queue was full.", registry=reg)
        self._dropped_seen = 0
        # Usage-event sinks (issue 9). Backlog and drops are database-wide numbers every worker reads alike: the
        # newest reading is the truth (a sum over workers would multiply them).
        self._event_backlog = Gauge(
            "aigw_event_backlog",
            "Usage events not yet delivered, per sink.",
            ["sink"],
            multiprocess_mode="livemostrecent",
            registry=reg,
        )
        self._event_dropped = Gauge(
            "aigw_events_dropped",
            "Usage events dropped over the sink's max_backlog (all time).",
            ["sink"],
            multiprocess_mode="livemostrecent",
            registry=reg,
        )
        self._event_delivered = Counter("aigw_events_delivered", "Usage events delivered.", ["sink"], registry=reg)
        self._event_failed = Counter("aigw_event_failed_calls", "Failed sink calls.", ["sink"], registry=reg)
        self._event_seen: dict[str, tuple[int, int]] = {}
        self._children: dict[tuple[Any, ...], Any] = {}
        self._request_children: dict[tuple[Any, ...], tuple[Any, Any, Any, Any]] = {}
        self._attempt_children: dict[tuple[Any, ...], tuple[Any, Any, Any, Any]] = {}
        self._otel: OtelMetrics | None = None
        if otel_env.exporters("metrics", environ):
            from aigw.telemetry.otel_metrics import OtelMetrics

            self._otel = OtelMetrics(environ)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Metrics:
        """Multiprocess when ``PROMETHEUS_MULTIPROC_DIR`` is set, else a private in-process registry."""
        return cls(registry_dir=environ.get("PROMETHEUS_MULTIPROC_DIR") or None, environ=environ)

    def _child(self, metric: Any, *labels: Any) -> Any:
        # Keyed by the metric object and the raw values, so the str() conversions happen once per series.
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = metric.labels(*(_label(v) for v in labels))
            self._children[key] = child
        return child

    def request_done(
        self,
        *,
        tenant: str,
        model: str,
        provider: str | None,
        status: int,
        cache: str,
        stream: bool,
        duration_s: float,
        overhead_s: float,
        cost_usd: Decimal | None,
    ) -> None:
        """One finished client request (after the last byte of a stream)."""
        # One lookup yields all four children: the lookups, not the updates, were most of the cost.
        key = (tenant, model, provider, status, cache, stream)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self._child(self._requests, tenant, model, provider, status, cache, stream),
                self._child(self._duration, model, provider, stream),
                self._child(self._overhead, stream, cache),
                self._child(self._cost, tenant, model, provider),
            )
        requests, duration, overhead, cost = children
        requests.inc()
        duration.observe(duration_s)
        overhead.observe(overhead_s)
        if cost_usd:
            cost.inc(float(cost_usd))
        if self._otel is not None:
            self._otel.request_done(tenant, model, provider, status, cache, stream, duration_s, overhead_s, cost_usd)

    def upstream_attempt(
        self,
        *,
        provider_kind: str,
        provider: str,
        operation: str,
        request_model: str,
        response_model: str | None,
        duration_s: float,
        ttfc_s: float | None,
        error_type: str | None,
        input_tokens: int | None,
        output_tokens: int | None,
    ) -> None:
        """One upstream call (each retry and each fallback target is its own attempt)."""
        # What was measured is part of the key, so an attempt without tokens (an error) creates no empty series.
        has_ttfc, has_in, has_out = ttfc_s is not None, input_tokens is not None, output_tokens is not None
        key = (operation, provider_kind, provider, request_model, response_model, error_type, has_ttfc, has_in, has_out)
        children = self._attempt_children.get(key)
        if children is None:
            labels = (operation, semconv.provider_name(provider_kind), provider, request_model, response_model)
            children = self._attempt_children[key] = (
                self._child(self._op_duration, *labels, error_type),
                self._child(self._ttfc, *labels) if has_ttfc else None,
                self._child(self._tokens, *labels, "input") if has_in else None,
                self._child(self._tokens, *labels, "output") if has_out else None,
            )
        op_duration, ttfc, tokens_in, tokens_out = children
        op_duration.observe(duration_s)
        if ttfc is not None:
            ttfc.observe(ttfc_s)
        if tokens_in is not None:
            tokens_in.observe(input_tokens)
        if tokens_out is not None:
            tokens_out.observe(output_tokens)
        if self._otel is not None:
            self._otel.upstream_attempt(
                operation, semconv.provider_name(provider_kind), provider, request_model, response_model, duration_s,
                ttfc_s, error_type, input_tokens, output_tokens,
            )  # fmt: skip

    def rejected(self, *, tenant: str, reason: str) -> None:
        """A request refused by a limit: ``rpm``, ``tpm`` or ``budget``."""
        self._child(self._rejections, tenant, reason).inc()
        if self._otel is not None:
            self._otel.rejected(tenant, reason)

    def cache_lookup(self, *, result: str) -> None:
        """``hit``, ``miss`` or ``bypass``."""
        self._child(self._cache, result).inc()
        if self._otel is not None:
            self._otel.cache_lookup(result)

    def breaker_transition(self, *, target: str, state: str) -> None:
        """A breaker moved to ``closed``, ``half_open`` or ``open``; also sets the per-target state gauge."""
        level = BREAKER_STATES.get(state)
        if level is None:
            raise ValueError(f"unknown breaker state {state!r}; expected one of {sorted(BREAKER_STATES)}")
        self._child(self._transitions, target, state).inc()
        self._child(self._breaker, target).set(level)
        if self._otel is not None:
            self._otel.breaker_transition(target, state, level)

    def usage_queue(self, *, depth: int, dropped_total: int) -> None:
        """The usage recorder's current queue depth and its cumulative drop count (turned into a counter here, so
        ``rate()`` works and workers add up).
        """
        self._queue_depth.set(depth)
        # A smaller total means the recorder was recreated: count its drops from zero again.
        delta = dropped_total - self._dropped_seen if dropped_total >= self._dropped_seen else dropped_total
        self._dropped_seen = dropped_total
        if delta:
            self._dropped.inc(delta)
        if self._otel is not None:
            self._otel.usage_queue(depth, delta)

    def event_sink(
        self, *, sink: str, backlog: int, delivered_total: int, failed_calls_total: int, dropped_total: int
    ) -> None:
        """One usage-event sink's numbers (the events monitor, every few seconds); totals become counters here."""
        self._child(self._event_backlog, sink).set(backlog)
        self._child(self._event_dropped, sink).set(dropped_total)
        delivered_seen, failed_seen = self._event_seen.get(sink, (0, 0))
        if delivered_total > delivered_seen:
            self._child(self._event_delivered, sink).inc(delivered_total - delivered_seen)
        if failed_calls_total > failed_seen:
            self._child(self._event_failed, sink).inc(failed_calls_total - failed_seen)
        self._event_seen[sink] = (max(delivered_total, delivered_seen), max(failed_calls_total, failed_seen))

    def render(self) -> tuple[bytes, str]:
        """Prometheus text exposition and its content type; all workers' values in multiprocess mode."""
        if self._dir is not None:
            return render_multiprocess(self._dir)
        assert self._registry is not None
        return generate_latest(self._registry), CONTENT_TYPE_PLAIN_0_0_4

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Export pending OTLP metrics now (tests, shutdown); true when there is nothing to export or it went out."""
        return self._otel is None or self._otel.force_flush(timeout_s * 1000)

    def close(self) -> None:
        """At shutdown: flush OTLP metrics and, in multiprocess mode, drop this worker's live gauges."""
        if self._otel is not None:
            self._otel.shutdown()
            self._otel = None
        if self._dir is not None:
            mark_process_dead(os.getpid(), self._dir)
