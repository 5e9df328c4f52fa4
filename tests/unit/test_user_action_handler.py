"""Specification of the user-action handler: a session id per user and fixed 30-minute window of event time."""

from __future__ import annotations

import pytest

from pipelines.effects import ActionCount
from pipelines.handlers.user_action import UserActionHandler
from pipelines.registry import default_registry
from pipelines.schemas import UserActionV1


@pytest.fixture
def action(user_action_data):
    registry = default_registry()

    def build(timestamp: str, user_id: str = "user-1") -> UserActionV1:
        event = registry.parse(user_action_data(timestamp=timestamp, user_id=user_id))
        assert isinstance(event, UserActionV1)
        return event

    return build


def session_of(event: UserActionV1) -> str:
    return UserActionHandler()(event).result["session_id"]


def test_actions_within_one_30_minute_window_share_a_session(action):
    assert session_of(action("2024-05-01T10:00:00Z")) == session_of(action("2024-05-01T10:29:59Z"))


def test_actions_in_consecutive_windows_get_different_sessions(action):
    assert session_of(action("2024-05-01T10:29:59Z")) != session_of(action("2024-05-01T10:30:00Z"))


def test_same_window_different_users_get_different_sessions(action):
    ts = "2024-05-01T10:05:00Z"

    assert session_of(action(ts, user_id="alice")) != session_of(action(ts, user_id="bob"))


def test_replayed_action_gets_the_same_session(action):
    assert session_of(action("2024-05-01T10:05:00Z")) == session_of(action("2024-05-01T10:05:00Z"))


def test_session_window_is_the_same_instant_in_any_time_zone(action):
    assert session_of(action("2024-05-01T12:05:00+02:00")) == session_of(action("2024-05-01T10:05:00Z"))


def test_result_names_the_window_start_in_utc(action):
    outcome = UserActionHandler()(action("2024-05-01T10:47:12Z"))

    assert outcome.result["session_window_start"] == "2024-05-01T10:30:00+00:00"


def test_action_counts_once_for_its_user_and_action(action):
    assert UserActionHandler()(action("2024-05-01T10:00:00Z")).effects == (ActionCount("user-1", "click"),)


def test_window_length_is_configurable(action):
    hourly = UserActionHandler(session_window_s=3600)

    first = hourly(action("2024-05-01T10:00:00Z")).result["session_id"]
    later = hourly(action("2024-05-01T10:45:00Z")).result["session_id"]

    assert first == later
