"""Admission and routing decisions of the API: whether a request may start (bounded in-flight events), whether its
events go to the broker, to the durable spool, wait for the spool to empty, or are refused; and the handover that ends
spool mode under steady load (ADR 0009, addendum).

Pure decisions over plain values: no I/O, no clock, no framework; the callers gather the facts (times included) and act
on the answer. They never let a new event reach the broker while an older spooled one may still wait there.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pipelines.policies.breaker import BreakerState


class Route(StrEnum):
    PUBLISH = "publish"  # to the broker; acknowledged on its ack
    SPOOL = "spool"  # to the durable spool; acknowledged on its commit, published later by the drainer
    REFUSE = "refuse"  # 503 with Retry-After: nothing can take the events now
    WAIT = "wait"  # hold the events (appending nothing) until the next look at the spool, then decide again


@dataclass(frozen=True)
class SpoolCondition:
    """What the replica knows about the spool when events arrive."""

    enabled: bool
    pending: bool  # it holds rows: new events must queue behind them to keep per-key order
    full: bool  # it holds spool_max_rows rows or spool_max_bytes bytes (or would, with these events)

    @property
    def writable(self) -> bool:
        return self.enabled and not self.full


@dataclass(frozen=True)
class Hold:
    """A request's view of its replica's handover (see `Handover`)."""

    on: bool = False  # the replica holds new events back rather than spooling them
    confirmed: bool = False  # the spool was looked at after these events arrived: `pending` is that look's answer
    probe_in_flight: bool = False  # the breaker said no only because its half-open probe is out: its answer is near


NO_HOLD = Hold()


def may_ask_breaker(spool: SpoolCondition, hold: Hold = NO_HOLD) -> bool:
    """Whether the kafka breaker may be asked (a half-open breaker's yes takes a probe slot): only when the events may
    go to the broker, i.e. no older event waits in the spool as far as a look taken after these events arrived knows
    (while a hold is on; otherwise the watch's latest look is trusted, as in spool mode's start)."""
    return not spool.pending and (not hold.on or hold.confirmed)


def choose_route(spool: SpoolCondition, broker_allowed: bool, hold: Hold = NO_HOLD) -> Route:
    """Where a request's events go before any publish was tried.

    `broker_allowed` is the kafka breaker's verdict, asked only when `may_ask_breaker` (else False). While the spool
    holds rows, events join them, unless the replica holds new events back for it to empty (WAIT, bounded by the hold).
    """
    if spool.pending:
        if hold.on:
            return Route.WAIT
        return Route.SPOOL if spool.writable else Route.REFUSE
    if hold.on and not hold.confirmed:
        return Route.WAIT  # the spool looked empty before these events arrived: a newer look must say so
    if broker_allowed:
        return Route.PUBLISH
    if hold.on and hold.probe_in_flight:
        return Route.WAIT
    return Route.SPOOL if spool.writable else Route.REFUSE


@dataclass(frozen=True)
class HandoverPolicy:
    """How a replica leaves spool mode once the broker is back (ADR 0009, addendum)."""

    max_wait_s: float = 1.5  # longest new events are held back for the spool to empty; then they are spooled (0: never)
    max_rows: int = 1_000  # only a spool the drainer can empty in about one round (spool_drain_batch) is waited for
    cooldown_s: float = 3.0  # after a hold that ended with rows still waiting, spool at once for this long


@dataclass(frozen=True)
class Handover:
    """A replica's way out of spool mode under steady load.

    While the spool holds rows every event joins them (per-key order), so under steady intake a drainer that keeps up
    never finds it empty and spool mode never ends. Once the drainer is seen deleting the oldest rows (the broker takes
    them) and few rows are left, the replica stops appending: it holds new events back, for at most
    `HandoverPolicy.max_wait_s`, until a look at the spool taken after they arrived finds it empty (every older
    event is then on the broker) and the breaker lets them through. A hold that runs out with rows left, or whose
    breaker probe fails, spools as before, and no new hold starts for `cooldown_s`.
    """

    hold_until: float | None = None  # a hold is on until then (the caller's clock)
    next_try_at: float = float("-inf")  # no new hold before then

    def holding(self, now: float) -> bool:
        return self.hold_until is not None and now < self.hold_until


@dataclass(frozen=True)
class SpoolLook:
    """What the replica knows about the spool and its own broker breaker when it routes events."""

    pending: bool  # rows wait in the spool
    rows: int
    draining: bool  # the last look found the oldest row gone since the look before: the drainer publishes
    breaker: BreakerState


def drainer_progressed(oldest_before: int | None, oldest_now: int | None) -> bool:
    """Whether the spool's oldest row (its seq) moved on between two looks: only the drainer deletes rows, and only
    once the broker acknowledged them (or it dead-lettered them), so this is evidence the broker takes records."""
    return oldest_before is not None and (oldest_now is None or oldest_now > oldest_before)


def next_handover(current: Handover, look: SpoolLook, now: float, policy: HandoverPolicy) -> Handover:
    """The replica's handover after this look at `now`."""
    if current.hold_until is not None:
        if not look.pending and look.breaker is BreakerState.CLOSED:
            return Handover(None, current.next_try_at)  # done: the spool is empty and the broker takes events
        if look.breaker is BreakerState.OPEN:
            return Handover(None, now + policy.cooldown_s)  # the probe failed: spool mode goes on
        if now >= current.hold_until:
            retry_at = now + policy.cooldown_s if look.pending else current.next_try_at
            return Handover(None, retry_at)
        return current
    if (
        look.pending
        and look.draining
        and look.rows <= policy.max_rows
        and look.breaker is not BreakerState.OPEN
        and now >= current.next_try_at
        and policy.max_wait_s > 0
    ):
        return Handover(now + policy.max_wait_s, current.next_try_at)
    return current


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
