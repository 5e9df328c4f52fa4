"""Records written straight to `events.ingest` with kcat (a client nobody here wrote): valid ones processed once,
malformed ones dead-lettered with their reason, the partition never stalls; and the same while an owner is SIGKILLed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from cluster.adapters.kafka_config import consumer_config
from tests.factories import Expected, read_models, valid_event
from tests.pipeline import Pipeline, unique_prefix, wait_until

pytestmark = pytest.mark.integration


def records_for(prefix: str) -> tuple[list[bytes], list[bytes], list[dict[str, Any]]]:
    """500 valid records (half with ids) and 100 malformed ones: broken JSON, wrong types, unknown type, oversized."""
    rng = random.Random(7)
    valid_events = [valid_event(prefix, n, rng, with_id=n % 2 == 0) for n in range(500)]
    valid = [orjson.dumps(e) for e in valid_events]
    bad: list[bytes] = []
    for i in range(25):
        bad.append(b'{"type": "sensor", "device_id": "' + f"{prefix}-bad-{i}".encode() + b'", "reading": ')
        bad.append(
            orjson.dumps(
                {
                    "type": "transaction",
                    "timestamp": "2026-11-24T10:00:00Z",
                    "user_id": f"{prefix}-bad-{i}",
                    "amount": "a lot",
                    "currency": "EUR",
                }
            )
        )
        bad.append(orjson.dumps({"type": "weather", "station": f"{prefix}-bad-{i}"}))
        bad.append(
            orjson.dumps(
                {
                    "type": "user_action",
                    "timestamp": "2026-11-24T10:00:00Z",
                    "user_id": f"{prefix}-bad-{i}",
                    "action": "upload",
                    "target": "x",
                    "metadata": {"blob": "x" * 300_000},
                }
            )
        )
    return valid, bad, valid_events


def kcat_produce(kcat: list[str], bootstrap: str, topic: str, records: list[bytes]) -> None:
    if any(b"\n" in r for r in records):
        raise ValueError("kcat -P splits records on newlines")
    subprocess.run(
        [*kcat, "-P", "-b", bootstrap, "-t", topic, "-X", "message.max.bytes=4000000", "-X", "linger.ms=5"],
        input=b"\n".join(records) + b"\n",
        check=True,
        timeout=120,
        capture_output=True,
    )


def ingest_checkpoint_total(pipeline: Pipeline) -> int:
    return int(
        pipeline.scalar(
            "SELECT coalesce(sum(next_offset), 0) FROM partition_checkpoints WHERE topic = %s",
            pipeline.settings.ingest_topic,
        )
    )


def dlq_topic_keys(pipeline: Pipeline) -> set[bytes]:
    """Distinct keys on the DLQ topic (at-least-once there, so keys are the identity)."""
    consumer = Consumer(consumer_config(pipeline.settings.kafka_bootstrap, unique_prefix("dlq-reader")))
    consumer.assign([TopicPartition(pipeline.settings.dlq_topic, 0, 0)])
    keys: set[bytes] = set()
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 2.0:
        msgs = consumer.consume(1000, 0.2)
        if msgs:
            idle_since = time.monotonic()
        keys |= {m.key() for m in msgs if m.error() is None and m.key()}
    consumer.close()
    return keys


def baseline(pipeline: Pipeline) -> tuple[int, int]:
    """Where the DLQ table and the ingest checkpoints stand before a test writes its records."""
    return int(pipeline.scalar("SELECT coalesce(max(id), 0) FROM dead_letters")), ingest_checkpoint_total(pipeline)


def owner_of(pipeline: Pipeline, topic: str, partition: int) -> dict[str, Any]:
    return next(s for s in pipeline.owner_statuses() if s["topic"] == topic and s["partition"] == partition)


def check_outcome(
    pipeline: Pipeline, prefix: str, valid_events: list[dict[str, Any]], dlq_baseline: int, offsets_before: int
) -> None:
    like = f"{prefix}-%"
    wait_until(
        lambda: (
            pipeline.scalar("SELECT count(*) FROM events WHERE entity_key LIKE %s AND status = 'processed'", like)
            == 500
        ),
        timeout_s=120,
        what="500 valid records processed",
    )
    wait_until(
        lambda: (
            pipeline.scalar(
                "SELECT count(*) FROM dead_letters WHERE topic = %s AND id > %s",
                pipeline.settings.ingest_topic,
                dlq_baseline,
            )
            == 100
        ),
        timeout_s=60,
        what="100 dead letters",
    )
    # no stall: every record written (600) is behind the committed checkpoint
    wait_until(
        lambda: ingest_checkpoint_total(pipeline) == offsets_before + 600,
        timeout_s=60,
        what="checkpoints to pass every record",
    )

    assert pipeline.scalar("SELECT count(*) FROM events WHERE entity_key LIKE %s", like) == 500
    assert (
        pipeline.scalar(
            "SELECT count(*) FROM results r JOIN events e ON e.id = r.event_id WHERE e.entity_key LIKE %s", like
        )
        == 500
    )
    with_ids = [e["id"] for e in valid_events if "id" in e]
    assert pipeline.scalar("SELECT count(*) FROM events WHERE id = ANY(%s)", with_ids) == 250  # their own ids kept

    expected = Expected()
    for event in valid_events:
        expected.add(event)
    seen = read_models(pipeline, prefix)
    assert (seen.spend, seen.tx_count, seen.device_count, seen.action_count) == (
        expected.spend,
        expected.tx_count,
        expected.device_count,
        expected.action_count,
    )

    rows = pipeline.query(
        'SELECT error_kind, reason, partition, "offset" FROM dead_letters WHERE topic = %s AND id > %s',
        pipeline.settings.ingest_topic,
        dlq_baseline,
    )
    assert {kind for kind, *_ in rows} == {"invalid"}
    reasons = Counter()
    for _, reason, _, _ in rows:
        for needle in ("not valid JSON", "invalid transaction event", "unknown event type", "exceeds"):
            if needle in reason:
                reasons[needle] += 1
    assert reasons == {"not valid JSON": 25, "invalid transaction event": 25, "unknown event type": 25, "exceeds": 25}
    keys = dlq_topic_keys(pipeline)
    assert {f"{pipeline.settings.ingest_topic}:{p}:{o}".encode() for *_, p, o in rows} <= keys

    trails = pipeline.query(
        # The trail filtered by event id, as ADR 0012 says to read it (a join on another column of events does not
        # reach audit_trail's index through the view).
        """SELECT array_agg(to_status ORDER BY at, id) FROM audit_log
            WHERE event_id = ANY(ARRAY(SELECT id FROM events WHERE entity_key LIKE %s))
              AND to_status <> 'duplicate_ignored' GROUP BY event_id""",
        like,
    )
    assert len(trails) == 500 and {tuple(t) for (t,) in trails} == {("accepted", "consumed", "processed")}


def test_records_written_with_kcat_are_processed_or_dead_lettered_with_reasons(
    pipeline: Pipeline, kcat: list[str]
) -> None:
    prefix = unique_prefix("kcat")
    valid, bad, valid_events = records_for(prefix)
    dlq_baseline, offsets_before = baseline(pipeline)
    mixed = bad + valid  # the poison comes first: the valid records behind it must still flow
    kcat_produce(kcat, pipeline.settings.kafka_bootstrap, pipeline.settings.ingest_topic, mixed)
    check_outcome(pipeline, prefix, valid_events, dlq_baseline, offsets_before)


def test_owner_killed_mid_batch_resumes_by_itself_without_loss_or_duplicates(
    pipeline: Pipeline, kcat: list[str]
) -> None:
    prefix = unique_prefix("sigkill")
    valid, bad, valid_events = records_for(prefix)
    dlq_baseline, offsets_before = baseline(pipeline)
    topic = pipeline.settings.ingest_topic
    victim = owner_of(pipeline, topic, 0)

    records = bad + valid
    random.Random(11).shuffle(records)
    kcat_produce(kcat, pipeline.settings.kafka_bootstrap, topic, records[:300])
    # kill while it works through the first half
    wait_until(
        lambda: owner_of(pipeline, topic, 0)["batches"] > victim["batches"],
        timeout_s=30,
        what="the victim to start committing",
        interval_s=0.01,
    )
    os.kill(int(victim["pid"]), signal.SIGKILL)
    kcat_produce(kcat, pipeline.settings.kafka_bootstrap, topic, records[300:])

    def restarted() -> dict[str, Any] | None:
        for s in pipeline.owner_statuses():
            if s["topic"] == topic and s["partition"] == 0 and s["pid"] != victim["pid"] and s["state"] == "running":
                return s
        return None

    replacement = wait_until(restarted, timeout_s=60, what="the owner to restart")
    assert replacement["epoch"] > victim["epoch"]
    check_outcome(pipeline, prefix, valid_events, dlq_baseline, offsets_before)
