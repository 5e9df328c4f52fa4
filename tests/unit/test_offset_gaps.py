"""Specification of the offset-gap policy: commit up to the first hole, skip a hole only after the grace period."""

from __future__ import annotations

from pipelines.batch import SourceRecord
from pipelines.policies.gaps import GapPolicy, GapState, split_at_gap


def _records(*offsets: int) -> list[SourceRecord]:
    return [SourceRecord("events.sensor", 0, o, None, b"{}") for o in offsets]


def test_consecutive_records_from_the_checkpoint_have_no_gap() -> None:
    head, missing = split_at_gap(_records(5, 6, 7), expected=5)
    assert [r.offset for r in head] == [5, 6, 7] and missing is None


def test_a_hole_in_the_middle_cuts_the_batch_before_it() -> None:
    head, missing = split_at_gap(_records(5, 6, 9, 10), expected=5)
    assert [r.offset for r in head] == [5, 6] and missing == 7


def test_a_hole_before_the_first_record_leaves_nothing_to_commit() -> None:
    head, missing = split_at_gap(_records(8, 9), expected=5)
    assert head == [] and missing == 5


def test_a_hole_is_skipped_only_after_it_stayed_a_hole_for_the_grace_period() -> None:
    state = GapState(GapPolicy(grace_s=5.0))
    assert state.observe(7, now=100.0) is False  # first seen
    assert state.observe(7, now=104.9) is False  # still within grace
    assert state.observe(7, now=105.0) is True  # outlived it: skip


def test_a_different_hole_restarts_the_grace_period() -> None:
    state = GapState(GapPolicy(grace_s=5.0))
    state.observe(7, now=100.0)
    assert state.observe(9, now=104.0) is False
    assert state.observe(9, now=108.9) is False
    assert state.observe(9, now=109.0) is True


def test_clearing_forgets_the_hole() -> None:
    state = GapState(GapPolicy(grace_s=0.0))
    state.observe(7, now=1.0)
    state.clear()
    assert state.observe(7, now=1.0) is False  # seen anew, even with zero grace
