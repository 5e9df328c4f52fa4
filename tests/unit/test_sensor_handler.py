"""Specification of the sensor handler: every unit normalised to SI, and flags at the plausible-range bounds."""

from __future__ import annotations

import pytest

from pipelines.effects import DeviceReading
from pipelines.handlers.sensor import SensorHandler
from pipelines.registry import default_registry
from pipelines.schemas import SUPPORTED_UNITS, SensorV1


@pytest.fixture
def reading(sensor_data):
    registry = default_registry()

    def build(value: float, unit: str) -> SensorV1:
        event = registry.parse(sensor_data(reading=value, unit=unit))
        assert isinstance(event, SensorV1)
        return event

    return build


CONVERSIONS = [
    (20.0, "C", 293.15, "K"),
    (212.0, "F", 373.15, "K"),
    (32.0, "F", 273.15, "K"),
    (300.0, "K", 300.0, "K"),
    (101325.0, "Pa", 101325.0, "Pa"),
    (101.325, "kPa", 101325.0, "Pa"),
    (1.5, "bar", 150000.0, "Pa"),
    (1.0, "psi", 6894.757293168, "Pa"),
    (55.0, "%", 0.55, "ratio"),
    (12.0, "m", 12.0, "m"),
    (250.0, "cm", 2.5, "m"),
    (10.0, "ft", 3.048, "m"),
    (500.0, "lux", 500.0, "lx"),
]


def test_every_supported_unit_has_a_conversion_case():
    assert {unit for _, unit, _, _ in CONVERSIONS} == set(SUPPORTED_UNITS)


@pytest.mark.parametrize(("value", "unit", "si_value", "si_unit"), CONVERSIONS)
def test_reading_is_normalised_to_si(reading, value, unit, si_value, si_unit):
    outcome = SensorHandler()(reading(value, unit))

    assert outcome.result["si_unit"] == si_unit
    assert outcome.result["si_value"] == pytest.approx(si_value, abs=1e-9)
    assert outcome.result["out_of_range"] is False
    (effect,) = outcome.effects
    assert effect == DeviceReading("device-1", si_unit, outcome.result["si_value"], False)


def test_si_value_is_rounded_to_nine_decimals(reading):
    # 0.1 + 273.15 is 273.25000000000006 in binary floating point.
    assert SensorHandler()(reading(0.1, "C")).result["si_value"] == 273.25


@pytest.mark.parametrize(
    ("value", "unit"),
    [
        (-100.0, "C"),
        (100.0, "C"),
        (-148.0, "F"),
        (212.0, "F"),
        (173.15, "K"),
        (373.15, "K"),
        (0.0, "Pa"),
        (20.0, "bar"),
        (0.0, "%"),
        (100.0, "%"),
        (-500.0, "m"),
        (10_000.0, "m"),
        (0.0, "lux"),
        (150_000.0, "lux"),
    ],
)
def test_reading_on_the_range_bound_is_in_range(reading, value, unit):
    assert SensorHandler()(reading(value, unit)).result["out_of_range"] is False


@pytest.mark.parametrize(
    ("value", "unit"),
    [
        (-100.01, "C"),
        (100.01, "C"),
        (212.1, "F"),
        (173.14, "K"),
        (20.001, "bar"),
        (2_000_000.5, "Pa"),
        (-500.01, "m"),
        (1_000_001.0, "cm"),
        (150_000.5, "lux"),
    ],
)
def test_reading_just_outside_the_range_is_flagged_but_kept(reading, value, unit):
    outcome = SensorHandler()(reading(value, unit))

    assert outcome.result["out_of_range"] is True
    assert outcome.effects[0].out_of_range is True


def test_result_reports_the_range_used(reading):
    assert SensorHandler()(reading(21.0, "C")).result["range"] == [173.15, 373.15]


def test_custom_ranges_replace_the_defaults(reading):
    handler = SensorHandler(ranges={"K": (273.15, 283.15)})

    assert handler(reading(5.0, "C")).result["out_of_range"] is False
    assert handler(reading(21.0, "C")).result["out_of_range"] is True
