"""Specification of the status page's arithmetic: from two readings of `/metrics` text to the numbers the page shows.

Rates come from counter deltas, percentiles from histogram bucket deltas (PromQL's `histogram_quantile`), gauges are
combined across processes like the Grafana dashboard's queries. The page's HTML must carry every id its script sets.
"""

from __future__ import annotations

import math
import re

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from cluster.observability import metrics as catalogue
from cluster.observability.endpoint import MetricsEndpoint
from cluster.observability.status_page import (
    StatusBoard,
    StatusPage,
    histogram_quantile,
    increase,
    parse,
    status_html,
    summarize,
)

INF = math.inf


def _exposition(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def _catalogue_registry() -> tuple[CollectorRegistry, catalogue.Metrics]:
    registry = CollectorRegistry()
    return registry, catalogue.build(registry)


# --- histogram_quantile: the same answers as PromQL -------------------------------------------------------------------


def test_quantile_interpolates_linearly_inside_the_bucket_holding_the_rank():
    # 10 observations in (0.01, 0.025], 10 in (0.025, 0.05]: the median is the top of the first of them.
    buckets = [(0.01, 0), (0.025, 10), (0.05, 20), (INF, 20)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.025)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.0375)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.0175)


def test_quantile_in_the_lowest_bucket_starts_from_zero():
    assert histogram_quantile(0.5, [(0.002, 4), (INF, 4)]) == pytest.approx(0.001)


def test_quantile_beyond_the_last_finite_bucket_answers_its_bound():
    assert histogram_quantile(0.99, [(1.0, 50), (10.0, 90), (INF, 100)]) == pytest.approx(10.0)


def test_quantile_of_an_empty_window_is_unknown_not_zero():
    assert histogram_quantile(0.5, [(0.1, 0), (INF, 0)]) is None
    assert histogram_quantile(0.5, []) is None


def test_quantile_does_not_depend_on_bucket_order():
    buckets = [(INF, 20), (0.05, 20), (0.01, 0), (0.025, 10)]
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.0375)


def test_a_counter_that_dropped_restarted_from_zero():
    assert increase(100, 130) == 30
    assert increase(100, 7) == 7


# --- rates and percentiles over the window ----------------------------------------------------------------------------


def test_first_reading_has_totals_but_no_rates():
    registry, m = _catalogue_registry()
    m.events_received.labels("sensor").inc(40)
    doc = StatusBoard().document(generate_latest(registry).decode(), now=1000.0)
    assert doc["throughput"]["received_total"] == 40
    assert doc["throughput"]["received_per_s"] is None
    assert doc["window_s"] is None
    assert doc["latency_ms"]["processing"]["p99"] is None


def test_rates_are_counter_deltas_over_the_time_between_readings():
    registry, m = _catalogue_registry()
    board = StatusBoard()
    m.events_received.labels("sensor").inc(40)
    m.events_processed.labels("sensor", "processed").inc(30)
    board.document(generate_latest(registry).decode(), now=1000.0)
    m.events_received.labels("sensor").inc(100)
    m.events_received.labels("transaction").inc(20)
    m.events_processed.labels("sensor", "processed").inc(90)
    m.events_processed.labels("sensor", "dead_lettered").inc(10)
    m.validation_errors.labels("missing_field").inc(4)
    m.http_requests.labels("/events", "POST", "503").inc(2)
    m.http_requests.labels("/events", "POST", "202").inc(118)

    doc = board.document(generate_latest(registry).decode(), now=1002.0)

    assert doc["window_s"] == pytest.approx(2.0)
    assert doc["throughput"]["received_per_s"] == pytest.approx(60.0)
    assert doc["throughput"]["processed_per_s"] == pytest.approx(50.0)
    rows = {row["type"]: row for row in doc["throughput"]["by_type"]}
    assert rows["sensor"]["received_per_s"] == pytest.approx(50.0)
    assert rows["sensor"]["processed_per_s"] == pytest.approx(45.0)
    assert rows["sensor"]["dead_lettered_per_s"] == pytest.approx(5.0)
    assert rows["transaction"]["received_per_s"] == pytest.approx(10.0)
    assert rows["transaction"]["processed_per_s"] == 0.0
    assert doc["errors"]["dead_lettered_per_s"] == pytest.approx(5.0)
    assert doc["errors"]["validation_errors_per_s"] == pytest.approx(2.0)
    assert doc["errors"]["validation_by_reason"] == [{"reason": "missing_field", "per_s": pytest.approx(2.0)}]
    assert doc["errors"]["http_5xx_per_s"] == pytest.approx(1.0)
    assert doc["api"]["requests_per_s"] == pytest.approx(60.0)


