"""JSON log lines on the real pipeline: every line about a processed (or dead-lettered) event, in every process,
carries that event's trace_id and event_id, and the request's correlation id.

Each process writes its lines to `<data_dir>/logs/<service>-<pid>.jsonl` (ADR 0011); the session's pipeline runs with
`log_events` on, so the API and the owners write one line per event.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from cluster.observability.tracing import parse_traceparent
from tests.pipeline import Pipeline, unique_prefix, wait_until

pytestmark = pytest.mark.integration

FIELDS = {"timestamp", "level", "service", "logger", "message", "trace_id", "span_id", "event_id", "event_type"}


def _log_lines(directory: Path) -> list[dict[str, Any]]:
    lines = []
    for path in sorted(directory.glob("*.jsonl*")):
        for raw in path.read_bytes().splitlines():
            try:
                lines.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                continue  # a line being written while we read
    return lines


def _about(lines: list[dict[str, Any]], event_id: str) -> list[dict[str, Any]]:
    """Lines about the event: tagged with its id, or naming it in the message."""
    return [line for line in lines if line.get("event_id") == event_id or event_id in str(line.get("message"))]


def test_every_log_line_about_an_event_carries_its_trace_id_and_event_id(pipeline: Pipeline):
    prefix = unique_prefix("logs")
    correlation_id = f"corr-{uuid.uuid4().hex[:8]}"
    base = {"timestamp": "2026-01-01T00:00:00Z", "user_id": f"{prefix}-user"}
    events = [
        {**base, "id": f"{prefix}:tx", "type": "transaction", "amount": "5.00", "currency": "GBP"},
        {**base, "id": f"{prefix}:act", "type": "user_action", "action": "click", "target": "x"},
        # Valid at the API, but no exchange rate for it: the owner dead-letters it as poison.
        {**base, "id": f"{prefix}:poison", "type": "transaction", "amount": "1.00", "currency": "XYZ"},
    ]
    ids = [e["id"] for e in events]

    reply = httpx.post(
        f"{pipeline.base_url}/events/batch",
        json=events,
        headers={**pipeline.headers, "X-Correlation-ID": correlation_id},
    )

    assert reply.status_code == 202, reply.text
    assert reply.json()["accepted"] == 3
    rows = wait_until(
        lambda: (
            (r := pipeline.query("SELECT id, status, trace_context FROM events WHERE id = ANY(%s)", ids))
            and len(r) == 3
            and r
        ),
        60,
        "all three events to be processed or dead-lettered",
    )
    assert {row[0]: row[1] for row in rows} == {ids[0]: "processed", ids[1]: "processed", ids[2]: "dead_lettered"}
    trace_ids = {}
    for event_id, _status, trace_context in rows:
        context = parse_traceparent(trace_context)
        assert context is not None, event_id
        trace_ids[event_id] = format(context.trace_id, "032x")
    directory = pipeline.settings.data_dir / "logs"

    def owner_lines_written() -> list[dict[str, Any]] | None:
        lines = _log_lines(directory)
        owners = {line.get("event_id") for line in lines if line.get("service") == "partition-owner"}
        return lines if set(ids) <= owners else None

    lines = wait_until(owner_lines_written, 30, "the owners' lines about the three events")

    for event_id in ids:
        about = _about(lines, event_id)
        services = {line["service"] for line in about}
        assert {"api", "partition-owner"} <= services, (event_id, about)
        for line in about:
            assert FIELDS <= set(line), line
            assert line["event_id"] == event_id, line
            assert line["trace_id"] == trace_ids[event_id], line
            assert line["span_id"], line
            assert line["correlation_id"] == correlation_id, line
        owner = [line for line in about if line["service"] == "partition-owner"]
        assert all(line["duration_ms"] > 0 for line in owner), owner  # measured, never a placeholder 0
    (poison,) = [line for line in _about(lines, ids[2]) if line["service"] == "partition-owner"]
    assert poison["level"] == "WARNING"
    assert "dead-lettered" in poison["message"] and "XYZ" in poison["message"]
    (processed,) = [line for line in _about(lines, ids[0]) if line["service"] == "partition-owner"]
    assert (processed["level"], processed["message"], processed["event_type"]) == (
        "INFO",
        "event processed",
        "transaction",
    )
