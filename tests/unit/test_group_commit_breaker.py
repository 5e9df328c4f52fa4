"""Specification of the "postgres" breaker around group commit: an outage opens it, calls then fail fast with a
retriable CircuitOpen that says when to come back, and one probe closes it again.
"""

from __future__ import annotations

import pytest
from ray.exceptions import RayTaskError

from actors.group_commit import GroupCommitter
from actors.remote_errors import describe, retry_after_s
from cluster.adapters.commit_doc import EncodedBatch
from pipelines.batch import CommitOutcome
from pipelines.policies.breaker import BreakerState, CircuitBreaker, CircuitOpen


class Outage(Exception):
    """Stands for psycopg.OperationalError: the database did not answer."""


class Refused(Exception):
    """Stands for an error the database answered with (a bad statement): not an outage."""


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SwitchableStore:
    def __init__(self) -> None:
        self.error: Exception | None = None
        self.calls = 0

    def commit_group(self, batches: list[EncodedBatch]) -> list[CommitOutcome]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return [CommitOutcome(committed=True, new_events=1) for _ in batches]


def _batch(partition: int = 0) -> EncodedBatch:
    return EncodedBatch("events.sensor", partition, 1, "o", 0, 1, 0.0, b"{}", 0, 0)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> SwitchableStore:
    return SwitchableStore()


@pytest.fixture
def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker("postgres", failure_threshold=3, reset_timeout_s=2.0, clock=clock)


@pytest.fixture
def committer(store: SwitchableStore, breaker: CircuitBreaker) -> GroupCommitter:
    return GroupCommitter(store, threads=1, breaker=breaker, is_failure=lambda exc: isinstance(exc, Outage))


def test_an_outage_opens_the_breaker_and_later_calls_fail_fast_without_touching_the_database(
    committer: GroupCommitter, store: SwitchableStore, breaker: CircuitBreaker
) -> None:
    store.error = Outage("connection refused")
    for _ in range(3):
        with pytest.raises(Outage):
            committer.commit(_batch())
    assert breaker.state is BreakerState.OPEN
    calls = store.calls

    with pytest.raises(CircuitOpen) as refused:
        committer.commit(_batch())
    assert store.calls == calls
    assert 0 < refused.value.retry_after_s <= 2.0


def test_after_the_cool_down_one_probe_closes_the_breaker_and_commits_resume(
    committer: GroupCommitter, store: SwitchableStore, breaker: CircuitBreaker, clock: Clock
) -> None:
    store.error = Outage("connection refused")
    for _ in range(3):
        with pytest.raises(Outage):
            committer.commit(_batch())
    store.error = None
    clock.now += 2.0
    outcome = committer.commit(_batch())
    assert outcome.committed and breaker.state is BreakerState.CLOSED


def test_errors_the_database_answered_with_do_not_open_the_breaker(
    committer: GroupCommitter, store: SwitchableStore, breaker: CircuitBreaker
) -> None:
    store.error = Refused("value too long")
    for _ in range(5):
        with pytest.raises(Refused):
            committer.commit(_batch())
    assert breaker.state is BreakerState.CLOSED


def test_a_refusal_that_crossed_a_ray_call_still_tells_the_owner_how_long_to_wait() -> None:
    wrapped = RayTaskError("commit", "Traceback ...\nCircuitOpen: ...", CircuitOpen("postgres", 1.5))
    assert retry_after_s(wrapped) == 1.5
    assert describe(wrapped) == "CircuitOpen: circuit for postgres is open; next probe in 1.5s"
    assert retry_after_s(ConnectionError("reset")) is None
    assert describe(ConnectionError("reset")) == "ConnectionError: reset"


def test_a_bug_in_error_classification_fails_the_call_but_not_the_committer_thread(
    store: SwitchableStore, breaker: CircuitBreaker
) -> None:
    def broken_classifier(exc: BaseException) -> bool:
        raise AttributeError("module 'psycopg.errors' has no attribute 'TransactionRollbackError'")

    committer = GroupCommitter(store, threads=1, breaker=breaker, is_failure=broken_classifier)
    store.error = Outage("connection refused")

    with pytest.raises(AttributeError):
        committer.commit(_batch())

    store.error = None
    assert committer.commit(_batch()).committed  # the single committer thread is still alive