def test_percentiles_cover_only_what_was_observed_in_the_window():
    registry, m = _catalogue_registry()
    board = StatusBoard()
    for _ in range(1000):  # a slow past that must not show any more
        m.processing_duration_seconds.labels("sensor").observe(4.0)
    board.document(generate_latest(registry).decode(), now=1000.0)
    for _ in range(100):
        m.processing_duration_seconds.labels("sensor").observe(0.003)
        m.processing_duration_seconds.labels("transaction").observe(0.003)

    latency = board.document(generate_latest(registry).decode(), now=1003.0)["latency_ms"]

    # every new observation is in (2.5 ms, 5 ms]: p50 is the middle of that bucket, p99 near its top
    assert latency["processing"]["p50"] == pytest.approx(3.75)
    assert latency["processing"]["p99"] == pytest.approx(4.975)
    assert latency["end_to_end"]["p50"] is None  # nothing committed in the window


def test_commit_batch_size_mean_and_percentiles_come_from_the_window():
    registry, m = _catalogue_registry()
    board = StatusBoard()
    m.commit_batch_size.observe(5000)
    board.document(generate_latest(registry).decode(), now=1000.0)
    for size in (10, 10, 40, 40):
        m.commit_batch_size.observe(size)
    batch = board.document(generate_latest(registry).decode(), now=1002.0)["commit_batch"]
    assert batch["mean"] == pytest.approx(25.0)
    assert batch["p50"] == pytest.approx(10.0)
    assert 25 < batch["p99"] <= 50


def test_rates_use_the_oldest_reading_inside_the_window():
    text = _exposition("# TYPE events_received_total counter", 'events_received_total{type="sensor"} {n}')
    board = StatusBoard(window_s=10.0)
    for second, total in ((0, 0), (2, 100), (4, 200), (6, 300), (8, 400), (10, 500), (12, 600)):
        doc = board.document(text.replace("{n}", str(total)), now=1000.0 + second)
    assert doc["throughput"]["received_per_s"] == pytest.approx(50.0)
    assert doc["window_s"] == pytest.approx(10.0)


def test_readings_too_close_together_give_no_rate_rather_than_noise():
    text = _exposition("# TYPE events_received_total counter", 'events_received_total{type="sensor"} 10')
    board = StatusBoard(min_interval_s=0.5)
    board.document(text, now=1000.0)
    assert board.document(text, now=1000.1)["throughput"]["received_per_s"] is None


def test_a_stale_reading_is_not_used_as_the_base_of_a_rate():
    text = _exposition("# TYPE events_received_total counter", 'events_received_total{type="sensor"} 10')
    board = StatusBoard(max_age_s=120.0)
    board.document(text, now=1000.0)
    assert board.document(text, now=1500.0)["throughput"]["received_per_s"] is None


# --- gauges, combined across the processes that report them -----------------------------------------------------------


def test_gauges_are_combined_like_the_dashboard_queries():
    # Extra labels (a merged source, a replica) must not split a panel's series.
    text = _exposition(
        "# TYPE queue_lag gauge",
        'queue_lag{topic="events.sensor",partition="10",source="a"} 7',
        'queue_lag{topic="events.sensor",partition="2",source="a"} 3',
        'queue_lag{topic="events.sensor",partition="2",source="b"} 5',
        "# TYPE circuit_breaker_state gauge",
        'circuit_breaker_state{dependency="kafka",source="a"} 2',
        'circuit_breaker_state{dependency="kafka",source="b"} 1',
        'circuit_breaker_state{dependency="kafka",source="c"} 0',
        'circuit_breaker_state{dependency="postgres",source="a"} 2',
        'circuit_breaker_state{dependency="postgres",source="b"} 0',
        "# TYPE worker_health gauge",
        'worker_health{worker="owner:events.sensor:2",source="a"} 1',
        'worker_health{worker="owner:events.sensor:2",source="b"} 0',
        'worker_health{worker="eventpipe-leader"} 1',
        "# TYPE dlq_size gauge",
        'dlq_size{source="a"} 12',
        'dlq_size{source="b"} 12',
        "# TYPE spool_depth gauge",
        "spool_depth 0",
    )
    doc = summarize(None, parse(text, at=1000.0))
    assert [(p["topic"], p["partition"], p["lag"]) for p in doc["lag"]["partitions"]] == [
        ("events.sensor", 2, 5.0),
        ("events.sensor", 10, 7.0),
    ]
    assert doc["lag"]["total"] == 12.0
    assert doc["breakers"] == [
        {"dependency": "kafka", "state": "open", "value": 1.0},
        {"dependency": "postgres", "state": "half_open", "value": 2.0},
    ]
    assert doc["workers"] == {
        "total": 2,
        "healthy": 1,
        "items": [
            {"worker": "eventpipe-leader", "healthy": True},
            {"worker": "owner:events.sensor:2", "healthy": False},
        ],
    }
    assert doc["dlq_size"] == 12.0
    assert doc["spool_depth"] == 0.0


