"""Applies the numbered SQL files in cluster/migrations once each, in order, under an advisory lock.

It never edits an applied migration: a changed file is a new, higher-numbered one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_LOCK_KEY = 0x6576656E74  # "event": one migrator at a time across processes
log = logging.getLogger(__name__)


def pending(conn: psycopg.Connection) -> list[Path]:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    files = sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9]_*.sql"))
    return [f for f in files if int(f.name[:3]) not in applied]


def migrate(database_url: str) -> list[str]:
    """Bring the schema up to date; returns the names applied now."""
    done: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            for path in pending(conn):
                with conn.transaction():
                    conn.execute(path.read_text())  # type: ignore[arg-type]  # trusted file from the package
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (int(path.name[:3]), path.name)
                    )
                log.info("applied migration %s", path.name)
                done.append(path.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return done
