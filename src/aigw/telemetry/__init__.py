"""Observability: Prometheus/OTLP metrics, OpenTelemetry traces, structured JSON logs.

Import the submodules directly (``aigw.telemetry.metrics``, ``.tracing``, ``.logs``): ``tracing`` pulls in the
OpenTelemetry SDK, which a gateway with traces off need not load.
"""
