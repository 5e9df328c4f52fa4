"""The compact audit (ADR 0012) against the real PostgreSQL schema: one audit_trail row per record and commit, read
back through the `audit_log` view as the same transition rows the three-row audit wrote, old rows included.

Each test gets a database of its own on the session's server. No Ray, no broker: commits go through CheckpointStore.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from cluster.adapters.checkpoint_store import CheckpointStore
from cluster.adapters.migrations import MIGRATIONS_DIR, migrate
from cluster.local import EmbeddedPostgres
from pipelines.batch import dead_instead
from pipelines.errors import DeadLetterKind
from tests.databases import fresh_database, migrate_before, query
from tests.factories import one_event_batch
from tests.leases import private_lease

pytestmark = pytest.mark.integration

TOPIC = "audit-topic"
COMPACT = "007_compact_audit.sql"


@pytest.fixture
def db(embedded_pg: EmbeddedPostgres) -> Iterator[str]:
    with fresh_database(embedded_pg, "audit") as url:
        yield url


@pytest.fixture
def db_before_compact_audit(embedded_pg: EmbeddedPostgres) -> Iterator[str]:
    """A database migrated up to the migration before the compact audit, as an installation before it was."""
    with fresh_database(embedded_pg, "audit", migrated=False) as url:
        migrate_before(url, COMPACT)
        yield url


def _trail(url: str, event_id: str) -> list[tuple[Any, ...]]:
    """One event's audit_log rows as the API reads them (`ReadStore.audit`): in order of time, then id."""
    return query(
        url,
        "SELECT from_status, to_status, actor, detail FROM audit_log WHERE event_id = %s ORDER BY at, id",
        event_id,
    )


def test_each_record_writes_one_row_and_the_view_shows_every_transition(db: str) -> None:
    store = CheckpointStore(db, pool_size=1)
    try:
        lease = store.claim(TOPIC, 0, "owner-a", "log", private_lease(db))
        # given a batch at offsets 0..3: a processed event, a dead-lettered one, an in-batch copy of the first
        first = one_event_batch(TOPIC, lease.epoch, 0, "ev-ok")
        ok = first.processed[0]
        poisoned = dead_instead(
            dataclasses.replace(ok, event_id="ev-dead", offset=1, attempts=3),
            DeadLetterKind.POISON,
            "handler kept failing",
            b"{}",
        )
        batch = dataclasses.replace(
            first, owner_id="owner-a", next_offset=3, dead=(poisoned,), in_batch_duplicates=(("ev-ok", 2, "default"),)
        )
        # when it commits, and a later batch carries the first event again (a re-send)
        assert store.commit(batch).new_events == 2
        again = dataclasses.replace(one_event_batch(TOPIC, lease.epoch, 3, "ev-ok"), owner_id="owner-a")
        assert store.commit(again).duplicates == 1
    finally:
        store.close()

    # then audit_trail holds one row per record and commit
    rows = query(db, 'SELECT event_id, outcome, actor, epoch, "offset" FROM audit_trail ORDER BY "offset"')
    assert rows == [
        ("ev-ok", "processed", "owner-a", lease.epoch, 0),
        ("ev-dead", "dead_lettered", "owner-a", lease.epoch, 1),
        ("ev-ok", "duplicate_ignored", "owner-a", lease.epoch, 2),
        ("ev-ok", "duplicate_ignored", "owner-a", lease.epoch, 3),
    ]
    # and the audit_log view reads as the three-row audit did: each transition with its detail
    position = {"topic": TOPIC, "partition": 0}
    assert _trail(db, "ev-ok") == [
        (None, "accepted", "owner-a", {}),
        ("accepted", "consumed", "owner-a", {**position, "offset": 0}),
        ("consumed", "processed", "owner-a", {"epoch": lease.epoch, "attempts": 1}),
        (None, "duplicate_ignored", "owner-a", {**position, "offset": 2}),
        (None, "duplicate_ignored", "owner-a", {**position, "offset": 3}),
    ]
    assert _trail(db, "ev-dead") == [
        (None, "accepted", "owner-a", {}),
        ("accepted", "consumed", "owner-a", {**position, "offset": 1}),
        ("consumed", "dead_lettered", "owner-a", {"kind": "poison", "reason": "handler kept failing", "attempts": 3}),
    ]
    # and every transition row has its own id, with accepted <= consumed <= processed in time
    ids = [r[0] for r in query(db, "SELECT id FROM audit_log")]
    assert len(ids) == len(set(ids)) == 8
    (ordered,) = query(
        db,
        """SELECT bool_and(a.at <= c.at AND c.at <= p.at) FROM audit_log a
             JOIN audit_log c ON c.event_id = a.event_id AND c.to_status = 'consumed'
             JOIN audit_log p ON p.event_id = a.event_id AND p.from_status = 'consumed'
            WHERE a.to_status = 'accepted'""",
    )
    assert ordered == (True,)


