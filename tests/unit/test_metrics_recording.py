"""Specification of what the pipeline records: committed outcomes by type and status, latencies, API requests, lag
arithmetic, worker health rules, and the hub's HTTP endpoint.

No Ray, broker or database: batches are built by hand, the API is a bare FastAPI app with the middleware.
"""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from actors import names
from actors.metrics_hub import healthy, workers
from cluster.observability import metrics as catalogue
from cluster.observability.endpoint import MetricsEndpoint
from cluster.observability.lag import queue_lag
from cluster.observability.recording import invalid_reason, outcome_counts, record_commit
from cluster.settings import Settings
from pipelines.batch import CommitBatch, CommitOutcome, DeadLetter, ProcessedEvent
from pipelines.errors import FieldError, InvalidEvent
from serve_app.http_metrics import RequestMetrics

TYPES = frozenset({"transaction", "sensor", "user_action"})


def processed(event_id: str, offset: int, event_type: str = "sensor", received_at: float = 100.0) -> ProcessedEvent:
    return ProcessedEvent(
        event_id=event_id,
        type=event_type,
        schema_version=1,
        offset=offset,
        entity_key="d-1",
        payload_json="{}",
        result_json="{}",
        effects=(),
        received_at=received_at,
    )


def dead(offset: int, event_id: str | None = None, event_type: str | None = None) -> DeadLetter:
    return DeadLetter(
        offset=offset,
        error_kind="invalid",
        reason="bad",
        attempts=1,
        payload=b"{",
        received_at=100.0,
        event_id=event_id,
        type=event_type,
    )


def batch(topic: str = "events.sensor", *, events=(), dead_letters=(), in_batch=()) -> CommitBatch:
    return CommitBatch(
        topic=topic,
        partition=0,
        epoch=1,
        owner_id="o",
        expected_offset=0,
        next_offset=10,
        consumed_at=100.0,
        processed=tuple(events),
        dead=tuple(dead_letters),
        in_batch_duplicates=tuple(in_batch),
    )


def fresh_metrics() -> tuple[CollectorRegistry, catalogue.Metrics]:
    registry = CollectorRegistry()
    return registry, catalogue.build(registry)


def test_outcomes_are_counted_by_type_and_status():
    b = batch(
        events=[processed("a", 0), processed("b", 1), processed("c", 2)],
        dead_letters=[dead(3, "d", "sensor"), dead(4)],  # the second one never decoded: no id, no type
        in_batch=[("a", 5, "default")],
    )
    counts = outcome_counts(b, CommitOutcome(committed=True, duplicate_ids=(("default", "b"),)), TYPES)
    assert counts == {
        ("sensor", "processed"): 2,  # a, c
        ("sensor", "duplicate"): 2,  # b (PostgreSQL knew it), a again at offset 5
        ("sensor", "dead_lettered"): 1,
        ("unknown", "dead_lettered"): 1,
    }


def test_a_type_nobody_registered_is_labelled_unknown():
    b = batch(dead_letters=[dead(0, "x", "made-up-type")])
    assert outcome_counts(b, CommitOutcome(committed=True), TYPES) == {("unknown", "dead_lettered"): 1}


def test_a_commit_records_batch_size_and_end_to_end_latency_of_new_events_only():
    registry, metrics = fresh_metrics()
    b = batch(events=[processed("a", 0, received_at=99.0), processed("b", 1, received_at=99.5)])
    record_commit(
        metrics,
        b,
        CommitOutcome(committed=True, duplicate_ids=(("default", "b"),)),
        100.0,
        ingest_topic="events.ingest",
        known_types=TYPES,
    )
    assert registry.get_sample_value("commit_batch_size_sum") == 2
    assert registry.get_sample_value("end_to_end_latency_seconds_count", {"type": "sensor"}) == 1
    assert registry.get_sample_value("end_to_end_latency_seconds_sum", {"type": "sensor"}) == pytest.approx(1.0)
    assert registry.get_sample_value("events_received_total", {"type": "sensor"}) is None  # the API counted it


def test_events_read_from_the_raw_ingest_topic_are_counted_as_received():
    registry, metrics = fresh_metrics()
    b = batch("events.ingest", events=[processed("a", 0, "transaction")], dead_letters=[dead(1)])
    record_commit(metrics, b, CommitOutcome(committed=True), 100.0, ingest_topic="events.ingest", known_types=TYPES)
    assert registry.get_sample_value("events_received_total", {"type": "transaction"}) == 1
    assert registry.get_sample_value("events_received_total", {"type": "unknown"}) == 1


