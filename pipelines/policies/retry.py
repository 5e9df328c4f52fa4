"""Retry policy for transient handler failures: bounded attempts, exponential backoff, full jitter.

A frozen policy object; the clock and the sleep are injected so tests run instantly.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pipelines.errors import TransientError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    base_s: float = 0.05
    max_s: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be >= 1")
        if self.base_s < 0 or self.max_s < self.base_s:
            raise ValueError("need 0 <= base_s <= max_s")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Backoff before attempt `attempt + 1` (attempt counts from 1): full jitter over base * 2^(attempt-1)."""
        ceiling = min(self.max_s, self.base_s * (2 ** (attempt - 1)))
        return rng.uniform(0, ceiling)


class RetryExhausted(Exception):
    """The retry budget is spent: the event goes to the dead-letter queue with the last error."""

    def __init__(self, attempts: int, last_error: TransientError) -> None:
        super().__init__(attempts, last_error)
        self.attempts = attempts
        self.last_error = last_error

    def __str__(self) -> str:
        return f"gave up after {self.attempts} attempts: {self.last_error}"


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    sleep: Callable[[float], None],
    rng: random.Random,
) -> tuple[T, int]:
    """Run fn, retrying TransientError only; returns (value, attempts used) or raises RetryExhausted."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn(), attempt
        except TransientError as exc:
            if attempt == policy.attempts:
                raise RetryExhausted(attempt, exc) from exc
            sleep(policy.delay(attempt, rng))
    raise AssertionError("unreachable")  # pragma: no cover
