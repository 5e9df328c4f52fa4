"""Delivery of validated records: to the broker through the "kafka" circuit breaker, or into the durable spool when
the broker cannot take them or older events still wait there; refused only when neither can take them.

It never reports an event as taken unless the broker acknowledged it or its spool row is committed; a record the
broker refuses for good is rejected, never spooled and never held against the broker's breaker; no exception text
reaches a client (refusals carry advice and an error id; the log line with that id carries the cause).
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Any

import psycopg

from cluster.adapters.kafka_producer import Delivered, KafkaPublisher, PublishError, Record
from cluster.adapters.spool import AsyncSpool
from cluster.observability.metrics import METRICS
from pipelines.policies.breaker import CircuitBreaker
from serve_app.admission import Route, SpoolCondition, choose_route, readiness, route_after_publish_failure
from serve_app.incidents import Incidents

log = logging.getLogger(__name__)

_SPOOL_ERRORS = (psycopg.Error, TimeoutError, OSError)  # PoolTimeout is a psycopg.OperationalError
_RETRY_AFTER_MAX_S = 30
_SPOOL_FULL_RETRY_AFTER_S = 5
_SIZE_CODES = frozenset({"MSG_SIZE_TOO_LARGE", "INVALID_MSG_SIZE", "RECORD_LIST_TOO_LARGE"})


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


Outcome = Delivered | Spooled | Refused | Rejected


class SpoolWatch:
    """The spool's rows and bytes, known cheaply: read from its usage counters every `interval_s` in the background,
    and raised at once when this replica spools itself (a read that started before that cannot lower them)."""

    def __init__(self, spool: AsyncSpool, interval_s: float = 0.2, timeout_s: float = 1.0) -> None:
        self._spool = spool
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._marks = 0
        self.pending = False  # the spool holds rows: new events must queue behind them (per-key order)
        self.rows = 0  # as of the last read, plus what this replica spooled since
        self.bytes = 0
        self.reachable = True

    def spooled(self, rows: int, size: int) -> None:
        self._marks += 1
        self.pending = True
        self.rows += rows
        self.bytes += size

    async def refresh(self) -> None:
        mark = self._marks
        try:
            usage = await asyncio.wait_for(self._spool.usage(), self._timeout_s)
        except _SPOOL_ERRORS:
            # Unknown: keep the last answer (pending stays pending, so per-key order is never given up).
            self.reachable = False
            return
        self.reachable = True
        if mark != self._marks:
            return  # this replica spooled while the query ran: the answer may predate those rows
        self.pending, self.rows, self.bytes = usage.pending, usage.rows, usage.bytes

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._interval_s)


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
    ) -> None:
        self._publisher = publisher
        self._breaker = breaker
        self._spool = spool
        self._watch = watch
        self._spool_max_rows = spool_max_rows
        self._spool_max_bytes = spool_max_bytes
        self._spool_timeout_s = spool_timeout_s
        self._incidents = incidents or Incidents(log)

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    async def deliver(self, items: list[tuple[str, Record]]) -> list[Outcome]:
        """One outcome per (event id, record), in order."""
        if not items:
            return []
        pending = self._watch is not None and self._watch.pending
        # The breaker is asked only when the spool is not pending: a half-open breaker's yes takes a probe slot.
        broker_allowed = not pending and self._breaker.allow()
        spool = self._condition(items, judge_caps=not broker_allowed)  # the caps matter only if it may spool
        route = choose_route(spool, broker_allowed)
        if route is Route.SPOOL:
            cause = "events wait in the spool" if spool.pending else self._broker_cause()
            return await self._to_spool(items, cause)
        if route is Route.REFUSE:
            return [self._refusal(spool, self._broker_cause())] * len(items)
        return await self._publish(items)

    async def _publish(self, items: list[tuple[str, Record]]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        published = await self._publisher.publish_many([r for _, r in items])
        acked_after = loop.time() - started  # the request's records are acknowledged together
        outcomes: list[Outcome] = []
        failed: list[int] = []  # transient failures: the spool may take them
        first_failure: PublishError | None = None
        for index, ((event_id, _), outcome) in enumerate(zip(items, published, strict=True)):
            if isinstance(outcome, Delivered):
                METRICS.publish_duration_seconds.observe(acked_after)
                outcomes.append(outcome)
            elif outcome.permanent:
                outcomes.append(self._rejected(event_id, outcome))
            else:
                failed.append(index)
                first_failure = first_failure or outcome
                outcomes.append(Spooled())  # placeholder, replaced below
        if first_failure is None:
            if any(isinstance(o, Delivered) for o in outcomes):
                self._breaker.record_success()  # a permanent refusal is the record's fault, not the broker's
            return outcomes
        cause = str(first_failure)
        self._breaker.record_failure(cause)
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
        if error.code in _SIZE_CODES:
            return Rejected("event_too_large", "the event's record is larger than the broker accepts; it was not taken")
        return Rejected("publish_rejected", "the broker refuses this event's record for good; it was not taken")

    async def _to_spool(self, items: list[tuple[str, Record]], cause: str) -> list[Outcome]:
        if self._spool is None or self._watch is None:
            raise RuntimeError("routed to the spool, but the spool is disabled")
        was_pending = self._watch.pending
        try:
            await asyncio.wait_for(self._spool.append(items), self._spool_timeout_s)
        except _SPOOL_ERRORS as exc:
            error_id = self._incidents.report(f"could not spool {len(items)} events ({cause})", exc)
            reason = "the broker is unavailable and the spool could not take the events either; retry later"
            return [Refused("broker_unavailable", reason, self._broker_retry_after(), error_id)] * len(items)
        self._watch.spooled(len(items), sum(record_bytes(r) for _, r in items))
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
            },
        }
