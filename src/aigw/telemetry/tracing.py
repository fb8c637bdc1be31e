"""Traces: one SERVER span per request, one CLIENT span per upstream attempt, W3C trace context in and out.

Configured only from the ``OTEL_*`` variables; :func:`configure_tracing` returns None when traces are not asked for,
so the request path's cost when off is one ``is None`` test. Span contents follow the GenAI semantic conventions;
message contents are recorded only with ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from decimal import Decimal
from typing import Any

import orjson
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, StaticSampler, TraceIdRatioBased
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
    use_span,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from aigw.telemetry import content, otel_env, semconv

# W3C trace context only: baggage from a client is not ours to forward to a provider.
_PROPAGATOR = TraceContextTextMapPropagator()
_TRACE_HEADERS = {b"traceparent": "traceparent", b"tracestate": "tracestate"}


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    # The exporters read their endpoint, headers, timeout, compression and certificates from OTEL_* themselves.
    if otel_env.protocol("traces", environ) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


def configure_tracing(environ: Mapping[str, str] = os.environ) -> Tracing | None:
    """A :class:`Tracing` when traces are configured (``OTEL_TRACES_EXPORTER`` names an exporter, or an OTLP
    endpoint is set), else None. ``environ`` decides on/off, protocol and content capture; the SDK reads the rest
    (endpoint, headers, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER[_ARG]``, batch
    settings) from the process environment, so pass ``os.environ`` outside tests.
    """
    names = otel_env.exporters("traces", environ)
    if not names:
        return None
    # sampler=None: the SDK reads OTEL_TRACES_SAMPLER.
    provider = TracerProvider(resource=otel_env.resource(), id_generator=PresetIds())
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, environ)))
    return Tracing(provider, capture_content=otel_env.capture_content(environ))


@contextmanager
def _guarded(span: Span) -> Iterator[Span]:
    # The SDK's own exception recording would put the exception message (which may quote an upstream body) into the
    # trace; we record the error class only.
    with use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
        try:
            yield span
        except GeneratorExit:
            raise
        except BaseException as exc:
            if span.is_recording():
                # A more precise error.type set by the caller (set_server_status, set_response_attrs) wins.
                if semconv.ERROR_TYPE not in (getattr(span, "attributes", None) or {}):
                    span.set_attribute(semconv.ERROR_TYPE, type(exc).__qualname__)
                span.set_status(Status(StatusCode.ERROR))
            raise


class PresetIds(RandomIdGenerator):
    """The SDK's random ids, except that the next trace id can be chosen: the one :class:`Tracing` drew to make a
    root's sampling decision itself, so the SDK's sampler sees the same id and decides the same."""

    def __init__(self) -> None:
        self.next_trace_id: int | None = None

    def generate_trace_id(self) -> int:
        preset, self.next_trace_id = self.next_trace_id, None
        return preset if preset is not None else super().generate_trace_id()


_TRACE_ID_LIMIT = TraceIdRatioBased.TRACE_ID_LIMIT


def _root_bound(sampler: Sampler) -> int | None:
    """The trace-id bound under which a root span is sampled, when the configured sampler decides roots by the trace
    id alone (the ratio samplers, always_on, always_off, each possibly parent-based); None for anything else."""
    root = getattr(sampler, "_root", None) if isinstance(sampler, ParentBased) else sampler
    if isinstance(root, TraceIdRatioBased):
        return root.bound
    if isinstance(root, StaticSampler):
        return _TRACE_ID_LIMIT + 1 if root._decision is Decision.RECORD_AND_SAMPLE else 0
    return None


class _Current:
    """Makes an unsampled span current (so ``inject`` propagates its trace id and the not-sampled flag); there is
    nothing to end or record."""

    __slots__ = ("_token", "span")

    def __init__(self, span: Span) -> None:
        self.span = span

    def __enter__(self) -> Span:
        self._token = otel_context.attach(set_span_in_context(self.span))
        return self.span

    def __exit__(self, *exc: object) -> None:
        otel_context.detach(self._token)


class Tracing:
    """Spans for the request path. Not a global: the provider is ours, so tests can build several."""

    def __init__(self, provider: TracerProvider, *, capture_content: bool = False) -> None:
        self.provider = provider
        self.capture_content = capture_content
        self._tracer = provider.get_tracer("aigw")
        # Roots (no incoming traceparent) are most requests, and at a low ratio nearly all unsampled: for them the
        # trace id is drawn and the ratio applied here, and the SDK's span machinery is skipped (it cost ~10 us a
        # request). A sampled root goes to the SDK with the same id, so its sampler makes the same decision and
        # the exported ratio stays exact. Only for samplers that decide by the trace id and ids we can preset.
        ids = provider.id_generator
        bound = _root_bound(provider.sampler) if isinstance(ids, PresetIds) else None
        self._ids = ids if isinstance(ids, PresetIds) else None
        self._root_bound = bound
        random_ids = TraceFlags.RANDOM_TRACE_ID if ids.is_trace_id_random() else TraceFlags.DEFAULT
        self._unsampled_flags = TraceFlags(random_ids)

    def server_span(
        self, method: str, route: str | None, headers: Iterable[tuple[bytes, bytes]], *, path: str | None = None
    ) -> AbstractContextManager[Span]:
        """The request's SERVER span, continuing the client's ``traceparent``/``tracestate`` (raw ASGI headers, names
        lower-cased as ASGI gives them); a root span when there is none or it is malformed.
        """
        carrier = {_TRACE_HEADERS[k]: v.decode("latin-1") for k, v in headers if k in _TRACE_HEADERS}
        ids = self._ids
        if not carrier and ids is not None and self._root_bound is not None:
            trace_id = ids.generate_trace_id()
            if trace_id & _TRACE_ID_LIMIT >= self._root_bound:
                unsampled = SpanContext(trace_id, ids.generate_span_id(), False, self._unsampled_flags)
                return _Current(NonRecordingSpan(unsampled))
            ids.next_trace_id = trace_id
        # Extract onto an empty context, never the current one: a request must not become the child of whatever
        # span happens to be current in the server task.
        parent = _PROPAGATOR.extract(carrier, context=Context())
        attrs = {"http.request.method": method, "url.path": path or route or "/"}
        if route is not None:  # a template (``/admin/tenants/{tenant_id}``), never a raw path: names stay bounded
            attrs["http.route"] = route
        try:
            span = self._tracer.start_span(
                f"{method} {route}" if route else method, context=parent, kind=SpanKind.SERVER, attributes=attrs
            )
        finally:
            if ids is not None:
                ids.next_trace_id = None  # if not taken (a disabled tracer draws none), never the next root's
        return _guarded(span)

    def start_client_span(
        self,
        *,
        operation: str,
        provider_kind: str,
        provider: str,
        request_model: str,
        server_address: str | None,
        max_tokens: int | None,
        temperature: float | None,
        server_port: int | None = None,
    ) -> Span:
        """A CLIENT span for one upstream attempt, named ``{operation} {request_model}``, started but neither current
        nor ended: for an attempt that outlives the code that made it (a stream, ended when the stream ends)."""
        attrs: dict[str, Any] = {
            semconv.OPERATION_NAME: operation,
            semconv.PROVIDER_NAME: semconv.provider_name(provider_kind),
            semconv.REQUEST_MODEL: request_model,
            semconv.AIGW_PROVIDER: provider,
        }
        if server_address is not None:
            attrs[semconv.SERVER_ADDRESS] = server_address
            if server_port is not None:
                attrs[semconv.SERVER_PORT] = server_port
        if max_tokens is not None:
            attrs[semconv.REQUEST_MAX_TOKENS] = max_tokens
        if temperature is not None:
            attrs[semconv.REQUEST_TEMPERATURE] = temperature
        return self._tracer.start_span(f"{operation} {request_model}", kind=SpanKind.CLIENT, attributes=attrs)

    def client_span(self, **kwargs: Any) -> AbstractContextManager[Span]:
        """A CLIENT span for one upstream attempt (arguments: :meth:`start_client_span`), current while it is open so
        that :meth:`inject` propagates it."""
        return _guarded(self.start_client_span(**kwargs))

    def inject(self, headers: dict[str, str]) -> None:
        """Add ``traceparent`` (and ``tracestate``) of the current span to an upstream request's headers."""
        _PROPAGATOR.inject(headers)

    def record_input_messages(self, span: Span, messages: Sequence[Mapping[str, Any]]) -> None:
        """``gen_ai.input.messages`` from OpenAI-style chat messages; only with content capture enabled."""
        if self.capture_content and span.is_recording():
            span.set_attribute(semconv.INPUT_MESSAGES, orjson.dumps(content.input_messages(messages)).decode())

    def record_output_messages(self, span: Span, choices: Sequence[Mapping[str, Any]]) -> None:
        """``gen_ai.output.messages`` from OpenAI-style response choices; only with content capture enabled."""
        if self.capture_content and span.is_recording():
            span.set_attribute(semconv.OUTPUT_MESSAGES, orjson.dumps(content.output_messages(choices)).decode())

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        return self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporters (lifespan shutdown)."""
        self.provider.shutdown()


def set_server_route(span: Span, method: str, route: str | None) -> None:
    """Name the SERVER span after the matched route's template, once routing has found one."""
    if route is not None and span.is_recording():
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)


