"""The cluster-wide rate limit's central state: one token bucket per (key, measure) that leases blocks of tokens to
API replicas, so each replica decides requests locally. Pure: no clock of its own, no I/O, no Ray.

The invariant that makes the bound hold: a bucket's free tokens plus the tokens its live leases hold never exceed its
burst, and only refill (limit/60 per second) adds to that sum. Whatever replicas admit in any 60 s window is
therefore at most burst + limit, i.e. limit x 1.05 with the 5 % burst, however many replicas ask and whatever they
leave unused. A lease that expires counts as spent (the replica may have used it); only a returned lease gives its
unused tokens back. It must never grant a token that would break the invariant.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

# The burst as a share of the per-minute limit: the whole tolerance the issue gives (admitted in any 60 s window
# <= limit x 1.05), spent on letting a client send a small burst at once instead of strictly one per limit/60 s.
BURST_SHARE = 0.05
MINUTE_S = 60.0


class Measure(StrEnum):
    REQUESTS = "requests"  # every request with a key, reads included
    EVENTS = "events"  # events in ingested requests (a 1,000-event batch costs 1,000)


class LimiterUnavailable(Exception):
    """The limiter could not be asked (down, restarting, too slow): the replica decides alone for a while."""


@dataclass(frozen=True, slots=True)
class Quota:
    """A bucket's shape: `per_minute` tokens refilled evenly over 60 s, at most `burst` of them free at once."""

    per_minute: int
    burst: int

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return self.per_minute / MINUTE_S

    @property
    def window_bound(self) -> int:
        """The most any 60 s window can admit: the burst plus a minute of refill."""
        return self.burst + self.per_minute


def request_quota(per_minute: int) -> Quota:
    """Requests: a burst of 5 % of the limit (at least 1), so any 60 s window admits at most limit x 1.05."""
    return Quota(per_minute, max(1, math.floor(per_minute * BURST_SHARE)))


def event_quota(per_minute: int, largest_batch: int) -> Quota:
    """Events: a burst of 5 % of the limit, but never less than the largest batch the API takes, or such a batch could
    never pass. The window bound is then limit + max(5 %, largest batch) events."""
    return Quota(per_minute, max(1, math.floor(per_minute * BURST_SHARE), largest_batch))


@dataclass(frozen=True, slots=True)
class Grant:
    """The limiter's answer to one replica: `tokens` to spend within `ttl_s` (0 when the bucket cannot cover `need`:
    then ask again after `retry_after_s`), the bucket's free tokens after the grant, how many replicas share it, and
    the ledger's incarnation (lease ids restart at 1 with a restarted limiter: an id means something only with it)."""

    lease_id: int
    tokens: int
    ttl_s: float
    free: int
    retry_after_s: float
    replicas: int
    incarnation: str = ""  # the ledger's: lease ids of another one (before a limiter restart) mean nothing here


@dataclass(slots=True)
class _Lease:
    replica: str
    tokens: int
    expires_at: float


@dataclass(slots=True)
class _Bucket:
    quota: Quota
    free: float
    updated_at: float
    held: int = 0  # tokens in live leases
    leases: dict[int, _Lease] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)  # replica -> when it last asked

    def refill(self, now: float) -> None:
        if now > self.updated_at:
            room = max(0.0, self.quota.burst - self.held - self.free)
            self.free += min(room, self.quota.rate * (now - self.updated_at))
            self.updated_at = now

    def advance(self, now: float) -> None:
        """Refill up to each lease expiry in turn, spend the expired lease, then refill to `now`: room the expiry frees
        must not count from before it happened."""
        expired = sorted(
            (lease.expires_at, lease_id) for lease_id, lease in self.leases.items() if lease.expires_at <= now
        )
        for expires_at, lease_id in expired:
            self.refill(expires_at)
            self.held -= self.leases.pop(lease_id).tokens
        self.refill(now)

    def spend(self, spent: Iterable[tuple[int, int]]) -> None:
        """Tokens spent from live leases (after `advance`: the room they free counts from now, not from before)."""
        for lease_id, tokens in spent:
            lease = self.leases.get(lease_id)
            if lease is None:  # expired or returned: already out of `held`
                continue
            used = max(0, min(tokens, lease.tokens))
            lease.tokens -= used
            self.held -= used
            if lease.tokens == 0:
                del self.leases[lease_id]

    def reshape(self, quota: Quota) -> None:
        """A changed per-key limit: the invariant must hold under the new burst at once."""
        self.quota = quota
        self.free = min(self.free, max(0.0, quota.burst - self.held))


