"""Reading errors that crossed a Ray call: the original cause, a one-line description, and a breaker's retry hint.

It only inspects exceptions; it never retries or sleeps itself.
"""

from __future__ import annotations

from ray.exceptions import RayTaskError

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
