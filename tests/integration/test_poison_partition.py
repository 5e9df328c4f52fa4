"""Poison in the middle of a busy partition, refused by PostgreSQL itself: a temporary CHECK constraint on `results`
refuses one event's row (a data error, SQLSTATE 23514) while a steady stream flows through the same partition.

The owner must split the refused batch, commit every other event within seconds, dead-letter the poison once
(`store_rejected`, with the database's reason and its bytes, in `dead_letters` and on the DLQ topic), never restart,
and count the refusal in `partition_commit_failures_total{reason="rejected"}`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from tests.chaos import rawlog
from tests.pipeline import Pipeline, unique_prefix, wait_until

pytestmark = pytest.mark.integration

STREAM = 600  # events on one partition, at about RATE per second
RATE = 100.0
POISON_AT = 300
MAX_STALL_S = 5.0


def action(prefix: str, n: int) -> dict[str, Any]:
    return {
        "id": f"{prefix}-{n}",
        "type": "user_action",
        "timestamp": "2026-11-24T10:00:00Z",
        "user_id": f"{prefix}-u{n % 7}",
        "action": "click",
        "target": f"item-{n}",
    }


def rejected_commits(pipeline: Pipeline, topic: str, partition: int) -> float:
    """partition_commit_failures_total{reason="rejected"} of one partition, as the cluster's scrape target serves it."""
    text = httpx.get(f"{pipeline.metrics_url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "partition_commit_failures_total"
                and labels.get("topic") == topic
                and labels.get("partition") == str(partition)
                and labels.get("reason") == "rejected"
            ):
                total += sample.value
    return total


def owner_status(pipeline: Pipeline, topic: str, partition: int) -> dict[str, Any]:
    return next(s for s in pipeline.owner_statuses() if s["topic"] == topic and s["partition"] == partition)


def test_poison_refused_by_postgresql_in_a_busy_partition_is_dead_lettered_once_and_the_rest_flow(
    pipeline: Pipeline,
) -> None:
    settings = pipeline.settings
    topic, partition = settings.ingest_topic, 0
    prefix = unique_prefix("poison")
    poison_id = f"{prefix}-{POISON_AT}"
    constraint = f"refuse_{prefix.replace('-', '_')}"
    owner_before = owner_status(pipeline, topic, partition)
    assert owner_before["state"] == "running", owner_before
    rejected_before = rejected_commits(pipeline, topic, partition)
    dlq_start = rawlog.high_watermark(settings.kafka_bootstrap, settings.dlq_topic, 0)

    # given PostgreSQL refuses one event's result row for a data reason
    pipeline.query(
        sql.SQL("ALTER TABLE results ADD CONSTRAINT {} CHECK (event_id <> {}) NOT VALID").format(  # type: ignore[arg-type]
            sql.Identifier(constraint), sql.Literal(poison_id)
        )
    )
    try:
        # when a steady stream flows through one partition with that event in the middle
        offsets: dict[int, int] = {}
        started = time.monotonic()
        with rawlog.RawProducer(settings.kafka_bootstrap) as producer:
            for n in range(STREAM):
                delivered = producer.produce(topic, partition, orjson.dumps(action(prefix, n)))
                assert delivered.offset is not None, delivered.error
                offsets[n] = delivered.offset
                ahead = started + (n + 1) / RATE - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)  # pacing the stream, not waiting for the pipeline
        poison_offset = offsets[POISON_AT]

        # then every other event is committed, and the poison dead-lettered
        others = [f"{prefix}-{n}" for n in range(STREAM) if n != POISON_AT]
        wait_until(
            lambda: (
                pipeline.scalar("SELECT count(*) FROM events WHERE id = ANY(%s) AND status = 'processed'", others)
                == len(others)
            ),
            timeout_s=60,
            what=f"the {len(others)} other events processed",
        )
        wait_until(
            lambda: pipeline.query(
                'SELECT 1 FROM dead_letters WHERE topic = %s AND partition = %s AND "offset" = %s',
                topic,
                partition,
                poison_offset,
            ),
            timeout_s=30,
            what="the poison's dead letter",
        )
    finally:
        pipeline.query(
            sql.SQL("ALTER TABLE results DROP CONSTRAINT IF EXISTS {}").format(sql.Identifier(constraint))  # type: ignore[arg-type]
        )

    # within seconds: the largest delay from the broker to the commit among the stream's events is the stall
    delays = dict(
        pipeline.query(
            "SELECT id, extract(epoch FROM committed_at - received_at) FROM events WHERE id LIKE %s", f"{prefix}-%"
        )
    )
    behind = [float(delays[f"{prefix}-{n}"]) for n in range(POISON_AT + 1, STREAM)]
    before = sorted(float(delays[f"{prefix}-{n}"]) for n in range(POISON_AT))
    stall_s = max(behind)
    print(
        f"\npoison in a busy partition: stall {stall_s:.2f}s (largest commit delay of the {len(behind)} events behind"
        f" the poison; median before it {before[len(before) // 2]:.3f}s)"
    )
    assert stall_s < MAX_STALL_S, f"events behind the poison waited {stall_s:.2f}s"

    # the poison: once in dead_letters, as store_rejected with the database's reason and its exact bytes
    rows = pipeline.query(
        "SELECT event_id, error_kind, reason, payload FROM dead_letters WHERE event_id = %s OR"
        ' (topic = %s AND partition = %s AND "offset" = %s)',
        poison_id,
        topic,
        partition,
        poison_offset,
    )
    assert len(rows) == 1, rows
    event_id, kind, reason, payload = rows[0]
    assert (event_id, kind) == (poison_id, "store_rejected")
    assert "23514" in reason and constraint in reason, reason
    assert bytes(payload) == orjson.dumps(action(prefix, POISON_AT))
    assert pipeline.scalar("SELECT status FROM events WHERE id = %s", poison_id) == "dead_lettered"
    assert pipeline.scalar("SELECT count(*) FROM results WHERE event_id = %s", poison_id) == 0
    # every other event's effect counted once
    assert pipeline.scalar("SELECT count(*) FROM results WHERE event_id = ANY(%s)", others) == len(others)
    assert (
        pipeline.scalar("SELECT coalesce(sum(count), 0) FROM user_action_counts WHERE user_id LIKE %s", f"{prefix}-%")
        == STREAM - 1
    )
    # ... and once on the DLQ topic
    on_topic = rawlog.dlq_keys(settings.kafka_bootstrap, settings.dlq_topic, dlq_start)
    assert on_topic[rawlog.dlq_key(topic, partition, poison_offset)] == 1, on_topic

    # the owner never restarted, says it is running, counted one isolated record and the refusals
    owner_after = owner_status(pipeline, topic, partition)
    assert (owner_after["pid"], owner_after["epoch"], owner_after["state"]) == (
        owner_before["pid"],
        owner_before["epoch"],
        "running",
    )
    assert owner_after["store_rejected"] == owner_before["store_rejected"] + 1
    wait_until(
        lambda: rejected_commits(pipeline, topic, partition) > rejected_before,
        timeout_s=30,
        what="the refusals counted in partition_commit_failures_total",
    )