def test_invalid_events_are_counted_by_the_code_of_their_first_field_error():
    assert invalid_reason(InvalidEvent("x", (FieldError("type", "m", "unknown_type"), FieldError("a", "m", "b")))) == (
        "unknown_type"
    )
    assert invalid_reason(InvalidEvent("NUL")) == "validation_failed"


def test_lag_is_the_high_watermark_minus_the_committed_offset_and_never_negative():
    high = {("t", 0): 120, ("t", 1): 5, ("t", 2): 40}
    committed = {("t", 0): 100, ("t", 1): 9}
    assert queue_lag(high, committed) == {("t", 0): 20, ("t", 1): 0, ("t", 2): 40}


def test_a_partition_without_a_known_high_watermark_has_no_lag_value():
    assert queue_lag({}, {("t", 0): 3}) == {}


def test_requests_are_counted_by_route_template_method_and_status():
    registry, metrics = fresh_metrics()
    app = FastAPI()
    app.add_middleware(RequestMetrics, metrics=metrics)

    @app.get("/events/{event_id}")
    def get_event(event_id: str) -> dict[str, str]:
        return {"id": event_id}

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("bug")

    client = TestClient(app, raise_server_exceptions=False)
    client.get("/events/abc")
    client.get("/events/def")
    client.get("/nowhere")
    client.get("/boom")
    ok = {"route": "/events/{event_id}", "method": "GET", "status": "200"}
    assert registry.get_sample_value("http_requests_total", ok) == 2
    assert registry.get_sample_value("http_requests_total", {"route": "unmatched", "method": "GET", "status": "404"})
    assert registry.get_sample_value("http_requests_total", {"route": "/boom", "method": "GET", "status": "500"}) == 1


@pytest.mark.parametrize(
    ("worker", "answer", "expected"),
    [
        ("owner:events.sensor:0", {"state": "running"}, True),
        ("owner:events.sensor:0", {"state": "starting"}, True),
        ("owner:events.sensor:0", {"state": "error"}, False),
        ("owner:events.sensor:0", {"state": "fenced"}, False),
        ("owner:events.sensor:0", {"state": "stopped"}, False),
        ("owner:events.sensor:0", None, False),
        (names.SPOOL_DRAINER, {"running": True}, True),
        (names.SPOOL_DRAINER, {"running": False}, False),
        (names.LEADER, {"role": "standby"}, True),
        (names.writer_name(0), {"groups": 3}, True),
        (names.writer_name(0), None, False),
    ],
)
def test_a_worker_is_healthy_only_when_it_answers_and_does_its_job(worker, answer, expected):
    assert healthy(worker, answer) is expected


def test_health_covers_every_owner_writer_the_drainer_and_the_leader():
    listed = workers(Settings(_env_file=None, partitions=2, checkpoint_writers=2))  # type: ignore[call-arg]
    assert names.LEADER in listed and names.SPOOL_DRAINER in listed
    assert {names.writer_name(0), names.writer_name(1)} <= set(listed)
    assert names.owner_name("events.ingest", 1) in listed
    assert len([w for w in listed if w.startswith("owner:")]) == 8  # 4 topics x 2 partitions


def test_the_endpoint_serves_metrics_extra_pages_and_404():
    endpoint = MetricsEndpoint(
        "127.0.0.1",
        0,
        lambda: b"up 1.0\n",
        pages=[lambda path, text: ("text/plain", text().encode()) if path == "/echo" else None],
    )
    assert endpoint.start()
    try:
        host, port = endpoint.address  # type: ignore[misc]
        base = f"http://{host}:{port}"
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as answer:
            assert answer.read() == b"up 1.0\n"
            assert answer.headers["Content-Type"].startswith("text/plain")
        with urllib.request.urlopen(f"{base}/echo", timeout=5) as answer:
            assert answer.read() == b"up 1.0\n"
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/nope", timeout=5)
        assert missing.value.code == 404
    finally:
        endpoint.close()


def test_a_taken_port_is_reported_not_raised():
    first = MetricsEndpoint("127.0.0.1", 0, lambda: b"")
    assert first.start()
    try:
        second = MetricsEndpoint("127.0.0.1", first.address[1], lambda: b"")  # type: ignore[index]
        assert second.start() is False
        assert second.address is None
    finally:
        first.close()
