"""The cluster-wide rate limit on a virtual clock: the limiter's ledger and the replicas' leased quotas together keep
every 60 s window within limit x 1.05 (burst + limit) for steady, bursty and uneven clients over many replicas, through
lease expiry, a replica dying with a lease, a limiter restart and a fallback to local buckets."""

from __future__ import annotations

import math
import random

import pytest

from benchmarks.ratelimit_sim import KEY, Sim, max_in_window
from cluster.observability.labels import OTHER, BoundedLabels
from pipelines.rate_lease import EXPIRY_MARGIN_S, FallbackBucket, LeasedQuota
from pipelines.rate_limit import BURST_SHARE, Ledger, Measure, Quota, event_quota, request_quota


def test_the_burst_is_five_percent_of_the_limit_so_a_window_admits_at_most_limit_times_1_05() -> None:
    for per_minute in (120, 1000, 60_000):
        quota = request_quota(per_minute)
        assert quota.window_bound <= per_minute * (1 + BURST_SHARE)
        assert quota.burst >= 1


def test_an_events_burst_takes_the_largest_batch() -> None:
    assert event_quota(100_000, 1000).burst == 100_000 * BURST_SHARE
    assert event_quota(6000, 1000).burst == 1000


@pytest.mark.parametrize("replicas", [1, 2, 4, 8])
def test_steady_client_at_twice_the_limit_gets_the_limit_and_never_more(replicas: int) -> None:
    quota = request_quota(1000)
    sim = Sim(quota, replicas)
    step = 60.0 / (2 * quota.per_minute)  # twice the allowed rate, round robin over the replicas (as Serve does)
    for i in range(int(300 / step)):
        sim.request(i % replicas, i * step)

    assert max_in_window(sim.admitted) <= quota.window_bound
    # not starved either: a minute in the steady state admits at least 95 % of the limit
    late = [t for t in sim.admitted if 120 <= t < 180]
    assert len(late) >= 0.95 * quota.per_minute


@pytest.mark.parametrize("seed", range(5))
def test_bursty_clients_on_random_replicas_stay_within_the_bound(seed: int) -> None:
    rng = random.Random(seed)
    quota = request_quota(120)
    replicas = rng.randint(2, 6)
    sim = Sim(quota, replicas, rtt_s=rng.uniform(0.0005, 0.05))
    now = 0.0
    while now < 400:
        burst = rng.randint(1, 3 * quota.per_minute)  # up to three minutes' worth at once
        for _ in range(burst):
            sim.request(rng.randrange(replicas), now)
            now += rng.uniform(0, 0.01)
        now += rng.expovariate(1 / 20)

    assert max_in_window(sim.admitted) <= quota.window_bound
    assert sim.refused, "the bursts exceed the limit: some requests must be refused"


def test_a_request_is_decided_locally_after_the_first_fetch() -> None:
    quota = request_quota(1000)
    sim = Sim(quota, 2)
    step = 60.0 / quota.per_minute  # exactly the limit
    for i in range(int(120 / step)):
        sim.request(i % 2, i * step)

    assert not sim.refused
    # a round trip per half block (a block is half of a replica's share of the burst), not per request
    block = math.ceil(quota.burst / (2 * 2))
    assert sim.fetches <= len(sim.admitted) / math.floor(block / 2)


def test_a_refusal_says_when_to_retry_and_a_retry_then_is_admitted() -> None:
    quota = request_quota(120)
    sim = Sim(quota, 2)
    now = 0.0
    while True:
        decision = sim.request(0, now)
        if not decision.allowed:
            break
        now += 0.001

    assert decision.retry_after_s > 0
    assert decision.remaining == 0
    assert decision.limit == quota.per_minute
    assert 0 < decision.reset_s <= quota.burst / quota.rate
    assert sim.request(0, now + decision.retry_after_s + sim.rtt_s).allowed


def test_a_replica_that_dies_holding_a_lease_costs_its_tokens_until_the_lease_expires() -> None:
    # given one replica holding a lease when it dies
    quota = request_quota(1000)
    sim = Sim(quota, 2, ttl_s=5.0)
    sim.request(0, 0.0)
    held = sim.replicas[0].quota.held
    assert held > 0
    sim.replicas[0].alive = False
    # when the other replica drains the bucket right away
    now, admitted = 0.001, 0
    while sim.request(1, now).allowed:
        admitted += 1
        now += 0.0001
    # then the dead replica's unspent tokens were not available to it
    assert admitted <= quota.burst - held
    # and once the lease expired, the survivor's full share comes back: the ledger counts it spent, not leaked
    later = 5.0 + 60.0 * quota.burst / quota.per_minute + 1
    sim.tick_all(later)
    got = 0
    while sim.request(1, later).allowed:
        got += 1
        later += 0.00001
    assert got >= quota.burst - 2
    # and the bound held over the whole run
    assert max_in_window(sim.admitted) <= quota.window_bound


