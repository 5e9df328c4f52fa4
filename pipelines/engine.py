"""PartitionProcessor: turns a bounded batch of log records into one outcome per record, and those into a CommitBatch.

Decode, validate, route to the handler, retry transient failures, classify poison; no I/O, no clocks of its own.
Whatever one record does (any exception, anywhere on its way) ends as that record's dead letter, never as an error.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field

import orjson

from pipelines import ids
from pipelines.access import DEFAULT_TENANT, valid_tenant
from pipelines.batch import (
    CommitBatch,
    DeadLetter,
    InBatchDuplicate,
    ProcessedEvent,
    RecordOutcome,
    SourceRecord,
    assemble,
    bare_dead_letter,
    clean_reason,
)
from pipelines.effects import DeviceReading, Effect, UserSpend
from pipelines.entity import ENTITY_FIELDS, entity_of
from pipelines.envelope import Envelope
from pipelines.errors import DeadLetterKind, InvalidEvent, PoisonEvent
from pipelines.jsontext import dumps_storable
from pipelines.outcome import Outcome
from pipelines.policies.retry import RetryExhausted, RetryPolicy, call_with_retry
from pipelines.registry import Registry
from pipelines.schemas import EventBase
from pipelines.tenants import claimed_tenant

log = logging.getLogger(__name__)


def _json(value: object) -> str:
    try:
        return dumps_storable(value).decode()
    except ValueError:
        # PostgreSQL jsonb cannot store NUL; such an event is dead-lettered with its raw bytes instead.
        raise InvalidEvent("event contains a NUL character (\\u0000), which cannot be stored") from None


def _consistent(envelope: Envelope, event: EventBase) -> None:
    """The envelope's routing fields must agree with the payload it carries, or the record is invalid."""
    payload_type = envelope.payload.get("type")
    if envelope.type != payload_type:
        raise InvalidEvent(f"envelope type {envelope.type!r} does not match payload type {payload_type!r}")
    if envelope.schema_version != event.schema_version:
        raise InvalidEvent(
            f"envelope schema_version {envelope.schema_version} does not match payload's {event.schema_version}"
        )
    if event.id is not None and event.id != envelope.id:
        raise InvalidEvent(f"envelope id {envelope.id!r} does not match payload id {event.id!r}")


@dataclass(slots=True)
class _Decoded:
    """What a record's bytes said, decoded once: its envelope and its payload as stored (None when it cannot be:
    NUL), kept for the record's dead letter should the event fail later."""

    envelope: Envelope
    payload_json: str | None


def _storable_or_none(payload: object) -> str | None:
    try:
        return _json(payload)
    except InvalidEvent:
        return None


