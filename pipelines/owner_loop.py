"""OwnerLoop: one partition owner's loop in plain Python: claim an epoch, read batches from the checkpoint on, wait for
a hole to fill (or skip it after the grace), process, commit through the bisector, stop after the batch in flight,
and start over with backoff after a failure.

It imports no runtime, broker or database (its claim, source, committer, clock and stop signal are given to it), never
processes a record below the offset it expects, and never advances that offset except by a commit.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from pipelines.batch import CommitBatch, CommitOutcome, SourceRecord, assemble
from pipelines.engine import PartitionProcessor
from pipelines.enrichment import merchant_ids
from pipelines.errors import Fenced
from pipelines.owner_status import FINAL_OWNER_STATES, OwnerState, OwnerStatus, StageTimings
from pipelines.policies.bisect import Abandoned, BatchBisector, Committed, Refusal
from pipelines.policies.gaps import GapPolicy, GapState, split_at_gap
from pipelines.policies.stall import StallPolicy, StallWatch
from pipelines.tenants import claimed_tenants

log = logging.getLogger(__name__)


# -- what the loop is given ---------------------------------------------------------------------------------------
class Claim(Protocol):
    """An epoch of the partition and the offset its checkpoint says to read next."""

    @property
    def epoch(self) -> int: ...
    @property
    def next_offset(self) -> int: ...


class ClaimUnavailable(Exception):
    """Nobody can give an epoch now (no leader yet, a leader on standby, PostgreSQL down): ask again later."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s  # the refuser's hint (an open breaker's), honoured over the backoff


class Source(Protocol):
    """One partition of the log, positioned by an offset the loop owns."""

    def seek(self, offset: int) -> None: ...
    def poll_batch(self, max_records: int, timeout_s: float) -> list[SourceRecord]: ...


class Committer(Protocol):
    """One fenced commit of a (sub-)batch: an outcome or a refusal for what it holds; raises Fenced."""

    def begin(self) -> None: ...
    def commit(
        self, batch: CommitBatch, trace_contexts: Mapping[int, str] | None = None
    ) -> CommitOutcome | Refusal: ...


class Connection(NamedTuple):
    source: Source
    committer: Committer


class CommitReports(Protocol):
    """What a committer tells the loop about each attempt, for the status and the stall watch."""

    def commit_failed(self, error: str) -> None: ...
    def commit_succeeded(self) -> None: ...


# Opens what one run of the loop reads from and commits through, for the epoch it holds; closed when the run ends.
Connect = Callable[[Claim, CommitReports], AbstractContextManager[Connection]]


class Spans(Protocol):
    """The batch's processing spans: begun before processing, ended by its commit (`trace_contexts` go with it)."""

    def begin(self, records: Sequence[SourceRecord]) -> Any: ...
    def committed(self, traced: Any, batch: CommitBatch, outcome: CommitOutcome, started_ns: int) -> None: ...


class Prefetcher(Protocol):
    def prefetch(self, merchant_ids: Collection[str]) -> None: ...


class TenantCache(Protocol):
    """pipelines.tenants.KnownTenants: made fit to judge a batch's claimed tenants before the engine looks them up."""

    def prepare(self, names: Collection[str]) -> None: ...


class Clock(Protocol):
    """`time` satisfies it: monotonic for intervals, wall time for what is reported."""

    def monotonic(self) -> float: ...
    def time(self) -> float: ...
    def time_ns(self) -> int: ...


class StopSignal(Protocol):
    """`threading.Event` satisfies it: `wait` returns True as soon as a stop is requested."""

    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


@dataclass(frozen=True)
class LoopPolicy:
    ingest_topic: str
    batch_max: int
    batch_timeout_s: float
    gaps: GapPolicy
    stall: StallPolicy
    hole_recheck_s: float = 0.05  # a visibility race heals within milliseconds: read the hole again this soon
    restart_backoff_s: tuple[float, float] = (0.5, 10.0)  # first wait after a failed run, and the most, doubling
    claim_backoff_s: tuple[float, float] = (0.5, 5.0)
    claim_jitter_s: float = 0.25


@dataclass(frozen=True)
class Hooks:
    """Where the loop's work is observed; `committed` is called once per committed batch with the wall time."""

    spans: Spans
    committed: Callable[[CommitBatch, CommitOutcome, float], None]