def test_an_expired_lease_counts_as_spent_and_a_returned_one_gives_its_tokens_back() -> None:
    quota = Quota(per_minute=60, burst=10)  # one token a second
    ledger = Ledger(lease_ttl_s=5.0)
    first = ledger.acquire(KEY, Measure.REQUESTS, quota, "a", quota.burst, now=0.0)
    assert first.tokens == quota.burst and first.free == 0
    # expired at 5 s: nothing comes back, only refill (one a second since then, while there is room)
    after_expiry = ledger.acquire(KEY, Measure.REQUESTS, quota, "a", 1, now=7.0)
    assert after_expiry.tokens == 2
    # returned: the unused tokens are free again at once
    ledger.release(KEY, Measure.REQUESTS, after_expiry.lease_id, unused=2, now=7.0)
    assert ledger.acquire(KEY, Measure.REQUESTS, quota, "a", 1, now=7.0).tokens == 2


def test_leased_tokens_are_never_spent_after_their_local_expiry() -> None:
    quota = Quota(per_minute=600, burst=30)
    ledger = Ledger(lease_ttl_s=5.0)
    local = LeasedQuota(quota)
    local.granted(ledger.acquire(KEY, Measure.REQUESTS, quota, "a", 1, now=0.0), sent_at=0.0, now=0.01)
    assert local.take(1, now=1.0) is not None
    assert local.take(1, now=5.0 - EXPIRY_MARGIN_S) is None  # expired locally before the limiter's 5 s: ask again


def test_the_burst_is_shared_among_the_replicas_asking() -> None:
    quota = request_quota(1000)
    ledger = Ledger(lease_ttl_s=5.0)
    grants = [ledger.acquire(KEY, Measure.REQUESTS, quota, f"r{i}", 1, now=0.0) for i in range(4)]
    assert sum(g.tokens for g in grants) <= quota.burst
    assert grants[-1].replicas == 4
    assert all(g.tokens > 0 for g in grants)


def test_a_limiter_restart_can_add_at_most_one_burst_to_a_window() -> None:
    quota = request_quota(1000)
    sim = Sim(quota, 3)
    step = 60.0 / (3 * quota.per_minute)
    for i in range(int(200 / step)):
        if i == int(90 / step):
            sim.restart_limiter()
        sim.request(i % 3, i * step)

    assert max_in_window(sim.admitted) <= quota.window_bound + quota.burst


def test_every_replica_in_fallback_together_admits_no_more_than_the_limiter_would() -> None:
    quota = request_quota(1000)
    replicas = 4
    buckets = [FallbackBucket(quota, replicas, now=0.0) for _ in range(replicas)]
    admitted: list[float] = []
    step = 60.0 / (3 * quota.per_minute)
    for i in range(int(180 / step)):
        now = i * step
        if buckets[i % replicas].take(1, now).allowed:
            admitted.append(now)

    assert max_in_window(admitted) <= quota.window_bound
    assert len([t for t in admitted if 60 <= t < 120]) >= 0.95 * quota.per_minute


def test_a_request_costing_more_than_the_burst_is_never_admitted() -> None:
    quota = Quota(per_minute=100, burst=5)
    local = LeasedQuota(quota)
    decision = local.take(6, now=0.0)
    assert decision is not None and not decision.allowed and decision.retry_after_s >= 60
    assert not FallbackBucket(quota, 1, now=0.0).take(6, now=100.0).allowed


def test_a_batch_takes_its_events_at_once_or_not_at_all() -> None:
    quota = event_quota(6000, largest_batch=1000)
    ledger = Ledger(lease_ttl_s=5.0)
    local = LeasedQuota(quota)
    assert local.take(1000, now=0.0) is None
    local.granted(ledger.acquire(KEY, Measure.EVENTS, quota, "a", local.need(1000), now=0.0), 0.0, 0.001)
    admitted = local.take(1000, now=0.001)
    assert admitted is not None and admitted.allowed
    assert local.take(1000, now=0.002) is None
    local.granted(ledger.acquire(KEY, Measure.EVENTS, quota, "a", local.need(1000), now=0.002), 0.002, 0.003)
    refused = local.take(1000, now=0.003)
    assert refused is not None and not refused.allowed
    assert refused.retry_after_s == pytest.approx(1000 / quota.rate, rel=0.01)


def test_a_lowered_limit_applies_at_once() -> None:
    ledger = Ledger(lease_ttl_s=5.0)
    ledger.acquire(KEY, Measure.REQUESTS, request_quota(1000), "a", 1, now=0.0)
    lowered = request_quota(100)
    total = 0
    for _ in range(10):
        grant = ledger.acquire(KEY, Measure.REQUESTS, lowered, "b", 1, now=0.01)
        total += grant.tokens
    assert total <= lowered.burst


