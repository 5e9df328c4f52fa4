"""An API replica's rate limiting (serve_app.rate_limits) against an in-memory limiter on a manual clock: the first
request of a key waits for one lease, the next ones are decided locally, a limiter that is down makes the replica
decide alone with its share (logged once, counted) after two failed calls and report what it admitted as debt, a slow
one refuses briefly but never decides alone (the reviewer's two-replica case stays within the bound), closing gives
the leases back, refusals are counted by key name, events are limited only for keys that have an events limit, and a
refused request's answer carries Retry-After and the RateLimit-* headers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from cluster.observability.metrics import METRICS
from cluster.settings import Settings
from pipelines.access import DEFAULT_TENANT, Principal, Scope
from pipelines.rate_limit import Grant, Ledger, LimiterUnavailable, Measure, Quota, request_quota
from serve_app import replies
from serve_app.rate_limits import RateLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MemoryLimiter:
    """The limiter actor's ledger in memory; `down` makes every call fail as a dead actor's would."""

    def __init__(self, clock: Clock, ttl_s: float) -> None:
        self.ledger = Ledger(ttl_s)
        self.clock = clock
        self.calls = 0
        self.down = False
        self.delay_s = 0.0
        self.debts: list[int] = []

    async def acquire(
        self,
        key: str,
        measure: Measure,
        quota: Quota,
        replica: str,
        need: int,
        spent: Sequence[tuple[int, int]],
        incarnation: str | None = None,
        debt: int = 0,
    ) -> Grant:
        self.calls += 1
        self.debts.append(debt)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.down:
            raise LimiterUnavailable("ActorDiedError")
        return self.ledger.acquire(key, measure, quota, replica, need, self.clock(), spent, incarnation, debt)

    async def release(
        self, key: str, measure: Measure, returns: Sequence[tuple[int, int]], incarnation: str | None = None
    ) -> None:
        if self.down:
            raise LimiterUnavailable("ActorDiedError")
        for lease_id, unused in returns:
            self.ledger.release(key, measure, lease_id, unused, self.clock(), incarnation)


def principal(name: str = "shop-eu", per_minute: int = 1200, events: int | None = None) -> Principal:
    return Principal(f"id-{name}", name, DEFAULT_TENANT, frozenset(Scope), per_minute, events)


def limits(clock: Clock, limiter: MemoryLimiter, **fields: object) -> RateLimits:
    settings = Settings(_env_file=None, rate_limit_lease_ttl_s=5.0, **fields)  # type: ignore[call-arg]
    return RateLimits(settings, limiter, clock, replica="r1")


def refused_count(name: str) -> float:
    return METRICS.rate_limited.labels(name)._value.get()


def test_the_first_request_leases_a_block_and_the_next_ones_are_decided_locally() -> None:
    async def run() -> None:
        clock = Clock()
        limiter = MemoryLimiter(clock, 5.0)
        rl = limits(clock, limiter)
        who = principal(per_minute=6000)  # burst 300; one replica's block: 150
        first = await rl.request(who)
        calls_after_first = limiter.calls
        for _ in range(50):
            assert (await rl.request(who)).allowed
        await asyncio.sleep(0)  # let any background prefetch run
        await rl.close()
        assert first.allowed and first.limit == 6000
        assert calls_after_first == 1
        assert limiter.calls <= 2  # at most one prefetch for 51 requests

    asyncio.run(run())


def test_an_exhausted_key_is_refused_with_retry_after_and_counted_by_name() -> None:
    async def run() -> None:
        clock = Clock()
        limiter = MemoryLimiter(clock, 5.0)
        rl = limits(clock, limiter)
        who = principal(name="tiny", per_minute=60)  # burst 3, one token a second
        before = refused_count("tiny")
        decisions = [await rl.request(who) for _ in range(request_quota(60).burst + 2)]
        await rl.close()
        refused = [d for d in decisions if not d.allowed]
        assert len(refused) == 2
        assert refused_count("tiny") - before == 2
        reply = replies.rate_limited(refused[0], Measure.REQUESTS)
        assert reply.status == 429 and reply.body["error"] == "rate_limited"
        assert reply.headers is not None
        assert int(reply.headers["Retry-After"]) >= 1
        assert reply.headers["RateLimit-Limit"] == "60"
        assert reply.headers["RateLimit-Remaining"] == "0"
        assert int(reply.headers["RateLimit-Reset"]) >= 1

    asyncio.run(run())


def test_concurrent_first_requests_share_one_fetch() -> None:
    async def run() -> None:
        clock = Clock()
        limiter = MemoryLimiter(clock, 5.0)
        limiter.delay_s = 0.01
        rl = limits(clock, limiter)
        who = principal(per_minute=6000)
        decisions = await asyncio.gather(*(rl.request(who) for _ in range(20)))
        await rl.close()
        assert all(d.allowed for d in decisions)
        assert limiter.calls == 1

    asyncio.run(run())


def test_a_limiter_that_is_down_makes_the_replica_decide_alone_with_its_share(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> list[bool]:
        clock = Clock()
        limiter = MemoryLimiter(clock, 5.0)
        limiter.down = True
        rl = limits(clock, limiter, ingest_replicas=2)
        who = principal(per_minute=1200)  # burst 60: this replica's share while alone is 30
        fallback_before = METRICS.rate_limit_fallback._value.get()
        out = [(await rl.request(who)).allowed for _ in range(40)]
        assert METRICS.rate_limit_fallback._value.get() - fallback_before == 40
        assert limiter.calls == 2  # two failed calls, then alone for a lease lifetime
        await rl.close()
        return out

    with caplog.at_level(logging.WARNING, logger="serve_app.rate_limits"):
        allowed = asyncio.run(run())
    assert allowed.count(True) == request_quota(1200).burst // 2
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1


def test_a_slow_limiter_refuses_briefly_and_never_makes_the_replica_decide_alone() -> None:
    async def run() -> None:
        clock = Clock()
        limiter = MemoryLimiter(clock, 5.0)
        limiter.delay_s = 0.2
        rl = limits(clock, limiter, rate_limit_fetch_timeout_s=0.02)
        fallback_before = METRICS.rate_limit_fallback._value.get()
        slow = await rl.request(principal())
        await asyncio.sleep(0.3)  # the fetch was not abandoned: its lease arrives
        later = await rl.request(principal())
        await rl.close()
        assert not slow.allowed and 0 < slow.retry_after_s <= 1.0
        assert later.allowed
        assert limiter.calls == 1
        assert METRICS.rate_limit_fallback._value.get() == fallback_before

    asyncio.run(run())


class LateLimiter(MemoryLimiter):
    """The shared ledger, answering only after `delay_s` of real time (a loaded box): later than the fetch timeout."""

    def __init__(self, shared: MemoryLimiter, delay_s: float) -> None:
        super().__init__(shared.clock, 5.0)
        self.ledger = shared.ledger
        self.delay_s = delay_s


def test_two_replicas_one_with_late_answers_stay_within_the_bound() -> None:
    """The reviewer's case: A's fetches time out, B's do not; both offered 1.2x the limit for 60 s."""

    async def run() -> tuple[int, int]:
        clock = Clock()
        fast = MemoryLimiter(clock, 5.0)
        late = LateLimiter(fast, delay_s=0.01)
        settings = {"rate_limit_fetch_timeout_s": 0.002, "ingest_replicas": 2}
        a = RateLimits(Settings(_env_file=None, rate_limit_lease_ttl_s=5.0, **settings), late, clock, "a")  # type: ignore[call-arg]
        b = RateLimits(Settings(_env_file=None, rate_limit_lease_ttl_s=5.0, **settings), fast, clock, "b")  # type: ignore[call-arg]
        who = principal(name="late", per_minute=1000)
        admitted = {"a": 0, "b": 0}
        start = clock.now
        while clock.now - start < 60.0:  # one request on each replica every 50 ms: 1,200/min each
            clock.now += 0.05
            admitted["a"] += (await a.request(who)).allowed
            admitted["b"] += (await b.request(who)).allowed
            await asyncio.sleep(0)
        await a.close()
        await b.close()
        return admitted["a"], admitted["b"]

    admitted_a, admitted_b = asyncio.run(run())
    assert admitted_a + admitted_b <= request_quota(1000).window_bound  # 1,050
    assert admitted_a > 0 and admitted_b > 0


