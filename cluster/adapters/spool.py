"""The durable ingest spool (PostgreSQL table `ingest_spool`): records the API acknowledged while the broker could not
take them, kept in arrival order until the spool drainer has published them.

It stores already-serialised broker records and hands them back oldest first; it never publishes, and never deletes
a row it was not told to (the drainer deletes exactly the rows the broker acknowledged).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from cluster.adapters.kafka_producer import Record

# One statement per request: the rows of a request are committed together or not at all, in list order.
_APPEND = """
INSERT INTO ingest_spool (event_id, topic, key, value, headers)
SELECT u.event_id, u.topic, u.key, u.value, u.headers::jsonb
  FROM unnest(%s::text[], %s::text[], %s::bytea[], %s::bytea[], %s::text[])
       WITH ORDINALITY AS u(event_id, topic, key, value, headers, ord)
 ORDER BY u.ord
"""
# Both ends of the primary key index: cheap on any size. max - min + 1 bounds the row count from above.
_BOUNDS = "SELECT min(seq), max(seq) FROM ingest_spool"
_COUNT = "SELECT count(*) FROM ingest_spool"
_OLDEST = "SELECT seq, event_id, topic, key, value, headers FROM ingest_spool ORDER BY seq LIMIT %s"
_DELETE = "DELETE FROM ingest_spool WHERE seq = ANY(%s)"
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


@dataclass(frozen=True)
class SpoolBounds:
    """Lowest and highest seq in the spool; `upper_depth` is at least the number of rows (seq may have gaps)."""

    first: int
    last: int

    @property
    def upper_depth(self) -> int:
        return self.last - self.first + 1


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


def _bounds(row: tuple[int | None, int | None] | None) -> SpoolBounds | None:
    if row is None or row[0] is None or row[1] is None:
        return None
    return SpoolBounds(row[0], row[1])


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

    async def bounds(self) -> SpoolBounds | None:
        """Lowest and highest seq, or None when the spool is empty."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(_BOUNDS)
            return _bounds(await cur.fetchone())

    async def count(self) -> int:
        async with self._pool.connection() as conn:
            cur = await conn.execute(_COUNT)
            row = await cur.fetchone()
            return int(row[0]) if row else 0


class SpoolStore:
    """The drainer's side: the oldest rows, deletion of exactly the published ones, and the single-drainer lock."""

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
            SpooledRecord(seq, event_id, (topic, key, bytes(value), _decode_headers(headers)))
            for seq, event_id, topic, key, value, headers in rows
        ]

    def delete(self, seqs: list[int]) -> int:
        """Delete exactly these rows (the ones the broker acknowledged); returns how many went."""
        if not seqs:
            return 0
        with self._pool.connection() as conn:
            return conn.execute(_DELETE, (seqs,)).rowcount

    def count(self) -> int:
        with self._pool.connection() as conn:
            row = conn.execute(_COUNT).fetchone()
        return int(row[0]) if row else 0

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
