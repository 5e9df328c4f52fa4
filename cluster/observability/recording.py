"""What the pipeline records in the metric catalogue, derived from its own values: a committed batch and its outcome,
one event's processing time, an invalid event's reason.

It records into a `Metrics` it is given and never decides anything about the events themselves. Label values are
kept to bounded sets (known event types, error type codes) so no input can create unbounded series.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from enum import StrEnum
from functools import lru_cache
from typing import TypeVar

from cluster.observability.metrics import Metrics
from pipelines.batch import CommitBatch, CommitOutcome, DeadLetter, ProcessedEvent
from pipelines.errors import InvalidEvent
from pipelines.outcome import Outcome

UNKNOWN = "unknown"

M = TypeVar("M")


@lru_cache(maxsize=4096)
def labelled(metric: M, *values: str) -> M:
    """`metric.labels(*values)`, looked up once: the child of a label set never changes (no metric here is ever
    `remove`d or `clear`ed), and the hot path records per event. Label values are bounded sets, so is this cache."""
    return metric.labels(*values)  # type: ignore[attr-defined, no-any-return]


class CommitFailure(StrEnum):
    """Why a commit attempt of a partition's batch failed: the `reason` of `partition_commit_failures_total`."""

    UNAVAILABLE = "unavailable"  # PostgreSQL, the checkpoint writer or the broker down: retried as it is
    REJECTED = "rejected"  # refused for what the batch holds (a data error, an unencodable event): it is split
    FENCED = "fenced"  # a newer epoch owns the partition: the owner stops
    OTHER = "other"  # anything else (a bug, out of memory): retried 3 times (owner_commit), then split as rejected


def type_label(event_type: str | None, known_types: Collection[str]) -> str:
    """The event type as a label value: a registered type, else "unknown" (records may claim any type)."""
    return event_type if event_type in known_types else UNKNOWN


def invalid_reason(exc: InvalidEvent) -> str:
    """The reason label of a rejected event: the code of its first field error (`missing`, `unknown_type`, ...)."""
    return exc.errors[0].type if exc.errors else "validation_failed"


def outcome_counts(
    batch: CommitBatch, outcome: CommitOutcome, known_types: Collection[str]
) -> Counter[tuple[str, str]]:
    """Events of a committed batch by (type, status): processed, dead_lettered, or duplicate (an id PostgreSQL already
    had, or seen twice in the batch)."""
    known = set(outcome.duplicate_ids)  # (tenant, id): an event's identity
    type_of: dict[tuple[str | None, str], str] = {}
    counts: Counter[tuple[str, str]] = Counter()
    for event in (*batch.processed, *batch.dead):
        label = type_label(event.type, known_types)
        if event.event_id is not None:
            type_of[(event.tenant, event.event_id)] = label
        if event.event_id is not None and (event.tenant, event.event_id) in known:
            counts[(label, Outcome.DUPLICATE)] += 1
        else:
            counts[(label, event.outcome)] += 1
    for event_id, _offset, tenant in batch.in_batch_duplicates:
        counts[(type_of.get((tenant, event_id), UNKNOWN), Outcome.DUPLICATE)] += 1
    return counts


def record_commit(
    metrics: Metrics,
    batch: CommitBatch,
    outcome: CommitOutcome,
    committed_at: float,
    *,
    ingest_topic: str,
    known_types: Collection[str],
) -> None:
    """Called once per batch, after it committed: outcomes, batch size, end-to-end latency of the new events, and,
    for the raw ingest topic, the events that entered the pipeline there."""
    counts = outcome_counts(batch, outcome, known_types)
    for (event_type, status), n in counts.items():
        labelled(metrics.events_processed, event_type, status).inc(n)
    metrics.commit_batch_size.observe(len(batch.processed) + len(batch.dead) + len(batch.in_batch_duplicates))
    known = set(outcome.duplicate_ids)
    received: Counter[str] = Counter()
    for event in (*batch.processed, *batch.dead):
        if event.event_id is not None and (event.tenant, event.event_id) in known:
            continue
        label = type_label(event.type, known_types)
        labelled(metrics.end_to_end_latency_seconds, label).observe(max(0.0, committed_at - event.received_at))
        received[label] += 1
    if batch.topic == ingest_topic:
        for label, n in received.items():
            labelled(metrics.events_received, label).inc(n)


def record_processing(
    metrics: Metrics, event: ProcessedEvent | DeadLetter, seconds: float, known_types: Collection[str]
) -> None:
    """One record's decode, validation and handling time (retries included)."""
    labelled(metrics.processing_duration_seconds, type_label(event.type, known_types)).observe(seconds)


def record_commit_failure(metrics: Metrics, topic: str, partition: int, failure: CommitFailure) -> None:
    """One failed commit attempt of a partition's batch."""
    metrics.partition_commit_failures.labels(topic, str(partition), failure.value).inc()


def track_uncommitted_age(metrics: Metrics, topic: str, partition: int, age_s: Callable[[], float]) -> None:
    """`partition_oldest_uncommitted_age_seconds` of a partition is read from `age_s` whenever metrics are collected,
    so a partition stuck inside one commit still shows its age growing."""
    metrics.partition_oldest_uncommitted_age_seconds.labels(topic, str(partition)).set_function(age_s)
