"""Leader election and fencing across Ray clusters: the leader lease in PostgreSQL, takeover after a leader dies,
and a checkpoint writer killed mid-commit.

Store-level specs first, then the session pipeline with a second Ray cluster (a subprocess) on the same database
and broker, then SIGKILLs of the leader and of a writer. Every test leaves the session pipeline with its leader
holding the lease and every partition owned.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray

from actors import names
from cluster.adapters.checkpoint_store import CheckpointStore
from cluster.adapters.leases import LeaderLease, LeaseNotHeld, LeaseStore
from tests.factories import Expected, read_models, valid_event
from tests.pipeline import Pipeline, unique_prefix, wait_until
from tests.second_cluster import SecondCluster

pytestmark = pytest.mark.integration


# -- helpers ----------------------------------------------------------------------------------------
@pytest.fixture
def leases(pipeline: Pipeline) -> Iterator[LeaseStore]:
    store = LeaseStore(pipeline.db_url)
    yield store
    store.close()


@pytest.fixture
def store(pipeline: Pipeline) -> Iterator[CheckpointStore]:
    checkpoint_store = CheckpointStore(pipeline.db_url, pool_size=1)
    yield checkpoint_store
    checkpoint_store.close()


def checkpoints(pipeline: Pipeline) -> dict[tuple[str, int], tuple[int, str]]:
    """(topic, partition) -> (epoch, owner_id) for the session pipeline's partitions."""
    rows = pipeline.query(
        "SELECT topic, partition, epoch, owner_id FROM partition_checkpoints WHERE topic = ANY(%s)",
        pipeline.settings.owned_topics(),
    )
    return {(t, p): (e, o) for t, p, e, o in rows}


def send(pipeline: Pipeline, events: list[dict[str, Any]]) -> None:
    with httpx.Client(base_url=pipeline.base_url, headers=pipeline.headers, timeout=30) as client:
        for start in range(0, len(events), 50):
            response = client.post("/events/batch", json=events[start : start + 50])
            assert response.status_code == 202, response.text
            assert response.json()["accepted"] == len(events[start : start + 50])


def assert_processed_exactly_once(pipeline: Pipeline, events: list[dict[str, Any]], prefix: str) -> None:
    ids = [e["id"] for e in events]
    wait_until(
        lambda: pipeline.scalar("SELECT count(*) FROM results WHERE event_id = ANY(%s)", ids) == len(ids),
        timeout_s=90,
        what=f"{len(ids)} events processed",
    )
    assert pipeline.scalar("SELECT count(*) FROM events WHERE id = ANY(%s)", ids) == len(ids)
    processed_twice = pipeline.query(
        "SELECT event_id FROM audit_log WHERE event_id = ANY(%s) AND to_status = 'processed' "
        "GROUP BY event_id HAVING count(*) <> 1",
        ids,
    )
    assert processed_twice == []
    expected = Expected()
    for event in events:
        expected.add(event)
    seen = read_models(pipeline, prefix)
    assert seen.spend == expected.spend
    assert seen.tx_count == expected.tx_count
    assert seen.device_count == expected.device_count
    assert seen.action_count == expected.action_count


def processed_by(pipeline: Pipeline, events: list[dict[str, Any]]) -> set[str]:
    """The owner ids that committed these events (the audit row of the 'processed' step)."""
    rows = pipeline.query(
        "SELECT DISTINCT actor FROM audit_log WHERE event_id = ANY(%s) AND to_status = 'processed'",
        [e["id"] for e in events],
    )
    return {r[0] for r in rows}


def leader_call(pipeline: Pipeline, method: str, timeout_s: float = 30.0) -> Any:
    return ray.get(getattr(pipeline.leader, method).remote(), timeout=timeout_s)


def healthy(pipeline: Pipeline) -> bool:
    """The session leader holds the lease and every partition has a running owner."""
    try:
        if not leader_call(pipeline, "ready", timeout_s=10):
            return False
        statuses = pipeline.owner_statuses()
    except (ray.exceptions.RayError, TimeoutError):
        return False
    return len(statuses) == len(leader_call(pipeline, "partitions")) and all(s["state"] == "running" for s in statuses)


def holds_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Assert that `condition` stays true for the whole period (a thing that must NOT happen, watched)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert condition(), what
        time.sleep(0.5)