def test_a_fenced_commit_writes_no_audit_row(db: str) -> None:
    store = CheckpointStore(db, pool_size=1)
    try:
        old = store.claim(TOPIC, 0, "owner-old", "log", private_lease(db))
        store.claim(TOPIC, 0, "owner-new", "log", private_lease(db))
        outcome = store.commit(one_event_batch(TOPIC, old.epoch, 0, "ev-zombie"))
    finally:
        store.close()
    assert outcome.fenced
    assert query(db, "SELECT count(*) FROM audit_log") == [(0,)]


def test_rows_of_the_three_row_audit_stay_readable_after_the_migration(db_before_compact_audit: str) -> None:
    url = db_before_compact_audit
    # given an event audited the old way (three rows in the audit_log table)
    store = CheckpointStore(url, pool_size=1)
    try:
        lease = store.claim(TOPIC, 0, "owner-a", "log", private_lease(url))
    finally:
        store.close()
    old_rows = [
        (None, "accepted", {}),
        ("accepted", "consumed", {"offset": 0}),
        ("consumed", "processed", {"epoch": 1}),
    ]
    with psycopg.connect(url, autocommit=True) as conn:
        for step, (from_status, to_status, detail) in enumerate(old_rows):
            conn.execute(
                """INSERT INTO audit_log (event_id, from_status, to_status, at, actor, detail)
                   VALUES ('ev-old', %s, %s, now() - interval '1 hour' + %s * interval '1 second', 'owner-a', %s)""",
                (from_status, to_status, step, psycopg.types.json.Jsonb(detail)),
            )
    (old_max,) = query(url, "SELECT max(id) FROM audit_log")[0]

    # when the compact audit's migration runs (twice: it must be safe to run again; the second time from the migrator,
    # with the migrations after it), and a new event commits
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute((MIGRATIONS_DIR / COMPACT).read_text())  # type: ignore[arg-type]
    assert COMPACT in migrate(url)
    store = CheckpointStore(url, pool_size=1)
    try:
        assert store.commit(one_event_batch(TOPIC, lease.epoch, 0, "ev-new")).new_events == 1
    finally:
        store.close()

    # then the old rows read as they were written, and the new event's transitions come after them, with new ids
    assert _trail(url, "ev-old") == [(f, t, "owner-a", d) for f, t, d in old_rows]
    assert [r[1] for r in _trail(url, "ev-new")] == ["accepted", "consumed", "processed"]
    assert query(url, "SELECT min(id) > %s FROM audit_log WHERE event_id = 'ev-new'", old_max) == [(True,)]
    assert query(url, "SELECT count(*) FROM audit_log_legacy") == [(3,)]
    assert query(url, "SELECT relkind::text FROM pg_class WHERE relname = 'audit_log'") == [("v",)]


def test_results_need_no_foreign_key_to_stay_with_their_events(db: str) -> None:
    """The commit writes a result only with its new event row, so the constraint 007 dropped had nothing to catch."""
    store = CheckpointStore(db, pool_size=1)
    try:
        lease = store.claim(TOPIC, 0, "owner-a", "log", private_lease(db))
        assert store.commit(one_event_batch(TOPIC, lease.epoch, 0, "ev-1")).new_events == 1
        assert store.commit(one_event_batch(TOPIC, lease.epoch, 1, "ev-1")).duplicates == 1
    finally:
        store.close()
    assert query(db, "SELECT count(*) FROM results r LEFT JOIN events e ON e.id = r.event_id WHERE e.id IS NULL") == [
        (0,)
    ]
    assert query(db, "SELECT count(*) FROM results") == [(1,)]
