"""Poison in a busy partition: while clients keep sending through the API, a steady stream of raw events flows through
`events.ingest[0]`, and PostgreSQL itself refuses one of them in the middle (a temporary CHECK constraint on `results`
makes its row a data error, SQLSTATE 23514).

The owner splits the refused batch: every other event commits within seconds, the poison is dead-lettered once as
`store_rejected` with the database's reason (in `dead_letters` and on the DLQ topic), and no owner restarts. The
partition's stall (the largest broker-to-commit delay of the events behind the poison) is printed and noted.
"""

from __future__ import annotations

import time

import orjson
from psycopg import sql

from tests.chaos import rawlog
from tests.chaos.harness import Scenario
from tests.pipeline import wait_until

STREAM = 400
RATE = 100.0
POISON_AT = 200
MAX_STALL_S = 5.0


def test_poison_in_a_busy_partition_is_dead_lettered_once_and_the_partition_moves_on(scenario: Scenario) -> None:
    settings = scenario.pipeline.settings
    topic, partition = settings.ingest_topic, 0
    owner_before = scenario.owner_status(topic, partition)
    dlq_start = rawlog.high_watermark(settings.kafka_bootstrap, settings.dlq_topic, 0)
    events = [scenario.event(n, "user_action", key=n % 5) for n in range(STREAM)]
    poison = events[POISON_AT]
    constraint = sql.Identifier(f"refuse_{scenario.prefix.replace('-', '_')}")
    scenario.query(
        sql.SQL("ALTER TABLE results ADD CONSTRAINT {} CHECK (event_id <> {}) NOT VALID").format(  # type: ignore[arg-type]
            constraint, sql.Literal(poison["id"])
        )
    )
    offsets: dict[str, int] = {}
    try:
        with scenario.workload(rate=100), rawlog.RawProducer(settings.kafka_bootstrap) as producer:
            with scenario.fault(f"PostgreSQL refuses {poison['id']} amid {STREAM} raw events on {topic}[{partition}]"):
                started = time.monotonic()
                for n, event in enumerate(events):
                    d = producer.produce(topic, partition, orjson.dumps(event))
                    assert d.offset is not None, d.error
                    offsets[event["id"]] = d.offset
                    expected = "dead_letter" if n == POISON_AT else "processed"
                    scenario.checker.record_raw(
                        event["id"],
                        expected,
                        topic=topic,
                        partition=partition,
                        offset=d.offset,
                        event=event if expected == "processed" else None,
                    )
                    ahead = started + (n + 1) / RATE - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)  # pacing the stream, not waiting for the pipeline
                wait_until(
                    lambda: scenario.query("SELECT 1 FROM dead_letters WHERE event_id = %s", poison["id"]),
                    timeout_s=60,
                    what="the poison's dead letter (before the constraint goes)",
                )
    finally:
        scenario.query(sql.SQL("ALTER TABLE results DROP CONSTRAINT IF EXISTS {}").format(constraint))  # type: ignore[arg-type]
    row = scenario.verify()

    delays = dict(
        scenario.query(
            "SELECT id, extract(epoch FROM committed_at - received_at) FROM events WHERE id = ANY(%s)",
            [e["id"] for e in events[POISON_AT + 1 :]],
        )
    )
    stall_s = max(float(v) for v in delays.values())
    row.stall_s = stall_s
    scenario.notes.append(f"stall of {topic}[{partition}] behind the poison: {stall_s:.2f}s")
    print(f"\n{scenario.name}: stall of {topic}[{partition}] behind the poison {stall_s:.2f}s")
    assert len(delays) == STREAM - POISON_AT - 1
    assert stall_s < MAX_STALL_S, f"events behind the poison waited {stall_s:.2f}s"
    # the poison: once, as store_rejected with the database's reason, its bytes kept
    rows = scenario.query(
        'SELECT error_kind, reason, payload FROM dead_letters WHERE event_id = %s OR (topic, partition, "offset") = '
        "(%s, %s, %s)",
        poison["id"],
        topic,
        partition,
        offsets[poison["id"]],
    )
    assert len(rows) == 1, rows
    kind, reason, payload = rows[0]
    assert kind == "store_rejected" and "23514" in reason, reason
    assert bytes(payload) == orjson.dumps(poison)
    on_topic = rawlog.dlq_keys(settings.kafka_bootstrap, settings.dlq_topic, dlq_start)
    assert on_topic[rawlog.dlq_key(topic, partition, offsets[poison["id"]])] == 1
    # the owner never restarted
    owner_after = scenario.owner_status(topic, partition)
    assert (owner_after["pid"], owner_after["epoch"], owner_after["state"]) == (
        owner_before["pid"],
        owner_before["epoch"],
        "running",
    )
