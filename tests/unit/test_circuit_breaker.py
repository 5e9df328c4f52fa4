"""Specification of the circuit breaker: closed → open after N consecutive failures, half-open after the timeout,
one probe at a time, closed again on the probe's success; every transition reported once."""

from __future__ import annotations

import pickle

import pytest

from pipelines.policies.breaker import BreakerState, CircuitBreaker, CircuitOpen, Transition


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def transitions() -> list[Transition]:
    return []


@pytest.fixture
def breaker(clock: Clock, transitions: list[Transition]) -> CircuitBreaker:
    return CircuitBreaker(
        "kafka", failure_threshold=5, reset_timeout_s=60.0, clock=clock, on_transition=transitions.append
    )


def fail(b: CircuitBreaker, times: int) -> None:
    for i in range(times):
        b.record_failure(f"boom {i}")


def test_stays_closed_below_the_threshold(breaker):
    fail(breaker, 4)

    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()


def test_opens_after_five_consecutive_failures_and_refuses_calls(breaker, transitions):
    fail(breaker, 5)

    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert [(t.old, t.new) for t in transitions] == [(BreakerState.CLOSED, BreakerState.OPEN)]
    assert "5 consecutive failures" in transitions[0].reason and "boom 4" in transitions[0].reason


def test_a_success_resets_the_consecutive_count(breaker):
    fail(breaker, 4)
    breaker.record_success()
    fail(breaker, 4)

    assert breaker.state is BreakerState.CLOSED


def test_half_open_after_the_timeout_lets_exactly_one_probe_through(breaker, clock):
    fail(breaker, 5)
    clock.now += 59.9
    assert not breaker.allow()
    assert breaker.retry_after_s() == pytest.approx(0.1)

    clock.now += 0.1
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow()  # the one probe slot is taken


def test_probe_success_closes(breaker, clock, transitions):
    fail(breaker, 5)
    clock.now += 60
    assert breaker.allow()

    breaker.record_success()

    assert breaker.state is BreakerState.CLOSED
    assert [t.new for t in transitions] == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_probe_failure_opens_again_and_restarts_the_timeout(breaker, clock):
    fail(breaker, 5)
    clock.now += 60
    assert breaker.allow()

    breaker.record_failure("still down")

    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after_s() == pytest.approx(60.0)


def test_a_probe_that_never_reports_frees_its_slot_after_another_timeout(breaker, clock):
    fail(breaker, 5)
    clock.now += 60
    assert breaker.allow()
    clock.now += 59
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()


def test_a_late_success_does_not_close_an_open_breaker(breaker):
    fail(breaker, 5)

    breaker.record_success()

    assert breaker.state is BreakerState.OPEN


def test_check_raises_circuit_open_with_retry_after(breaker, clock):
    fail(breaker, 5)
    clock.now += 20

    with pytest.raises(CircuitOpen) as info:
        breaker.check()

    assert info.value.dependency == "kafka"
    assert info.value.retry_after_s == pytest.approx(40.0)
    assert pickle.loads(pickle.dumps(info.value)).retry_after_s == pytest.approx(40.0)  # crosses Ray calls


def test_call_counts_only_failures_the_predicate_accepts(breaker):
    def bad_input() -> None:
        raise ValueError("the caller's fault")

    for _ in range(10):
        with pytest.raises(ValueError):
            breaker.call(bad_input, is_failure=lambda exc: not isinstance(exc, ValueError))

    assert breaker.state is BreakerState.CLOSED


def test_call_returns_the_result_and_opens_on_repeated_errors(breaker):
    assert breaker.call(lambda: 42) == 42

    def down() -> None:
        raise ConnectionError("refused")

    for _ in range(5):
        with pytest.raises(ConnectionError):
            breaker.call(down)

    with pytest.raises(CircuitOpen):
        breaker.call(lambda: 42)


def test_gauge_values_follow_the_documented_convention():
    assert [s.gauge_value for s in (BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN)] == [0, 1, 2]


@pytest.mark.parametrize("kwargs", [{"failure_threshold": 0}, {"reset_timeout_s": -1}, {"half_open_max_calls": 0}])
def test_rejects_nonsense_configuration(kwargs):
    with pytest.raises(ValueError):
        CircuitBreaker("x", **kwargs)
