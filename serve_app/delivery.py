"""Delivery of validated records: to the broker through the "kafka" circuit breaker, or into the durable spool when
the broker cannot take them or older events still wait there; refused only when neither can take them. Once the
drainer visibly empties the spool, new events are held back briefly instead of joining it, so that spool mode ends
under steady load (the handover, serve_app/admission.py).

It never reports an event as taken unless the broker acknowledged it or its spool row is committed, nor as not taken
when its spool row may be committed (an append that outlived its bound is Unknown); a record the broker refuses for
good is rejected, never spooled and never held against the broker's breaker; no exception text reaches a client
(refusals carry advice and an error id; the log line with that id carries the cause).
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, replace
from typing import Any

import psycopg

from cluster.adapters.kafka_producer import Delivered, KafkaPublisher, PublishError, Record, is_size_error
from cluster.adapters.spool import AsyncSpool
from cluster.observability.metrics import METRICS
from pipelines.errors import DeadLetterKind
from pipelines.policies.breaker import BreakerState, CircuitBreaker
from serve_app.admission import (
    NO_HOLD,
    Handover,
    HandoverPolicy,
    Hold,
    Route,
    SpoolCondition,
    SpoolLook,
    choose_route,
    drainer_progressed,
    may_ask_breaker,
    next_handover,
    readiness,
    route_after_publish_failure,
)
from serve_app.incidents import Incidents

log = logging.getLogger(__name__)

_SPOOL_ERRORS = (psycopg.Error, TimeoutError, OSError)  # PoolTimeout is a psycopg.OperationalError
# The spool's driver refused the append (no connection within the pool timeout, the statement failed): not taken.
# A timeout of the append itself is not here: the INSERT may have committed (Unknown).
_SPOOL_REFUSALS = (psycopg.Error, OSError)
_RETRY_AFTER_MAX_S = 30
_SPOOL_FULL_RETRY_AFTER_S = 5
EVENT_TOO_LARGE = "event_too_large"  # the error code of an event whose record is too large (replies.EVENT_TOO_LARGE)


@dataclass(frozen=True)
class Spooled:
    """Committed to the spool; the drainer publishes it once the broker is back."""


@dataclass(frozen=True)
class Refused:
    """Neither the broker nor the spool took the event: the client must retry after `retry_after_s`."""

    error: str  # broker_unavailable | spool_full
    reason: str  # advice for the client; never exception text
    retry_after_s: int
    error_id: str | None = None  # the log line with the cause


@dataclass(frozen=True)
class Rejected:
    """The broker refuses this record for good (too large, invalid for it): not published, not spooled; sending it
    again as it is cannot succeed."""

    error: str  # event_too_large | publish_rejected
    reason: str


@dataclass(frozen=True)
class Unknown:
    """The spool did not confirm the rows within its bound: its INSERT may have committed (a cancelled append, the
    request's own deadline, is answered "unknown" by the ingest path). Never "not taken": the client must send the
    event again with the same id (duplicates are dropped)."""

    error_id: str  # the log line with the cause


Outcome = Delivered | Spooled | Refused | Rejected | Unknown


class SpoolWatch:
    """The spool's rows and bytes, known cheaply: read from its usage counters every `interval_s` in the background,
    and raised at once when this replica spools itself (a read that started before that cannot lower them). It also
    tells whether the drainer is moving the spool's oldest row on, and serves quicker looks to requests that wait."""

    def __init__(
        self, spool: AsyncSpool, interval_s: float = 0.2, timeout_s: float = 1.0, quick_interval_s: float = 0.05
    ) -> None:
        self._spool = spool
        self._interval_s = interval_s
        self._quick_interval_s = quick_interval_s
        self._timeout_s = timeout_s
        self._marks = 0
        self.pending = False  # the spool holds rows: new events must queue behind them (per-key order)
        self.rows = 0  # as of the last read, plus what this replica spooled since
        self.bytes = 0
        self.reachable = True
        self.draining = False  # the last read found the oldest row gone since the read before: the drainer publishes
        self._oldest: int | None = None
        self.looks_started = 0  # reads begun; `applied_look` is the number of the last one whose answer is in force
        self.applied_look = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wanted = asyncio.Event()

    def spooled(self, rows: int, size: int) -> None:
        self._marks += 1
        self.pending = True
        self.rows += rows
        self.bytes += size

    async def refresh(self) -> None:
        mark = self._marks
        self.looks_started += 1
        look = self.looks_started
        try:
            usage = await asyncio.wait_for(self._spool.usage(), self._timeout_s)
        except _SPOOL_ERRORS:
            # Unknown: keep the last answer (pending stays pending, so per-key order is never given up).
            self.reachable = False
            return
        finally:
            self._settle_waiters(look)
        self.reachable = True
        # Only the drainer removes rows (our own appends add newer seqs), so this read says so even if it is stale.
        self.draining = drainer_progressed(self._oldest, usage.oldest)
        self._oldest = usage.oldest
        if mark != self._marks:
            return  # this replica spooled while the query ran: the answer may predate those rows
        self.pending, self.rows, self.bytes = usage.pending, usage.rows, usage.bytes
        self.applied_look = look

    async def next_look(self) -> None:
        """Returns once a read of the spool that began after this call has ended (its answer applied or not)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self.looks_started + 1, waiter))
        self._wanted.set()
        await waiter

    def _settle_waiters(self, look: int) -> None:
        if not self._waiters:
            return
        later = []
        for wanted, waiter in self._waiters:
            if wanted > look:
                later.append((wanted, waiter))
            elif not waiter.done():
                waiter.set_result(None)
        self._waiters = later

    async def run(self) -> None:
        while True:
            self._wanted.clear()  # who asks from here on is served by the next read
            await self.refresh()
            try:
                await asyncio.wait_for(self._wanted.wait(), self._interval_s)
            except TimeoutError:
                continue
            await asyncio.sleep(self._quick_interval_s)  # requests wait for a look: sooner, but not back to back


def record_bytes(record: Record) -> int:
    """What a record weighs in the spool's byte cap: value and key (as the usage triggers count it)."""
    return len(record[2]) + len(record[1] or b"")


class Delivery:
    def __init__(
        self,
        publisher: KafkaPublisher,
        breaker: CircuitBreaker,
        spool: AsyncSpool | None,
        watch: SpoolWatch | None,
        spool_max_rows: int,
        spool_timeout_s: float = 5.0,
        *,
        spool_max_bytes: int = 1 << 30,
        incidents: Incidents | None = None,
        handover: HandoverPolicy | None = None,
    ) -> None:
        self._publisher = publisher
        self._breaker = breaker
        self._spool = spool
        self._watch = watch
        self._spool_max_rows = spool_max_rows
        self._spool_max_bytes = spool_max_bytes
        self._spool_timeout_s = spool_timeout_s
        self._incidents = incidents or Incidents(log)
        self._handover_policy = handover or HandoverPolicy()
        self._handover = Handover()

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    async def deliver(self, items: list[tuple[str, Record]]) -> list[Outcome]:
        """One outcome per (event id, record), in order."""
        if not items:
            return []
        watch = self._watch
        arrived_after = watch.looks_started if watch is not None else 0  # looks begun before these events arrived
        while True:
            hold = self._hold(arrived_after)
            spool = self._condition(items, judge_caps=False)
            allowed = may_ask_breaker(spool, hold) and self._breaker.allow()
            if hold.on and not allowed and not spool.pending:
                hold = replace(hold, probe_in_flight=self._breaker.state is BreakerState.HALF_OPEN)
            if not allowed:  # the caps matter only if it may spool
                spool = self._condition(items)
            route = choose_route(spool, allowed, hold)
            if route is not Route.WAIT:
                break
            await self._next_look()
        if route is Route.SPOOL:
            cause = "events wait in the spool" if spool.pending else self._broker_cause()
            return await self._to_spool(items, cause)
        if route is Route.REFUSE:
            return [self._refusal(spool, self._broker_cause())] * len(items)
        return await self._publish(items)

    def _hold(self, arrived_after: int) -> Hold:
        """The replica's handover brought up to date with what its watch and breaker say now; this request's view."""
        watch = self._watch
        if watch is None or (not watch.pending and self._handover.hold_until is None):
            return NO_HOLD  # the common case, without a clock read: no spool mode to leave
        now = asyncio.get_running_loop().time()
        look = SpoolLook(watch.pending, watch.rows, watch.draining, self._breaker.state)
        before, self._handover = self._handover, next_handover(self._handover, look, now, self._handover_policy)
        if before.hold_until is None and self._handover.hold_until is not None:
            log.info("spool handover: the drainer is emptying the spool (%d rows); new events wait for it", watch.rows)
        elif before.hold_until is not None and self._handover.hold_until is None:
            if look.pending or look.breaker is not BreakerState.CLOSED:
                log.warning("spool handover gave up (spool rows %d, breaker %s); spooling", watch.rows, look.breaker)
            else:
                log.info("spool mode ended: the spool is empty and events go to the broker again")
        if not self._handover.holding(now):
            return NO_HOLD
        return Hold(on=True, confirmed=watch.applied_look > arrived_after)

    async def _next_look(self) -> None:
        """Wait for the watch's next look at the spool, but not past the end of the hold."""
        if self._watch is None or self._handover.hold_until is None:
            return  # no hold (only a hold brings us here): decide again at once
        left = self._handover.hold_until - asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(self._watch.next_look(), max(left, 0.0))
        except TimeoutError:
            pass  # the hold ran out: the next decision spools

    async def _publish(self, items: list[tuple[str, Record]]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        published = await self._publisher.publish_many([r for _, r in items])
        acked_after = loop.time() - started  # the request's records are acknowledged together
        outcomes: list[Outcome] = []
        failed: list[int] = []  # transient failures: the spool may take them
        first_failure: PublishError | None = None
        broker_failed = False  # a failure the producer's own loss does not explain
        for index, ((event_id, _), outcome) in enumerate(zip(items, published, strict=True)):
            if isinstance(outcome, Delivered):
                METRICS.publish_duration_seconds.observe(acked_after)
                outcomes.append(outcome)
            elif outcome.permanent:
                outcomes.append(self._rejected(event_id, outcome))
            else:
                failed.append(index)
                first_failure = first_failure or outcome
                broker_failed = broker_failed or not outcome.producer_lost
                outcomes.append(Spooled())  # placeholder, replaced below
        if first_failure is None:
            if any(isinstance(o, Delivered) for o in outcomes):
                self._breaker.record_success()  # a permanent refusal is the record's fault, not the broker's
            return outcomes
        cause = str(first_failure)
        if broker_failed:
            self._breaker.record_failure(cause)
        else:
            # The broker answered (it fenced a stale producer, which the publisher has replaced): the next call goes
            # through the new producer at once, instead of waiting out another cool-down of the breaker.
            log.warning("the kafka producer was replaced after: %s", cause)
            self._breaker.record_success()
        retry = [items[i] for i in failed]
        spool = self._condition(retry)
        if route_after_publish_failure(spool) is Route.SPOOL:
            retried = await self._to_spool(retry, f"the broker did not acknowledge ({cause})")
        else:
            retried = [self._refusal(spool, f"the broker did not acknowledge ({cause})")] * len(failed)
        for index, outcome in zip(failed, retried, strict=True):
            outcomes[index] = outcome
        return outcomes

    def _rejected(self, event_id: str, error: PublishError) -> Rejected:
        log.warning("the broker refuses event %s for good (not spooled): %s", event_id, error)
        if is_size_error(error):
            return Rejected(EVENT_TOO_LARGE, "the event's record is larger than the broker accepts; it was not taken")
        return Rejected(
            DeadLetterKind.PUBLISH_REJECTED, "the broker refuses this event's record for good; it was not taken"
        )

    async def _to_spool(self, items: list[tuple[str, Record]], cause: str) -> list[Outcome]:
        if self._spool is None or self._watch is None:
            raise RuntimeError("routed to the spool, but the spool is disabled")
        was_pending = self._watch.pending
        size = sum(record_bytes(r) for _, r in items)
        try:
            await asyncio.wait_for(self._spool.append(items), self._spool_timeout_s)
        except TimeoutError as exc:
            # The INSERT may have committed: never answer "not taken" (a retry under a new id would duplicate it).
            self._watch.spooled(len(items), size)  # rows may wait there: new events queue behind them (per-key order)
            message = f"spooling {len(items)} events outlived {self._spool_timeout_s:g}s; they may be taken ({cause})"
            error_id = self._incidents.report(message, exc, cause="spool_timeout")
            return [Unknown(error_id)] * len(items)
        except _SPOOL_REFUSALS as exc:
            error_id = self._incidents.report(f"could not spool {len(items)} events ({cause})", exc)
            reason = "the broker is unavailable and the spool could not take the events either; retry later"
            return [Refused("broker_unavailable", reason, self._broker_retry_after(), error_id)] * len(items)
        self._watch.spooled(len(items), size)
        if not was_pending:
            log.warning("spooling events: %s", cause)
        log.debug("spooled %d events", len(items))
        return [Spooled()] * len(items)

    def _condition(self, incoming: list[tuple[str, Record]], judge_caps: bool = True) -> SpoolCondition:
        if self._spool is None or self._watch is None:
            return SpoolCondition(enabled=False, pending=False, full=True)
        watch = self._watch
        full = judge_caps and (
            watch.rows + len(incoming) > self._spool_max_rows
            or watch.bytes + sum(record_bytes(r) for _, r in incoming) > self._spool_max_bytes
        )
        return SpoolCondition(enabled=True, pending=watch.pending, full=full)

    def _broker_cause(self) -> str:
        retry = self._breaker.retry_after_s()
        if retry > 0:
            return f"the broker is unavailable (circuit open, next probe in {retry:.1f}s)"
        return "the broker is unavailable (circuit half-open, a probe is in flight)"

    def _broker_retry_after(self) -> int:
        return max(1, min(_RETRY_AFTER_MAX_S, math.ceil(self._breaker.retry_after_s())))

    def _refusal(self, spool: SpoolCondition, cause: str) -> Refused:
        if spool.enabled and spool.full:
            limit = f"the spool holds its limit ({self._spool_max_rows} events or {self._spool_max_bytes} bytes)"
            reason = limit if spool.pending else f"the broker is unavailable, and {limit}"
            error_id = self._incidents.report(f"refused: {reason} ({cause})", cause="spool_full")
            return Refused("spool_full", f"{reason}; retry later", _SPOOL_FULL_RETRY_AFTER_S, error_id)
        error_id = self._incidents.report(f"refused: {cause}", cause="broker_unavailable")
        retry_after = self._broker_retry_after()
        reason = f"the broker is unavailable and no spool can take the events; retry in {retry_after}s"
        return Refused("broker_unavailable", reason, retry_after, error_id)

    def status(self) -> dict[str, Any]:
        """Breaker state and the spool's rows and bytes for /readyz, from what the spool watch last read: no query."""
        state = self._breaker.state
        if self._spool is None or self._watch is None:
            verdict = readiness(state, SpoolCondition(False, False, True), spool_reachable=False)
            return {"ready": verdict.ready, "degraded": verdict.degraded, "breakers": {"kafka": state.value}}
        watch = self._watch
        full = watch.rows >= self._spool_max_rows or watch.bytes >= self._spool_max_bytes
        verdict = readiness(state, SpoolCondition(True, watch.pending, full), spool_reachable=watch.reachable)
        return {
            "ready": verdict.ready,
            "degraded": verdict.degraded,
            "breakers": {"kafka": state.value},
            "spool": {
                "depth": watch.rows,
                "bytes": watch.bytes,
                "reachable": watch.reachable,
                "max_rows": self._spool_max_rows,
                "max_bytes": self._spool_max_bytes,
                "handover": self._handover.hold_until is not None,  # new events held for the spool to empty
            },
        }