def test_what_was_admitted_alone_is_reported_as_spent_once_the_limiter_answers() -> None:
    async def run() -> None:
        clock = Clock()
        limiter = MemoryLimiter(clock, 5.0)
        limiter.down = True
        rl = limits(clock, limiter, ingest_replicas=2)
        who = principal(per_minute=1200)
        alone = sum([(await rl.request(who)).allowed for _ in range(10)])
        limiter.down = False
        clock.now += 5.1
        assert (await rl.request(who)).allowed
        await rl.close()
        assert alone == 10
        assert limiter.debts[-1] == 10

    asyncio.run(run())


def test_close_gives_every_held_lease_back() -> None:
    async def run() -> None:
        clock = Clock()
        limiter = MemoryLimiter(clock, 5.0)
        rl = limits(clock, limiter)
        who = principal(per_minute=6000)  # burst 300
        await rl.request(who)
        await rl.close()
        grant = limiter.ledger.acquire(who.key_id, Measure.REQUESTS, request_quota(6000), "other", 299, clock.now)
        assert grant.tokens >= 299  # all but the one spent token came back at once, not at the lease's expiry

    asyncio.run(run())


def test_the_limiter_is_asked_again_after_a_lease_lifetime_alone(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        clock = Clock()
        limiter = MemoryLimiter(clock, 5.0)
        limiter.down = True
        rl = limits(clock, limiter)
        who = principal()
        await rl.request(who)
        clock.now += 5.1
        await rl.request(who)  # still down: asked again, not logged again
        limiter.down = False
        clock.now += 5.1
        await rl.request(who)
        await rl.close()
        assert limiter.calls == 4  # two failures; one more after a lifetime alone (still failing); then answered

    with caplog.at_level(logging.WARNING, logger="serve_app.rate_limits"):
        asyncio.run(run())
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "unreachable" in m]) == 1
    assert len([m for m in messages if "reachable again" in m]) == 1


