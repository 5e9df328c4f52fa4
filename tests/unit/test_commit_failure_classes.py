"""Specification of how the owner classes a failed commit attempt: an outage (the writer actor dead, restarting or
silent, the postgres breaker open, PostgreSQL unreachable, the broker not acknowledging) is retried as it is forever;
anything else is `other`, which the owner tries a few times and then splits (DESIGN §2.5).
"""

from __future__ import annotations

import psycopg
import psycopg.errors
import pytest
from psycopg_pool import PoolTimeout
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from actors.remote_errors import explain_commit_failure
from cluster.adapters.kafka_producer import PublishError
from cluster.observability.recording import CommitFailure
from pipelines.policies.breaker import CircuitOpen


def from_writer(exc: Exception) -> Exception:
    """What `ray.get` raises when the writer's commit method raised `exc`."""
    return RayTaskError("commit", f"Traceback ...\n{type(exc).__name__}: {exc}", exc).as_instanceof_cause()


OUTAGES = {
    "writer actor died": ActorDiedError(),
    "writer actor error": RayActorError(),
    "writer actor restarting": ActorUnavailableError("restarting", b"a" * 16),
    "writer silent for 60 s": GetTimeoutError("Get timed out: some object(s) not ready."),
    "postgres breaker open": from_writer(CircuitOpen("postgres", 1.5)),
    "postgres unreachable": from_writer(psycopg.OperationalError("connection refused")),
    "postgres connection pool exhausted": from_writer(PoolTimeout("couldn't get a connection after 30.00 sec")),
    "postgres too many connections": from_writer(psycopg.errors.TooManyConnections("53300")),
    "deadlock that outlived the writer's retries": from_writer(psycopg.errors.DeadlockDetected("40P01")),
    "dead letters not acknowledged": PublishError("1 dead letters not acknowledged: timed out"),
    "dead letters not flushed": TimeoutError("3 dead letters not acknowledged by the broker within 10s"),
}

NOT_OUTAGES = {
    "a bug in the writer": from_writer(TypeError("unsupported operand type(s)")),
    "postgres internal error": from_writer(psycopg.errors.InternalError_("XX000 cache lookup failed")),
    "postgres out of memory on a big document": from_writer(psycopg.errors.OutOfMemory("53200 out of memory")),
    "a bug in the owner": KeyError("offset"),
}


@pytest.mark.parametrize("exc", OUTAGES.values(), ids=OUTAGES.keys())
def test_an_outage_is_classed_unavailable_so_its_batch_is_retried_as_it_is(exc):
    failure, description, _hint = explain_commit_failure(exc)

    assert failure is CommitFailure.UNAVAILABLE, description


@pytest.mark.parametrize("exc", NOT_OUTAGES.values(), ids=NOT_OUTAGES.keys())
def test_a_failure_that_is_no_outage_is_classed_other_so_its_batch_is_split_in_the_end(exc):
    failure, description, hint = explain_commit_failure(exc)

    assert failure is CommitFailure.OTHER and hint is None
    assert description.startswith(type(exc.cause if isinstance(exc, RayTaskError) else exc).__name__)


def test_the_breakers_hint_comes_with_its_refusal():
    assert explain_commit_failure(from_writer(CircuitOpen("postgres", 1.5)))[2] == 1.5
