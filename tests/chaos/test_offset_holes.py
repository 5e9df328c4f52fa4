"""A real hole in a partition's offsets, made by an aborted Kafka transaction, while clients keep sending.

On the embedded Tansu broker an aborted transaction leaves its records readable, even to `read_committed` consumers
(it does not filter them), and its abort marker (a control record) takes one offset that no consumer is ever given:
that offset is the hole. The owner must wait `offset_gap_grace_s` for it, then skip it, record it in offset_gaps,
and lose nothing else: the records around the hole are processed once.
"""

from __future__ import annotations

import time
import uuid

import orjson
from confluent_kafka import KafkaError, Message, Producer

from tests.chaos import rawlog
from tests.chaos.harness import Expect, Scenario
from tests.pipeline import wait_until

PARTITION = 0
ABORTED = 3  # records in the aborted transaction
AFTER = 5  # valid records produced after it, the first of which shows the owner the hole
# Clients are not affected by the hole; the one hole is made on purpose.
EXPECT = Expect(min_acked=0.95, offset_gaps=1)


def aborted_transaction(bootstrap: str, topic: str, values: list[bytes]) -> list[int]:
    """Produce `values` in one transaction to topic[PARTITION], then abort it; the offsets the records took."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"chaos-hole-{uuid.uuid4().hex[:8]}",
            "transaction.timeout.ms": 30_000,
        }
    )
    offsets: list[int] = []
    errors: list[KafkaError] = []

    def report(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            offsets.append(int(msg.offset()))

    producer.init_transactions(30)
    producer.begin_transaction()
    for value in values:
        producer.produce(topic, value=value, partition=PARTITION, on_delivery=report)
    producer.flush(30)
    producer.abort_transaction(30)
    assert not errors and len(offsets) == len(values), errors
    return sorted(offsets)


def test_an_aborted_transaction_leaves_a_hole_that_is_skipped_after_the_grace_period_and_recorded(
    scenario: Scenario,
) -> None:
    settings = scenario.pipeline.settings
    topic, grace_s = settings.ingest_topic, settings.offset_gap_grace_s
    bootstrap = settings.kafka_bootstrap
    with scenario.workload(rate=100), rawlog.RawProducer(bootstrap) as producer:
        with scenario.fault(f"an aborted transaction of {ABORTED} records on {topic}[{PARTITION}]"):
            # given the partition's owner has read up to the log's end
            start = rawlog.high_watermark(bootstrap, topic, PARTITION)
            wait_until(
                lambda: (
                    scenario.scalar(
                        "SELECT next_offset FROM partition_checkpoints WHERE topic = %s AND partition = %s",
                        topic,
                        PARTITION,
                    )
                    >= start
                ),
                30,
                f"{topic}[{PARTITION}] committed up to {start}",
            )
            # when a transaction writes events there and is aborted
            doomed = [scenario.event(900 + i, "user_action", key=1) for i in range(ABORTED)]
            for event in doomed:
                # Tansu hands aborted records to every reader, so they may be processed: either outcome is fine
                scenario.checker.record_sent(event["id"], event)
                scenario.checker.record_outcome(event["id"], "unknown")
            taken = aborted_transaction(bootstrap, topic, [orjson.dumps(e) for e in doomed])
            hole = taken[-1] + 1  # the abort marker's offset: no consumer is given it
            # and valid events follow it on the same partition
            produced_after = time.time()
            for i in range(AFTER):
                event = scenario.event(950 + i, "user_action", key=2)
                d = producer.produce(topic, PARTITION, orjson.dumps(event))
                assert d.offset is not None, d.error
                if i == 0:
                    assert d.offset == hole + 1, (taken, d.offset)  # the marker took exactly one offset
                scenario.checker.record_raw(
                    event["id"], "processed", topic=topic, partition=PARTITION, offset=d.offset, event=event
                )
            scenario.note(f"aborted records at {taken}, the hole at {hole}, {AFTER} valid records from {hole + 1}")
            # then the owner waits for the hole, skips it once the grace period has passed, and records it
            gap = wait_until(
                lambda: scenario.query(
                    "SELECT from_offset, to_offset, extract(epoch FROM skipped_at) FROM offset_gaps"
                    " WHERE topic = %s AND partition = %s AND from_offset >= %s",
                    topic,
                    PARTITION,
                    start,
                ),
                grace_s + 30,
                f"the hole at {topic}[{PARTITION}]@{hole} to be skipped",
            )
    [(from_offset, to_offset, skipped_at)] = gap
    waited = float(skipped_at) - produced_after
    scenario.note(f"the owner skipped {from_offset}..{to_offset - 1} {waited:.2f}s after the record behind it came")
    scenario.verify(expect=EXPECT)

    assert (from_offset, to_offset) == (hole, hole + 1)  # the hole and nothing else
    assert waited >= grace_s * 0.9, f"skipped after {waited:.2f}s, before the grace period of {grace_s}s"
    # nothing else of the partition was skipped or lost: every record around the hole has a row (the checker saw the
    # valid ones committed at their positions) and the checkpoint passed the hole
    committed = scenario.scalar(
        "SELECT next_offset FROM partition_checkpoints WHERE topic = %s AND partition = %s", topic, PARTITION
    )
    assert committed >= hole + 1 + AFTER
    around = scenario.query(
        'SELECT "offset" FROM events WHERE topic = %s AND partition = %s AND "offset" BETWEEN %s AND %s',
        topic,
        PARTITION,
        hole + 1,
        hole + AFTER,
    )
    assert sorted(o for (o,) in around) == list(range(hole + 1, hole + 1 + AFTER))
