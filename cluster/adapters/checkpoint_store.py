"""PostgreSQL side of the exactly-once contract: partition leases with epochs, and the one-transaction commit.

Every statement is a constant; values travel only as parameters. It holds no business rules: the batch says
what to write.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from cluster.adapters.commit_doc import DOCUMENT, EncodedBatch, encode
from cluster.adapters.leases import LeaderLease, verify_held
from pipelines.batch import CommitBatch, CommitOutcome
from pipelines.outcome import AUDIT_DUPLICATE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    topic: str
    partition: int
    epoch: int
    next_offset: int
    owner_id: str
    reset_from: int | None = None  # set when the broker log changed and offsets started over


# SQLSTATE classes in which PostgreSQL refuses what a statement carries, not the connection: 22 data exception
# (numeric overflow, invalid text, NUL), 23 integrity constraint violation (NOT NULL, CHECK, unique, foreign key),
# 54 program limit exceeded (an index row too large, too many columns). The same batch would be refused again.
DATA_ERROR_CLASSES = frozenset({"22", "23", "54"})


def is_data_error(exc: BaseException) -> bool:
    """True when PostgreSQL refused the statement for what the data holds: never retry that batch as it is.

    psycopg's own DataError without a SQLSTATE (a parameter it cannot send, e.g. a NUL character) counts too."""
    if not isinstance(exc, psycopg.Error):
        return False
    if exc.sqlstate is None:
        return isinstance(exc, psycopg.DataError | psycopg.IntegrityError)
    return exc.sqlstate[:2] in DATA_ERROR_CLASSES


def rejection_reason(exc: BaseException) -> str | None:
    """The database's reason for a data error (`<SQLSTATE> <message>`, with the constraint named), else None."""
    if not is_data_error(exc) or not isinstance(exc, psycopg.Error):
        return None
    diag = exc.diag
    message = diag.message_primary or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if diag.constraint_name and diag.constraint_name not in message:
        message = f"{message} (constraint {diag.constraint_name})"
    return f"{exc.sqlstate} {message}" if exc.sqlstate else message


def is_unavailable(exc: BaseException) -> bool:
    """True when the error says PostgreSQL is unreachable or refusing work (it counts against the "postgres"
    breaker); False when the database answered, e.g. a deadlock to retry or a statement it rejected. psycopg maps
    class 54 (a data limit) to OperationalError: it is checked first, so a refused row never opens the breaker."""
    if is_data_error(exc):
        return False
    if isinstance(exc, psycopg.errors.TransactionRollback):  # deadlock, serialization failure: it is up
        return False
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | PoolTimeout)


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

_READ_CHECKPOINT = "SELECT epoch, next_offset FROM partition_checkpoints WHERE topic = %s AND partition = %s"


def _rows(key: str) -> str:
    """A subquery reading the document's list `key` into the named, typed columns of its RowSchema."""
    return f"(SELECT {DOCUMENT[key].select('r')} FROM jsonb_array_elements(doc.d -> '{key}') AS r)"


