"""Specification of tracing without Ray: W3C traceparent text, sampling, the span files and what `eventpipe trace`
builds from them, the spans of one event from the API's publish to the owner's commit, and OTLP/HTTP export.

Real OpenTelemetry SDK, real exporters writing real files or POSTing to a real local HTTP server; nothing is mocked.
"""

from __future__ import annotations

import http.server
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from rich.console import Console

from cluster.adapters.commit_doc import decode, encode
from cluster.adapters.kafka_producer import Delivered, PublishError
from cluster.observability.event_spans import DrainSpans, IngestSpans, ProcessingSpans
from cluster.observability.trace_view import build_trees, render, spans_of_event
from cluster.observability.tracing import (
    JsonLinesSpanExporter,
    Tracing,
    forced_parent,
    format_traceparent,
    otlp_traces_url,
    parse_traceparent,
    remote_parent,
    traces_dir,
    with_header,
)
from cluster.settings import Settings
from pipelines.batch import CommitOutcome, SourceRecord
from pipelines.engine import PartitionProcessor
from pipelines.entity import entity_of
from pipelines.envelope import Envelope
from pipelines.registry import default_registry


def _settings(tmp_path: Path, **fields: Any) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, **fields)  # type: ignore[call-arg]


def _span_lines(directory: Path) -> list[dict[str, Any]]:
    files = sorted(directory.glob("*.jsonl*"))
    return [orjson.loads(line) for path in files for line in path.read_bytes().splitlines()]


# --- W3C trace context ---------------------------------------------------------------------------------------------


def test_traceparent_round_trips_and_agrees_with_the_reference_propagator():
    context = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True, TraceFlags(1))

    text = format_traceparent(context)

    assert text == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, remote_parent(context))
    assert carrier["traceparent"] == text
    parsed = parse_traceparent(text.encode())
    assert parsed is not None
    assert (parsed.trace_id, parsed.span_id, parsed.trace_flags.sampled, parsed.is_remote) == (
        context.trace_id,
        context.span_id,
        True,
        True,
    )


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero span id
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
    ],
)
def test_a_missing_or_malformed_traceparent_starts_a_new_trace(value):
    assert parse_traceparent(value) is None


def test_setting_the_traceparent_header_replaces_an_old_one_and_keeps_the_others():
    headers = [("source", b"api"), ("traceparent", b"old")]

    assert with_header(headers, "new") == [("source", b"api"), ("traceparent", b"new")]
    assert with_header(None, "new") == [("traceparent", b"new")]
    assert with_header(headers, None) == headers


def test_otlp_endpoint_is_a_base_url_for_the_traces_signal():
    assert otlp_traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert otlp_traces_url("http://collector:4318/v1/traces") == "http://collector:4318/v1/traces"


# --- sampling ------------------------------------------------------------------------------------------------------


def test_with_ratio_zero_no_trace_starts_but_a_sampled_parent_is_followed(tmp_path):
    tracing = Tracing.start(_settings(tmp_path, trace_sample_ratio=0.0), "api")
    sampled_parent = SpanContext(1, 2, True, TraceFlags(1))

    root = tracing.tracer.start_span("event-ingestion")
    child = tracing.tracer.start_span("event-processing", context=remote_parent(sampled_parent))

    assert not root.get_span_context().trace_flags.sampled
    assert root.get_span_context().is_valid  # its context still travels, so the whole trace is consistently dropped
    assert child.get_span_context().trace_flags.sampled
    assert child.get_span_context().trace_id == 1


def test_a_batch_commit_is_sampled_exactly_when_one_of_its_events_is(tmp_path):
    from opentelemetry.trace import Link

    tracing = Tracing.start(_settings(tmp_path, trace_sample_ratio=1.0), "partition-owner")
    sampled, dropped = SpanContext(1, 2, True, TraceFlags(1)), SpanContext(3, 4, True, TraceFlags(0))

    assert tracing.tracer.start_span("state-store", links=[Link(dropped), Link(sampled)]).is_recording()
    assert not tracing.tracer.start_span("state-store", links=[Link(dropped)]).is_recording()


def test_tracing_disabled_gives_no_context_to_carry_or_store(tmp_path):
    tracing = Tracing.start(_settings(tmp_path, tracing_enabled=False), "api")
    spans = IngestSpans(tracing)

    traced = spans.begin("corr")
    spans.identified(traced, "e-1", "sensor", None)
    record = spans.publishing(traced, ("events.sensor", b"k", b"v", None))

    assert record == ("events.sensor", b"k", b"v", None)
    assert not (traces_dir(_settings(tmp_path))).exists()


