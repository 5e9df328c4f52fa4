"""A real Prometheus (Debian's /usr/bin/prometheus) scrapes the whole cluster through its ONE target, the metrics hub,
while events flow: every metric of issue 4 arrives with its labels and grows with the test's own events, queue lag
matches a backlog of known size, then returns to zero.

Prometheus runs as a subprocess on a free port with a 1 s scrape interval and is killed at the end of the module.
"""

from __future__ import annotations

import random
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import ray
from confluent_kafka import Producer

from actors import names
from actors.metrics_hub import workers
from cluster.adapters.kafka_config import producer_config
from cluster.local import free_port
from tests.factories import valid_event
from tests.pipeline import Pipeline, unique_prefix

pytestmark = pytest.mark.integration

PROMETHEUS = "/usr/bin/prometheus"
TYPES = ("transaction", "sensor", "user_action")
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"__name__", "job", "instance"}

Series = list[tuple[dict[str, str], float]]


@dataclass
class Prometheus:
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def query(self, expr: str) -> Series:
        reply = httpx.get(f"{self.base_url}/api/v1/query", params={"query": expr}, timeout=10)
        reply.raise_for_status()
        body = reply.json()
        assert body["status"] == "success", body
        return [(item["metric"], float(item["value"][1])) for item in body["data"]["result"]]

    def targets(self) -> list[dict[str, Any]]:
        reply = httpx.get(f"{self.base_url}/api/v1/targets", params={"state": "active"}, timeout=10)
        reply.raise_for_status()
        return list(reply.json()["data"]["activeTargets"])


