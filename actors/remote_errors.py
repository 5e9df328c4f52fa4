"""Reading errors that crossed a Ray call: the original cause, a one-line description, a breaker's retry hint, and
whether a failed commit was an outage. It only inspects exceptions; it never retries or sleeps itself.
"""

from __future__ import annotations

import psycopg.errors
from ray.exceptions import RayError, RayTaskError

from cluster.adapters.checkpoint_store import is_unavailable
from cluster.adapters.kafka_producer import PublishError
from cluster.adapters.owner_commit import Explained
from cluster.observability.recording import CommitFailure
from pipelines.policies.breaker import CircuitOpen


def cause(exc: BaseException) -> BaseException:
    """The exception raised inside the remote method, when `exc` is Ray's wrapper of it; else `exc` itself."""
    if isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException):
        return exc.cause
    return exc


def describe(exc: BaseException) -> str:
    """`Type: message` of the original error, without the remote traceback Ray prepends."""
    original = cause(exc)
    first_line = str(original).strip().splitlines()[0] if str(original).strip() else ""
    return f"{type(original).__name__}: {first_line}" if first_line else type(original).__name__


def retry_after_s(exc: BaseException) -> float | None:
    """Seconds a circuit breaker asked callers to wait (CircuitOpen), or None for any other error."""
    original = cause(exc)
    return original.retry_after_s if isinstance(original, CircuitOpen) else None


def explain_commit_failure(exc: BaseException) -> Explained:
    """What a failed commit attempt was (what `ray.get` of a writer's commit, or the DLQ publish, raised).

    Unavailable, retried as it is however long it lasts: a breaker's refusal; PostgreSQL unreachable, out of
    connections or deadlocked past the writer's own retries; the writer actor dead, restarting or silent (any Ray
    error of its own); the broker not acknowledging dead letters. Anything else is `other` (a bug in the writer, a
    PostgreSQL internal error, out of memory for this batch's statement): tied to the batch, so it is split in the end.
    """
    original, hint = cause(exc), retry_after_s(exc)
    if hint is not None:
        unavailable = True
    elif isinstance(original, psycopg.errors.OutOfMemory):  # class 53 is an OperationalError, but this one is ours
        unavailable = False
    else:
        unavailable = is_unavailable(original) or isinstance(original, RayError | PublishError | TimeoutError)
    return (CommitFailure.UNAVAILABLE if unavailable else CommitFailure.OTHER), describe(exc), hint
