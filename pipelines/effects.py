"""Effects a handler asks for on the read models: pure values.

The commit statement aggregates them per key (GROUP BY, in key order) for the events that are new.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class UserSpend:
    """A transaction adds its base-currency amount to the user's running total."""

    user_id: str
    base_currency: str
    amount: Decimal
    flagged: bool


@dataclass(frozen=True)
class DeviceReading:
    """A sensor reading, normalised to SI, feeds the device's statistics."""

    device_id: str
    si_unit: str
    value: float
    out_of_range: bool


@dataclass(frozen=True)
class ActionCount:
    """A user action increments the per-user, per-action counter."""

    user_id: str
    action: str


Effect = UserSpend | DeviceReading | ActionCount