# -- the loop -----------------------------------------------------------------------------------------------------
class OwnerLoop:
    """`run` is the owner's thread; `status`, `mark_stopped` and `uncommitted_age` may be called from any other."""

    def __init__(
        self,
        status: OwnerStatus,
        policy: LoopPolicy,
        *,
        claim: Callable[[], Claim],
        connect: Connect,
        processor: PartitionProcessor,
        hooks: Hooks,
        clock: Clock,
        stop: StopSignal,
        enrichment: Prefetcher | None = None,
        tenants: TenantCache | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._status = status
        self._policy = policy
        self._claim_fn = claim
        self._connect = connect
        self._processor = processor
        self._hooks = hooks
        self._clock = clock
        self._stop = stop
        self._enrichment = enrichment
        self._tenants = tenants
        self._rng = rng or random.Random()
        self._stall = StallWatch(policy.stall)
        self._timings = StageTimings()

    # -- read from other threads --------------------------------------------------------------------------------
    def status(self) -> dict[str, object]:
        """The owner's state and counters. A running owner whose commits have failed for `stalled_after_s` without
        one success says `stalled` (the metrics hub then reports it unhealthy)."""
        st = self._status
        st.timings_ms = self._timings.summary()
        out = dict(st.__dict__)
        now = self._clock.time()
        out["state"] = st.state.value
        if st.state is OwnerState.RUNNING and self._stall.stalled(now):
            out["state"] = OwnerState.STALLED.value
        out["failing_for_s"] = round(self._stall.failing_for(now), 3)
        out["oldest_uncommitted_s"] = round(self._stall.uncommitted_age(now), 3)
        return out

    def mark_stopped(self) -> None:
        """A stop was asked for (and the loop given its time to finish the batch in flight): say so, unless the owner
        had already ended for a reason of its own."""
        if self._status.state not in FINAL_OWNER_STATES:
            self._status.state = OwnerState.STOPPED

    def uncommitted_age(self) -> float:
        return self._stall.uncommitted_age(self._clock.time())

    # -- the loop's thread --------------------------------------------------------------------------------------
    def run(self) -> None:
        """Until stopped: a fenced or abandoned owner ends for good; any other failure is logged, backed off and the
        loop started over from a new claim (so from the checkpoint)."""
        st = self._status
        backoff, most = self._policy.restart_backoff_s
        while not self._stop.is_set():
            try:
                self._run()
                return
            except Abandoned as exc:
                st.state = OwnerState.ABANDONED
                st.last_error = str(exc)
                log.critical("owner %s stops with a batch it could not commit: %s", st.owner_id, exc)
                return
            except Fenced as exc:
                st.state = OwnerState.FENCED
                st.last_error = str(exc)
                log.error("owner %s fenced: %s; it stops and commits nothing more", st.owner_id, exc)
                return
            except ClaimUnavailable:
                return  # raised only once a stop was asked for while waiting to claim: nothing held, nothing failed
            except Exception as exc:  # noqa: BLE001 - keep the partition alive: log, back off, start over
                st.state = OwnerState.ERROR
                st.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("owner %s failed; restarting its loop in %.1fs", st.owner_id, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, most)

    def _claim(self) -> Claim:
        """Ask for a new epoch until one is given; an unavailable claim is asked again with backoff (its hint, when
        it gives one, honoured), and raised when a stop is requested meanwhile."""
        st = self._status
        delay, most = self._policy.claim_backoff_s
        while True:
            try:
                return self._claim_fn()
            except ClaimUnavailable as exc:
                hint = exc.retry_after_s
                wait = (hint if hint is not None else delay) + self._rng.uniform(0, self._policy.claim_jitter_s)
                st.last_error = f"claim: {exc.reason}"
                log.warning(
                    "waiting to claim %s[%d] (%s); retrying in %.1fs", st.topic, st.partition, st.last_error, wait
                )
                if self._stop.wait(wait):
                    raise
                delay = min(delay * 2, most)

    def _run(self) -> None:
        st, p = self._status, self._policy
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
        with self._connect(lease, self) as (source, committer):
            expected = lease.next_offset
            gaps = GapState(p.gaps)
            source.seek(expected)
            while not self._stop.is_set():
                # a consumer may still hand over what it fetched before a seek: nothing below `expected` is taken
                records = [r for r in source.poll_batch(p.batch_max, p.batch_timeout_s) if r.offset >= expected]
                if not records:
                    continue
                head, _ = split_at_gap(records, expected)
                skipped: tuple[int, int] | None = None
                if not head:
                    if not gaps.observe(expected, self._clock.monotonic()):
                        # Wait for the hole to fill: read again from it (a visibility race heals within ms).
                        source.seek(expected)
                        self._stop.wait(p.hole_recheck_s)
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

    def _process_and_commit(
        self,
        committer: Committer,
        lease: Claim,
        records: list[SourceRecord],
        expected: int,
        skipped: tuple[int, int] | None,
    ) -> int:
        """Process and commit one batch of consecutive records from `expected`; the next offset to expect.

        A stop requested meanwhile is not looked at: the batch in flight is finished (retries included)."""
        st, clock = self._status, self._clock
        st.last_record_at = clock.time()
        self._stall.read(st.last_record_at)
        st.in_flight = True
        t0 = clock.monotonic()
        if self._enrichment is not None:
            # One lookup of the batch's uncached merchants, so a slow service costs a batch one timeout at most.
            self._enrichment.prefetch(merchant_ids(records, self._policy.ingest_topic))
        if self._tenants is not None:
            # Raises TenantsUnavailable when a header cannot be judged (PostgreSQL down): the run starts over.
            self._tenants.prepare(claimed_tenants(records, self._policy.ingest_topic))
        te = clock.monotonic()
        traced = self._hooks.spans.begin(records)
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
        t1, commit_started_ns = clock.monotonic(), clock.time_ns()
        committer.begin()

        def commit(sub: CommitBatch) -> CommitOutcome | Refusal:
            return committer.commit(sub, traced.trace_contexts)

        done = BatchBisector(commit, self._keep_trying).commit(batch, outcomes, records)
        t2 = clock.monotonic()
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
        st.last_commit_at = clock.time()
        return batch.next_offset

    def _observe_commit(self, done: Committed, traced: Any, commit_started_ns: int) -> None:
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
            self._hooks.spans.committed(traced, done.batch, done.outcome, commit_started_ns)
            self._hooks.committed(done.batch, done.outcome, self._clock.time())
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

    # -- CommitReports: the committer's word on each attempt ----------------------------------------------------
    def commit_failed(self, error: str) -> None:
        st = self._status
        st.commit_failures += 1
        st.last_error = st.commit_error = error
        self._stall.failed(self._clock.time())

    def commit_succeeded(self) -> None:
        self._status.commit_error = None
        self._stall.progressed()
