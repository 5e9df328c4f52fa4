"""Encodes a CommitBatch as one JSON document that a single SQL statement unpacks; the document's schema is here.

Each list of the document holds rows as JSON arrays, positional: PostgreSQL parses an array several times faster
than an object with the same values (no keys to read, sort and look up). The positions are declared once, in the
RowSchema constants below, which both the encoder and the commit statement's SELECT lists come from. Encoding happens
in the partition owner (spread over many processes); the writer only ships bytes to PostgreSQL.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from pipelines.batch import CommitBatch, DeadLetter, ProcessedEvent
from pipelines.effects import ActionCount, DeviceReading, UserSpend
from pipelines.jsontext import has_nul
from pipelines.outcome import Outcome


@dataclass(frozen=True)
class RowSchema:
    """The columns of one list of the document, in their positions: (name, SQL type) each."""

    columns: tuple[tuple[str, str], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)

    def select(self, row: str) -> str:
        """The SQL select list reading a row (a jsonb array named `row`) into its named, typed columns. A JSON null
        is an SQL NULL in every column, jsonb ones included."""
        parts = []
        for n, (name, sql_type) in enumerate(self.columns):
            if sql_type == "jsonb":
                parts.append(f"nullif({row} -> {n}, 'null') AS {name}")
            elif sql_type == "text":
                parts.append(f"{row} ->> {n} AS {name}")
            else:
                parts.append(f"({row} ->> {n})::{sql_type} AS {name}")
        return ", ".join(parts)

    def as_dicts(self, rows: list[list[Any]]) -> list[dict[str, Any]]:
        """Decoded rows by name (for tests and debugging; the hot path never builds them)."""
        return [dict(zip(self.names, row, strict=True)) for row in rows]


# The document: {"events": [EVENT rows], "spend": [SPEND rows], ..., "gaps": [GAP rows]}. `e` is an event id and `t`
# (`ten` in EVENT) its tenant: an event's identity is the pair, in every list and every join of the statement.
EVENT = RowSchema(
    (
        ("ten", "text"),
        ("id", "text"),
        ("type", "text"),
        ("v", "int"),
        ("status", "text"),
        ("off", "bigint"),
        ("key", "text"),
        ("corr", "text"),
        ("caus", "text"),
        ("parents", "jsonb"),
        ("idem", "text"),
        ("trace", "text"),
        ("payload", "jsonb"),
        ("recv", "float8"),
        ("att", "int"),
        ("result", "jsonb"),
        ("dk", "text"),  # dead-letter kind and reason, for an event stored as dead_lettered
        ("dr", "text"),
    )
)
SPEND = RowSchema((("t", "text"), ("e", "text"), ("u", "text"), ("c", "text"), ("a", "numeric"), ("f", "int")))
READING = RowSchema((("t", "text"), ("e", "text"), ("d", "text"), ("u", "text"), ("v", "float8"), ("o", "int")))
ACTION = RowSchema((("t", "text"), ("e", "text"), ("u", "text"), ("a", "text")))
DEAD = RowSchema(
    (("t", "text"), ("e", "text"), ("off", "bigint"), ("k", "text"), ("r", "text"), ("att", "int"), ("p", "text"))
)
DUP = RowSchema((("t", "text"), ("e", "text"), ("off", "bigint")))
GAP = RowSchema((("from_off", "bigint"), ("to_off", "bigint")))
DOCUMENT: dict[str, RowSchema] = {
    "events": EVENT,
    "spend": SPEND,
    "readings": READING,
    "actions": ACTION,
    "dead": DEAD,
    "dups": DUP,
    "gaps": GAP,
}


def decode(doc: bytes) -> dict[str, list[dict[str, Any]]]:
    """The document with every row as a dict by column name (for tests and debugging)."""
    lists = orjson.loads(doc)
    return {key: schema.as_dicts(lists[key]) for key, schema in DOCUMENT.items()}


@dataclass(frozen=True)
class EncodedBatch:
    """The fencing header in plain fields, the effects as one JSON document."""

    topic: str
    partition: int
    epoch: int
    owner_id: str
    expected_offset: int
    next_offset: int
    consumed_at: float
    doc: bytes
    dead_letters: int
    in_batch_duplicates: int


def _event_row(
    status: str,
    e: ProcessedEvent | DeadLetter,
    result: bytes | None,
    kind: str | None,
    reason: str | None,
    trace: str | None,
) -> list[object]:
    # In EVENT's order.
    return [
        e.tenant,
        e.event_id,
        e.type,
        e.schema_version,
        status,
        e.offset,
        e.entity_key,
        e.correlation_id,
        e.causation_id,
        list(e.parent_ids),
        e.idempotency_key,
        trace or getattr(e, "trace_context", None),
        orjson.Fragment(e.payload_json or "null"),
        e.received_at,
        e.attempts,
        orjson.Fragment(result) if result is not None else None,
        kind,
        reason,
    ]


class UnencodableEvent(ValueError):
    """One record's rows cannot be written as JSON (a lone surrogate, an integer beyond 64 bits, ...): that record
    must be dead-lettered on its own; the rest of its batch encodes."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"record at offset {offset} cannot be encoded: {reason}")
        self.offset = offset
        self.reason = reason