# --- the span files --------------------------------------------------------------------------------------------------


def test_span_file_is_rotated_once_past_its_size(tmp_path):
    exporter = JsonLinesSpanExporter(tmp_path, "api", max_bytes=2000)
    tracing = Tracing.start(_settings(tmp_path, trace_sample_ratio=1.0), "api", exporter=exporter)

    for n in range(40):
        tracing.tracer.start_span(f"span-{n}", attributes={"padding": "x" * 100}).end()
        tracing.flush()  # one export each

    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [exporter.path.name, exporter.path.name + ".1"]
    kept = _span_lines(tmp_path)
    assert 0 < len(kept) < 40  # the oldest went with the rotation before last
    assert kept[-1]["name"] == "span-39"
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) < 2 * (2000 + 1000)


# --- one event, API to commit ----------------------------------------------------------------------------------------


def _api_and_owner(tmp_path: Path, ratio: float) -> Iterator[tuple[Tracing, Tracing, Path]]:
    """The API's and an owner's tracing, each with its own span file (in one test process), at this sample ratio."""
    settings = _settings(tmp_path, trace_sample_ratio=ratio)
    api, owner = Tracing.start(settings, "api"), Tracing.start(settings, "partition-owner")
    yield api, owner, traces_dir(settings)
    api.shutdown()
    owner.shutdown()


@pytest.fixture
def two_processes(tmp_path) -> Iterator[tuple[Tracing, Tracing, Path]]:
    """The API's and an owner's tracing, tracing every event."""
    yield from _api_and_owner(tmp_path, 1.0)


def _published(
    api: Tracing, event: dict[str, Any], offset: int, correlation_id: str, parent: SpanContext | None = None
) -> SourceRecord:
    """The API's part for one event (spans, traceparent header, broker ack); the record as the owner reads it."""
    spans = IngestSpans(api)
    parsed = default_registry().parse(event)
    traced = spans.begin(correlation_id, parent=parent)
    spans.identified(traced, str(parsed.id), event["type"], entity_of(parsed))
    topic = f"events.{event['type']}"
    value = Envelope.encode_event(parsed, time.time(), correlation_id=correlation_id)
    _, key, value, headers = spans.publishing(traced, (topic, b"key", value, None))
    spans.published(traced, Delivered(topic, 0, offset, time.time_ns()))
    return SourceRecord(topic, 0, offset, key, value, int(time.time() * 1000), tuple(headers or ()))


def _owner_commits(owner: Tracing, records: list[SourceRecord]) -> tuple[Any, Any]:
    spans = ProcessingSpans(owner)
    processor = PartitionProcessor(default_registry(), "events.ingest", rng=random.Random(0), on_outcome=spans.observe)
    traced = spans.begin(records)
    batch = processor.process(
        records, epoch=3, owner_id="o", expected_offset=records[0].offset, consumed_at=time.time()
    )
    started = time.time_ns()
    encoded = encode(batch, traced.trace_contexts)
    spans.committed(traced, batch, CommitOutcome(committed=True, new_events=len(batch.processed)), started)
    return traced, encoded


def test_one_event_is_one_trace_from_ingestion_to_state_store_across_processes(two_processes, transaction_data):
    api, owner, directory = two_processes
    event = transaction_data(id="ev-1", user_id="user-7")
    other = transaction_data(id="ev-2", user_id="user-8")

    records = [_published(api, event, 5, "corr-1"), _published(api, other, 6, "corr-2")]
    traced, encoded = _owner_commits(owner, records)
    api.flush()
    owner.flush()

    spans = spans_of_event(directory, "ev-1")
    by_name = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    (ingestion,) = by_name["event-ingestion"]
    (publish,) = by_name["event-publish"]
    (processing,) = by_name["event-processing"]
    batch_commit = next(s for s in by_name["state-store"] if s.attributes["eventpipe.commit"] == "batch")
    event_commit = next(s for s in by_name["state-store"] if s.attributes["eventpipe.commit"] == "event")
    # One trace, parent to child across the two processes' files.
    assert {ingestion.trace_id, publish.trace_id, processing.trace_id, event_commit.trace_id} == {ingestion.trace_id}
    assert ingestion.parent_id is None
    assert publish.parent_id == ingestion.span_id
    assert processing.parent_id == publish.span_id
    assert event_commit.parent_id == processing.span_id
    assert ingestion.resource["eventpipe.service"] == "api"
    assert processing.resource["eventpipe.service"] == "partition-owner"
    # The batch commit is its own trace and links to both events' processing spans.
    assert batch_commit.trace_id != ingestion.trace_id
    assert (processing.trace_id, processing.span_id) in batch_commit.links
    assert len(batch_commit.links) == 2
    # Attributes: id, type, user, correlation, processing time.
    for s in (ingestion, processing):
        assert s.attributes["event.id"] == "ev-1"
        assert s.attributes["event.type"] == "transaction"
        assert s.attributes["user.id"] == "user-7"
        assert s.attributes["correlation.id"] == "corr-1"
    assert processing.attributes["event.processing_time_ms"] >= 0
    assert publish.attributes["messaging.kafka.offset"] == 5
    assert publish.attributes["spooled"] is False
    assert ingestion.start_ns <= publish.start_ns <= publish.end_ns <= ingestion.end_ns
    # Stored with the event: the processing span's context.
    rows = {row["id"]: row for row in decode(encoded.doc)["events"]}
    assert rows["ev-1"]["trace"] == f"00-{processing.trace_id}-{processing.span_id}-01"
    assert traced.trace_contexts[5] == rows["ev-1"]["trace"]


