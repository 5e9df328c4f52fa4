"""Ingestion: validate the request's events, give each a stable id, publish, and answer only after the broker acked.

It never acknowledges an event the broker has not acknowledged, and never publishes an invalid one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from cluster.adapters.kafka_producer import Delivered, KafkaPublisher, PublishError
from cluster.settings import Settings
from pipelines import ids
from pipelines.envelope import Envelope
from pipelines.errors import InvalidEvent
from pipelines.jsontext import has_nul
from pipelines.registry import Registry

JSON_TYPES = ("application/json", "application/cloudevents+json", "text/json")


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] | None = None


@dataclass(frozen=True)
class RequestMeta:
    content_type: str | None
    idempotency_key: str | None
    correlation_id: str | None
    scope: str = "anonymous"  # the API key's owner, once API keys exist


def _error(status: int, error: str, reason: str, **extra: Any) -> Reply:
    return Reply(status, {"error": error, "reason": reason, **extra})


class Ingestor:
    def __init__(self, settings: Settings, registry: Registry, publisher: KafkaPublisher) -> None:
        self._settings = settings
        self._registry = registry
        self._publisher = publisher

    def _precheck(self, body: bytes, meta: RequestMeta, limit: int) -> Reply | None:
        ctype = (meta.content_type or "").split(";")[0].strip().lower()
        if ctype not in JSON_TYPES:
            return _error(415, "unsupported_media_type", f"Content-Type must be application/json, got {ctype or 'none'!r}")
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

    def _envelope(self, raw: Any, meta: RequestMeta, index: int | None, now: float) -> Envelope:
        event = self._registry.parse(raw)
        if event.id is not None:
            event_id = event.id
        elif meta.idempotency_key is not None:
            event_id = ids.from_idempotency_key(meta.scope, meta.idempotency_key, index)
        else:
            event_id = ids.new_id()
        envelope = Envelope.wrap(
            event, event_id, now, correlation_id=meta.correlation_id, idempotency_key=meta.idempotency_key
        )
        if has_nul(orjson.dumps(envelope.payload)):
            raise InvalidEvent("event contains a NUL character (\\u0000), which cannot be stored")
        return envelope

    def _record(self, envelope: Envelope) -> tuple[str, bytes, bytes, None]:
        key = str(envelope.payload.get("user_id") or envelope.payload.get("device_id") or envelope.id)
        return (self._settings.topic(envelope.type), key.encode(), envelope.encode(), None)

    async def single(self, body: bytes, meta: RequestMeta) -> Reply:
        problem = self._precheck(body, meta, self._settings.max_event_bytes)
        if problem:
            return problem
        raw = self._decode(body)
        if isinstance(raw, Reply):
            return raw
        try:
            envelope = self._envelope(raw, meta, None, time.time())
        except InvalidEvent as exc:
            return _error(422, "validation_failed", exc.reason, errors=[e.as_dict() for e in exc.errors])
        (outcome,) = await self._publisher.publish_many([self._record(envelope)])
        if isinstance(outcome, PublishError):
            return Reply(503, {"error": "broker_unavailable", "reason": str(outcome)}, {"Retry-After": "1"})
        return Reply(202, _accepted(envelope, outcome))

    async def batch(self, body: bytes, meta: RequestMeta) -> Reply:
        problem = self._precheck(body, meta, self._settings.max_body_bytes)
        if problem:
            return problem
        raw = self._decode(body)
        if isinstance(raw, Reply):
            return raw
        items = raw.get("events") if isinstance(raw, dict) else raw
        if not isinstance(items, list):
            return _error(422, "validation_failed", "body must be a JSON array of events (or {\"events\": [...]})")
        if not items:
            return _error(422, "validation_failed", "the batch is empty")
        if len(items) > self._settings.max_batch_events:
            return _error(413, "batch_too_large",
                          f"{len(items)} events exceed the {self._settings.max_batch_events}-event batch limit")
        now = time.time()
        results: list[dict[str, Any] | None] = [None] * len(items)
        valid: list[tuple[int, Envelope]] = []
        for index, item in enumerate(items):
            try:
                valid.append((index, self._envelope(item, meta, index, now)))
            except InvalidEvent as exc:
                results[index] = {"index": index, "status": "rejected", "reason": exc.reason,
                                  "errors": [e.as_dict() for e in exc.errors]}
        outcomes = await self._publisher.publish_many([self._record(env) for _, env in valid]) if valid else []
        for (index, envelope), outcome in zip(valid, outcomes):
            if isinstance(outcome, PublishError):
                results[index] = {"index": index, "status": "failed", "id": envelope.id, "reason": str(outcome)}
            else:
                results[index] = {"index": index, **_accepted(envelope, outcome)}
        accepted = sum(1 for r in results if r and r["status"] == "accepted")
        failed = sum(1 for r in results if r and r["status"] == "failed")
        body_out = {"accepted": accepted, "rejected": len(items) - accepted - failed, "failed": failed,
                    "results": results}
        if accepted:
            return Reply(202, body_out)
        if failed:
            return Reply(503, {"error": "broker_unavailable", **body_out}, {"Retry-After": "1"})
        return Reply(422, {"error": "validation_failed", "reason": "no event in the batch is valid", **body_out})


def _accepted(envelope: Envelope, delivered: Delivered) -> dict[str, Any]:
    return {"id": envelope.id, "status": "accepted", "type": envelope.type, "topic": delivered.topic,
            "partition": delivered.partition, "offset": delivered.offset}
