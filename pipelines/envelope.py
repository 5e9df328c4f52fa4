"""The envelope the API writes to `events.<type>`: the validated event plus ingestion metadata.

Encoding is JSON (orjson); decode errors surface as InvalidEvent so a bad record is dead-lettered, never crashes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from pipelines.errors import InvalidEvent
from pipelines.schemas import EventBase


@dataclass(frozen=True)
class Envelope:
    id: str
    type: str
    schema_version: int
    payload: dict[str, Any]
    received_at: float  # epoch seconds when the API accepted it
    correlation_id: str | None = None
    causation_id: str | None = None
    parent_ids: tuple[str, ...] = ()
    idempotency_key: str | None = None
    source: str = "api"
    trace_context: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def wrap(
        cls,
        event: EventBase,
        event_id: str,
        received_at: float,
        *,
        correlation_id: str | None = None,
        idempotency_key: str | None = None,
        source: str = "api",
        trace_context: str | None = None,
    ) -> "Envelope":
        payload = event.model_dump(mode="json")
        payload["id"] = event_id
        return cls(
            id=event_id,
            type=payload["type"],
            schema_version=event.schema_version,
            payload=payload,
            received_at=received_at,
            correlation_id=event.correlation_id or correlation_id,
            causation_id=event.causation_id,
            parent_ids=tuple(event.parent_ids),
            idempotency_key=idempotency_key,
            source=source,
            trace_context=trace_context,
        )

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "type": self.type,
                "schema_version": self.schema_version,
                "received_at": self.received_at,
                "correlation_id": self.correlation_id,
                "causation_id": self.causation_id,
                "parent_ids": list(self.parent_ids),
                "idempotency_key": self.idempotency_key,
                "source": self.source,
                "trace_context": self.trace_context,
                "payload": self.payload,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> "Envelope":
        try:
            obj = orjson.loads(data)
            return cls(
                id=str(obj["id"]),
                type=str(obj["type"]),
                schema_version=int(obj.get("schema_version", 1)),
                payload=dict(obj["payload"]),
                received_at=float(obj["received_at"]),
                correlation_id=obj.get("correlation_id"),
                causation_id=obj.get("causation_id"),
                parent_ids=tuple(obj.get("parent_ids") or ()),
                idempotency_key=obj.get("idempotency_key"),
                source=str(obj.get("source", "api")),
                trace_context=obj.get("trace_context"),
            )
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent(f"record is not valid JSON: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidEvent(f"record is not an eventpipe envelope: {exc!r}") from None