# The whole commit in ONE statement, assembled once at import from constants (no value is ever part of it):
# (1) compare-and-set on the partition row; only if it advanced: (2) dedup gate and event rows, insert-if-absent on
# (tenant, id); (3) results and read models (per tenant) for the new events only; (4) audit rows, one per record with
# an id; (5) dead letters; (6) offsets skipped as holes. Zero rows advanced means fenced, or a retry of a commit that
# already landed. An event's identity is (tenant, id) in every join: two tenants may both send id "order-1".
_COMMIT = f"""
WITH doc AS (SELECT %(doc)s::jsonb AS d),
advanced AS (
    UPDATE partition_checkpoints SET next_offset = %(next)s, updated_at = now()
     WHERE topic = %(topic)s AND partition = %(partition)s AND epoch = %(epoch)s AND next_offset = %(expected)s
    RETURNING 1 AS ok
),
incoming AS (
    SELECT e.* FROM doc CROSS JOIN LATERAL {_rows("events")} AS e WHERE EXISTS (SELECT 1 FROM advanced)
),
gate AS (
    INSERT INTO dedup_keys (tenant, event_id, first_seen, expires_at)
    SELECT ten, id, now(), now() + make_interval(hours => %(ttl_hours)s) FROM incoming ORDER BY ten, id
    ON CONFLICT (tenant, event_id) DO NOTHING
    RETURNING tenant, event_id
),
fresh AS (
    INSERT INTO events (tenant, id, type, schema_version, status, topic, partition, "offset", entity_key,
                        correlation_id, causation_id, parent_ids, idempotency_key, trace_context, payload, received_at,
                        consumed_at, attempts)
    SELECT i.ten, i.id, i.type, i.v, i.status, %(topic)s, %(partition)s, i.off, i.key, i.corr, i.caus,
           CASE WHEN i.parents = '[]' THEN '{{}}'::text[] ELSE ARRAY(SELECT jsonb_array_elements_text(i.parents)) END,
           i.idem, i.trace, i.payload, to_timestamp(i.recv), to_timestamp(%(consumed)s), i.att
      FROM incoming i JOIN gate g ON g.tenant = i.ten AND g.event_id = i.id
    ON CONFLICT (tenant, id) DO NOTHING  -- no ORDER BY: the gate took the keys' locks in order; only its winners come
    RETURNING tenant, id, status
),
new_results AS (
    INSERT INTO results (tenant, event_id, type, result)
    SELECT i.ten, i.id, i.type, i.result FROM incoming i JOIN fresh f ON f.tenant = i.ten AND f.id = i.id
     WHERE f.status = 'processed'
    RETURNING 1
),
spend AS (
    INSERT INTO user_totals AS t (tenant, user_id, base_currency, total_amount, tx_count, flagged_count)
    SELECT s.t, s.u, min(s.c), sum(s.a), count(*), sum(s.f)
      FROM doc CROSS JOIN LATERAL {_rows("spend")} AS s
      JOIN fresh ON fresh.tenant = s.t AND fresh.id = s.e
     GROUP BY s.t, s.u ORDER BY s.t, s.u
    ON CONFLICT (tenant, user_id) DO UPDATE
       SET total_amount = t.total_amount + excluded.total_amount, tx_count = t.tx_count + excluded.tx_count,
           flagged_count = t.flagged_count + excluded.flagged_count, updated_at = now()
    RETURNING 1
),
readings AS (
    INSERT INTO device_stats AS t (tenant, device_id, si_unit, reading_count, reading_sum, reading_min, reading_max,
                                   out_of_range_count)
    SELECT r.t, r.d, r.u, count(*), sum(r.v), min(r.v), max(r.v), sum(r.o)
      FROM doc CROSS JOIN LATERAL {_rows("readings")} AS r
      JOIN fresh ON fresh.tenant = r.t AND fresh.id = r.e
     GROUP BY r.t, r.d, r.u ORDER BY r.t, r.d, r.u
    ON CONFLICT (tenant, device_id, si_unit) DO UPDATE
       SET reading_count = t.reading_count + excluded.reading_count,
           reading_sum = t.reading_sum + excluded.reading_sum,
           reading_min = LEAST(t.reading_min, excluded.reading_min),
           reading_max = GREATEST(t.reading_max, excluded.reading_max),
           out_of_range_count = t.out_of_range_count + excluded.out_of_range_count, updated_at = now()
    RETURNING 1
),
actions AS (
    INSERT INTO user_action_counts AS t (tenant, user_id, action, count)
    SELECT a.t, a.u, a.a, count(*)
      FROM doc CROSS JOIN LATERAL {_rows("actions")} AS a
      JOIN fresh ON fresh.tenant = a.t AND fresh.id = a.e
     GROUP BY a.t, a.u, a.a ORDER BY a.t, a.u, a.a
    ON CONFLICT (tenant, user_id, action) DO UPDATE SET count = t.count + excluded.count
    RETURNING 1
),
audit AS (
    -- One row per record with an id (ADR 0012): its whole trail in this commit; the audit_log view expands it.
    INSERT INTO audit_trail (tenant, event_id, outcome, actor, epoch, topic, partition, "offset", accepted_at,
                             consumed_at, attempts, dead_kind, dead_reason)
    SELECT i.ten, i.id, coalesce(f.status, '{AUDIT_DUPLICATE}'), %(owner)s, %(epoch)s, %(topic)s, %(partition)s,
           i.off,
           CASE WHEN f.id IS NOT NULL THEN to_timestamp(i.recv) END, to_timestamp(%(consumed)s),
           CASE WHEN f.id IS NOT NULL THEN i.att END, CASE WHEN f.id IS NOT NULL THEN i.dk END,
           CASE WHEN f.id IS NOT NULL THEN i.dr END
      FROM incoming i LEFT JOIN fresh f ON f.tenant = i.ten AND f.id = i.id
    UNION ALL
    SELECT x.t, x.e, '{AUDIT_DUPLICATE}', %(owner)s, %(epoch)s, %(topic)s, %(partition)s, x.off, NULL,
           to_timestamp(%(consumed)s), NULL, NULL, NULL
      FROM doc CROSS JOIN LATERAL {_rows("dups")} AS x
     WHERE EXISTS (SELECT 1 FROM advanced)
    RETURNING 1
),
dead AS (
    INSERT INTO dead_letters (tenant, event_id, topic, partition, "offset", error_kind, reason, attempts, payload)
    SELECT x.t, x.e, %(topic)s, %(partition)s, x.off, x.k, x.r, x.att, decode(x.p, 'base64')
      FROM doc CROSS JOIN LATERAL {_rows("dead")} AS x
     WHERE EXISTS (SELECT 1 FROM advanced)
    ON CONFLICT (topic, partition, "offset") DO NOTHING
    RETURNING 1
),
gaps AS (
    INSERT INTO offset_gaps (topic, partition, from_offset, to_offset, epoch, owner_id)
    SELECT %(topic)s, %(partition)s, g.from_off, g.to_off, %(epoch)s, %(owner)s
      FROM doc CROSS JOIN LATERAL {_rows("gaps")} AS g
     WHERE EXISTS (SELECT 1 FROM advanced)
    RETURNING 1
),
known AS (  -- the events the store already had: (tenant, id), returned as two arrays in one order
    SELECT i.ten, i.id FROM incoming i WHERE NOT EXISTS (SELECT 1 FROM fresh f WHERE f.tenant = i.ten AND f.id = i.id)
)
SELECT (SELECT count(*) FROM advanced), (SELECT count(*) FROM fresh), (SELECT count(*) FROM incoming),
       (SELECT coalesce(array_agg(k.ten ORDER BY k.ten, k.id), '{{}}') FROM known k),
       (SELECT coalesce(array_agg(k.id ORDER BY k.ten, k.id), '{{}}') FROM known k)
"""
# The statement's parameters in the order of PostgreSQL's $1..$9. It runs through a RawCursor with them in place:
# psycopg converts a %(name)s statement this long (over 4 kB) afresh on every execute, not from its cache, which cost
# the writer about 0.3 ms per batch.
_COMMIT_PARAMS = ("doc", "next", "topic", "partition", "epoch", "expected", "ttl_hours", "consumed", "owner")


