"""The values that flow from a partition owner to the checkpoint writer: one CommitBatch per transaction.

Plain frozen dataclasses that pickle cheaply across processes, and the pure functions that build them from each
other (a batch from record outcomes, a dead letter from an event); no I/O and no decisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from pipelines.access import DEFAULT_TENANT
from pipelines.effects import Effect
from pipelines.errors import DeadLetterKind
from pipelines.outcome import Outcome


@dataclass(slots=True)  # not frozen: built per record by the consumer, never changed (see ProcessedEvent)
class SourceRecord:
    """A record as read from the log, before any decoding."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None
    # Kafka record headers (W3C traceparent among them); the engine does not read them.
    headers: tuple[tuple[str, bytes | None], ...] | None = None


# The outcomes of records are built once per record on the owner's hot path and never changed afterwards; they are not
# frozen because a frozen dataclass's __init__ costs three times as much (one object.__setattr__ per field).
@dataclass(slots=True)
class ProcessedEvent:
    outcome: ClassVar[Outcome] = Outcome.PROCESSED

    event_id: str
    type: str
    schema_version: int
    offset: int
    entity_key: str
    payload_json: str
    result_json: str
    effects: tuple[Effect, ...]
    received_at: float
    attempts: int = 1
    correlation_id: str | None = None
    causation_id: str | None = None
    parent_ids: tuple[str, ...] = ()
    idempotency_key: str | None = None
    trace_context: str | None = None
    entity_field: str | None = None  # the event field `entity_key` was read from (pipelines.entity)
    tenant: str = DEFAULT_TENANT  # an event's identity is (tenant, event_id)


@dataclass(slots=True)
class DeadLetter:
    """A record that will not be processed, with the reason; event fields are set when the id was known."""

    outcome: ClassVar[Outcome] = Outcome.DEAD_LETTERED

    offset: int
    error_kind: DeadLetterKind
    reason: str
    attempts: int
    payload: bytes | None
    received_at: float
    event_id: str | None = None
    type: str | None = None
    schema_version: int | None = None
    entity_key: str | None = None
    payload_json: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    parent_ids: tuple[str, ...] = ()
    idempotency_key: str | None = None
    entity_field: str | None = None
    tenant: str | None = None  # None only when the record names no tenant we know (raw bytes, unknown header)


@dataclass(slots=True)
class InBatchDuplicate:
    """A record whose event id an earlier record of the same batch already carries: audited, not stored again."""

    outcome: ClassVar[Outcome] = Outcome.DUPLICATE

    event_id: str
    offset: int
    tenant: str = DEFAULT_TENANT


# What one record of a batch became: exactly one of these per record, in offset order.
RecordOutcome = ProcessedEvent | DeadLetter | InBatchDuplicate


@dataclass(frozen=True)
class CommitBatch:
    """Everything one transaction writes for one partition, fenced by (epoch, expected_offset)."""

    topic: str
    partition: int
    epoch: int
    owner_id: str
    expected_offset: int  # the checkpoint this batch continues from
    next_offset: int  # the checkpoint after this batch
    consumed_at: float
    processed: tuple[ProcessedEvent, ...] = ()
    dead: tuple[DeadLetter, ...] = ()
    in_batch_duplicates: tuple[tuple[str, int, str], ...] = field(default=())  # (event id, offset, tenant) seen twice
    skipped: tuple[int, int] | None = None  # [from, to) offsets that stayed absent past the gap grace period

    @property
    def size(self) -> int:
        return self.next_offset - self.expected_offset


@dataclass(frozen=True)
class CommitOutcome:
    """What the writer did: how many events were new, how many were duplicates, or that we were fenced."""

    committed: bool
    fenced: bool = False
    already_committed: bool = False
    new_events: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    current_epoch: int | None = None
    duration_s: float = 0.0
    # (tenant, event id) of the events the store already knew (not counting in-batch duplicates)
    duplicate_ids: tuple[tuple[str, str], ...] = ()
    # Set when PostgreSQL refused the batch for a data reason (SQLSTATE class 22, 23 or 54): the database's reason.
    # Nothing was written; the same batch would be refused again, so the owner must split it, never retry it as is.
    rejected: str | None = None


def assemble(
    outcomes: Sequence[RecordOutcome],
    *,
    topic: str,
    partition: int,
    epoch: int,
    owner_id: str,
    expected_offset: int,
    next_offset: int,
    consumed_at: float,
    skipped: tuple[int, int] | None = None,
) -> CommitBatch:
    """The CommitBatch of a contiguous run of record outcomes, covering offsets [expected_offset, next_offset)."""
    processed: list[ProcessedEvent] = []
    dead: list[DeadLetter] = []
    duplicates: list[tuple[str, int, str]] = []
    for outcome in outcomes:
        if isinstance(outcome, ProcessedEvent):
            processed.append(outcome)
        elif isinstance(outcome, DeadLetter):
            dead.append(outcome)
        else:
            duplicates.append((outcome.event_id, outcome.offset, outcome.tenant))
    return CommitBatch(
        topic=topic,
        partition=partition,
        epoch=epoch,
        owner_id=owner_id,
        expected_offset=expected_offset,
        next_offset=next_offset,
        consumed_at=consumed_at,
        processed=tuple(processed),
        dead=tuple(dead),
        in_batch_duplicates=tuple(duplicates),
        skipped=skipped,
    )


def dead_instead(event: ProcessedEvent, kind: DeadLetterKind, reason: str, payload: bytes | None) -> DeadLetter:
    """A processed event turned into a dead letter that keeps its identity (its event row is stored as dead)."""
    return DeadLetter(
        offset=event.offset,
        error_kind=kind,
        reason=clean_reason(reason),
        attempts=event.attempts,
        payload=payload,
        received_at=event.received_at,
        event_id=event.event_id,
        type=event.type,
        schema_version=event.schema_version,
        entity_key=event.entity_key,
        payload_json=event.payload_json,
        correlation_id=event.correlation_id,
        causation_id=event.causation_id,
        parent_ids=event.parent_ids,
        idempotency_key=event.idempotency_key,
        entity_field=event.entity_field,
        tenant=event.tenant,
    )


def bare_dead_letter(
    offset: int,
    kind: DeadLetterKind,
    reason: str,
    payload: bytes | None,
    received_at: float,
    attempts: int = 1,
    tenant: str | None = None,
) -> DeadLetter:
    """The smallest dead letter of a record: position, reason and raw bytes, no event row. Building it cannot fail
    for any input, so it is the last resort when everything richer about a record raised or was refused."""
    return DeadLetter(
        offset=offset,
        error_kind=kind,
        reason=clean_reason(reason),
        attempts=attempts,
        payload=payload,
        received_at=received_at,
        tenant=tenant,
    )


def clean_reason(reason: str) -> str:
    """A reason as stored: no NUL (PostgreSQL text cannot hold it), at most 2000 characters."""
    text = reason.replace("\x00", "\\0")[:2000]
    # A lone surrogate (from an exception's text) would make the commit document unencodable: keep it escaped.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