def test_idle_full_buckets_are_forgotten() -> None:
    ledger = Ledger(lease_ttl_s=5.0)
    quota = request_quota(1000)
    grant = ledger.acquire(KEY, Measure.REQUESTS, quota, "a", 1, now=0.0)
    assert ledger.sweep(now=1.0) == 0
    ledger.release(KEY, Measure.REQUESTS, grant.lease_id, grant.tokens - 1, now=1.0)
    assert ledger.sweep(now=1.0 + 60 / quota.per_minute) == 1
    assert len(ledger) == 0


def test_key_labels_are_bounded_to_the_first_names_then_other() -> None:
    labels = BoundedLabels(max_values=3)
    names = [f"key-{i}" for i in range(5)]
    assert [labels(n) for n in names] == [*names[:3], OTHER, OTHER]
    assert labels(names[0]) == names[0]  # a known name keeps its series


def test_the_ledger_knows_how_many_replicas_share_a_key() -> None:
    ledger = Ledger(lease_ttl_s=5.0)
    quota = request_quota(1000)
    for replica in ("a", "b"):
        ledger.acquire(KEY, Measure.REQUESTS, quota, replica, 1, now=0.0)
    assert ledger.sharing(KEY, Measure.REQUESTS, now=1.0) == 2
    assert ledger.sharing(KEY, Measure.REQUESTS, now=11.0) == 0  # neither asked within two lease lifetimes
    assert ledger.sharing("unknown", Measure.REQUESTS, now=1.0) == 0


def test_lease_ids_of_a_limiter_before_its_restart_are_ignored_by_the_new_one() -> None:
    quota = request_quota(1000)  # burst 50
    before = Ledger(5.0, incarnation="old")
    old = before.acquire("k", Measure.REQUESTS, quota, "r1", 1, 0.0)
    after = Ledger(5.0, incarnation="new")  # restarted: numbers its leases from 1 again
    theirs = after.acquire("k", Measure.REQUESTS, quota, "r2", 1, 0.0)
    assert old.lease_id == theirs.lease_id == 1 and theirs.tokens == 25
    # r1's spent report and return of its old lease 1 must not land on r2's lease 1
    after.acquire("k", Measure.REQUESTS, quota, "r1", 1, 0.0, spent=[(1, 20)], incarnation=old.incarnation)
    after.release("k", Measure.REQUESTS, 1, old.tokens, 0.0, incarnation=old.incarnation)
    # r2's lease is whole: giving it back frees all 25 tokens (r1's new block of 13 still held)
    after.release("k", Measure.REQUESTS, theirs.lease_id, theirs.tokens, 0.0, incarnation=theirs.incarnation)
    assert after.acquire("k", Measure.REQUESTS, quota, "r3", 37, 0.0).tokens >= 37


def test_a_replica_drops_the_leases_of_a_limiter_that_restarted() -> None:
    quota = request_quota(1000)
    local = LeasedQuota(quota)
    before, after = Ledger(5.0, incarnation="old"), Ledger(5.0, incarnation="new")
    local.granted(before.acquire("k", Measure.REQUESTS, quota, "r1", 1, 0.0), 0.0, 0.0)
    assert local.take(1, 0.1) is not None and local.incarnation == "old"
    local.granted(after.acquire("k", Measure.REQUESTS, quota, "r1", 1, 0.2), 0.2, 0.2)
    assert local.incarnation == "new"
    assert local.held == 25  # the new lease only: the old one's tokens are not spent any more
    assert local.report() == []  # nor its spent count reported (its id names another lease there)


def test_tokens_admitted_alone_are_debt_the_ledger_refills_before_granting_again() -> None:
    quota = request_quota(1000)  # burst 50, 1000/60 tokens a second
    ledger = Ledger(5.0)
    refused = ledger.acquire("k", Measure.REQUESTS, quota, "r1", 1, 0.0, debt=60)
    assert refused.tokens == 0 and refused.free == -10
    assert refused.retry_after_s == pytest.approx(11 / quota.rate)
    assert ledger.acquire("k", Measure.REQUESTS, quota, "r1", 1, refused.retry_after_s + 0.01).tokens >= 1


def test_a_fallback_bucket_keeps_the_level_the_leases_left() -> None:
    quota = request_quota(1200)  # burst 60, 20 tokens a second
    bucket = FallbackBucket(quota, 2, 0.0)  # share: 30, 10 a second
    bucket.charge(30, 0.0)  # the leases admitted 30 just before the outage
    assert not bucket.take(1, 0.0).allowed
    assert bucket.take(1, 0.1).allowed  # one token refilled
