"""Delivery of validated records: to the broker through the "kafka" circuit breaker, or into the durable spool when
the broker cannot take them or older events still wait there; refused only when neither can take them.

It never reports an event as taken unless the broker acknowledged it or its spool row is committed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from cluster.adapters.kafka_producer import Delivered, KafkaPublisher, PublishError, Record
from cluster.adapters.spool import AsyncSpool
from cluster.observability.metrics import METRICS
from pipelines.policies.breaker import CircuitBreaker
from serve_app.admission import Route, SpoolCondition, choose_route, readiness, route_after_publish_failure

log = logging.getLogger(__name__)

_SPOOL_ERRORS = (psycopg.Error, TimeoutError, OSError)  # PoolTimeout is a psycopg.OperationalError
_RETRY_AFTER_MAX_S = 30
_SPOOL_FULL_RETRY_AFTER_S = 5


@dataclass(frozen=True)
class Spooled:
    """Committed to the spool; the drainer publishes it once the broker is back."""


@dataclass(frozen=True)
class Refused:
    """Neither the broker nor the spool took the event: the client must retry after `retry_after_s`."""

    error: str  # broker_unavailable | spool_full
    reason: str
    retry_after_s: int


Outcome = Delivered | Spooled | Refused


class SpoolWatch:
    """Whether the spool holds rows, known cheaply: a background check every `interval_s`, and set at once when this
    replica spools itself (a check that started before that cannot clear it)."""

    def __init__(self, spool: AsyncSpool, interval_s: float = 0.2, timeout_s: float = 1.0) -> None:
        self._spool = spool
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._marks = 0
        self.pending = False
        self.upper_depth = 0  # at least the number of rows
        self.reachable = True

    def spooled(self, rows: int) -> None:
        self._marks += 1
        self.pending = True
        self.upper_depth += rows

    async def refresh(self) -> None:
        mark = self._marks
        try:
            bounds = await asyncio.wait_for(self._spool.bounds(), self._timeout_s)
        except _SPOOL_ERRORS:
            # Unknown: keep the last answer (pending stays pending, so per-key order is never given up).
            self.reachable = False
            return
        self.reachable = True
        if mark != self._marks:
            return  # this replica spooled while the query ran: the answer may predate those rows
        self.pending = bounds is not None
        self.upper_depth = bounds.upper_depth if bounds else 0

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._interval_s)


class Delivery:
    def __init__(
        self,
        publisher: KafkaPublisher,
        breaker: CircuitBreaker,
        spool: AsyncSpool | None,
        watch: SpoolWatch | None,
        spool_max_rows: int,
        spool_timeout_s: float = 5.0,
    ) -> None:
        self._publisher = publisher
        self._breaker = breaker
        self._spool = spool
        self._watch = watch
        self._spool_max_rows = spool_max_rows
        self._spool_timeout_s = spool_timeout_s

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    async def deliver(self, items: list[tuple[str, Record]]) -> list[Outcome]:
        """One outcome per (event id, record), in order."""
        if not items:
            return []
        spool = await self._condition(len(items))
        # The breaker is asked only when the spool is not pending: a half-open breaker's yes takes a probe slot.
        route = choose_route(spool, broker_allowed=not spool.pending and self._breaker.allow())
        if route is Route.SPOOL:
            cause = "events wait in the spool" if spool.pending else self._broker_cause()
            return await self._to_spool(items, cause)
        if route is Route.REFUSE:
            return [self._refusal(spool, self._broker_cause())] * len(items)
        return await self._publish(items)

    async def _publish(self, items: list[tuple[str, Record]]) -> list[Outcome]:
        started = time.perf_counter()
        outcomes: list[Outcome | PublishError] = list(await self._publisher.publish_many([r for _, r in items]))
        acked_after = time.perf_counter() - started  # the request's records are acknowledged together
        for outcome in outcomes:
            if isinstance(outcome, Delivered):
                METRICS.publish_duration_seconds.observe(acked_after)
        failed = [i for i, o in enumerate(outcomes) if isinstance(o, PublishError)]
        if not failed:
            self._breaker.record_success()
            return outcomes  # type: ignore[return-value]  # no PublishError left
        cause = str(outcomes[failed[0]])
        self._breaker.record_failure(cause)
        spool = await self._condition(len(failed))
        if route_after_publish_failure(spool) is Route.SPOOL:
            retried = await self._to_spool([items[i] for i in failed], cause)
        else:
            retried = [self._refusal(spool, cause)] * len(failed)
        for index, outcome in zip(failed, retried, strict=True):
            outcomes[index] = outcome
        return outcomes  # type: ignore[return-value]

    async def _to_spool(self, items: list[tuple[str, Record]], cause: str) -> list[Outcome]:
        if self._spool is None or self._watch is None:
            raise RuntimeError("routed to the spool, but the spool is disabled")
        was_pending = self._watch.pending
        try:
            await asyncio.wait_for(self._spool.append(items), self._spool_timeout_s)
        except _SPOOL_ERRORS as exc:
            log.warning("could not spool %d events (%s): %s", len(items), cause, exc)
            reason = f"{cause}; the spool could not take the events either: {type(exc).__name__}: {exc}"
            return [Refused("broker_unavailable", reason, self._broker_retry_after())] * len(items)
        self._watch.spooled(len(items))
        if not was_pending:
            log.warning("spooling events: %s", cause)
        log.debug("spooled %d events", len(items))
        return [Spooled()] * len(items)

    async def _condition(self, incoming: int) -> SpoolCondition:
        if self._spool is None or self._watch is None:
            return SpoolCondition(enabled=False, pending=False, full=True)
        full = self._watch.upper_depth + incoming > self._spool_max_rows
        if full:
            # The seq range overestimates after gaps: confirm with an exact count before refusing.
            try:
                rows = await asyncio.wait_for(self._spool.count(), self._spool_timeout_s)
            except _SPOOL_ERRORS:
                rows = self._watch.upper_depth
            self._watch.upper_depth = rows
            full = rows + incoming > self._spool_max_rows
        return SpoolCondition(enabled=True, pending=self._watch.pending, full=full)

    def _broker_cause(self) -> str:
        retry = self._breaker.retry_after_s()
        if retry > 0:
            return f"the broker is unavailable (circuit open, next probe in {retry:.1f}s)"
        return "the broker is unavailable (circuit half-open, a probe is in flight)"

    def _broker_retry_after(self) -> int:
        return max(1, min(_RETRY_AFTER_MAX_S, math.ceil(self._breaker.retry_after_s())))

    def _refusal(self, spool: SpoolCondition, cause: str) -> Refused:
        if spool.enabled and spool.full:
            reason = f"the spool holds its limit of {self._spool_max_rows} events"
            if not spool.pending:
                reason = f"{cause}, and {reason}"
            return Refused("spool_full", reason, _SPOOL_FULL_RETRY_AFTER_S)
        return Refused("broker_unavailable", cause, self._broker_retry_after())

    async def status(self, timeout_s: float = 1.0) -> dict[str, Any]:
        """Breaker state and spool depth for /readyz (answered within about `timeout_s`, like a probe expects)."""
        state = self._breaker.state
        if self._spool is None or self._watch is None:
            verdict = readiness(state, SpoolCondition(False, False, True), spool_reachable=False)
            return {"ready": verdict.ready, "degraded": verdict.degraded, "breakers": {"kafka": state.value}}
        depth: int | None
        try:
            depth = await asyncio.wait_for(self._spool.count(), timeout_s)
            reachable = True
        except _SPOOL_ERRORS:
            depth, reachable = None, False
        pending = self._watch.pending if depth is None else depth > 0
        full = depth is not None and depth >= self._spool_max_rows
        verdict = readiness(state, SpoolCondition(True, pending, full), spool_reachable=reachable)
        return {
            "ready": verdict.ready,
            "degraded": verdict.degraded,
            "breakers": {"kafka": state.value},
            "spool": {"depth": depth, "reachable": reachable, "max_rows": self._spool_max_rows},
        }
