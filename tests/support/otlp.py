"""A real OTLP receiver for tests: OTLP/HTTP (protobuf) on 127.0.0.1, and optionally OTLP/gRPC.

Decodes what the SDK exporters send with opentelemetry-proto and keeps spans and metric points as plain dicts::

    with OtlpHttpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint)
        ...
        tracing.force_flush()
        spans = rx.wait_for(lambda spans: any(s["name"] == "chat gpt-4o" for s in spans))
"""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Callable, Iterable
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

Record = dict[str, Any]


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def attributes(kvs: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def _span(span: Span, resource: dict[str, Any], scope: str) -> Record:
    return {
        "name": span.name,
        "kind": Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex(),
        "attributes": attributes(span.attributes),
        "status": Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
        "events": [{"name": e.name, "attributes": attributes(e.attributes)} for e in span.events],
        "resource": resource,
        "scope": scope,
    }


def _metric_points(metric: Any) -> list[Record]:
    kind = metric.WhichOneof("data")
    points: list[Record] = []
    for p in getattr(metric, kind).data_points if kind else ():
        point: Record = {"attributes": attributes(p.attributes)}
        if kind == "histogram":
            point.update(count=p.count, sum=p.sum, bounds=list(p.explicit_bounds), buckets=list(p.bucket_counts))
        else:
            point["value"] = p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
        points.append(point)
    return points


class Collected:
    """Thread-safe store of what arrived, with waiting on a condition variable (no sleep-and-hope)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.spans: list[Record] = []
        self.metrics: list[Record] = []
        self.requests = 0

    def add_traces(self, req: ExportTraceServiceRequest) -> None:
        new: list[Record] = []
        for rs in req.resource_spans:
            resource = attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                new.extend(_span(s, resource, ss.scope.name) for s in ss.spans)
        with self._cond:
            self.spans.extend(new)
            self.requests += 1
            self._cond.notify_all()

    def add_metrics(self, req: ExportMetricsServiceRequest) -> None:
        new: list[Record] = []
        for rm in req.resource_metrics:
            resource = attributes(rm.resource.attributes)
            for sm in rm.scope_metrics:
                new.extend(
                    {"name": m.name, "unit": m.unit, "resource": resource, "points": _metric_points(m)}
                    for m in sm.metrics
                )
        with self._cond:
            self.metrics.extend(new)
            self.requests += 1
            self._cond.notify_all()

    def _wait(
        self, items: Callable[[], list[Record]], predicate: Callable[[list[Record]], bool], timeout: float
    ) -> list[Record]:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(items()), timeout):
                raise AssertionError(f"OTLP receiver: condition not met within {timeout}s; got {items()!r}")
            return list(items())

    def wait_for(self, predicate: Callable[[list[Record]], bool], timeout: float = 5.0) -> list[Record]:
        """Block until ``predicate(spans)`` holds; returns a snapshot of the spans."""
        return self._wait(lambda: self.spans, predicate, timeout)

    def wait_for_metrics(self, predicate: Callable[[list[Record]], bool], timeout: float = 5.0) -> list[Record]:
        """Block until ``predicate(metrics)`` holds (each export adds its metrics); returns a snapshot."""
        return self._wait(lambda: self.metrics, predicate, timeout)


def _decode_body(body: bytes, encoding: str | None) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


class OtlpHttpReceiver(Collected):
    """OTLP/HTTP protobuf receiver on 127.0.0.1 with an ephemeral port, served by a background thread."""

    def __init__(self) -> None:
        super().__init__()
        collected = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = _decode_body(self.rfile.read(int(self.headers.get("Content-Length", 0))),
                                    self.headers.get("Content-Encoding"))  # fmt: skip
                reply: bytes
                if self.path == "/v1/traces":
                    collected.add_traces(ExportTraceServiceRequest.FromString(body))
                    reply = ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    collected.add_metrics(ExportMetricsServiceRequest.FromString(body))
                    reply = ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # A short poll interval: shutdown() waits for serve_forever to notice, up to one interval.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), name="otlp-http-receiver", daemon=True
        )

    def __enter__(self) -> OtlpHttpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class OtlpGrpcReceiver(Collected):
    """OTLP/gRPC trace and metrics receiver on 127.0.0.1 with an ephemeral port (plaintext)."""

    def __init__(self) -> None:
        super().__init__()
        import grpc  # type: ignore[import-untyped]
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as msvc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tsvc

        collected = self

        class Traces(tsvc.TraceServiceServicer):
            def Export(self, request: ExportTraceServiceRequest, context: Any) -> ExportTraceServiceResponse:
                collected.add_traces(request)
                return ExportTraceServiceResponse()

        class Metrics(msvc.MetricsServiceServicer):
            def Export(self, request: ExportMetricsServiceRequest, context: Any) -> ExportMetricsServiceResponse:
                collected.add_metrics(request)
                return ExportMetricsServiceResponse()

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        tsvc.add_TraceServiceServicer_to_server(Traces(), self._server)  # type: ignore[no-untyped-call]
        msvc.add_MetricsServiceServicer_to_server(Metrics(), self._server)  # type: ignore[no-untyped-call]
        self.port: int = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OtlpGrpcReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None).wait(5)
