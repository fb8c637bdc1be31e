"""Structured logs: JSON lines on stderr for the ``aigw`` logger tree, one ``aigw.access`` line per request.

The event loop thread only builds the LogRecord and puts it on a queue; a listener thread formats, redacts and
writes. Redaction is defense in depth: no code logs keys, secrets or bodies on purpose, and the filter catches the
shapes they would have if one slipped in (``gw-sk-…``, ``sk-…``, ``Bearer …``, AWS keys, ``api_key=…``).
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import re
import sys
from datetime import UTC, datetime
from decimal import Decimal
from logging.handlers import QueueHandler, QueueListener
from typing import Any, TextIO

import orjson

ROOT = "aigw"
_ACCESS = "aigw.access"
_ACCESS_CLIENT_FIELDS = ("request_id", "model")
_access = logging.getLogger(_ACCESS)

_REDACTED = "[REDACTED]"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Our tenant keys, then provider keys (OpenAI sk-/sk-proj-, Anthropic sk-ant-), as whole tokens.
    (re.compile(r"\b(gw-sk-|sk-)[A-Za-z0-9_\-]{6,}"), r"\1" + _REDACTED),
    (re.compile(r"(?i)\b(bearer|basic)\s+[^\s\"',;]+"), r"\1 " + _REDACTED),
    # AWS access key ids, and 40-character secret keys (mixed case required, so hex digests pass untouched).
    (re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"), r"\1" + _REDACTED),
    (
        re.compile(
            r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+=]*[a-z])(?=[A-Za-z0-9/+=]*[A-Z])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])"
        ),
        _REDACTED,
    ),
    # key=value / "key": "value" shapes for the usual secret names.
    (
        re.compile(
            # The lookbehind starts a match only where a name can start: without it, a long run of letters was
            # retried from every position (quadratic: 16 KB of text took seconds on the log thread).
            r"(?i)((?<![a-z0-9_-])(?:[a-z0-9]+[_-])*(?:api[_-]?key|secret(?:[_-]?access[_-]?key)?|password|session[_-]?token"
            r"|access[_-]?token)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]+"
        ),
        r"\1" + _REDACTED,
    ),
)


def redact(text: str) -> str:
    """``text`` with anything shaped like a key or secret replaced."""
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


# Attributes every LogRecord has; anything else on a record came from ``extra=`` and becomes a JSON field.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


class RedactingFilter(logging.Filter):
    """Redacts the merged message, string ``extra`` fields and the traceback text of a record (runs on the listener
    thread, as a filter of the writing handler).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == _ACCESS:
            # The access line's fields are typed (access_log's signature); of its strings only two come from the
            # client (its x-request-id and the model it named). Redacting just those keeps a line to a few µs of
            # the log thread's time, which it takes from the event loop's (one interpreter lock).
            for key in _ACCESS_CLIENT_FIELDS:
                value = record.__dict__.get(key)
                if isinstance(value, str):
                    record.__dict__[key] = redact(value)
            return True
        record.msg = redact(record.getMessage())
        record.args = None
        for key, value in record.__dict__.items():
            if key not in _STANDARD and isinstance(value, str):
                record.__dict__[key] = redact(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, then the record's ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update((key, value) for key, value in record.__dict__.items() if key not in _STANDARD)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return orjson.dumps(out, default=_default).decode()


class _DeferredQueueHandler(QueueHandler):
    """A QueueHandler that does not format in the caller: the stock ``prepare()`` merges the message and formats
    the traceback on the logging (event loop) thread; here the listener thread does all of it.
    """

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


class _State:
    def __init__(
        self, handler: QueueHandler, listener: QueueListener, stream: TextIO, propagate: bool, level: int
    ) -> None:
        self.handler = handler
        self.listener = listener
        self.stream = stream
        self.propagate = propagate
        self.level = level


_state: _State | None = None
_atexit_registered = False


def _level(name: str) -> int:
    value = logging.getLevelName(name.strip().upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {name!r}; use debug, info, warning or error")
    return value


def set_level(level: str) -> None:
    """The ``aigw`` logger tree's level from the config, unless ``AIGW_LOG_LEVEL`` overrides it (as at start)."""
    logging.getLogger(ROOT).setLevel(_level(os.environ.get("AIGW_LOG_LEVEL") or level))


def configure_logging(level: str, *, stream: TextIO | None = None) -> None:
    """JSON lines for the ``aigw`` logger tree at ``level`` (``AIGW_LOG_LEVEL`` overrides it), written to ``stream``
    (stderr by default) by a background thread. Calling it again only changes the level, unless another stream is
    given; :func:`stop_logging` flushes and detaches (lifespan shutdown; also registered at exit).
    """
    global _state, _atexit_registered
    logger = logging.getLogger(ROOT)
    numeric = _level(os.environ.get("AIGW_LOG_LEVEL") or level)
    target = stream if stream is not None else sys.stderr
    if _state is not None:
        if _state.stream is target:
            logger.setLevel(numeric)
            return
        stop_logging()
    previous_level = logger.level
    logger.setLevel(numeric)
    writer = logging.StreamHandler(target)
    writer.setFormatter(JsonFormatter())
    writer.addFilter(RedactingFilter())
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = QueueListener(records, writer, respect_handler_level=True)
    handler = _DeferredQueueHandler(records)
    _state = _State(handler, listener, target, logger.propagate, previous_level)
    listener.start()
    logger.addHandler(handler)
    # JSON only: without this the same records would also reach the root logger's plain-text handler.
    logger.propagate = False
    if not _atexit_registered:
        atexit.register(stop_logging)
        _atexit_registered = True


def stop_logging() -> None:
    """Write out queued records, stop the listener thread and restore the ``aigw`` logger (handlers, propagation,
    level); idempotent.
    """
    global _state
    state, _state = _state, None
    if state is None:
        return
    logger = logging.getLogger(ROOT)
    logger.removeHandler(state.handler)
    logger.propagate = state.propagate
    logger.setLevel(state.level)
    state.listener.stop()  # enqueues a sentinel and joins: everything logged before is written
    state.stream.flush()


def access_log(
    *,
    request_id: str,
    tenant: str | None,
    model: str | None,
    provider: str | None,
    status: int,
    latency_ms: float,
    overhead_ms: float | None,
    prompt_tokens: int,
    completion_tokens: int,
    cost_usd: Decimal | None,
    cache: str | None,
    stream: bool,
    attempts: int,
    error_type: str | None,
) -> None:
    """The request's one INFO line on ``aigw.access``. Deliberately no parameter for headers, keys or bodies."""
    if not _access.isEnabledFor(logging.INFO):
        return
    # Built and handed over directly: Logger.info() would also walk the stack to find the caller (findCaller), half
    # the cost of the call, for a source location that is always this function.
    record = logging.LogRecord(_access.name, logging.INFO, __file__, 0, "request", None, None)
    record.__dict__.update(
        request_id=request_id,
        tenant=tenant,
        model=model,
        provider=provider,
        status=status,
        latency_ms=round(latency_ms, 3),
        overhead_ms=None if overhead_ms is None else round(overhead_ms, 3),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=None if cost_usd is None else float(cost_usd),
        cache=cache,
        stream=stream,
        attempts=attempts,
        error_type=error_type,
    )
    _access.handle(record)