def test_a_spooled_event_is_published_later_by_the_drainer_within_the_same_trace(two_processes):
    api, drainer, directory = two_processes
    ingest = IngestSpans(api)
    traced = ingest.begin("c")
    ingest.identified(traced, "spooled-ev", "sensor", None)
    spooled_record = ingest.publishing(traced, ("events.sensor", b"k", b"v", [("source", b"api")]))
    ingest.published(traced, None, spooled=True)  # the broker was down: committed to the spool instead
    drain = DrainSpans(drainer)

    records, spans = drain.publishing(["spooled-ev", "other"], [spooled_record, ("events.sensor", None, b"w", None)])
    drain.published(spans, [Delivered("events.sensor", 1, 42, time.time_ns()), PublishError("timed out")])
    api.flush()
    drainer.flush()

    exported = _span_lines(directory)
    first = next(s for s in exported if s["name"] == "event-publish" and s["attributes"].get("spooled"))
    again = next(
        s for s in exported if s["attributes"].get("from_spool") and s["attributes"]["event.id"] == "spooled-ev"
    )
    assert again["parent_id"] == first["span_id"] and again["trace_id"] == first["trace_id"]
    assert again["attributes"]["messaging.kafka.offset"] == 42
    topic, key, value, headers = records[0]
    assert headers is not None and headers[0] == ("source", b"api")  # other headers kept
    carried = parse_traceparent(dict(headers)["traceparent"])
    assert carried is not None and format(carried.span_id, "016x") == again["span_id"]  # the owner's parent now
    failed = next(s for s in exported if s["attributes"].get("event.id") == "other")
    assert failed["status"] == "ERROR" and failed["parent_id"] is None


def test_the_trace_view_shows_the_tree_with_timings_and_the_linked_batch_commit(two_processes, sensor_data):
    api, owner, directory = two_processes
    _owner_commits(owner, [_published(api, sensor_data(id="sensor-ev"), 0, "c")])
    api.flush()
    owner.flush()

    spans = spans_of_event(directory, "sensor-ev")
    (root,) = build_trees(spans, "sensor-ev")
    console = Console(record=True, width=400)
    console.print(render("sensor-ev", [root]))
    text = console.export_text()

    assert root.span.name == "event-ingestion"
    (publish,) = root.children
    (processing,) = publish.children
    assert [(c.span.name, c.linked) for c in processing.children] == [("state-store", False), ("state-store", True)]
    lines = text.splitlines()
    order = [next(i for i, line in enumerate(lines) if name in line) for name in ("event-ingestion", "event-publish")]
    assert order == sorted(order)
    assert "event-processing" in text and "⤷ linked state-store" in text
    assert " ms" in text and "api pid" in text and "partition-owner pid" in text
    assert "device.id=device-1" in text


