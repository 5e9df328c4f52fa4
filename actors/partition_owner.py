"""PartitionOwner: the one live reader of one Kafka partition; consumes bounded batches and hands them to a writer.

It holds no business rules (PartitionProcessor does) and never advances an offset except through a fenced commit.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import ray
from ray.exceptions import RayError

from actors import names
from actors.metrics_hub import start_metrics_push
from actors.remote_errors import describe, explain_commit_failure, retry_after_s
from cluster.adapters.checkpoint_store import Fenced, Lease
from cluster.adapters.dlq_publisher import DeadLetterPublisher
from cluster.adapters.enrichment_client import EnrichmentClient
from cluster.adapters.kafka_config import consumer_config, producer_config
from cluster.adapters.kafka_source import PartitionSource
from cluster.adapters.owner_commit import OwnerCommitter
from cluster.observability import metrics as catalogue  # a module: Ray pickles methods by value
from cluster.observability.event_spans import BatchTrace, ProcessingSpans
from cluster.observability.logs import setup_logging
from cluster.observability.owner_state import OwnerState
from cluster.observability.recording import (
    CommitFailure,
    record_commit,
    record_commit_failure,
    record_processing,
    track_uncommitted_age,
)
from cluster.observability.tracing import Tracing
from cluster.settings import Settings
from pipelines.batch import CommitBatch, CommitOutcome, DeadLetter, ProcessedEvent, SourceRecord, assemble
from pipelines.engine import PartitionProcessor
from pipelines.enrichment import merchant_ids
from pipelines.errors import Outcome
from pipelines.policies.bisect import Abandoned, BatchBisector, Committed, Refusal
from pipelines.policies.gaps import GapPolicy, GapState, split_at_gap
from pipelines.policies.retry import RetryPolicy
from pipelines.policies.stall import StallPolicy, StallWatch
from pipelines.registry import default_registry

log = logging.getLogger(__name__)


@dataclass
class OwnerStatus:
    topic: str
    partition: int
    owner_id: str
    pid: int
    state: OwnerState = OwnerState.STARTING  # STALLED is never stored: status() derives it
    epoch: int | None = None
    committed_offset: int | None = None
    batches: int = 0
    events: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    last_commit_at: float | None = None
    last_record_at: float | None = None
    last_error: str | None = None
    commit_error: str | None = None  # why the batch in flight has not committed yet; None once it has
    in_flight: bool = False
    skipped_offsets: int = 0
    already_committed: int = 0  # retries that found their batch committed (the COMMIT's acknowledgement was lost)
    last_batch_size: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)  # p50/p99 of recent batches, per stage
    commit_failures: int = 0
    store_rejected: int = 0  # records dead-lettered because PostgreSQL refused them (or their rows did not encode)


class StageTimings:
    """Recent per-batch stage durations, for status and profiling (not the Prometheus histograms)."""

    def __init__(self, window: int = 2000) -> None:
        self._samples: dict[str, deque[float]] = {}
        self._window = window

    def add(self, **seconds: float) -> None:
        for stage, value in seconds.items():
            self._samples.setdefault(stage, deque(maxlen=self._window)).append(value)

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for stage, values in self._samples.items():
            ordered = sorted(values)
            out[f"{stage}_p50"] = round(ordered[len(ordered) // 2] * 1000, 2)
            out[f"{stage}_p99"] = round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2)
        return out


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class PartitionOwner:
    def __init__(self, settings: Settings, topic: str, partition: int) -> None:
        settings = settings.in_process()  # secrets come from this process's environment, not Ray
        setup_logging(settings, "partition-owner")
        self._spans = ProcessingSpans(Tracing.start(settings, "partition-owner"))
        self._settings = settings
        self._status = OwnerStatus(topic, partition, f"{topic}:{partition}:{uuid.uuid4().hex[:8]}", os.getpid())
        self._stop = threading.Event()
        self._timings = StageTimings()
        self._enrichment = EnrichmentClient.from_settings(settings)  # None when no enrichment_url is configured
        registry = default_registry(
            settings.base_currency,
            settings.risk_amount_threshold,
            self._enrichment,
            event_time_min=settings.event_time_min,
            event_time_max_ahead_s=settings.event_time_max_ahead_s + settings.event_time_owner_grace_s,
        )
        self._types = frozenset(registry.types)
        self._processor = PartitionProcessor(
            registry,
            settings.ingest_topic,
            RetryPolicy(settings.retry_attempts, settings.retry_base_s, settings.retry_max_s),
            max_record_bytes=settings.max_event_bytes,
            on_outcome=self._observe,
        )
        self._stall = StallWatch(StallPolicy(settings.owner_stalled_after_s))
        track_uncommitted_age(catalogue.METRICS, topic, partition, lambda: self._stall.uncommitted_age(time.time()))
        start_metrics_push(settings, "owner")
        self._thread = threading.Thread(target=self._run_guarded, name=f"owner-{topic}-{partition}", daemon=True)
        self._thread.start()

    # -- Ray-facing API -------------------------------------------------------------------------
    def status(self) -> dict[str, object]:
        """The owner's state and counters. A running owner whose commits have failed for `owner_stalled_after_s`
        without one success says `stalled` (the metrics hub then reports it unhealthy)."""
        st = self._status
        st.timings_ms = self._timings.summary()
        out = dict(st.__dict__)
        now = time.time()
        out["state"] = st.state.value
        if st.state is OwnerState.RUNNING and self._stall.stalled(now):
            out["state"] = OwnerState.STALLED.value
        out["failing_for_s"] = round(self._stall.failing_for(now), 3)
        out["oldest_uncommitted_s"] = round(self._stall.uncommitted_age(now), 3)
        return out

    def stop(self, timeout_s: float = 10.0) -> dict[str, object]:
        """Finish the batch in flight, then stop reading. Used for graceful shutdown."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self._status.state not in (OwnerState.FENCED, OwnerState.ABANDONED, OwnerState.ERROR):
            self._status.state = OwnerState.STOPPED
        return self.status()

    # -- the loop -------------------------------------------------------------------------------
    def _observe(self, outcome: ProcessedEvent | DeadLetter, seconds: float, status: Outcome) -> None:
        """Each record's outcome, processing time and status, as the engine hands them over (loop thread)."""
        record_processing(catalogue.METRICS, outcome, seconds, self._types)
        self._spans.observe(outcome, seconds, status)

    def _run_guarded(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._run()
                return
            except Abandoned as exc:
                self._status.state = OwnerState.ABANDONED
                self._status.last_error = str(exc)
                log.critical("owner %s stops with a batch it could not commit: %s", self._status.owner_id, exc)
                return
            except Fenced as exc:
                self._status.state = OwnerState.FENCED
                self._status.last_error = str(exc)
                log.error("owner %s fenced: %s; it stops and commits nothing more", self._status.owner_id, exc)
                return
            except Exception as exc:  # noqa: BLE001 - keep the partition alive: log, back off, start over
                self._status.state = OwnerState.ERROR
                self._status.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("owner %s failed; restarting its loop in %.1fs", self._status.owner_id, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _claim(self) -> Lease:
        """Ask the leader for a new epoch until it gives one.

        The leader may be missing or restarting (a claim cut short by its death is asked again: a duplicate claim can
        only fence us, and the leader restarts fenced owners), on standby (another cluster holds the leader lease),
        or refusing fast while PostgreSQL is down (its breaker's retry_after is honoured).
        """
        st = self._status
        delay = 0.5
        while True:
            try:
                leader = ray.get_actor(names.LEADER)
                return ray.get(leader.assign.remote(st.topic, st.partition, st.owner_id), timeout=30)
            except (ValueError, RayError) as exc:  # ValueError: no leader by that name (yet)
                hint = retry_after_s(exc)
                wait = (hint if hint is not None else delay) + random.uniform(0, 0.25)
                st.last_error = f"claim: {describe(exc)}"
                log.warning(
                    "waiting to claim %s[%d] (%s); retrying in %.1fs", st.topic, st.partition, st.last_error, wait
                )
                if self._stop.wait(wait):
                    raise
                delay = min(delay * 2, 5.0)

    def _run(self) -> None:
        s, st = self._settings, self._status
        lease = self._claim()
        st.epoch, st.committed_offset, st.state = lease.epoch, lease.next_offset, OwnerState.RUNNING
        log.info(
            "owner %s holds %s[%d] at epoch %d from offset %d",
            st.owner_id,
            st.topic,
            st.partition,
            lease.epoch,
            lease.next_offset,
        )
        source = PartitionSource(
            consumer_config(s.kafka_bootstrap, "eventpipe-owners", s.consumer_fetch_wait_ms), st.topic, st.partition
        )
        dlq_config = producer_config(s.kafka_bootstrap, linger_ms=0, message_max_bytes=s.kafka_message_max_bytes)
        dlq = DeadLetterPublisher(dlq_config, s.dlq_topic)
        writer = ray.get_actor(names.writer_name(names.writer_for(st.topic, st.partition, s.checkpoint_writers)))
        committer = OwnerCommitter(
            lambda encoded: ray.get(writer.commit.remote(encoded), timeout=60),
            dlq,
            explain_commit_failure,
            on_failure=self._failed,
            on_success=self._succeeded,
        )
        expected = lease.next_offset
        gaps = GapState(GapPolicy(s.offset_gap_grace_s))
        source.seek(expected)
        try:
            while not self._stop.is_set():
                records = [
                    r for r in source.poll_batch(s.consume_batch_max, s.consume_batch_timeout_s) if r.offset >= expected
                ]
                if not records:
                    continue
                head, _ = split_at_gap(records, expected)
                skipped: tuple[int, int] | None = None
                if not head:
                    if not gaps.observe(expected, time.monotonic()):
                        # Wait for the hole to fill: read again from it (a visibility race heals within ms).
                        source.seek(expected)
                        self._stop.wait(0.05)
                        continue
                    log.warning(
                        "%s[%d]: offsets %d..%d stayed absent for %.0fs; skipping them",
                        st.topic,
                        st.partition,
                        expected,
                        records[0].offset - 1,
                        gaps.policy.grace_s,
                    )
                    skipped = (expected, records[0].offset)
                    head, _ = split_at_gap(records, records[0].offset)
                gaps.clear()
                if len(head) < len(records):
                    source.seek(head[-1].offset + 1)  # what follows a hole is read again after this commit
                expected = self._process_and_commit(committer, lease, head, expected, skipped)
        finally:
            source.close()
            dlq.close()

    def _process_and_commit(
        self,
        committer: OwnerCommitter,
        lease: Lease,
        records: list[SourceRecord],
        expected: int,
        skipped: tuple[int, int] | None,
    ) -> int:
        st = self._status
        st.last_record_at = time.time()
        self._stall.read(st.last_record_at)
        st.in_flight = True
        t0 = time.perf_counter()
        if self._enrichment is not None:
            # One lookup of the batch's uncached merchants, so a slow service costs a batch one timeout at most.
            self._enrichment.prefetch(merchant_ids(records, self._settings.ingest_topic))
        te = time.perf_counter()
        traced = self._spans.begin(records)
        outcomes = self._processor.outcomes(records, st.last_record_at)
        batch = assemble(
            outcomes,
            topic=st.topic,
            partition=st.partition,
            epoch=lease.epoch,
            owner_id=st.owner_id,
            expected_offset=expected,
            next_offset=records[-1].offset + 1,
            consumed_at=st.last_record_at,
            skipped=skipped,
        )
        t1, commit_started_ns = time.perf_counter(), time.time_ns()
        committer.begin()

        def commit(sub: CommitBatch) -> CommitOutcome | Refusal:
            return committer.commit(sub, traced.trace_contexts)

        done = BatchBisector(commit, self._keep_trying).commit(batch, outcomes, records)
        t2 = time.perf_counter()
        self._stall.caught_up()
        self._observe_commit(done, traced, commit_started_ns)
        self._timings.add(enrich=te - t0, process=t1 - te, commit_round_trip=t2 - t1, store=done.outcome.duration_s)
        st.last_batch_size = len(records)
        st.in_flight = False
        st.committed_offset = batch.next_offset
        st.batches += 1
        st.events += done.outcome.new_events
        st.duplicates += done.outcome.duplicates
        st.dead_letters += done.outcome.dead_letters
        st.store_rejected += len(done.isolated)
        st.already_committed += int(done.outcome.already_committed)
        st.skipped_offsets += (skipped[1] - skipped[0]) if skipped else 0
        st.last_commit_at = time.time()
        return batch.next_offset

    def _observe_commit(self, done: Committed, traced: BatchTrace, commit_started_ns: int) -> None:
        """Spans, metrics and log lines of a committed batch. They only observe: a failure here is logged, never
        raised, since the batch is committed and reading it again would change nothing."""
        st = self._status
        for isolated in done.isolated:
            log.warning(
                "%s[%d]@%d dead-lettered as %s%s: %s",
                st.topic,
                st.partition,
                isolated.offset,
                isolated.refusal.kind,
                " (raw bytes only)" if isolated.bare else "",
                isolated.refusal.reason,
            )
        if done.refusals:
            log.warning(
                "%s[%d] %d..%d committed in %d transactions after %d refusals; %d records isolated",
                st.topic,
                st.partition,
                done.batch.expected_offset,
                done.batch.next_offset,
                done.commits,
                done.refusals,
                len(done.isolated),
            )
        try:
            self._spans.committed(traced, done.batch, done.outcome, commit_started_ns)
            record_commit(
                catalogue.METRICS,
                done.batch,
                done.outcome,
                time.time(),
                ingest_topic=self._settings.ingest_topic,
                known_types=self._types,
            )
        except Exception:  # noqa: BLE001 - an observation bug must not stop the partition: loud, not raised
            log.exception("observing the commit of %s[%d] failed", st.topic, st.partition)

    def _keep_trying(self, attempt: int, offset: int, refusal: Refusal) -> bool:
        """Even the bare dead letter of a record was refused: a bug in eventpipe, never an input's fault. Loud, and
        backed off; False once the owner is stopping."""
        st = self._status
        wait = min(30.0, 0.5 * 2 ** min(attempt, 6))
        st.last_error = f"bare dead letter of offset {offset} refused: {refusal.reason}"
        log.critical(
            "%s[%d]@%d: PostgreSQL refused even the bare dead letter (%s); the partition waits, retrying in %.1fs",
            st.topic,
            st.partition,
            offset,
            refusal.reason,
            wait,
        )
        return not self._stop.wait(wait)

    def _failed(self, failure: CommitFailure, error: str) -> None:
        st = self._status
        st.commit_failures += 1
        st.last_error = st.commit_error = error
        self._stall.failed(time.time())
        record_commit_failure(catalogue.METRICS, st.topic, st.partition, failure)

    def _succeeded(self) -> None:
        self._status.commit_error = None
        self._stall.progressed()