def test_events_are_limited_only_for_keys_with_an_events_limit() -> None:
    async def run() -> None:
        clock = Clock()
        limiter = MemoryLimiter(clock, 5.0)
        rl = limits(clock, limiter, max_batch_events=1000)
        assert await rl.events(principal(), 1000) is None
        limited = principal(name="ev", events=6000)  # burst: the largest batch (1000)
        first = await rl.events(limited, 1000)
        second = await rl.events(limited, 1000)
        await rl.close()
        assert first is not None and first.allowed
        assert second is not None and not second.allowed
        assert second.retry_after_s > 0

    asyncio.run(run())


def test_leases_near_expiry_are_given_back() -> None:
    async def run() -> None:
        clock = Clock()
        limiter = MemoryLimiter(clock, 5.0)
        rl = limits(clock, limiter)
        who = principal(per_minute=6000)
        await rl.request(who)
        await asyncio.sleep(0)
        clock.now += 4.6  # within the margin of the lease's expiry
        await rl.sweep()
        await rl.close()
        grant = limiter.ledger.acquire(who.key_id, Measure.REQUESTS, request_quota(6000), "other", 1, clock.now)
        assert grant.free + grant.tokens >= request_quota(6000).burst - 1  # all but the one spent token came back

    asyncio.run(run())


def test_a_crowd_of_concurrent_requests_is_admitted_within_the_burst_without_a_call_each() -> None:
    async def run() -> None:
        clock = Clock()
        limiter = MemoryLimiter(clock, 5.0)
        limiter.delay_s = 0.005
        rl = limits(clock, limiter)
        who = principal(name="crowd", per_minute=120)  # burst 6
        decisions = await asyncio.gather(*(rl.request(who) for _ in range(50)))
        await rl.close()
        assert sum(d.allowed for d in decisions) <= request_quota(120).burst
        assert all(d.retry_after_s > 0 for d in decisions if not d.allowed)
        assert limiter.calls <= 10  # the crowd shares fetches; refusals are then decided locally

    asyncio.run(run())
