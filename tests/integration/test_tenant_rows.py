"""Tenant-scoped rows against the real PostgreSQL schema: an event's identity is (tenant, id) through the commit
statement, the read models and the read store; and migration 009 keeps the rows written before it readable as the
default tenant's.

Each test gets a database of its own on the session's server. No Ray, no broker: commits go through CheckpointStore,
reads through ReadStore.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from cluster.adapters.checkpoint_store import CheckpointStore
from cluster.adapters.migrations import MIGRATIONS_DIR, migrate
from cluster.adapters.read_store import ReadStore
from cluster.local import EmbeddedPostgres
from pipelines.access import DEFAULT_TENANT
from pipelines.batch import CommitBatch, DeadLetter
from pipelines.effects import ActionCount, DeviceReading, UserSpend
from pipelines.errors import DeadLetterKind
from tests.databases import fresh_database, migrate_before, query
from tests.factories import one_event_batch
from tests.leases import private_lease

pytestmark = pytest.mark.integration

TOPIC = "tenant-topic"
TENANT_ROWS = "009_tenant_scoped_rows.sql"
EU, US, NOBODY = "shop-eu", "shop-us", "shop-none"
EFFECTS = (
    UserSpend("user-1", "EUR", Decimal("2.500000"), False),
    DeviceReading("dev-1", "K", 290.0, False),
    ActionCount("user-1", "click"),
)


@pytest.fixture
def db(embedded_pg: EmbeddedPostgres) -> Iterator[str]:
    with fresh_database(embedded_pg, "tenants") as url:
        yield url


@pytest.fixture
def db_before_tenant_rows(embedded_pg: EmbeddedPostgres) -> Iterator[str]:
    """A database migrated up to the migration before 009, as an installation before tenant-scoped rows was."""
    with fresh_database(embedded_pg, "tenants", migrated=False) as url:
        migrate_before(url, TENANT_ROWS)
        yield url


def _batch_of(epoch: int, offset: int, tenants: tuple[str, ...], event_id: str = "order-1") -> CommitBatch:
    """One processed event per tenant, all with the same explicit id and the same effects, from `offset` on."""
    base = one_event_batch(TOPIC, epoch, offset, event_id, EFFECTS, entity_key="user-1")
    events = tuple(
        dataclasses.replace(base.processed[0], offset=offset + n, tenant=tenant) for n, tenant in enumerate(tenants)
    )
    return dataclasses.replace(base, processed=events, next_offset=offset + len(tenants))


def _reads(url: str, tenant: str, event_id: str = "order-1") -> dict[str, Any]:
    """Everything the read API could show `tenant` about the event, its user, its device and the dead letters."""

    async def read() -> dict[str, Any]:
        store = ReadStore(url, max_size=1)
        await store.open()
        try:
            return {
                "event": await store.event(tenant, event_id),
                "audit": await store.audit(tenant, event_id),
                "user": await store.user_summary(tenant, "user-1"),
                "device": await store.device_summary(tenant, "dev-1"),
                "dead_letters": await store.dead_letters(tenant, 0, 100),
            }
        finally:
            await store.close()

    return asyncio.run(read())


def test_two_tenants_sending_the_same_id_are_both_processed_once_with_read_models_apart(db: str) -> None:
    store = CheckpointStore(db, pool_size=1)
    try:
        lease = store.claim(TOPIC, 0, "owner-a", "log", private_lease(db))
        # given two tenants that both send explicit id "order-1" in one batch, with a record of no known tenant
        first = _batch_of(lease.epoch, 0, (EU, US))
        stray = DeadLetter(2, DeadLetterKind.INVALID, "unknown tenant 'x'", 1, b"{}", 1.0)  # tenant None
        first = dataclasses.replace(first, dead=(stray,), next_offset=3)
        # when it commits, and both send the event again later
        fresh = store.commit(first)
        again = store.commit(_batch_of(lease.epoch, 3, (US, EU)))
    finally:
        store.close()

    # then both events are new once, and both resends are duplicates of their own tenant's event
    assert (fresh.new_events, fresh.duplicates, fresh.dead_letters) == (2, 0, 1)
    assert (again.new_events, again.duplicates) == (0, 2)
    assert set(again.duplicate_ids) == {(EU, "order-1"), (US, "order-1")}
    assert query(db, "SELECT tenant, id, status FROM events ORDER BY tenant") == [
        (EU, "order-1", "processed"),
        (US, "order-1", "processed"),
    ]
    assert query(db, "SELECT tenant, event_id FROM results ORDER BY tenant") == [(EU, "order-1"), (US, "order-1")]
    assert query(db, "SELECT tenant, event_id FROM dedup_keys ORDER BY tenant") == [(EU, "order-1"), (US, "order-1")]
    # and each tenant's read models count its own event once
    for tenant in (EU, US):
        seen = _reads(db, tenant)
        assert seen["event"]["id"] == "order-1" and seen["event"]["result"] == {}
        assert [t["to_status"] for t in seen["audit"]] == ["accepted", "consumed", "processed", "duplicate_ignored"]
        assert seen["user"]["transactions"]["tx_count"] == 1
        assert Decimal(seen["user"]["transactions"]["total_amount"]) == Decimal("2.5")
        assert seen["user"]["actions"] == {"click": 1}
        assert [r["reading_count"] for r in seen["device"]["readings"]] == [1]
        assert seen["dead_letters"] == []  # the stray record's dead letter is nobody's
    # and a third tenant sees nothing of either: exactly what it would see of a missing event
    assert _reads(db, NOBODY) == _reads(db, NOBODY, "never-sent")
    assert _reads(db, NOBODY) == {"event": None, "audit": [], "user": None, "device": None, "dead_letters": []}
    assert query(db, "SELECT tenant, reason FROM dead_letters") == [(None, "unknown tenant 'x'")]


def test_a_dead_letter_with_an_id_is_read_by_its_own_tenant_only(db: str) -> None:
    store = CheckpointStore(db, pool_size=1)
    try:
        lease = store.claim(TOPIC, 0, "owner-a", "log", private_lease(db))
        batch = _batch_of(lease.epoch, 0, (EU,))
        (event,) = batch.processed
        dead = DeadLetter(
            0, DeadLetterKind.POISON, "kept failing", 3, b"{}", 1.0, event_id="order-1", type=event.type, tenant=EU
        )
        dead = dataclasses.replace(dead, payload_json=event.payload_json, schema_version=1, entity_key="user-1")
        assert store.commit(dataclasses.replace(batch, processed=(), dead=(dead,))).new_events == 1
    finally:
        store.close()

    mine, theirs = _reads(db, EU), _reads(db, US)
    assert mine["event"]["status"] == "dead_lettered" and mine["event"]["dead_letter"]["reason"] == "kept failing"
    assert [d["event_id"] for d in mine["dead_letters"]] == ["order-1"]
    assert theirs == {"event": None, "audit": [], "user": None, "device": None, "dead_letters": []}


def test_rows_written_before_migration_009_stay_readable_as_the_default_tenants(db_before_tenant_rows: str) -> None:
    url = db_before_tenant_rows
    # given an installation before tenants existed, with an event committed the way it was then (all its rows)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO events (id, type, schema_version, status, topic, partition, "offset", entity_key, payload,
                                   received_at, consumed_at)
               VALUES ('order-1', 'transaction', 1, 'processed', %s, 0, 0, 'user-1', '{}', now(), now())""",
            (TOPIC,),
        )
        conn.execute("""INSERT INTO results (event_id, type, result) VALUES ('order-1', 'transaction', '{"ok": 1}')""")
        conn.execute("INSERT INTO dedup_keys VALUES ('order-1', now(), now() + interval '1 day')")
        conn.execute(
            """INSERT INTO audit_trail (event_id, outcome, actor, epoch, topic, partition, "offset", accepted_at,
                                        consumed_at, attempts)
               VALUES ('order-1', 'processed', 'owner-old', 1, %s, 0, 0, now(), now(), 1)""",
            (TOPIC,),
        )
        conn.execute(
            """INSERT INTO dead_letters (event_id, topic, partition, "offset", error_kind, reason, attempts, payload)
               VALUES (NULL, %s, 0, 1, 'invalid', 'not JSON', 1, '\\x7b')""",
            (TOPIC,),
        )
        conn.execute(
            "INSERT INTO user_totals (user_id, base_currency, total_amount, tx_count) VALUES ('user-1', 'EUR', 7, 1)"
        )
        conn.execute(
            "INSERT INTO device_stats (device_id, si_unit, reading_count, reading_sum) VALUES ('dev-1', 'K', 1, 290)"
        )
        conn.execute("INSERT INTO user_action_counts (user_id, action, count) VALUES ('user-1', 'click', 4)")
    before = _legacy_reads(url)

    # when migration 009 runs (twice: it must be safe to run again)
    assert TENANT_ROWS in migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute((MIGRATIONS_DIR / TENANT_ROWS).read_text())  # type: ignore[arg-type]

    # then every old row belongs to the default tenant and reads as it did; another tenant sees none of them
    seen = _reads(url, DEFAULT_TENANT)
    assert seen["event"]["id"] == "order-1" and seen["event"]["result"] == {"ok": 1}
    assert [t["to_status"] for t in seen["audit"]] == ["accepted", "consumed", "processed"]
    assert seen["user"]["transactions"]["tx_count"] == 1 and seen["user"]["actions"] == {"click": 4}
    assert seen["device"]["readings"][0]["reading_count"] == 1
    assert [d["reason"] for d in seen["dead_letters"]] == ["not JSON"]
    assert _legacy_reads(url) == before
    assert _reads(url, EU) == {"event": None, "audit": [], "user": None, "device": None, "dead_letters": []}
    # and the old dedup key still guards the default tenant's id, while another tenant may use it
    store = CheckpointStore(url, pool_size=1)
    try:
        lease = store.claim(TOPIC, 0, "owner-new", "log", private_lease(url))
        outcome = store.commit(_batch_of(lease.epoch, 0, (DEFAULT_TENANT, EU)))
    finally:
        store.close()
    assert (outcome.new_events, outcome.duplicate_ids) == (1, ((DEFAULT_TENANT, "order-1"),))
    assert query(url, "SELECT tx_count FROM user_totals WHERE tenant = %s AND user_id = 'user-1'", DEFAULT_TENANT) == [
        (1,)
    ]


def _legacy_reads(url: str) -> list[Any]:
    """The rows of every table 009 changes, without the tenant column (as a reader before it would see them)."""
    return [
        query(url, 'SELECT id, status, "offset" FROM events'),
        query(url, "SELECT event_id, result FROM results"),
        query(url, "SELECT event_id FROM dedup_keys"),
        query(url, "SELECT event_id, to_status, actor FROM audit_log ORDER BY id"),
        query(url, "SELECT reason, payload FROM dead_letters"),
        query(url, "SELECT user_id, total_amount, tx_count FROM user_totals"),
        query(url, "SELECT device_id, reading_count FROM device_stats"),
        query(url, "SELECT user_id, action, count FROM user_action_counts"),
    ]
