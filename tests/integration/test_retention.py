"""Retention against the real PostgreSQL schema: rows past their window are deleted in bounded chunks, results with
their events, newer rows and read models stay.

Each test gets a database of its own on the session's server (migrated from scratch), so row counts are exact.
Rows are written by the real commit statement, then aged by moving their timestamps back.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import ray
from pydantic import SecretStr

from cluster import cli
from cluster.adapters.checkpoint_store import CheckpointStore
from cluster.adapters.retention import RetainedTable, RetentionPolicy, RetentionStore
from cluster.local import EmbeddedPostgres
from cluster.settings import Settings
from pipelines.batch import DeadLetter
from pipelines.effects import ActionCount
from pipelines.errors import DeadLetterKind
from tests.databases import fresh_database, query
from tests.factories import one_event_batch
from tests.leases import private_lease
from tests.pipeline import Pipeline, unique_prefix

pytestmark = pytest.mark.integration

TOPIC = "retention-topic"
OLD, NEW = 5, 3  # events per age group
DAY = timedelta(days=1)
WINDOWS = {
    RetainedTable.RESULTS: 30 * DAY,
    RetainedTable.EVENTS: 30 * DAY,
    RetainedTable.AUDIT_LOG: 30 * DAY,
    RetainedTable.DEAD_LETTERS: 90 * DAY,
}


@pytest.fixture
def db(embedded_pg: EmbeddedPostgres) -> Iterator[str]:
    """A freshly migrated database of this test's own on the session's server."""
    with fresh_database(embedded_pg, "retention") as url:
        yield url


def _counts(url: str) -> dict[str, int]:
    return {t.value: query(url, f"SELECT count(*) FROM {t.value}")[0][0] for t in RetainedTable}


def _read_models(url: str) -> list[tuple[Any, ...]]:
    return query(url, "SELECT user_id, action, count FROM user_action_counts ORDER BY 1, 2")


def _write(url: str) -> tuple[list[str], list[str]]:
    """OLD + NEW processed events (a result, one audit_trail row showing as three audit_log rows, one user_action
    count each) and one dead letter after each, committed by the real commit statement; returns (old ids, new ids)."""
    store = CheckpointStore(url, pool_size=1)
    try:
        lease = store.claim(TOPIC, 0, "owner", "log", private_lease(url))
        ids = []
        for n in range(OLD + NEW):
            event_id = f"ev-{n}"
            batch = one_event_batch(TOPIC, lease.epoch, 2 * n, event_id, (ActionCount(f"user-{n}", "click"),))
            dead = DeadLetter(2 * n + 1, DeadLetterKind.INVALID, "not JSON", 1, b"x", 0.0)  # no id: no events row
            batch = dataclasses.replace(batch, next_offset=2 * n + 2, dead=(dead,))
            assert store.commit(batch).committed
            ids.append(event_id)
    finally:
        store.close()
    return ids[:OLD], ids[OLD:]


def _age(url: str, ids: list[str], events_by: timedelta, dead_letters_by: timedelta) -> None:
    """Move the rows of these events (and their dead letters, the offset after each `ev-<n>`) back in time."""
    dead_offsets = [2 * int(i.removeprefix("ev-")) + 1 for i in ids if i.startswith("ev-")]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE events SET committed_at = committed_at - %s WHERE id = ANY(%s)", (events_by, ids))
        conn.execute("UPDATE results SET created_at = created_at - %s WHERE event_id = ANY(%s)", (events_by, ids))
        conn.execute(
            """UPDATE audit_trail SET accepted_at = accepted_at - %(by)s, consumed_at = consumed_at - %(by)s,
                      committed_at = committed_at - %(by)s WHERE event_id = ANY(%(ids)s)""",
            {"by": events_by, "ids": ids},
        )
        conn.execute(
            'UPDATE dead_letters SET created_at = created_at - %s WHERE "offset" = ANY(%s)',
            (dead_letters_by, dead_offsets),
        )


def test_rows_past_their_window_go_and_newer_rows_and_read_models_stay(db: str) -> None:
    # given old rows (40 days; dead letters 100 days) and new rows (29 days; dead letters 89 days)
    old, new = _write(db)
    _age(db, old, 40 * DAY, 100 * DAY)
    _age(db, new, 29 * DAY, 89 * DAY)
    read_models = _read_models(db)
    assert _counts(db) == {"results": 8, "events": 8, "audit_log": 24, "dead_letters": 8}

    # when the purge runs with the default windows, in chunks of 2 rows
    purged = RetentionStore(db).purge(RetentionPolicy(WINDOWS, chunk_rows=2, max_chunks=None))

    # then exactly the old rows are gone, table by table, in chunks of at most 2 rows
    assert [(p.table, p.rows, p.chunks, p.finished) for p in purged] == [
        (RetainedTable.RESULTS, OLD, 3, True),  # 2 + 2 + 1
        (RetainedTable.EVENTS, OLD, 3, True),
        (RetainedTable.AUDIT_LOG, OLD, 3, True),  # one audit_trail row per event: its three audit_log rows
        (RetainedTable.DEAD_LETTERS, OLD, 3, True),
    ]
    assert _counts(db) == {"results": NEW, "events": NEW, "audit_log": 3 * NEW, "dead_letters": NEW}
    assert sorted(r[0] for r in query(db, "SELECT id FROM events")) == new
    assert sorted(r[0] for r in query(db, "SELECT DISTINCT event_id FROM audit_log")) == new
    # and the read models, offsets and dedup keys are untouched
    assert _read_models(db) == read_models
    assert query(db, "SELECT next_offset FROM partition_checkpoints WHERE topic = %s", TOPIC) == [(16,)]
    assert query(db, "SELECT count(*) FROM dedup_keys") == [(OLD + NEW,)]


def test_audit_rows_from_before_the_compact_audit_are_purged_first_in_the_same_chunks(db: str) -> None:
    # given old and new events, and transition rows written by the three-row audit (before migration 007): three 40
    # days old, one from yesterday
    old, new = _write(db)
    _age(db, old, 40 * DAY, 100 * DAY)
    query(
        db,
        """INSERT INTO audit_log_legacy (event_id, from_status, to_status, at, actor, detail)
           VALUES ('legacy', NULL, 'accepted', now() - interval '40 days', 'owner', '{}'),
                  ('legacy', 'accepted', 'consumed', now() - interval '40 days', 'owner', '{}'),
                  ('legacy', 'consumed', 'processed', now() - interval '40 days', 'owner', '{}'),
                  ('recent', NULL, 'accepted', now() - interval '1 day', 'owner', '{}')""",
    )
    assert _counts(db)["audit_log"] == 3 * (OLD + NEW) + 4

    # when the audit is purged in chunks of 2 rows
    (purged,) = RetentionStore(db).purge(RetentionPolicy({RetainedTable.AUDIT_LOG: 30 * DAY}, 2, None))

    # then the 3 old legacy rows and the 5 old events' rows are gone (2 + 1 & 1 + 2 + 2 + a last empty chunk)
    assert (purged.rows, purged.chunks, purged.finished) == (3 + OLD, 5, True)
    assert sorted({r[0] for r in query(db, "SELECT event_id FROM audit_log")}) == sorted([*new, "recent"])
    assert _counts(db)["audit_log"] == 3 * NEW + 1


def test_results_go_with_their_events_even_when_results_are_kept_forever(db: str) -> None:
    old, _new = _write(db)
    _age(db, old, 40 * DAY, 40 * DAY)
    (purged,) = RetentionStore(db).purge(RetentionPolicy({RetainedTable.EVENTS: 30 * DAY}, 100, None))
    assert (purged.table, purged.rows, purged.results) == (RetainedTable.EVENTS, OLD, OLD)
    assert _counts(db) == {"results": NEW, "events": NEW, "audit_log": 3 * (OLD + NEW), "dead_letters": OLD + NEW}


def test_one_purge_deletes_no_more_than_its_chunk_budget_and_the_next_one_goes_on(db: str) -> None:
    # given 5 old events
    old, _new = _write(db)
    _age(db, old, 40 * DAY, 40 * DAY)
    policy = RetentionPolicy({RetainedTable.EVENTS: 30 * DAY}, chunk_rows=2, max_chunks=1)
    # when a purge may run one chunk of 2 rows
    (first,) = RetentionStore(db).purge(policy)
    # then it deletes 2 events (with their results) and says more are left
    assert (first.rows, first.results, first.chunks, first.finished) == (2, 2, 1, False)
    assert _counts(db)["events"] == OLD + NEW - 2
    # and the next purges take the rest, oldest first, never more than a chunk each
    assert [RetentionStore(db).purge(policy)[0].rows for _ in range(3)] == [2, 1, 0]
    assert _counts(db)["events"] == NEW


def test_a_window_of_zero_keeps_rows_forever(db: str) -> None:
    old, _new = _write(db)
    _age(db, old, 4000 * DAY, 4000 * DAY)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, events_retention_days=0, results_retention_days=0, audit_retention_days=0
    )
    policy = RetentionPolicy.from_settings(settings)
    assert set(policy.windows) == {RetainedTable.DEAD_LETTERS}
    (purged,) = RetentionStore(db).purge(policy)
    assert (purged.table, purged.rows) == (RetainedTable.DEAD_LETTERS, OLD)
    assert _counts(db) == {"results": 8, "events": 8, "audit_log": 24, "dead_letters": NEW}


def test_the_leader_purges_rows_past_their_window_from_the_pipeline_database(pipeline: Pipeline) -> None:
    # given, in the running pipeline's database, an event committed 40 days ago and one committed now
    topic = unique_prefix("retention-leader")
    store = CheckpointStore(pipeline.db_url, pool_size=1)
    try:
        lease = store.claim(topic, 0, "owner", "log", private_lease(pipeline.db_url))
        for n in range(2):
            assert store.commit(one_event_batch(topic, lease.epoch, n, f"{topic}:{n}")).committed
    finally:
        store.close()
    old, new = f"{topic}:0", f"{topic}:1"
    _age(pipeline.direct_db_url, [old], 40 * DAY, 40 * DAY)

    # when the leader runs its retention purge (its housekeeping thread does every purge_interval_s)
    purged = ray.get(pipeline.leader.purge_retention.remote(), timeout=120)

    # then the old event is gone with its result and audit rows, and the new one is kept whole
    assert purged["events"] >= 1 and purged["results"] + purged["results_of_events"] >= 1
    for table, key in (("events", "id"), ("results", "event_id"), ("audit_log", "event_id")):
        assert pipeline.query(f"SELECT count(*) FROM {table} WHERE {key} = %s", old) == [(0,)]
        assert pipeline.query(f"SELECT count(*) FROM {table} WHERE {key} = %s", new) != [(0,)]


def test_eventpipe_purge_runs_until_nothing_past_its_window_is_left(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # given 5 old events and dead letters, and a budget of one 2-row chunk per table and round
    old, _new = _write(db)
    _age(db, old, 40 * DAY, 100 * DAY)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, kafka_bootstrap="unused:9092", retention_chunk_rows=2, retention_max_chunks=1
    ).model_copy(update={"database_url": SecretStr(db)})
    # when the operator runs `eventpipe purge`
    assert cli.cmd_purge(settings) == 0
    # then every old row is gone (the round budget does not apply on demand), in 2-row chunks, and it says so
    assert _counts(db) == {"results": NEW, "events": NEW, "audit_log": 3 * NEW, "dead_letters": NEW}
    out = capsys.readouterr().out
    assert re.search(r"audit_log\s*│\s*5\s*│\s*3\s*│", out), out  # 5 audit_trail rows in 3 chunks
    assert re.search(r"events\s*│\s*5\s*│\s*3\s*│", out), out
