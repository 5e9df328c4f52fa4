"""Specification of what a sensor reading may be: physically possible for its unit, finite once converted to SI.

Issue 8, finding 1: `1e308 bar` passed validation, became `inf` Pa, was written as JSON null into a NOT NULL column.
"""

from __future__ import annotations

import math

import jsonschema
import orjson
import pytest

from pipelines.errors import InvalidEvent, PoisonEvent
from pipelines.handlers.sensor import SensorHandler
from pipelines.registry import default_registry
from pipelines.schemas import SUPPORTED_UNITS, SensorV1
from pipelines.units import CONVERSIONS, MAX_SI_MAGNITUDE, PHYSICAL_RANGES, to_si


@pytest.fixture
def registry():
    return default_registry()


def refusal(registry, raw) -> dict[str, str]:
    with pytest.raises(InvalidEvent) as caught:
        registry.parse(raw)
    return {e.loc: e.msg for e in caught.value.errors}


def test_a_huge_finite_reading_is_refused_at_validation_with_a_field_error(registry, sensor_data):
    # given a reading that is finite but would overflow to inf once converted (1e308 bar * 1e5 Pa/bar)
    raw = sensor_data(reading=1e308, unit="bar")

    # when it is validated, then it is refused on the `reading` field
    errors = refusal(registry, raw)

    assert list(errors) == ["reading"]


@pytest.mark.parametrize(
    ("reading", "unit"),
    [
        (-273.16, "C"),  # below absolute zero
        (-0.01, "K"),
        (-460.0, "F"),
        (-0.001, "Pa"),  # absolute pressure is never negative
        (-0.1, "%"),
        (100.1, "%"),
        (-0.5, "lux"),
        (10_001.0, "K"),
        (20_000.0, "C"),
        (145_001.0, "psi"),
        (10_001.0, "bar"),
        (100_001.0, "m"),
    ],
)
def test_a_physically_impossible_reading_is_refused_naming_its_unit_range(registry, sensor_data, reading, unit):
    errors = refusal(registry, sensor_data(reading=reading, unit=unit))

    assert list(errors) == ["reading"]
    low, high = PHYSICAL_RANGES[unit]
    assert f"in {unit} must be between {low:g} and {high:g}" in errors["reading"]


@pytest.mark.parametrize("unit", SUPPORTED_UNITS)
def test_both_ends_of_every_units_physical_range_are_accepted_and_stay_finite_in_si(registry, sensor_data, unit):
    for reading in PHYSICAL_RANGES[unit]:
        event = registry.parse(sensor_data(reading=reading, unit=unit))
        outcome = SensorHandler()(event)

        value = outcome.result["si_value"]
        assert math.isfinite(value) and abs(value) <= MAX_SI_MAGNITUDE
        assert orjson.loads(orjson.dumps(outcome.result))["si_value"] == value


def test_every_unit_has_a_conversion_and_a_physical_range():
    assert set(SUPPORTED_UNITS) == set(CONVERSIONS) == set(PHYSICAL_RANGES)


def test_the_device_stats_columns_cannot_reach_infinity_in_a_realistic_lifetime():
    # The argument of migration 004, as arithmetic: 10,000 readings/s of the largest magnitude for 1,000 years.
    readings = 10_000 * 3600 * 24 * 366 * 1000
    assert math.isfinite(MAX_SI_MAGNITUDE * readings)
    assert max(abs(to_si(u, r)[1]) for u, bounds in PHYSICAL_RANGES.items() for r in bounds) <= MAX_SI_MAGNITUDE


def test_a_non_finite_si_value_is_refused_by_the_handler_not_passed_on():
    # given a reading built without validation (a caller skipping the registry), 1e308 bar
    event = SensorV1.model_construct(
        type="sensor", device_id="d", reading=1e308, unit="bar", location=None, timestamp=None
    )

    # when the handler converts it, then it refuses the event instead of emitting inf (JSON null)
    with pytest.raises(PoisonEvent, match="not a finite number"):
        SensorHandler()(event)


def test_the_published_schema_states_the_reading_bounds_per_unit(registry):
    schema = registry.json_schemas()["sensor"]["1"]

    reading = schema["properties"]["reading"]
    assert (reading["minimum"], reading["maximum"]) == (-10_000_000.0, 1e9)
    per_unit = {c["if"]["properties"]["unit"]["const"]: c["then"]["properties"]["reading"] for c in schema["allOf"]}
    assert per_unit["bar"] == {"minimum": 0.0, "maximum": 10_000.0}
    assert per_unit["C"] == {"minimum": -273.15, "maximum": 9_726.85}
    assert set(per_unit) == set(SUPPORTED_UNITS)


@pytest.mark.parametrize(
    ("reading", "unit", "valid"),
    [(21.5, "C", True), (-300.0, "C", False), (1e308, "bar", False), (10_000.0, "bar", True), (10_001.0, "bar", False)],
)
def test_a_json_schema_validator_reading_the_published_schema_agrees_with_the_api(
    registry, sensor_data, reading, unit, valid
):
    validator = jsonschema.Draft202012Validator(registry.json_schemas()["sensor"]["1"])

    assert validator.is_valid(sensor_data(reading=reading, unit=unit)) is valid