def test_a_gauge_nobody_reports_is_unknown():
    doc = summarize(None, parse("", at=1000.0))
    assert doc["dlq_size"] is None
    assert doc["spool_depth"] is None
    assert doc["lag"] == {"total": 0, "partitions": [], "stalled": 0}
    assert doc["workers"]["total"] == 0


def test_a_partition_stuck_on_a_commit_is_marked_stalled_with_its_age_and_failure_rate():
    def reading(age: float, failures: float) -> str:
        return _exposition(
            "# TYPE queue_lag gauge",
            'queue_lag{topic="events.ingest",partition="0"} 40',
            'queue_lag{topic="events.ingest",partition="1"} 0',
            "# TYPE partition_oldest_uncommitted_age_seconds gauge",
            f'partition_oldest_uncommitted_age_seconds{{topic="events.ingest",partition="0",source="a"}} {age}',
            'partition_oldest_uncommitted_age_seconds{topic="events.ingest",partition="1",source="b"} 0.02',
            "# TYPE partition_commit_failures_total counter",
            f'partition_commit_failures_total{{topic="events.ingest",partition="0",reason="unavailable"}} {failures}',
        )

    doc = summarize(parse(reading(20.0, 3), at=1000.0), parse(reading(45.0, 8), at=1010.0))

    stuck, fine = doc["lag"]["partitions"]
    assert (stuck["partition"], stuck["stalled"], stuck["oldest_uncommitted_s"]) == (0, True, 45.0)
    assert stuck["commit_failures_per_s"] == pytest.approx(0.5)
    assert (fine["partition"], fine["stalled"], fine["commit_failures_per_s"]) == (1, False, 0.0)
    assert doc["lag"]["stalled"] == 1


def test_a_partition_younger_than_the_stall_bound_is_not_marked():
    text = _exposition(
        "# TYPE partition_oldest_uncommitted_age_seconds gauge",
        'partition_oldest_uncommitted_age_seconds{topic="events.sensor",partition="3"} 29.9',
    )

    doc = summarize(None, parse(text, at=1000.0))

    assert [(p["partition"], p["stalled"], p["lag"]) for p in doc["lag"]["partitions"]] == [(3, False, 0.0)]
    assert doc["lag"]["stalled"] == 0


# --- what the HTTP server answers ------------------------------------------------------------------------------------


def test_the_page_answers_its_two_paths_and_nothing_else():
    page = StatusPage()
    content_type, body = page.handle("/status", lambda: pytest.fail("the page itself needs no metrics"))
    assert content_type.startswith("text/html")
    assert body == status_html()
    assert page.handle("/status/", lambda: "")[1] == body
    content_type, body = page.handle("/status.json?t=1", lambda: _exposition("# TYPE dlq_size gauge", "dlq_size 3"))
    assert content_type == "application/json"
    assert orjson.loads(body)["dlq_size"] == 3.0
    assert page.handle("/metrics", lambda: "") is None
    assert page.handle("/statusx", lambda: "") is None


def test_a_non_finite_gauge_is_sent_as_null_so_the_page_gets_valid_json():
    _, body = StatusPage().handle("/status.json", lambda: _exposition("# TYPE spool_depth gauge", "spool_depth NaN"))
    assert orjson.loads(body)["spool_depth"] is None


def test_every_element_the_script_fills_exists_in_the_page():
    html = status_html().decode()
    ids = set(re.findall(r'\bid="([^"]+)"', html))
    referenced = set(re.findall(r'(?:set|getElementById)\("([^"]+[^-])"', html))
    referenced |= set(re.findall(r'querySelector\("#([\w-]+)', html))
    referenced |= {f"latency-{h}-{q}" for h in ("processing", "end_to_end", "publish") for q in ("p50", "p95", "p99")}
    referenced |= {f"spark-{name}" for name in ("throughput", "latency")}
    assert referenced - ids == set()
    assert len(ids) == len(re.findall(r'\bid="', html)), "ids must be unique"


def test_the_page_loads_nothing_from_outside():
    html = status_html().decode()
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", html)
    assert "@import" not in html
    assert 'fetch("status.json"' in html  # relative: works behind any path prefix


def test_the_metrics_endpoint_serves_the_page_beside_metrics():
    text = _exposition("# TYPE dlq_size gauge", "dlq_size 5")
    endpoint = MetricsEndpoint("127.0.0.1", 0, lambda: text.encode(), pages=[StatusPage().handle])
    status, content_type, body = endpoint.answer("/status")
    assert (status, content_type) == (200, "text/html; charset=utf-8")
    assert b"<title>eventpipe status</title>" in body
    status, _, body = endpoint.answer("/status.json")
    assert status == 200
    assert orjson.loads(body)["dlq_size"] == 5.0
    assert endpoint.answer("/metrics")[2] == text.encode()
