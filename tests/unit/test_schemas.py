"""Specification of the versioned event models: what the edge accepts and what it refuses, field by field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from pipelines.errors import InvalidEvent
from pipelines.registry import Registry, default_registry
from pipelines.schemas import SensorV1, TransactionV1, UserActionV1


@pytest.fixture(scope="module")
def registry() -> Registry:
    return default_registry()


def errors_of(registry: Registry, raw: Any) -> dict[str, str]:
    """Parse `raw`, expecting failure; returns {loc: error type}."""
    with pytest.raises(InvalidEvent) as caught:
        registry.parse(raw)
    return {e.loc: e.type for e in caught.value.errors}


# --- valid events -----------------------------------------------------------------------------------------------


def test_valid_transaction_is_parsed_with_decimal_amount(registry, transaction_data):
    event = registry.parse(transaction_data())

    assert isinstance(event, TransactionV1)
    assert event.amount == Decimal("12.50")
    assert event.currency == "EUR"
    assert event.metadata == {}
    assert event.entity_key() == "user-1"


def test_valid_sensor_event_is_parsed_with_its_location(registry, sensor_data):
    event = registry.parse(sensor_data())

    assert isinstance(event, SensorV1)
    assert event.reading == 21.5
    assert (event.location.lat, event.location.lon) == (52.52, 13.405)
    assert event.entity_key() == "device-1"


def test_valid_user_action_is_parsed(registry, user_action_data):
    event = registry.parse(user_action_data(metadata={"page": "/cart"}))

    assert isinstance(event, UserActionV1)
    assert (event.action, event.target) == ("click", "checkout-button")
    assert event.metadata == {"page": "/cart"}
    assert event.entity_key() == "user-1"


def test_schema_version_defaults_to_1_and_lineage_to_empty(registry, user_action_data):
    event = registry.parse(user_action_data())

    assert event.schema_version == 1
    assert event.id is None
    assert event.parent_ids == []
    assert event.correlation_id is None


def test_naive_timestamp_is_read_as_utc(registry, sensor_data):
    event = registry.parse(sensor_data(timestamp="2024-05-01T10:00:00"))

    assert event.timestamp == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert event.timestamp.utcoffset() == timedelta(0)


def test_aware_timestamp_keeps_its_offset(registry, sensor_data):
    event = registry.parse(sensor_data(timestamp="2024-05-01T12:00:00+02:00"))

    assert event.timestamp == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert event.timestamp.utcoffset() == timedelta(hours=2)


def test_events_are_immutable(registry, sensor_data):
    event = registry.parse(sensor_data())

    with pytest.raises(ValidationError, match="frozen"):
        event.reading = 0.0  # type: ignore[misc]


# --- field-level errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "loc", "kind"),
    [
        ("amount", "twelve", "amount", "decimal_parsing"),
        ("amount", "1.0000001", "amount", "decimal_max_places"),
        ("user_id", 42, "user_id", "string_type"),
        ("user_id", "", "user_id", "string_too_short"),
        ("metadata", ["not", "a", "dict"], "metadata", "dict_type"),
        ("timestamp", "yesterday-ish", "timestamp", "datetime_from_date_parsing"),
    ],
)
def test_transaction_with_wrong_type_reports_the_field(registry, transaction_data, field, value, loc, kind):
    assert errors_of(registry, transaction_data(**{field: value})) == {loc: kind}


@pytest.mark.parametrize("currency", ["usd", "EURO", "E1R", "", "US"])
def test_currency_must_be_three_upper_case_letters(registry, transaction_data, currency):
    assert errors_of(registry, transaction_data(currency=currency)) == {"currency": "string_pattern_mismatch"}


@pytest.mark.parametrize("amount", [float("nan"), float("inf"), "NaN", "-Infinity"])
def test_non_finite_amount_is_rejected(registry, transaction_data, amount):
    assert errors_of(registry, transaction_data(amount=amount)) == {"amount": "finite_number"}


@pytest.mark.parametrize("missing", ["user_id", "amount", "currency", "timestamp"])
def test_transaction_missing_a_required_field_names_it(registry, transaction_data, missing):
    raw = transaction_data()
    del raw[missing]

    assert errors_of(registry, raw) == {missing: "missing"}


@pytest.mark.parametrize("missing", ["device_id", "reading", "unit", "location"])
def test_sensor_missing_a_required_field_names_it(registry, sensor_data, missing):
    raw = sensor_data()
    del raw[missing]

    assert errors_of(registry, raw) == {missing: "missing"}


def test_unknown_top_level_field_is_forbidden(registry, user_action_data):
    assert errors_of(registry, user_action_data(colour="red")) == {"colour": "extra_forbidden"}


def test_unknown_field_inside_location_is_forbidden(registry, sensor_data):
    raw = sensor_data(location={"lat": 1.0, "lon": 2.0, "alt": 30.0})

    assert errors_of(registry, raw) == {"location.alt": "extra_forbidden"}


@pytest.mark.parametrize(
    ("location", "loc", "kind"),
    [
        ({"lat": 90.01, "lon": 0}, "location.lat", "less_than_equal"),
        ({"lat": -90.01, "lon": 0}, "location.lat", "greater_than_equal"),
        ({"lat": 0, "lon": 180.01}, "location.lon", "less_than_equal"),
        ({"lat": 0, "lon": -180.01}, "location.lon", "greater_than_equal"),
    ],
)
def test_latitude_and_longitude_out_of_range_are_rejected(registry, sensor_data, location, loc, kind):
    assert errors_of(registry, sensor_data(location=location)) == {loc: kind}


@pytest.mark.parametrize("location", [{"lat": 90, "lon": 180}, {"lat": -90, "lon": -180}])
def test_latitude_and_longitude_on_the_bounds_are_accepted(registry, sensor_data, location):
    event = registry.parse(sensor_data(location=location))

    assert (event.location.lat, event.location.lon) == (location["lat"], location["lon"])


@pytest.mark.parametrize("reading", [float("nan"), float("inf"), float("-inf"), "NaN", "inf"])
def test_non_finite_reading_is_rejected(registry, sensor_data, reading):
    assert errors_of(registry, sensor_data(reading=reading)) == {"reading": "finite_number"}


def test_unsupported_unit_is_rejected(registry, sensor_data):
    assert errors_of(registry, sensor_data(unit="mph")) == {"unit": "literal_error"}


@pytest.mark.parametrize(
    ("event_id", "kind"),
    [
        ("has space", "string_pattern_mismatch"),
        ("slash/not-allowed", "string_pattern_mismatch"),
        ("", "string_too_short"),
        ("x" * 129, "string_too_long"),
    ],
)
def test_bad_event_id_is_rejected(registry, user_action_data, event_id, kind):
    assert errors_of(registry, user_action_data(id=event_id)) == {"id": kind}


@pytest.mark.parametrize("event_id", ["a", "x" * 128, "Order-42:v1.retry_2"])
def test_event_id_of_allowed_characters_up_to_128_is_accepted(registry, user_action_data, event_id):
    assert registry.parse(user_action_data(id=event_id)).id == event_id


def test_bad_parent_id_is_reported_by_its_index(registry, user_action_data):
    raw = user_action_data(parent_ids=["ok-1", "not ok"])

    assert errors_of(registry, raw) == {"parent_ids.1": "string_pattern_mismatch"}


def test_more_than_32_parent_ids_are_rejected(registry, user_action_data):
    raw = user_action_data(parent_ids=[f"p{i}" for i in range(33)])

    assert errors_of(registry, raw) == {"parent_ids": "too_long"}


def test_action_longer_than_256_characters_is_rejected(registry, user_action_data):
    assert errors_of(registry, user_action_data(action="a" * 257)) == {"action": "string_too_long"}


def test_every_problem_in_one_event_is_reported_at_once(registry, transaction_data):
    raw = transaction_data(amount="lots", currency="eur", surprise=True)

    assert errors_of(registry, raw) == {
        "amount": "decimal_parsing",
        "currency": "string_pattern_mismatch",
        "surprise": "extra_forbidden",
    }


@pytest.mark.parametrize("version", [2, 0, "1", 1.0, None])
def test_unsupported_schema_version_is_rejected(registry, sensor_data, version):
    assert errors_of(registry, sensor_data(schema_version=version)) == {"schema_version": "unsupported_version"}


# --- ids that differ only by Unicode normalisation ------------------------------------------------------------------


@pytest.mark.parametrize("field", ["user_id", "correlation_id", "causation_id"])
def test_an_id_not_in_nfc_is_refused_so_no_two_ids_differ_only_by_normalisation(registry, user_action_data, field):
    composed, decomposed = "caf\u00e9", "cafe\u0301"  # the same text to a reader, two byte strings
    assert registry.parse(user_action_data(**{field: composed}))
    assert errors_of(registry, user_action_data(**{field: decomposed})) == {field: "not_nfc"}


def test_a_device_id_not_in_nfc_is_refused(registry, sensor_data):
    assert errors_of(registry, sensor_data(device_id="\u212b-sensor")) == {"device_id": "not_nfc"}  # Angstrom sign
