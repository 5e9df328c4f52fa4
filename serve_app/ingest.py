"""Ingestion: admit the request (bounded in-flight events), validate its events, give each a stable id, deliver them
(broker, or the durable spool when the broker cannot take them) and answer only once they are safe.

It never acknowledges an event that neither the broker acknowledged nor a committed spool row holds, and never
publishes an invalid one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from cluster.adapters.kafka_producer import Delivered, Record
from cluster.observability.event_spans import IngestSpans, IngestTrace
from cluster.observability.metrics import METRICS
from cluster.observability.recording import invalid_reason
from cluster.observability.tracing import Tracing
from cluster.settings import Settings
from pipelines import ids
from pipelines.envelope import Envelope
from pipelines.errors import InvalidEvent
from pipelines.registry import Registry
from serve_app.admission import InflightGate
from serve_app.delivery import Delivery, Outcome, Refused, Spooled

JSON_TYPES = ("application/json", "application/cloudevents+json", "text/json")


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] | None = None


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
    scope: str = "anonymous"  # the API key's owner, once API keys exist


def _error(status: int, error: str, reason: str, **extra: Any) -> Reply:
    """A rejected request, counted in validation_errors_total by its error code."""
    METRICS.validation_errors.labels(error).inc()
    return Reply(status, {"error": error, "reason": reason, **extra})


def _invalid(exc: InvalidEvent) -> Reply:
    """A rejected event, counted in validation_errors_total by its first field error's code."""
    METRICS.validation_errors.labels(invalid_reason(exc)).inc()
    return Reply(422, {"error": "validation_failed", "reason": exc.reason, "errors": [e.as_dict() for e in exc.errors]})


def _overloaded(gate: InflightGate, events: int) -> Reply:
    reason = f"{gate.inflight} events in flight; {events} more would exceed this replica's limit of {gate.limit}"
    return Reply(429, {"error": "overloaded", "reason": reason}, {"Retry-After": "1"})


def _refused(refused: Refused, **extra: Any) -> Reply:
    return Reply(
        503,
        {"error": refused.error, "reason": refused.reason, **extra},
        {"Retry-After": str(refused.retry_after_s)},
    )


