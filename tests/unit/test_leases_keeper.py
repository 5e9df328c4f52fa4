"""Specification of LeaseKeeper: when a leader stands by, holds the lease, or must stop claiming.

Runs against an in-memory lease table with the semantics of cluster/adapters/leases.py (free, expired or ours:
take it; another holder bumps the epoch), on a manual clock; the real table is covered by
tests/integration/test_leader_lease.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from actors.lease_keeper import LeaseKeeper, Role
from cluster.adapters.leases import LeaderLease, LeaseInfo, leader_lease_name

TTL = 6.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Row:
    holder: str
    epoch: int
    expires_at: float


class MemoryLeases:
    """The lease table, judged by one clock (as PostgreSQL's clock_timestamp() is for every cluster)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.rows: dict[str, Row] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("PostgreSQL is unreachable")

    def acquire(self, name: str, holder: str, ttl_s: float) -> LeaderLease | None:
        self._check()
        row = self.rows.get(name)
        if row is None:
            self.rows[name] = Row(holder, 1, self.clock() + ttl_s)
            return LeaderLease(name, holder, 1, ttl_s)
        if row.holder != holder and row.expires_at > self.clock():
            return None
        row.epoch += row.holder != holder
        row.holder, row.expires_at = holder, self.clock() + ttl_s
        return LeaderLease(name, holder, row.epoch, ttl_s)

    def renew(self, lease: LeaderLease) -> LeaderLease | None:
        self._check()
        row = self.rows.get(lease.name)
        if row is None or (row.holder, row.epoch) != (lease.holder, lease.epoch):
            return None
        row.expires_at = self.clock() + lease.ttl_s
        return lease

    def release(self, lease: LeaderLease) -> bool:
        self._check()
        row = self.rows.get(lease.name)
        if row is None or (row.holder, row.epoch) != (lease.holder, lease.epoch) or row.expires_at <= self.clock():
            return False
        row.expires_at = self.clock()
        return True

    def current(self, name: str) -> LeaseInfo | None:
        self._check()
        row = self.rows.get(name)
        return LeaseInfo(name, row.holder, row.epoch, row.expires_at - self.clock()) if row else None


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def table(clock: Clock) -> MemoryLeases:
    return MemoryLeases(clock)


def keeper(table: MemoryLeases, clock: Clock, holder: str, changes: list[Role] | None = None) -> LeaseKeeper:
    return LeaseKeeper(
        table, "leader", holder, TTL, clock=clock, on_change=changes.append if changes is not None else None
    )


def test_a_free_lease_is_acquired_and_renewed_every_third_of_its_ttl(table: MemoryLeases, clock: Clock) -> None:
    changes: list[Role] = []
    a = keeper(table, clock, "cluster-a", changes)
    assert a.held() is None and a.role is Role.STANDBY

    assert a.tick() == pytest.approx(TTL / 3)
    held = a.held()
    assert held is not None and held[0].epoch == 1 and held[1] == 1
    assert a.role is Role.ACTIVE and changes == [Role.ACTIVE]

    for _ in range(5):  # renewing keeps it well past one TTL
        clock.advance(TTL / 3)
        a.tick()
    assert a.held() is not None and table.rows["leader"].expires_at == clock.now + TTL
    assert a.status().term == 1


def test_a_second_cluster_stands_by_while_the_lease_is_held_and_takes_it_after_expiry_with_a_new_epoch(
    table: MemoryLeases, clock: Clock
) -> None:
    a, b = keeper(table, clock, "cluster-a"), keeper(table, clock, "cluster-b")
    a.tick()
    clock.advance(1.0)

    wait = b.tick()
    assert b.held() is None and b.role is Role.STANDBY and b.status().held_by == "cluster-a"
    assert wait <= TTL / 3  # it looks again soon

    clock.advance(TTL)  # a stopped renewing (hung, or its cluster died)
    b.tick()
    held = b.held()
    assert held is not None and held[0].epoch == 2 and b.status().held_by is None


def test_a_leader_that_cannot_reach_postgresql_keeps_its_role_until_the_ttl_then_claims_nothing(
    table: MemoryLeases, clock: Clock
) -> None:
    a = keeper(table, clock, "cluster-a")
    a.tick()
    table.down = True
    clock.advance(TTL / 3)
    a.tick()
    assert a.role is Role.ACTIVE and a.held() is not None  # still inside the TTL
    assert "unreachable" in (a.status().last_error or "")

    clock.advance(TTL)
    assert a.held() is None  # the local clock alone stops claims, before any tick
    a.tick()
    assert a.role is Role.UNCONFIRMED

    table.down = False  # back, and nobody took the lease meanwhile: same term, owners untouched
    a.tick()
    held = a.held()
    assert held is not None and held[1] == 1 and a.role is Role.ACTIVE and a.status().last_error is None


def test_a_leader_whose_lease_was_taken_during_an_outage_stands_by_and_later_starts_a_new_term(
    table: MemoryLeases, clock: Clock
) -> None:
    changes: list[Role] = []
    a, b = keeper(table, clock, "cluster-a", changes), keeper(table, clock, "cluster-b")
    a.tick()
    clock.advance(TTL + 1)  # a was paused (SIGSTOP, GC, partition) past its TTL
    b.tick()
    assert b.held() is not None

    assert a.tick() == 0.0  # renewal refused: look at once who holds it now
    assert a.role is Role.STANDBY and a.held() is None and changes == [Role.ACTIVE, Role.STANDBY]
    a.tick()
    assert a.status().held_by == "cluster-b"

    b.close()  # b hands over: the lease expires at once
    a.tick()
    held = a.held()
    assert held is not None and held[1] == 2 and held[0].epoch == 3


def test_a_restarted_leader_of_the_same_cluster_gets_its_lease_back_at_once_with_the_same_epoch(
    table: MemoryLeases, clock: Clock
) -> None:
    first = keeper(table, clock, "cluster-a")
    first.tick()
    clock.advance(1.0)  # the actor died; Ray starts a new instance long before the TTL ends
    second = keeper(table, clock, "cluster-a")
    second.tick()
    held = second.held()
    assert held is not None and held[0].epoch == 1 and held[1] == 1


def test_a_claim_refused_by_the_database_stops_claims_until_a_renewal_confirms_the_lease(
    table: MemoryLeases, clock: Clock
) -> None:
    a = keeper(table, clock, "cluster-a")
    a.tick()
    a.recheck("the 'leader' lease expired 0.1s ago")
    assert a.held() is None and a.role is Role.UNCONFIRMED
    a.tick()  # the row is still ours: confirmed, same term
    held = a.held()
    assert held is not None and held[1] == 1


def test_closing_releases_the_lease_so_another_cluster_takes_over_without_waiting(
    table: MemoryLeases, clock: Clock
) -> None:
    a, b = keeper(table, clock, "cluster-a"), keeper(table, clock, "cluster-b")
    a.tick()
    a.close()
    assert a.held() is None and a.role is Role.STANDBY
    a.tick()
    assert a.held() is None  # a closed keeper never acquires again
    b.tick()
    assert b.held() is not None


def test_pipelines_with_different_topic_prefixes_have_different_leader_leases() -> None:
    assert leader_lease_name("events") == "leader"
    assert leader_lease_name("tenant-b") == "leader:tenant-b"
