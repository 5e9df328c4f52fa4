"""The throughput benchmark's broker floor probe against the real embedded broker: what it measures and where it
finds the broker."""

from __future__ import annotations

import time

import psutil
import pytest

from benchmarks.broker_floor import BrokerFloor
from benchmarks.stack import embedded_broker_bootstrap
from cluster.local import EmbeddedBroker
from tests.chaos.faultproxy import FaultProxy

pytestmark = pytest.mark.integration


def test_the_floor_probe_times_its_own_records_from_produce_to_read(broker: EmbeddedBroker) -> None:
    with BrokerFloor(broker.bootstrap, fetch_wait_ms=50, interval_s=0.02) as probe:
        time.sleep(1.5)

    latencies = probe.latencies_ms()
    assert len(latencies) >= 20
    assert len(latencies) <= probe.sent
    assert all(0 <= ms < 2_000 for ms in latencies)


def test_a_second_probe_on_the_same_topic_leaves_the_first_ones_records_out(broker: EmbeddedBroker) -> None:
    # given a probe that ran before (its records stay in the topic; the embedded broker's watermark says 1)
    with BrokerFloor(broker.bootstrap, fetch_wait_ms=50, interval_s=0.02):
        time.sleep(0.5)
    time.sleep(1.0)
    # when another probe runs
    started = time.monotonic()
    with BrokerFloor(broker.bootstrap, fetch_wait_ms=50, interval_s=0.02) as probe:
        time.sleep(0.5)
    # then no latency is older than the second probe itself
    assert probe.latencies_ms()
    assert max(probe.latencies_ms()) < (time.monotonic() - started) * 1000


def test_the_embedded_broker_is_found_under_the_process_that_started_it(
    broker: EmbeddedBroker, broker_proxy: FaultProxy
) -> None:
    # the session's broker is a child of this test process; clients are sent to the address it advertises (its proxy)
    assert broker.running
    assert embedded_broker_bootstrap(psutil.Process()) == f"127.0.0.1:{broker_proxy.port}"
