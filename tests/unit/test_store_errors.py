"""Specification of how store errors are classified: a data error (SQLSTATE class 22, 23, 54) refuses the batch for
good and comes back to the owner as a value with the database's reason; it never counts against the "postgres"
breaker. Connection-level failures stay errors to retry as they are, and do count.
"""

from __future__ import annotations

import psycopg
import pytest

from actors.group_commit import GroupCommitter
from cluster.adapters.checkpoint_store import is_data_error, is_unavailable, rejection_reason
from cluster.adapters.commit_doc import EncodedBatch
from pipelines.batch import CommitOutcome
from pipelines.policies.breaker import BreakerState, CircuitBreaker


def pg_error(sqlstate: str, message: str = "refused") -> psycopg.Error:
    return psycopg.errors.lookup(sqlstate)(message)


DATA_ERRORS = {
    "22003": "numeric field overflow",
    "22P02": "invalid input syntax for type json",
    "22021": "invalid byte sequence for encoding UTF8",
    "23502": 'null value in column "reading_sum" violates not-null constraint',
    "23514": 'new row for relation "results" violates check constraint "no_poison"',
    "23505": "duplicate key value violates unique constraint",
    "54000": "index row size 3000 exceeds btree version 4 maximum 2704",
}
CONNECTION_ERRORS = {
    "08006": "connection failure",
    "57P01": "terminating connection due to administrator command",
    "53300": "too many connections",
}


@pytest.mark.parametrize("sqlstate", DATA_ERRORS)
def test_data_errors_are_refusals_with_the_databases_reason_and_not_outages(sqlstate):
    exc = pg_error(sqlstate, DATA_ERRORS[sqlstate])

    assert is_data_error(exc)
    assert not is_unavailable(exc)
    assert rejection_reason(exc) == f"{sqlstate} {DATA_ERRORS[sqlstate]}"


def test_program_limit_errors_are_data_errors_although_psycopg_calls_them_operational():
    exc = pg_error("54000", "index row size exceeds maximum")

    assert isinstance(exc, psycopg.OperationalError)
    assert is_data_error(exc) and not is_unavailable(exc)


@pytest.mark.parametrize("sqlstate", CONNECTION_ERRORS)
def test_connection_errors_are_outages_not_refusals(sqlstate):
    exc = pg_error(sqlstate, CONNECTION_ERRORS[sqlstate])

    assert is_unavailable(exc)
    assert not is_data_error(exc) and rejection_reason(exc) is None


@pytest.mark.parametrize("exc", [pg_error("40P01"), pg_error("42P01"), RuntimeError("bug"), psycopg.InterfaceError()])
def test_other_errors_are_neither_refusals_nor_data_errors(exc):
    assert not is_data_error(exc) and rejection_reason(exc) is None


def test_a_value_psycopg_refuses_to_send_is_a_data_error():
    assert is_data_error(psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"))


class FailingStore:
    """Refuses batches of the partitions in `refuse` with `error`; commits the others."""

    def __init__(self, error: Exception, refuse: set[int]) -> None:
        self.error = error
        self.refuse = refuse
        self.calls = 0

    def commit_group(self, batches: list[EncodedBatch]) -> list[CommitOutcome]:
        self.calls += 1
        if any(b.partition in self.refuse for b in batches):
            raise self.error
        return [CommitOutcome(committed=True, new_events=1) for _ in batches]


def batch(partition: int = 0) -> EncodedBatch:
    return EncodedBatch("events.sensor", partition, 1, "o", 0, 1, 0.0, b"{}", 0, 0)


def committer(store: FailingStore, breaker: CircuitBreaker) -> GroupCommitter:
    return GroupCommitter(store, threads=1, breaker=breaker, is_failure=is_unavailable, rejection=rejection_reason)


def test_a_batch_refused_for_its_data_comes_back_as_a_value_and_the_breaker_stays_closed():
    breaker = CircuitBreaker("postgres", failure_threshold=3, reset_timeout_s=60.0)
    store = FailingStore(pg_error("23514", 'violates check constraint "no_poison"'), refuse={0})
    group = committer(store, breaker)

    outcomes = [group.commit(batch(0)) for _ in range(5)]  # more than the breaker's threshold

    assert all(
        o == CommitOutcome(committed=False, rejected='23514 violates check constraint "no_poison"') for o in outcomes
    )
    assert breaker.state is BreakerState.CLOSED and store.calls == 5


def test_a_connection_failure_is_still_raised_to_retry_and_counts_against_the_breaker():
    breaker = CircuitBreaker("postgres", failure_threshold=3, reset_timeout_s=60.0)
    store = FailingStore(pg_error("08006", "connection failure"), refuse={0})
    group = committer(store, breaker)

    for _ in range(3):
        with pytest.raises(psycopg.OperationalError):
            group.commit(batch(0))

    assert breaker.state is BreakerState.OPEN
