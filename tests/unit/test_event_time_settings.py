"""Specification of the event-time settings: a naive minimum is UTC, and the defaults are the documented window."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from cluster.settings import Settings


def test_the_default_window_is_1970_to_one_day_ahead_with_an_hour_of_owner_grace():
    settings = Settings(_env_file=None)  # type: ignore[call-arg]

    assert settings.event_time_min == datetime(1970, 1, 1, tzinfo=UTC)
    assert (settings.event_time_max_ahead_s, settings.event_time_owner_grace_s) == (86_400.0, 3_600.0)


def test_a_naive_event_time_min_from_the_environment_is_read_as_utc(monkeypatch):
    monkeypatch.setenv("EVENTPIPE_EVENT_TIME_MIN", "2020-01-01T00:00:00")

    assert Settings(_env_file=None).event_time_min == datetime(2020, 1, 1, tzinfo=UTC)  # type: ignore[call-arg]


def test_an_event_time_min_that_would_allow_unrepresentable_times_is_refused_at_start(monkeypatch):
    monkeypatch.setenv("EVENTPIPE_EVENT_TIME_MIN", "0001-01-01T00:00:00Z")

    with pytest.raises(ValidationError, match="event_time_min"):
        Settings(_env_file=None)  # type: ignore[call-arg]
