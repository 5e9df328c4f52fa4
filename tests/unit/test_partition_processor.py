"""Specification of PartitionProcessor.process: one bounded batch of log records in, one CommitBatch out.

Every record ends as exactly one processed event, one dead letter or one in-batch duplicate; no sleeping, no clock.
"""

from __future__ import annotations

import random
from collections import Counter
from decimal import Decimal
from typing import Any

import orjson
import pytest

from pipelines import ids
from pipelines.batch import CommitBatch, DeadLetter, ProcessedEvent, SourceRecord
from pipelines.effects import ActionCount, DeviceReading, UserSpend
from pipelines.engine import PartitionProcessor
from pipelines.envelope import Envelope
from pipelines.errors import TransientError
from pipelines.handlers.base import HandlerResult
from pipelines.handlers.sensor import SensorHandler
from pipelines.handlers.transaction import TransactionHandler
from pipelines.handlers.user_action import UserActionHandler
from pipelines.registry import EventTypeSpec, Registry, default_registry
from pipelines.schemas import SensorV1, TransactionV1, UserActionV1

INGEST = "events.ingest"
SENSOR_TOPIC = "events.sensor"
RECEIVED_AT = 1714557600.5
LOG_TIME_MS = 1714557700250


class ScriptedActionHandler:
    """A user-action handler whose behaviour is chosen by the action name; counts calls per action."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def __call__(self, event: UserActionV1) -> HandlerResult:
        self.calls[event.action] += 1
        if event.action == "always-transient":
            raise TransientError("downstream unavailable")
        if event.action == "buggy":
            raise KeyError("missing-key")
        if event.action == "transient-once" and self.calls[event.action] == 1:
            raise TransientError("first try hiccup")
        return UserActionHandler()(event)


@pytest.fixture
def scripted() -> ScriptedActionHandler:
    return ScriptedActionHandler()


@pytest.fixture
def registry(scripted) -> Registry:
    given = Registry()
    given.register(EventTypeSpec("transaction", {1: TransactionV1}, TransactionHandler()))
    given.register(EventTypeSpec("sensor", {1: SensorV1}, SensorHandler()))
    given.register(EventTypeSpec("user_action", {1: UserActionV1}, scripted))
    return given


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def processor(registry, sleeps) -> PartitionProcessor:
    return PartitionProcessor(registry, INGEST, sleep=sleeps.append, rng=random.Random(0))


def api_record(offset: int, raw_event: dict[str, Any], event_id: str, **wrap: Any) -> SourceRecord:
    """A record as the API writes it: a validated event in an envelope, on events.<type>."""
    event = default_registry().parse(raw_event)
    envelope = Envelope.wrap(event, event_id, RECEIVED_AT, **wrap)
    return SourceRecord(SENSOR_TOPIC, 0, offset, event_id.encode(), envelope.encode(), LOG_TIME_MS)


def raw_record(offset: int, value: dict[str, Any] | bytes | None, partition: int = 0) -> SourceRecord:
    """A bare event written straight to the ingest topic by a producer."""
    data = orjson.dumps(value) if isinstance(value, dict) else value
    return SourceRecord(INGEST, partition, offset, None, data, LOG_TIME_MS)


def run(processor: PartitionProcessor, records: list[SourceRecord]) -> CommitBatch:
    return processor.process(records, epoch=7, owner_id="owner-a", expected_offset=records[0].offset, consumed_at=0.0)


def dead_by_offset(batch: CommitBatch) -> dict[int, DeadLetter]:
    return {d.offset: d for d in batch.dead}


def the_processed(batch: CommitBatch) -> ProcessedEvent:
    assert batch.dead == ()
    (event,) = batch.processed
    return event


def the_dead(batch: CommitBatch) -> DeadLetter:
    assert batch.processed == ()
    (dead,) = batch.dead
    return dead


# --- the whole picture ------------------------------------------------------------------------------------------


def test_mixed_batch_ends_every_record_as_processed_dead_or_duplicate(
    processor, sleeps, sensor_data, transaction_data, user_action_data
):
    processor.max_record_bytes = 2048
    sensor_api = api_record(100, sensor_data(), "sensor-1")
    records = [
        sensor_api,
        raw_record(101, b'{"type": "sensor", "reading":'),
        raw_record(102, sensor_data(reading="hot")),
        raw_record(103, transaction_data(type="purchase")),
        raw_record(104, transaction_data(metadata={"blob": "x" * 4096})),
        raw_record(105, transaction_data(user_id="nul\u0000user")),
        raw_record(106, transaction_data(currency="XYZ")),
        raw_record(107, user_action_data(action="always-transient")),
        raw_record(108, user_action_data(action="buggy")),
        SourceRecord(SENSOR_TOPIC, 0, 109, sensor_api.key, sensor_api.value, LOG_TIME_MS),
        raw_record(110, transaction_data()),
        raw_record(111, user_action_data(action="transient-once")),
    ]

    batch = run(processor, records)

    assert [(p.offset, p.attempts) for p in batch.processed] == [(100, 1), (110, 1), (111, 2)]
    assert {offset: d.error_kind for offset, d in dead_by_offset(batch).items()} == {
        101: "invalid",
        102: "invalid",
        103: "invalid",
        104: "invalid",
        105: "invalid",
        106: "poison",
        107: "exhausted",
        108: "handler_error",
    }
    assert batch.in_batch_duplicates == (("sensor-1", 109, "default"),)
    assert dead_by_offset(batch)[107].attempts == 3
    assert len(sleeps) == 2 + 1  # two backoffs for the exhausted event, one for the event that succeeded on retry
    assert (batch.epoch, batch.owner_id, batch.expected_offset, batch.next_offset) == (7, "owner-a", 100, 112)
    assert batch.size == 12


def test_empty_batch_is_refused(processor):
    with pytest.raises(ValueError):
        processor.process([], epoch=1, owner_id="o", expected_offset=0, consumed_at=0.0)


def test_next_offset_is_one_past_the_last_record_even_across_gaps(processor, sensor_data):
    # Compacted or transactional topics leave offset gaps; the checkpoint still moves past the last record.
    records = [raw_record(40, sensor_data()), raw_record(41, sensor_data()), raw_record(45, sensor_data())]

    batch = processor.process(records, epoch=1, owner_id="o", expected_offset=38, consumed_at=0.0)

    assert (batch.expected_offset, batch.next_offset, batch.size) == (38, 46, 8)
    assert (batch.topic, batch.partition) == (INGEST, 0)


def test_processing_the_same_records_again_gives_the_same_batch(registry, sensor_data, transaction_data):
    # A new owner re-reading the partition after a crash must produce exactly what the old one would have.
    records = [raw_record(0, transaction_data()), raw_record(1, sensor_data()), raw_record(2, b"garbage")]

    first = run(PartitionProcessor(registry, INGEST, sleep=lambda s: None, rng=random.Random(0)), records)
    again = run(PartitionProcessor(default_registry(), INGEST, sleep=lambda s: None, rng=random.Random(1)), records)

    assert first == again


# --- processed events -------------------------------------------------------------------------------------------


def test_api_envelope_is_processed_with_its_ingestion_metadata(processor, sensor_data):
    record = api_record(
        5,
        sensor_data(reading=25.0, causation_id="cause-1", parent_ids=["parent-1"]),
        "sensor-1",
        correlation_id="corr-1",
        idempotency_key="idem-1",
        trace_context="00-trace-01",
    )

    event = the_processed(run(processor, [record]))

    assert (event.event_id, event.type, event.schema_version, event.offset) == ("sensor-1", "sensor", 1, 5)
    assert event.entity_key == "device-1"
    assert event.received_at == RECEIVED_AT
    assert (event.correlation_id, event.causation_id, event.parent_ids) == ("corr-1", "cause-1", ("parent-1",))
    assert (event.idempotency_key, event.trace_context, event.attempts) == ("idem-1", "00-trace-01", 1)
    assert orjson.loads(event.payload_json)["id"] == "sensor-1"
    assert orjson.loads(event.result_json)["si_value"] == pytest.approx(298.15)
    assert event.effects == (DeviceReading("device-1", "K", 298.15, False),)


def test_raw_transaction_is_converted_and_its_effect_recorded(processor, transaction_data):
    event = the_processed(run(processor, [raw_record(0, transaction_data(amount="12.50", currency="EUR"))]))

    assert orjson.loads(event.result_json)["base_amount"] == "13.500000"
    assert event.effects == (UserSpend("user-1", "USD", Decimal("13.500000"), False),)
    assert event.entity_key == "user-1"


def test_raw_record_without_id_gets_its_log_position_id(processor, user_action_data):
    record = raw_record(17, user_action_data(), partition=3)

    event = the_processed(processor.process([record], epoch=1, owner_id="o", expected_offset=17, consumed_at=0.0))

    assert event.event_id == ids.from_log_position(INGEST, 3, 17)
    assert orjson.loads(event.payload_json)["id"] == event.event_id
    assert event.effects == (ActionCount("user-1", "click"),)


def test_the_handler_sees_the_log_position_id_of_a_raw_record_without_one(registry, user_action_data):
    seen: list[str | None] = []
    registry.specs["user_action"] = EventTypeSpec(
        "user_action", {1: UserActionV1}, lambda event: seen.append(event.id) or UserActionHandler()(event)
    )
    processor = PartitionProcessor(registry, INGEST, sleep=lambda s: None, rng=random.Random(0))

    event = the_processed(run(processor, [raw_record(17, user_action_data())]))

    assert seen == [event.event_id] == [ids.from_log_position(INGEST, 0, 17)]


def test_a_raw_record_that_is_not_json_is_dead_lettered_with_the_parsers_words(processor):
    with pytest.raises(orjson.JSONDecodeError) as parser:
        orjson.loads(b"{not json")

    dead = dead_by_offset(run(processor, [raw_record(4, b"{not json")]))[4]

    assert (dead.error_kind, dead.reason) == ("invalid", f"record is not valid JSON: {parser.value}")
    assert dead.payload == b"{not json"


def test_raw_record_with_its_own_id_keeps_it(processor, user_action_data):
    event = the_processed(run(processor, [raw_record(17, user_action_data(id="client-chosen-1"))]))

    assert event.event_id == "client-chosen-1"


def test_raw_record_is_received_when_it_was_written_to_the_log(processor, user_action_data):
    event = the_processed(run(processor, [raw_record(0, user_action_data())]))

    assert event.received_at == LOG_TIME_MS / 1000.0


@pytest.mark.parametrize(
    "log_time_ms",
    [2**63 - 1, 253_402_300_800_000, -(2**62), -1_000, 4_102_444_800_000],
    ids=["int64-max", "year-10000", "far-before-1970", "before-1970", "year-2100"],
)
def test_a_raw_record_whose_producer_time_is_far_off_is_received_when_it_was_read(
    processor, user_action_data, log_time_ms
):
    # given a bare event whose producer set a CreateTime no database timestamp (or sane clock) holds
    record = SourceRecord(INGEST, 0, 0, None, orjson.dumps(user_action_data()), log_time_ms)

    # when it is processed (and when the same record is dead-lettered)
    event = the_processed(run(processor, [record]))
    dead = the_dead(run(processor, [SourceRecord(INGEST, 0, 0, None, b"{not json", log_time_ms)]))

    # then it is received when it was read, not at that time
    assert event.received_at == 0.0 and dead.received_at == 0.0


def test_transient_failure_that_succeeds_on_attempt_2_is_processed_with_attempts_2(
    processor, scripted, sleeps, user_action_data
):
    event = the_processed(run(processor, [raw_record(0, user_action_data(action="transient-once"))]))

    assert event.attempts == 2
    assert scripted.calls["transient-once"] == 2
    assert len(sleeps) == 1
    assert 0.0 <= sleeps[0] <= processor.retry.base_s


# --- in-batch duplicates ----------------------------------------------------------------------------------------


def test_in_batch_duplicates_of_one_id_are_kept_once_and_listed(processor, sensor_data):
    first = api_record(10, sensor_data(reading=1.0), "sensor-1")
    second = api_record(11, sensor_data(reading=2.0), "sensor-1")
    third = api_record(12, sensor_data(reading=3.0), "sensor-1")

    batch = run(processor, [first, second, third])

    assert [(p.event_id, p.offset) for p in batch.processed] == [("sensor-1", 10)]
    assert batch.in_batch_duplicates == (("sensor-1", 11, "default"), ("sensor-1", 12, "default"))
    assert batch.next_offset == 13


def test_raw_records_with_the_same_client_id_are_duplicates(processor, user_action_data):
    batch = run(processor, [raw_record(0, user_action_data(id="same")), raw_record(1, user_action_data(id="same"))])

    assert [p.offset for p in batch.processed] == [0]
    assert batch.in_batch_duplicates == (("same", 1, "default"),)


def test_identical_raw_records_without_ids_are_distinct_events(processor, user_action_data):
    # Without an id, two writes are two events: their log positions differ.
    batch = run(processor, [raw_record(0, user_action_data()), raw_record(1, user_action_data())])

    assert len(batch.processed) == 2
    assert batch.in_batch_duplicates == ()


# --- dead letters -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [b"{not json", b"\xff\xfe", b"[1, 2]", b'"just a string"', b"null", b""],
    ids=["broken", "not-utf8", "array", "string", "null", "empty"],
)
def test_undecodable_raw_record_is_dead_lettered_as_invalid_with_its_bytes(processor, value):
    dead = the_dead(run(processor, [raw_record(3, value)]))

    assert (dead.offset, dead.error_kind, dead.attempts) == (3, "invalid", 1)
    assert dead.payload == value
    assert dead.event_id is None
    assert dead.received_at == LOG_TIME_MS / 1000.0


def test_record_without_a_value_is_dead_lettered_as_invalid(processor):
    dead = the_dead(run(processor, [raw_record(0, None)]))

    assert (dead.error_kind, dead.payload) == ("invalid", None)


def test_garbage_on_an_api_topic_is_dead_lettered_as_invalid(processor):
    record = SourceRecord(SENSOR_TOPIC, 0, 0, None, b'{"id": "x"}', LOG_TIME_MS)

    dead = the_dead(run(processor, [record]))

    assert dead.error_kind == "invalid"
    assert "not an eventpipe envelope" in dead.reason


def test_event_with_wrong_types_is_invalid_and_names_the_fields(processor, sensor_data):
    dead = the_dead(run(processor, [raw_record(0, sensor_data(reading="hot", location={"lat": 99, "lon": 0}))]))

    assert dead.error_kind == "invalid"
    assert "reading:" in dead.reason and "location.lat:" in dead.reason


def test_event_of_unknown_type_is_invalid(processor, transaction_data):
    dead = the_dead(run(processor, [raw_record(0, transaction_data(type="purchase"))]))

    assert dead.error_kind == "invalid"
    assert "unknown event type 'purchase'" in dead.reason


def test_record_over_the_size_limit_is_invalid_and_at_the_limit_is_processed(registry, transaction_data):
    record = raw_record(0, transaction_data(metadata={"blob": "x" * 500}))
    size = len(record.value or b"")

    at_limit = run(PartitionProcessor(registry, INGEST, sleep=lambda s: None, max_record_bytes=size), [record])
    over_limit = run(PartitionProcessor(registry, INGEST, sleep=lambda s: None, max_record_bytes=size - 1), [record])

    assert len(at_limit.processed) == 1
    dead = the_dead(over_limit)
    assert dead.error_kind == "invalid"
    assert f"{size} bytes exceeds" in dead.reason
    assert dead.payload == record.value


def test_event_with_a_nul_character_is_invalid_and_keeps_only_its_raw_bytes(processor, transaction_data):
    record = raw_record(0, transaction_data(metadata={"note": "a\u0000b"}))

    dead = the_dead(run(processor, [record]))

    assert dead.error_kind == "invalid"
    assert "NUL" in dead.reason
    assert dead.payload == record.value
    assert (dead.event_id, dead.payload_json) == (None, None)


def test_event_with_unknown_currency_is_poison_with_its_identity(processor, transaction_data):
    dead = the_dead(run(processor, [raw_record(9, transaction_data(currency="XYZ"))]))

    assert (dead.error_kind, dead.attempts) == ("poison", 1)
    assert "'XYZ'" in dead.reason
    assert dead.event_id == ids.from_log_position(INGEST, 0, 9)
    assert (dead.type, dead.schema_version, dead.entity_key) == ("transaction", 1, "user-1")
    assert orjson.loads(dead.payload_json or "null")["currency"] == "XYZ"


def test_handler_that_always_fails_transiently_is_exhausted_after_exactly_3_attempts(
    processor, scripted, sleeps, user_action_data
):
    dead = the_dead(run(processor, [raw_record(0, user_action_data(action="always-transient"))]))

    assert (dead.error_kind, dead.attempts) == ("exhausted", 3)
    assert scripted.calls["always-transient"] == 3
    assert len(sleeps) == 2
    assert "downstream unavailable" in dead.reason


def test_handler_bug_is_dead_lettered_as_handler_error_without_retry(processor, scripted, sleeps, user_action_data):
    dead = the_dead(run(processor, [raw_record(0, user_action_data(action="buggy"))]))

    assert (dead.error_kind, dead.attempts) == ("handler_error", 1)
    assert dead.reason == "KeyError: 'missing-key'"
    assert scripted.calls["buggy"] == 1
    assert sleeps == []


def test_a_dead_record_does_not_stop_the_records_after_it(processor, user_action_data):
    batch = run(processor, [raw_record(0, b"garbage"), raw_record(1, user_action_data())])

    assert [d.offset for d in batch.dead] == [0]
    assert [p.offset for p in batch.processed] == [1]


# --- envelope and payload must agree ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("type", "transaction"), ("type", "no-such-type"), ("schema_version", 2), ("id", "some-other-id")],
)
def test_envelope_that_disagrees_with_its_payload_is_invalid(processor, sensor_data, field, value):
    envelope = orjson.loads(api_record(0, sensor_data(), "sensor-1").value or b"")
    envelope[field] = value
    record = SourceRecord(SENSOR_TOPIC, 0, 0, None, orjson.dumps(envelope), LOG_TIME_MS)

    dead = the_dead(run(processor, [record]))

    assert dead.error_kind == "invalid"


def test_envelope_metadata_with_a_nul_character_is_invalid(processor, sensor_data):
    # The events table keeps correlation ids as PostgreSQL text, which cannot hold NUL either.
    envelope = orjson.loads(api_record(0, sensor_data(), "sensor-1").value or b"")
    envelope["correlation_id"] = "corr\u0000"
    record = SourceRecord(SENSOR_TOPIC, 0, 0, None, orjson.dumps(envelope), LOG_TIME_MS)

    dead = the_dead(run(processor, [record]))

    assert dead.error_kind == "invalid"


def test_literal_backslash_u0000_text_is_not_mistaken_for_a_nul_character(processor, user_action_data):
    # Six ordinary characters, e.g. a Windows path or a JSON snippet a user typed: storable in jsonb.
    event = the_processed(run(processor, [raw_record(0, user_action_data(target="C:\\u0000\\file"))]))

    assert orjson.loads(event.payload_json)["target"] == "C:\\u0000\\file"


# --- each record is validated once ------------------------------------------------------------------------------


class CountingRegistry(Registry):
    def __init__(self) -> None:
        super().__init__(default_registry().specs, default_registry().time_window)
        self.parsed = 0

    def parse(self, raw: Any):  # type: ignore[no-untyped-def]
        self.parsed += 1
        return super().parse(raw)


def test_a_bare_event_and_an_api_envelope_are_each_validated_once(sensor_data):
    registry = CountingRegistry()
    processor = PartitionProcessor(registry, INGEST, rng=random.Random(0))

    bare = processor.outcomes([raw_record(0, sensor_data())], consumed_at=0.0)
    assert registry.parsed == 1 and isinstance(bare[0], ProcessedEvent)
    stored = orjson.loads(bare[0].payload_json)
    assert stored["id"] == ids.from_log_position(INGEST, 0, 0) and stored["device_id"] == "device-1"

    enveloped = processor.outcomes([api_record(1, sensor_data(), "sensor-1")], consumed_at=0.0)
    assert registry.parsed == 2 and isinstance(enveloped[0], ProcessedEvent)
    assert (enveloped[0].entity_key, enveloped[0].entity_field) == ("device-1", "device_id")
