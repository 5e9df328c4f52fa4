"""Admission and routing decisions of the API: whether a request may start (bounded in-flight events), and whether its
events go to the broker, to the durable spool, or are refused.

Pure decisions over plain values: no I/O, no clock, no framework; the callers gather the facts and act on the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pipelines.policies.breaker import BreakerState


class Route(StrEnum):
    PUBLISH = "publish"  # to the broker; acknowledged on its ack
    SPOOL = "spool"  # to the durable spool; acknowledged on its commit, published later by the drainer
    REFUSE = "refuse"  # 503 with Retry-After: nothing can take the events now


@dataclass(frozen=True)
class SpoolCondition:
    """What the replica knows about the spool when events arrive."""

    enabled: bool
    pending: bool  # it holds rows: new events must queue behind them to keep per-key order
    full: bool  # it holds spool_max_rows rows or spool_max_bytes bytes (or would, with these events)

    @property
    def writable(self) -> bool:
        return self.enabled and not self.full


def choose_route(spool: SpoolCondition, broker_allowed: bool) -> Route:
    """Where a request's events go before any publish was tried.

    `broker_allowed` is the kafka breaker's verdict; the caller asks it only when the spool is not pending, since a
    half-open breaker hands out a probe slot with its yes.
    """
    if spool.pending:
        return Route.SPOOL if spool.writable else Route.REFUSE
    if broker_allowed:
        return Route.PUBLISH
    return Route.SPOOL if spool.writable else Route.REFUSE


def route_after_publish_failure(spool: SpoolCondition) -> Route:
    """Where events go whose publish failed or timed out: the spool if it can take them, else a 503."""
    return Route.SPOOL if spool.writable else Route.REFUSE


@dataclass(frozen=True)
class Readiness:
    ready: bool  # the broker or the spool can take events: keep routing traffic here
    degraded: bool  # something is off (breaker not closed, events waiting in the spool, spool unusable)


def readiness(breaker: BreakerState, spool: SpoolCondition, spool_reachable: bool) -> Readiness:
    """/readyz's verdict: not ready only when neither the broker nor the spool can take events."""
    spool_ok = spool.writable and spool_reachable
    broker_ok = breaker is not BreakerState.OPEN and not spool.pending
    spool_trouble = spool.enabled and not spool_ok
    return Readiness(
        ready=broker_ok or spool_ok,
        degraded=breaker is not BreakerState.CLOSED or spool.pending or spool_trouble,
    )


class InflightGate:
    """A bounded count of events being validated, published or spooled by one replica (one event loop, no lock).

    A request that would exceed the limit is turned away at once (429) rather than queued. A request larger than the
    whole limit is admitted only into an empty gate, so a big batch is delayed, never refused for ever.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self._inflight = 0

    @property
    def inflight(self) -> int:
        return self._inflight

    def try_acquire(self, events: int) -> bool:
        need = min(events, self.limit)
        if self._inflight + need > self.limit:
            return False
        self._inflight += need
        return True

    def release(self, events: int) -> None:
        self._inflight = max(0, self._inflight - min(events, self.limit))
