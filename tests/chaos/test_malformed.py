"""Malformed records written straight to the log while clients keep sending: broken JSON, wrong types, unknown
types, 2 MB and 10 MB records, 1,000,000 `[`, invalid UTF-8, NUL characters; and SQL-looking strings in valid events.

Each bad record is dead-lettered exactly once, the partition never stalls, no owner restarts, and valid events are
stored byte for byte.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import orjson

from pipelines.envelope import Envelope
from pipelines.schemas import TransactionV1, UserActionV1
from tests.chaos import rawlog
from tests.chaos.harness import FAULT_S, Expect, Scenario

TS = "2026-11-24T10:00:00Z"
SQLISH = "'); DROP TABLE events;--"
# Bad records go straight to the log, past the API: the clients' valid events are not affected.
EXPECT = Expect(min_acked=0.95)


def action(scenario: Scenario, n: int, **fields: Any) -> dict[str, Any]:
    event = {
        "id": f"{scenario.prefix}-raw{n}",
        "type": "user_action",
        "timestamp": TS,
        "user_id": f"{scenario.prefix}-k{n % 4}",
        "action": "click",
        "target": "item-1",
        "metadata": {"n": n},
    }
    return {**event, **fields}


def envelope(event: dict[str, Any]) -> bytes:
    model = (TransactionV1 if event["type"] == "transaction" else UserActionV1).model_validate(event)
    return Envelope.encode_event(model, time.time())


def bad_bare_records(scenario: Scenario) -> list[tuple[str, bytes]]:
    """Records for `events.ingest` (bare events), each of which must be dead-lettered."""
    p = scenario.prefix
    return [
        ("broken JSON", b'{"type": "sensor", "device_id": "' + p.encode() + b'-d", "reading": '),
        ("wrong types", orjson.dumps(action(scenario, 100, action=17, metadata="not an object"))),
        ("unknown type", orjson.dumps({"id": f"{p}-raw101", "type": "weather", "station": f"{p}-s"})),
        ("2 MB record", orjson.dumps(action(scenario, 102, metadata={"blob": "x" * 2_000_000}))),
        ("10 MB record", orjson.dumps(action(scenario, 103, metadata={"blob": "y" * 10_000_000}))),
        ("1,000,000 [", b"[" * 1_000_000),
        ("100,000 [ (under the size limit)", b"[" * 100_000),
        ("invalid UTF-8", b'{"type": "user_action", "user_id": "' + p.encode() + b'-\xff\xfe", "action": "\xc3("}'),
        ("NUL in a string", orjson.dumps(action(scenario, 104, target="a\u0000b"))),
        ("empty value", b""),
        ("1e308 bar (infinite in pascals)", orjson.dumps(sensor(scenario, 105, reading=1e308, unit="bar"))),
        ("1.7e308 K (overflows any sum)", orjson.dumps(sensor(scenario, 106, reading=1.7e308, unit="K"))),
        ("-300 C (below absolute zero)", orjson.dumps(sensor(scenario, 107, reading=-300.0, unit="C"))),
        ("metadata nested 256 deep", json.dumps(action(scenario, 108, metadata=nested(254))).encode()),
        ("year 1 at +14:00", orjson.dumps(action(scenario, 109, timestamp="0001-01-01T00:00:00+14:00"))),
        ("year 9999 at -14:00", orjson.dumps(action(scenario, 110, timestamp="9999-12-31T23:59:59-14:00"))),
        ("a day and more ahead", orjson.dumps(action(scenario, 111, timestamp="2999-01-01T00:00:00Z"))),
        ("amount 1e30", orjson.dumps({**transaction(scenario, 112), "amount": "1e30"})),
    ]


def sensor(scenario: Scenario, n: int, **fields: Any) -> dict[str, Any]:
    event = {
        "id": f"{scenario.prefix}-raw{n}",
        "type": "sensor",
        "timestamp": TS,
        "device_id": f"{scenario.prefix}-d{n % 4}",
        "reading": 20.0,
        "unit": "C",
        "location": {"lat": 1.0, "lon": 2.0},
    }
    return {**event, **fields}


def transaction(scenario: Scenario, n: int) -> dict[str, Any]:
    return {
        "id": f"{scenario.prefix}-raw{n}",
        "type": "transaction",
        "timestamp": TS,
        "user_id": f"{scenario.prefix}-k{n % 4}",
        "amount": "1.00",
        "currency": "EUR",
        "metadata": {},
    }


def nested(depth: int) -> dict[str, Any]:
    """A JSON object `depth` levels deep (orjson writes at most 255 levels: the stdlib json writes this one)."""
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"d": value}
    return value


def bad_envelopes(scenario: Scenario, partition: int) -> list[tuple[str, bytes, str | None]]:
    """Records for a typed topic (API envelopes), each of which must be dead-lettered: (label, bytes, the id the
    dead letter carries, when the envelope is readable and storable)."""
    good = orjson.loads(envelope(action(scenario, 200)))

    def with_payload(n: int, kind: str | None = None, **fields: Any) -> tuple[str, dict[str, Any]]:
        event_id = f"{scenario.prefix}-raw{n}p{partition}"
        payload = {**good["payload"], "id": event_id, **fields}
        return event_id, {**good, "id": event_id, "type": kind or good["type"], "payload": payload}

    wrong_id, wrong = with_payload(201, action=17)
    unknown_id, unknown = with_payload(202, kind="weather", type="weather")
    _, nul = with_payload(203, target="\u0000")
    _, big = with_payload(204, metadata={"b": "z" * 2_000_000})
    return [
        ("broken JSON", b'{"id": "x", "payload": {', None),
        ("invalid UTF-8", b'{"id": "\xff", "type": "user_action", "payload": {}}', None),
        ("wrong types", orjson.dumps(wrong), wrong_id),
        ("unknown type", orjson.dumps(unknown), unknown_id),
        ("NUL in the payload", orjson.dumps(nul), None),
        ("2 MB record", orjson.dumps(big), None),
        ("not an object", b"[1, 2, 3]", None),
    ]


def owner_pids(scenario: Scenario) -> dict[tuple[str, int], tuple[int, str]]:
    return {(s["topic"], s["partition"]): (s["pid"], s["state"]) for s in scenario.pipeline.owner_statuses()}


def test_malformed_records_are_dead_lettered_once_without_stalling_or_restarting_owners(scenario: Scenario) -> None:
    settings = scenario.pipeline.settings
    bootstrap = settings.kafka_bootstrap
    typed = settings.topic("user_action")
    pids_before = owner_pids(scenario)
    assert all(state == "running" for _, state in pids_before.values()), pids_before
    dlq_start = rawlog.high_watermark(bootstrap, settings.dlq_topic, 0)
    bad: dict[tuple[str, int, int], tuple[str, bytes]] = {}
    refused: list[str] = []
    n_valid = 0
    with scenario.workload(rate=100), rawlog.RawProducer(bootstrap) as producer:
        with scenario.fault("malformed records written to events.ingest and events.user_action"):
            for partition in range(settings.partitions):
                bare = [(label, value, None) for label, value in bad_bare_records(scenario)]
                for topic, records in ((settings.ingest_topic, bare), (typed, bad_envelopes(scenario, partition))):
                    for label, value, event_id in records:
                        d = producer.produce(topic, partition, value)
                        if d.offset is None:
                            refused.append(f"{label} on {topic}[{partition}]: {d.error}")
                            continue
                        bad[(topic, partition, d.offset)] = (label, value)
                        scenario.checker.record_raw(
                            event_id, "dead_letter", topic=topic, partition=partition, offset=d.offset
                        )
                        # a valid event right behind each bad one, on the same partition: it must not wait forever
                        event = action(scenario, 1000 + n_valid)
                        n_valid += 1
                        value = orjson.dumps(event) if topic == settings.ingest_topic else envelope(event)
                        d = producer.produce(topic, partition, value)
                        assert d.offset is not None, d.error
                        scenario.checker.record_raw(
                            event["id"], "processed", topic=topic, partition=partition, offset=d.offset, event=event
                        )
            scenario.note(f"{len(bad)} bad records and {n_valid} valid ones produced; refused by the broker: {refused}")
        time.sleep(FAULT_S)  # the workload keeps running past the bad records
    scenario.verify(expect=EXPECT)

    # every record under the broker's size limit was taken (the limits are the owner's, not the broker's)
    assert not [r for r in refused if "MB record" not in r], refused
    # each bad record: one dead_letters row with a reason and the exact bytes sent
    rows = scenario.query(
        """SELECT topic, partition, "offset", reason, payload FROM dead_letters
            WHERE (topic, partition, "offset") IN (SELECT * FROM unnest(%s::text[], %s::int[], %s::bigint[]))""",
        [k[0] for k in bad],
        [k[1] for k in bad],
        [k[2] for k in bad],
    )
    assert len(rows) == len(bad)
    for topic, partition, offset, reason, payload in rows:
        label, value = bad[(topic, partition, offset)]
        assert reason, label
        assert bytes(payload) == value, f"{label}: the stored payload differs from the record"
    # ... and on the DLQ topic, exactly once each (no owner retried a commit here)
    on_topic = rawlog.dlq_keys(bootstrap, settings.dlq_topic, dlq_start)
    counts = {bad[k][0] + f" {k}": on_topic[rawlog.dlq_key(*k)] for k in bad}
    assert all(c == 1 for c in counts.values()), counts
    # no owner crashed or restarted on any of it
    pids_after = owner_pids(scenario)
    assert pids_after == {k: (pid, "running") for k, (pid, _) in pids_before.items()}, (pids_before, pids_after)


def test_sql_looking_strings_in_valid_events_are_stored_byte_for_byte(scenario: Scenario) -> None:
    settings = scenario.pipeline.settings
    metadata = {
        "note": SQLISH,
        "quote": "1' OR '1'='1",
        "format": "%s %(x)s {0} $1 \\x00 \\",
        "unicode": 'Robert\'); DROP TABLE students;-- \u2603 \U0001f600 "quoted"',
    }
    user = f"{scenario.prefix}-{SQLISH}"
    sent: list[dict[str, Any]] = []
    with scenario.workload(rate=50), rawlog.RawProducer(settings.kafka_bootstrap) as producer:
        with scenario.fault("SQL-looking strings in user_id and metadata"):
            with httpx.Client(
                base_url=scenario.pipeline.base_url, headers=scenario.pipeline.headers, timeout=30
            ) as client:
                for n in range(3):
                    event = {
                        "id": f"{scenario.prefix}-sql{n}",
                        "type": "transaction",
                        "timestamp": TS,
                        "user_id": user,
                        "amount": "12.34",
                        "currency": "USD",
                        "metadata": metadata,
                    }
                    scenario.checker.record_sent(event["id"], event)
                    r = client.post("/events", json=event)
                    scenario.checker.record_attempt(event["id"], str(r.status_code))
                    assert r.status_code == 202, r.text
                    scenario.checker.record_outcome(event["id"], "acknowledged", r.json())
                    sent.append(event)
            raw = action(scenario, 9, user_id=user, metadata=metadata, action=SQLISH, target=SQLISH)
            d = producer.produce(settings.ingest_topic, 0, orjson.dumps(raw))
            assert d.offset is not None, d.error
            scenario.checker.record_raw(raw["id"], "processed", topic=d.topic, partition=0, offset=d.offset, event=raw)
            sent.append(raw)
    scenario.verify(expect=EXPECT)

    stored = dict(scenario.query("SELECT id, payload FROM events WHERE id = ANY(%s)", [e["id"] for e in sent]))
    for event in sent:
        payload = stored[event["id"]]
        assert payload["user_id"] == user
        assert payload["metadata"] == metadata
        if event["type"] == "user_action":
            assert (payload["action"], payload["target"]) == (SQLISH, SQLISH)
    assert scenario.scalar("SELECT tx_count FROM user_totals WHERE user_id = %s", user) == 3
    assert scenario.scalar("SELECT count FROM user_action_counts WHERE user_id = %s AND action = %s", user, SQLISH) == 1
    # the tables are still there, with this scenario's rows in them
    assert scenario.scalar("SELECT count(*) FROM events WHERE id = ANY(%s)", [e["id"] for e in sent]) == len(sent)
