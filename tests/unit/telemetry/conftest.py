"""Telemetry tests start from an environment with no OTEL_* / PROMETHEUS_* / AIGW_LOG_LEVEL settings."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.otlp import OtlpHttpReceiver


@pytest.fixture(autouse=True)
def clean_telemetry_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(("OTEL_", "PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")) or key == "AIGW_LOG_LEVEL":
            monkeypatch.delenv(key)


@pytest.fixture
def otlp() -> Iterator[OtlpHttpReceiver]:
    with OtlpHttpReceiver() as rx:
        yield rx
