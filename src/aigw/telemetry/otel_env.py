"""Reading the standard ``OTEL_*`` variables for the decisions that are ours: whether a signal is exported at all,
over which protocol, and whether message contents may be captured. Everything else (endpoints, headers, timeouts,
compression, sampler, batch sizes, export interval) the SDK reads from the process environment itself.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource

Signal = Literal["traces", "metrics"]
Protocol = Literal["http/protobuf", "grpc"]

_SUPPORTED_EXPORTERS = frozenset({"otlp", "console"})


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def exporters(signal: Signal, environ: Mapping[str, str]) -> list[str]:
    """The exporters to use for a signal; empty means the signal is off.

    The SDK's own default for ``OTEL_<SIGNAL>_EXPORTER`` is ``otlp``, which would make every process try
    localhost:4318; we export only when told to: the variable names an exporter, or an OTLP endpoint is set.
    """
    if _truthy(environ.get("OTEL_SDK_DISABLED")):
        return []
    upper = signal.upper()
    raw = environ.get(f"OTEL_{upper}_EXPORTER")
    if raw is None or not raw.strip():
        endpoint = environ.get(f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if endpoint else []
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    if "none" in names:
        return []
    unknown = sorted(set(names) - _SUPPORTED_EXPORTERS)
    if unknown:
        raise ValueError(f"OTEL_{upper}_EXPORTER: unsupported exporter(s) {unknown}; use otlp, console or none")
    return list(dict.fromkeys(names))


def protocol(signal: Signal, environ: Mapping[str, str]) -> Protocol:
    """``OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL``, else ``OTEL_EXPORTER_OTLP_PROTOCOL``, else http/protobuf."""
    raw = (
        environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if raw == "http/protobuf":
        return "http/protobuf"
    if raw == "grpc":
        return "grpc"
    # Failing at start-up beats silently sending protobuf to a JSON-only collector.
    raise ValueError(f"OTLP protocol {raw!r} is not supported; use http/protobuf or grpc")


def capture_content(environ: Mapping[str, str]) -> bool:
    """Message contents go into telemetry only when explicitly enabled (the GenAI instrumentations' variable)."""
    return _truthy(environ.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"))


_instance_ids: dict[int, str] = {}


def resource() -> Resource:
    """The SDK resource (the SDK reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES), named ``aigw`` when no
    service name is configured, plus a per-process ``service.instance.id`` unless one is configured: uvicorn workers
    each export their own cumulative metrics, and identical resources would overwrite each other in the backend.
    """
    from opentelemetry.sdk.resources import Resource

    detected = Resource.create()
    extra: dict[str, str] = {}
    if str(detected.attributes.get("service.name", "")).startswith("unknown_service"):
        extra["service.name"] = "aigw"
    if "service.instance.id" not in detected.attributes:
        # Keyed by pid so that a forked worker does not inherit its parent's id.
        extra["service.instance.id"] = _instance_ids.setdefault(os.getpid(), str(uuid.uuid4()))
    return detected.merge(Resource(extra)) if extra else detected
