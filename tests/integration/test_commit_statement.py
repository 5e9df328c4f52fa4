"""The commit statement against the real PostgreSQL schema: every column of the positional commit document lands in
its column (events, results, read models, dead letters, gaps).

Each test gets a database of its own on the session's server. No Ray, no broker: commits go through CheckpointStore.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from cluster.adapters.checkpoint_store import CheckpointStore
from cluster.local import EmbeddedPostgres
from pipelines.batch import DeadLetter
from pipelines.effects import ActionCount, DeviceReading, UserSpend
from pipelines.errors import DeadLetterKind
from tests.databases import fresh_database, query
from tests.factories import one_event_batch
from tests.leases import private_lease

pytestmark = pytest.mark.integration

TOPIC = "statement-topic"


@pytest.fixture
def db(embedded_pg: EmbeddedPostgres) -> Iterator[str]:
    with fresh_database(embedded_pg, "statement") as url:
        yield url


def test_every_field_of_the_document_lands_in_its_column(db: str) -> None:
    store = CheckpointStore(db, pool_size=1)
    try:
        lease = store.claim(TOPIC, 0, "owner-a", "log", private_lease(db))
        # given a batch over offsets 0..9: an event with lineage and all three effects, one without lineage, a bare
        # dead letter, and offsets 5..9 skipped as a hole
        base = one_event_batch(TOPIC, lease.epoch, 0, "ev-1")
        effects = (
            UserSpend("user-1", "EUR", Decimal("1.620000"), True),
            DeviceReading("dev-1", "K", 294.5, False),
            ActionCount("user-1", "click"),
        )
        rich = dataclasses.replace(
            base.processed[0],
            schema_version=2,
            payload_json='{"type": "user_action", "n": 1}',
            result_json='{"ok": true}',
            effects=effects,
            received_at=1_764_000_000.25,
            attempts=2,
            correlation_id="corr",
            causation_id="cause",
            parent_ids=("p1", 'p"2'),
            idempotency_key="idem",
            trace_context="00-trace",
        )
        plain = dataclasses.replace(base.processed[0], event_id="ev-2", offset=1)
        bare = DeadLetter(2, DeadLetterKind.INVALID, "not JSON", 1, b"\x00\xffraw", 1.0)
        batch = dataclasses.replace(
            base, processed=(rich, plain), dead=(bare,), next_offset=10, skipped=(5, 10), consumed_at=1_764_000_001.5
        )
        # when it commits
        outcome = store.commit(batch)
    finally:
        store.close()

    # then every value is where it belongs
    assert (outcome.committed, outcome.new_events, outcome.duplicates, outcome.dead_letters) == (True, 2, 0, 1)
    events = query(
        db,
        """SELECT id, type, schema_version, status, topic, partition, "offset", entity_key, correlation_id,
                  causation_id, parent_ids, idempotency_key, trace_context, payload, received_at, consumed_at, attempts
             FROM events ORDER BY id""",
    )
    assert events[0] == (
        "ev-1",
        "user_action",
        2,
        "processed",
        TOPIC,
        0,
        0,
        "d",
        "corr",
        "cause",
        ["p1", 'p"2'],
        "idem",
        "00-trace",
        {"type": "user_action", "n": 1},
        datetime.fromtimestamp(1_764_000_000.25, UTC),
        datetime.fromtimestamp(1_764_000_001.5, UTC),
        2,
    )
    assert events[1][0] == "ev-2" and events[1][10] == [] and events[1][8] is None
    assert query(db, "SELECT event_id, type, result FROM results ORDER BY 1") == [
        ("ev-1", "user_action", {"ok": True}),
        ("ev-2", "user_action", {}),
    ]
    assert query(db, "SELECT user_id, base_currency, total_amount, tx_count, flagged_count FROM user_totals") == [
        ("user-1", "EUR", Decimal("1.620000"), 1, 1)
    ]
    assert query(db, "SELECT device_id, si_unit, reading_count, reading_sum, out_of_range_count FROM device_stats") == [
        ("dev-1", "K", 1, 294.5, 0)
    ]
    assert query(db, "SELECT user_id, action, count FROM user_action_counts") == [("user-1", "click", 1)]
    assert query(db, 'SELECT event_id, "offset", error_kind, reason, attempts, payload FROM dead_letters') == [
        (None, 2, "invalid", "not JSON", 1, b"\x00\xffraw")
    ]
    assert query(db, "SELECT from_offset, to_offset, epoch, owner_id FROM offset_gaps") == [
        (5, 10, lease.epoch, "test")
    ]
    assert query(db, "SELECT next_offset FROM partition_checkpoints WHERE topic = %s", TOPIC) == [(10,)]
