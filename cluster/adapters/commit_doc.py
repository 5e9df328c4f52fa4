"""Encodes a CommitBatch as one JSON document that a single SQL statement unpacks with jsonb_to_recordset.

Encoding happens in the partition owner (spread over many processes); the writer only ships bytes to PostgreSQL.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, replace

import orjson

from pipelines.batch import CommitBatch, DeadLetter, ProcessedEvent
from pipelines.effects import ActionCount, DeviceReading, UserSpend
from pipelines.jsontext import has_nul


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
) -> dict[str, object]:
    return {
        "id": e.event_id,
        "type": e.type,
        "v": e.schema_version,
        "status": status,
        "off": e.offset,
        "key": e.entity_key,
        "corr": e.correlation_id,
        "caus": e.causation_id,
        "parents": list(e.parent_ids),
        "idem": e.idempotency_key,
        "trace": trace or getattr(e, "trace_context", None),
        "payload": orjson.Fragment(e.payload_json or "null"),
        "recv": e.received_at,
        "att": e.attempts,
        "result": orjson.Fragment(result) if result is not None else None,
        "dk": kind,
        "dr": reason,
    }


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
    events: list[dict[str, object]] = []
    spend: list[dict[str, object]] = []
    readings: list[dict[str, object]] = []
    actions: list[dict[str, object]] = []
    for p in batch.processed:
        events.append(_event_row("processed", p, p.result_json.encode(), None, None, traces.get(p.offset)))
        for effect in p.effects:
            if isinstance(effect, UserSpend):
                spend.append(
                    {
                        "e": p.event_id,
                        "u": effect.user_id,
                        "c": effect.base_currency,
                        "a": str(effect.amount),
                        "f": int(effect.flagged),
                    }
                )
            elif isinstance(effect, DeviceReading):
                readings.append(
                    {
                        "e": p.event_id,
                        "d": effect.device_id,
                        "u": effect.si_unit,
                        "v": effect.value,
                        "o": int(effect.out_of_range),
                    }
                )
            elif isinstance(effect, ActionCount):
                actions.append({"e": p.event_id, "u": effect.user_id, "a": effect.action})
    dead: list[dict[str, object]] = []
    for d in batch.dead:
        if d.event_id is not None:
            events.append(_event_row("dead_lettered", d, None, d.error_kind, d.reason, traces.get(d.offset)))
        dead.append(
            {
                "e": d.event_id,
                "off": d.offset,
                "k": d.error_kind,
                "r": d.reason,
                "att": d.attempts,
                "p": base64.b64encode(d.payload).decode() if d.payload is not None else None,
            }
        )
    events.sort(key=lambda row: str(row["id"]))  # one lock order for dedup keys across concurrent commits
    doc = orjson.dumps(
        {
            "events": events,
            "spend": spend,
            "readings": readings,
            "actions": actions,
            "dead": dead,
            "dups": [{"e": e, "off": off} for e, off in batch.in_batch_duplicates],
            "gaps": [{"from": batch.skipped[0], "to": batch.skipped[1]}] if batch.skipped else [],
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