def test_a_dead_letter_and_an_in_batch_duplicate_have_their_own_processing_outcome(two_processes, transaction_data):
    api, owner, directory = two_processes
    good = _published(api, transaction_data(id="dup-ev"), 0, "c")
    copy = SourceRecord(good.topic, 0, 1, good.key, good.value, good.timestamp_ms, good.headers)
    broken = SourceRecord(good.topic, 0, 2, None, b'{"id": "x"', None, None)
    invalid = Envelope("bad-ev", "transaction", 1, transaction_data(id="bad-ev", currency="XYZ"), time.time())
    unknown_currency = SourceRecord(good.topic, 0, 3, None, invalid.encode(), None, None)

    traced, encoded = _owner_commits(owner, [good, copy, broken, unknown_currency])
    owner.flush()

    assert [(e.offset, e.outcome) for e in traced.events] == [
        (0, "processed"),
        (1, "duplicate"),
        (2, "dead_lettered"),
        (3, "dead_lettered"),
    ]
    # Stored once per event row: the broken record has no id, so no row.
    assert set(traced.trace_contexts) == {0, 3}
    rows = {row["id"]: row["trace"] for row in decode(encoded.doc)["events"]}
    assert rows == {"dup-ev": traced.trace_contexts[0], "bad-ev": traced.trace_contexts[3]}
    processing = [s for s in _span_lines(directory) if s["name"] == "event-processing"]
    outcomes = [s["attributes"]["event.outcome"] for s in processing]
    assert outcomes == ["processed", "duplicate", "dead_lettered", "dead_lettered"]
    assert processing[3]["status"] == "ERROR"
    assert processing[3]["attributes"]["dead_letter.kind"] == "poison"  # no exchange rate for XYZ
    assert processing[3]["parent_id"] is None  # a record without a traceparent starts its own trace


