"""Ingestion: admit the request (limits before work, bounded in-flight events), validate its events, give each a stable
id, bound each event's broker record, deliver them (broker, or the durable spool when the broker cannot take them)
and answer only once they are safe, within the request's time bound.

It never acknowledges an event that neither the broker acknowledged nor a committed spool row holds, never publishes
an invalid or oversized one, and never answers a timed-out delivery as if nothing had been sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from opentelemetry.trace import SpanContext

from cluster.adapters.kafka_producer import Delivered, Record
from cluster.observability.event_spans import IngestSpans, IngestTrace
from cluster.observability.metrics import METRICS
from cluster.observability.recording import invalid_reason
from cluster.observability.tracing import Tracing
from cluster.settings import Settings
from pipelines import ids, jsontext
from pipelines.access import DEFAULT_TENANT
from pipelines.entity import entity_of
from pipelines.envelope import Envelope
from pipelines.errors import InvalidEvent
from pipelines.registry import Registry
from pipelines.schemas import EventBase
from serve_app import replies
from serve_app.admission import InflightGate
from serve_app.delivery import Delivery, Outcome, Refused, Rejected, Spooled, Unknown
from serve_app.incidents import Incidents
from serve_app.replies import Reply

__all__ = ["JSON_TYPES", "Ingestor", "Prepared", "Reply", "RequestMeta"]

log = logging.getLogger(__name__)
JSON_TYPES = ("application/json", "application/cloudevents+json", "text/json")


@dataclass(frozen=True)
class Prepared:
    """A validated event ready to publish: its id, type, the broker record and its spans."""

    id: str
    type: str
    record: Record
    trace: IngestTrace


@dataclass(frozen=True)
class RequestMeta:
    content_type: str | None
    idempotency_key: str | None
    correlation_id: str | None
    tenant: str = DEFAULT_TENANT  # the API key's tenant: its events, and the scope of their idempotency-derived ids
    content_length: int | None = None  # as declared by the client; None for a chunked body
    deadline: float | None = None  # event-loop time by which the request must be answered; None: from now
    trace_parent: SpanContext | None = None  # a sampled `traceparent` header: the request's events are traced
    content_encoding: str | None = None  # only identity is taken: a compressed body would escape the byte cap
    # The key's events-per-minute limit: asked with the request's event count once the body is decoded, before any
    # event is validated or published (a refused request is never half-taken); None: events are not limited.
    admit_events: Callable[[int], Awaitable[Reply | None]] | None = None


class EventTooLarge(Exception):
    """The event's serialised broker record exceeds max_event_bytes: rejected, never produced nor spooled."""

    def __init__(self, event_id: str, size: int, limit: int) -> None:
        super().__init__(replies.event_too_large(size, limit))
        self.event_id = event_id


