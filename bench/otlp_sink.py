"""A tiny OTLP/HTTP sink for the benchmark: POST /v1/traces and /v1/metrics answer 200 with an empty protobuf body
and keep what was sent; GET /stats parses the kept traces (only then, off the measured run) and counts them.

    python -m bench.otlp_sink PORT
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable

import orjson
import uvloop
from aiohttp import web

PROTOBUF = "application/x-protobuf"

_received: dict[str, list[bytes]] = {"traces": [], "metrics": []}


def _sink(signal: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        _received[signal].append(await request.read())
        return web.Response(body=b"", headers={"content-type": PROTOBUF})

    return handler


async def stats(_: web.Request) -> web.Response:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    spans = 0
    trace_ids: set[bytes] = set()
    for body in _received["traces"]:
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                spans += len(ss.spans)
                trace_ids.update(s.trace_id for s in ss.spans)
    out = {
        "trace_exports": len(_received["traces"]),
        "metric_exports": len(_received["metrics"]),
        "spans": spans,
        "traces": len(trace_ids),
        "bytes": sum(len(b) for bodies in _received.values() for b in bodies),
    }
    return web.Response(body=orjson.dumps(out), content_type="application/json")


def main() -> None:
    port = int(sys.argv[1])
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", _sink("traces"))
    app.router.add_post("/v1/metrics", _sink("metrics"))
    app.router.add_get("/stats", stats)
    app.router.add_get("/healthz", stats)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
