"""Per-request telemetry, in one place: a CLIENT span and GenAI metrics per upstream attempt, and per request the
gateway's own metrics, the server span's attributes and the structured access log line.

Called from the gateway at the points it already owns (each attempt, the one ledger record per request), so nothing
is measured twice. Cheap when off: metrics are a few dict lookups, traces are skipped when not configured.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import Span, use_span

from aigw.errors import GatewayError
from aigw.schema.usage import Usage
from aigw.telemetry.logs import access_log
from aigw.telemetry.metrics import Metrics
from aigw.telemetry.tracing import Tracing, set_response_attrs

if TYPE_CHECKING:
    from aigw.providers.transport import Upstream
    from aigw.routing import Target

__all__ = ["Attempt", "Observer"]


class Attempt:
    """One upstream attempt: ``with attempt.current():`` around the call (so the span is propagated upstream), then
    :meth:`finish` once with its outcome. A stream's attempt finishes when the stream ends."""

    __slots__ = (
        "_charged",
        "_obs",
        "_operation",
        "_span",
        "_started",
        "_target",
        "_upstream",
        "finished",
        "first_chunk_s",
    )

    def __init__(self, obs: Observer, target: Target, upstream: Upstream, span: Span | None, operation: str) -> None:
        self._obs = obs
        self._operation = operation
        self._charged = 0.0
        self._target = target
        self._upstream = upstream
        self._span = span
        self._started = time.perf_counter()
        self.first_chunk_s: float | None = None
        self.finished = False

    def current(self) -> AbstractContextManager[Span | None]:
        # No span (tracing off, or the request unsampled): no context to attach, so nothing to do per request.
        return use_span(self._span, end_on_exit=False) if self._span is not None else nullcontext()

    def elapsed_s(self) -> float:
        return time.perf_counter() - self._started

    def charge(self) -> float:
        """Upstream time not yet charged to the request (for the overhead figure: the request's time minus this)."""
        elapsed = self.elapsed_s()
        delta, self._charged = elapsed - self._charged, elapsed
        return delta

    @property
    def captures_content(self) -> bool:
        """Message contents go on this attempt's span (opt-in: OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT)."""
        tracing = self._obs.tracing
        return self._span is not None and tracing is not None and tracing.capture_content

    def first_chunk(self) -> None:
        self.first_chunk_s = self.elapsed_s()

    def finish(
        self,
        *,
        usage: Usage | None = None,
        response_model: str | None = None,
        finish_reason: str | None = None,
        error: BaseException | None = None,
        choices: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """``choices``: the answer's ChatCompletion choices, for content capture (given only when it is on)."""
        if self.finished:
            return
        self.finished = True
        error_type = None
        if error is not None:
            error_type = error.error_type if isinstance(error, GatewayError) else type(error).__qualname__
        self._obs.metrics.upstream_attempt(
            provider_kind=self._upstream.kind,
            provider=self._target.provider,
            operation=self._operation,
            request_model=self._target.model,
            response_model=response_model,
            duration_s=self.elapsed_s(),
            ttfc_s=self.first_chunk_s,
            error_type=error_type,
            input_tokens=usage.prompt_tokens if usage is not None else None,
            output_tokens=usage.completion_tokens if usage is not None else None,
        )
        span = self._span
        if span is not None:
            if choices is not None and self._obs.tracing is not None:
                self._obs.tracing.record_output_messages(span, choices)
            set_response_attrs(
                span,
                response_model=response_model,
                response_id=None,
                finish_reasons=[finish_reason] if finish_reason else None,
                input_tokens=usage.prompt_tokens if usage is not None else None,
                output_tokens=usage.completion_tokens if usage is not None else None,
                error_type=error_type,
                cost_usd=None,
                cache=None,
                tenant=None,
            )
            span.end()  # an error_type above has already marked the span as failed


class Observer:
    def __init__(self, metrics: Metrics, tracing: Tracing | None) -> None:
        self.metrics = metrics
        self.tracing = tracing

    def attempt(
        self,
        target: Target,
        upstream: Upstream,
        operation: str,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        messages: Sequence[Mapping[str, Any]] | None = None,
    ) -> Attempt:
        span = None
        # Parent-based sampling: an attempt of an unsampled request would be unsampled too, so it is not made at all
        # (the upstream still gets the request's trace context, from the server span).
        if self.tracing is not None and trace.get_current_span().is_recording():
            span = self.tracing.start_client_span(
                operation=operation,
                provider_kind=upstream.kind,
                provider=target.provider,
                request_model=target.model,
                server_address=urlsplit(upstream.base_url).hostname,
                max_tokens=max_tokens,
                temperature=temperature,
            )
            if messages is not None:  # recorded only with content capture on (Tracing decides)
                self.tracing.record_input_messages(span, messages)
        return Attempt(self, target, upstream, span, operation)

    def request_span(
        self, tenant: str, usage: Usage, cost: Decimal | None, cache: str | None, error: GatewayError | None
    ) -> None:
        """The request's result on its server span, while that span is still current (gateway._record)."""
        if self.tracing is None:
            return
        span = trace.get_current_span()  # the server span (attempts' spans are no longer current here)
        if not span.is_recording():
            return
        set_response_attrs(
            span,
            response_model=None,
            response_id=None,
            finish_reasons=None,
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            error_type=error.error_type if error else None,
            cost_usd=cost,
            cache=cache,
            tenant=tenant,
            mark_error=False,  # the response status decides (set_server_status): 4xx is the client's
        )

    def request(
        self,
        *,
        request_id: str,
        tenant: str,
        model: str,
        provider: str | None,
        status: int,
        cache: str | None,
        stream: bool,
        duration_s: float,
        upstream_s: float,
        usage: Usage,
        cost: Decimal | None,
        attempts: int,
        error_type: str | None,
    ) -> None:
        """Once per request, with the ledger record (gateway._book)."""
        overhead_s = max(0.0, duration_s - upstream_s)
        self.metrics.request_done(
            tenant=tenant,
            model=model,
            provider=provider,
            status=status,
            cache=cache or "none",
            stream=stream,
            duration_s=duration_s,
            overhead_s=overhead_s,
            cost_usd=cost,
        )
        access_log(
            request_id=request_id,
            tenant=tenant,
            model=model,
            provider=provider,
            status=status,
            latency_ms=duration_s * 1000.0,
            overhead_ms=overhead_s * 1000.0,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost_usd=cost,
            cache=cache,
            stream=stream,
            attempts=attempts,
            error_type=error_type,
        )
