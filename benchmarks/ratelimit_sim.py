"""A virtual-clock model of the cluster-wide rate limit: one Ledger (the limiter actor) and N replicas' LeasedQuota,
driven the way serve_app/rate_limits.py drives them (decide locally, fetch when nothing is held, prefetch at half a
block, give back leases before they expire), with a fixed round-trip latency. Used by the unit tests and the
benchmark; no Ray, no sleeping.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from pipelines.rate_lease import Decision, LeasedQuota
from pipelines.rate_limit import Grant, Ledger, Measure, Quota

KEY = "key-1"


@dataclass
class SimReplica:
    name: str
    quota: LeasedQuota
    alive: bool = True
    pending: list[tuple[float, float, Grant]] = field(default_factory=list)  # (arrives at, sent at, grant)


class Sim:
    def __init__(self, quota: Quota, replicas: int, ttl_s: float = 5.0, rtt_s: float = 0.002) -> None:
        self.quota = quota
        self.ttl_s = ttl_s
        self.rtt_s = rtt_s
        self.ledger = Ledger(ttl_s)
        self.replicas = [SimReplica(f"r{i}", LeasedQuota(quota)) for i in range(replicas)]
        self.admitted: list[float] = []
        self.refused: list[tuple[float, Decision]] = []
        self.fetches = 0

    def restart_limiter(self) -> None:
        """The limiter actor restarted: it knows nothing of the leases replicas still hold."""
        self.ledger = Ledger(self.ttl_s)

    def request(self, index: int, now: float, cost: int = 1) -> Decision:
        replica = self.replicas[index]
        self._tick(replica, now)
        result = replica.quota.take(cost, now)
        if result is None and replica.pending:  # a prefetch is in flight: wait for it rather than ask twice
            now = max(now, replica.pending[0][0])
            self._tick(replica, now)
            result = replica.quota.take(cost, now)
        if result is None:  # nothing held: the one synchronous round trip
            grant = self._acquire(replica, replica.quota.need(cost), now)
            replica.quota.granted(grant, now, now + self.rtt_s)
            result = replica.quota.take(cost, now + self.rtt_s)
            if result is None:
                raise RuntimeError("a granted or refused fetch must let the request be decided")
            now += self.rtt_s
        if result.allowed:
            self.admitted.extend([now] * cost)
        else:
            self.refused.append((now, result))
        if replica.quota.wants_refill(now):  # background prefetch: its answer arrives one round trip later
            replica.quota.fetching = True
            replica.pending.append((now + self.rtt_s, now, self._acquire(replica, 1, now + self.rtt_s / 2)))
        return result

    def tick_all(self, now: float) -> None:
        for replica in self.replicas:
            self._tick(replica, now)

    def _tick(self, replica: SimReplica, now: float) -> None:
        if not replica.alive:
            return
        for arrives, sent, grant in [p for p in replica.pending if p[0] <= now]:
            replica.pending.remove((arrives, sent, grant))
            replica.quota.granted(grant, sent, arrives)
            replica.quota.fetching = False
        for lease_id, unused in replica.quota.to_return(now):
            self.ledger.release(KEY, Measure.REQUESTS, lease_id, unused, now + self.rtt_s / 2)

    def _acquire(self, replica: SimReplica, need: int, now: float) -> Grant:
        self.fetches += 1
        spent = replica.quota.report()
        return self.ledger.acquire(KEY, Measure.REQUESTS, self.quota, replica.name, need, now, spent)


def max_in_window(times: list[float], window_s: float = 60.0) -> int:
    """The most admissions any window [t, t + window_s) holds (it suffices to start windows at admissions)."""
    ordered = sorted(times)
    return max((bisect.bisect_left(ordered, t + window_s) - i for i, t in enumerate(ordered)), default=0)
