"""Sensor handler: normalises a reading to SI units and flags it when outside the unit's plausible range.

Conversion and range tables are plain data; nothing here reads a device or a clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pipelines.effects import DeviceReading
from pipelines.handlers.base import HandlerResult
from pipelines.schemas import SensorV1

# unit -> (SI unit, conversion)
CONVERSIONS: Mapping[str, tuple[str, Callable[[float], float]]] = {
    "K": ("K", lambda v: v),
    "C": ("K", lambda v: v + 273.15),
    "F": ("K", lambda v: (v - 32.0) * 5.0 / 9.0 + 273.15),
    "Pa": ("Pa", lambda v: v),
    "kPa": ("Pa", lambda v: v * 1_000.0),
    "bar": ("Pa", lambda v: v * 100_000.0),
    "psi": ("Pa", lambda v: v * 6_894.757293168),
    "%": ("ratio", lambda v: v / 100.0),
    "m": ("m", lambda v: v),
    "cm": ("m", lambda v: v / 100.0),
    "ft": ("m", lambda v: v * 0.3048),
    "lux": ("lx", lambda v: v),
}

# Plausible range per SI unit for field sensors; outside it the reading is kept but flagged.
DEFAULT_RANGES: Mapping[str, tuple[float, float]] = {
    "K": (173.15, 373.15),  # -100 C .. 100 C
    "Pa": (0.0, 2_000_000.0),
    "ratio": (0.0, 1.0),
    "m": (-500.0, 10_000.0),
    "lx": (0.0, 150_000.0),
}


@dataclass(frozen=True)
class SensorHandler:
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_RANGES))

    def __call__(self, event: SensorV1) -> HandlerResult:
        si_unit, convert = CONVERSIONS[event.unit]
        value = round(convert(event.reading), 9)
        low, high = self.ranges[si_unit]
        out_of_range = not (low <= value <= high)
        result = {
            "si_value": value,
            "si_unit": si_unit,
            "out_of_range": out_of_range,
            "range": [low, high],
        }
        return HandlerResult(result, (DeviceReading(event.device_id, si_unit, value, out_of_range),))
