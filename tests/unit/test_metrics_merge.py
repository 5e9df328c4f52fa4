"""Specification of the hub's merge rules: many processes' registries become one exposition that never goes backwards.

Pure: registries built in this process stand for the pipeline's processes; no Ray, no HTTP.
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from cluster.observability import metrics as catalogue
from cluster.observability.hub import HUB_SOURCE, MetricsMerger
from cluster.observability.snapshot import take

OPEN, HALF_OPEN, CLOSED = 1.0, 2.0, 0.0


class Process:
    """A stand-in for one eventpipe process: its own registry with the whole catalogue."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = catalogue.build(self.registry)

    def push(self, merger: MetricsMerger, source: str, now: float) -> None:
        merger.update(source, take(self.registry), now)


def samples(merger: MetricsMerger, now: float) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = merger.render(now).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(merger: MetricsMerger, now: float, name: str, **labels: str) -> float | None:
    return samples(merger, now).get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def merger() -> MetricsMerger:
    return MetricsMerger(retire_after_s=10.0, fold_after_s=100.0)


def test_counters_are_summed_across_processes(merger):
    api_1, api_2 = Process(), Process()
    api_1.metrics.events_received.labels("sensor").inc(2)
    api_2.metrics.events_received.labels("sensor").inc(3)
    api_2.metrics.events_received.labels("transaction").inc()
    api_1.push(merger, "api-1", 0.0)
    api_2.push(merger, "api-2", 0.0)
    assert value(merger, 1.0, "events_received_total", type="sensor") == 5
    assert value(merger, 1.0, "events_received_total", type="transaction") == 1


def test_a_vanished_process_keeps_its_counts_so_counters_never_go_backwards(merger):
    owner, restarted = Process(), Process()
    owner.metrics.events_processed.labels("sensor", "processed").inc(7)
    owner.push(merger, "owner-old", 0.0)
    before = value(merger, 1.0, "events_processed_total", type="sensor", status="processed")
    # The owner dies (never pushes again); its restarted incarnation is a new process counting from zero.
    restarted.metrics.events_processed.labels("sensor", "processed").inc(1)
    restarted.push(merger, "owner-new", 50.0)
    after = value(merger, 50.0, "events_processed_total", type="sensor", status="processed")
    assert before == 7
    assert after == 8


def test_counts_survive_folding_of_long_gone_processes(merger):
    gone, alive = Process(), Process()
    gone.metrics.http_requests.labels("/events", "POST", "202").inc(4)
    gone.push(merger, "api-gone", 0.0)
    alive.metrics.http_requests.labels("/events", "POST", "202").inc(1)
    alive.push(merger, "api-alive", 150.0)
    assert value(merger, 150.0, "http_requests_total", route="/events", method="POST", status="202") == 5
    assert "api-gone" not in merger.sources(150.0)
    # A second render must not fold it in again.
    assert value(merger, 151.0, "http_requests_total", route="/events", method="POST", status="202") == 5


def test_a_folded_source_that_speaks_again_is_not_counted_twice(merger):
    ghost = Process()
    ghost.metrics.events_received.labels("sensor").inc(3)
    ghost.push(merger, "ghost", 0.0)
    assert value(merger, 200.0, "events_received_total", type="sensor") == 3  # folded now
    ghost.metrics.events_received.labels("sensor").inc(1)
    ghost.push(merger, "ghost", 201.0)
    assert value(merger, 201.0, "events_received_total", type="sensor") == 3


def test_histograms_are_summed_bucket_by_bucket(merger):
    owner_1, owner_2 = Process(), Process()
    owner_1.metrics.processing_duration_seconds.labels("sensor").observe(0.0005)
    owner_2.metrics.processing_duration_seconds.labels("sensor").observe(0.3)
    owner_1.push(merger, "owner-1", 0.0)
    owner_2.push(merger, "owner-2", 0.0)
    assert value(merger, 1.0, "processing_duration_seconds_bucket", type="sensor", le="0.001") == 1
    assert value(merger, 1.0, "processing_duration_seconds_bucket", type="sensor", le="0.5") == 2
    assert value(merger, 1.0, "processing_duration_seconds_count", type="sensor") == 2
    assert value(merger, 1.0, "processing_duration_seconds_sum", type="sensor") == pytest.approx(0.3005)


@pytest.mark.parametrize(
    ("states", "merged"),
    [
        ((CLOSED, HALF_OPEN, OPEN), OPEN),
        ((CLOSED, HALF_OPEN, CLOSED), HALF_OPEN),
        ((CLOSED, CLOSED), CLOSED),
        ((OPEN, CLOSED), OPEN),
    ],
)
def test_a_breaker_is_as_bad_as_the_worst_process_sees_it(merger, states, merged):
    for n, state in enumerate(states):
        process = Process()
        process.metrics.circuit_breaker_state.labels("kafka").set(state)
        merger.update(f"p{n}", take(process.registry), 0.0)
    assert value(merger, 1.0, "circuit_breaker_state", dependency="kafka") == merged


def test_gauges_of_a_silent_process_are_dropped(merger):
    drainer = Process()
    drainer.metrics.spool_depth.set(40)
    drainer.push(merger, "drainer", 0.0)
    assert value(merger, 5.0, "spool_depth") == 40
    assert value(merger, 11.0, "spool_depth") is None


def test_other_gauges_take_the_highest_live_value(merger):
    drainer, api = Process(), Process()
    drainer.metrics.spool_depth.set(12)
    drainer.push(merger, "drainer", 0.0)
    api.push(merger, "api", 0.0)  # its spool_depth is the unset 0
    assert value(merger, 1.0, "spool_depth") == 12


def test_hub_measured_gauges_come_from_the_hub_alone(merger):
    owner, hub = Process(), Process()
    owner.metrics.worker_health.labels("owner:events.sensor:0").set(1)  # a worker's own opinion does not count
    owner.push(merger, "owner", 0.0)
    hub.metrics.worker_health.labels("owner:events.sensor:0").set(0)
    hub.metrics.dlq_size.set(3)
    hub.metrics.queue_lag.labels("events.sensor", "0").set(17)
    hub.push(merger, HUB_SOURCE, 0.0)
    assert value(merger, 1.0, "worker_health", worker="owner:events.sensor:0") == 0
    assert value(merger, 1.0, "dlq_size") == 3
    assert value(merger, 1.0, "queue_lag", topic="events.sensor", partition="0") == 17
    # The hub is never retired for silence: it renders itself before every scrape.
    assert value(merger, 1000.0, "dlq_size") == 3


def test_the_exposition_has_the_catalogue_types_and_no_created_series(merger):
    process = Process()
    process.metrics.events_received.labels("sensor").inc()
    process.metrics.publish_duration_seconds.observe(0.01)
    process.push(merger, "api", 0.0)
    families = {f.name: f for f in text_string_to_metric_families(merger.render(1.0).decode())}
    assert families["events_received"].type == "counter"
    assert families["publish_duration_seconds"].type == "histogram"
    assert families["spool_depth"].type == "gauge"
    assert not [name for name, _ in samples(merger, 1.0) if name.endswith("_created")]


def test_sources_are_listed_with_their_liveness(merger):
    Process().push(merger, "api", 0.0)
    Process().push(merger, "owner", 8.0)
    assert merger.sources(15.0) == {
        "api": {"age_s": 15.0, "live": False},
        "owner": {"age_s": 7.0, "live": True},
    }
