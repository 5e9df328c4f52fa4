"""Fixtures shared by the unit tests: builders of raw event objects for the pure `pipelines` package, and a guard that
restores logging after a test set it up.

Only plain data and in-process state: no broker, no database, no Ray; each builder returns a fresh dict to mutate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cluster.observability.logs import EVENT_LOGGER

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


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo what a test's `setup_logging` did to the root logger, so tests that set logging up stay independent."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    events_level = logging.getLogger(EVENT_LOGGER).level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    logging.getLogger(EVENT_LOGGER).setLevel(events_level)
