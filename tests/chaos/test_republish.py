"""Records delivered twice: the same events produced again to their topics, and a partition's checkpoint set back
so its owner re-reads what it already committed. Effects are applied once; each re-read is audited as a duplicate.
"""

from __future__ import annotations

import time

from tests.chaos import rawlog, targets
from tests.chaos.harness import FAULT_S, Expect, Scenario
from tests.pipeline import wait_until

ROUNDS = max(1, round(FAULT_S / 10))
RESTART_TIMEOUT_S = 60.0
# Records delivered twice are the owners' business: clients are not affected.
EXPECT = Expect(min_acked=0.95)


def duplicate_notes(scenario: Scenario, ids: list[str]) -> dict[str, int]:
    return dict(
        scenario.query(
            "SELECT event_id, count(*) FROM audit_log WHERE event_id = ANY(%s) AND to_status = 'duplicate_ignored'"
            " GROUP BY 1",
            ids,
        )
    )


def every_one_noted(scenario: Scenario, ids: list[str]) -> dict[str, int] | None:
    notes = duplicate_notes(scenario, ids)
    return notes if len(notes) == len(ids) else None


def noted_where(scenario: Scenario, ids: list[str]) -> dict[str, set[str]]:
    """For each event, where its duplicate_ignored rows were read relative to its committed position: "later" (another
    copy, further on the log) and/or "same" (the committed record itself, read again)."""
    rows = scenario.query(
        """SELECT a.event_id, CASE WHEN (a.detail->>'offset')::bigint = e."offset" THEN 'same'
                                   WHEN (a.detail->>'offset')::bigint > e."offset" THEN 'later' ELSE 'earlier' END
             FROM audit_log a JOIN events e ON e.id = a.event_id
            WHERE a.event_id = ANY(%s) AND a.to_status = 'duplicate_ignored'""",
        ids,
    )
    out: dict[str, set[str]] = {}
    for event_id, where in rows:
        out.setdefault(event_id, set()).add(where)
    return out


def committed_of_scenario(
    scenario: Scenario, topic: str, partition: int, at_least: int
) -> list[tuple[str, int]] | None:
    """(id, offset) of this scenario's events committed from topic[partition], once there are `at_least` of them."""
    rows = scenario.query(
        'SELECT id, "offset" FROM events WHERE topic = %s AND partition = %s AND id LIKE %s',
        topic,
        partition,
        scenario.checker.like(),
    )
    return rows if len(rows) >= at_least else None


def test_events_produced_again_are_applied_once(scenario: Scenario) -> None:
    settings = scenario.pipeline.settings
    bootstrap = settings.kafka_bootstrap
    republished: set[str] = set()
    with scenario.workload(rate=200), rawlog.RawProducer(bootstrap) as producer:
        for i in range(ROUNDS):
            topic, partition = settings.topic(("transaction", "sensor", "user_action")[i % 3]), i % settings.partitions
            rows = wait_until(
                lambda t=topic, p=partition: committed_of_scenario(scenario, t, p, 20),
                60,
                f"20 events of this scenario committed on {topic}[{partition}]",
            )
            low, high = min(o for _, o in rows), max(o for _, o in rows)
            with scenario.fault(f"records {low}..{high} of {topic}[{partition}] produced again"):
                records = rawlog.read_partition(bootstrap, topic, partition, low, high - low + 1)
                ours = [m for m in records if scenario.prefix.encode() in (m.value() or b"")]
                for m in ours:
                    d = producer.produce(topic, partition, m.value(), key=m.key())
                    assert d.offset is not None, d.error
                    republished.add(rawlog.envelope_id(m.value()))
                scenario.note(f"{len(ours)} records of {topic}[{partition}] produced again")
            time.sleep(FAULT_S / ROUNDS)
    assert len(republished) >= 20
    scenario.verify(expect=EXPECT)

    ids = sorted(republished)
    wait_until(lambda: every_one_noted(scenario, ids), 60, "a duplicate_ignored audit row for every republished event")
    # each was noted as the copy produced again, further on the log than the record committed
    where = noted_where(scenario, ids)
    assert [i for i in ids if "later" not in where.get(i, set())] == [], where


def test_checkpoint_set_back_and_owner_killed_reprocesses_without_double_effects(scenario: Scenario) -> None:
    pipeline = scenario.pipeline
    topic = pipeline.settings.topic("transaction")
    reread: set[str] = set()
    with scenario.workload(rate=200, types=("transaction",)):
        for i in range(ROUNDS):
            partition = i % pipeline.settings.partitions

            rows = wait_until(
                lambda p=partition: committed_of_scenario(scenario, topic, p, 20),
                60,
                f"20 events of this scenario committed on {topic}[{partition}]",
            )
            earlier = min(offset for _, offset in rows)
            status = wait_until(lambda p=partition: targets.owner_status(pipeline, topic, p), 30, "the owner's status")
            with scenario.fault(f"{topic}[{partition}] checkpoint set back to {earlier}, owner SIGKILLed"):
                before = scenario.scalar(
                    """UPDATE partition_checkpoints c SET next_offset = %s
                         FROM (SELECT next_offset AS was FROM partition_checkpoints
                                WHERE topic = %s AND partition = %s FOR UPDATE) AS old
                        WHERE c.topic = %s AND c.partition = %s
                    RETURNING old.was""",
                    earlier,
                    topic,
                    partition,
                    topic,
                    partition,
                )
                scenario.sigkill(status["pid"], f"owner {topic}[{partition}]")
                scenario.note(f"checkpoint moved from {before} back to {earlier}")
                back = wait_until(
                    lambda p=partition, old=status["pid"]: targets.owner_restarted(pipeline, topic, p, old),
                    RESTART_TIMEOUT_S,
                    "the owner to restart",
                )
            assert back["epoch"] > status["epoch"]
            reread |= {event_id for event_id, offset in rows if offset < before}
            time.sleep(FAULT_S / ROUNDS)
    scenario.verify(expect=EXPECT)

    ids = sorted(reread)
    assert ids
    wait_until(lambda: every_one_noted(scenario, ids), 60, "a duplicate_ignored audit row for every re-read event")
    # each was noted as the committed record itself, read again from the checkpoint set back
    where = noted_where(scenario, ids)
    assert [i for i in ids if "same" not in where.get(i, set())] == [], where