def test_readings_whose_sum_overflows_never_halt_their_partition(pipeline: Pipeline) -> None:
    """Issue 8, finding 1: two large finite readings of one device overflow `device_stats.reading_sum` (float8).
    Whether the edge refuses them (domain bounds) or PostgreSQL does (22003), the partition moves on."""
    settings = pipeline.settings
    topic, partition = settings.ingest_topic, settings.partitions - 1
    prefix = unique_prefix("overflow")

    def reading(n: int, value: float, device: str) -> dict[str, Any]:
        return {
            "id": f"{prefix}-{n}",
            "type": "sensor",
            "timestamp": "2026-11-24T10:00:00Z",
            "device_id": device,
            "reading": value,
            "unit": "bar",
            "location": {"lat": 52.5, "lon": 13.4},
        }

    # given two readings of 1e303 bar (1e308 Pa each: finite, but not their sum) amid ordinary ones
    big = [reading(0, 1e303, f"{prefix}-big"), reading(1, 1e303, f"{prefix}-big")]
    ordinary = [reading(n, 1.0 + n / 100, f"{prefix}-d{n % 3}") for n in range(2, 42)]
    offsets: dict[str, int] = {}
    with rawlog.RawProducer(settings.kafka_bootstrap) as producer:
        for event in [ordinary[0], *big, *ordinary[1:]]:
            delivered = producer.produce(topic, partition, orjson.dumps(event))
            assert delivered.offset is not None
            offsets[event["id"]] = delivered.offset

    # then every ordinary reading is processed, and no big one stays unresolved
    ids = [e["id"] for e in ordinary]
    wait_until(
        lambda: (
            pipeline.scalar("SELECT count(*) FROM events WHERE id = ANY(%s) AND status = 'processed'", ids) == len(ids)
        ),
        timeout_s=60,
        what="the ordinary readings processed behind the overflowing ones",
    )
    # a record refused at validation has no event id in its dead letter: it is found by its log position
    big_offsets = [offsets[e["id"]] for e in big]
    outcomes = wait_until(
        lambda: (
            (
                rows := pipeline.query(
                    "SELECT x.off, e.status, d.error_kind FROM unnest(%s::text[], %s::bigint[]) AS x(id, off)"
                    " LEFT JOIN events e ON e.id = x.id"
                    ' LEFT JOIN dead_letters d ON (d.topic, d.partition, d."offset") = (%s, %s, x.off)',
                    [e["id"] for e in big],
                    big_offsets,
                    topic,
                    partition,
                )
            )
            and all(status is not None or kind is not None for _, status, kind in rows)
            and rows
        ),
        timeout_s=30,
        what="both big readings resolved",
    )
    print(f"\nreadings whose sum overflows: {outcomes}")
    kinds = {kind for _, _, kind in outcomes if kind is not None}
    assert kinds, f"neither big reading was dead-lettered: {outcomes}"
    assert kinds <= {"store_rejected", "invalid", "poison"}, outcomes
    totals = pipeline.query("SELECT reading_sum FROM device_stats WHERE device_id = %s", f"{prefix}-big")
    assert all(math.isfinite(total) for (total,) in totals), totals
