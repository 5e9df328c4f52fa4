"""Specification of the entity accessor: which field of an event names its entity, validated or not."""

from __future__ import annotations

from pipelines.entity import entity_key, entity_of
from pipelines.registry import default_registry


def test_a_validated_event_and_its_payload_name_the_same_entity(transaction_data, sensor_data, user_action_data):
    registry = default_registry()
    for raw, field in ((transaction_data(), "user_id"), (sensor_data(), "device_id"), (user_action_data(), "user_id")):
        event = registry.parse(raw)
        assert entity_of(event) == (field, raw[field]) == entity_of(raw)
        assert entity_key(event) == event.entity_key()


def test_a_payload_without_a_string_entity_field_names_none():
    assert entity_of({"type": "sensor", "device_id": 7}) is None
    assert entity_key({}) is None
