"""Leader faults under load: the leader SIGKILLed while an owner is being reassigned, and a zombie owner (SIGSTOPped
with a batch in flight while a replacement takes its partition) that must commit nothing once it wakes up.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import ray

from actors.partition_owner import PartitionOwner
from tests.chaos import targets
from tests.chaos.harness import FAULT_S, Expect, Scenario, steady
from tests.pipeline import Pipeline, wait_until

RESTART_TIMEOUT_S = 120.0
# The API does not depend on the leader nor on one owner: clients are not affected.
EXPECT = Expect(min_acked=0.95)


def epochs(scenario: Scenario) -> dict[tuple[str, int], int]:
    rows = scenario.query(
        "SELECT topic, partition, epoch FROM partition_checkpoints WHERE topic = ANY(%s)",
        scenario.pipeline.settings.owned_topics(),
    )
    return {(t, p): int(e) for t, p, e in rows}


def leader_ready(pipeline: Pipeline) -> int | None:
    """The leader's pid once it holds the lease and every partition is claimed; None meanwhile."""
    try:
        if ray.get(pipeline.leader.ready.remote(), timeout=10):
            return int(ray.get(pipeline.leader.pid.remote(), timeout=10))
    except (ray.exceptions.RayError, TimeoutError):
        pass
    return None


def test_leader_killed_during_a_reassignment(scenario: Scenario) -> None:
    pipeline = scenario.pipeline
    with scenario.workload(rate=200):
        steady(0.5)
        leader_pid = ray.get(pipeline.leader.pid.remote(), timeout=30)
        status = targets.wait_in_flight(pipeline)
        topic, partition = status["topic"], status["partition"]
        before = epochs(scenario)
        with scenario.fault(f"owner {topic}[{partition}] and the leader SIGKILLed together"):
            # the owner's restart must claim through a leader that is itself restarting
            scenario.sigkill(status["pid"], f"owner {topic}[{partition}] (epoch {status['epoch']})")
            scenario.sigkill(leader_pid, "the leader")
            new_pid = wait_until(
                lambda: (pid := leader_ready(pipeline)) is not None and pid != leader_pid and pid,
                RESTART_TIMEOUT_S,
                "a new leader instance with every partition claimed",
            )
        scenario.note(f"new leader instance pid {new_pid}")
        after = epochs(scenario)
        assert all(after[k] > before[k] for k in before), (before, after)  # every partition was claimed again
        steady(FAULT_S)
    scenario.verify(expect=EXPECT)


def test_zombie_owner_commits_nothing_after_its_replacement_claimed(scenario: Scenario) -> None:
    pipeline = scenario.pipeline
    replacement: Any = None
    with scenario.workload(rate=200):
        steady(0.5)
        zombie = targets.wait_in_flight(pipeline)
        topic, partition, pid = zombie["topic"], zombie["partition"], int(zombie["pid"])
        try:
            with scenario.fault(f"owner {topic}[{partition}] SIGSTOPped with a batch in flight, replaced"):
                os.kill(pid, signal.SIGSTOP)
                scenario.note(f"SIGSTOP owner {topic}[{partition}] (pid {pid}, epoch {zombie['epoch']})")
                replacement = PartitionOwner.options(max_concurrency=4, max_restarts=0).remote(
                    pipeline.settings, topic, partition
                )
                started = wait_until(
                    lambda: _status(replacement, lambda s: s["state"] == "running" and s["batches"] > 0),
                    60,
                    "the replacement to claim the partition and commit",
                )
                claimed_by_then = scenario.scalar("SELECT clock_timestamp()")
                scenario.note(f"replacement {started['owner_id']} at epoch {started['epoch']} commits")
                steady(FAULT_S)  # the zombie stays paused well past the replacement's claim
                os.kill(pid, signal.SIGCONT)
                scenario.note(f"SIGCONT owner {topic}[{partition}]")
            # the zombie's commit is refused by the compare-and-set: it stops as fenced, having written nothing
            wait_until(
                lambda: _fenced(pipeline, topic, partition, pid), 60, "the zombie to find itself fenced and stop"
            )
            assert (
                scenario.scalar(
                    "SELECT count(*) FROM audit_log WHERE actor = %s AND at > %s", zombie["owner_id"], claimed_by_then
                )
                == 0
            )
            assert scenario.scalar(
                "SELECT epoch FROM partition_checkpoints WHERE topic = %s AND partition = %s", topic, partition
            ) > int(zombie["epoch"])
        finally:
            if _alive(pid):
                os.kill(pid, signal.SIGCONT)  # harmless when already resumed; never leave a stopped process behind
            if replacement is not None:
                ray.kill(replacement, no_restart=True)
                scenario.note("replacement removed")
        # the leader restarts the fenced named owner, which claims the partition back
        back = wait_until(
            lambda: targets.owner_restarted(pipeline, topic, partition, pid),
            RESTART_TIMEOUT_S,
            "the named owner to run again",
        )
        scenario.note(f"named owner back as pid {back['pid']} at epoch {back['epoch']}")
        steady(FAULT_S / 2)
    scenario.verify(expect=EXPECT)


def _status(handle: Any, condition: Any) -> dict[str, Any] | None:
    try:
        status = dict(ray.get(handle.status.remote(), timeout=5))
    except (ray.exceptions.RayError, TimeoutError):
        return None
    return status if condition(status) else None


def _fenced(pipeline: Pipeline, topic: str, partition: int, pid: int) -> bool:
    """The process `pid` reported itself fenced: seen live, or already recorded by the leader that restarted it."""
    status = targets.owner_status(pipeline, topic, partition, timeout_s=5)
    if status is not None and status["pid"] == pid and status["state"] == "fenced":
        return True
    recorded = ray.get(pipeline.leader.fenced_owners.remote(), timeout=10)
    return any(int(f["pid"]) == pid for f in recorded)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
