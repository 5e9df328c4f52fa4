"""Sensor handler: normalises a reading to SI units and flags it when outside the unit's plausible range.

The range table is plain data (conversions live in pipelines.units); nothing here reads a device or a clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pipelines.effects import DeviceReading
from pipelines.errors import PoisonEvent
from pipelines.handlers.base import HandlerResult
from pipelines.schemas import SensorV1
from pipelines.units import to_si

# Plausible range per SI unit for field sensors; outside it the reading is kept but flagged. What is physically
# impossible never gets here: the schema refuses it (pipelines.units.PHYSICAL_RANGES).
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
        try:
            si_unit, value = to_si(event.unit, event.reading)  # finite, or the event is refused here
        except ValueError as exc:
            raise PoisonEvent(str(exc)) from None
        low, high = self.ranges[si_unit]
        out_of_range = not (low <= value <= high)
        result = {
            "si_value": value,
            "si_unit": si_unit,
            "out_of_range": out_of_range,
            "range": [low, high],
        }
        return HandlerResult(result, (DeviceReading(event.device_id, si_unit, value, out_of_range),))
