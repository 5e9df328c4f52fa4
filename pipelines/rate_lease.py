"""A replica's side of the cluster-wide rate limit: the tokens it holds on lease for one (key, measure), the decision on
each request taken from them alone, when to fetch the next block, when to give back what it will not use, and the
local bucket it falls back to while the limiter cannot be reached. Pure: time is passed in, no I/O, no Ray.

It never spends a token after its lease's local expiry (which comes before the limiter's, since the lifetime is
counted from when the request for it was sent), so the limiter's bound holds whatever the clocks and latencies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipelines.rate_limit import Grant, Quota

# A lease is given back (or dropped) this long before its lifetime ends: a return in flight must arrive while the
# limiter still knows the lease, else its unused tokens are counted as spent.
EXPIRY_MARGIN_S = 0.5
MINUTE_OF_ADVICE_S = 60.0  # Retry-After for a request no bucket can ever admit (it costs more than the burst)


@dataclass(frozen=True, slots=True)
class Decision:
    """One request's verdict, with what the RateLimit-* and Retry-After headers say."""

    allowed: bool
    limit: int  # per minute
    remaining: int  # tokens the key can still spend now, as far as this replica knows
    reset_s: float  # seconds until the key's bucket is full again at the refill rate
    retry_after_s: float  # 0 when allowed; else seconds until a retry can be admitted


def decision(quota: Quota, allowed: bool, remaining: float, retry_after_s: float = 0.0) -> Decision:
    remaining = max(0.0, min(remaining, float(quota.burst)))
    reset_s = (quota.burst - remaining) / quota.rate
    return Decision(allowed, quota.per_minute, math.floor(remaining), reset_s, retry_after_s)


def never(quota: Quota, cost: int) -> Decision:
    """A request costing more than the burst can never be admitted: refused, with a minute's advice."""
    return decision(quota, False, 0.0, max(MINUTE_OF_ADVICE_S, (cost - quota.burst) / quota.rate))


@dataclass(slots=True)
class _Held:
    lease_id: int
    tokens: int
    expires_at: float  # local clock, EXPIRY_MARGIN_S before the limiter's expiry