class Ledger:
    """Every bucket of the cluster, keyed by (key id, measure). Time is passed in (monotonic seconds)."""

    def __init__(self, lease_ttl_s: float, incarnation: str | None = None) -> None:
        self._ttl_s = lease_ttl_s
        self._buckets: dict[tuple[str, Measure], _Bucket] = {}
        self._next_lease = 1
        self.incarnation = incarnation or uuid.uuid4().hex[:12]

    def _ours(self, incarnation: str | None) -> bool:
        """Whether lease ids sent with `incarnation` are this ledger's (None: the caller knows no other ledger)."""
        return incarnation is None or incarnation == self.incarnation

    def acquire(
        self,
        key: str,
        measure: Measure,
        quota: Quota,
        replica: str,
        need: int,
        now: float,
        spent: Iterable[tuple[int, int]] = (),
        incarnation: str | None = None,
        debt: int = 0,
    ) -> Grant:
        """Lease at least `need` tokens to `replica`, up to its share of the burst among the replicas asking.

        `spent` reports (lease id, tokens) the replica spent since its last report: they leave the leases, which makes
        room for refill. Until reported, a leased token counts as unspent (refill cannot fill its place). Ids of
        another `incarnation` (leases of the limiter before a restart) are ignored. `debt` is what the replica admitted
        alone while the limiter was unreachable: taken from the free tokens (which may go below 0, to be refilled)."""
        bucket = self._bucket(key, measure, quota, now)
        if self._ours(incarnation):
            bucket.spend(spent)
        if debt > 0:
            bucket.free -= debt
        bucket.seen[replica] = now
        replicas = self._active(bucket, now)
        # Half a share of the burst per block: a replica that asks first leaves room for one that has not asked yet,
        # and prefetching at half a block means a replica rarely holds more than a share.
        block = max(need, math.ceil(quota.burst / (2 * replicas)))
        if bucket.free < need:
            wait = (need - bucket.free) / quota.rate
            return Grant(0, 0, self._ttl_s, math.floor(bucket.free), wait, replicas, self.incarnation)
        tokens = min(block, math.floor(bucket.free))
        lease_id = self._next_lease
        self._next_lease += 1
        bucket.free -= tokens
        bucket.held += tokens
        bucket.leases[lease_id] = _Lease(replica, tokens, now + self._ttl_s)
        return Grant(lease_id, tokens, self._ttl_s, math.floor(bucket.free), 0.0, replicas, self.incarnation)

    def release(
        self, key: str, measure: Measure, lease_id: int, unused: int, now: float, incarnation: str | None = None
    ) -> None:
        """A replica gives back a lease it no longer uses; its `unused` tokens are free again. An unknown or expired
        lease, or one of another incarnation, is ignored (expired tokens were counted as spent)."""
        bucket = self._buckets.get((key, measure))
        if bucket is None or not self._ours(incarnation):
            return
        bucket.advance(now)
        lease = bucket.leases.pop(lease_id, None)
        if lease is None:
            return
        bucket.held -= lease.tokens
        bucket.free += max(0, min(unused, lease.tokens))

    def sweep(self, now: float) -> int:
        """Forget buckets that are full and lease nothing: recreated full, they behave the same. Returns how many."""
        idle = []
        for bucket_key, bucket in self._buckets.items():
            bucket.advance(now)
            if not bucket.leases and bucket.free >= bucket.quota.burst:
                idle.append(bucket_key)
        for bucket_key in idle:
            del self._buckets[bucket_key]
        return len(idle)

    def sharing(self, key: str, measure: Measure, now: float) -> int:
        """How many replicas asked for this bucket within two lease lifetimes (0: none, or no such bucket)."""
        bucket = self._buckets.get((key, measure))
        if bucket is None:
            return 0
        self._active(bucket, now)  # forgets the replicas that stopped asking
        return len(bucket.seen)

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, key: str, measure: Measure, quota: Quota, now: float) -> _Bucket:
        bucket = self._buckets.get((key, measure))
        if bucket is None:
            bucket = self._buckets[(key, measure)] = _Bucket(quota, float(quota.burst), now)
            return bucket
        bucket.advance(now)
        if bucket.quota != quota:
            bucket.reshape(quota)
        return bucket

    def _active(self, bucket: _Bucket, now: float) -> int:
        """Replicas that asked within two lease lifetimes: the ones the burst is shared among."""
        horizon = now - 2 * self._ttl_s
        for replica in [r for r, at in bucket.seen.items() if at < horizon]:
            del bucket.seen[replica]
        return max(1, len(bucket.seen))
