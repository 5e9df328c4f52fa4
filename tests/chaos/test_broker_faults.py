"""Broker faults under load, injected by the proxy every Kafka client goes through (API producer, owners, DLQ).

The broker unreachable (blackhole) and a slow link (500 ms each way). Nothing acknowledged may be lost or doubled.
Plus the producer-level failure the 30 s blackhole found: an idempotent producer fenced by its own newer epoch.
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
from tests.chaos.faultproxy import FaultProxy, ProxyStats
from tests.chaos.harness import FAULT_S, Scenario, steady
from tests.pipeline import wait_until

SLOW_LINK_MS = 500


@pytest.fixture(autouse=True)
def healed_broker(broker_proxy: FaultProxy) -> Iterator[FaultProxy]:
    """Whatever a scenario did, the next test starts with a healthy link."""
    broker_proxy.heal()
    yield broker_proxy
    broker_proxy.heal()


def under_link_fault(
    scenario: Scenario, proxy: FaultProxy, label: str, inject: Callable[[], None]
) -> tuple[ProxyStats, ProxyStats]:
    """Load, then `inject` a fault on the broker link for FAULT_S, heal, verify; the proxy's byte counts as the fault
    began and as it ended."""
    with scenario.workload(rate=200):
        steady(1.0)
        with scenario.fault(label):
            inject()
            try:
                began = proxy.stats()
                steady(FAULT_S)
                ended = proxy.stats()
            finally:
                proxy.heal()
        steady(1.0)
    scenario.verify()
    return began, ended


def test_broker_unreachable_then_healed(scenario: Scenario, broker_proxy: FaultProxy) -> None:
    label = f"broker blackholed for {FAULT_S:g}s (every Kafka client)"
    held, during = under_link_fault(scenario, broker_proxy, label, broker_proxy.blackhole)
    # the fault was real: not one byte crossed while it lasted
    assert (during.bytes_up, during.bytes_down) == (held.bytes_up, held.bytes_down)
    assert broker_proxy.stats().bytes_up > during.bytes_up  # and traffic flowed again after the heal


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
