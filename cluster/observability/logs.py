"""JSON log lines for every eventpipe process: `setup_logging(settings, service)` once at process start; the trace,
event and correlation fields come from the current span and from context variables, so call sites stay plain.

Every line has timestamp, level, service, logger, message, trace_id, span_id, event_id, event_type and correlation_id
(null when unknown), and duration_ms and other fields when the call passes them in `extra`. It never removes a handler
it did not install (Ray Serve keeps its own), never writes to the stream Serve redirects into its logger, and never
writes a credential: every string of a line (message, arguments, exception text, extra fields) is masked.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import trace
from pythonjsonlogger.orjson import OrjsonFormatter

from cluster.observability.redact import mask_credentials
from cluster.settings import Settings

SERVICES = (
    "api",
    "partition-owner",
    "checkpoint-writer",
    "leader",
    "spool-drainer",
    "metrics-hub",
    "rate-limiter",
    "cli",
)
# Per-event lines (accepted, processed) go to this logger at INFO; it is at WARNING unless settings.log_events, so a
# busy pipeline (10k events/s) does not write two lines per event by default. Dead letters are WARNING: always on.
EVENT_LOGGER = "eventpipe.events"
_FIELDS = ("service", "trace_id", "span_id", "event_id", "event_type", "correlation_id")
_FORMAT = " ".join(f"%({name})s" for name in ("levelname", "name", "message", *_FIELDS))
_MB = 1024 * 1024


@dataclass(frozen=True)
class EventFields:
    event_id: str | None = None
    event_type: str | None = None
    correlation_id: str | None = None


_event: ContextVar[EventFields | None] = ContextVar("eventpipe_log_event", default=None)
_correlation: ContextVar[str | None] = ContextVar("eventpipe_log_correlation", default=None)


def bind_correlation(correlation_id: str | None) -> None:
    """The correlation id of the request being handled; lines logged in this task (and tasks it starts) carry it."""
    _correlation.set(correlation_id)


@contextmanager
def event_context(
    event_id: str | None, event_type: str | None = None, correlation_id: str | None = None
) -> Iterator[None]:
    """Lines logged inside the block are about this event."""
    token = _event.set(EventFields(event_id, event_type, correlation_id))
    try:
        yield
    finally:
        _event.reset(token)


def span_fields(context: trace.SpanContext) -> dict[str, str | None]:
    """`extra` for a line about a span that is not the current one (spans the owner builds after the fact)."""
    if not context.is_valid:
        return {"trace_id": None, "span_id": None}
    return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}


class ContextFilter(logging.Filter):
    """Fills the correlation fields a call did not pass explicitly: span from OpenTelemetry, event from contextvars."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        values = record.__dict__
        values["service"] = self.service
        if "trace_id" not in values:
            values.update(span_fields(trace.get_current_span().get_span_context()))
        event = _event.get()
        for name in ("event_id", "event_type", "correlation_id"):
            if values.get(name) is None:
                values[name] = getattr(event, name) if event is not None else None
        if values["correlation_id"] is None:
            values["correlation_id"] = _correlation.get()
        return True


class _JsonStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours: a second setup in one process replaces exactly these two kinds of handler."""


class _JsonFileHandler(logging.handlers.RotatingFileHandler):
    """Ours, like _JsonStderrHandler."""


class _MaskingFormatter(OrjsonFormatter):
    """JSON lines whose string values have their credentials masked, after the message is merged with its arguments
    and the exception is formatted, so neither can carry a database password into a line."""

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        for key, value in log_data.items():  # replaces values only: the dict keeps its size while iterated
            if key in _OWN_FIELDS:
                continue
            if type(value) is str:  # nearly every other value: the fast path
                log_data[key] = mask_credentials(value)
            elif isinstance(value, _MAY_HOLD_TEXT):
                log_data[key] = _masked(value)
        return log_data


_MAY_HOLD_TEXT = (str, list, tuple, dict, BaseException)
# Fields this module fills from names and ids of its own: no credential can be in them.
_OWN_FIELDS = frozenset({"level", "logger", "service", "trace_id", "span_id", "timestamp"})


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask_credentials(value)
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, BaseException):  # an exception passed in `extra` is written as its text
        return mask_credentials(f"{type(value).__name__}: {value}")
    return value


def _formatter() -> logging.Formatter:
    return _MaskingFormatter(_FORMAT, rename_fields={"levelname": "level", "name": "logger"}, timestamp=True)


def log_file(settings: Settings, service: str, pid: int | None = None) -> Path:
    return settings.data_dir / "logs" / f"{service}-{pid or os.getpid()}.jsonl"


def setup_logging(settings: Settings, service: str) -> None:
    """Route this process's logging (root logger) to JSON lines on stderr and, unless disabled, a rotating file.

    Call it first thing in every process: the CLI, each actor's `__init__`, each API replica's constructor.
    """
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; one of {SERVICES}")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _JsonStderrHandler | _JsonFileHandler)]:
        root.removeHandler(handler)
        handler.close()
    # sys.__stderr__: in a Serve replica sys.stderr is redirected into Serve's own logger and file.
    handlers: list[logging.Handler] = [_JsonStderrHandler(sys.__stderr__)]
    if settings.log_to_files:
        path = log_file(settings, service)
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(_JsonFileHandler(path, maxBytes=settings.log_file_max_mb * _MB, backupCount=1))
    context = ContextFilter(service)
    for handler in handlers:
        handler.setFormatter(_formatter())
        handler.addFilter(context)
        root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    logging.getLogger(EVENT_LOGGER).setLevel(logging.INFO if settings.log_events else logging.WARNING)


def event_lines_enabled() -> bool:
    """Whether per-event INFO lines are wanted (checked once per batch, not per event)."""
    return logging.getLogger(EVENT_LOGGER).isEnabledFor(logging.INFO)


def event_extra(
    event_id: str | None,
    event_type: str | None,
    context: trace.SpanContext | None = None,
    *,
    correlation_id: str | None = None,
    duration_ms: float | None = None,
    **more: Any,
) -> dict[str, Any]:
    """`extra` for a per-event line: the event's fields, its span's ids when given, and duration_ms when known."""
    extra: dict[str, Any] = {"event_id": event_id, "event_type": event_type, "correlation_id": correlation_id, **more}
    if context is not None:
        extra.update(span_fields(context))
    if duration_ms is not None:
        extra["duration_ms"] = round(duration_ms, 3)
    return extra
