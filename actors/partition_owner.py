"""PartitionOwner: the Ray actor that owns one Kafka partition: it builds the real collaborators (the leader's claim,
the partition's consumer, the dead-letter producer, its checkpoint writer) and runs pipelines.owner_loop in a thread.

It holds no business rules and no loop logic (OwnerLoop does) and never advances an offset except through a fenced
commit.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import ray
from ray.exceptions import RayError

from actors import names
from actors.metrics_hub import start_metrics_push
from actors.remote_errors import describe, explain_commit_failure, retry_after_s
from cluster.adapters.checkpoint_store import Lease
from cluster.adapters.dlq_publisher import DeadLetterPublisher
from cluster.adapters.enrichment_client import EnrichmentClient
from cluster.adapters.kafka_config import consumer_config, producer_config
from cluster.adapters.kafka_source import PartitionSource
from cluster.adapters.owner_commit import OwnerCommitter
from cluster.adapters.tenant_directory import TenantDirectory
from cluster.observability import metrics as catalogue  # a module: Ray pickles methods by value
from cluster.observability.event_spans import ProcessingSpans
from cluster.observability.logs import setup_logging
from cluster.observability.recording import (
    CommitFailure,
    record_commit,
    record_commit_failure,
    record_processing,
    track_uncommitted_age,
)
from cluster.observability.tracing import Tracing
from cluster.settings import Settings
from pipelines.batch import CommitBatch, CommitOutcome, DeadLetter, ProcessedEvent
from pipelines.engine import PartitionProcessor
from pipelines.outcome import Outcome
from pipelines.owner_loop import Claim, ClaimUnavailable, CommitReports, Connection, Hooks, LoopPolicy, OwnerLoop
from pipelines.owner_status import OwnerStatus
from pipelines.policies.gaps import GapPolicy
from pipelines.policies.retry import RetryPolicy
from pipelines.policies.stall import StallPolicy
from pipelines.registry import default_registry
from pipelines.tenants import KnownTenants


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class PartitionOwner:
    def __init__(self, settings: Settings, topic: str, partition: int) -> None:
        settings = settings.in_process()  # secrets come from this process's environment, not Ray
        setup_logging(settings, "partition-owner")
        self._spans = ProcessingSpans(Tracing.start(settings, "partition-owner"))
        self._settings = settings
        self._stop = threading.Event()
        enrichment = EnrichmentClient.from_settings(settings)  # None when no enrichment_url is configured
        registry = default_registry(
            settings.base_currency,
            settings.risk_amount_threshold,
            enrichment,
            event_time_min=settings.event_time_min,
            event_time_max_ahead_s=settings.event_time_max_ahead_s + settings.event_time_owner_grace_s,
        )
        self._types = frozenset(registry.types)
        self._tenant_directory = TenantDirectory(settings.database_url.get_secret_value())
        # Raw ingest records name their tenant in a header: judged against this cache, refreshed before a batch.
        tenants = KnownTenants(self._tenant_directory.names, time.monotonic)
        processor = PartitionProcessor(
            registry,
            settings.ingest_topic,
            RetryPolicy(settings.retry_attempts, settings.retry_base_s, settings.retry_max_s),
            max_record_bytes=settings.max_event_bytes,
            on_outcome=self._observe,
            known_tenants=tenants,
        )
        self._topic, self._partition = topic, partition
        self._owner_id = f"{topic}:{partition}:{uuid.uuid4().hex[:8]}"
        self._loop = OwnerLoop(
            OwnerStatus(topic, partition, self._owner_id, os.getpid()),
            LoopPolicy(
                ingest_topic=settings.ingest_topic,
                batch_max=settings.consume_batch_max,
                batch_timeout_s=settings.consume_batch_timeout_s,
                gaps=GapPolicy(settings.offset_gap_grace_s),
                stall=StallPolicy(settings.owner_stalled_after_s),
            ),
            claim=self._claim,
            connect=self._connect,
            processor=processor,
            hooks=Hooks(spans=self._spans, committed=self._record_commit),
            clock=time,
            stop=self._stop,
            enrichment=enrichment,
            tenants=tenants,
        )
        track_uncommitted_age(catalogue.METRICS, topic, partition, self._loop.uncommitted_age)
        start_metrics_push(settings, "owner")
        self._thread = threading.Thread(target=self._loop.run, name=f"owner-{topic}-{partition}", daemon=True)
        self._thread.start()

    # -- Ray-facing API -------------------------------------------------------------------------
    def status(self) -> dict[str, object]:
        """The owner's state and counters (see OwnerLoop.status)."""
        return self._loop.status()

    def stop(self, timeout_s: float = 10.0) -> dict[str, object]:
        """Finish the batch in flight, then stop reading. Used for graceful shutdown."""
        self._stop.set()
        self._thread.join(timeout_s)
        self._loop.mark_stopped()
        if not self._thread.is_alive():
            self._tenant_directory.close()  # the loop's thread is the only other user of its connection
        return self.status()

    # -- the loop's collaborators (called on the loop's thread) ---------------------------------
    def _observe(self, outcome: ProcessedEvent | DeadLetter, seconds: float, status: Outcome) -> None:
        """Each record's outcome and processing time, as the engine hands them over."""
        record_processing(catalogue.METRICS, outcome, seconds, self._types)
        self._spans.observe(outcome, seconds, status)

    def _record_commit(self, batch: CommitBatch, outcome: CommitOutcome, committed_at: float) -> None:
        record_commit(
            catalogue.METRICS,
            batch,
            outcome,
            committed_at,
            ingest_topic=self._settings.ingest_topic,
            known_types=self._types,
        )

    def _claim(self) -> Lease:
        """Ask the leader for a new epoch. The leader may be missing or restarting (a claim cut short by its death is
        asked again: a duplicate claim can only fence us, and the leader restarts fenced owners), on standby (another
        cluster holds the leader lease), or refusing fast while PostgreSQL is down (its breaker's retry_after)."""
        try:
            leader = ray.get_actor(names.LEADER)
            return ray.get(leader.assign.remote(self._topic, self._partition, self._owner_id), timeout=30)
        except (ValueError, RayError) as exc:  # ValueError: no leader by that name (yet)
            raise ClaimUnavailable(describe(exc), retry_after_s(exc)) from exc

    @contextmanager
    def _connect(self, lease: Claim, reports: CommitReports) -> Iterator[Connection]:
        """The partition's consumer, the dead-letter producer and the writer's handle, for one run of the loop."""
        s = self._settings

        def failed(failure: CommitFailure, error: str) -> None:
            reports.commit_failed(error)
            record_commit_failure(catalogue.METRICS, self._topic, self._partition, failure)

        # The writer first: while it restarts this raises, and no consumer or producer is left behind to leak.
        writer = ray.get_actor(names.writer_name(names.writer_for(self._topic, self._partition, s.checkpoint_writers)))
        source = PartitionSource(
            consumer_config(s.kafka_bootstrap, "eventpipe-owners", s.consumer_fetch_wait_ms),
            self._topic,
            self._partition,
        )
        dlq_config = producer_config(s.kafka_bootstrap, linger_ms=0, message_max_bytes=s.kafka_message_max_bytes)
        try:
            dlq = DeadLetterPublisher(dlq_config, s.dlq_topic)
        except BaseException:
            source.close()
            raise
        committer = OwnerCommitter(
            lambda encoded: ray.get(writer.commit.remote(encoded), timeout=60),
            dlq,
            explain_commit_failure,
            on_failure=failed,
            on_success=reports.commit_succeeded,
        )
        try:
            yield Connection(source, committer)
        finally:
            source.close()
            dlq.close()
