"""Specification of StallWatch: how old the oldest uncommitted record is, and when failing commits make a partition
`stalled` (failing for the policy's time without one success); time is passed in."""

from __future__ import annotations

from pipelines.policies.stall import StallPolicy, StallWatch


def test_nothing_pending_has_age_zero_and_is_not_stalled():
    watch = StallWatch(StallPolicy(30.0))

    assert (watch.uncommitted_age(1000.0), watch.stalled(1000.0)) == (0.0, False)


def test_the_age_is_that_of_the_oldest_record_read_until_everything_is_committed():
    watch = StallWatch(StallPolicy(30.0))
    watch.read(100.0)
    watch.read(105.0)  # a later read does not make the oldest younger

    assert watch.uncommitted_age(112.5) == 12.5
    watch.caught_up()
    assert watch.uncommitted_age(200.0) == 0.0


def test_commits_failing_for_the_policy_time_without_a_success_mean_stalled():
    watch = StallWatch(StallPolicy(30.0))
    watch.read(100.0)
    watch.failed(101.0)
    watch.failed(120.0)

    assert not watch.stalled(130.9)
    assert watch.stalled(131.0) and watch.failing_for(131.0) == 30.0


def test_one_successful_sub_commit_ends_the_stall_though_records_are_still_pending():
    watch = StallWatch(StallPolicy(30.0))
    watch.read(100.0)
    watch.failed(101.0)
    watch.progressed()
    watch.failed(140.0)

    assert not watch.stalled(150.0)
    assert watch.uncommitted_age(150.0) == 50.0
