"""The cost of access control and the rate limiter's accuracy: CPU µs per request of the API key's check (the
replica's Authenticator with 1,000 keys loaded) and of the limit's decision (taken locally from a held lease; and
through the replica's RateLimits with its lease refills amortised, against the real limiter actor when Ray is
started), and admitted requests per 60 s window / limit across N replicas on a virtual clock.

Run: python -m benchmarks.ratelimit [--requests 200000] [--no-ray]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import tempfile
import time
from collections.abc import Sequence

from benchmarks.ratelimit_sim import Sim, max_in_window
from cluster.settings import Settings
from pipelines.access import DEFAULT_TENANT, Principal, Scope
from pipelines.api_keys import ActiveKey, issue_key
from pipelines.rate_lease import LeasedQuota
from pipelines.rate_limit import Grant, Ledger, Measure, Quota, request_quota
from serve_app.auth import Authenticator
from serve_app.incidents import Incidents
from serve_app.rate_limits import Limiter, RateLimits


class Clock:
    """A virtual clock the benchmark advances: requests arrive at the key's limit, so leases are refilled at their
    real cadence without waiting for it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class MemoryLimiter:
    """The ledger in this process: the replica's cost without the network hop."""

    def __init__(self, ttl_s: float, clock: Clock) -> None:
        self.ledger = Ledger(ttl_s)
        self.clock = clock
        self.calls = 0

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
        return self.ledger.acquire(key, measure, quota, replica, need, self.clock(), spent, incarnation, debt)

    async def release(
        self, key: str, measure: Measure, returns: Sequence[tuple[int, int]], incarnation: str | None = None
    ) -> None:
        for lease_id, unused in returns:
            self.ledger.release(key, measure, lease_id, unused, self.clock(), incarnation)


class RingOnly:
    """The key store as a replica's Authenticator reads it, in memory: `keys` active keys."""

    def __init__(self, keys: int) -> None:
        self.issued = [issue_key() for _ in range(keys)]

    def active(self) -> list[ActiveKey]:
        scopes = frozenset(Scope)
        return [ActiveKey(i.key_hash, Principal(i.key_id, i.key_id, DEFAULT_TENANT, scopes, 1000)) for i in self.issued]

    def touch(self, key_ids: object) -> None:
        pass

    def close(self) -> None:
        pass


def auth_decision_us(requests: int, keys: int = 1000) -> float:
    """CPU µs of Authenticator.decide for a valid `Authorization: Bearer` key: header parse, checksum, SHA-256, lookup,
    constant-time compare (the replica's whole check; Starlette's header parsing is not in it)."""
    store = RingOnly(keys)
    gate = Authenticator(store, 3600.0, Incidents(logging.getLogger("bench")))  # type: ignore[arg-type]
    gate.load()
    headers = {"authorization": f"Bearer {store.issued[keys // 2].key}"}

    async def run() -> float:
        started = time.process_time()
        for _ in range(requests):
            gate.decide(headers, Scope.INGEST)
        elapsed = time.process_time() - started
        await gate.close()
        return elapsed

    return asyncio.run(run()) / requests * 1e6


def local_decision_us(requests: int) -> float:
    """CPU µs of LeasedQuota.take when the lease covers the request (the hot path: no await, no call)."""
    quota = Quota(per_minute=10**12, burst=requests + 1)
    local = LeasedQuota(quota)
    local.granted(Grant(1, requests, 3600.0, 0, 0.0, 1), time.monotonic(), time.monotonic())
    started = time.process_time()
    for _ in range(requests):
        local.take(1, time.monotonic())
    return (time.process_time() - started) / requests * 1e6


def replica_decision_us(requests: int, per_minute: int, settings: Settings) -> tuple[float, int, int]:
    """CPU µs per request of RateLimits.request, refills from an in-process ledger included, for one replica taking
    a key's requests at the key's limit (virtual time). Returns (µs, admitted, limiter calls)."""
    who = Principal("bench", "bench", DEFAULT_TENANT, frozenset(Scope), per_minute)
    clock = Clock()
    limiter = MemoryLimiter(settings.rate_limit_lease_ttl_s, clock)
    step = 60.0 / per_minute

    async def run() -> int:
        rl = RateLimits(settings, limiter, clock)
        allowed = 0
        for _ in range(requests):
            allowed += (await rl.request(who)).allowed
            await asyncio.sleep(0)  # the background prefetch runs between requests, as on a serving replica's loop
            clock.now += step
        await rl.close()
        return allowed

    started = time.process_time()
    allowed = asyncio.run(run())
    return (time.process_time() - started) / requests * 1e6, allowed, limiter.calls


