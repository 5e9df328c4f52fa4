"""PostgreSQL side of the exactly-once contract: partition leases with epochs, and the one-transaction commit.

Every statement is a constant; values travel only as parameters. It holds no business rules: the batch says what to write.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from decimal import Decimal

import orjson
import psycopg
from psycopg import sql  # noqa: F401  (kept for callers composing identifiers safely)
from psycopg_pool import ConnectionPool

from pipelines.batch import CommitBatch, CommitOutcome
from pipelines.effects import ReadModelDeltas

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    topic: str
    partition: int
    epoch: int
    next_offset: int
    owner_id: str
    reset_from: int | None = None  # set when the broker log changed and offsets started over


class Fenced(Exception):
    """A newer epoch owns the partition: this owner must stop and never commit again."""


_CLAIM_SELECT = """
SELECT epoch, next_offset, log_id FROM partition_checkpoints
 WHERE topic = %(topic)s AND partition = %(partition)s FOR UPDATE
"""
_CLAIM_INSERT = """
INSERT INTO partition_checkpoints (topic, partition, epoch, owner_id, next_offset, log_id)
VALUES (%(topic)s, %(partition)s, 1, %(owner)s, 0, %(log_id)s)
"""
_CLAIM_UPDATE = """
UPDATE partition_checkpoints
   SET epoch = epoch + 1, owner_id = %(owner)s, next_offset = %(next_offset)s, log_id = %(log_id)s, updated_at = now()
 WHERE topic = %(topic)s AND partition = %(partition)s
RETURNING epoch
"""

# Step 1 of every commit: compare-and-set on the partition row. Zero rows means fenced (or a retried commit).
_ADVANCE = """
UPDATE partition_checkpoints SET next_offset = %(next)s, updated_at = now()
 WHERE topic = %(topic)s AND partition = %(partition)s AND epoch = %(epoch)s AND next_offset = %(expected)s
"""
_READ_CHECKPOINT = "SELECT epoch, next_offset FROM partition_checkpoints WHERE topic = %s AND partition = %s"

# Step 2: the dedup gate and the event rows, insert-if-absent on the id. Only ids returned here get effects.
_INSERT_EVENTS = """
WITH incoming AS (
    SELECT * FROM unnest(
        %(ids)s::text[], %(types)s::text[], %(versions)s::int[], %(statuses)s::text[], %(offsets)s::bigint[],
        %(keys)s::text[], %(corr)s::text[], %(caus)s::text[], %(parents)s::text[], %(idem)s::text[],
        %(trace)s::text[], %(payloads)s::text[], %(received)s::float8[], %(attempts)s::int[]
    ) AS t(id, type, schema_version, status, "offset", entity_key, correlation_id, causation_id, parent_ids,
           idempotency_key, trace_context, payload, received_at, attempts)
), gate AS (
    INSERT INTO dedup_keys (event_id, first_seen, expires_at)
    SELECT id, now(), now() + make_interval(hours => %(ttl_hours)s) FROM incoming
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
)
INSERT INTO events (id, type, schema_version, status, topic, partition, "offset", entity_key, correlation_id,
                    causation_id, parent_ids, idempotency_key, trace_context, payload, received_at, consumed_at,
                    attempts)
SELECT i.id, i.type, i.schema_version, i.status, %(topic)s, %(partition)s, i."offset", i.entity_key,
       i.correlation_id, i.causation_id, ARRAY(SELECT jsonb_array_elements_text(i.parent_ids::jsonb)),
       i.idempotency_key, i.trace_context, i.payload::jsonb, to_timestamp(i.received_at),
       to_timestamp(%(consumed)s), i.attempts
  FROM incoming i JOIN gate g ON g.event_id = i.id
