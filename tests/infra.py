"""Session-scoped pytest fixtures for real infrastructure: embedded broker and PostgreSQL, each behind a fault proxy.

Every Kafka and PostgreSQL client the pipeline builds goes through a proxy (`broker_proxy`, `pg_proxy`), so chaos
tests can cut, delay or blackhole it. It must never mock a component, nor point tests at a database it did not start:
the session always runs its own embedded PostgreSQL, because chaos tests stop and restart that server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from cluster.local import EmbeddedBroker, EmbeddedPostgres, free_port
from cluster.settings import Settings
from tests.chaos.faultproxy import FaultProxy


@pytest.fixture(scope="session")
def broker_proxy() -> Iterator[FaultProxy]:
    """The proxy every Kafka client reaches the broker through; the broker advertises its port in metadata."""
    with FaultProxy(free_port(), name="broker") as proxy:
        yield proxy


@pytest.fixture(scope="session")
def broker(broker_proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A Tansu broker for the whole session; memory-only, so topics start empty each run.

    It listens on the proxy's upstream port and advertises the proxy, so even a client bootstrapped on
    `broker.bootstrap` is sent through the proxy for every later request.
    """
    directory = tmp_path_factory.mktemp("broker")
    with EmbeddedBroker(directory, port=broker_proxy.upstream_port, advertised_port=broker_proxy.port) as running:
        yield running


@pytest.fixture(scope="session")
def embedded_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """The session's PostgreSQL; tests may stop (`stop(mode="immediate")`) and `start()` it: the port stays the same."""
    with EmbeddedPostgres(tmp_path_factory.mktemp("postgres"), port=free_port()) as server:
        yield server


@pytest.fixture(scope="session")
def pg_proxy(embedded_pg: EmbeddedPostgres) -> Iterator[FaultProxy]:
    """The proxy the pipeline reaches PostgreSQL through; it understands the wire protocol for `cut_after_commit`."""
    with FaultProxy(embedded_pg.port, name="postgres", postgres=True) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def pg_url(embedded_pg: EmbeddedPostgres) -> str:
    """URL of the session's embedded database, straight to the server (not through `pg_proxy`)."""
    return embedded_pg.url


@pytest.fixture(scope="session")
def proxied_pg_url(embedded_pg: EmbeddedPostgres, pg_proxy: FaultProxy) -> str:
    return f"postgresql://postgres@{pg_proxy.address}/{embedded_pg.database}"


@pytest.fixture(scope="session")
def infra_settings(
    broker: EmbeddedBroker, broker_proxy: FaultProxy, proxied_pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """Settings wired to the session's broker and database through their proxies; `.env` files are ignored."""
    data_dir: Path = tmp_path_factory.mktemp("data")
    base = Settings(_env_file=None)  # type: ignore[call-arg]
    return base.model_copy(
        update={
            "kafka_bootstrap": broker_proxy.address,
            "database_url": SecretStr(proxied_pg_url),
            "data_dir": data_dir,
            "partitions": 2,
        }
    )