def actor_call_cpu_us(limiter: Limiter, calls: int = 300) -> tuple[float, float]:
    """(CPU µs in this process, wall ms) of one acquire through the limiter actor: what a replica pays per refill."""
    quota = request_quota(10**9)

    async def run() -> tuple[float, float]:
        await limiter.acquire("rtt", Measure.REQUESTS, quota, "bench", 1, [])  # found (or created) before timing
        wall, cpu = time.monotonic(), time.process_time()
        for _ in range(calls):
            await limiter.acquire("rtt", Measure.REQUESTS, quota, "bench", 1, [])
        return (time.process_time() - cpu) / calls * 1e6, (time.monotonic() - wall) / calls * 1e3

    return asyncio.run(run())


def accuracy(per_minute: int, replicas: int, seed: int) -> tuple[float, float]:
    """(most admitted in any 60 s window / limit, admitted in minute 3 / limit) for clients offering 2x the limit with
    bursts of a tenth of it, spread at random over `replicas`, for 5 virtual minutes."""
    rng = random.Random(seed)
    quota = request_quota(per_minute)
    sim = Sim(quota, replicas, rtt_s=0.002)
    now, step = 0.0, 60.0 / (2 * per_minute)
    while now < 300:
        burst = per_minute // 10 if rng.random() < 0.01 else 1
        for _ in range(burst):
            sim.request(rng.randrange(replicas), now)
        now += rng.expovariate(1 / step)
    steady = len([t for t in sim.admitted if 120 <= t < 180])
    return max_in_window(sim.admitted) / per_minute, steady / per_minute


def ray_limiter(settings: Settings) -> Limiter:
    """A Ray of this process's own (never another one on the host: address="local", a private temp dir)."""
    import ray

    from actors.rate_limiter import LimiterClient

    temp_dir = tempfile.mkdtemp(prefix="ep-rlb-")
    ray.init(address="local", num_cpus=1, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False,
             namespace=settings.ray_namespace)  # fmt: skip
    return LimiterClient(settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--no-ray", action="store_true", help="skip the real limiter actor (no Ray started)")
    args = parser.parse_args()
    settings = Settings(_env_file=None, ray_namespace="ratelimit-bench")  # type: ignore[call-arg]

    auth_us = auth_decision_us(args.requests)
    print(f"API key check (Authenticator.decide, 1000 keys):      {auth_us:6.2f} µs/request")
    print(f"local decision from a held lease (LeasedQuota.take):  {local_decision_us(args.requests):6.2f} µs/request")
    for per_minute in (1000, 60_000):
        us, allowed, calls = replica_decision_us(args.requests, per_minute, settings)
        print(
            f"replica decision at {per_minute}/min, refills included:  {us:6.2f} µs/request "
            f"({calls} limiter calls for {allowed} admitted: one per {allowed / max(1, calls):.1f})"
        )
        print(f"  key check + limit at {per_minute}/min:                 {auth_us + us:6.2f} µs/request")
    if not args.no_ray:
        cpu_us, wall_ms = actor_call_cpu_us(ray_limiter(settings))
        print(f"one refill through the limiter actor: {cpu_us:.0f} µs of the replica's CPU, {wall_ms:.2f} ms wall")
    print("accuracy across replicas (2x the limit offered, bursts of a tenth of it, 5 virtual minutes, 3 seeds):")
    print("  limit/min  replicas  max 60 s window / limit  minute 3 / limit")
    for per_minute in (120, 1000, 10_000):
        for replicas in (1, 2, 4, 8):
            runs = [accuracy(per_minute, replicas, seed) for seed in range(3)]
            worst = max(r[0] for r in runs)
            steady = min(r[1] for r in runs)
            print(f"  {per_minute:9d}  {replicas:8d}  {worst:23.3f}  {steady:16.3f}")


if __name__ == "__main__":
    main()