class Ingestor:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        delivery: Delivery,
        gate: InflightGate,
        spans: IngestSpans | None = None,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._delivery = delivery
        self._gate = gate
        self._spans = spans or IngestSpans(Tracing.disabled())

    def _precheck(self, body: bytes, meta: RequestMeta, limit: int) -> Reply | None:
        ctype = (meta.content_type or "").split(";")[0].strip().lower()
        if ctype not in JSON_TYPES:
            got = ctype or "none"
            return _error(415, "unsupported_media_type", f"Content-Type must be application/json, got {got!r}")
        if len(body) > limit:
            return _error(413, "payload_too_large", f"body of {len(body)} bytes exceeds the {limit}-byte limit")
        if meta.idempotency_key is not None and not (1 <= len(meta.idempotency_key) <= 256):
            return _error(400, "bad_idempotency_key", "Idempotency-Key must be 1 to 256 characters")
        return None

    def _decode(self, body: bytes) -> Any | Reply:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _error(400, "malformed_json", f"body is not valid JSON: {exc}")

    def _prepare(self, raw: Any, meta: RequestMeta, index: int | None, now: float, traced: IngestTrace) -> Prepared:
        """Validate, fix the event's id (client's, idempotency-derived, or new) and serialise its record."""
        if isinstance(raw, dict) and raw.get("id") is None:
            if meta.idempotency_key is not None:
                raw = {**raw, "id": ids.from_idempotency_key(meta.scope, meta.idempotency_key, index)}
            else:
                raw = {**raw, "id": ids.new_id()}
        event = self._registry.parse(raw)
        record = Envelope.encode_event(
            event, now, correlation_id=meta.correlation_id, idempotency_key=meta.idempotency_key
        )
        event_type: str = event.type  # type: ignore[attr-defined]
        self._spans.identified(traced, str(event.id), event_type, getattr(event, "user_id", None))
        return Prepared(
            str(event.id),
            event_type,
            (self._settings.topic(event_type), event.entity_key().encode(), record, None),
            traced,
        )

    async def single(self, body: bytes, meta: RequestMeta) -> Reply:
        problem = self._precheck(body, meta, self._settings.max_event_bytes)
        if problem:
            return problem
        raw = self._decode(body)
        if isinstance(raw, Reply):
            return raw
        if not self._gate.try_acquire(1):
            return _overloaded(self._gate, 1)
        try:
            return await self._single(raw, meta)
        finally:
            self._gate.release(1)

    async def _single(self, raw: Any, meta: RequestMeta) -> Reply:
        traced = self._spans.begin(meta.correlation_id)
        try:
            prepared = self._prepare(raw, meta, None, time.time(), traced)
        except InvalidEvent as exc:
            self._spans.rejected(traced, exc.reason)
            return _invalid(exc)
        (outcome,) = await self._deliver([prepared])
        if isinstance(outcome, Refused):
            return _refused(outcome)
        METRICS.events_received.labels(prepared.type).inc()
        return Reply(202, _accepted(prepared, outcome))

    async def batch(self, body: bytes, meta: RequestMeta) -> Reply:
        problem = self._precheck(body, meta, self._settings.max_body_bytes)
        if problem:
            return problem
        raw = self._decode(body)
        if isinstance(raw, Reply):
            return raw
        items = raw.get("events") if isinstance(raw, dict) else raw
        if not isinstance(items, list):
            return _error(422, "validation_failed", 'body must be a JSON array of events (or {"events": [...]})')
        if not items:
            return _error(422, "validation_failed", "the batch is empty")
        if len(items) > self._settings.max_batch_events:
            return _error(
                413,
                "batch_too_large",
                f"{len(items)} events exceed the {self._settings.max_batch_events}-event batch limit",
            )
        if not self._gate.try_acquire(len(items)):
            return _overloaded(self._gate, len(items))
        try:
            return await self._batch(items, meta)
        finally:
            self._gate.release(len(items))

    async def _batch(self, items: list[Any], meta: RequestMeta) -> Reply:
        now, started_ns = time.time(), time.time_ns()
        results: list[dict[str, Any] | None] = [None] * len(items)
        valid: list[tuple[int, Prepared]] = []
        for index, item in enumerate(items):
            traced = self._spans.begin(meta.correlation_id, started_ns)  # one trace per event, not per request
            try:
                valid.append((index, self._prepare(item, meta, index, now, traced)))
            except InvalidEvent as exc:
                self._spans.rejected(traced, exc.reason)
                METRICS.validation_errors.labels(invalid_reason(exc)).inc()
                results[index] = {
                    "index": index,
                    "status": "rejected",
                    "reason": exc.reason,
                    "errors": [e.as_dict() for e in exc.errors],
                }
        outcomes = await self._deliver([p for _, p in valid])
        refusal: Refused | None = None
        for (index, prepared), outcome in zip(valid, outcomes, strict=True):
            if isinstance(outcome, Refused):
                refusal = refusal or outcome
                results[index] = {"index": index, "status": "failed", "id": prepared.id, "reason": outcome.reason}
            else:
                METRICS.events_received.labels(prepared.type).inc()
                results[index] = {"index": index, **_accepted(prepared, outcome)}
        accepted = sum(1 for r in results if r and r["status"] == "accepted")
        failed = sum(1 for r in results if r and r["status"] == "failed")
        body_out = {
            "accepted": accepted,
            "rejected": len(items) - accepted - failed,
            "failed": failed,
            "spooled": sum(1 for r in results if r and r.get("spooled")),
            "results": results,
        }
        if accepted:
            return Reply(202, body_out)
        if refusal is not None:
            return _refused(refusal, **body_out)
        return Reply(422, {"error": "validation_failed", "reason": "no event in the batch is valid", **body_out})

    async def _deliver(self, prepared: list[Prepared]) -> list[Outcome]:
        """Deliver with `event-publish` spans: each record carries its span's context as the `traceparent` header."""
        items = [(p.id, self._spans.publishing(p.trace, p.record)) for p in prepared]
        try:
            outcomes = await self._delivery.deliver(items)
        except BaseException as exc:
            for p in prepared:
                self._spans.published(p.trace, None, error=f"{type(exc).__name__}: {exc}")
            raise
        for p, outcome in zip(prepared, outcomes, strict=True):
            if isinstance(outcome, Refused):
                self._spans.published(p.trace, None, error=outcome.reason)
            else:
                self._spans.published(
                    p.trace, outcome if isinstance(outcome, Delivered) else None, spooled=isinstance(outcome, Spooled)
                )
        return outcomes


def _accepted(prepared: Prepared, outcome: Outcome) -> dict[str, Any]:
    """The answer for a taken event: its log position, or `spooled` when it waits in the spool for the broker."""
    if isinstance(outcome, Spooled):
        return {"id": prepared.id, "status": "accepted", "type": prepared.type, "spooled": True}
    if not isinstance(outcome, Delivered):
        raise TypeError(f"not an accepted outcome: {outcome!r}")
    return {
        "id": prepared.id,
        "status": "accepted",
        "type": prepared.type,
        "topic": outcome.topic,
        "partition": outcome.partition,
        "offset": outcome.offset,
    }
