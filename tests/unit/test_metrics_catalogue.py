"""Specification of the metric catalogue: the exposition carries exactly the names, types and labels of issue 4."""

from __future__ import annotations

import dataclasses

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from cluster.observability import metrics as catalogue
from cluster.observability.breakers import CIRCUIT_BREAKER_STATE

# exported family name -> (type, label names); prometheus-client appends `_total` to counters in the exposition.
EXPECTED = {
    "events_received": ("counter", {"type"}),
    "events_processed": ("counter", {"type", "status"}),
    "processing_duration_seconds": ("histogram", {"type"}),
    "end_to_end_latency_seconds": ("histogram", {"type"}),
    "commit_batch_size": ("histogram", set()),
    "queue_lag": ("gauge", {"topic", "partition"}),
    "worker_health": ("gauge", {"worker"}),
    "circuit_breaker_state": ("gauge", {"dependency"}),
    "dlq_size": ("gauge", set()),
    "http_requests": ("counter", {"route", "method", "status"}),
    "validation_errors": ("counter", {"reason"}),
    "publish_duration_seconds": ("histogram", set()),
    "spool_depth": ("gauge", set()),
    "partition_oldest_uncommitted_age_seconds": ("gauge", {"topic", "partition"}),
    "partition_commit_failures": ("counter", {"topic", "partition", "reason"}),
    "rate_limited": ("counter", {"key"}),
    "rate_limit_fallback": ("counter", set()),
}

SAMPLE_LABELS = {
    "type": "transaction",
    "status": "processed",
    "topic": "events.transaction",
    "partition": "0",
    "worker": "owner:events.transaction:0",
    "dependency": "kafka",
    "route": "/events",
    "method": "POST",
    "reason": "invalid_json",
    "key": "shop-eu",
}


def _record_once(metric, kind: str, labels: set[str]) -> None:
    target = metric.labels(**{name: SAMPLE_LABELS[name] for name in labels}) if labels else metric
    if kind == "counter":
        target.inc()
    elif kind == "histogram":
        target.observe(0.042)
    else:
        target.set(1)


@pytest.fixture
def exposition() -> dict[str, Metric]:
    """Given a fresh registry with every metric recorded once, the parsed text exposition by family name."""
    registry = CollectorRegistry()
    built = catalogue.build(registry)
    for field in dataclasses.fields(built):
        kind, labels = EXPECTED[field.name]  # field names are the family names
        _record_once(getattr(built, field.name), kind, labels)
    text = generate_latest(registry).decode()
    # prometheus-client also writes a `<name>_created` timestamp gauge per counter and histogram; it is not ours.
    families = text_string_to_metric_families(text)
    return {family.name: family for family in families if not family.name.endswith("_created")}


def test_exposition_holds_exactly_the_catalogued_families(exposition):
    assert set(exposition) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_family_has_its_type_labels_and_help(exposition, name):
    kind, labels = EXPECTED[name]
    family = exposition[name]
    assert family.type == kind
    assert family.documentation.strip(), f"{name} has no help text"
    sample_labels = {key for sample in family.samples for key in sample.labels} - {"le"}
    assert sample_labels == labels


def test_counters_are_exported_with_the_total_suffix(exposition):
    exported = {sample.name for family in exposition.values() if family.type == "counter" for sample in family.samples}
    assert {"events_received_total", "events_processed_total", "http_requests_total", "validation_errors_total"} <= (
        exported
    )


@pytest.mark.parametrize(
    "name", ["processing_duration_seconds", "end_to_end_latency_seconds", "publish_duration_seconds"]
)
def test_latency_histograms_resolve_one_millisecond_to_ten_seconds(exposition, name):
    bounds = sorted(
        float(sample.labels["le"])
        for sample in exposition[name].samples
        if sample.name.endswith("_bucket") and sample.labels["le"] != "+Inf"
    )
    assert bounds[0] == 0.001
    assert bounds[-1] == 10.0
    assert 0.1 in bounds  # the end-to-end p99 goal is a bucket boundary, so the alert threshold is exact


def test_circuit_breaker_gauge_is_the_one_the_breakers_set():
    built = catalogue.build(CollectorRegistry())
    assert built.circuit_breaker_state is CIRCUIT_BREAKER_STATE
    assert catalogue.METRICS.circuit_breaker_state is CIRCUIT_BREAKER_STATE


def test_the_catalogue_can_be_built_into_several_registries():
    first, second = CollectorRegistry(), CollectorRegistry()
    catalogue.build(first).events_received.labels(type="sensor").inc(3)
    catalogue.build(second)
    assert first.get_sample_value("events_received_total", {"type": "sensor"}) == 3
    assert second.get_sample_value("events_received_total", {"type": "sensor"}) is None


def test_processed_status_values_are_the_three_outcomes():
    assert catalogue.PROCESSED_STATUSES == ("processed", "dead_lettered", "duplicate")  # Outcome, in its order
