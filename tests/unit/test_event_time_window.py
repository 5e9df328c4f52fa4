"""Specification of the event-time window: 1970 to now + 1 day by default, against an injected clock.

Issue 8, finding 5: years 1 and 9999 with a +-14:00 offset got a 202 and were then dead-lettered with a bare
ValueError by the user-action handler.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipelines.errors import InvalidEvent
from pipelines.limits import TimeWindow
from pipelines.registry import default_registry

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC).timestamp()
EXTREMES = [
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00-14:00",
    "9999-12-31T23:59:59.999999-14:00",
    "9999-12-31T23:59:59+14:00",
    "0001-01-01T00:00:00Z",
    "1969-12-31T23:59:59Z",
    "1970-01-01T00:00:00+14:00",  # 1969-12-31T10:00Z
    -1,
    253402300799000,  # 9999-12-31T23:59:59Z as epoch milliseconds (pydantic reads large numbers as ms)
]


@pytest.fixture
def registry():
    return default_registry(clock=lambda: NOW)


def time_error(registry, raw) -> str:
    with pytest.raises(InvalidEvent) as caught:
        registry.parse(raw)
    (error,) = caught.value.errors
    assert (error.loc, error.type) == ("timestamp", "time_window")
    return error.msg


@pytest.mark.parametrize("timestamp", EXTREMES)
def test_extreme_timestamps_are_a_clean_validation_error_on_every_type(
    registry, transaction_data, sensor_data, user_action_data, timestamp
):
    for build in (transaction_data, sensor_data, user_action_data):
        message = time_error(registry, build(timestamp=timestamp))

        assert "1970-01-01T00:00:00Z" in message and "2026-11-30T12:00:00Z" in message


def test_the_window_is_inclusive_at_both_ends(registry, user_action_data):
    for timestamp in ("1970-01-01T00:00:00Z", "2026-11-30T12:00:00Z", "2026-11-30T12:00:00+14:00"):
        registry.parse(user_action_data(timestamp=timestamp))

    time_error(registry, user_action_data(timestamp="2026-11-30T12:00:00.000001Z"))


def test_an_accepted_event_is_still_accepted_when_read_again_later(user_action_data):
    # given an event accepted at the limit of the window, and a replay of its record days later
    raw = user_action_data(timestamp="2026-11-30T12:00:00Z")
    default_registry(clock=lambda: NOW).parse(raw)

    # then re-validation later accepts it (the lower bound is absolute, the upper one only moves forward)
    default_registry(clock=lambda: NOW + 5 * 86_400).parse(raw)


def test_the_window_is_configurable(user_action_data):
    registry = default_registry(
        event_time_min=datetime(2020, 1, 1, tzinfo=UTC), event_time_max_ahead_s=60.0, clock=lambda: NOW
    )

    assert "2020-01-01T00:00:00Z" in time_error(registry, user_action_data(timestamp="2019-12-31T23:59:59Z"))
    time_error(registry, user_action_data(timestamp="2026-11-29T12:01:01Z"))
    registry.parse(user_action_data(timestamp="2026-11-29T12:01:00Z"))


def test_the_user_action_handler_works_on_every_event_the_window_admits(registry, user_action_data):
    for timestamp in ("1970-01-01T00:00:00Z", "1970-01-01T14:00:00+14:00", "2026-11-30T12:00:59+00:01"):
        event = registry.parse(user_action_data(timestamp=timestamp))

        assert registry.spec("user_action").handler(event).result["session_window_start"]


@pytest.mark.parametrize(
    ("earliest", "ahead"),
    [(datetime(1, 1, 1, tzinfo=UTC), 0.0), (datetime(2000, 1, 1), 0.0), (datetime(2000, 1, 1, tzinfo=UTC), -1.0)],
)
def test_a_window_that_could_let_an_unrepresentable_time_through_cannot_be_built(earliest, ahead):
    with pytest.raises(ValueError, match="TimeWindow"):
        TimeWindow(earliest, ahead)


def test_the_published_schema_states_the_configured_window():
    registry = default_registry(event_time_min=datetime(2020, 1, 1, tzinfo=UTC), event_time_max_ahead_s=60.0)

    description = registry.json_schemas()["sensor"]["1"]["properties"]["timestamp"]["description"]
    assert "2020-01-01T00:00:00Z" in description and "60 seconds" in description
