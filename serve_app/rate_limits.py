"""An API replica's rate limiting: per (key, measure) a leased quota decided locally, refilled from the limiter actor
in the background before it runs out, leases given back before they expire, and a local bucket (the replica's share
of the key's limit) while the limiter is gone.

A request waits for the limiter only when its replica holds no tokens for the key (its first request, or after the
key's bucket was empty); never otherwise, and never longer than `rate_limit_fetch_timeout_s`: past it the request is
refused with a short Retry-After while the fetch stays in flight. A slow limiter is not an outage (deciding alone
while the other replicas draw the full rate from it would break the bound): only two consecutive failed calls
(LimiterUnavailable: the actor is dead or being restarted) put the replica on its fallback buckets, and what they
admitted is reported to the limiter, as spent, once it answers again. It never admits a request the leases or the
fallback bucket do not cover, and it never names a key's secret: keys are known here by their public id and name.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

from cluster.observability.labels import BoundedLabels
from cluster.observability.metrics import METRICS
from cluster.settings import Settings
from pipelines.access import Principal
from pipelines.rate_lease import Decision, FallbackBucket, LeasedQuota
from pipelines.rate_limit import Grant, LimiterUnavailable, Measure, Quota, event_quota, request_quota

log = logging.getLogger(__name__)

_SWEEP_EVERY_S = 1.0  # give back leases near their expiry, forget idle keys
_FETCHES_PER_REQUEST = 3  # a request no fetch covered after this many (others spent them first) is refused
_FAILURES_FOR_FALLBACK = 2  # consecutive failed limiter calls before deciding alone (one may be a restart's)
_SLOW_RETRY_AFTER_S = 1.0  # Retry-After of a request refused because the limiter is slow to answer


class Limiter(Protocol):
    """The limiter actor as a replica sees it (actors.rate_limiter.LimiterClient; an in-memory ledger in tests)."""

    async def acquire(
        self,
        key: str,
        measure: Measure,
        quota: Quota,
        replica: str,
        need: int,
        spent: Sequence[tuple[int, int]],
        incarnation: str | None,
        debt: int,
    ) -> Grant: ...

    async def release(
        self, key: str, measure: Measure, returns: Sequence[tuple[int, int]], incarnation: str | None
    ) -> None: ...


BucketKey = tuple[str, Measure]


class RateLimits:
    def __init__(
        self,
        settings: Settings,
        limiter: Limiter,
        clock: Callable[[], float] = time.monotonic,
        replica: str | None = None,
    ) -> None:
        self._limiter = limiter
        self._clock = clock
        self._replica = replica or uuid.uuid4().hex[:12]
        self._largest_batch = settings.max_batch_events
        self._timeout_s = settings.rate_limit_fetch_timeout_s
        self._fallback_for_s = settings.rate_limit_lease_ttl_s
        self._idle_after_s = 2 * settings.rate_limit_lease_ttl_s
        # Before the limiter said how many replicas share a key, assume the configured count (autoscaling: the minimum)
        self._assumed_replicas = max(settings.ingest_replicas, settings.ingest_min_replicas, 1)
        self._quotas: dict[BucketKey, LeasedQuota] = {}
        self._last_used: dict[BucketKey, float] = {}
        self._fetches: dict[BucketKey, asyncio.Task[None]] = {}
        self._fallback: dict[BucketKey, FallbackBucket] = {}
        self._fallback_until = 0.0
        self._failures = 0  # consecutive failed limiter calls
        self._debt: dict[BucketKey, int] = {}  # tokens admitted alone, not yet reported to the limiter
        self._outage_since: float | None = None  # when the limiter stopped answering, None while it answers
        self._sweeper: asyncio.Task[None] | None = None
        self._labels = BoundedLabels()

    async def request(self, principal: Principal) -> Decision:
        """Whether one more request of this key may be answered now."""
        return await self._decide(principal, Measure.REQUESTS, request_quota(principal.requests_per_minute), 1)

    async def events(self, principal: Principal, count: int) -> Decision | None:
        """Whether `count` more events of this key may be taken now; None when the key has no events limit."""
        if principal.events_per_minute is None:
            return None
        quota = event_quota(principal.events_per_minute, self._largest_batch)
        return await self._decide(principal, Measure.EVENTS, quota, count)

    async def close(self) -> None:
        """Stop the background tasks and give back every lease held (the replica is going away)."""
        tasks = [t for t in (self._sweeper, *self._fetches.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._return_leases(self._clock(), everything=True)

    async def _decide(self, principal: Principal, measure: Measure, quota: Quota, cost: int) -> Decision:
        self._start_sweeper()
        key = (principal.key_id, measure)
        decision = await self._leased(key, quota, cost)
        if not decision.allowed:
            METRICS.rate_limited.labels(self._labels(principal.name)).inc()
        return decision

    async def _leased(self, key: BucketKey, quota: Quota, cost: int) -> Decision:
        now = self._clock()
        self._last_used[key] = now
        if now < self._fallback_until:
            return self._alone(key, quota, cost, now)
        local = self._quota(key, quota)
        decision = local.take(cost, now)
        for _ in range(_FETCHES_PER_REQUEST):
            if decision is not None:
                break
            # A fetch in flight (a prefetch, or another request's), else the round trip of the key's first request
            fetch = self._fetches.get(key) or self._fetch(key, local, local.need(cost))
            done, _ = await asyncio.wait({fetch}, timeout=self._timeout_s)  # on timeout the fetch goes on
            now = self._clock()
            if not done:
                return local.slow(_SLOW_RETRY_AFTER_S)
            if now < self._fallback_until:
                return self._alone(key, quota, cost, now)
            decision = local.take(cost, now)
        if decision is None:  # concurrent requests spent every block fetched for this one: a busy key, try again
            return local.busy(cost, now)
        if decision.allowed:
            self._fallback_bucket(key, quota, now).charge(cost, now)
        if local.wants_refill(now):
            self._fetch(key, local, 1)
        return decision

    def _quota(self, key: BucketKey, quota: Quota) -> LeasedQuota:
        local = self._quotas.get(key)
        if local is None:
            local = self._quotas[key] = LeasedQuota(quota)
            local.replicas = self._assumed_replicas
        elif local.quota != quota:
            local.reshape(quota)
        return local

    def _fetch(self, key: BucketKey, local: LeasedQuota, need: int) -> asyncio.Task[None]:
        local.fetching = True
        task = asyncio.create_task(self._ask(key, local, need), name=f"rate-limit-fetch:{key[1]}")
        self._fetches[key] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._fetches.get(key) is done:
                del self._fetches[key]

        task.add_done_callback(forget)
        return task

    async def _ask(self, key: BucketKey, local: LeasedQuota, need: int) -> None:
        """One limiter call, bounded by a lease lifetime (not the request's timeout): a slower answer is abandoned,
        its lease (if any) expires at the limiter and counts as spent there. Only a failed call counts toward an
        outage."""
        sent_at = self._clock()
        debt = self._debt.pop(key, 0)
        try:
            call = self._limiter.acquire(
                key[0], key[1], local.quota, self._replica, need, local.report(), local.incarnation, debt
            )
            grant = await asyncio.wait_for(call, self._fallback_for_s)
            debt = 0
            local.granted(grant, sent_at, self._clock())
            self._failures = 0
            self._fallback_until = 0.0
            if self._outage_since is not None:
                log.warning("rate limiter reachable again after %.1fs alone", self._clock() - self._outage_since)
                self._outage_since = None
        except TimeoutError:
            log.debug("rate limiter call abandoned after %gs", self._fallback_for_s)
        except LimiterUnavailable as exc:
            self._failures += 1
            if self._failures >= _FAILURES_FOR_FALLBACK:
                self._unreachable(exc)
        finally:
            if debt:  # not delivered: reported with the next call
                self._debt[key] = self._debt.get(key, 0) + debt
            local.fetching = False

    def _unreachable(self, exc: BaseException) -> None:
        now = self._clock()
        if self._outage_since is None:  # once per outage, however long it lasts
            self._outage_since = now
            log.warning(
                "rate limiter unreachable (%s): this replica decides alone, with its share of each key's limit, "
                "asking again every %gs",
                type(exc).__name__,
                self._fallback_for_s,
            )
        self._fallback_until = now + self._fallback_for_s

    def _alone(self, key: BucketKey, quota: Quota, cost: int, now: float) -> Decision:
        METRICS.rate_limit_fallback.inc()
        decision = self._fallback_bucket(key, quota, now).take(cost, now)
        if decision.allowed:  # the limiter learns of it as spent once it answers again
            self._debt[key] = self._debt.get(key, 0) + cost
        return decision

    def _fallback_bucket(self, key: BucketKey, quota: Quota, now: float) -> FallbackBucket:
        """The key's fallback bucket, kept across outages (its level is what this replica's traffic left)."""
        local = self._quotas.get(key)
        replicas = local.replicas if local is not None else self._assumed_replicas
        bucket = self._fallback.get(key)
        if bucket is None or bucket.quota != quota:
            bucket = self._fallback[key] = FallbackBucket(quota, replicas, now)
        elif bucket.replicas != replicas:
            bucket.share(replicas, now)
        return bucket

    def _start_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="rate-limit-sweep")

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_EVERY_S)
            await self.sweep()

    async def sweep(self) -> None:
        """Give back leases close to expiry (their unused tokens serve other replicas) and forget idle keys."""
        now = self._clock()
        await self._return_leases(now)
        for key, local in list(self._quotas.items()):
            if local.idle(now) and now - self._last_used.get(key, now) > self._idle_after_s:
                del self._quotas[key]
                self._last_used.pop(key, None)
                self._fallback.pop(key, None)  # idle this long: it would be full again

    async def _return_leases(self, now: float, everything: bool = False) -> None:
        for key, local in list(self._quotas.items()):
            returns = local.to_return(now, everything)
            if returns:
                try:
                    await asyncio.wait_for(
                        self._limiter.release(key[0], key[1], returns, local.incarnation), self._timeout_s
                    )
                except (LimiterUnavailable, TimeoutError) as exc:  # expired there: counted as spent, never lost
                    log.debug("could not return %d leases: %s", len(returns), type(exc).__name__)
