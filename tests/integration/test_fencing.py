"""Fencing: a zombie owner whose epoch was superseded commits nothing, in the database itself.

Both at the store (compare-and-set on the partition row) and with a second live owner actor for one partition.
"""

from __future__ import annotations

import dataclasses
import random

import httpx
import pytest
import ray

from actors.partition_owner import PartitionOwner
from cluster.adapters.checkpoint_store import CheckpointStore
from tests.factories import Expected, one_event_batch, read_models, valid_event
from tests.leases import private_lease
from tests.pipeline import Pipeline, unique_prefix, wait_until

pytestmark = pytest.mark.integration


def test_commit_with_a_stale_epoch_writes_nothing(pipeline: Pipeline) -> None:
    topic = unique_prefix("fence-topic")
    store = CheckpointStore(pipeline.db_url, pool_size=1)
    try:
        leader = private_lease(pipeline.db_url)
        old = store.claim(topic, 0, "old-owner", "log-a", leader)
        new = store.claim(topic, 0, "new-owner", "log-a", leader)
        assert new.epoch == old.epoch + 1

        zombie = store.commit(one_event_batch(topic, old.epoch, old.next_offset, f"{topic}:zombie"))
        assert zombie.fenced and not zombie.committed and zombie.current_epoch == new.epoch
        assert pipeline.scalar("SELECT count(*) FROM events WHERE id = %s", f"{topic}:zombie") == 0
        assert pipeline.scalar("SELECT count(*) FROM dedup_keys WHERE event_id = %s", f"{topic}:zombie") == 0
        assert store.checkpoint(topic, 0) == (new.epoch, 0)

        live = store.commit(one_event_batch(topic, new.epoch, new.next_offset, f"{topic}:live"))
        assert live.committed and live.new_events == 1
        # the same batch again (its acknowledgement lost): recognised, not applied twice
        again = store.commit(one_event_batch(topic, new.epoch, new.next_offset, f"{topic}:live"))
        assert again.committed and again.already_committed and again.new_events == 0
        # a batch that does not continue from the checkpoint is refused too
        gap = store.commit(one_event_batch(topic, new.epoch, 5, f"{topic}:gap"))
        assert not gap.committed
    finally:
        store.close()


def test_superseded_owner_actor_is_fenced_and_effects_stay_exactly_once(pipeline: Pipeline) -> None:
    prefix = unique_prefix("zombie")
    topic = pipeline.settings.topic("sensor")
    # a second owner for partition 0 claims it: the named owner becomes a zombie with a stale epoch
    named = next(s for s in pipeline.owner_statuses() if s["topic"] == topic and s["partition"] == 0)
    usurper = PartitionOwner.options(max_concurrency=4, max_restarts=0).remote(pipeline.settings, topic, 0)
    try:
        wait_until(lambda: ray.get(usurper.status.remote())["state"] == "running", 30, "the usurper to claim")
        rng = random.Random(5)
        events = [valid_event(prefix, 3 * n + 1, rng) for n in range(400)]  # sensor events only
        with httpx.Client(base_url=pipeline.base_url, headers=pipeline.headers, timeout=30) as client:
            for start in range(0, 400, 100):
                r = client.post("/events/batch", json=events[start : start + 100])
                assert r.status_code == 202, r.text
        ids = [e["id"] for e in events]
        wait_until(
            lambda: pipeline.scalar("SELECT count(*) FROM events WHERE id = ANY(%s)", ids) == 400,
            timeout_s=60,
            what="400 events committed",
        )
        expected = Expected()
        for e in events:
            expected.add(e)
        assert read_models(pipeline, prefix).device_count == expected.device_count
        assert pipeline.scalar("SELECT count(*) FROM results WHERE event_id = ANY(%s)", ids) == 400

        # the stale owner tried to commit, was refused by the database, and stopped
        def fenced_pids() -> set[int]:
            fenced = ray.get(pipeline.leader.fenced_owners.remote())
            pids = {int(f["pid"]) for f in fenced if f["topic"] == topic and f["partition"] == 0}
            if ray.get(usurper.status.remote())["state"] == "fenced":
                pids.add(int(ray.get(usurper.status.remote())["pid"]))
            return pids

        assert named["pid"] in wait_until(fenced_pids, timeout_s=30, what="the stale owner to be fenced")
    finally:
        ray.kill(usurper, no_restart=True)
    # the named owner recovers on its own (the leader restarts a fenced owner) and keeps processing
    wait_until(
        lambda: (
            next(s for s in pipeline.owner_statuses() if s["topic"] == topic and s["partition"] == 0)["state"]
            == "running"
        ),
        timeout_s=60,
        what="partition 0's owner to run again",
    )


def test_offsets_skipped_as_a_hole_are_recorded_in_the_same_commit(pipeline: Pipeline) -> None:
    topic = unique_prefix("gap-topic")
    store = CheckpointStore(pipeline.db_url, pool_size=1)
    try:
        lease = store.claim(topic, 0, "owner", "log-a", private_lease(pipeline.db_url))
        batch = dataclasses.replace(one_event_batch(topic, lease.epoch, 7, f"{topic}:after-hole"), expected_offset=0)
        outcome = store.commit(dataclasses.replace(batch, skipped=(0, 7)))
        assert outcome.committed and outcome.new_events == 1
        assert store.checkpoint(topic, 0) == (lease.epoch, 8)
        assert pipeline.query(
            "SELECT from_offset, to_offset, epoch FROM offset_gaps WHERE topic = %s AND partition = 0", topic
        ) == [(0, 7, lease.epoch)]
    finally:
        store.close()
