"""The durable ingest spool (PostgreSQL table `ingest_spool`): records the API acknowledged while the broker could not
take them, kept in arrival order until the spool drainer has published them.

It stores already-serialised broker records and hands them back oldest first; it never publishes, and never deletes
a row it was not told to (the drainer deletes exactly the rows the broker acknowledged, and moves to the dead letters,
in the same transaction, exactly the rows it judged unpublishable).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from cluster.adapters.kafka_producer import Record
from pipelines.errors import DeadLetterKind

# One statement per request: the rows of a request are committed together or not at all, in list order.
_APPEND = """
INSERT INTO ingest_spool (event_id, topic, key, value, headers)
SELECT u.event_id, u.topic, u.key, u.value, u.headers::jsonb
  FROM unnest(%s::text[], %s::text[], %s::bytea[], %s::bytea[], %s::text[])
       WITH ORDINALITY AS u(event_id, topic, key, value, headers, ord)
 ORDER BY u.ord
"""
# The oldest waiting row's seq, NULL when none waits (one probe of the primary key index), and rows and bytes, kept by
# the triggers of migration 005 (16 small rows): never a scan of the spool. Waiting rows are judged by the table
# itself, so that counters that drifted (triggers bypassed) could only misjudge the caps, never send every event
# through the spool. The oldest seq moving on between two reads shows the drainer publishing (ADR 0009, addendum).
_USAGE = """
SELECT (SELECT min(seq) FROM ingest_spool), coalesce(sum(rows), 0), coalesce(sum(bytes), 0) FROM ingest_spool_usage
"""
_OLDEST = "SELECT seq, event_id, topic, key, value, headers, attempts FROM ingest_spool ORDER BY seq LIMIT %s"
_DELETE = "DELETE FROM ingest_spool WHERE seq = ANY(%s)"
# A row that can never be published leaves the spool for the dead letters with its bytes, in one statement.
_TO_DEAD_LETTERS = """
WITH moved AS (
    DELETE FROM ingest_spool s
     USING unnest(%s::bigint[], %s::text[], %s::text[]) AS d(seq, reason, tenant)
     WHERE s.seq = d.seq
 RETURNING s.seq, s.event_id, s.topic, s.key, s.value, s.headers, s.attempts, d.reason, d.tenant
)
INSERT INTO dead_letters (tenant, event_id, topic, error_kind, reason, attempts, payload, source, spool_seq, record_key,
                          record_headers)
SELECT tenant, event_id, topic, %s, reason, attempts + 1, value, 'spool', seq, key, headers FROM moved
 ORDER BY seq
"""
_FAILED_ATTEMPT = "UPDATE ingest_spool SET attempts = attempts + 1, last_error = %s WHERE seq = %s"
# Session-level advisory lock held by the one drainer allowed to publish (also across Ray clusters on one database).
_DRAIN_LOCK_KEY = 0x73706F6F6C  # "spool"
_TRY_DRAIN_LOCK = "SELECT pg_try_advisory_lock(%s)"
# A drainer that vanished without closing its socket loses the lock once the server's keepalive gives up (~25 s).
_LOCK_SESSION_OPTIONS = "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"


@dataclass(frozen=True)
class SpooledRecord:
    seq: int
    event_id: str
    record: Record
    attempts: int = 0  # earlier transient failures counted against this row


@dataclass(frozen=True)
class SpoolUsage:
    """Whether rows wait in the spool, how many, their bytes (values and keys), and the oldest one's seq."""

    pending: bool
    rows: int
    bytes: int
    oldest: int | None = None  # None when no row waits


@dataclass(frozen=True)
class Settlement:
    """What one drain round does to the spool, in one transaction: delete the acknowledged rows, move the unpublishable
    ones (seq, reason) to the dead letters, count a transient failure (seq, error) against the row that blocks."""

    acked: tuple[int, ...] = ()
    dead: tuple[tuple[int, str], ...] = ()
    failed_attempt: tuple[int, str] | None = None

    @property
    def empty(self) -> bool:
        return not self.acked and not self.dead and self.failed_attempt is None


def _encode_headers(headers: list[tuple[str, bytes]] | None) -> str:
    return orjson.dumps([[name, base64.b64encode(value).decode()] for name, value in headers or []]).decode()


def _decode_headers(stored: list[list[str]]) -> list[tuple[str, bytes]] | None:
    return [(name, base64.b64decode(value)) for name, value in stored] or None