def encode(batch: CommitBatch, trace_contexts: Mapping[int, str] | None = None) -> EncodedBatch:
    """`trace_contexts` (offset -> W3C traceparent of the event's processing span) is stored with each event.

    Raises UnencodableEvent naming the first record whose rows cannot be encoded; the batch is encoded in one go and
    only a failure pays for looking at each record alone.
    """
    try:
        return _encode(batch, trace_contexts)
    except Exception as exc:
        culprit = _first_unencodable(batch, trace_contexts)
        if culprit is None:
            raise
        raise culprit from exc


def _first_unencodable(batch: CommitBatch, trace_contexts: Mapping[int, str] | None) -> UnencodableEvent | None:
    alone = [replace(batch, processed=(p,), dead=(), in_batch_duplicates=()) for p in batch.processed]
    alone += [replace(batch, processed=(), dead=(d,), in_batch_duplicates=()) for d in batch.dead]
    alone += [replace(batch, processed=(), dead=(), in_batch_duplicates=(x,)) for x in batch.in_batch_duplicates]
    for one in sorted(alone, key=_offset_of):
        try:
            _encode(replace(one, skipped=None), trace_contexts)
        except Exception as exc:  # noqa: BLE001 - this record is the one: named, so its owner dead-letters it
            return UnencodableEvent(_offset_of(one), f"{type(exc).__name__}: {exc}")
    return None


def _offset_of(one: CommitBatch) -> int:
    if one.processed:
        return one.processed[0].offset
    if one.dead:
        return one.dead[0].offset
    return one.in_batch_duplicates[0][1]


def _encode(batch: CommitBatch, trace_contexts: Mapping[int, str] | None) -> EncodedBatch:
    traces = trace_contexts or {}
    events: list[list[object]] = []
    spend: list[list[object]] = []
    readings: list[list[object]] = []
    actions: list[list[object]] = []
    for p in batch.processed:
        t = p.tenant
        events.append(_event_row(Outcome.PROCESSED, p, p.result_json.encode(), None, None, traces.get(p.offset)))
        for effect in p.effects:  # rows in SPEND's, READING's and ACTION's order
            if isinstance(effect, UserSpend):
                spend.append(
                    [t, p.event_id, effect.user_id, effect.base_currency, str(effect.amount), int(effect.flagged)]
                )
            elif isinstance(effect, DeviceReading):
                readings.append(
                    [t, p.event_id, effect.device_id, effect.si_unit, effect.value, int(effect.out_of_range)]
                )
            elif isinstance(effect, ActionCount):
                actions.append([t, p.event_id, effect.user_id, effect.action])
    dead: list[list[object]] = []
    for d in batch.dead:
        if d.event_id is not None:
            events.append(_event_row(Outcome.DEAD_LETTERED, d, None, d.error_kind, d.reason, traces.get(d.offset)))
        payload = base64.b64encode(d.payload).decode() if d.payload is not None else None
        dead.append([d.tenant, d.event_id, d.offset, d.error_kind, d.reason, d.attempts, payload])  # DEAD's order
    # By (tenant, id): one lock order for dedup keys across concurrent commits, the gate's ORDER BY.
    events.sort(key=lambda row: (str(row[0]), str(row[1])))
    doc = orjson.dumps(
        {
            "events": events,
            "spend": spend,
            "readings": readings,
            "actions": actions,
            "dead": dead,
            "dups": [[t, e, off] for e, off, t in batch.in_batch_duplicates],
            "gaps": [list(batch.skipped)] if batch.skipped else [],
        }
    )
    if has_nul(doc):
        # The engine rejects NUL in everything it stores; one that slipped through names its record (encode() looks
        # at each alone), which is dead-lettered on its own. Stored text is never rewritten.
        raise ValueError("a NUL character (\\u0000), which PostgreSQL cannot store")
    return EncodedBatch(
        batch.topic,
        batch.partition,
        batch.epoch,
        batch.owner_id,
        batch.expected_offset,
        batch.next_offset,
        batch.consumed_at,
        doc,
        len(batch.dead),
        len(batch.in_batch_duplicates),
    )
