"""Deletes rows past their retention window: results, events (with their results), the audit trail, dead_letters,
oldest first, in chunks of a bounded number of rows, each chunk its own short transaction.

It never issues an unbounded DELETE, never touches read models, offsets, leases or dedup keys, and never deletes a
row younger than its window (judged by the database clock, like the dedup purge).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

import psycopg

from cluster.settings import Settings

log = logging.getLogger(__name__)


class RetainedTable(StrEnum):
    """The tables with a retention window, in the order a purge visits them (results before events: a result never
    outlives its event). AUDIT_LOG is what the `audit_log` view shows: the rows of audit_log_legacy (written before
    migration 007) and of audit_trail (one per event and commit, holding its transitions: ADR 0012)."""

    RESULTS = "results"
    EVENTS = "events"
    AUDIT_LOG = "audit_log"
    DEAD_LETTERS = "dead_letters"


# One chunk per statement; %(window_s)s is the retention window, %(limit)s the chunk size. Each walks the table's
# time index oldest first (001: events_committed_at_idx; 006: the others; 007: audit_trail_committed_at_idx) and
# deletes by row address (a TID scan): `= ANY(ARRAY(...))` keeps the planner on it, where `IN (...)` chose a hash join
# over a scan of the whole table per chunk. The events chunk removes the results of the events it deletes, matched by
# their identity (tenant, id) through results' primary key, in the same statement, so no result outlives its event. The
# audit chunk takes legacy rows first and fills the rest of the chunk from audit_trail; an audit_trail row (an
# event's transitions in one commit) goes when its last transition, committed_at, is past the window.
_CHUNK: dict[RetainedTable, str] = {
    RetainedTable.RESULTS: """
DELETE FROM results WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM results WHERE created_at < now() - make_interval(secs => %(window_s)s)
     ORDER BY created_at LIMIT %(limit)s))
""",
    RetainedTable.EVENTS: """
WITH doomed AS (
    SELECT array_agg(ctid) AS rows, array_agg(tenant) AS tenants, array_agg(id) AS ids
      FROM (SELECT ctid, tenant, id FROM events WHERE committed_at < now() - make_interval(secs => %(window_s)s)
             ORDER BY committed_at LIMIT %(limit)s) AS d
),
gone_results AS (
    DELETE FROM results r
     USING doomed, unnest(doomed.tenants, doomed.ids) AS e(tenant, id)  -- planned as a few rows: index probes
     WHERE r.tenant = e.tenant AND r.event_id = e.id
    RETURNING 1
),
gone AS (DELETE FROM events WHERE ctid = ANY((SELECT rows FROM doomed)::tid[]) RETURNING 1)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM gone_results)
""",
    RetainedTable.AUDIT_LOG: """
WITH legacy AS (
    DELETE FROM audit_log_legacy WHERE id = ANY(ARRAY(
        SELECT id FROM audit_log_legacy WHERE at < now() - make_interval(secs => %(window_s)s)
         ORDER BY at LIMIT %(limit)s))
    RETURNING 1
),
trail AS (
    DELETE FROM audit_trail WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM audit_trail WHERE committed_at < now() - make_interval(secs => %(window_s)s)
         ORDER BY committed_at LIMIT %(limit)s - (SELECT count(*) FROM legacy)))
    RETURNING 1
)
SELECT (SELECT count(*) FROM legacy) + (SELECT count(*) FROM trail)
""",
    RetainedTable.DEAD_LETTERS: """
DELETE FROM dead_letters WHERE id = ANY(ARRAY(
    SELECT id FROM dead_letters WHERE created_at < now() - make_interval(secs => %(window_s)s)
     ORDER BY created_at LIMIT %(limit)s))
""",
}


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each table keeps its rows (a table absent from `windows` keeps them forever) and how much one purge
    deletes at a time: `chunk_rows` per statement, at most `max_chunks` statements per table (None: until done)."""

    windows: Mapping[RetainedTable, timedelta]
    chunk_rows: int
    max_chunks: int | None

    @classmethod
    def from_settings(cls, settings: Settings, *, until_done: bool = False) -> RetentionPolicy:
        days = {
            RetainedTable.RESULTS: settings.results_retention_days,
            RetainedTable.EVENTS: settings.events_retention_days,
            RetainedTable.AUDIT_LOG: settings.audit_retention_days,
            RetainedTable.DEAD_LETTERS: settings.dead_letters_retention_days,
        }
        return cls(
            windows={table: timedelta(days=d) for table, d in days.items() if d > 0},
            chunk_rows=settings.retention_chunk_rows,
            max_chunks=None if until_done else settings.retention_max_chunks,
        )


@dataclass(frozen=True)
class Purged:
    """What one purge did to one table: rows deleted, statements run, and whether rows past the window may remain
    (the chunk budget ran out first). `results` counts the results deleted with their events."""

    table: RetainedTable
    rows: int
    chunks: int
    finished: bool
    results: int = 0


class RetentionStore:
    """Runs purges over its own short-lived connection (a purge is rare: no pool is kept)."""

    def __init__(self, database_url: str, statement_timeout_ms: int = 60_000, connect_timeout_s: int = 10) -> None:
        self._url = database_url
        self._statement_timeout_ms = statement_timeout_ms
        self._connect_timeout_s = connect_timeout_s

    def purge(self, policy: RetentionPolicy) -> list[Purged]:
        """Purge every table with a window, in RetainedTable order; one autocommitted statement per chunk."""
        out: list[Purged] = []
        with psycopg.connect(self._url, autocommit=True, connect_timeout=self._connect_timeout_s) as conn:
            conn.execute(f"SET statement_timeout = {int(self._statement_timeout_ms)}")  # type: ignore[arg-type]
            for table in RetainedTable:
                window = policy.windows.get(table)
                if window is not None:
                    out.append(self._purge_table(conn, table, window, policy))
        return out

    def _purge_table(
        self, conn: psycopg.Connection, table: RetainedTable, window: timedelta, policy: RetentionPolicy
    ) -> Purged:
        params = {"window_s": window.total_seconds(), "limit": policy.chunk_rows}
        rows = results = chunks = 0
        while policy.max_chunks is None or chunks < policy.max_chunks:
            cur = conn.execute(_CHUNK[table], params)  # type: ignore[arg-type]  # constant statements
            chunks += 1
            if table is RetainedTable.EVENTS:
                deleted, with_results = cur.fetchone() or (0, 0)
                results += with_results
            elif cur.description is not None:  # the statement counts its rows itself (the audit's spans two tables)
                deleted = int((cur.fetchone() or (0,))[0])
            else:
                deleted = cur.rowcount
            rows += deleted
            if deleted < policy.chunk_rows:
                return Purged(table, rows, chunks, finished=True, results=results)
        return Purged(table, rows, chunks, finished=False, results=results)


def describe(purged: list[Purged]) -> str:
    """One line for the log: `events=120 (+118 results) audit_log=360 ...`, `more left` where the budget ran out."""
    parts = []
    for p in purged:
        extra = f" (+{p.results} results)" if p.results else ""
        left = " more left" if not p.finished else ""
        parts.append(f"{p.table.value}={p.rows}{extra}{left}")
    return " ".join(parts) or "no retention windows set"
