"""Read models hold what the edge accepts for a lifetime: a user's total passes numeric(24,6)'s 1e18 and is exact.

Only the embedded PostgreSQL (no Ray, no broker): the store's commit statement against the migrated schema.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import psycopg
import pytest

from cluster.adapters.checkpoint_store import CheckpointStore
from cluster.adapters.migrations import migrate
from pipelines.effects import DeviceReading, UserSpend
from pipelines.units import MAX_SI_MAGNITUDE
from tests.factories import one_event_batch
from tests.leases import private_lease

pytestmark = pytest.mark.integration


def test_a_users_total_beyond_1e18_is_committed_exactly_and_extreme_readings_stay_finite(pg_url: str) -> None:
    # given a migrated schema and a partition of our own
    migrate(pg_url)
    topic = f"bounds-{uuid.uuid4().hex[:8]}"
    user, device = f"{topic}-user", f"{topic}-device"
    amount = Decimal("600000000000000000.123456")  # two of them pass numeric(24, 6)'s limit of 1e18
    store = CheckpointStore(pg_url, pool_size=1)
    try:
        lease = store.claim(topic, 0, "bounds-test", "log-a", private_lease(pg_url))

        # when two batches add to the same user's total and the same device's statistics
        for offset in (0, 1):
            effects = (
                UserSpend(user, "USD", amount, False),
                DeviceReading(device, "Pa", MAX_SI_MAGNITUDE, False),
            )
            outcome = store.commit(one_event_batch(topic, lease.epoch, offset, f"{topic}:{offset}", effects))
            assert outcome.committed and outcome.new_events == 1
    finally:
        store.close()

    # then both are stored, the total exactly with its 6 decimals
    with psycopg.connect(pg_url) as conn:
        total = conn.execute("SELECT total_amount::text FROM user_totals WHERE user_id = %s", (user,)).fetchone()
        stats = conn.execute(
            "SELECT reading_sum, reading_max FROM device_stats WHERE device_id = %s", (device,)
        ).fetchone()
    assert total == ("1200000000000000000.246912",)
    assert stats == (2 * MAX_SI_MAGNITUDE, MAX_SI_MAGNITUDE)
