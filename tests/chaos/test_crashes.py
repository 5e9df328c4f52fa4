"""Processes SIGKILLed under load: a partition owner before and right after a commit, a checkpoint writer, the Serve
replica. Ray restarts each; clients retry unknown outcomes with the same id; nothing acknowledged is lost or doubled.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest

from tests.chaos import targets
from tests.chaos.faultproxy import FaultProxy
from tests.chaos.harness import FAULT_S, Expect, Scenario, steady
from tests.pipeline import wait_until

KILLS = max(1, round(FAULT_S / 10))  # one kill in CI, three when faults last 30 s
RESTART_TIMEOUT_S = 60.0
# Killing a process of the pipeline never costs a client its event: the API answers, or retries get through.
EXPECT = Expect(min_acked=0.95)
# Text of the checkpoint commit statement (prepared: it crosses each writer connection once, at Parse time).
COMMIT_MARKER = b"advanced AS"

# Checkpoint rows that an open transaction has updated and not committed, with the updating (sub)transaction's xid.
# Each batch runs in a savepoint, so xmax is a subtransaction's xid, which pg_locks does not show: the held
# transaction's rows are those whose xmax stays the same, and in progress, across two looks (a normal commit group
# ends within milliseconds, and the partition's next one leaves another xmax).
_UNCOMMITTED_ROWS = """
SELECT topic, partition, next_offset, epoch, xmax::text FROM partition_checkpoints
 WHERE xmax <> '0'::xid AND pg_xact_status(xmax::text::xid8) = 'in progress'