@dataclass
class PartitionProcessor:
    registry: Registry
    ingest_topic: str
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    max_record_bytes: int = 1_048_576
    clock: Callable[[], float] = time.perf_counter
    # Told each record's outcome, the seconds spent on it (decode, validate, handler with retries) and what it counts
    # as (a record whose event id an earlier record of the batch carries is a duplicate): metrics, traces.
    on_outcome: Callable[[ProcessedEvent | DeadLetter, float, Outcome], None] | None = None
    # The tenants a raw ingest record's `tenant` header may name (the owner's cache of the tenants table, prepared
    # before the batch): a lookup, never I/O. Any other name dead-letters the record.
    known_tenants: Container[str] = frozenset({DEFAULT_TENANT})

    def process(
        self,
        records: Sequence[SourceRecord],
        *,
        epoch: int,
        owner_id: str,
        expected_offset: int,
        consumed_at: float,
        skipped: tuple[int, int] | None = None,
    ) -> CommitBatch:
        """Records must be one partition's, in offset order, starting at or after expected_offset."""
        if not records:
            raise ValueError("a batch needs at least one record")
        return assemble(
            self.outcomes(records, consumed_at),
            topic=records[0].topic,
            partition=records[0].partition,
            epoch=epoch,
            owner_id=owner_id,
            expected_offset=expected_offset,
            next_offset=records[-1].offset + 1,
            consumed_at=consumed_at,
            skipped=skipped,
        )

    def outcomes(self, records: Sequence[SourceRecord], consumed_at: float) -> list[RecordOutcome]:
        """What each record became, one outcome per record in their order; each record is parsed once.

        Nothing a record holds can make this raise: any exception on its way (decoding, validation, the handler,
        serialisation, building its dead letter) dead-letters that record alone. The on_outcome hook only observes:
        its failures are logged, once per batch, and change no outcome.
        """
        out: list[RecordOutcome] = []
        seen: set[tuple[str | None, str]] = set()  # an event's identity is (tenant, id)
        hook_failures, first_failure = 0, ""
        clock, on_outcome = self.clock, self.on_outcome
        for record in records:
            started = clock()
            outcome = self._guarded(record, consumed_at)
            event_id = outcome.event_id
            identity = (outcome.tenant, event_id) if event_id is not None else None
            duplicate = identity is not None and identity in seen
            if on_outcome is not None:
                try:
                    on_outcome(outcome, clock() - started, Outcome.DUPLICATE if duplicate else outcome.outcome)
                except Exception as exc:  # noqa: BLE001 - an observation bug must not change what an event became
                    hook_failures += 1
                    first_failure = first_failure or f"offset {record.offset}: {_describe(exc)}"
            if duplicate:
                out.append(InBatchDuplicate(event_id, record.offset, outcome.tenant))  # type: ignore[arg-type]
                continue
            if identity is not None:
                seen.add(identity)
            out.append(outcome)
        if hook_failures:
            log.error("on_outcome failed on %d of %d records (first at %s)", hook_failures, len(records), first_failure)
        return out

    def _guarded(self, record: SourceRecord, consumed_at: float) -> ProcessedEvent | DeadLetter:
        try:
            return self._one(record, consumed_at)
        except Exception as exc:  # noqa: BLE001 - even building its dead letter failed: the bare one cannot
            return self._bare(record, DeadLetterKind.HANDLER_ERROR, _describe(exc), consumed_at)

    def _received_at(self, record: SourceRecord, consumed_at: float) -> float:
        """The broker's timestamp for raw records, when it is inside the registry's event-time window; without one,
        or when a producer's CreateTime is far off (no database timestamp may hold it), the time we read it."""
        if record.timestamp_ms:
            seconds = record.timestamp_ms / 1000.0
            window = self.registry.time_window
            if window.earliest.timestamp() <= seconds <= self.registry.clock() + window.max_ahead_s:
                return seconds
        return consumed_at

    def _value(self, record: SourceRecord) -> bytes:
        if record.value is None:
            raise InvalidEvent("record has no value")
        if len(record.value) > self.max_record_bytes:
            raise InvalidEvent(f"record of {len(record.value)} bytes exceeds the {self.max_record_bytes}-byte limit")
        return record.value

    def _bare_event(self, record: SourceRecord, consumed_at: float, tenant: str) -> tuple[EventBase, _Decoded]:
        """A record of the raw ingest topic holds a bare event, validated once: its envelope is made here, and an
        event without an id gets the one its log position gives (the handler sees it too, as for an API event)."""
        event = self.registry.parse_json(self._value(record))
        if event.id is None:
            event_id = ids.from_log_position(record.topic, record.partition, record.offset)
            event = event.model_copy(update={"id": event_id})  # a validated event: no second validation
        received_at = self._received_at(record, consumed_at)
        envelope = Envelope.wrap(event, str(event.id), received_at, source="kafka", tenant=tenant)
        return event, _Decoded(envelope, _storable_or_none(envelope.payload))

    def _one(self, record: SourceRecord, consumed_at: float) -> ProcessedEvent | DeadLetter:
        decoded: _Decoded | None = None
        tenant: str | None = None  # known once the record's tenant is: for a dead letter of its raw bytes
        try:
            if record.topic == self.ingest_topic:
                claimed = claimed_tenant(record) if record.headers else DEFAULT_TENANT
                if not (valid_tenant(claimed) and claimed in self.known_tenants):
                    # Raw bytes kept, no tenant: nobody may read it as theirs.
                    return self._bare(record, DeadLetterKind.INVALID, f"unknown tenant {claimed!r}", consumed_at)
                tenant = claimed
                event, decoded = self._bare_event(record, consumed_at, tenant)
            else:
                # API envelopes: the event is validated from the decoded payload.
                envelope = Envelope.decode(self._value(record))
                # Envelope.decode refused a record holding a NUL anywhere, so its payload serialises as stored.
                decoded = _Decoded(envelope, orjson.dumps(envelope.payload).decode())
                event = self.registry.parse(envelope.payload)
                _consistent(envelope, event)
            envelope, payload_json = decoded.envelope, decoded.payload_json
            entity = entity_of(event)  # as validated (whitespace stripped), like the effects
            if payload_json is None:
                raise InvalidEvent("event contains a NUL character (\\u0000), which cannot be stored")
            if entity is None:
                raise InvalidEvent(f"{envelope.type} event names no entity ({', '.join(ENTITY_FIELDS)})")
            handler = self.registry.spec(envelope.type).handler
            result, attempts = call_with_retry(lambda: handler(event), self.retry, self.sleep, self.rng)
            _storable_effects(result.effects)
            return ProcessedEvent(
                event_id=envelope.id,
                type=envelope.type,
                schema_version=envelope.schema_version,
                offset=record.offset,
                entity_key=entity[1],
                payload_json=payload_json,
                result_json=_json(result.result),
                effects=result.effects,
                received_at=envelope.received_at,
                attempts=attempts,
                correlation_id=envelope.correlation_id,
                causation_id=envelope.causation_id,
                parent_ids=envelope.parent_ids,
                idempotency_key=envelope.idempotency_key,
                trace_context=envelope.trace_context,
                entity_field=entity[0],
                tenant=envelope.tenant,
            )
        except InvalidEvent as exc:
            return self._dead(record, decoded, DeadLetterKind.INVALID, exc.describe(), 1, consumed_at, tenant)
        except PoisonEvent as exc:
            return self._dead(record, decoded, DeadLetterKind.POISON, str(exc), 1, consumed_at, tenant)
        except RetryExhausted as exc:
            return self._dead(record, decoded, DeadLetterKind.EXHAUSTED, str(exc), exc.attempts, consumed_at, tenant)
        except Exception as exc:  # noqa: BLE001 - a handler bug must not stall the partition: classify and DLQ it
            return self._dead(record, decoded, DeadLetterKind.HANDLER_ERROR, _describe(exc), 1, consumed_at, tenant)

    def _bare(self, record: SourceRecord, kind: DeadLetterKind, reason: str, consumed_at: float) -> DeadLetter:
        return bare_dead_letter(record.offset, kind, reason, record.value, self._received_at(record, consumed_at))

    def _dead(
        self,
        record: SourceRecord,
        decoded: _Decoded | None,
        kind: DeadLetterKind,
        reason: str,
        attempts: int,
        consumed_at: float,
        tenant: str | None = None,
    ) -> DeadLetter:
        if decoded is None:
            return bare_dead_letter(
                record.offset, kind, reason, record.value, self._received_at(record, consumed_at), attempts, tenant
            )
        envelope, payload_json = decoded.envelope, decoded.payload_json
        entity = entity_of(envelope.payload)  # the event may not have validated: read from what the record holds
        return DeadLetter(
            offset=record.offset,
            error_kind=kind,
            reason=clean_reason(reason),
            attempts=attempts,
            payload=record.value,
            received_at=envelope.received_at,
            event_id=envelope.id if payload_json is not None else None,
            type=envelope.type,
            schema_version=envelope.schema_version,
            entity_key=entity[1] if entity is not None else None,
            payload_json=payload_json,
            correlation_id=envelope.correlation_id,
            causation_id=envelope.causation_id,
            parent_ids=envelope.parent_ids,
            idempotency_key=envelope.idempotency_key,
            entity_field=entity[0] if entity is not None else None,
            tenant=envelope.tenant,
        )


def _describe(exc: BaseException) -> str:
    """The kind and text of an exception, as a dead letter's reason (an exception whose text itself raises still has
    a kind)."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 - its __str__ is broken: the kind alone must do
        return type(exc).__name__


def _storable_effects(effects: Sequence[Effect]) -> None:
    """Numbers the read models cannot hold are this event's failure here, not its batch's at the database (orjson
    writes inf and nan as null, which a NOT NULL column refuses; numeric takes NaN but not into a sum)."""
    for effect in effects:
        if isinstance(effect, DeviceReading):
            if not math.isfinite(effect.value):
                raise PoisonEvent(f"reading of {effect.device_id!r} is {effect.value} in {effect.si_unit}: not finite")
        elif isinstance(effect, UserSpend) and not effect.amount.is_finite():
            raise PoisonEvent(f"amount of {effect.user_id!r} is {effect.amount}: not finite")
