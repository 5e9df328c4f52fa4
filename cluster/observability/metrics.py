"""The catalogue of every Prometheus metric eventpipe exports: each name, label set, help text and bucket layout, once.

Declarations only: this module never serves, pushes, aggregates or reads anything. Callers record through the
`Metrics` built here; how samples leave a process is another module's job.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cluster.observability.breakers import CIRCUIT_BREAKER_STATE
from pipelines.outcome import Outcome

# 1 ms to 10 s. The end-to-end p99 goal (100 ms) is a bucket boundary, so an alert on it needs no interpolation.
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Owners take at most `consume_batch_max` (1000) records; the top buckets leave room for a raised setting.
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

# The values `events_processed_total{status}` may take: pipelines.errors.Outcome, the one spelling.
PROCESSED_STATUSES: tuple[str, ...] = tuple(Outcome)


@dataclass(frozen=True)
class Metrics:
    """Every eventpipe metric, registered in one registry. Field names mirror the exported names."""

    # Pipeline (partition owners and checkpoint writers)
    events_received: Counter
    events_processed: Counter
    processing_duration_seconds: Histogram
    end_to_end_latency_seconds: Histogram
    commit_batch_size: Histogram
    queue_lag: Gauge
    worker_health: Gauge
    circuit_breaker_state: Gauge
    dlq_size: Gauge
    # Stuck partitions (issue 8): age of the oldest record an owner read and has not committed, failed commits
    partition_oldest_uncommitted_age_seconds: Gauge
    partition_commit_failures: Counter
    # API
    http_requests: Counter
    validation_errors: Counter
    publish_duration_seconds: Histogram
    spool_depth: Gauge
    # Rate limit (issue 11)
    rate_limited: Counter
    rate_limit_fallback: Counter


def build(registry: CollectorRegistry) -> Metrics:
    """Declare every metric in `registry`.

    `circuit_breaker_state` is the process-wide gauge owned by `cluster.observability.breakers` (the breakers set it);
    it is registered here as well so the registry holds the whole catalogue.
    """
    registry.register(CIRCUIT_BREAKER_STATE)
    return Metrics(
        events_received=Counter(
            "events_received",
            "Events entering the pipeline by type: accepted by the API, or raw records read from the ingest topic",
            ["type"],
            registry=registry,
        ),
        events_processed=Counter(
            "events_processed",
            "Events whose outcome was committed, by event type and status (processed, dead_lettered, duplicate)",
            ["type", "status"],
            registry=registry,
        ),
        processing_duration_seconds=Histogram(
            "processing_duration_seconds",
            "Time an owner spent decoding, validating and handling one event, retries included",
            ["type"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        end_to_end_latency_seconds=Histogram(
            "end_to_end_latency_seconds",
            "Time from the API receiving an event to its outcome being committed in PostgreSQL",
            ["type"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        commit_batch_size=Histogram(
            "commit_batch_size",
            "Events in one committed partition batch",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        ),
        queue_lag=Gauge(
            "queue_lag",
            "Records in a partition not yet committed: broker latest offset minus committed next offset in PostgreSQL",
            ["topic", "partition"],
            registry=registry,
        ),
        worker_health=Gauge(
            "worker_health",
            "1 when a worker (owner, writer, leader, spool drainer) answers the hub and is running, else 0",
            ["worker"],
            registry=registry,
        ),
        circuit_breaker_state=CIRCUIT_BREAKER_STATE,
        dlq_size=Gauge(
            "dlq_size",
            "Dead letters stored in PostgreSQL",
            registry=registry,
        ),
        partition_oldest_uncommitted_age_seconds=Gauge(
            "partition_oldest_uncommitted_age_seconds",
            "Seconds since the owner read the oldest record of a partition it has not committed yet; 0 when none is",
            ["topic", "partition"],
            registry=registry,
        ),
        partition_commit_failures=Counter(
            "partition_commit_failures",
            "Commit attempts of a partition's batches that failed, by reason: unavailable (PostgreSQL, the writer or "
            "the broker down; retried as is), rejected (refused for a data reason; the batch is split), fenced, other",
            ["topic", "partition", "reason"],
            registry=registry,
        ),
        http_requests=Counter(
            "http_requests",
            "HTTP requests answered by the API, by route template, method and status code",
            ["route", "method", "status"],
            registry=registry,
        ),
        validation_errors=Counter(
            "validation_errors",
            "Events the API rejected as invalid, by reason",
            ["reason"],
            registry=registry,
        ),
        publish_duration_seconds=Histogram(
            "publish_duration_seconds",
            "Time from the API handing an event to the producer until the broker acknowledged it",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        spool_depth=Gauge(
            "spool_depth",
            "Events in the durable ingest spool waiting for the broker",
            registry=registry,
        ),
        rate_limited=Counter(
            "rate_limited",
            "Requests refused with 429 by the per-key rate limit, by key name (the first 100 names a replica sees, "
            "then 'other')",
            ["key"],
            registry=registry,
        ),
        rate_limit_fallback=Counter(
            "rate_limit_fallback",
            "Rate-limit decisions an API replica took alone (its share of the key's limit) because the limiter actor "
            "did not answer",
            registry=registry,
        ),
    )


# The process's eventpipe registry. It holds no process or platform collectors, so whatever gathers samples from
# many processes merges pipeline metrics only.
REGISTRY = CollectorRegistry()
METRICS = build(REGISTRY)