@pytest.fixture(scope="module")
def prometheus(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Prometheus scraping the metrics hub every second; stopped (then killed if need be) after the module."""
    directory = tmp_path_factory.mktemp("prometheus")
    hub = urllib.parse.urlsplit(pipeline.metrics_url)
    config = directory / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: eventpipe\n    static_configs:\n"
        f"      - targets: ['{hub.netloc}']\n"
    )
    port = free_port()
    log = directory / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        eventually(lambda: _ready(server), 60, "Prometheus to be ready")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _ready(server: Prometheus) -> list[str]:
    if server.process.poll() is not None:
        pytest.fail(f"prometheus exited with {server.process.returncode}:\n{server.log.read_text()[-3000:]}")
    try:
        return [] if httpx.get(f"{server.base_url}/-/ready", timeout=2).status_code == 200 else ["not ready"]
    except httpx.HTTPError as exc:
        return [str(exc)]


def eventually(problems: Callable[[], list[str]], timeout_s: float, what: str) -> None:
    """Poll until `problems()` is empty; fail listing what was still wrong at the deadline."""
    deadline = time.monotonic() + timeout_s
    left = ["never checked"]
    while time.monotonic() < deadline:
        left = problems()
        if not left:
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}; still wrong:\n  " + "\n  ".join(left))


# -- helpers that act on the pipeline ---------------------------------------------------------------
def post(pipeline: Pipeline, path: str, body: Any, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(
        f"{pipeline.base_url}{path}",
        content=content,
        headers={"Content-Type": "application/json", **pipeline.headers, **headers},
        timeout=30,
    )


def produce(pipeline: Pipeline, topic: str, partition: int, values: list[bytes]) -> list[int]:
    """Write raw records straight to one partition; the offsets the broker acknowledged, in order."""
    producer = Producer(producer_config(pipeline.settings.kafka_bootstrap, linger_ms=5))
    offsets: list[int] = []
    errors: list[str] = []

    def report(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            offsets.append(msg.offset())

    for value in values:
        producer.produce(topic, value=value, partition=partition, on_delivery=report)
    producer.flush(30)
    assert not errors and len(offsets) == len(values), errors
    return sorted(offsets)


def owner(pipeline: Pipeline, topic: str, partition: int) -> Any:
    return ray.get_actor(names.owner_name(topic, partition))


def stop_owner(pipeline: Pipeline, topic: str, partition: int) -> None:
    status = ray.get(owner(pipeline, topic, partition).stop.remote(10.0), timeout=30)
    assert status["state"] == "stopped", status


def restart_owner(pipeline: Pipeline, topic: str, partition: int) -> None:
    """Kill the stopped owner's process; Ray restarts the actor, which claims its partition again."""
    ray.kill(owner(pipeline, topic, partition), no_restart=False)


def committed(pipeline: Pipeline, topic: str, partition: int) -> int:
    rows = pipeline.query(
        "SELECT next_offset FROM partition_checkpoints WHERE topic = %s AND partition = %s", topic, partition
    )
    return int(rows[0][0]) if rows else 0


def lag_of(prometheus: Prometheus, topic: str, partition: int) -> float | None:
    found = prometheus.query(f'queue_lag{{topic="{topic}",partition="{partition}"}}')
    return found[0][1] if found else None


def raw_events(prefix: str, count: int) -> list[bytes]:
    rng = random.Random(11)
    return [orjson.dumps(valid_event(prefix, n, rng)) for n in range(count)]


# -- expectations ---------------------------------------------------------------------------------
def label_problems(prometheus: Prometheus, name: str, labels: set[str]) -> list[str]:
    found = prometheus.query(name)
    if not found:
        return [f"{name}: no series"]
    wrong = [m for m, _ in found if set(m) - TARGET_LABELS != labels]
    return (
        [f"{name}: series with labels {sorted(set(wrong[0]) - TARGET_LABELS)}, expected {sorted(labels)}"]
        if wrong
        else []
    )


def total(prometheus: Prometheus, expr: str) -> float:
    """The sum of the expression's series (0 when there is none yet)."""
    found = prometheus.query(f"sum({expr})")
    return found[0][1] if found else 0.0


# What the first test's own actions must make grow: earlier tests of the session grew these counters already, so
# each is compared with its value scraped just before the actions, never with 0.
GROWING = (
    *(f'events_received_total{{type="{t}"}}' for t in TYPES),
    *(f'events_processed_total{{type="{t}",status="processed"}}' for t in TYPES),
    *(f'processing_duration_seconds_count{{type="{t}"}}' for t in TYPES),
    *(f'end_to_end_latency_seconds_count{{type="{t}"}}' for t in TYPES),
    'events_processed_total{status="dead_lettered"}',
    'events_processed_total{status="duplicate"}',
    "commit_batch_size_count",
    "dlq_size",
    'http_requests_total{route="/events",method="POST",status="202"}',
    'http_requests_total{route="/events",method="POST",status="422"}',
    'http_requests_total{route="/events/batch",method="POST",status="202"}',
    *(f'validation_errors_total{{reason="{reason}"}}' for reason in ("unknown_type", "missing", "malformed_json")),
    "publish_duration_seconds_count",
)


def scraped_now(prometheus: Prometheus) -> dict[str, float]:
    """The GROWING totals from a scrape that started after this call (Prometheus scrapes every second)."""
    asked = time.time()
    eventually(
        lambda: [] if any(v > asked for _, v in prometheus.query("timestamp(up)")) else ["no scrape since asked"],
        30,
        "a fresh scrape",
    )
    return {expr: total(prometheus, expr) for expr in GROWING}


def grew(prometheus: Prometheus, before: dict[str, float]) -> list[str]:
    problems = []
    for expr, was in before.items():
        now = total(prometheus, expr)
        if now <= was:
            problems.append(f"{expr}: {now} (was {was} before the test's actions; expected it to grow)")
    return problems


def every_metric_problems(
    prometheus: Prometheus, pipeline: Pipeline, stopped: tuple[str, int], before: dict[str, float], backlog: int
) -> list[str]:
    s = pipeline.settings
    problems: list[str] = []
    for name, labels in {
        "events_received_total": {"type"},
        "events_processed_total": {"type", "status"},
        "processing_duration_seconds_bucket": {"type", "le"},
        "end_to_end_latency_seconds_bucket": {"type", "le"},
        "commit_batch_size_bucket": {"le"},
        "queue_lag": {"topic", "partition"},
        "worker_health": {"worker"},
        "circuit_breaker_state": {"dependency"},
        "dlq_size": set(),
        "http_requests_total": {"route", "method", "status"},
        "validation_errors_total": {"reason"},
        "publish_duration_seconds_bucket": {"le"},
        "spool_depth": set(),
    }.items():
        problems += label_problems(prometheus, name, labels)
    problems += grew(prometheus, before)
    # The latency histograms resolve 1 ms to 10 s.
    bounds = {m["le"] for m, _ in prometheus.query('processing_duration_seconds_bucket{type="sensor"}')}
    if not {"0.001", "10.0", "+Inf"} <= bounds:
        problems.append(f"processing_duration_seconds buckets: {sorted(bounds)}")
    # Lag: a series for every owned partition, and the stopped owner's backlog is visible.
    lags = {(m["topic"], m["partition"]) for m, _ in prometheus.query("queue_lag")}
    wanted = {(t, str(p)) for t in s.owned_topics() for p in range(s.partitions)}
    if lags != wanted:
        problems.append(f"queue_lag series for {sorted(lags)}, expected {sorted(wanted)}")
    lag = lag_of(prometheus, *stopped)
    if lag is None or lag < backlog:
        problems.append(f"queue_lag of the stopped {stopped}: {lag}, expected at least the {backlog} records it missed")
    # Health: every worker reports; the stopped owner is 0, the others 1.
    health = {m["worker"]: v for m, v in prometheus.query("worker_health")}
    stopped_worker = names.owner_name(*stopped)
    if set(health) != set(workers(s)):
        problems.append(f"worker_health for {sorted(health)}, expected {sorted(workers(s))}")
    elif health[stopped_worker] != 0 or any(v != 1 for w, v in health.items() if w != stopped_worker):
        problems.append(f"worker_health {health}: expected 0 for {stopped_worker} only")
    # Breakers: one series per dependency (0 = closed is a fine value).
    breakers = {m["dependency"] for m, _ in prometheus.query("circuit_breaker_state")}
    if not {"kafka", "postgres", "enrichment"} <= breakers:
        problems.append(f"circuit_breaker_state for {sorted(breakers)}, expected kafka, postgres, enrichment")
    return problems


def test_prometheus_scrapes_every_metric_from_one_target_while_events_flow(pipeline: Pipeline, prometheus: Prometheus):
    s = pipeline.settings
    prefix = unique_prefix("metrics")
    rng = random.Random(5)
    stopped = (s.ingest_topic, 0)
    # given one owner stopped, so its partition builds a backlog and it reports itself unhealthy
    stop_owner(pipeline, *stopped)
    before = scraped_now(prometheus)
    try:
        # when events of every type flow through the API, singly and in a batch, one of them sent twice
        for n in range(6):
            assert post(pipeline, "/events", valid_event(prefix, n, rng)).status_code == 202
        batch = [valid_event(prefix, n, rng) for n in range(6, 30)]
        assert post(pipeline, "/events/batch", batch).status_code == 202
        assert post(pipeline, "/events", valid_event(prefix, 0, random.Random(5))).status_code == 202  # a resend
        # and invalid ones are rejected: an unknown type, a missing field, a body that is not JSON
        assert post(pipeline, "/events", {"type": "weather", "timestamp": "2026-11-24T10:00:00Z"}).status_code == 422
        missing = {k: v for k, v in valid_event(prefix, 99, rng).items() if k != "timestamp"}
        assert post(pipeline, "/events", missing).status_code == 422
        assert post(pipeline, "/events", b'{"type": "sensor", ').status_code == 400
        # and a malformed raw record lands on a live partition (a dead letter), valid raw ones on the stopped one
        produce(pipeline, s.ingest_topic, 1, [b'{"type": "sensor", "reading": '])
        missed = produce(pipeline, s.ingest_topic, stopped[1], raw_events(f"{prefix}-raw", 20))
        backlog = missed[-1] + 1 - committed(pipeline, *stopped)
        assert backlog >= 20

        # then Prometheus, scraping the hub alone, sees every metric with its labels, grown by these actions
        eventually(
            lambda: every_metric_problems(prometheus, pipeline, stopped, before, backlog),
            120,
            "every metric in Prometheus",
        )
        targets = prometheus.targets()
        assert len(targets) == 1 and targets[0]["health"] == "up", targets
    finally:
        restart_owner(pipeline, *stopped)
    eventually(
        lambda: [] if lag_of(prometheus, *stopped) == 0 else [f"lag {lag_of(prometheus, *stopped)}"],
        120,
        "the restarted owner to work off its backlog",
    )


def test_queue_lag_equals_a_known_backlog_and_returns_to_zero(pipeline: Pipeline, prometheus: Prometheus):
    s = pipeline.settings
    topic, partition = s.ingest_topic, 1
    worker = names.owner_name(topic, partition)
    prefix = unique_prefix("lag")

    def scraped(lag: int, healthy: int) -> Callable[[], list[str]]:
        def problems() -> list[str]:
            found = prometheus.query(f'worker_health{{worker="{worker}"}}')
            seen = (lag_of(prometheus, topic, partition), found[0][1] if found else None)
            return [] if seen == (lag, healthy) else [f"(queue_lag, worker_health) = {seen}, expected {(lag, healthy)}"]

        return problems

    # given the partition's owner has committed everything and is then stopped
    eventually(lambda: [] if lag_of(prometheus, topic, partition) == 0 else ["lag not 0"], 120, "no backlog")
    stop_owner(pipeline, topic, partition)
    try:
        # when 37 records are written to its partition
        offsets = produce(pipeline, topic, partition, raw_events(prefix, 37))
        backlog = offsets[-1] + 1 - committed(pipeline, topic, partition)
        assert backlog >= 37
        # then the lag Prometheus scrapes is exactly that backlog, and the owner is reported unhealthy
        eventually(scraped(backlog, 0), 60, f"queue_lag == {backlog} with the owner unhealthy")
    finally:
        restart_owner(pipeline, topic, partition)
    # and once the owner is back, it commits the backlog: lag returns to 0 and the owner to health
    eventually(scraped(0, 1), 120, "lag back to 0 and the owner healthy")
    assert committed(pipeline, topic, partition) == offsets[-1] + 1
