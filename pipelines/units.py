"""Sensor units: the conversion of a reading to SI, and the range a reading in each unit can physically have.

Plain data and arithmetic; it never decides what is plausible for a field sensor (the sensor handler flags that).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

# unit -> (SI unit, conversion). The formulas are those records were processed with: changing one changes replays.
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

# unit -> (lowest, highest) reading any sensor can report, inclusive. Outside it the reading is not a measurement
# (a unit mix-up, a sign error, a fuzzer) and is refused at validation. The ceilings are generous for industrial
# sensors and chosen so that every reading converts to |SI value| <= MAX_SI_MAGNITUDE:
#   temperature: absolute zero .. 10,000 K (above any contact or pyrometric sensor; the Sun's surface is 5,772 K);
#   pressure (absolute): 0 .. 1 GPa (the strongest industrial presses and waterjets stay below it);
#   relative values: 0 .. 100 %; lengths: +-100 km (sea floor to the edge of space); illuminance: 0 .. 1,000,000 lx.
PHYSICAL_RANGES: Mapping[str, tuple[float, float]] = {
    "K": (0.0, 10_000.0),
    "C": (-273.15, 9_726.85),
    "F": (-459.67, 17_540.33),
    "Pa": (0.0, 1e9),
    "kPa": (0.0, 1e6),
    "bar": (0.0, 1e4),
    "psi": (0.0, 145_000.0),
    "%": (0.0, 100.0),
    "m": (-100_000.0, 100_000.0),
    "cm": (-10_000_000.0, 10_000_000.0),
    "ft": (-328_000.0, 328_000.0),
    "lux": (0.0, 1_000_000.0),
}
# The envelope of every unit's range: what the schema can state about `reading` without knowing the unit.
READING_MIN = min(low for low, _ in PHYSICAL_RANGES.values())
READING_MAX = max(high for _, high in PHYSICAL_RANGES.values())
# No reading in range converts to an SI value larger than this (psi's ceiling is 999,739,807.5 Pa).
MAX_SI_MAGNITUDE = 1e9


def physical_range_problem(unit: str, reading: float) -> str | None:
    """Why `reading` cannot be a measurement in `unit`, or None when it can."""
    low, high = PHYSICAL_RANGES[unit]
    if low <= reading <= high:
        return None
    return f"a reading in {unit} must be between {low:g} and {high:g} (physically possible range), got {reading:g}"


def to_si(unit: str, reading: float) -> tuple[str, float]:
    """(SI unit, value rounded to 9 decimals); ValueError when the result is not a finite number."""
    si_unit, convert = CONVERSIONS[unit]
    value = round(convert(reading), 9)
    if not math.isfinite(value):
        raise ValueError(f"reading {reading!r} {unit} converts to {value!r} {si_unit}, not a finite number")
    return si_unit, value
