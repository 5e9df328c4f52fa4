"""PostgreSQL faults under load: the server stopped (crash) and restarted, backends terminated mid-transaction, and a
checkpoint COMMIT whose acknowledgement is lost (the proxy in front of PostgreSQL cuts the connection after it).

Owners must stop advancing, keep their batch, and resume without loss; a lost acknowledgement is found committed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from cluster.adapters import checkpoint_store
from cluster.local import EmbeddedPostgres
from tests.chaos.faultproxy import FaultProxy
from tests.chaos.harness import FAULT_S, Expect, Scenario, steady
from tests.pipeline import wait_until

# Text of the checkpoint commit statement; psycopg prepares it, so it crosses each connection once, at Parse time.
COMMIT_MARKER = b"advanced AS"
CUTS = max(1, round(FAULT_S / 10))  # one lost acknowledgement in CI, three when faults last 30 s
KILL_EVERY_S = 0.02
# The API publishes to the broker, which is fine: a database fault costs clients nothing.
EXPECT = Expect(min_acked=0.95)

# Every backend of the pipeline's database that is inside a transaction, except the one asking.
_TERMINATE_IN_TRANSACTION = """
SELECT pid, coalesce(query, ''), pg_terminate_backend(pid)
  FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
   AND xact_start IS NOT NULL
"""


@pytest.fixture(autouse=True)
def healthy_postgres(embedded_pg: EmbeddedPostgres, pg_proxy: FaultProxy) -> Iterator[None]:
    """Whatever a scenario did, the next test starts with the server up and the proxy passing."""
    pg_proxy.heal()
    yield
    pg_proxy.heal()
    if not embedded_pg.running:
        embedded_pg.start()


def already_committed(scenario: Scenario) -> int:
    return sum(int(s.get("already_committed", 0)) for s in scenario.pipeline.owner_statuses())


def test_postgres_unavailable_then_restarted(scenario: Scenario, embedded_pg: EmbeddedPostgres) -> None:
    port = embedded_pg.port
    with scenario.workload(rate=200):
        steady(1.0)
        with scenario.fault(f"PostgreSQL crashed (pg_ctl stop -m immediate) for {FAULT_S:g}s"):
            embedded_pg.stop(mode="immediate")
            try:
                assert not embedded_pg.running
                steady(FAULT_S)
            finally:
                embedded_pg.start()
        scenario.note(f"PostgreSQL back on port {embedded_pg.port}")
        assert embedded_pg.port == port  # the proxy still points at it
        steady(1.0)
    scenario.verify(expect=EXPECT)


def test_postgres_connections_killed_mid_transaction(scenario: Scenario) -> None:
    killed: list[str] = []
    with scenario.workload(rate=200), psycopg.connect(scenario.db_url, autocommit=True) as conn:
        steady(1.0)
        with scenario.fault(f"pg_terminate_backend on every backend inside a transaction, for {FAULT_S:g}s"):
            started = time.monotonic()
            # At least FAULT_S; longer only until one checkpoint commit was hit, or the scenario proved nothing.
            while time.monotonic() - started < FAULT_S or not any(COMMIT_MARKER.decode() in q for q in killed):
                assert time.monotonic() - started < FAULT_S + 30, f"no checkpoint commit caught in {killed[:5]}"
                killed += [query for _, query, done in conn.execute(_TERMINATE_IN_TRANSACTION).fetchall() if done]
                time.sleep(KILL_EVERY_S)
        commits = sum(COMMIT_MARKER.decode() in q for q in killed)
        scenario.note(f"{len(killed)} backends terminated mid-transaction, {commits} of them in a checkpoint commit")
        steady(1.0)
    scenario.verify(expect=EXPECT)


def test_postgres_commit_acknowledgement_lost(scenario: Scenario, pg_proxy: FaultProxy) -> None:
    assert COMMIT_MARKER.decode() in checkpoint_store._COMMIT  # the marker must name the commit statement
    before, cuts = already_committed(scenario), pg_proxy.stats().cuts
    with scenario.workload(rate=200):
        steady(1.0)
        for n in range(CUTS):
            with scenario.fault("a checkpoint COMMIT reaches PostgreSQL, its acknowledgement is lost"):
                pg_proxy.cut_after_commit(COMMIT_MARKER)
                try:
                    wait_until(lambda n=n: pg_proxy.stats().cuts > cuts + n, 30, "a checkpoint COMMIT to be cut")
                finally:
                    pg_proxy.heal()
            steady(FAULT_S / CUTS)

    # the owners' retries found their batches committed and treated them so (effects once: verify below)
    def retried_as_committed() -> int:
        found = already_committed(scenario) - before
        return found if found >= CUTS else 0

    found = wait_until(retried_as_committed, 30, "the retries to report already_committed")
    scenario.note(f"{CUTS} COMMIT acknowledgements lost; owners found {found} batches already committed on retry")
    scenario.verify(expect=EXPECT)
