"""Circuit breaker: stop calling a dependency that keeps failing, probe it after a cool-down, close on success.

A small thread-safe state machine with an injected clock; it does no I/O. Callers report outcomes, and every
transition is handed to `on_transition` (logging and the `circuit_breaker_state{dependency}` gauge live there).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

T = TypeVar("T")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    @property
    def gauge_value(self) -> int:
        """Value exported as `circuit_breaker_state`: 0 closed, 1 open, 2 half-open (Resilience4j's convention)."""
        return _GAUGE[self]


_GAUGE = {BreakerState.CLOSED: 0, BreakerState.OPEN: 1, BreakerState.HALF_OPEN: 2}


@dataclass(frozen=True)
class Transition:
    dependency: str
    old: BreakerState
    new: BreakerState
    reason: str
    consecutive_failures: int


class CircuitOpen(Exception):
    """The breaker refused the call without trying it; `retry_after_s` says when a probe will be allowed."""

    def __init__(self, dependency: str, retry_after_s: float) -> None:
        super().__init__(f"circuit for {dependency} is open; next probe in {retry_after_s:.1f}s")
        self.dependency = dependency
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[type[CircuitOpen], tuple[str, float]]:
        return (CircuitOpen, (self.dependency, self.retry_after_s))


class CircuitBreaker:
    """Closed → open after `failure_threshold` consecutive failures; open → half-open once `reset_timeout_s` passed;
    half-open lets `half_open_max_calls` probes through: a success closes, a failure opens again.

    A probe that never reports back (its caller died) frees its slot after another `reset_timeout_s`.
    """

    def __init__(
        self,
        dependency: str,
        failure_threshold: int = 5,
        reset_timeout_s: float = 60.0,
        half_open_max_calls: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if reset_timeout_s < 0:
            raise ValueError("reset_timeout_s must be >= 0")
        if half_open_max_calls < 1:
            raise ValueError("half_open_max_calls must be >= 1")
        self.dependency = dependency
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.half_open_max_calls = half_open_max_calls
        self._clock = clock
        self._on_transition = on_transition
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probes: list[float] = []  # start times of probes in flight while half-open

    # -- reading ---------------------------------------------------------------------------------
    @property
    def state(self) -> BreakerState:
        with self._lock:
            pending = self._refresh()
            state = self._state
        self._notify(pending)
        return state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def retry_after_s(self) -> float:
        """Seconds until the breaker would let a probe through (0 when closed or half-open)."""
        with self._lock:
            if self._state is not BreakerState.OPEN:
                return 0.0
            return max(0.0, self._opened_at + self.reset_timeout_s - self._clock())

    # -- the call protocol -----------------------------------------------------------------------
    def allow(self) -> bool:
        """Whether a call may go to the dependency now; a True while half-open takes a probe slot."""
        with self._lock:
            pending = self._refresh()
            allowed = self._take_slot()
        self._notify(pending)
        return allowed

    def check(self) -> None:
        """Like allow(), but raises CircuitOpen when the call must not be made."""
        if not self.allow():
            raise CircuitOpen(self.dependency, max(self.retry_after_s(), 0.1))

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._probes.clear()
            # A late success of a call let through before the breaker opened does not close it: only a probe does.
            pending = None if self._state is BreakerState.OPEN else self._move(BreakerState.CLOSED, "a probe succeeded")
        self._notify(pending)

    def record_failure(self, reason: str = "") -> None:
        with self._lock:
            self._failures += 1
            pending: Transition | None = None
            if self._state is BreakerState.HALF_OPEN:
                self._probes.clear()
                pending = self._open(f"probe failed: {reason}" if reason else "probe failed")
            elif self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold:
                last = f", last: {reason}" if reason else ""
                pending = self._open(f"{self._failures} consecutive failures{last}")
        self._notify(pending)

    def call(self, fn: Callable[[], T], is_failure: Callable[[BaseException], bool] = lambda _exc: True) -> T:
        """Run `fn` through the breaker; exceptions for which `is_failure` is true count against the dependency."""
        self.check()
        try:
            result = fn()
        except BaseException as exc:
            if is_failure(exc):
                self.record_failure(f"{type(exc).__name__}: {exc}")
            else:
                self.record_success()
            raise
        self.record_success()
        return result

    # -- internals (hold the lock) ---------------------------------------------------------------
    def _refresh(self) -> Transition | None:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.reset_timeout_s:
            self._probes.clear()
            return self._move(BreakerState.HALF_OPEN, f"{self.reset_timeout_s:g}s passed since opening")
        return None

    def _take_slot(self) -> bool:
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            return False
        now = self._clock()
        self._probes = [t for t in self._probes if now - t < max(self.reset_timeout_s, 1e-9)]
        if len(self._probes) < self.half_open_max_calls:
            self._probes.append(now)
            return True
        return False

    def _open(self, reason: str) -> Transition | None:
        self._opened_at = self._clock()
        return self._move(BreakerState.OPEN, reason)

    def _move(self, new: BreakerState, reason: str) -> Transition | None:
        old, self._state = self._state, new
        if old is new:
            return None
        return Transition(self.dependency, old, new, reason, self._failures)

    def _notify(self, transition: Transition | None) -> None:
        if transition is not None and self._on_transition is not None:
            self._on_transition(transition)