def events_for(prefix: str, count: int, seed: int, start: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [valid_event(prefix, n, rng) for n in range(start, start + count)]


# -- (a) the lease at the store ----------------------------------------------------------------------
def test_a_second_holder_cannot_take_an_unexpired_lease_and_takes_an_expired_one_with_a_new_epoch(
    leases: LeaseStore,
) -> None:
    name = unique_prefix("lease")
    a = leases.acquire(name, "cluster-a", ttl_s=1.0)
    assert a is not None
    assert leases.acquire(name, "cluster-b", ttl_s=30.0) is None
    info = leases.current(name)
    assert info is not None and info.holder == "cluster-a" and not info.expired

    again = leases.acquire(name, "cluster-a", ttl_s=1.0)  # ours: taken again, same epoch
    assert again is not None and again.epoch == a.epoch
    wait_until(lambda: leases.current(name).expired, timeout_s=10, what="the lease to expire")  # type: ignore[union-attr]

    b = leases.acquire(name, "cluster-b", ttl_s=30.0)
    assert b is not None and b.epoch == a.epoch + 1
    assert leases.renew(a) is None  # the old holder cannot renew any more
    assert leases.renew(b) == b

    assert leases.release(b)  # handed over: the next holder need not wait for the TTL
    c = leases.acquire(name, "cluster-a", ttl_s=30.0)
    assert c is not None and c.epoch == b.epoch + 1


def test_a_claim_without_the_live_leader_lease_fails_and_changes_nothing(
    pipeline: Pipeline, leases: LeaseStore, store: CheckpointStore
) -> None:
    name, topic = unique_prefix("lease"), unique_prefix("lease-topic")
    mine = leases.acquire(name, "cluster-a", ttl_s=30.0)
    assert mine is not None
    first = store.claim(topic, 0, "owner-a", "log", mine)

    not_held = [
        LeaderLease(name, "cluster-b", mine.epoch, 30.0),  # another cluster
        dataclasses.replace(mine, epoch=mine.epoch + 1),  # an epoch nobody holds
        LeaderLease(unique_prefix("lease"), "cluster-a", 1, 30.0),  # a lease never acquired
    ]
    for lease in not_held:
        with pytest.raises(LeaseNotHeld, match="may not claim|must acquire"):
            store.claim(topic, 0, "intruder", "log", lease)

    short = leases.acquire(unique_prefix("lease"), "cluster-a", ttl_s=0.5)
    assert short is not None
    wait_until(lambda: leases.current(short.name).expired, timeout_s=10, what="the lease to expire")  # type: ignore[union-attr]
    with pytest.raises(LeaseNotHeld, match="expired"):
        store.claim(topic, 0, "intruder", "log", short)

    assert pipeline.query(
        "SELECT epoch, owner_id FROM partition_checkpoints WHERE topic = %s AND partition = 0", topic
    ) == [(first.epoch, "owner-a")]


def test_the_session_leader_holds_the_lease_and_claims_only_under_it(pipeline: Pipeline, leases: LeaseStore) -> None:
    info = leader_call(pipeline, "leadership")
    assert info["role"] == "active" and info["name"] == "leader"
    row = leases.current("leader")
    assert row is not None and row.holder == info["holder"] and row.epoch == info["epoch"] and not row.expired
    assert info["holder"].startswith("ray-session_")  # derived from the Ray cluster: no cluster_name configured
    claimed = {key: (v["epoch"], v["owner_id"]) for key, v in info["assigned"].items()}
    assert claimed == {f"{t}:{p}": v for (t, p), v in checkpoints(pipeline).items()}


# -- (b) two Ray clusters on one database ------------------------------------------------------------
def test_a_second_ray_cluster_stands_by_and_takes_over_only_when_the_first_loses_its_lease(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    ttl = pipeline.settings.leader_lease_ttl_s
    first = leader_call(pipeline, "leadership")
    prefix = unique_prefix("split")
    settings_b = pipeline.settings.model_copy(
        update={"cluster_name": unique_prefix("cluster-b"), "ray_namespace": unique_prefix("eventpipe-b")}
    )
    b = SecondCluster(settings_b, tmp_path / "cluster-b.log")
    leader_pid = leader_call(pipeline, "pid")
    stopped = False
    try:
        # Given a second cluster on the same database: it stands by and claims nothing
        wait_until(lambda: b.leadership()["held_by"] == first["holder"], 60, "cluster B to see A's lease")
        before = checkpoints(pipeline)
        standby = lambda: b.leadership()["role"] == "standby" and not b.leadership()["assigned"]  # noqa: E731
        holds_for(standby, 2 * ttl, "cluster B claimed while A held the lease")
        assert checkpoints(pipeline) == before
        assert b.owners() == []

        early = events_for(prefix, 60, seed=1)
        send(pipeline, early)
        assert_processed_exactly_once(pipeline, early, prefix)
        a_owners = {owner_id for _, owner_id in before.values()}
        assert processed_by(pipeline, early) <= a_owners
        assert checkpoints(pipeline) == before

        # When A's leader hangs past its lease (SIGSTOP), B takes over: new epochs, B's owners
        os.kill(leader_pid, signal.SIGSTOP)
        stopped = True
        wait_until(
            lambda: b.leadership()["role"] == "active" and len(b.leadership()["assigned"]) == len(before),
            timeout_s=90,
            what="cluster B to take the lease and claim every partition",
        )
        taken = b.leadership()
        assert taken["epoch"] == first["epoch"] + 1
        b_owners = {v["owner_id"] for v in taken["assigned"].values()}
        now = checkpoints(pipeline)
        assert all(now[k][0] > before[k][0] and now[k][1] in b_owners for k in before)

        # events sent now are processed once, by B; A's owners that read them are fenced by the database
        late = events_for(prefix, 60, seed=2, start=60)
        send(pipeline, late)
        assert_processed_exactly_once(pipeline, early + late, prefix)
        assert processed_by(pipeline, late) <= b_owners
        read_late = pipeline.query(
            "SELECT DISTINCT topic, partition FROM events WHERE id = ANY(%s)", [e["id"] for e in late]
        )
        assert read_late
        wait_until(
            lambda: all(owner_state(t, p) == "fenced" for t, p in read_late),
            timeout_s=60,
            what="A's owners that read the late events to be fenced",
        )

        # A's leader wakes up: it finds B's lease, stands by and stops its owners
        os.kill(leader_pid, signal.SIGCONT)
        stopped = False
        wait_until(
            lambda: standing_by_behind(leader_call(pipeline, "leadership"), taken["holder"]),
            timeout_s=30,
            what="A to stand by behind B's lease",
        )
        wait_until(lambda: pipeline.owner_statuses() == [], timeout_s=30, what="A's owners to be stopped")
    finally:
        if stopped:
            os.kill(leader_pid, signal.SIGCONT)
        # Then B hands over (releases the lease on stop) and A takes office again with a new epoch
        b.stop()
    wait_until(lambda: healthy(pipeline), timeout_s=120, what="the session leader to own every partition again")
    back = leader_call(pipeline, "leadership")
    assert back["holder"] == first["holder"] and back["epoch"] == first["epoch"] + 2
    after = events_for(prefix, 30, seed=3, start=120)
    send(pipeline, after)
    assert_processed_exactly_once(pipeline, early + late + after, prefix)
    assert processed_by(pipeline, after) <= {v["owner_id"] for v in back["assigned"].values()}


def standing_by_behind(leadership: dict[str, Any], holder: str) -> bool:
    return leadership["role"] == "standby" and leadership["held_by"] == holder and not leadership["assigned"]


def owner_state(topic: str, partition: int) -> str:
    """State of the session cluster's named owner, asked directly (not through its leader, which may be paused)."""
    try:
        owner = ray.get_actor(names.owner_name(topic, partition))
        return str(ray.get(owner.status.remote(), timeout=10)["state"])
    except (ValueError, ray.exceptions.RayError):
        return "gone"


# -- (c) the leader SIGKILLed during a reassignment ---------------------------------------------------
def test_a_leader_killed_during_a_reassignment_is_replaced_and_every_partition_is_claimed_again(
    pipeline: Pipeline,
) -> None:
    prefix = unique_prefix("leader-kill")
    before_events = events_for(prefix, 90, seed=4)
    send(pipeline, before_events)
    assert_processed_exactly_once(pipeline, before_events, prefix)
    before = checkpoints(pipeline)
    old_pid = leader_call(pipeline, "pid")
    topic = pipeline.settings.topic("sensor")
    victim = next(s for s in pipeline.owner_statuses() if s["topic"] == topic and s["partition"] == 0)

    # When an owner dies and the leader dies with it, while its replacement needs the leader to claim
    os.kill(int(victim["pid"]), signal.SIGKILL)
    os.kill(old_pid, signal.SIGKILL)
    during = events_for(prefix, 90, seed=5, start=90)
    send(pipeline, during)

    # Then Ray starts a new leader instance, which takes the lease back at once and re-claims every partition
    wait_until(lambda: healthy(pipeline), timeout_s=120, what="a new leader with every partition owned")
    assert leader_call(pipeline, "pid") != old_pid
    after = checkpoints(pipeline)
    assert all(after[k][0] > before[k][0] for k in before), (before, after)
    after_events = events_for(prefix, 90, seed=6, start=180)
    send(pipeline, after_events)
    assert_processed_exactly_once(pipeline, before_events + during + after_events, prefix)


# -- node/worker failure: a checkpoint writer SIGKILLed mid-commit ------------------------------------
def test_a_writer_killed_mid_commit_comes_back_and_nothing_acknowledged_is_lost_or_applied_twice(
    pipeline: Pipeline,
) -> None:
    prefix = unique_prefix("writer-kill")
    writer = ray.get_actor(names.writer_name(0))
    old_pid = ray.get(writer.pid.remote(), timeout=30)
    events = events_for(prefix, 600, seed=7)

    def stream() -> None:
        for start in range(0, len(events), 20):  # many small batches: commits are in flight all the time
            send(pipeline, events[start : start + 20])

    # The sender runs beside the kill; its failures (an assert on a 202) are raised here by result(), not lost
    # with its thread.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer-kill-sender") as pool:
        sender = pool.submit(stream)
        ids = [e["id"] for e in events]
        wait_until(
            lambda: sender.done() or pipeline.scalar("SELECT count(*) FROM events WHERE id = ANY(%s)", ids) >= 50,
            timeout_s=60,
            what="commits under way",
        )
        os.kill(old_pid, signal.SIGKILL)
        sender.result(timeout=120)

    wait_until(lambda: ray.get(writer.pid.remote(), timeout=10) != old_pid, timeout_s=60, what="the writer to restart")
    assert_processed_exactly_once(pipeline, events, prefix)
    wait_until(lambda: healthy(pipeline), timeout_s=60, what="every owner running")
