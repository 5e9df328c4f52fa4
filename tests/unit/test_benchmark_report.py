"""The throughput report's "sustained" figure (issue 9): the backlog when the last event was received, in seconds of
the run's own traffic."""

from __future__ import annotations

import pytest

from benchmarks.commit_watch import CommittedRow
from benchmarks.report import backlog_at_end, floor_figures, p99_above_floor


def _rows(received_and_committed: list[tuple[float, float]]) -> list[CommittedRow]:
    return [CommittedRow("processed", received, received, committed) for received, committed in received_and_committed]


def test_a_run_that_kept_pace_has_almost_no_backlog_when_sending_ended():
    # 100 events/s for 10 s, each committed 50 ms after it was received
    rows = _rows([(t / 100, t / 100 + 0.05) for t in range(1001)])

    backlog = backlog_at_end(rows)

    assert backlog["events"] == 5  # received in the last 50 ms
    assert backlog["seconds_of_traffic"] == pytest.approx(0.05, abs=0.001)
    assert backlog["catch_up_s"] == 0.05
    assert backlog["sustained"] is True


def test_a_run_that_fell_behind_is_not_sustained():
    # 100 events/s for 10 s, processed at 75/s: a quarter of the run is still waiting when sending ends
    rows = _rows([(t / 100, t / 75) for t in range(1001)])

    backlog = backlog_at_end(rows)

    assert backlog["events"] == 250
    assert backlog["seconds_of_traffic"] == pytest.approx(2.5, abs=0.01)
    assert backlog["catch_up_s"] == round(1000 / 75 - 10, 3)
    assert backlog["sustained"] is False


def test_no_rows_no_verdict():
    assert backlog_at_end([])["sustained"] is None


def test_the_latency_target_is_read_above_the_broker_floor_of_the_same_run():
    commit = {"measured": True, "ingest_to_commit_ms": {"p99": 95.0}}
    floor = floor_figures([10.0] * 98 + [40.0, 40.0], sent=100)

    assert floor["latency_ms"]["p99"] == 40.0
    assert p99_above_floor(commit, floor) == 55.0
    assert p99_above_floor(commit, floor_figures(None, 0)) is None
    assert p99_above_floor({"measured": False}, floor) is None


def test_a_run_whose_commits_stopped_is_not_sustained_however_few_rows_came_late():
    # 100 events/s for 60 s, but the pipeline stalled after 30 s: the last 3,000 accepted events were never committed
    rows = _rows([(t / 100, t / 100 + 0.05) for t in range(3001)])

    backlog = backlog_at_end(rows, missing=3000)

    assert backlog["events"] == 3005
    assert backlog["sustained"] is False
    assert backlog["catch_up_s"] is None
