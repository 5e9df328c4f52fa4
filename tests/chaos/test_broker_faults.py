"""Broker faults under load, injected by the proxy every Kafka client goes through (API producer, owners, DLQ).

The broker unreachable (blackhole) and a slow link (500 ms each way). Nothing acknowledged may be lost or doubled.
The blackhole outlasts the API's producer timeout, so the degraded mode must engage: the kafka breaker opens and
events are acknowledged from the spool. Plus the producer-level failure the 30 s blackhole found: an idempotent
producer fenced by its own newer epoch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from cluster.adapters.kafka_config import producer_config
from cluster.adapters.kafka_producer import Delivered, KafkaPublisher
from cluster.local import EmbeddedBroker, free_port
from tests.chaos.degradation import DegradationWatch
from tests.chaos.faultproxy import FaultProxy, ProxyStats
from tests.chaos.harness import FAULT_S, Expect, Scenario, steady
from tests.pipeline import wait_until

SLOW_LINK_MS = 500
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
    scenario: Scenario,
    proxy: FaultProxy,
    label: str,
    inject: Callable[[], None],
    fault_s: float = FAULT_S,
    watch: DegradationWatch | None = None,
) -> tuple[ProxyStats, ProxyStats]:
    """Load, then `inject` a fault on the broker link for `fault_s`, heal, verify; the proxy's byte counts as the
    fault began and as it ended. `watch`, if given, runs from the fault's start until the heal."""
    with scenario.workload(rate=200):
        steady(1.0)
        with scenario.fault(label):
            inject()
            try:
                began = proxy.stats()
                if watch is None:
                    steady(fault_s)
                else:
                    with watch:
                        steady(fault_s)
                ended = proxy.stats()
            finally:
                proxy.heal()
        steady(1.0)
    if watch is not None:
        scenario.note(f"during the fault: {watch.seen}")
    scenario.verify(expect=EXPECT)
    return began, ended


def test_broker_unreachable_then_healed(scenario: Scenario, broker_proxy: FaultProxy) -> None:
    fault_s = blackhole_s(scenario)
    label = f"broker blackholed for {fault_s:g}s (every Kafka client)"
    watch = DegradationWatch(scenario.pipeline.base_url, scenario.pipeline.metrics_url)
    held, during = under_link_fault(scenario, broker_proxy, label, broker_proxy.blackhole, fault_s, watch)
    # the fault was real: not one byte crossed while it lasted
    assert (during.bytes_up, during.bytes_down) == (held.bytes_up, held.bytes_down)
    assert broker_proxy.stats().bytes_up > during.bytes_up  # and traffic flowed again after the heal
    # and the degraded mode engaged: the kafka breaker opened, events were acknowledged from the spool
    seen = watch.seen
    assert "open" in seen.breaker_states | seen.gauge_states, seen
    spooled = [r for r in scenario.checker.acknowledged() if r.spooled]
    assert len(spooled) >= 10, f"only {len(spooled)} events acknowledged from the spool; {seen}"
    assert seen.max_spool_depth > 0, seen  # spool rows appeared (and were drained: verify found every event)


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
