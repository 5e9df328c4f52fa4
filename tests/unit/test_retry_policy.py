"""Specification of the retry policy: bounded jittered backoff, and retrying TransientError only."""

from __future__ import annotations

import pickle
import random
from collections.abc import Callable

import pytest

from pipelines.errors import PoisonEvent, TransientError
from pipelines.policies.retry import RetryExhausted, RetryPolicy, call_with_retry


class CeilingRng(random.Random):
    """Always draws the top of the jitter interval, exposing the backoff ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


def failing_times(n: int, value: str = "ok") -> Callable[[], str]:
    calls = {"n": 0}

    def fn() -> str:
        calls["n"] += 1
        if calls["n"] <= n:
            raise TransientError(f"hiccup {calls['n']}")
        return value

    fn.calls = calls  # type: ignore[attr-defined]
    return fn


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (30, 1.0)])
def test_backoff_ceiling_doubles_per_attempt_up_to_the_maximum(attempt, ceiling):
    policy = RetryPolicy(attempts=40, base_s=0.1, max_s=1.0)

    assert policy.delay(attempt, CeilingRng()) == pytest.approx(ceiling)


@pytest.mark.parametrize("attempt", [1, 2, 3, 6])
def test_jittered_delay_stays_within_zero_and_the_ceiling(attempt):
    policy = RetryPolicy(attempts=10, base_s=0.05, max_s=1.0)
    rng = random.Random(0)
    ceiling = min(1.0, 0.05 * 2 ** (attempt - 1))

    delays = [policy.delay(attempt, rng) for _ in range(500)]

    assert all(0.0 <= d <= ceiling for d in delays)
    assert max(delays) > ceiling / 2  # full jitter actually spreads over the interval


def test_same_seed_gives_the_same_delays():
    policy = RetryPolicy()

    assert [policy.delay(2, random.Random(7)) for _ in range(3)] == [policy.delay(2, random.Random(7))] * 3


@pytest.mark.parametrize(
    "kwargs", [{"attempts": 0}, {"base_s": -0.1}, {"base_s": 2.0, "max_s": 1.0}], ids=["no-attempts", "neg", "max<base"]
)
def test_nonsensical_policy_is_refused(kwargs):
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_first_success_uses_one_attempt_and_no_sleep():
    sleeps: list[float] = []

    assert call_with_retry(lambda: 42, RetryPolicy(), sleeps.append, random.Random(0)) == (42, 1)
    assert sleeps == []


def test_transient_failure_is_retried_until_success():
    sleeps: list[float] = []
    fn = failing_times(2)

    value, attempts = call_with_retry(fn, RetryPolicy(attempts=5), sleeps.append, random.Random(0))

    assert (value, attempts) == ("ok", 3)
    assert len(sleeps) == 2


@pytest.mark.parametrize("attempts", [1, 2, 3, 5])
def test_gives_up_after_the_attempt_budget_with_attempts_minus_one_sleeps(attempts):
    sleeps: list[float] = []
    fn = failing_times(100)

    with pytest.raises(RetryExhausted) as caught:
        call_with_retry(fn, RetryPolicy(attempts=attempts), sleeps.append, random.Random(0))

    assert caught.value.attempts == attempts
    assert fn.calls["n"] == attempts  # type: ignore[attr-defined]
    assert len(sleeps) == attempts - 1
    assert str(caught.value.last_error) == f"hiccup {attempts}"
    assert str(caught.value) == f"gave up after {attempts} attempts: hiccup {attempts}"


def test_sleeps_follow_the_policys_backoff():
    sleeps: list[float] = []

    with pytest.raises(RetryExhausted):
        call_with_retry(failing_times(100), RetryPolicy(attempts=4, base_s=0.1, max_s=0.3), sleeps.append, CeilingRng())

    assert sleeps == pytest.approx([0.1, 0.2, 0.3])


@pytest.mark.parametrize("error", [PoisonEvent("bad"), KeyError("k"), ValueError("v")])
def test_non_transient_errors_are_not_retried(error):
    sleeps: list[float] = []
    calls = []

    def fn() -> None:
        calls.append(1)
        raise error

    with pytest.raises(type(error)):
        call_with_retry(fn, RetryPolicy(attempts=5), sleeps.append, random.Random(0))

    assert len(calls) == 1
    assert sleeps == []


def test_retry_exhausted_survives_pickling_across_a_process_boundary():
    # Ray ships exceptions between processes by pickling them.
    exhausted = RetryExhausted(3, TransientError("db hiccup"))

    copy = pickle.loads(pickle.dumps(exhausted))

    assert (copy.attempts, str(copy)) == (3, "gave up after 3 attempts: db hiccup")
