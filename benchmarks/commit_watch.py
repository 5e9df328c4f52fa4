"""Waits until this run's accepted events are committed in PostgreSQL and reads their timestamps.

Read-only: it never writes to the database, and it polls a condition with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psycopg

# Epoch seconds as float8 keep microsecond precision for present-day times.
COMMITTED_ROWS_SQL = """
SELECT id, status,
       extract(epoch FROM received_at)::float8,
       extract(epoch FROM consumed_at)::float8,
       extract(epoch FROM committed_at)::float8
FROM events
WHERE id = ANY(%s) AND committed_at IS NOT NULL
"""


@dataclass(frozen=True)
class CommittedRow:
    status: str
    received_at: float
    consumed_at: float | None
    committed_at: float


@dataclass
class DrainResult:
    rows: dict[str, CommittedRow] = field(default_factory=dict)
    missing: int = 0
    waited: float = 0.0
    timed_out: bool = False
    polls: int = 0


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def wait_for_commits(
    conninfo: str,
    ids: Iterable[str],
    timeout: float,
    poll_interval: float = 0.5,
    chunk_size: int = 20_000,
    clock: Callable[[], float] = time.monotonic,
) -> DrainResult:
    """Polls until every id has a committed row or `timeout` seconds pass; only pending ids are queried."""
    pending = set(ids)
    result = DrainResult()
    started = clock()
    deadline = started + timeout
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        while True:
            result.polls += 1
            for chunk in _chunks(sorted(pending), chunk_size):
                cursor = await conn.execute(COMMITTED_ROWS_SQL, (chunk,))
                for event_id, status, received, consumed, committed in await cursor.fetchall():
                    result.rows[event_id] = CommittedRow(status, received, consumed, committed)
                    pending.discard(event_id)
            if not pending or clock() >= deadline:
                break
            await asyncio.sleep(min(poll_interval, max(0.0, deadline - clock())))
    result.waited = clock() - started
    result.missing = len(pending)
    result.timed_out = bool(pending)
    return result
