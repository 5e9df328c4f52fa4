"""Session-scoped pytest fixtures for real infrastructure: the embedded broker, PostgreSQL and filled-in Settings.

It must never mock a component, nor point tests at a database it did not create (DATABASE_URL gets a fresh one).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from pydantic import SecretStr

from cluster.local import EmbeddedBroker, EmbeddedPostgres
from cluster.settings import Settings


def with_database(url: str, database: str) -> str:
    """`url` pointing at another database: a URI gets its path replaced, a key=value conninfo its dbname."""
    if "://" in url:
        parts = urlsplit(url)
        return urlunsplit(parts._replace(path=f"/{database}"))
    return make_conninfo(url, dbname=database)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A Tansu broker for the whole session; memory-only, so topics start empty each run."""
    with EmbeddedBroker(tmp_path_factory.mktemp("broker")) as running:
        yield running


@pytest.fixture(scope="session")
def embedded_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """An embedded PostgreSQL for the session, for tests that stop or pause the server themselves."""
    with EmbeddedPostgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture(scope="session")
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of an empty database: a fresh `eventpipe_test_<hex>` on $DATABASE_URL's server, else embedded PostgreSQL."""
    external = os.environ.get("DATABASE_URL", "")
    if not external:
        server: EmbeddedPostgres = request.getfixturevalue("embedded_pg")
        yield server.url
        return
    name = f"eventpipe_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(external, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(external, name)
    finally:
        with psycopg.connect(external, autocommit=True) as conn:
            # FORCE (PostgreSQL 13+) ends sessions that leaked pools still hold.
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def infra_settings(broker: EmbeddedBroker, pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings wired to the session's broker and database; `.env` files are ignored so runs are repeatable."""
    data_dir: Path = tmp_path_factory.mktemp("data")
    base = Settings(_env_file=None)  # type: ignore[call-arg]
    return base.model_copy(
        update={
            "kafka_bootstrap": broker.bootstrap,
            "database_url": SecretStr(pg_url),
            "data_dir": data_dir,
            "partitions": 2,
        }
    )