def _columns(rows: list[tuple[str, Record]]) -> tuple[list[str], list[str], list[bytes | None], list[bytes], list[str]]:
    return (
        [event_id for event_id, _ in rows],
        [record[0] for _, record in rows],
        [record[1] for _, record in rows],
        [record[2] for _, record in rows],
        [_encode_headers(record[3]) for _, record in rows],
    )


def _usage(row: tuple[int | None, int, int] | None) -> SpoolUsage:
    if row is None:
        return SpoolUsage(False, 0, 0)
    oldest, rows, size = row
    return SpoolUsage(oldest is not None, int(rows), int(size), None if oldest is None else int(oldest))


class AsyncSpool:
    """The API's side: append a request's records in one committed INSERT, and look at the spool's extent."""

    def __init__(self, database_url: str, max_size: int = 4, timeout_s: float = 2.0) -> None:
        # A short pool timeout: with PostgreSQL down a request must get its 503 quickly, not wait 30 s.
        self._pool = AsyncConnectionPool(
            database_url,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=timeout_s,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout_s))},
        )

    async def open(self) -> None:
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()

    async def append(self, rows: list[tuple[str, Record]]) -> None:
        """Store (event id, record) pairs in list order; returns only once they are committed."""
        if not rows:
            return
        async with self._pool.connection() as conn:
            await conn.execute(_APPEND, _columns(rows))

    async def usage(self) -> SpoolUsage:
        """Rows, bytes and the oldest seq in the spool (cheap: no scan)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(_USAGE)
            return _usage(await cur.fetchone())


class SpoolStore:
    """The drainer's side: the oldest rows, their settlement (deleted, dead-lettered, failure counted) and the
    single-drainer lock."""

    def __init__(self, database_url: str, pool_size: int = 2, timeout_s: float = 5.0) -> None:
        self._url = database_url
        self._timeout_s = timeout_s
        self._pool = ConnectionPool(
            database_url,
            min_size=1,
            max_size=pool_size,
            open=True,  # without waiting: the drainer starts even while PostgreSQL is down, and retries
            timeout=timeout_s,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout_s))},
        )
        self._lock_conn: psycopg.Connection | None = None

    def oldest(self, limit: int) -> list[SpooledRecord]:
        with self._pool.connection() as conn:
            rows = conn.execute(_OLDEST, (limit,)).fetchall()
        return [
            SpooledRecord(seq, event_id, (topic, key, bytes(value), _decode_headers(headers)), attempts)
            for seq, event_id, topic, key, value, headers, attempts in rows
        ]

    def settle(self, settlement: Settlement, tenants: Mapping[int, str | None] | None = None) -> int:
        """Apply one round's settlement in one transaction; returns how many rows left the spool. `tenants` (seq ->
        the tenant the row's envelope names, None when it names none) goes with each dead letter."""
        if settlement.empty:
            return 0
        gone = 0
        with self._pool.connection() as conn, conn.transaction():
            if settlement.acked:
                gone += conn.execute(_DELETE, (list(settlement.acked),)).rowcount
            if settlement.dead:
                seqs, reasons = [seq for seq, _ in settlement.dead], [reason for _, reason in settlement.dead]
                owners = [(tenants or {}).get(seq) for seq in seqs]
                gone += conn.execute(
                    _TO_DEAD_LETTERS, (seqs, reasons, owners, DeadLetterKind.PUBLISH_REJECTED.value)
                ).rowcount
            if settlement.failed_attempt is not None:
                seq, error = settlement.failed_attempt
                conn.execute(_FAILED_ATTEMPT, (error, seq))
        return gone

    def usage(self) -> SpoolUsage:
        with self._pool.connection() as conn:
            return _usage(conn.execute(_USAGE).fetchone())

    def hold_drain_lock(self) -> bool:
        """True while this process's session holds the drain lock (taken now if free); False if another has it."""
        if self._lock_conn is not None:
            try:
                self._lock_conn.execute("SELECT 1")
                return True  # the session is alive, so its session-level lock is still ours
            except psycopg.Error:
                self._release_lock_conn()
        conn = psycopg.connect(
            self._url, autocommit=True, connect_timeout=max(1, int(self._timeout_s)), options=_LOCK_SESSION_OPTIONS
        )
        row = conn.execute(_TRY_DRAIN_LOCK, (_DRAIN_LOCK_KEY,)).fetchone()
        if row and row[0]:
            self._lock_conn = conn
            return True
        conn.close()
        return False

    def _release_lock_conn(self) -> None:
        if self._lock_conn is not None:
            self._lock_conn.close()  # closing the session releases its advisory lock
            self._lock_conn = None

    def close(self) -> None:
        self._release_lock_conn()
        self._pool.close()