class LeasedQuota:
    """The leases one replica holds for one (key, measure) and the decisions taken from them.

    `take` answers from the leases when it can; it returns None when it must ask the limiter first (nothing held and
    no refusal to repeat): the caller fetches `need(cost)` tokens, hands the grant to `granted`, and takes again.
    `wants_refill` says when to prefetch the next block in the background, before the held tokens run out.
    """

    def __init__(self, quota: Quota) -> None:
        self.quota = quota
        self._held: list[_Held] = []
        self._free = float(quota.burst)  # the limiter's free tokens at its last answer
        self._refused_until = 0.0  # the limiter said the bucket cannot cover a request before this time
        self._block = 1  # size of the last block granted: refill when half of it is left
        self.replicas = 1  # replicas sharing the key, as the limiter last said
        self.fetching = False  # a fetch for this quota is in flight (set and cleared by the caller)
        self._spent: dict[int, int] = {}  # lease id -> tokens spent since the last report
        self.incarnation: str | None = None  # the limiter's whose leases these are (None: none granted yet)

    @property
    def held(self) -> int:
        return sum(h.tokens for h in self._held)

    def reshape(self, quota: Quota) -> None:
        self.quota = quota

    def take(self, cost: int, now: float) -> Decision | None:
        if cost > self.quota.burst:
            return never(self.quota, cost)
        self._drop_expired(now)
        if self.held >= cost:
            self._spend(cost)
            return decision(self.quota, True, self.held + self._free)
        if now < self._refused_until:
            return decision(self.quota, False, self.held + self._free, self._refused_until - now)
        return None

    def report(self) -> list[tuple[int, int]]:
        """(lease id, tokens) spent since the last report, to send with the next fetch: the limiter refills their
        places only once it knows they are spent."""
        spent, self._spent = list(self._spent.items()), {}
        return spent

    def busy(self, cost: int, now: float) -> Decision:
        """Refused: concurrent requests spent what was fetched for this one; retry after the time `cost` takes to
        refill."""
        return decision(self.quota, False, self.held + self._free, cost / self.quota.rate)

    def slow(self, retry_after_s: float) -> Decision:
        """Refused: the limiter is slow to answer the fetch this request needs (still in flight, not abandoned);
        retry shortly."""
        return decision(self.quota, False, self.held + self._free, retry_after_s)

    def need(self, cost: int) -> int:
        """Tokens to ask for so that a request of `cost` can be decided."""
        return max(1, cost - self.held)

    def granted(self, grant: Grant, sent_at: float, now: float) -> None:
        """Record the limiter's answer to a request sent at `sent_at` (the lease's lifetime counts from then). An answer
        from another incarnation (a restarted limiter) drops the leases and spent counts of the old one: their ids
        would name the new limiter's leases, and the new one does not know them."""
        if grant.incarnation != self.incarnation:
            if self.incarnation is not None:
                self._held.clear()
                self._spent.clear()
            self.incarnation = grant.incarnation
        self._free = float(grant.free)
        self.replicas = grant.replicas
        if grant.tokens > 0:
            self._held.append(_Held(grant.lease_id, grant.tokens, sent_at + grant.ttl_s - EXPIRY_MARGIN_S))
            self._block = grant.tokens
            self._refused_until = 0.0
        else:
            self._refused_until = now + grant.retry_after_s

    def wants_refill(self, now: float) -> bool:
        """Prefetch once half of the last block is spent, unless a fetch is in flight or the limiter said to wait."""
        if self.fetching or now < self._refused_until:
            return False
        self._drop_expired(now)
        return self.held * 2 <= self._block

    def to_return(self, now: float, everything: bool = False) -> list[tuple[int, int]]:
        """Leases close to their expiry (or all of them: the replica is closing), as (lease id, unused tokens),
        removed: give them back to the limiter now."""
        soon = math.inf if everything else now + EXPIRY_MARGIN_S
        leaving = [h for h in self._held if h.expires_at <= soon]
        self._held = [h for h in self._held if h.expires_at > soon]
        for h in leaving:
            self._spent.pop(h.lease_id, None)  # the return settles the lease: what is not returned was spent
        return [(h.lease_id, h.tokens) for h in leaving]

    def idle(self, now: float) -> bool:
        self._drop_expired(now)
        return not self._held and not self.fetching

    def _drop_expired(self, now: float) -> None:
        if any(h.expires_at <= now for h in self._held):
            self._held = [h for h in self._held if h.expires_at > now]

    def _spend(self, cost: int) -> None:
        """Oldest lease first: it expires first."""
        for h in self._held:
            spent = min(cost, h.tokens)
            h.tokens -= spent
            cost -= spent
            self._spent[h.lease_id] = self._spent.get(h.lease_id, 0) + spent
            if cost == 0:
                break
        self._held = [h for h in self._held if h.tokens > 0]


class FallbackBucket:
    """The replica's own token bucket while the limiter cannot be reached: its share (1/replicas) of the key's limit
    and burst. All replicas in fallback together admit at most what the limiter would. It is kept while the limiter
    answers and charged (never below empty) for what the leases admit, so an outage starts from the level the
    replica's recent traffic left, not full each time."""

    def __init__(self, quota: Quota, replicas: int, now: float) -> None:
        self.quota = quota
        self._rate = quota.rate
        self._burst = float(quota.burst)
        self._free = 0.0
        self._at = now
        self.replicas = replicas
        self.share(replicas, now)
        self._free = self._burst

    def share(self, replicas: int, now: float) -> None:
        """The replicas sharing the key changed: this replica's share of the rate and burst follows."""
        self._refill(now)
        self.replicas = replicas
        share = max(1, replicas)
        self._rate = self.quota.rate / share
        self._burst = max(1.0, self.quota.burst / share)
        self._free = min(self._free, self._burst)

    def charge(self, cost: int, now: float) -> None:
        """`cost` admitted from the leases: it empties this bucket too (down to empty, no debt)."""
        self._refill(now)
        self._free = max(0.0, self._free - cost)

    def _refill(self, now: float) -> None:
        self._free = min(self._burst, self._free + self._rate * max(0.0, now - self._at))
        self._at = max(self._at, now)

    def take(self, cost: int, now: float) -> Decision:
        if cost > self.quota.burst:
            return never(self.quota, cost)
        self._refill(now)
        # A batch larger than this replica's share passes on a full share and leaves it in debt (the bound grows by
        # that batch, once per outage), else it could not pass at all while the limiter is away.
        if self._free >= min(cost, self._burst):
            self._free -= cost
            return decision(self.quota, True, self._free)
        return decision(self.quota, False, self._free, (min(cost, self._burst) - self._free) / self._rate)
