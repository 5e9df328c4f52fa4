"""Specification of whole-batch validation (`Registry.parse_many`) and of `Registry.parse_json`: each gives, for every
event, exactly what `Registry.parse` gives it alone (the event, or the same InvalidEvent: reason and field errors)."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.errors import InvalidEvent
from pipelines.registry import EventTypeSpec, Registry, default_registry
from pipelines.schemas import UserActionV1
from tests.unit.test_hostile_events_property import NOW, PROPERTY, events

REGISTRY = default_registry(clock=lambda: NOW)
STAMP = datetime.fromtimestamp(NOW, UTC).isoformat()


def sensor(**fields: Any) -> dict[str, Any]:
    base = {
        "type": "sensor",
        "id": "s-1",
        "timestamp": STAMP,
        "device_id": "d-1",
        "reading": 21.5,
        "unit": "C",
        "location": {"lat": 1.0, "lon": 2.0},
    }
    return {**base, **fields}


def user_action(**fields: Any) -> dict[str, Any]:
    base = {"type": "user_action", "id": "u-1", "timestamp": STAMP, "user_id": "u", "action": "a", "target": "t"}
    return {**base, **fields}


def alone(registry: Registry, raw: Any) -> Any:
    try:
        return registry.parse(raw)
    except InvalidEvent as exc:
        return exc


def same(got: Any, want: Any) -> bool:
    if isinstance(want, InvalidEvent):
        return isinstance(got, InvalidEvent) and (got.reason, got.errors) == (want.reason, want.errors)
    return type(got) is type(want) and got == want


def assert_as_alone(registry: Registry, raws: list[Any]) -> None:
    outcomes = registry.parse_many(raws)
    assert len(outcomes) == len(raws)
    for raw, got in zip(raws, outcomes, strict=True):
        want = alone(registry, raw)
        assert same(got, want), (raw, got, want)


def test_a_valid_batch_gives_each_event_as_parse_does():
    raws = [sensor(id=f"s-{i}") for i in range(5)] + [user_action(id=f"u-{i}") for i in range(5)]
    outcomes = REGISTRY.parse_many(raws)
    assert all(not isinstance(o, InvalidEvent) for o in outcomes)
    assert_as_alone(REGISTRY, raws)


@pytest.mark.parametrize(
    "invalid",
    [
        42,
        None,
        [sensor()],
        {"type": "nope", "timestamp": STAMP},
        {"timestamp": STAMP},
        sensor(type=1),
        sensor(schema_version=True),  # bool is not a version
        sensor(schema_version=1.0),
        sensor(schema_version="1"),
        sensor(schema_version=2),
        sensor(reading=1e9),  # outside the unit's physical range (a model-level check)
        sensor(extra_field=1),
        user_action(user_id="a\x00b"),  # NUL cannot be stored
        user_action(metadata={"k": 2**70}),  # metadata integers within 64 bits
        sensor(timestamp="1960-01-01T00:00:00Z"),  # before the event-time window
        sensor(timestamp="2999-01-01T00:00:00Z"),  # after it
    ],
)
def test_an_invalid_event_gets_its_own_answer_and_the_others_are_still_validated(invalid):
    raws = [sensor(id="before"), invalid, user_action(id="after")]
    outcomes = REGISTRY.parse_many(raws)
    assert isinstance(outcomes[1], InvalidEvent)
    assert not isinstance(outcomes[0], InvalidEvent) and not isinstance(outcomes[2], InvalidEvent)
    assert_as_alone(REGISTRY, raws)


def test_the_event_time_window_is_judged_in_a_valid_batch_too():
    raws = [sensor(id="ok"), sensor(id="late", timestamp="2999-01-01T00:00:00Z")]
    ok, late = REGISTRY.parse_many(raws)
    assert not isinstance(ok, InvalidEvent)
    assert isinstance(late, InvalidEvent) and late.errors[0].type == "time_window"
    assert_as_alone(REGISTRY, raws)


def test_a_batch_dispatches_on_schema_version_as_parse_does():
    class UserActionV2(UserActionV1):
        schema_version: int = 2  # type: ignore[assignment]

    registry = Registry(clock=lambda: NOW)
    registry.register(EventTypeSpec("user_action", {1: UserActionV1, 2: UserActionV2}, handler=None))  # type: ignore[arg-type]
    raws = [user_action(), user_action(schema_version=2), user_action(schema_version=3), user_action(schema_version=1)]
    v1, v2, v3, v1_again = registry.parse_many(raws)
    assert type(v1) is UserActionV1 and type(v2) is UserActionV2 and type(v1_again) is UserActionV1
    assert isinstance(v3, InvalidEvent)
    assert_as_alone(registry, raws)


def test_a_registry_of_one_model_validates_batches_item_by_item():
    registry = Registry(clock=lambda: NOW)
    registry.register(EventTypeSpec("user_action", {1: UserActionV1}, handler=None))  # type: ignore[arg-type]
    assert_as_alone(registry, [user_action(), sensor(), user_action(action="")])


def test_a_type_registered_after_a_batch_is_validated_in_the_next():
    registry = Registry(clock=lambda: NOW)
    registry.register(EventTypeSpec("user_action", {1: UserActionV1}, handler=None))  # type: ignore[arg-type]
    two = default_registry(clock=lambda: NOW)
    registry.register(two.spec("sensor"))
    assert registry.parse_many([user_action()]) and not isinstance(registry.parse_many([sensor()])[0], InvalidEvent)
    registry.register(two.spec("transaction"))
    transaction = {"type": "transaction", "id": "t", "timestamp": STAMP, "user_id": "u", "amount": "1.5"}
    (parsed,) = registry.parse_many([{**transaction, "currency": "EUR"}])
    assert not isinstance(parsed, InvalidEvent) and parsed.type == "transaction"  # type: ignore[attr-defined]


@PROPERTY
@given(st.lists(st.one_of(*events.values()), min_size=1, max_size=8))
def test_any_batch_gives_each_event_what_parse_gives_it_alone(raws):
    assert_as_alone(REGISTRY, raws)


@PROPERTY
@given(st.one_of(*events.values()))
def test_parse_json_is_parse_of_the_decoded_bytes(raw):
    try:
        data = orjson.dumps(raw)
    except TypeError:  # orjson cannot write it (e.g. an integer over 64 bits): not bytes a client could send
        return
    assert same(alone_json(data), alone(REGISTRY, orjson.loads(data)))


def alone_json(data: bytes) -> Any:
    try:
        return REGISTRY.parse_json(data)
    except InvalidEvent as exc:
        return exc


@pytest.mark.parametrize("data", [b"", b"{", b"[1,", b"\xff", b'{"a": 1} x'])
def test_bytes_that_are_not_json_are_an_invalid_event_with_the_parsers_position(data):
    with pytest.raises(InvalidEvent) as refused:
        REGISTRY.parse_json(data)
    with pytest.raises(orjson.JSONDecodeError) as parser:
        orjson.loads(data)
    assert refused.value.reason == f"record is not valid JSON: {parser.value}"  # as a dead letter has said since 001


def test_parse_json_of_a_valid_event_is_the_event():
    assert REGISTRY.parse_json(orjson.dumps(sensor())) == REGISTRY.parse(sensor())


def test_a_registry_that_validated_a_batch_still_pickles_and_validates_batches_where_it_lands():
    registry = default_registry(clock=fixed_clock)
    registry.parse_many([sensor(), user_action()])
    copy = pickle.loads(pickle.dumps(registry))
    outcomes = copy.parse_many([sensor(), user_action(), sensor(reading="x")])
    assert [isinstance(o, InvalidEvent) for o in outcomes] == [False, False, True]
    assert_as_alone(copy, [sensor(), user_action(), sensor(reading="x")])


def fixed_clock() -> float:
    return NOW