"""
HELD_LOOK_S = 0.6


@dataclass(frozen=True)
class HeldKill:
    topic: str
    partition: int
    from_offset: int  # the held batch's first offset (the partition's committed offset while it was held)
    epoch: int  # of the owner killed
    owner_id: str


@pytest.fixture
def healed_pg_proxy(pg_proxy: FaultProxy) -> Iterator[FaultProxy]:
    pg_proxy.heal()
    yield pg_proxy
    pg_proxy.heal()  # a hold left behind would stall a writer's committer thread: heal resets it


def held_partitions(scenario: Scenario) -> list[tuple[str, int, int, int]]:
    """(topic, partition, committed offset, epoch) of the rows the held transaction updated."""
    first = set(scenario.query(_UNCOMMITTED_ROWS))
    time.sleep(HELD_LOOK_S)
    second = set(scenario.query(_UNCOMMITTED_ROWS))
    return sorted((t, p, o, e) for t, p, o, e, _ in first & second)


def kill_owner_with_its_commit_held(scenario: Scenario, proxy: FaultProxy) -> HeldKill:
    """Hold the next checkpoint COMMIT at the proxy, SIGKILL an owner whose batch is in that transaction, then reset
    the held connection: the COMMIT never reaches PostgreSQL, so the batch must be read again by the next owner."""
    pipeline = scenario.pipeline
    owned = set(pipeline.settings.owned_topics())
    proxy.hold_commit(COMMIT_MARKER)
    wait_until(lambda: proxy.held, 30, "a checkpoint COMMIT held at the proxy")
    held = wait_until(
        lambda: [r for r in held_partitions(scenario) if r[0] in owned], 10, "the partitions of the held transaction"
    )
    topic, partition, from_offset, epoch = held[0]
    status = wait_until(lambda: targets.owner_status(pipeline, topic, partition), 10, "the held owner's status")
    # the owner is waiting on exactly that transaction: its batch in flight, from the offset the row still holds
    assert status["in_flight"] and status["committed_offset"] == from_offset, (status, held)
    assert status["epoch"] == epoch, (status, held)
    scenario.note(f"COMMIT held for {[(t, p, o) for t, p, o, _ in held]}")
    scenario.sigkill(status["pid"], f"owner {topic}[{partition}] (epoch {epoch}) with its COMMIT held")
    released = proxy.release_held(deliver=False)
    scenario.note(f"{released} held connection(s) reset: the COMMIT never reached PostgreSQL")
    back = wait_until(
        lambda: targets.owner_restarted(pipeline, topic, partition, status["pid"]),
        RESTART_TIMEOUT_S,
        "the owner to restart",
    )
    scenario.note(f"owner back as pid {back['pid']} at epoch {back['epoch']}")
    assert back["epoch"] > epoch  # the new process claimed the partition: the dead one is fenced
    return HeldKill(topic, partition, from_offset, epoch, status["owner_id"])


def test_owner_killed_mid_batch_before_its_commit(scenario: Scenario, healed_pg_proxy: FaultProxy) -> None:
    kills: list[HeldKill] = []
    with scenario.workload(rate=200):
        steady(0.5)
        for _ in range(KILLS):
            with scenario.fault("an owner SIGKILLed while its checkpoint COMMIT is held at the proxy"):
                try:
                    kills.append(kill_owner_with_its_commit_held(scenario, healed_pg_proxy))
                finally:
                    healed_pg_proxy.heal()
            steady(FAULT_S / KILLS)
    scenario.verify(expect=EXPECT)

    # then each killed batch was read again and committed once, by the new epoch: the record at its first offset has
    # one 'processed' audit row, written by another owner at a later epoch than the one killed
    for kill in kills:
        rows = scenario.query(
            """SELECT e.id, a.actor, (a.detail->>'epoch')::bigint FROM events e
                 JOIN audit_log a ON a.event_id = e.id AND a.to_status = 'processed'
                WHERE e.topic = %s AND e.partition = %s AND e."offset" = %s""",
            kill.topic,
            kill.partition,
            kill.from_offset,
        )
        assert len(rows) == 1, (kill, rows)
        _, actor, epoch = rows[0]
        assert actor != kill.owner_id and epoch > kill.epoch, (kill, rows)


def test_owner_killed_right_after_a_commit(scenario: Scenario) -> None:
    pipeline = scenario.pipeline
    with scenario.workload(rate=200), psycopg.connect(scenario.db_url, autocommit=True) as conn:
        steady(0.5)
        for i in range(KILLS):
            topic, partition = pipeline.settings.topic("transaction"), i % pipeline.settings.partitions
            status = wait_until(
                lambda t=topic, p=partition: targets.owner_status(pipeline, t, p), 30, "the owner's status"
            )
            pid = status["pid"]
            sql = "SELECT next_offset FROM partition_checkpoints WHERE topic = %s AND partition = %s"
            before = conn.execute(sql, (topic, partition)).fetchone()
            deadline = time.monotonic() + 30
            while conn.execute(sql, (topic, partition)).fetchone() == before:  # tight: kill within ms of the commit
                assert time.monotonic() < deadline, f"{topic}[{partition}] committed nothing for 30 s"
            with scenario.fault(f"owner {topic}[{partition}] SIGKILLed right after a commit"):
                scenario.sigkill(pid, f"owner {topic}[{partition}]")
                wait_until(
                    lambda t=topic, p=partition, old=pid: targets.owner_restarted(pipeline, t, p, old),
                    RESTART_TIMEOUT_S,
                    "the owner to restart",
                )
            steady(FAULT_S / KILLS)
    scenario.verify(expect=EXPECT)


def test_checkpoint_writer_killed(scenario: Scenario) -> None:
    pipeline = scenario.pipeline
    writers = pipeline.settings.checkpoint_writers
    with scenario.workload(rate=200):
        steady(0.5)
        for i in range(KILLS):
            index = i % writers
            pid = wait_until(lambda n=index: targets.writer_pid(pipeline, n), 30, "the writer's pid")
            with scenario.fault(f"checkpoint-writer-{index} SIGKILLed"):
                scenario.sigkill(pid, f"checkpoint-writer-{index}")
                wait_until(
                    lambda n=index, old=pid: (targets.writer_pid(pipeline, n) or old) != old,
                    RESTART_TIMEOUT_S,
                    "the writer to restart",
                )
            steady(FAULT_S / KILLS)
    scenario.verify(expect=EXPECT)


def test_serve_replica_killed(scenario: Scenario) -> None:
    base_url = scenario.pipeline.base_url
    with scenario.workload(rate=200) as load:
        steady(0.5)
        for _ in range(KILLS):
            pids = wait_until(targets.serve_replica_pids, 60, "a live ApiGateway replica")
            with scenario.fault("the ApiGateway replica SIGKILLed"):
                for pid in pids:
                    scenario.sigkill(pid, "ApiGateway replica")

                def replaced_and_ready(old: list[int] = pids) -> bool:
                    now = targets.serve_replica_pids()
                    if not now or set(now) & set(old):
                        return False
                    try:
                        return httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200
                    except httpx.HTTPError:
                        return False

                wait_until(replaced_and_ready, RESTART_TIMEOUT_S, "a new replica to serve")
            steady(FAULT_S / KILLS)
    scenario.verify(expect=EXPECT)
    # the kill was felt by clients (unknown outcomes, retried with the same id), or the test proved nothing
    assert load.stats.retries > 0, load.stats