def _positional(statement: str, names: tuple[str, ...]) -> str:
    for n, name in enumerate(names, start=1):
        statement = statement.replace(f"%({name})s", f"${n}")
    if "%(" in statement:
        raise ValueError("a named parameter of the statement is not in its list")
    return statement


_COMMIT_POSITIONAL = _positional(_COMMIT, _COMMIT_PARAMS)
PURGE_DEDUP = "DELETE FROM dedup_keys WHERE expires_at < now()"


class CheckpointStore:
    """Synchronous store used by the leader (partition claims) and the checkpoint writers (commits).

    Calls fail within seconds when PostgreSQL is unreachable (connect timeout, bounded wait for a pooled connection,
    TCP keepalives) instead of hanging, so the callers' breakers and backoffs see the outage.
    """

    def __init__(
        self, database_url: str, pool_size: int = 4, dedup_ttl_hours: int = 24, acquire_timeout_s: float = 5.0
    ) -> None:
        self._pool = ConnectionPool(
            database_url,
            min_size=1,
            max_size=pool_size,
            open=True,
            timeout=acquire_timeout_s,
            # psycopg_pool backs reconnects off without bound (1, 2, 4, 8 s...): after a 30 s outage the next attempt
            # could be a minute away. Give up early instead; a waiting caller then starts a fresh attempt at once.
            reconnect_timeout=3.0,
            kwargs={
                "autocommit": False,
                "connect_timeout": 5,
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 3,
                "keepalives_count": 3,
                # A statement sent into a network black hole (unacknowledged data) fails after 15 s instead of
                # hanging for the kernel's ~15 min of retransmissions; keepalives only cover an idle connection.
                "tcp_user_timeout": 15_000,
            },
        )
        self._ttl_hours = dedup_ttl_hours

    def close(self) -> None:
        self._pool.close()

    # -- leases ----------------------------------------------------------------------------------
    def claim(self, topic: str, partition: int, owner_id: str, log_id: str, leader: LeaderLease) -> Lease:
        """Bump the partition's epoch for a new owner; any older owner is fenced from now on.

        Only the holder of the live leader lease may claim: the lease row is checked (and share-locked, so no
        takeover can interleave) in the same transaction; otherwise LeaseNotHeld is raised and nothing changes.
        """
        params = {"topic": topic, "partition": partition, "owner": owner_id, "log_id": log_id}
        with self._pool.connection() as conn, conn.transaction():
            verify_held(conn, leader)
            row = conn.execute(_CLAIM_SELECT, params).fetchone()
            if row is None:
                try:
                    with conn.transaction():
                        conn.execute(_CLAIM_INSERT, params)
                    return Lease(topic, partition, 1, 0, owner_id)
                except psycopg.errors.UniqueViolation:
                    row = conn.execute(_CLAIM_SELECT, params).fetchone()
                    if row is None:
                        raise RuntimeError(f"checkpoint row of {topic}[{partition}] vanished") from None
            _epoch, next_offset, old_log = row
            reset_from = None
            if old_log is not None and old_log != log_id and next_offset > 0:
                # The broker's log was replaced (the embedded memory broker restarted): its offsets start over.
                log.warning(
                    "broker log changed for %s[%d] (%s -> %s): offsets restart at 0 from %d",
                    topic,
                    partition,
                    old_log,
                    log_id,
                    next_offset,
                )
                reset_from, next_offset = next_offset, 0
            new = conn.execute(_CLAIM_UPDATE, {**params, "next_offset": next_offset}).fetchone()
            if new is None:
                raise RuntimeError(f"checkpoint row of {topic}[{partition}] vanished while claiming")
            return Lease(topic, partition, int(new[0]), int(next_offset), owner_id, reset_from)

    def checkpoint(self, topic: str, partition: int) -> tuple[int, int] | None:
        with self._pool.connection() as conn:
            row = conn.execute(_READ_CHECKPOINT, (topic, partition)).fetchone()
            conn.rollback()
        return (int(row[0]), int(row[1])) if row else None

    # -- the commit ------------------------------------------------------------------------------
    def commit(self, batch: CommitBatch | EncodedBatch) -> CommitOutcome:
        """Write the batch's effects and advance the offset in ONE transaction, fenced by epoch and offset."""
        return self.commit_group([batch if isinstance(batch, EncodedBatch) else encode(batch)])[0]

    def commit_group(self, batches: list[EncodedBatch]) -> list[CommitOutcome]:
        """Group commit: each batch's statement under its own savepoint, one COMMIT (one WAL flush) for all.

        Batches must be of distinct partitions. A fenced batch is rolled back to its savepoint and the others still
        commit; an error in the transaction fails the whole group (nothing is written). A connection error may be
        retried as it is; a data error (`is_data_error`) would fail the same batches again.
        """
        started = time.perf_counter()
        counts: list[tuple[int, int, list[tuple[str, str]]] | None] = []
        with self._pool.connection() as conn:
            with conn.transaction():
                for b in batches:
                    counts.append(self._apply(conn, b))
            duration = time.perf_counter() - started
            outcomes = []
            for b, c in zip(batches, counts, strict=True):
                if c is None:
                    outcomes.append(self._explain_not_advanced(conn, b, started))
                else:
                    fresh, incoming, known = c
                    outcomes.append(
                        CommitOutcome(
                            committed=True,
                            new_events=fresh,
                            duplicates=incoming - fresh + b.in_batch_duplicates,
                            dead_letters=b.dead_letters,
                            duration_s=duration,
                            duplicate_ids=tuple(known),
                        )
                    )
        return outcomes

    def _apply(self, conn: psycopg.Connection, b: EncodedBatch) -> tuple[int, int, list[tuple[str, str]]] | None:
        """Run one batch's statement in a savepoint; (new events, incoming, (tenant, id) already known) or None when it
        did not advance."""
        params = (  # in _COMMIT_PARAMS' order
            b.doc.decode(),
            b.next_offset,
            b.topic,
            b.partition,
            b.epoch,
            b.expected_offset,
            self._ttl_hours,
            b.consumed_at,
            b.owner_id,
        )
        with conn.transaction() as savepoint:
            row = psycopg.RawCursor(conn).execute(_COMMIT_POSITIONAL, params, prepare=True).fetchone()
            if row is None:
                raise RuntimeError("the commit statement returned no row")
            advanced, fresh, incoming = (int(v) for v in row[:3])
            if advanced != 1:
                # Nothing was written (every step is conditional on the advance); drop the savepoint anyway.
                raise psycopg.Rollback(savepoint)
        return (fresh, incoming, list(zip(row[3], row[4], strict=True))) if advanced == 1 else None

    def _explain_not_advanced(self, conn: psycopg.Connection, batch: EncodedBatch, started: float) -> CommitOutcome:
        row = conn.execute(_READ_CHECKPOINT, (batch.topic, batch.partition)).fetchone()
        conn.rollback()
        epoch, next_offset = (int(row[0]), int(row[1])) if row else (None, None)
        if epoch == batch.epoch and next_offset == batch.next_offset:
            # Our earlier attempt committed but its acknowledgement was lost: nothing to redo.
            return CommitOutcome(
                committed=True, already_committed=True, current_epoch=epoch, duration_s=time.perf_counter() - started
            )
        return CommitOutcome(
            committed=False, fenced=True, current_epoch=epoch, duration_s=time.perf_counter() - started
        )

    def purge_dedup(self) -> int:
        with self._pool.connection() as conn, conn.transaction():
            return conn.execute(PURGE_DEDUP).rowcount
