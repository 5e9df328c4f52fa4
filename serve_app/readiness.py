"""/readyz's answer, computed at most once per `ttl_s` per replica: probes and load balancers may poll as often as
they like without adding a query per poll.

Concurrent callers share one computation; a failed computation is not cached (the next caller tries again).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class CachedReadiness(Generic[T]):
    def __init__(
        self, compute: Callable[[], Awaitable[T]], ttl_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._compute = compute
        self._ttl_s = ttl_s
        self._clock = clock
        self._value: T | None = None
        self._at = 0.0
        self._fresh = False
        self._inflight: asyncio.Future[T] | None = None

    async def get(self) -> T:
        if self._fresh and self._clock() - self._at < self._ttl_s:
            return self._value  # type: ignore[return-value]  # set whenever _fresh is
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._refresh())
        return await asyncio.shield(self._inflight)

    async def _refresh(self) -> T:
        try:
            value = await self._compute()
            self._value, self._at, self._fresh = value, self._clock(), True
            return value
        finally:
            self._inflight = None
