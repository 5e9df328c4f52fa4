"""Specification of the registry: routing a raw object by type and version, and publishing JSON Schemas."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipelines.errors import FieldError, InvalidEvent
from pipelines.handlers.base import HandlerResult
from pipelines.registry import EventTypeSpec, Registry, default_registry
from pipelines.schemas import SensorV1, UserActionV1


class UserActionV2(UserActionV1):
    schema_version: int = 2  # type: ignore[assignment]


def noop_handler(event: Any) -> HandlerResult:
    return HandlerResult({}, ())


@pytest.fixture(scope="module")
def registry() -> Registry:
    return default_registry()


@pytest.mark.parametrize("raw", [[1, 2], "an event", 42, None, 1.5, True])
def test_non_object_input_is_invalid_at_the_root(registry, raw):
    with pytest.raises(InvalidEvent) as caught:
        registry.parse(raw)

    assert caught.value.errors == (FieldError("$", "expected an object", "type_error"),)


@pytest.mark.parametrize("event_type", ["purchase", None, 7, ["sensor"], ""])
def test_unknown_or_missing_type_is_invalid_and_lists_the_known_types(registry, sensor_data, event_type):
    with pytest.raises(InvalidEvent) as caught:
        registry.parse(sensor_data(type=event_type))

    (error,) = caught.value.errors
    assert (error.loc, error.type) == ("type", "unknown_type")
    assert error.msg == "must be one of: sensor, transaction, user_action"


def test_event_without_type_field_is_invalid(registry, sensor_data):
    raw = sensor_data()
    del raw["type"]

    with pytest.raises(InvalidEvent) as caught:
        registry.parse(raw)

    assert [e.loc for e in caught.value.errors] == ["type"]


def test_invalid_event_carries_field_errors_with_dotted_locations(registry, sensor_data):
    raw = sensor_data(reading="hot", location={"lat": 120, "lon": 0})

    with pytest.raises(InvalidEvent) as caught:
        registry.parse(raw)

    assert all(isinstance(e, FieldError) for e in caught.value.errors)
    assert sorted(e.loc for e in caught.value.errors) == ["location.lat", "reading"]
    assert caught.value.reason == "invalid sensor event"
    assert "location.lat: Input should be less than or equal to 90" in caught.value.describe()


def test_field_errors_serialise_to_plain_dicts(registry, sensor_data):
    with pytest.raises(InvalidEvent) as caught:
        registry.parse(sensor_data(unit="mph"))

    (error,) = caught.value.errors
    assert error.as_dict() == {"loc": "unit", "msg": error.msg, "type": "literal_error"}


def test_parse_dispatches_on_schema_version():
    given = Registry()
    given.register(EventTypeSpec("user_action", {1: UserActionV1, 2: UserActionV2}, noop_handler))
    raw = {"type": "user_action", "user_id": "u", "action": "a", "target": "t", "timestamp": "2024-01-01T00:00:00Z"}

    v1 = given.parse(raw)
    v2 = given.parse({**raw, "schema_version": 2})

    assert type(v1) is UserActionV1
    assert type(v2) is UserActionV2


def test_registering_a_type_twice_is_refused():
    given = Registry()
    given.register(EventTypeSpec("sensor", {1: SensorV1}, noop_handler))

    with pytest.raises(ValueError, match="already registered"):
        given.register(EventTypeSpec("sensor", {1: SensorV1}, noop_handler))


def test_default_registry_knows_the_three_event_types(registry):
    assert sorted(registry.types) == ["sensor", "transaction", "user_action"]


def test_json_schemas_publish_every_type_and_version():
    given = Registry()
    given.register(EventTypeSpec("user_action", {2: UserActionV2, 1: UserActionV1}, noop_handler))
    given.register(EventTypeSpec("sensor", {1: SensorV1}, noop_handler))

    schemas = given.json_schemas()

    assert {name: list(versions) for name, versions in schemas.items()} == {
        "user_action": ["1", "2"],
        "sensor": ["1"],
    }


@pytest.mark.parametrize(
    ("event_type", "required"),
    [
        ("transaction", {"type", "user_id", "amount", "currency", "timestamp"}),
        ("sensor", {"type", "device_id", "reading", "unit", "location", "timestamp"}),
        ("user_action", {"type", "user_id", "action", "target", "timestamp"}),
    ],
)
def test_published_json_schema_is_an_object_schema_with_required_fields(registry, event_type, required):
    schema = registry.json_schemas()[event_type]["1"]

    assert schema["type"] == "object"
    assert required <= set(schema["properties"])
    assert set(schema["required"]) == required
    assert schema["additionalProperties"] is False
    json.dumps(schema)  # publishable as-is at GET /schemas
