"""Specification of the JSON log lines: the fields every line has, trace and event fields filled from the current span
and context, per-event lines switched by `log_events`, and setup that touches only its own handlers.

Real logging and a real OpenTelemetry tracer; lines are read back from the per-process file.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry import trace

from cluster.observability.logs import (
    EVENT_LOGGER,
    bind_correlation,
    event_context,
    event_extra,
    log_file,
    setup_logging,
)
from cluster.observability.tracing import Tracing
from cluster.settings import Settings


def _settings(tmp_path: Path, **fields: Any) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, **fields)  # type: ignore[call-arg]


def _lines(settings: Settings, service: str) -> list[dict[str, Any]]:
    for handler in logging.getLogger().handlers:
        handler.flush()
    return [orjson.loads(line) for line in log_file(settings, service).read_bytes().splitlines()]


def test_every_line_has_the_fields_and_a_span_fills_trace_and_span_ids(tmp_path, restore_logging):
    settings = _settings(tmp_path)
    setup_logging(settings, "partition-owner")
    tracer = Tracing.start(settings, "partition-owner").tracer
    log = logging.getLogger("eventpipe.test")

    log.info("outside any span")
    with trace.use_span(tracer.start_span("event-processing"), end_on_exit=True) as span:
        with event_context("ev-1", "sensor", "corr-9"):
            log.info("inside", extra={"duration_ms": 1.5})
        context = span.get_span_context()

    outside, inside = _lines(settings, "partition-owner")
    fields = {"timestamp", "level", "service", "logger", "message", "trace_id", "span_id", "event_id", "event_type"}
    assert fields | {"correlation_id"} <= set(outside)
    assert outside["service"] == "partition-owner"
    assert outside["level"] == "INFO"
    assert outside["trace_id"] is None and outside["event_id"] is None
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert (inside["event_id"], inside["event_type"], inside["correlation_id"]) == ("ev-1", "sensor", "corr-9")
    assert inside["duration_ms"] == 1.5
    assert inside["timestamp"].startswith("20")


def test_explicit_fields_win_over_the_context(tmp_path, restore_logging):
    settings = _settings(tmp_path)
    setup_logging(settings, "partition-owner")
    context = trace.SpanContext(0xABC, 0xDEF, False, trace.TraceFlags(1))

    with event_context("other", "other"):
        logging.getLogger(EVENT_LOGGER).warning(
            "event dead-lettered", extra=event_extra("ev-2", "transaction", context, duration_ms=0.25)
        )

    (line,) = _lines(settings, "partition-owner")
    assert (line["event_id"], line["event_type"]) == ("ev-2", "transaction")
    assert line["trace_id"] == format(0xABC, "032x")
    assert line["span_id"] == format(0xDEF, "016x")
    assert line["duration_ms"] == 0.25


def test_a_request_correlation_id_reaches_lines_of_its_task_only(tmp_path, restore_logging):
    settings = _settings(tmp_path)
    setup_logging(settings, "api")
    log = logging.getLogger("eventpipe.test")

    async def request(correlation_id: str) -> None:
        bind_correlation(correlation_id)
        await asyncio.sleep(0)
        log.info("handled")

    async def both() -> None:
        await asyncio.gather(request("c-1"), request("c-2"))
        log.info("after")

    asyncio.run(both())

    lines = _lines(settings, "api")
    assert sorted(line["correlation_id"] for line in lines[:2]) == ["c-1", "c-2"]
    assert lines[2]["correlation_id"] is None


def test_per_event_lines_are_off_unless_log_events_but_warnings_always_pass(tmp_path, restore_logging):
    events = logging.getLogger(EVENT_LOGGER)
    quiet = _settings(tmp_path / "quiet")
    setup_logging(quiet, "api")
    events.info("event accepted")
    events.warning("event dead-lettered")
    assert [line["message"] for line in _lines(quiet, "api")] == ["event dead-lettered"]

    loud = _settings(tmp_path / "loud", log_events=True)
    setup_logging(loud, "api")
    events.info("event accepted")
    assert [line["message"] for line in _lines(loud, "api")] == ["event accepted"]


def test_setup_twice_replaces_its_own_handlers_and_keeps_others(tmp_path, restore_logging):
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    try:
        setup_logging(_settings(tmp_path), "leader")
        setup_logging(_settings(tmp_path, log_to_files=False), "leader")
        ours = [h for h in root.handlers if type(h).__module__ == "cluster.observability.logs"]
        assert len(ours) == 1  # the stderr handler only
        assert foreign in root.handlers
    finally:
        root.removeHandler(foreign)


def test_an_unknown_service_name_is_refused(tmp_path, restore_logging):
    with pytest.raises(ValueError, match="unknown service"):
        setup_logging(_settings(tmp_path), "api-gateway")
