"""The spans of one event's path, and the per-event log lines that go with them:
`event-ingestion` and `event-publish` at the API (IngestSpans), `event-publish` again when the spool drainer sends a
spooled event (DrainSpans), `event-processing` and `state-store` in the partition owner (ProcessingSpans).

The API injects its publish span's context as the record's W3C `traceparent` header; the owner continues the trace
from that header and stores its processing span's context with the event. Nothing here decides what happens to an
event, and nothing here blocks: spans are handed to the batching processor of `Tracing`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import (
    INVALID_SPAN,
    INVALID_SPAN_ID,
    INVALID_TRACE_ID,
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from cluster.adapters.kafka_producer import Delivered, Record
from cluster.observability.logs import EVENT_LOGGER, event_extra, event_lines_enabled
from cluster.observability.tracing import (
    SAMPLED_BY_CALLER,
    Tracing,
    format_traceparent,
    header,
    parse_traceparent,
    remote_parent,
    with_header,
)
from pipelines.batch import CommitBatch, CommitOutcome, DeadLetter, ProcessedEvent, SourceRecord
from pipelines.outcome import Outcome

events_log = logging.getLogger(EVENT_LOGGER)

INGESTION, PUBLISH, PROCESSING, STATE_STORE = "event-ingestion", "event-publish", "event-processing", "state-store"


def _ms(ns: int) -> float:
    return ns / 1_000_000


def _identity(event_id: str | None, event_type: str | None, correlation_id: str | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    if event_id is not None:
        attributes["event.id"] = event_id
    if event_type is not None:
        attributes["event.type"] = event_type
    if correlation_id is not None:
        attributes["correlation.id"] = correlation_id
    return attributes


def _entities(outcome: ProcessedEvent | DeadLetter) -> dict[str, Any]:
    """user.id or device.id of an event, as the engine read it (pipelines.entity); only for spans that are recorded."""
    if outcome.entity_field is None or outcome.entity_key is None:
        return {}
    return {outcome.entity_field.replace("_", "."): outcome.entity_key}


def _unsampled_child(parent: SpanContext, id_generator: IdGenerator) -> SpanContext:
    """The context of a span whose remote parent is not sampled: what the parent-based sampler of `Tracing` gives
    (a non-recording span, in the parent's trace, with its own id), without starting one through the SDK (most
    records' parents are unsampled at the default ratio, and this is the owner's per-event hot path)."""
    span_id = id_generator.generate_span_id()
    while span_id == INVALID_SPAN_ID:
        span_id = id_generator.generate_span_id()
    return SpanContext(parent.trace_id, span_id, is_remote=False, trace_flags=parent.trace_flags)


def _root_context(id_generator: IdGenerator) -> SpanContext:
    """The context of an unsampled span that starts a trace: valid ids, not sampled."""
    trace_id = id_generator.generate_trace_id()
    while trace_id == INVALID_TRACE_ID:
        trace_id = id_generator.generate_trace_id()
    span_id = id_generator.generate_span_id()
    while span_id == INVALID_SPAN_ID:
        span_id = id_generator.generate_span_id()
    return SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.DEFAULT))


# -- the API -----------------------------------------------------------------------------------------------------------
@dataclass
class IngestTrace:
    """One event's spans in one request: its own trace (a batch request starts one trace per event). The ingestion
    span is created once the event is validated or rejected, with every attribute at once (cheaper than setting them
    later), and back-dated to when the request was taken."""

    started_ns: int
    correlation_id: str | None
    parent: SpanContext | None = None  # a client's sampled `traceparent`: the event's trace continues it
    ingestion: Span = INVALID_SPAN
    publish: Span | None = None
    event_id: str | None = None
    event_type: str | None = None


class IngestSpans:
    def __init__(self, tracing: Tracing, rng: random.Random | None = None) -> None:
        self._tracer = tracing.tracer
        self._ids: IdGenerator = getattr(tracing.tracer, "id_generator", None) or RandomIdGenerator()
        # New traces are sampled here, at the tracer's ratio: most are not, and those need no SDK work at all.
        self._ratio = tracing.ratio if tracing.enabled else None
        self._random = (rng or random.Random()).random

    def begin(
        self, correlation_id: str | None, started_ns: int | None = None, parent: SpanContext | None = None
    ) -> IngestTrace:
        """`event-ingestion` of one event, timed from `started_ns` (now by default); a child of `parent` (a client's
        sampled `traceparent`, see `tracing.forced_parent`) when given, else the root of a new trace."""
        return IngestTrace(started_ns or time.time_ns(), correlation_id, parent)

    def rejected(self, t: IngestTrace, reason: str) -> None:
        attributes = {**_identity(None, None, t.correlation_id), "event.rejected": True}
        span = self._tracer.start_span(
            INGESTION,
            context=remote_parent(t.parent),
            kind=SpanKind.SERVER,
            start_time=t.started_ns,
            attributes=attributes,
        )
        span.set_status(Status(StatusCode.ERROR, reason))
        span.end()

    def identified(self, t: IngestTrace, event_id: str, event_type: str, entity: tuple[str, str] | None) -> None:
        """The event validated: `event-ingestion` (a root, or the child of the client's sampled `traceparent`) with
        its id, type, entity (`user.id` or `device.id`, as pipelines.entity reads it) and correlation id."""
        t.event_id, t.event_type = event_id, event_type
        new_trace = t.parent is None and self._ratio is not None
        if new_trace and self._random() >= self._ratio:
            # What the tracer's sampler gives an unsampled root (a new trace id, a span id, not sampled), without it.
            t.ingestion = NonRecordingSpan(_root_context(self._ids))
            return
        identity = _identity(event_id, event_type, t.correlation_id)
        if entity is not None:
            identity[entity[0].replace("_", ".")] = entity[1]
        if new_trace:
            identity[SAMPLED_BY_CALLER] = True
        t.ingestion = self._tracer.start_span(
            INGESTION,
            context=remote_parent(t.parent),
            kind=SpanKind.SERVER,
            start_time=t.started_ns,
            attributes=identity,
        )

    def publishing(self, t: IngestTrace, record: Record) -> Record:
        """Start `event-publish` (child of ingestion); the record comes back carrying its context as `traceparent`."""
        topic, key, value, headers = record
        parent = t.ingestion.get_span_context()
        if parent.is_valid and not t.ingestion.is_recording():
            # An unsampled event (most, at the default ratio): its publish span is unsampled too, made without the
            # tracer's per-span work; the record still carries the trace's context for the owner to follow.
            t.publish = NonRecordingSpan(_unsampled_child(parent, self._ids))
        else:
            t.publish = self._tracer.start_span(
                PUBLISH,
                context=trace.set_span_in_context(t.ingestion),
                kind=SpanKind.PRODUCER,
                attributes={"event.id": t.event_id or "", "messaging.destination.name": topic},
            )
        return topic, key, value, with_header(headers, format_traceparent(t.publish.get_span_context()))

    def published(
        self, t: IngestTrace, delivered: Delivered | None, *, spooled: bool = False, error: str | None = None
    ) -> None:
        """End `event-publish` at the broker's acknowledgement (or now, at the spool commit or the refusal), then
        `event-ingestion`; one per-event log line when they are enabled."""
        now = time.time_ns()
        publish = t.publish
        if publish is not None:
            if publish.is_recording():
                done: dict[str, Any] = {"spooled": spooled}
                if delivered is not None:
                    done["messaging.destination.partition.id"] = str(delivered.partition)
                    done["messaging.kafka.offset"] = delivered.offset
                publish.set_attributes(done)
                if error is not None:
                    publish.set_status(Status(StatusCode.ERROR, error))
            acked = delivered.acked_ns if delivered is not None and delivered.acked_ns else now
            publish.end(end_time=min(acked, now))
        if error is not None:
            t.ingestion.set_status(Status(StatusCode.ERROR, error))
        t.ingestion.end(end_time=now)
        if error is None and event_lines_enabled():
            events_log.info(
                "event accepted",
                extra=event_extra(
                    t.event_id,
                    t.event_type,
                    t.ingestion.get_span_context(),
                    correlation_id=t.correlation_id,
                    duration_ms=_ms(now - t.started_ns),
                    spooled=spooled,
                ),
            )


# -- the spool drainer -------------------------------------------------------------------------------------------------
class DrainSpans:
    """`event-publish` of a spooled event by the drainer: a child of the API's publish span (stored in the spooled
    record's headers), and the parent the owner then sees."""

    def __init__(self, tracing: Tracing) -> None:
        self._tracer = tracing.tracer

    def publishing(self, event_ids: Sequence[str], records: Sequence[Record]) -> tuple[list[Record], list[Span]]:
        out: list[Record] = []
        spans: list[Span] = []
        for event_id, (topic, key, value, headers) in zip(event_ids, records, strict=True):
            parent = parse_traceparent(header(headers))
            span = self._tracer.start_span(
                PUBLISH,
                context=remote_parent(parent),
                kind=SpanKind.PRODUCER,
                attributes={
                    "event.id": event_id,
                    "messaging.system": "kafka",
                    "messaging.destination.name": topic,
                    "from_spool": True,
                },
            )
            spans.append(span)
            out.append((topic, key, value, with_header(headers, format_traceparent(span.get_span_context()))))
        return out, spans

    def published(self, spans: Sequence[Span], outcomes: Sequence[Delivered | Exception]) -> None:
        now = time.time_ns()
        for span, outcome in zip(spans, outcomes, strict=True):
            if isinstance(outcome, Delivered):
                span.set_attribute("messaging.kafka.offset", outcome.offset)
                span.end(end_time=min(outcome.acked_ns or now, now))
            else:
                span.set_status(Status(StatusCode.ERROR, str(outcome)))
                span.end(end_time=now)


# -- the partition owner -----------------------------------------------------------------------------------------------
@dataclass(slots=True)
class EventSpan:
    """What the owner knows of one record after processing it: its span, outcome and time."""

    offset: int
    event_id: str | None
    event_type: str | None
    context: SpanContext
    outcome: Outcome
    duration_ms: float
    correlation_id: str | None = None
    reason: str | None = None
    tenant: str | None = None  # with event_id, the event's identity


@dataclass
class BatchTrace:
    """The processing spans of one batch, in record order; `trace_contexts` (offset -> traceparent) is stored with
    the events."""

    records: dict[int, SourceRecord]
    events: list[EventSpan] = field(default_factory=list)
    trace_contexts: dict[int, str] = field(default_factory=dict)


class ProcessingSpans:
    """Used from the owner's one loop thread: `begin(records)`, `observe` per outcome (the engine's `on_outcome`
    hook), then `committed` once the batch's commit returned."""

    def __init__(self, tracing: Tracing) -> None:
        self._tracer = tracing.tracer
        self.enabled = tracing.enabled
        self._ids: IdGenerator = getattr(tracing.tracer, "id_generator", None) or RandomIdGenerator()
        self._batch: BatchTrace | None = None

    def begin(self, records: Sequence[SourceRecord]) -> BatchTrace:
        self._batch = BatchTrace({r.offset: r for r in records})
        return self._batch

    def observe(self, outcome: ProcessedEvent | DeadLetter, seconds: float, status: Outcome) -> None:
        """`event-processing` of one record: child of the record's `traceparent` (a new trace without one). `status`
        is what the record counts as: the engine's verdict, a duplicate when an earlier record carried its id."""
        batch = self._batch
        if batch is None:
            return
        end_ns = time.time_ns()
        record = batch.records.get(outcome.offset)
        parent = parse_traceparent(header(record.headers)) if record is not None else None
        if self.enabled and parent is not None and not parent.trace_flags.sampled:
            context = _unsampled_child(parent, self._ids)
        else:
            context = self._span(outcome, seconds, status, parent, end_ns)
        if outcome.event_id is not None and status is not Outcome.DUPLICATE:
            traceparent = format_traceparent(context)
            if traceparent is not None:
                batch.trace_contexts[outcome.offset] = traceparent
        batch.events.append(
            EventSpan(
                outcome.offset,
                outcome.event_id,
                outcome.type,
                context,
                status,
                seconds * 1000,
                outcome.correlation_id,
                outcome.reason if isinstance(outcome, DeadLetter) else None,
                outcome.tenant,
            )
        )

    def _span(
        self,
        outcome: ProcessedEvent | DeadLetter,
        seconds: float,
        status: Outcome,
        parent: SpanContext | None,
        end_ns: int,
    ) -> SpanContext:
        """Start and end the span through the tracer (sampled by ratio without a parent, followed with a sampled one);
        its attributes are set only when it is recorded (most spans without a parent are not, at the default ratio)."""
        span = self._tracer.start_span(
            PROCESSING,
            context=remote_parent(parent),
            kind=SpanKind.CONSUMER,
            start_time=end_ns - int(seconds * 1e9),
        )
        if span.is_recording():
            attributes = _identity(outcome.event_id, outcome.type, outcome.correlation_id)
            attributes.update(_entities(outcome))
            attributes["event.outcome"] = status.value
            attributes["event.processing_time_ms"] = round(seconds * 1000, 3)
            attributes["messaging.kafka.offset"] = outcome.offset  # topic and partition: on the batch commit span
            if outcome.attempts > 1:
                attributes["event.attempts"] = outcome.attempts
            if isinstance(outcome, DeadLetter):
                attributes["dead_letter.kind"] = outcome.error_kind
                attributes["dead_letter.reason"] = outcome.reason
                span.set_status(Status(StatusCode.ERROR, f"dead-lettered: {outcome.error_kind}"))
            span.set_attributes(attributes)
        span.end(end_time=end_ns)
        return span.get_span_context()

    def committed(self, trace_: BatchTrace, batch: CommitBatch, outcome: CommitOutcome, started_ns: int) -> None:
        """`state-store`: one span for the batch commit linking to every event's processing span, and a child of
        each event's processing span (so each event's trace shows its commit); then the per-event log lines."""
        self._batch = None
        end_ns = time.time_ns()
        if self.enabled:
            self._commit_spans(trace_, batch, outcome, started_ns, end_ns)
        _log_events(trace_, batch, _ms(end_ns - started_ns))

    def _commit_spans(
        self, trace_: BatchTrace, batch: CommitBatch, outcome: CommitOutcome, started_ns: int, end_ns: int
    ) -> None:
        sampled = [e for e in trace_.events if e.context.trace_flags.sampled]
        if not sampled:
            return  # the batch commit is traced exactly when one of its events is
        store = {
            "db.system": "postgresql",
            "messaging.destination.name": batch.topic,
            "messaging.destination.partition.id": str(batch.partition),
            "eventpipe.epoch": batch.epoch,
        }
        commit = self._tracer.start_span(
            STATE_STORE,
            kind=SpanKind.CLIENT,
            start_time=started_ns,
            links=[Link(e.context) for e in sampled],
            attributes={
                **store,
                "eventpipe.commit": "batch",
                "eventpipe.batch.records": batch.size,
                "eventpipe.batch.first_offset": batch.expected_offset,
                "eventpipe.batch.next_offset": batch.next_offset,
                "eventpipe.batch.new_events": outcome.new_events,
                "eventpipe.batch.duplicates": outcome.duplicates,
                "eventpipe.batch.dead_letters": outcome.dead_letters,
                "eventpipe.already_committed": outcome.already_committed,
                "db.transaction_ms": round(outcome.duration_s * 1000, 3),
            },
        )
        commit.end(end_time=end_ns)
        batch_link = [Link(commit.get_span_context())]
        known = set(outcome.duplicate_ids)
        for e in sampled:
            if e.outcome is Outcome.DUPLICATE:
                continue
            attributes = {"event.id": e.event_id or "", "eventpipe.commit": "event"}
            if (e.tenant, e.event_id) in known:
                attributes["event.already_stored"] = True
            span = self._tracer.start_span(
                STATE_STORE,
                context=remote_parent(e.context),
                kind=SpanKind.CLIENT,
                start_time=started_ns,
                links=batch_link,
                attributes=attributes,
            )
            span.end(end_time=end_ns)


def _log_events(trace_: BatchTrace, batch: CommitBatch, commit_ms: float) -> None:
    """One line per event of a committed batch: dead letters always (WARNING), the rest when per-event lines are on."""
    lines = event_lines_enabled()
    for e in trace_.events:
        if e.outcome is Outcome.DEAD_LETTERED:
            log, message, detail = events_log.warning, "event dead-lettered: %s", e.reason
        elif lines:
            log, message = events_log.info, "event %s"
            detail = "processed" if e.outcome is Outcome.PROCESSED else "ignored as a duplicate in its batch"
        else:
            continue
        log(
            message,
            detail,
            extra=event_extra(
                e.event_id,
                e.event_type,
                e.context,
                correlation_id=e.correlation_id,
                duration_ms=e.duration_ms,
                offset=e.offset,
                commit_ms=round(commit_ms, 3),
                topic=batch.topic,
                partition=batch.partition,
            ),
        )