def set_server_status(span: Span, status: int, *, error_type: str | None = None) -> None:
    """The response status on the SERVER span; 5xx marks the span as an error (4xx is the client's, per semconv)."""
    if not span.is_recording():
        return
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        # A precise error.type set earlier (the gateway's, e.g. upstream_timeout) is not replaced by the status.
        if error_type is not None or semconv.ERROR_TYPE not in (getattr(span, "attributes", None) or {}):
            span.set_attribute(semconv.ERROR_TYPE, error_type or str(status))
        span.set_status(Status(StatusCode.ERROR))
    elif error_type is not None:
        span.set_attribute(semconv.ERROR_TYPE, error_type)


def set_response_attrs(
    span: Span,
    *,
    response_model: str | None,
    response_id: str | None,
    finish_reasons: Sequence[str] | None,
    input_tokens: int | None,
    output_tokens: int | None,
    error_type: str | None,
    cost_usd: Decimal | None,
    cache: str | None,
    tenant: str | None,
    mark_error: bool = True,
) -> None:
    """Response-side attributes on a client or server span; None values are skipped, and nothing at all is computed
    for a span that is not recording (unsampled). ``mark_error=False`` records ``error.type`` without the ERROR
    status: on the SERVER span that is set_server_status's call (a 4xx is not a server error).
    """
    if not span.is_recording():
        return
    attrs: dict[str, Any] = {}
    if response_model is not None:
        attrs[semconv.RESPONSE_MODEL] = response_model
    if response_id is not None:
        attrs[semconv.RESPONSE_ID] = response_id
    if finish_reasons is not None:
        attrs[semconv.RESPONSE_FINISH_REASONS] = list(finish_reasons)
    if input_tokens is not None:
        attrs[semconv.USAGE_INPUT_TOKENS] = input_tokens
    if output_tokens is not None:
        attrs[semconv.USAGE_OUTPUT_TOKENS] = output_tokens
    if cost_usd is not None:
        attrs[semconv.AIGW_COST] = float(cost_usd)
    if cache is not None:
        attrs[semconv.AIGW_CACHE] = cache
    if tenant is not None:
        attrs[semconv.AIGW_TENANT] = tenant
    if error_type is not None:
        attrs[semconv.ERROR_TYPE] = error_type
        if mark_error:
            span.set_status(Status(StatusCode.ERROR))
    span.set_attributes(attrs)
