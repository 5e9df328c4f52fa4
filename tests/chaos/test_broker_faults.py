"""Broker faults under load, injected by the proxy every Kafka client goes through (API producer, owners, DLQ).

The broker unreachable (blackhole) and a slow link (500 ms each way). Nothing acknowledged may be lost or doubled.
The blackhole outlasts the API's producer timeout, so the degraded mode must engage: the kafka breaker opens and
events are acknowledged from the spool; once it heals, the API must leave spool mode within seconds under the same
load (a spool that stays non-empty at every look must not keep it there for ever). Plus the producer-level failure
the 30 s blackhole found: an idempotent producer fenced by its own newer epoch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from cluster.adapters.kafka_config import producer_config
from cluster.adapters.kafka_producer import Delivered, KafkaPublisher
from cluster.local import EmbeddedBroker, free_port
from tests.chaos.degradation import DegradationWatch, spooled_share
from tests.chaos.faultproxy import FaultProxy, ProxyStats
from tests.chaos.harness import FAULT_S, Expect, Scenario, steady
from tests.pipeline import wait_until

SLOW_LINK_MS = 500
RATE = 200.0  # events/s of the workloads
TAIL_S = 3.0  # after the API should have left spool mode: how long the load goes on to show it did
MAX_SPOOLED_SHARE_AFTER = 0.02  # of the events acknowledged in that tail (one failed publish may spool a few)
# The spool acknowledges what the broker cannot take, and clients retry a 503: (almost) every event gets in.
EXPECT = Expect(min_acked=0.95)


def blackhole_s(scenario: Scenario) -> float:
    """How long the broker stays unreachable: FAULT_S, and at least twice the API's producer timeout. A publish sent
    as the fault begins fails only after that timeout (3 s in tests/pipeline.py, as long as CI's FAULT_S): the
    breaker opens then, and the spool must take events for a while longer, half-open probes failing included."""
    return max(FAULT_S, 2 * scenario.pipeline.settings.producer_message_timeout_ms / 1000)


@pytest.fixture(autouse=True)
def healed_broker(broker_proxy: FaultProxy) -> Iterator[FaultProxy]:
    """Whatever a scenario did, the next test starts with a healthy link."""
    broker_proxy.heal()
    yield broker_proxy
    broker_proxy.heal()


def under_link_fault(
    scenario: Scenario, proxy: FaultProxy, label: str, inject: Callable[[], None], fault_s: float = FAULT_S
) -> tuple[ProxyStats, ProxyStats]:
    """Load, then `inject` a fault on the broker link for `fault_s`, heal, verify; the proxy's byte counts as the
    fault began and as it ended."""
    with scenario.workload(rate=RATE):
        steady(1.0)
        with scenario.fault(label):
            inject()
            try:
                began = proxy.stats()
                steady(fault_s)
                ended = proxy.stats()
            finally:
                proxy.heal()
        steady(1.0)
    scenario.verify(expect=EXPECT)
    return began, ended


def leave_spool_mode_within_s(scenario: Scenario) -> float:
    """How soon after the heal the API must be out of spool mode under load: the breakers' cool-down (the API's and
    the drainer's may each wait one out), one publish that times out at the heal, and a few seconds to drain."""
    settings = scenario.pipeline.settings
    return 2 * settings.breaker_reset_timeout_s + settings.producer_message_timeout_ms / 1000 + 2.0


def test_broker_unreachable_then_healed_and_the_api_leaves_spool_mode_under_load(
    scenario: Scenario, broker_proxy: FaultProxy
) -> None:
    fault_s = blackhole_s(scenario)
    leave_within_s = leave_spool_mode_within_s(scenario)
    label = f"broker blackholed for {fault_s:g}s (every Kafka client)"
    watch = DegradationWatch(scenario.pipeline.base_url, scenario.pipeline.metrics_url)
    # given steady load, when the broker is blackholed long enough for the spool to take over, then healed
    with watch, scenario.workload(rate=RATE) as load:
        steady(1.0)
        with scenario.fault(label):
            broker_proxy.blackhole()
            try:
                fault_from, held = load.sent, broker_proxy.stats()
                steady(fault_s)
                healed_from, during = load.sent, broker_proxy.stats()
            finally:
                broker_proxy.heal()
        healed_at = time.monotonic()
        steady(leave_within_s)
        tail_from = load.sent
        steady(TAIL_S)
        tail_end = load.sent
    seen, acked, prefix, first = watch.seen, scenario.checker.acknowledged(), scenario.prefix, load.first_n
    in_fault = spooled_share(acked, prefix, first + fault_from, first + healed_from)
    after_heal = spooled_share(acked, prefix, first + healed_from, first + tail_from)
    tail = spooled_share(acked, prefix, first + tail_from, first + tail_end)
    since = seen.healthy_since(healed_at)
    # when the last event spooled after the heal was sent, interpolated from the event counts at the heal and later
    last = after_heal.last
    last_s = None if last is None else leave_within_s * (last - first - healed_from) / (tail_from - healed_from)
    figures = (
        f"spooled: during the fault {in_fault}, first {leave_within_s:g}s after the heal {after_heal},"
        f" last {TAIL_S:g}s {tail}; last spooled event sent {'-' if last_s is None else f'{last_s:.1f}s'} after"
        f" the heal; /readyz not degraded from {'never' if since is None else f'{since - healed_at:.1f}s'} after it"
    )
    scenario.note(figures)
    scenario.note(f"degraded mode seen: {watch.seen}")
    scenario.verify(expect=EXPECT)
    # the fault was real: not one byte crossed while it lasted
    assert (during.bytes_up, during.bytes_down) == (held.bytes_up, held.bytes_down)
    assert broker_proxy.stats().bytes_up > during.bytes_up  # and traffic flowed again after the heal
    # and the degraded mode engaged: the kafka breaker opened, events were acknowledged from the spool
    assert "open" in seen.breaker_states | seen.gauge_states, seen
    assert in_fault.spooled >= 10, f"only {in_fault} during the fault; {seen}"
    assert seen.max_spool_depth > 0, seen  # spool rows appeared (and were drained: verify found every event)
    # then the API leaves spool mode under the same load: events go to the broker directly again
    assert tail.acknowledged >= 0.9 * (tail_end - tail_from), figures
    assert tail.share is not None and tail.share <= MAX_SPOOLED_SHARE_AFTER, figures
    assert since is not None and since - healed_at <= leave_within_s + 1.0, figures  # /readyz caches for 1 s


def test_broker_link_slow(scenario: Scenario, broker_proxy: FaultProxy) -> None:
    label = f"broker link delayed {SLOW_LINK_MS} ms each way for {FAULT_S:g}s"
    before, during = under_link_fault(scenario, broker_proxy, label, lambda: broker_proxy.delay(SLOW_LINK_MS))
    # a slow link is degraded, not down: records kept crossing it
    assert during.bytes_up > before.bytes_up and during.bytes_down > before.bytes_down


def test_api_publisher_replaces_a_producer_fenced_after_a_partition(tmp_path: Path) -> None:
    # given a broker of its own behind its own proxy, and the API's publisher with a 1 s message timeout
    with (
        FaultProxy(free_port(), name="fence") as proxy,
        EmbeddedBroker(tmp_path, port=proxy.upstream_port, advertised_port=proxy.port),
    ):
        admin = AdminClient({"bootstrap.servers": proxy.address})
        for future in admin.create_topics([NewTopic("fence", num_partitions=1, replication_factor=1)]).values():
            future.result(timeout=10)
        publisher = KafkaPublisher(producer_config(proxy.address, message_timeout_ms=1000))
        try:

            def publish(n: int) -> list[Delivered | Exception]:
                records = [("fence", b"k", f"r{n}-{i}".encode(), None) for i in range(20)]
                return list(asyncio.run(publisher.publish_many(records)))

            assert all(isinstance(o, Delivered) for o in publish(0))
            # when the link is blackholed while records are in flight, until they time out, then healed
            proxy.blackhole()
            try:
                outcomes = [o for n in range(1, 4) for o in publish(n)]
            finally:
                proxy.heal()
            assert not any(isinstance(o, Delivered) for o in outcomes)
            # then publishing works again: a producer fenced by its own stale epoch was replaced, not kept
            wait_until(lambda: all(isinstance(o, Delivered) for o in publish(99)), 30, "a publish acknowledged again")
        finally:
            publisher.close(timeout=2)
