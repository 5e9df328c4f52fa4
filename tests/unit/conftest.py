"""Builders for raw event objects shared by the unit tests of the pure `pipelines` package.

Only plain data: no broker, no database, no Ray; each builder returns a fresh dict a test may mutate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

RawEventFactory = Callable[..., dict[str, Any]]


def _factory(defaults: dict[str, Any]) -> RawEventFactory:
    def build(**overrides: Any) -> dict[str, Any]:
        return {**defaults, **overrides}

    return build


@pytest.fixture
def transaction_data() -> RawEventFactory:
    return _factory(
        {
            "type": "transaction",
            "user_id": "user-1",
            "amount": "12.50",
            "currency": "EUR",
            "timestamp": "2024-05-01T10:00:00Z",
        }
    )


@pytest.fixture
def sensor_data() -> RawEventFactory:
    return _factory(
        {
            "type": "sensor",
            "device_id": "device-1",
            "reading": 21.5,
            "unit": "C",
            "location": {"lat": 52.52, "lon": 13.405},
            "timestamp": "2024-05-01T10:00:00Z",
        }
    )


@pytest.fixture
def user_action_data() -> RawEventFactory:
    return _factory(
        {
            "type": "user_action",
            "user_id": "user-1",
            "action": "click",
            "target": "checkout-button",
            "timestamp": "2024-05-01T10:00:00Z",
        }
    )
