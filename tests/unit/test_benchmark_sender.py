"""The load driver's single-event mode: which path it posts to and how it reads a single event's reply."""

from __future__ import annotations

import orjson
import pytest

from benchmarks.sender import BATCH_PATH, SINGLE_PATH, LoadPlan, _parse_accepted


def test_single_plan_posts_one_event_per_request() -> None:
    assert LoadPlan(rate=500, duration=1, batch_size=1, concurrency=4, single=True).path == SINGLE_PATH
    assert LoadPlan(rate=500, duration=1, batch_size=10, concurrency=4).path == BATCH_PATH
    with pytest.raises(ValueError, match="batch_size must be 1"):
        LoadPlan(rate=500, duration=1, batch_size=2, concurrency=4, single=True)


def test_a_single_events_reply_counts_as_one_accepted() -> None:
    body = orjson.dumps({"id": "e-1", "status": "accepted", "type": "sensor", "topic": "t", "partition": 0})
    assert _parse_accepted(body, ["e-1"]) == (1, 0, ["e-1"])


def test_a_batch_reply_still_counts_by_result() -> None:
    body = orjson.dumps(
        {"accepted": 1, "results": [{"index": 0, "id": "a", "status": "accepted"}, {"index": 1, "status": "rejected"}]}
    )
    assert _parse_accepted(body, ["a", "b"]) == (1, 1, ["a"])
