"""Structured logs: JSON lines, one per access_log, level handling, redaction, formatting off the caller's thread."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from aigw.telemetry.logs import access_log, configure_logging, redact, set_level, stop_logging


@pytest.fixture(autouse=True)
def _stopped() -> Iterator[None]:
    yield
    stop_logging()


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    stop_logging()  # drains the queue: everything logged so far is written
    return [json.loads(line) for line in buf.getvalue().splitlines()]


ACCESS: dict[str, Any] = dict(
    request_id="req-1", tenant="t1", model="gpt-4o", provider="openai", status=200, latency_ms=123.4567,
    overhead_ms=0.8123, prompt_tokens=10, completion_tokens=5, cost_usd=Decimal("0.00125"), cache="miss",
    stream=True, attempts=2, error_type=None,
)  # fmt: skip


def test_one_json_line_per_request() -> None:
    buf = io.StringIO()
    configure_logging("info", stream=buf)
    access_log(**ACCESS)
    access_log(**{**ACCESS, "request_id": "req-2", "status": 502, "error_type": "upstream_unavailable"})
    got = lines(buf)
    assert len(got) == 2
    first = got[0]
    assert first["logger"] == "aigw.access" and first["level"] == "info" and first["msg"] == "request"
    assert first["ts"].endswith("Z")
    assert {k: first[k] for k in ACCESS} == {**ACCESS, "latency_ms": 123.457, "overhead_ms": 0.812, "cost_usd": 0.00125}
    assert (got[1]["request_id"], got[1]["status"], got[1]["error_type"]) == ("req-2", 502, "upstream_unavailable")


def test_other_aigw_loggers_are_json_and_extra_fields_kept() -> None:
    buf = io.StringIO()
    configure_logging("debug", stream=buf)
    logging.getLogger("aigw.metering").debug("flushed %d rows", 12, extra={"batch": 3})
    [line] = lines(buf)
    assert line["msg"] == "flushed 12 rows" and line["batch"] == 3 and line["level"] == "debug"


def test_warning_level_writes_nothing_for_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    configure_logging("warning", stream=buf)
    access_log(**ACCESS)
    logging.getLogger("aigw.api").info("not shown")
    assert lines(buf) == []


def test_env_overrides_config_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIGW_LOG_LEVEL", "error")
    buf = io.StringIO()
    configure_logging("info", stream=buf)
    access_log(**ACCESS)
    logging.getLogger("aigw.api").warning("not shown either")
    logging.getLogger("aigw.api").error("shown")
    assert [x["msg"] for x in lines(buf)] == ["shown"]


def test_bad_level_is_refused() -> None:
    with pytest.raises(ValueError):
        configure_logging("chatty", stream=io.StringIO())


def test_configure_twice_does_not_duplicate_lines() -> None:
    buf = io.StringIO()
    configure_logging("info", stream=buf)
    configure_logging("info", stream=buf)
    access_log(**ACCESS)
    assert len(lines(buf)) == 1


def test_records_are_formatted_on_the_listener_thread() -> None:
    formatted_on: list[str] = []

    class Probe:
        def __str__(self) -> str:
            formatted_on.append(threading.current_thread().name)
            return "probe"

    buf = io.StringIO()
    configure_logging("info", stream=buf)
    logging.getLogger("aigw.test").info("value %s", Probe())
    assert [x["msg"] for x in lines(buf)] == ["value probe"]
    assert formatted_on and threading.main_thread().name not in formatted_on


SECRETS = [
    "gw-sk-Zx81kLmQp0aBcDeF123456",
    "sk-proj-AbCdEf0123456789abcdef",
    "sk-ant-api03-xyzXYZ0123456789",
    "AKIAIOSFODNN7EXAMPLE",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",  # 40-char AWS secret access key shape
    "hunter2-password-value",
    "opaque-bearer-token.value",
]


def test_secrets_are_redacted_everywhere() -> None:
    buf = io.StringIO()
    configure_logging("info", stream=buf)
    log = logging.getLogger("aigw.test")
    log.info("tenant key %s", SECRETS[0])
    log.info("upstream said: Authorization: Bearer %s", SECRETS[6])
    log.info("openai %s anthropic %s", SECRETS[1], SECRETS[2])
    log.info('aws creds {"aws_access_key_id": "%s", "aws_secret_access_key": "%s"}', SECRETS[3], SECRETS[4])
    log.info("config password=%s", SECRETS[5], extra={"detail": f"key={SECRETS[0]} api_key: {SECRETS[1]}"})
    try:
        raise RuntimeError(f"failed with {SECRETS[4]}")
    except RuntimeError:
        log.exception("boom")
    lines(buf)
    text = buf.getvalue()
    for secret in SECRETS:
        assert secret not in text
    assert text.count("[REDACTED]") >= len(SECRETS)
    assert "RuntimeError" in text  # the traceback is kept, only the secret in it goes


def test_redaction_leaves_ordinary_text_alone() -> None:
    plain = (
        "request req-1 tenant 3f0c8a9e model gpt-4o prompt_tokens=10 max_tokens=256 "
        "sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709 task-runner risk-score"
    )
    assert redact(plain) == plain
    assert redact("x-api-key: abc123def") == "x-api-key: [REDACTED]"


def test_redaction_is_linear_on_long_runs_of_name_characters() -> None:
    """A long run of letters used to be retried from every position by the key=value rule (16 KB: seconds, with the
    interpreter lock held on the log thread). 200 KB must now take a blink; the old rule would take minutes."""
    text = "a" * 200_000 + " api_key=s3cret"
    started = time.perf_counter()
    out = redact(text)
    assert time.perf_counter() - started < 2.0
    assert out.endswith("api_key=[REDACTED]")


def test_set_level_keeps_the_environment_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the lifespan and a SIGHUP reload call: the config's level, unless AIGW_LOG_LEVEL says otherwise."""
    logger = logging.getLogger("aigw")
    before = logger.level
    try:
        monkeypatch.setenv("AIGW_LOG_LEVEL", "error")
        set_level("info")
        assert logger.level == logging.ERROR
        monkeypatch.delenv("AIGW_LOG_LEVEL")
        set_level("debug")
        assert logger.level == logging.DEBUG
    finally:
        logger.setLevel(before)


def test_client_supplied_access_fields_are_redacted() -> None:
    """The access line redacts what a client chose (its x-request-id, the model it named), nothing else needs it."""
    buf = io.StringIO()
    configure_logging("info", stream=buf)
    access_log(
        request_id=f"api_key={SECRETS[1]}", tenant="t1", model=SECRETS[0], provider="oai", status=200,
        latency_ms=1.0, overhead_ms=0.1, prompt_tokens=1, completion_tokens=1, cost_usd=None, cache="miss",
        stream=False, attempts=1, error_type=None,
    )  # fmt: skip
    (line,) = lines(buf)
    assert SECRETS[0] not in json.dumps(line) and SECRETS[1] not in json.dumps(line)
    assert line["tenant"] == "t1" and line["provider"] == "oai" and line["status"] == 200
