"""One event POSTed over HTTP to the real pipeline (Ray Serve, Ray actors, broker, PostgreSQL) is ONE trace: the API
process's ingestion and publish spans, the partition owner's processing span as their child through the record's
`traceparent` header, its state-store span, and the batch commit linking to it; `eventpipe trace <id>` shows it.

Spans are read back from the span files every process writes under `<data_dir>/traces/`.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import Any

import httpx
import pytest

from cluster.observability.trace_view import SpanRow, spans_of_event
from cluster.observability.tracing import parse_traceparent, traces_dir
from tests.pipeline import Pipeline, unique_prefix, wait_until

pytestmark = pytest.mark.integration

SPANS = ("event-ingestion", "event-publish", "event-processing", "state-store")


def _complete_trace(pipeline: Pipeline, event_id: str, publishes: int = 1) -> dict[str, list[SpanRow]] | None:
    """The event's spans by name once all four kinds, `publishes` publish spans and the batch commit are exported
    (files are written ~0.5 s after a span ends), else None."""
    by_name: dict[str, list[SpanRow]] = {}
    for span in spans_of_event(traces_dir(pipeline.settings), event_id):
        by_name.setdefault(span.name, []).append(span)
    complete = all(name in by_name for name in SPANS)
    if complete and len(by_name["state-store"]) >= 2 and len(by_name["event-publish"]) >= publishes:
        return by_name
    return None


def _only(spans: list[SpanRow], **attributes: Any) -> SpanRow:
    matching = [s for s in spans if all(s.attributes.get(k) == v for k, v in attributes.items())]
    assert len(matching) == 1, (attributes, spans)
    return matching[0]


def test_one_http_event_is_one_trace_across_the_api_and_the_owner_process(pipeline: Pipeline):
    prefix = unique_prefix("trace")
    event_id, correlation_id = f"{prefix}:1", f"corr-{uuid.uuid4().hex[:8]}"
    event = {
        "id": event_id,
        "type": "transaction",
        "timestamp": "2026-01-01T00:00:00Z",
        "user_id": f"{prefix}-user",
        "amount": "10.00",
        "currency": "EUR",
    }

    reply = httpx.post(
        f"{pipeline.base_url}/events", json=event, headers={**pipeline.headers, "X-Correlation-ID": correlation_id}
    )

    assert reply.status_code == 202, reply.text
    assert reply.headers["X-Correlation-ID"] == correlation_id
    stored = wait_until(
        lambda: pipeline.query(
            "SELECT trace_context, correlation_id FROM events WHERE id = %s AND status = 'processed'", event_id
        ),
        60,
        "the event to be processed",
    )
    # When an earlier test left the API's kafka breaker open, the event went through the spool: the drainer's
    # publish span (a child of the API's) is then the parent the owner saw.
    spooled = bool(reply.json().get("spooled"))
    by_name = wait_until(
        lambda: _complete_trace(pipeline, event_id, 1 + spooled), 30, "all four spans in the span files"
    )

    (ingestion,) = by_name["event-ingestion"]
    (processing,) = by_name["event-processing"]
    event_commit = _only(by_name["state-store"], **{"eventpipe.commit": "event"})
    batch_commit = _only(by_name["state-store"], **{"eventpipe.commit": "batch"})
    publishes = by_name["event-publish"]
    assert len(publishes) == 1 + spooled, publishes
    (publish,) = [s for s in publishes if not s.attributes.get("from_spool")]
    carrier = publish
    if spooled:
        (carrier,) = [s for s in publishes if s.attributes.get("from_spool")]
        assert carrier.parent_id == publish.span_id and carrier.resource["eventpipe.service"] == "spool-drainer"
    assert publish.attributes["spooled"] is spooled
    # One trace, parent to child, across two processes.
    trace_id = ingestion.trace_id
    assert [s.trace_id for s in (publish, carrier, processing, event_commit)] == [trace_id] * 4
    assert ingestion.parent_id is None
    assert publish.parent_id == ingestion.span_id
    assert processing.parent_id == carrier.span_id
    assert event_commit.parent_id == processing.span_id
    assert ingestion.resource["eventpipe.service"] == publish.resource["eventpipe.service"] == "api"
    assert processing.resource["eventpipe.service"] == event_commit.resource["eventpipe.service"] == "partition-owner"
    assert processing.resource["process.pid"] != ingestion.resource["process.pid"]
    # The batch commit links to the event's processing span.
    assert (processing.trace_id, processing.span_id) in batch_commit.links
    # Timings nest. (The owner may read the record before the producer hears the broker's ack: no order there.)
    assert ingestion.start_ns <= publish.start_ns <= publish.end_ns <= ingestion.end_ns
    assert publish.start_ns <= processing.start_ns <= processing.end_ns <= event_commit.start_ns
    # Attributes: event id, type, user id, correlation id, processing time.
    for span in (ingestion, processing):
        assert span.attributes["event.id"] == event_id
        assert span.attributes["event.type"] == "transaction"
        assert span.attributes["user.id"] == f"{prefix}-user"
        assert span.attributes["correlation.id"] == correlation_id
    assert processing.attributes["event.processing_time_ms"] > 0
    assert processing.attributes["event.outcome"] == "processed"
    assert publish.attributes["messaging.destination.name"] == "events.transaction"
    # Stored with the event: the processing span's context, and the request's correlation id.
    ((trace_context, stored_correlation),) = stored
    context = parse_traceparent(trace_context)
    assert context is not None
    assert (format(context.trace_id, "032x"), format(context.span_id, "016x")) == (trace_id, processing.span_id)
    assert stored_correlation == correlation_id


def test_eventpipe_trace_prints_the_span_tree_with_timings(pipeline: Pipeline):
    prefix = unique_prefix("trace-cli")
    event = {
        "id": f"{prefix}:1",
        "type": "sensor",
        "timestamp": "2026-01-01T00:00:00Z",
        "device_id": f"{prefix}-device",
        "reading": 21.5,
        "unit": "C",
        "location": {"lat": 52.5, "lon": 13.4},
    }
    reply = httpx.post(f"{pipeline.base_url}/events", json=event, headers=pipeline.headers)
    assert reply.status_code == 202, reply.text
    generated = reply.headers["X-Correlation-ID"]  # none was sent: the API made one
    wait_until(lambda: _complete_trace(pipeline, event["id"]), 60, "the event's spans")

    run = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "trace", event["id"]],
        env={"EVENTPIPE_DATA_DIR": str(pipeline.settings.data_dir), "COLUMNS": "300", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    positions = [next(i for i, line in enumerate(lines) if name in line) for name in SPANS]
    assert positions == sorted(positions), run.stdout  # the tree reads top-down: ingestion ... state-store
    indents = [len(lines[i]) - len(lines[i].lstrip(" │├└─")) for i in positions[:3]]
    assert indents == sorted(indents) and len(set(indents)) == 3, run.stdout  # each one level deeper
    assert "⤷ linked state-store" in run.stdout
    assert f"device.id={prefix}-device" in run.stdout and f"correlation.id={generated}" in run.stdout
    assert " ms" in run.stdout and "[api pid" in run.stdout and "[partition-owner pid" in run.stdout


def _event(event_id: str) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": "transaction",
        "timestamp": "2026-01-01T00:00:00Z",
        "user_id": "forced-user",
        "amount": "1.00",
        "currency": "EUR",
    }


def test_a_sampled_client_traceparent_is_the_parent_of_the_events_traces(pipeline: Pipeline):
    # given a client that sends a sampled W3C traceparent with a single event and with a batch
    prefix = unique_prefix("forced")
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    headers = {**pipeline.headers, "traceparent": f"00-{trace_id}-{span_id}-01"}
    single, first, second = f"{prefix}:1", f"{prefix}:2", f"{prefix}:3"

    # when both requests are sent
    one = httpx.post(f"{pipeline.base_url}/events", json=_event(single), headers=headers)
    many = httpx.post(f"{pipeline.base_url}/events/batch", json=[_event(first), _event(second)], headers=headers)

    # then every event's spans, from ingestion to the state store, are in the client's trace under its span
    assert one.status_code == 202, one.text
    assert many.status_code == 202, many.text
    for event_id in (single, first, second):
        by_name = wait_until(lambda e=event_id: _complete_trace(pipeline, e), 60, f"the spans of {event_id}")
        ingestion = _only(by_name["event-ingestion"], **{"event.id": event_id})
        assert ingestion.trace_id == trace_id
        assert ingestion.parent_id == span_id
        processing = _only(by_name["event-processing"], **{"event.id": event_id})
        assert processing.trace_id == trace_id


@pytest.mark.parametrize("value", [b"00-not-a-trace-01", b"\xff" * 300, f"00-{'a' * 32}-{'b' * 16}-00".encode()])
def test_an_unsampled_or_malformed_traceparent_is_accepted_and_ignored(pipeline: Pipeline, value: bytes):
    event_id = f"{unique_prefix('ignored')}:1"

    reply = httpx.post(
        f"{pipeline.base_url}/events", json=_event(event_id), headers={**pipeline.headers, "traceparent": value}
    )

    assert reply.status_code == 202, reply.text
    by_name = wait_until(lambda: _complete_trace(pipeline, event_id), 60, "the event's spans")
    (ingestion,) = by_name["event-ingestion"]
    assert ingestion.parent_id is None  # a trace of its own, as without the header
    assert ingestion.trace_id != "a" * 32
