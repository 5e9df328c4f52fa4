"""Specification of the supervisor's decisions: when it gives up on a component that keeps dying, how long it waits
between restarts, and what a dead memory-only broker took with it. Time is passed in; nothing sleeps."""

from __future__ import annotations

from cluster.restart_policy import LostRange, RestartBudget, RestartPolicy, lost_with_the_log

POLICY = RestartPolicy(max_failures=3, base_s=1.0, max_s=10.0, healthy_after_s=60.0)


def test_three_failed_restarts_in_a_row_exhaust_the_budget() -> None:
    budget = RestartBudget(POLICY)
    for _ in range(2):
        budget.failed()
        assert not budget.exhausted
    budget.failed()
    assert budget.exhausted


def test_backoff_doubles_from_the_second_attempt_and_is_capped() -> None:
    budget = RestartBudget(RestartPolicy(max_failures=10, base_s=1.0, max_s=5.0))
    waits = []
    for _ in range(5):
        waits.append(budget.backoff_s())
        budget.failed()
    assert waits == [0.0, 1.0, 2.0, 4.0, 5.0]


def test_dying_again_soon_after_a_restart_counts_as_a_failed_restart() -> None:
    budget = RestartBudget(POLICY)
    for t in (0.0, 10.0, 20.0):
        budget.died(t)
        budget.restarted(t + 1)
    budget.died(30.0)
    assert budget.exhausted  # a crash loop: three quick deaths after restarts


def test_a_restart_that_stays_healthy_resets_the_count() -> None:
    budget = RestartBudget(POLICY)
    budget.failed()
    budget.failed()
    budget.restarted(100.0)
    budget.healthy(130.0)
    assert budget.failures == 2
    budget.healthy(161.0)
    assert budget.failures == 0
    budget.died(1000.0)  # a death long after: not counted against the budget
    assert budget.failures == 0


def test_lost_records_are_those_above_the_committed_checkpoint() -> None:
    highs = {("events.transaction", 0): 120, ("events.transaction", 1): 50, ("events.sensor", 0): 7}
    committed = {("events.transaction", 0): 100, ("events.transaction", 1): 50}
    lost = lost_with_the_log(highs, committed)
    assert lost == [LostRange("events.sensor", 0, 0, 7), LostRange("events.transaction", 0, 100, 120)]
    assert sum(r.count for r in lost) == 27
    assert str(lost[1]) == "events.transaction[0] offsets 100-119"


def test_nothing_is_lost_when_every_record_was_committed() -> None:
    assert lost_with_the_log({("t", 0): 10}, {("t", 0): 10}) == []
