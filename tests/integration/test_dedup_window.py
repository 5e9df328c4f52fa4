"""The dedup window: keys expire after their TTL and are purged, yet an expired id is still never applied twice.

Runs against the real PostgreSQL schema through the checkpoint store.
"""

from __future__ import annotations

import pytest

from cluster.adapters.checkpoint_store import CheckpointStore
from pipelines.effects import ActionCount
from tests.factories import one_event_batch
from tests.leases import private_lease
from tests.pipeline import Pipeline, unique_prefix

pytestmark = pytest.mark.integration


def test_expired_dedup_keys_are_purged_and_the_event_table_still_refuses_the_id(pipeline: Pipeline) -> None:
    topic = unique_prefix("dedup-topic")
    user = f"{unique_prefix('dedup')}-u"
    event_id = f"{topic}:e1"
    store = CheckpointStore(pipeline.db_url, pool_size=1)
    try:
        lease = store.claim(topic, 0, "owner", "log", private_lease(pipeline.db_url))
        first = store.commit(one_event_batch(topic, lease.epoch, 0, event_id, (ActionCount(user, "click"),), user))
        assert first.new_events == 1
        expires = pipeline.scalar("SELECT expires_at - first_seen FROM dedup_keys WHERE event_id = %s", event_id)
        assert expires.total_seconds() == 24 * 3600

        pipeline.query("UPDATE dedup_keys SET expires_at = now() - interval '1 hour' WHERE event_id = %s", event_id)
        assert store.purge_dedup() >= 1
        assert pipeline.scalar("SELECT count(*) FROM dedup_keys WHERE event_id = %s", event_id) == 0

        again = store.commit(one_event_batch(topic, lease.epoch, 1, event_id, (ActionCount(user, "click"),), user))
        assert again.committed and again.new_events == 0 and again.duplicates == 1
        assert pipeline.scalar("SELECT count FROM user_action_counts WHERE user_id = %s", user) == 1
        assert pipeline.scalar("SELECT count(*) FROM results WHERE event_id = %s", event_id) == 1
    finally:
        store.close()