ON CONFLICT (id) DO NOTHING
RETURNING id
"""
_INSERT_RESULTS = """
INSERT INTO results (event_id, type, result)
SELECT id, type, result::jsonb FROM unnest(%s::text[], %s::text[], %s::text[]) AS t(id, type, result)
"""
_UPSERT_USER_TOTALS = """
INSERT INTO user_totals AS u (user_id, base_currency, total_amount, tx_count, flagged_count)
SELECT * FROM unnest(%s::text[], %s::text[], %s::numeric[], %s::bigint[], %s::bigint[])
ON CONFLICT (user_id) DO UPDATE
   SET total_amount = u.total_amount + excluded.total_amount, tx_count = u.tx_count + excluded.tx_count,
       flagged_count = u.flagged_count + excluded.flagged_count, updated_at = now()
"""
_UPSERT_DEVICE_STATS = """
INSERT INTO device_stats AS d (device_id, si_unit, reading_count, reading_sum, reading_min, reading_max,
                               out_of_range_count)
SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::float8[], %s::float8[], %s::float8[], %s::bigint[])
ON CONFLICT (device_id, si_unit) DO UPDATE
   SET reading_count = d.reading_count + excluded.reading_count, reading_sum = d.reading_sum + excluded.reading_sum,
       reading_min = LEAST(d.reading_min, excluded.reading_min),
       reading_max = GREATEST(d.reading_max, excluded.reading_max),
       out_of_range_count = d.out_of_range_count + excluded.out_of_range_count, updated_at = now()
"""
_UPSERT_ACTION_COUNTS = """
INSERT INTO user_action_counts AS c (user_id, action, count)
SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[])
ON CONFLICT (user_id, action) DO UPDATE SET count = c.count + excluded.count
"""
_INSERT_AUDIT = """
INSERT INTO audit_log (event_id, from_status, to_status, at, actor, detail)
SELECT id, from_s, to_s, to_timestamp(at), %s, detail::jsonb
  FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[], %s::text[]) AS t(id, from_s, to_s, at, detail)
"""
_INSERT_DEAD_LETTERS = """
INSERT INTO dead_letters (event_id, topic, partition, "offset", error_kind, reason, attempts, payload)
SELECT id, %s, %s, off, kind, reason, attempts, payload
  FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::text[], %s::int[], %s::bytea[])
       AS t(id, off, kind, reason, attempts, payload)
