"""Deterministic generator of realistic, valid eventpipe events for load tests.

Pure: no I/O and no clock reads; callers pass the seed, the run prefix and the event time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

Event = dict[str, Any]

CURRENCIES = ("USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD")
CURRENCY_WEIGHTS = (35, 30, 12, 8, 5, 5, 5)
# Unit -> (typical reading, spread): keeps readings plausible for the unit.
UNIT_RANGES: dict[str, tuple[float, float]] = {
    "C": (21.0, 4.0),
    "F": (70.0, 7.0),
    "K": (294.0, 4.0),
    "Pa": (101_325.0, 800.0),
    "kPa": (101.3, 0.8),
    "bar": (1.013, 0.01),
    "psi": (14.7, 0.1),
    "%": (45.0, 12.0),
    "m": (12.0, 3.0),
    "cm": (120.0, 30.0),
    "ft": (40.0, 10.0),
    "lux": (350.0, 150.0),
}
UNITS = tuple(UNIT_RANGES)
ACTIONS = ("view", "click", "scroll", "search", "add_to_cart", "checkout", "login", "logout", "share")
ACTION_WEIGHTS = (30, 25, 15, 10, 8, 4, 3, 3, 2)
CHANNELS = ("web", "ios", "android", "pos")


def run_prefix(started_at: datetime, token: str) -> str:
    """A prefix for event ids that differs between runs (time plus a caller-supplied random token)."""
    return f"bench-{started_at:%Y%m%dT%H%M%S}-{token}"


@dataclass(frozen=True)
class EventMix:
    """Share of each event type; the weights need not sum to one."""

    sensor: float = 0.5
    user_action: float = 0.3
    transaction: float = 0.2


@dataclass(frozen=True)
class Device:
    device_id: str
    unit: str
    lat: float
    lon: float
    base: float


class EventFactory:
    """Issues events with ids `<run_id>:<sequence>`; the same seed gives the same events."""

    def __init__(
        self,
        run_id: str,
        seed: int = 0,
        mix: EventMix = EventMix(),
        users: int = 10_000,
        devices: int = 2_000,
    ) -> None:
        if len(run_id) > 100:
            raise ValueError("run_id must leave room for the sequence within the 128-char id limit")
        self._run_id = run_id
        self._rng = random.Random(seed)
        self._users = users
        self._types = ("sensor", "user_action", "transaction")
        self._type_weights = (mix.sensor, mix.user_action, mix.transaction)
        self._devices = [self._device(i) for i in range(devices)]
        self._issued = 0

    @property
    def issued(self) -> int:
        """How many events this factory has produced so far."""
        return self._issued

    def batch(self, size: int, at: datetime) -> list[Event]:
        """`size` events stamped shortly before `at` (which must carry a timezone)."""
        return [self.event(at) for _ in range(size)]

    def event(self, at: datetime) -> Event:
        """One event of a type drawn from the mix, stamped up to two seconds before `at`."""
        if at.tzinfo is None:
            raise ValueError("event time must carry a timezone")
        kind = self._rng.choices(self._types, weights=self._type_weights)[0]
        self._issued += 1
        base: Event = {
            "type": kind,
            "id": f"{self._run_id}:{self._issued}",
            "timestamp": (at - timedelta(milliseconds=self._rng.randint(0, 2000))).isoformat(timespec="milliseconds"),
        }
        if kind == "sensor":
            return base | self._sensor()
        if kind == "user_action":
            return base | self._user_action()
        return base | self._transaction()

    def _device(self, index: int) -> Device:
        unit = UNITS[index % len(UNITS)]
        typical, spread = UNIT_RANGES[unit]
        return Device(
            device_id=f"d-{index}",
            unit=unit,
            lat=round(self._rng.uniform(-60.0, 70.0), 5),
            lon=round(self._rng.uniform(-180.0, 180.0), 5),
            base=self._rng.gauss(typical, spread / 2),
        )

    def _user(self) -> str:
        # Cubing a uniform draw skews traffic toward low ids: a few users are very active.
        return f"u-{int(self._users * self._rng.random() ** 3)}"

    def _sensor(self) -> Event:
        device = self._devices[self._rng.randrange(len(self._devices))]
        spread = UNIT_RANGES[device.unit][1]
        return {
            "device_id": device.device_id,
            "reading": round(self._rng.gauss(device.base, spread / 10), 3),
            "unit": device.unit,
            "location": {"lat": device.lat, "lon": device.lon},
        }

    def _user_action(self) -> Event:
        action = self._rng.choices(ACTIONS, weights=ACTION_WEIGHTS)[0]
        n = self._rng.randrange(500)
        target = {
            "view": f"page:/products/{n}",
            "search": f"search:q{n}",
            "scroll": f"page:/feed/{n % 20}",
            "checkout": f"cart:{n}",
        }.get(action, f"button-{n % 40}")
        return {
            "user_id": self._user(),
            "action": action,
            "target": target,
            "metadata": {
                "channel": self._rng.choice(CHANNELS),
                "session": f"s-{self._rng.getrandbits(40):010x}",
            },
        }

    def _transaction(self) -> Event:
        currency = self._rng.choices(CURRENCIES, weights=CURRENCY_WEIGHTS)[0]
        value = self._rng.lognormvariate(3.0, 1.0)
        # Amounts are strings so no float rounding reaches the Decimal field; yen has no minor unit.
        amount = str(max(1, round(value * 150))) if currency == "JPY" else f"{max(0.01, value):.2f}"
        return {
            "user_id": self._user(),
            "amount": amount,
            "currency": currency,
            "metadata": {
                "channel": self._rng.choice(CHANNELS),
                "merchant": f"m-{self._rng.randrange(300)}",
            },
        }
