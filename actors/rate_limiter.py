"""RateLimiter: the named, detached actor holding the cluster's rate-limit ledger (pipelines.rate_limit), and the
client API replicas reach it through. It leases blocks of tokens and takes them back; replicas decide requests alone.

Restarted (max_restarts=-1), it knows nothing: every bucket starts full while the leases granted before the crash may
still be spent until they expire, so a 60 s window that holds a restart admits at most limit + 2 x burst (x 1.10).
Each incarnation has a random id, sent in every grant: lease ids restart at 1, and an id of the old incarnation
(a replica's spent report or return) is ignored rather than applied to a new lease of the same number.
It never blocks on anything but its own ledger: one call at a time (max_concurrency=1), no locks needed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import RayError

from actors import names
from cluster.observability.logs import setup_logging
from cluster.settings import Settings
from pipelines.rate_limit import Grant, Ledger, LimiterUnavailable, Measure, Quota

log = logging.getLogger(__name__)

_SWEEP_EVERY_S = 60.0  # forget full, unleased buckets this often (memory only: recreated full, they act the same)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        setup_logging(settings, "rate-limiter")  # no secret needed: it touches neither PostgreSQL nor the broker
        self._ledger = Ledger(settings.rate_limit_lease_ttl_s)
        self._swept_at = time.monotonic()
        self._calls = 0
        if ray.get_runtime_context().was_current_actor_reconstructed:
            log.warning("rate limiter restarted: buckets start full; leases granted before may add one burst per key")

    def acquire(
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
        now = time.monotonic()
        self._calls += 1
        if now - self._swept_at > _SWEEP_EVERY_S:
            self._ledger.sweep(now)
            self._swept_at = now
        return self._ledger.acquire(key, measure, quota, replica, need, now, spent, incarnation, debt)

    def release(
        self, key: str, measure: Measure, returns: Sequence[tuple[int, int]], incarnation: str | None = None
    ) -> None:
        now = time.monotonic()
        for lease_id, unused in returns:
            self._ledger.release(key, measure, lease_id, unused, now, incarnation)

    def sharing(self, key: str, measure: Measure) -> int:
        """Replicas that asked for this key's bucket lately (for tests and the status page)."""
        return self._ledger.sharing(key, measure, time.monotonic())

    def stats(self) -> dict[str, Any]:
        return {"buckets": len(self._ledger), "calls": self._calls}


def start_rate_limiter(settings: Settings) -> Any:
    """Create (or find) the limiter. The pipeline's start creates it; an API replica that finds none creates it too."""
    return RateLimiter.options(  # type: ignore[attr-defined]
        name=names.RATE_LIMITER,
        namespace=settings.ray_namespace,
        lifetime="detached",
        get_if_exists=True,
        max_concurrency=1,
    ).remote(settings.shareable())


class LimiterClient:
    """An API replica's way to the limiter: the actor found (or created) on first use and forgotten when it died;
    every failure is a LimiterUnavailable, which the replica answers by deciding alone."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._actor: Any | None = None

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
        grant: Grant = await self._call("acquire", key, measure, quota, replica, need, list(spent), incarnation, debt)
        return grant

    async def release(
        self, key: str, measure: Measure, returns: Sequence[tuple[int, int]], incarnation: str | None = None
    ) -> None:
        await self._call("release", key, measure, list(returns), incarnation)

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            if self._actor is None:
                self._actor = await asyncio.to_thread(start_rate_limiter, self._settings)
            return await getattr(self._actor, method).remote(*args)
        except RayError as exc:
            self._actor = None  # dead for good (killed): the next call finds or creates the new one
            raise LimiterUnavailable(type(exc).__name__) from exc
