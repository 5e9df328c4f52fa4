"""A database of a test's own on the session's embedded PostgreSQL server, created fresh and dropped after."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from cluster.adapters.migrations import MIGRATIONS_DIR, migrate
from cluster.local import EmbeddedPostgres


@contextmanager
def fresh_database(embedded_pg: EmbeddedPostgres, prefix: str, *, migrated: bool = True) -> Iterator[str]:
    """The URL of a new database named `<prefix>_<random>`, migrated to the newest schema unless told not to."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(embedded_pg.admin_url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = embedded_pg.url.rsplit("/", 1)[0] + f"/{name}"
    try:
        if migrated:
            migrate(url)
        yield url
    finally:
        with psycopg.connect(embedded_pg.admin_url(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def query(url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of one statement in autocommit (none for a statement that returns no rows)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def migrate_before(url: str, migration: str) -> None:
    """Apply the migrations older than `migration` (its file name), recorded as `migrate` records them: the schema an
    installation had before that migration, for tests of the migration on existing rows."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations "
            "(version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for path in sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9]_*.sql")):
            if path.name >= migration:
                break
            with conn.transaction():
                conn.execute(path.read_text())  # type: ignore[arg-type]  # trusted file from the package
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (int(path.name[:3]), path.name)
                )
