"""The values that flow from a partition owner to the checkpoint writer: one CommitBatch per transaction.

Plain frozen dataclasses that pickle cheaply across processes; no behaviour beyond derived views.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.effects import Effect
from pipelines.errors import DeadLetterKind


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class ProcessedEvent:
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


@dataclass(frozen=True)
class DeadLetter:
    """A record that will not be processed, with the reason; event fields are set when the id was known."""

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
    in_batch_duplicates: tuple[tuple[str, int], ...] = field(default=())  # (event id, offset) seen twice
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
    duplicate_ids: tuple[str, ...] = ()  # ids the store already knew (not counting in-batch duplicates)