def test_eventpipe_trace_of_an_event_without_spans_says_where_it_looked(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "trace", "no-such-event"],
        env={"EVENTPIPE_DATA_DIR": str(tmp_path), "EVENTPIPE_LOG_TO_FILES": "false", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert run.returncode == 1, run.stderr
    assert "no spans of event 'no-such-event'" in run.stdout
    assert str(tmp_path / "traces") in run.stdout.replace("\n", "")


# --- OTLP/HTTP --------------------------------------------------------------------------------------------------------


class _Collector(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Collector.received.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_with_an_endpoint_spans_go_over_otlp_http_and_no_file_is_written(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        tracing = Tracing.start(_settings(tmp_path, otlp_endpoint=endpoint, trace_sample_ratio=1.0), "partition-owner")
        tracing.tracer.start_span("event-processing", attributes={"event.id": "otlp-1"}).end()
        assert tracing.flush()
    finally:
        server.shutdown()
        server.server_close()

    (path, content_type, body) = _Collector.received[-1]
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    request = ExportTraceServiceRequest.FromString(body)
    (resource_spans,) = request.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "eventpipe-partition-owner"
    (span,) = resource_spans.scope_spans[0].spans
    assert span.name == "event-processing"
    assert not traces_dir(_settings(tmp_path)).exists()


# --- force-tracing one request: a client's sampled traceparent -------------------------------------------------------
CLIENT_TRACE, CLIENT_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


@pytest.fixture
def unsampled_processes(tmp_path) -> Iterator[tuple[Tracing, Tracing, Path]]:
    """The API's and an owner's tracing with ratio 0: no trace starts on its own."""
    yield from _api_and_owner(tmp_path, 0.0)


def test_a_sampled_client_traceparent_traces_the_event_end_to_end_at_ratio_zero(unsampled_processes, transaction_data):
    api, owner, directory = unsampled_processes
    parent = forced_parent(f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")

    records = [_published(api, transaction_data(id="ev-forced"), 5, "corr-1", parent=parent)]
    _owner_commits(owner, records)
    api.flush()
    owner.flush()

    spans = spans_of_event(directory, "ev-forced")
    by_name = {s.name: s for s in spans if s.trace_id == CLIENT_TRACE}
    assert set(by_name) == {"event-ingestion", "event-publish", "event-processing", "state-store"}
    assert by_name["event-ingestion"].parent_id == CLIENT_SPAN  # a child of the client's span
    assert by_name["event-processing"].parent_id == by_name["event-publish"].span_id
    batch_commit = next(s for s in spans if s.attributes.get("eventpipe.commit") == "batch")
    assert (CLIENT_TRACE, by_name["event-processing"].span_id) in batch_commit.links


def test_without_a_client_traceparent_ratio_zero_records_no_span(unsampled_processes, transaction_data):
    api, owner, directory = unsampled_processes

    records = [_published(api, transaction_data(id="ev-plain"), 5, "corr-1")]
    traced, _ = _owner_commits(owner, records)
    api.flush()
    owner.flush()

    assert _span_lines(directory) == []
    assert parse_traceparent(traced.trace_contexts[5]) is not None  # the event still carries its (unsampled) context


@pytest.mark.parametrize(
    "value",
    [
        f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00",  # sampled flag off
        f"00-{CLIENT_TRACE}-{CLIENT_SPAN}",  # truncated
        "00-not-hex-01",
        "",
        "\x00\xff" * 40,
        None,
    ],
)
def test_an_unsampled_or_malformed_client_traceparent_is_ignored(tmp_path, transaction_data, value):
    api = Tracing.start(_settings(tmp_path, trace_sample_ratio=1.0), "api")
    spans = IngestSpans(api)

    parent = forced_parent(value)
    traced = spans.begin("corr-1", parent=parent)
    spans.identified(traced, "ev-1", "transaction", None)

    assert parent is None
    context = traced.ingestion.get_span_context()
    assert context.trace_flags.sampled  # the ratio decided, as without the header
    assert f"{context.trace_id:032x}" != CLIENT_TRACE
    api.shutdown()


# --- the owner's unsampled events ------------------------------------------------------------------------------------


def test_an_event_whose_publish_was_not_sampled_gets_the_context_the_sdk_would_give_and_no_span(
    unsampled_processes, transaction_data
):
    # given two events the API published without sampling them (ratio 0), and an owner that would trace every root
    api, _, directory = unsampled_processes
    owner_settings = _settings(directory.parent / "owner", trace_sample_ratio=1.0)
    owner = Tracing.start(owner_settings, "partition-owner")
    records = [_published(api, transaction_data(id=f"ev-{n}"), n, "c") for n in range(2)]
    parents = [parse_traceparent(dict(r.headers or ())["traceparent"]) for r in records]

    # when the owner processes and commits them
    traced, encoded = _owner_commits(owner, records)
    owner.flush()

    # then each processing span is the unsampled child the parent-based sampler gives: same trace, own span id
    by_sdk = owner.tracer.start_span("x", context=remote_parent(parents[0])).get_span_context()
    assert not by_sdk.trace_flags.sampled and by_sdk.trace_id == parents[0].trace_id
    for event, parent in zip(traced.events, parents, strict=True):
        assert parent is not None and event.context.trace_id == parent.trace_id
        assert event.context.trace_flags == by_sdk.trace_flags and not event.context.is_remote
        assert event.context.span_id not in (parent.span_id, 0)
    assert traced.events[0].context.span_id != traced.events[1].context.span_id
    # stored with the events as before, and nothing is exported: not the events' spans, not the batch commit
    rows = {row["id"]: row["trace"] for row in decode(encoded.doc)["events"]}
    assert rows == {e.event_id: format_traceparent(e.context) for e in traced.events}
    assert _span_lines(traces_dir(owner_settings)) == []
    owner.shutdown()


# --- the API's roots, sampled without the SDK ------------------------------------------------------------------------


def _roots(tracing: Tracing, n: int, seed: int) -> list[SpanContext]:
    spans = IngestSpans(tracing, rng=random.Random(seed))
    contexts = []
    for i in range(n):
        traced = spans.begin("corr")
        spans.identified(traced, f"ev-{i}", "transaction", ("user_id", "u-1"))
        contexts.append(traced.ingestion.get_span_context())
        spans.published(traced, Delivered("events.transaction", 0, i, time.time_ns()))
    return contexts


def test_the_api_samples_new_traces_at_the_ratio_and_exports_only_those(tmp_path):
    settings = _settings(tmp_path, trace_sample_ratio=0.25)
    api = Tracing.start(settings, "api")

    contexts = _roots(api, 4000, seed=7)
    api.flush()

    sampled = [c for c in contexts if c.trace_flags.sampled]
    assert 0.22 < len(sampled) / len(contexts) < 0.28  # binomial(4000, 0.25): 0.25 ± 5 standard deviations
    assert all(c.is_valid and not c.is_remote for c in contexts)
    assert len({c.trace_id for c in contexts}) == len(contexts)  # a trace per event, sampled or not
    exported = [s for s in _span_lines(traces_dir(settings)) if s["name"] == "event-ingestion"]
    assert sorted(s["trace_id"] for s in exported) == sorted(f"{c.trace_id:032x}" for c in sampled)
    assert all("eventpipe.sampled_by_caller" not in s["attributes"] for s in exported)
    assert all(s["attributes"]["event.id"].startswith("ev-") for s in exported)
    api.shutdown()


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_ratio_zero_samples_no_new_trace_and_ratio_one_every_one(tmp_path, ratio):
    api = Tracing.start(_settings(tmp_path, trace_sample_ratio=ratio), "api")

    contexts = _roots(api, 200, seed=1)

    assert {c.trace_flags.sampled for c in contexts} == {bool(ratio)}
    api.shutdown()
