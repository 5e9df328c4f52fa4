"""Effects a handler asks for on the read models, and their aggregation per batch.

Pure values: the checkpoint writer applies the aggregate in the commit transaction.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Iterable, Union


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


Effect = Union[UserSpend, DeviceReading, ActionCount]


@dataclass
class DeviceAggregate:
    count: int = 0
    total: float = 0.0
    minimum: float = float("inf")
    maximum: float = float("-inf")
    out_of_range: int = 0


@dataclass
class ReadModelDeltas:
    """Per-key sums of a batch's effects, with keys sorted so concurrent commits lock rows in one order."""

    user_spend: dict[tuple[str, str], tuple[Decimal, int, int]] = field(default_factory=dict)
    device_stats: dict[tuple[str, str], DeviceAggregate] = field(default_factory=dict)
    action_counts: dict[tuple[str, str], int] = field(default_factory=dict)

    @classmethod
    def of(cls, effects: Iterable[Effect]) -> "ReadModelDeltas":
        spend: dict[tuple[str, str], list[Decimal | int]] = defaultdict(lambda: [Decimal(0), 0, 0])
        devices: dict[tuple[str, str], DeviceAggregate] = defaultdict(DeviceAggregate)
        actions: dict[tuple[str, str], int] = defaultdict(int)
        for effect in effects:
            if isinstance(effect, UserSpend):
                row = spend[(effect.user_id, effect.base_currency)]
                row[0] = Decimal(row[0]) + effect.amount
                row[1] = int(row[1]) + 1
                row[2] = int(row[2]) + int(effect.flagged)
            elif isinstance(effect, DeviceReading):
                agg = devices[(effect.device_id, effect.si_unit)]
                agg.count += 1
                agg.total += effect.value
                agg.minimum = min(agg.minimum, effect.value)
                agg.maximum = max(agg.maximum, effect.value)
                agg.out_of_range += int(effect.out_of_range)
            else:
                actions[(effect.user_id, effect.action)] += 1
        return cls(
            user_spend={k: (Decimal(v[0]), int(v[1]), int(v[2])) for k, v in sorted(spend.items())},
            device_stats=dict(sorted(devices.items())),
            action_counts=dict(sorted(actions.items())),
        )