class Ingestor:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        delivery: Delivery,
        gate: InflightGate,
        spans: IngestSpans | None = None,
        incidents: Incidents | None = None,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._delivery = delivery
        self._gate = gate
        self._spans = spans or IngestSpans(Tracing.disabled())
        self._incidents = incidents or Incidents(log)

    @property
    def single_limit(self) -> int:
        return self._settings.max_event_bytes

    @property
    def batch_limit(self) -> int:
        return self._settings.max_body_bytes

    def precheck(self, meta: RequestMeta, limit: int) -> Reply | None:
        """What the headers alone decide, before a byte of the body is read: media type, declared size, key."""
        ctype = (meta.content_type or "").split(";")[0].strip().lower()
        if ctype not in JSON_TYPES:
            got = ctype or "none"
            return replies.error(415, "unsupported_media_type", f"Content-Type must be application/json, got {got!r}")
        encoding = (meta.content_encoding or "identity").strip().lower()
        if encoding != "identity":
            reason = f"Content-Encoding {encoding[:32]!r} is not supported: send the body uncompressed (identity)"
            return replies.error(415, "unsupported_media_type", reason)
        if meta.content_length is not None and meta.content_length > limit:
            return replies.body_too_large(limit, meta.content_length)
        if meta.idempotency_key is not None and not (1 <= len(meta.idempotency_key) <= 256):
            return replies.error(400, "bad_idempotency_key", "Idempotency-Key must be 1 to 256 characters")
        return None

    def _admit(self, body: bytes, meta: RequestMeta, limit: int) -> Reply | None:
        problem = self.precheck(meta, limit)
        if problem is None and len(body) > limit:
            problem = replies.body_too_large(limit, len(body))
        return problem

    def _decode(self, body: bytes) -> Any | Reply:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            where = f"line {exc.lineno}, column {exc.colno}"  # the position only: the parser's text stays here
            return replies.error(400, "malformed_json", f"body is not valid JSON (at {where})")
        problem = jsontext.ambiguity(body)
        if problem is not None:
            return replies.error(400, "malformed_json", f"body is not valid JSON: {problem}")
        return value

    def _deadline(self, meta: RequestMeta) -> float:
        if meta.deadline is not None:
            return meta.deadline
        return asyncio.get_running_loop().time() + self._settings.request_timeout_s

    def _with_id(self, raw: Any, meta: RequestMeta, index: int | None) -> Any:
        """The event as sent, with its id fixed when it has none: idempotency-derived, or new."""
        if isinstance(raw, dict) and raw.get("id") is None:
            if meta.idempotency_key is not None:
                scope = ids.idempotency_scope(meta.tenant)
                return {**raw, "id": ids.from_idempotency_key(scope, meta.idempotency_key, index)}
            return {**raw, "id": ids.new_id()}
        return raw

    def _prepare(self, event: EventBase, meta: RequestMeta, now: float, traced: IngestTrace) -> Prepared:
        """Serialise a validated event's record (its id is set) and bound it."""
        record = Envelope.encode_event(
            event, now, correlation_id=meta.correlation_id, idempotency_key=meta.idempotency_key, tenant=meta.tenant
        )
        key = event.entity_key().encode()
        size = len(record) + len(key)  # headers come later: the traceparent fits the headroom under message.max.bytes
        if size > self._settings.max_event_bytes:
            raise EventTooLarge(str(event.id), size, self._settings.max_event_bytes)
        event_type: str = event.type  # type: ignore[attr-defined]
        # The fields, not getattr: a model without `user_id` raises inside pydantic's __getattr__ first (slow).
        self._spans.identified(traced, str(event.id), event_type, entity_of(event))
        return Prepared(str(event.id), event_type, (self._settings.topic(event_type), key, record, None), traced)

    async def single(self, body: bytes, meta: RequestMeta) -> Reply:
        problem = self._admit(body, meta, self.single_limit)
        if problem:
            return problem
        raw = self._decode(body)
        if isinstance(raw, Reply):
            return raw
        if meta.admit_events is not None and (limited := await meta.admit_events(1)) is not None:
            return limited
        if not self._gate.try_acquire(1):
            return replies.overloaded(self._gate, 1)
        try:
            return await self._single(raw, meta)
        finally:
            self._gate.release(1)

    async def _single(self, raw: Any, meta: RequestMeta) -> Reply:
        traced = self._spans.begin(meta.correlation_id, parent=meta.trace_parent)
        try:
            event = self._registry.parse(self._with_id(raw, meta, None))
            prepared = self._prepare(event, meta, time.time(), traced)
        except InvalidEvent as exc:
            self._spans.rejected(traced, exc.reason)
            return replies.invalid(exc)
        except EventTooLarge as exc:
            self._spans.rejected(traced, str(exc))
            return replies.error(413, replies.EVENT_TOO_LARGE, str(exc), id=exc.event_id)
        outcomes = await self._deliver([prepared], self._deadline(meta))
        if outcomes is None:
            return self._timed_out(id=prepared.id, status="unknown")
        (outcome,) = outcomes
        if isinstance(outcome, Refused):
            return replies.refused(outcome, id=prepared.id)
        if isinstance(outcome, Unknown):
            return replies.unknown(outcome, id=prepared.id, status="unknown")
        if isinstance(outcome, Rejected):
            return replies.rejected(outcome, prepared.id)
        METRICS.events_received.labels(prepared.type).inc()
        return Reply(202, replies.accepted(prepared.id, prepared.type, outcome))

    async def batch(self, body: bytes, meta: RequestMeta) -> Reply:
        problem = self._admit(body, meta, self.batch_limit)
        if problem:
            return problem
        raw = self._decode(body)
        if isinstance(raw, Reply):
            return raw
        items = raw.get("events") if isinstance(raw, dict) else raw
        if not isinstance(items, list):
            return replies.error(422, "validation_failed", 'body must be a JSON array of events (or {"events": [...]})')
        if not items:
            return replies.error(422, "validation_failed", "the batch is empty")
        if len(items) > self._settings.max_batch_events:
            return replies.error(
                413,
                "batch_too_large",
                f"{len(items)} events exceed the {self._settings.max_batch_events}-event batch limit",
            )
        if meta.admit_events is not None and (limited := await meta.admit_events(len(items))) is not None:
            return limited
        if not self._gate.try_acquire(len(items)):
            return replies.overloaded(self._gate, len(items))
        try:
            return await self._batch(items, meta)
        finally:
            self._gate.release(len(items))

    async def _batch(self, items: list[Any], meta: RequestMeta) -> Reply:
        now, started_ns = time.time(), time.time_ns()
        results: list[dict[str, Any] | None] = [None] * len(items)
        valid: list[tuple[int, Prepared]] = []
        # The whole batch in one validation call; an invalid event gets exactly the answer `parse` gives it alone.
        parsed = self._registry.parse_many([self._with_id(item, meta, index) for index, item in enumerate(items)])
        for index, event in enumerate(parsed):
            # One trace per event, not per request; with a sampled client traceparent, all of them continue its trace.
            traced = self._spans.begin(meta.correlation_id, started_ns, meta.trace_parent)
            try:
                if isinstance(event, InvalidEvent):
                    raise event
                valid.append((index, self._prepare(event, meta, now, traced)))
            except InvalidEvent as exc:
                self._spans.rejected(traced, exc.reason)
                METRICS.validation_errors.labels(invalid_reason(exc)).inc()
                results[index] = {
                    "index": index,
                    "status": "rejected",
                    "error": "validation_failed",
                    "reason": exc.reason,
                    "errors": [e.as_dict() for e in exc.errors],
                }
            except EventTooLarge as exc:
                self._spans.rejected(traced, str(exc))
                METRICS.validation_errors.labels(replies.EVENT_TOO_LARGE).inc()
                results[index] = _rejected_item(index, exc.event_id, replies.EVENT_TOO_LARGE, str(exc))
        outcomes = await self._deliver([p for _, p in valid], self._deadline(meta))
        if outcomes is None:
            for index, prepared in valid:
                results[index] = {"index": index, "status": "unknown", "id": prepared.id}
            return self._timed_out(**_summary(results))
        refusal: Refused | None = None
        unknown: Unknown | None = None
        received: dict[str, int] = {}
        for (index, prepared), outcome in zip(valid, outcomes, strict=True):
            if isinstance(outcome, Unknown):
                unknown = unknown or outcome
                results[index] = {"index": index, "status": "unknown", "id": prepared.id}
            elif isinstance(outcome, Refused):
                refusal = refusal or outcome
                results[index] = {
                    "index": index,
                    "status": "failed",
                    "id": prepared.id,
                    "error": outcome.error,
                    "reason": outcome.reason,
                    "error_id": outcome.error_id,
                }
            elif isinstance(outcome, Rejected):
                METRICS.validation_errors.labels(outcome.error).inc()
                results[index] = _rejected_item(index, prepared.id, outcome.error, outcome.reason)
            else:
                received[prepared.type] = received.get(prepared.type, 0) + 1
                results[index] = replies.accepted(prepared.id, prepared.type, outcome, index)
        for event_type, count in received.items():  # one increment per type, not one per event
            METRICS.events_received.labels(event_type).inc(count)
        body_out = _summary(results)
        if body_out["accepted"]:
            return Reply(202, body_out)
        if unknown is not None:
            return replies.unknown(unknown, **body_out)
        if refusal is not None:
            return replies.refused(refusal, **body_out)
        return Reply(422, {"error": "validation_failed", "reason": "no event in the batch is valid", **body_out})

    def _timed_out(self, **extra: Any) -> Reply:
        timeout_s = self._settings.request_timeout_s
        message = f"requests outlived their {timeout_s:g}s bound while delivering"
        error_id = self._incidents.report(message, cause="timeout")
        return replies.timed_out(timeout_s, error_id, **extra)

    async def _deliver(self, prepared: list[Prepared], deadline: float) -> list[Outcome] | None:
        """Deliver with `event-publish` spans (each record carries its span's context as the `traceparent` header);
        None when the deadline passed first: then nobody knows what the broker or the spool took."""
        items = [(p.id, self._spans.publishing(p.trace, p.record)) for p in prepared]
        try:
            async with asyncio.timeout_at(deadline):
                outcomes = await self._delivery.deliver(items)
        except TimeoutError:
            for p in prepared:
                self._spans.published(p.trace, None, error="the request timed out while delivering")
            return None
        except BaseException as exc:
            for p in prepared:
                self._spans.published(p.trace, None, error=f"{type(exc).__name__}: {exc}")
            raise
        for p, outcome in zip(prepared, outcomes, strict=True):
            if isinstance(outcome, Refused | Rejected):
                self._spans.published(p.trace, None, error=outcome.reason)
            elif isinstance(outcome, Unknown):
                self._spans.published(p.trace, None, error="the spool did not confirm the event in time")
            else:
                self._spans.published(
                    p.trace, outcome if isinstance(outcome, Delivered) else None, spooled=isinstance(outcome, Spooled)
                )
        return outcomes


def _rejected_item(index: int, event_id: str, code: str, reason: str) -> dict[str, Any]:
    return {"index": index, "status": "rejected", "id": event_id, "error": code, "reason": reason}


def _summary(results: list[dict[str, Any] | None]) -> dict[str, Any]:
    counts = {"accepted": 0, "rejected": 0, "failed": 0, "unknown": 0}
    spooled = 0
    for r in results:
        if r is not None:
            counts[r["status"]] += 1
            spooled += bool(r.get("spooled"))
    summary: dict[str, Any] = {**counts, "spooled": spooled, "results": results}
    if not counts["unknown"]:
        del summary["unknown"]
    return summary