ON CONFLICT (topic, partition, "offset") DO NOTHING
"""
PURGE_DEDUP = "DELETE FROM dedup_keys WHERE expires_at < now()"


class CheckpointStore:
    """Synchronous store used by the leader (leases) and the checkpoint writers (commits)."""

    def __init__(self, database_url: str, pool_size: int = 4, dedup_ttl_hours: int = 24) -> None:
        self._pool = ConnectionPool(
            database_url, min_size=1, max_size=pool_size, open=True, kwargs={"autocommit": False}
        )
        self._ttl_hours = dedup_ttl_hours

    def close(self) -> None:
        self._pool.close()

    # -- leases ----------------------------------------------------------------------------------
    def claim(self, topic: str, partition: int, owner_id: str, log_id: str) -> Lease:
        """Bump the partition's epoch for a new owner; any older owner is fenced from now on."""
        params = {"topic": topic, "partition": partition, "owner": owner_id, "log_id": log_id}
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute(_CLAIM_SELECT, params).fetchone()
            if row is None:
                try:
                    with conn.transaction():
                        conn.execute(_CLAIM_INSERT, params)
                    return Lease(topic, partition, 1, 0, owner_id)
                except psycopg.errors.UniqueViolation:
                    row = conn.execute(_CLAIM_SELECT, params).fetchone()
                    assert row is not None
            _epoch, next_offset, old_log = row
            reset_from = None
            if old_log is not None and old_log != log_id and next_offset > 0:
                # The broker's log was replaced (the embedded memory broker restarted): its offsets start over.
                log.warning("broker log changed for %s[%d] (%s -> %s): offsets restart at 0 from %d",
                            topic, partition, old_log, log_id, next_offset)
                reset_from, next_offset = next_offset, 0
            new = conn.execute(_CLAIM_UPDATE, {**params, "next_offset": next_offset}).fetchone()
            assert new is not None
            return Lease(topic, partition, int(new[0]), int(next_offset), owner_id, reset_from)

    def checkpoint(self, topic: str, partition: int) -> tuple[int, int] | None:
        with self._pool.connection() as conn:
            row = conn.execute(_READ_CHECKPOINT, (topic, partition)).fetchone()
            conn.rollback()
        return (int(row[0]), int(row[1])) if row else None

    # -- the commit ------------------------------------------------------------------------------
    def commit(self, batch: CommitBatch) -> CommitOutcome:
        """Write the batch's effects and advance the offset in ONE transaction, fenced by epoch and offset."""
        started = time.perf_counter()
        with self._pool.connection() as conn:
            try:
                with conn.transaction():
                    advanced = conn.execute(
                        _ADVANCE,
                        {
                            "next": batch.next_offset,
                            "topic": batch.topic,
                            "partition": batch.partition,
                            "epoch": batch.epoch,
                            "expected": batch.expected_offset,
                        },
                    ).rowcount
                    if advanced != 1:
                        raise _NotAdvanced()
                    outcome = self._write_effects(conn, batch)
            except _NotAdvanced:
                return self._explain_not_advanced(conn, batch, started)
        return CommitOutcome(
            committed=True,
            new_events=outcome[0],
            duplicates=outcome[1],
            dead_letters=len(batch.dead),
            duration_s=time.perf_counter() - started,
        )

    def _explain_not_advanced(self, conn: psycopg.Connection, batch: CommitBatch, started: float) -> CommitOutcome:
        row = conn.execute(_READ_CHECKPOINT, (batch.topic, batch.partition)).fetchone()
        conn.rollback()
        epoch, next_offset = (int(row[0]), int(row[1])) if row else (None, None)
        if epoch == batch.epoch and next_offset == batch.next_offset:
            # Our earlier attempt committed but its acknowledgement was lost: nothing to redo.
            return CommitOutcome(committed=True, already_committed=True, current_epoch=epoch,
                                 duration_s=time.perf_counter() - started)
        return CommitOutcome(committed=False, fenced=True, current_epoch=epoch,
                             duration_s=time.perf_counter() - started)

    def _write_effects(self, conn: psycopg.Connection, batch: CommitBatch) -> tuple[int, int]:
        rows = sorted(
            [("processed", p) for p in batch.processed]
            + [("dead_lettered", d) for d in batch.dead if d.event_id is not None],
            key=lambda r: r[1].event_id or "",
        )
        new_ids: set[str] = set()
        if rows:
            cur = conn.execute(
                _INSERT_EVENTS,
                {
                    "ids": [r[1].event_id for r in rows],
                    "types": [r[1].type for r in rows],
                    "versions": [r[1].schema_version for r in rows],
                    "statuses": [r[0] for r in rows],
                    "offsets": [r[1].offset for r in rows],
                    "keys": [r[1].entity_key for r in rows],
                    "corr": [r[1].correlation_id for r in rows],
                    "caus": [r[1].causation_id for r in rows],
                    "parents": [orjson.dumps(list(r[1].parent_ids)).decode() for r in rows],
                    "idem": [r[1].idempotency_key for r in rows],
                    "trace": [getattr(r[1], "trace_context", None) for r in rows],
                    "payloads": [r[1].payload_json for r in rows],
                    "received": [r[1].received_at for r in rows],
                    "attempts": [r[1].attempts for r in rows],
                    "ttl_hours": self._ttl_hours,
                    "topic": batch.topic,
                    "partition": batch.partition,
                    "consumed": batch.consumed_at,
                },
            )
            new_ids = {r[0] for r in cur.fetchall()}
        fresh = [p for p in batch.processed if p.event_id in new_ids]
        if fresh:
            conn.execute(
                _INSERT_RESULTS, ([p.event_id for p in fresh], [p.type for p in fresh], [p.result_json for p in fresh])
            )
            self._apply_read_models(conn, ReadModelDeltas.of(e for p in fresh for e in p.effects))
        self._write_dead_letters(conn, batch)
        self._write_audit(conn, batch, new_ids)
        duplicates = len(rows) - len(new_ids) + len(batch.in_batch_duplicates)
        return len(new_ids), duplicates

    @staticmethod
    def _apply_read_models(conn: psycopg.Connection, deltas: ReadModelDeltas) -> None:
        if deltas.user_spend:
            keys, values = zip(*deltas.user_spend.items())
            conn.execute(
                _UPSERT_USER_TOTALS,
                ([k[0] for k in keys], [k[1] for k in keys], [Decimal(v[0]) for v in values],
                 [v[1] for v in values], [v[2] for v in values]),
            )
        if deltas.device_stats:
            keys, aggs = zip(*deltas.device_stats.items())
            conn.execute(
                _UPSERT_DEVICE_STATS,
                ([k[0] for k in keys], [k[1] for k in keys], [a.count for a in aggs], [a.total for a in aggs],
                 [a.minimum for a in aggs], [a.maximum for a in aggs], [a.out_of_range for a in aggs]),
            )
        if deltas.action_counts:
            keys, counts = zip(*deltas.action_counts.items())
            conn.execute(_UPSERT_ACTION_COUNTS, ([k[0] for k in keys], [k[1] for k in keys], list(counts)))

    @staticmethod
    def _write_dead_letters(conn: psycopg.Connection, batch: CommitBatch) -> None:
        if not batch.dead:
            return
        d = batch.dead
        conn.execute(
            _INSERT_DEAD_LETTERS,
            (batch.topic, batch.partition, [x.event_id for x in d], [x.offset for x in d],
             [x.error_kind for x in d], [x.reason for x in d], [x.attempts for x in d], [x.payload for x in d]),
        )

    @staticmethod
    def _write_audit(conn: psycopg.Connection, batch: CommitBatch, new_ids: set[str]) -> None:
        """accepted -> consumed -> processed|dead_lettered for each new event; a note for each duplicate."""
        now = time.time()
        ids: list[str] = []
        froms: list[str | None] = []
        tos: list[str] = []
        ats: list[float] = []
        details: list[str] = []
        where = {"topic": batch.topic, "partition": batch.partition}

        def add(event_id: str, frm: str | None, to: str, at: float, detail: dict[str, object]) -> None:
            ids.append(event_id)
            froms.append(frm)
            tos.append(to)
            ats.append(at)
            details.append(orjson.dumps(detail).decode())

        for p in batch.processed:
            if p.event_id in new_ids:
                add(p.event_id, None, "accepted", p.received_at, {})
                add(p.event_id, "accepted", "consumed", batch.consumed_at, {**where, "offset": p.offset})
                add(p.event_id, "consumed", "processed", now, {"epoch": batch.epoch, "attempts": p.attempts})
            else:
                add(p.event_id, None, "duplicate_ignored", now, {**where, "offset": p.offset})
        for x in batch.dead:
            if x.event_id is None:
                continue
            if x.event_id in new_ids:
                add(x.event_id, None, "accepted", x.received_at, {})
                add(x.event_id, "accepted", "consumed", batch.consumed_at, {**where, "offset": x.offset})
                add(x.event_id, "consumed", "dead_lettered", now, {"kind": x.error_kind, "reason": x.reason})
            else:
                add(x.event_id, None, "duplicate_ignored", now, {**where, "offset": x.offset})
        for event_id, offset in batch.in_batch_duplicates:
            add(event_id, None, "duplicate_ignored", now, {**where, "offset": offset})
        if ids:
            conn.execute(_INSERT_AUDIT, (batch.owner_id, ids, froms, tos, ats, details))

    def purge_dedup(self) -> int:
        with self._pool.connection() as conn, conn.transaction():
            return conn.execute(PURGE_DEDUP).rowcount


class _NotAdvanced(Exception):
    pass
