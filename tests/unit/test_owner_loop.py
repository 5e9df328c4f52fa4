"""Specification of OwnerLoop, a partition owner's loop without Ray: it commits consecutive offsets from its claim and
never below, waits for a hole to fill and skips it only after the grace (reporting the range), retries and splits
commits, ends for good when fenced or abandoned, finishes the batch in flight when stopped, and starts over with
backoff after anything else.

Runs on a manual clock (every wait advances it) against an in-memory partition with holes and re-deliveries, the real
PartitionProcessor, BatchBisector and OwnerCommitter, and the scripted writer of the OwnerCommitter tests.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from cluster.adapters.checkpoint_store import Lease
from cluster.adapters.commit_doc import EncodedBatch
from cluster.adapters.owner_commit import OwnerCommitter
from pipelines.batch import CommitBatch, CommitOutcome, SourceRecord
from pipelines.engine import PartitionProcessor
from pipelines.owner_loop import Claim, ClaimUnavailable, CommitReports, Connection, Hooks, LoopPolicy, OwnerLoop
from pipelines.owner_status import OwnerState, OwnerStatus
from pipelines.policies.gaps import GapPolicy
from pipelines.policies.stall import StallPolicy
from pipelines.registry import default_registry
from tests.unit.test_bisect import TOPIC, action
from tests.unit.test_owner_commit import Dlq, Outage, Writer, explain

WALL = 1_764_000_000.0
REFUSED = CommitOutcome(committed=False, rejected='23514 new row for relation "results" violates check constraint')


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return WALL + self.now

    def time_ns(self) -> int:
        return int(self.time() * 1e9)

    def advance(self, seconds: float) -> None:
        self.now += seconds


class StopFlag:
    """threading.Event as the loop uses it, on the manual clock: a wait passes its time at once."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.waits: list[float] = []
        self.at = float("inf")  # a stop asked for at this time on the clock
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set or self.clock.now >= self.at

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        self.clock.advance(timeout or 0.0)
        return self.is_set()


class Runaway(BaseException):
    """A loop that keeps polling long after its work is done (no `except Exception` may keep it going)."""


class MemoryPartition:
    """One partition as a consumer sees it: records by offset, some absent for good (a compacted log's holes) or
    until a time on the clock (a broker's visibility race), and batches a consumer fetched before a seek that it
    hands over again. A poll that finds nothing waits its timeout, and calls `on_drained` (the tests stop there) once
    nothing more will appear."""

    def __init__(self, clock: ManualClock, offsets: Iterable[int], appear_at: dict[int, float] | None = None) -> None:
        self.clock = clock
        self.records = {o: SourceRecord(TOPIC, 0, o, None, action(o), 1_764_000_000_000) for o in offsets}
        self.appear_at = appear_at or {}
        self.position = 0
        self.seeks: list[int] = []
        self.polls = 0
        self.again: list[list[int]] = []  # batches handed over again before the position is honoured
        self.failures: list[Exception] = []  # raised by the next polls, one each
        self.on_drained: Callable[[], None] = lambda: None

    def seek(self, offset: int) -> None:
        self.seeks.append(offset)
        self.position = offset

    def poll_batch(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        self.polls += 1
        if self.polls > 10_000:
            raise Runaway(f"polled {self.polls} times at offset {self.position}")
        if self.failures:
            raise self.failures.pop(0)
        if self.again:
            return [self.records[o] for o in self.again.pop(0)]
        now = self.clock.monotonic()
        visible = sorted(o for o in self.records if o >= self.position and self.appear_at.get(o, 0.0) <= now)
        if not visible:
            self.clock.advance(timeout_s)
            if all(self.appear_at.get(o, 0.0) <= now for o in self.records if o >= self.position):
                self.on_drained()
            return []
        batch = visible[:max_records]
        self.position = batch[-1] + 1
        return [self.records[o] for o in batch]


class Leader:
    """Answers each claim with the next scripted lease or ClaimUnavailable; then epochs go on from the last one."""

    def __init__(self, *answers: Lease | ClaimUnavailable, start: int = 0) -> None:
        self.answers = list(answers)
        self.claims = 0
        self.epoch, self.start = 0, start

    def __call__(self) -> Claim:
        self.claims += 1
        answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, ClaimUnavailable):
            raise answer
        lease = answer or Lease(TOPIC, 0, self.epoch + 1, self.start, "owner")
        self.epoch = lease.epoch
        return lease


class Spans:
    """Which records each batch processed, and which batches committed (as the loop hands them to its spans)."""

    def __init__(self) -> None:
        self.processed: list[list[int]] = []
        self.batches: list[CommitBatch] = []

    def begin(self, records: Sequence[SourceRecord]) -> SimpleNamespace:
        self.processed.append([r.offset for r in records])
        return SimpleNamespace(trace_contexts={})

    def committed(self, traced: object, batch: CommitBatch, outcome: CommitOutcome, started_ns: int) -> None:
        self.batches.append(batch)


@dataclass
class Owner:
    """An OwnerLoop and the fakes around it."""

    loop: OwnerLoop
    clock: ManualClock
    stop: StopFlag
    partition: MemoryPartition
    writer: Writer
    leader: Leader
    spans: Spans
    dlq: Dlq
    runs: list[str] = field(default_factory=list)  # "open" / "closed" per run of the loop
    metrics: list[tuple[int, int]] = field(default_factory=list)  # (expected, next) of each batch recorded

    def sent(self) -> list[tuple[int, int]]:
        return [(e.expected_offset, e.next_offset) for e in self.writer.sent]

    def committed(self) -> list[tuple[int, int]]:
        return [(b.expected_offset, b.next_offset) for b in self.spans.batches]

    def processed(self) -> list[int]:
        return [o for batch in self.spans.processed for o in batch]


def given_owner(
    offsets: Iterable[int],
    *answers: CommitOutcome | Exception,
    leader: Leader | None = None,
    appear_at: dict[int, float] | None = None,
    batch_max: int = 100,
    grace_s: float = 5.0,
    on_send: Callable[[Owner, EncodedBatch], None] | None = None,
) -> Owner:
    clock = ManualClock()
    stop = StopFlag(clock)
    partition = MemoryPartition(clock, offsets, appear_at)
    partition.on_drained = stop.set
    writer, spans, dlq = Writer(*answers), Spans(), Dlq()
    owner: Owner

    def send(encoded: EncodedBatch) -> CommitOutcome:
        if on_send is not None:
            on_send(owner, encoded)
        return writer(encoded)

    @contextmanager
    def connect(lease: Claim, reports: CommitReports) -> Iterator[Connection]:
        committer = OwnerCommitter(
            send,
            dlq,
            explain,
            lambda failure, error: reports.commit_failed(error),
            reports.commit_succeeded,
            sleep=clock.advance,
            rng=random.Random(0),
        )
        owner.runs.append("open")
        try:
            yield Connection(partition, committer)
        finally:
            owner.runs.append("closed")

    def record(batch: CommitBatch, outcome: CommitOutcome, at: float) -> None:
        owner.metrics.append((batch.expected_offset, batch.next_offset))

    leader = leader or Leader()
    loop = OwnerLoop(
        OwnerStatus(TOPIC, 0, "owner", 1),
        LoopPolicy(
            ingest_topic=TOPIC,
            batch_max=batch_max,
            batch_timeout_s=0.1,
            gaps=GapPolicy(grace_s),
            stall=StallPolicy(30.0),
        ),
        claim=leader,
        connect=connect,
        processor=PartitionProcessor(default_registry(), TOPIC, rng=random.Random(0)),
        hooks=Hooks(spans, record),
        clock=clock,
        stop=stop,
        rng=random.Random(0),
    )
    owner = Owner(loop, clock, stop, partition, writer, leader, spans, dlq)
    return owner


def assert_offsets_strictly_advance(owner: Owner, start: int) -> None:
    """Each committed batch continues exactly where the one before it ended, and each is non-empty."""
    at = start
    for expected, next_offset in owner.committed():
        assert expected == at and next_offset > expected
        at = next_offset


# -- reading in order -------------------------------------------------------------------------------------------
def test_batches_commit_consecutive_offsets_from_the_claimed_checkpoint():
    owner = given_owner(range(0, 130), leader=Leader(start=100), batch_max=10)

    owner.loop.run()

    assert owner.committed() == [(100, 110), (110, 120), (120, 130)]
    assert owner.processed() == list(range(100, 130))
    assert owner.partition.seeks == [100]
    st = owner.loop.status()
    assert (st["state"], st["epoch"], st["committed_offset"], st["batches"]) == ("running", 1, 130, 3)
    assert owner.metrics == owner.committed() and owner.runs == ["open", "closed"]


def test_records_below_the_expected_offset_are_never_processed():
    # given a consumer that first hands over what it fetched before the seek, then a re-delivery of committed offsets
    owner = given_owner(range(0, 10), leader=Leader(start=5), batch_max=3)
    owner.partition.again = [[0, 1, 2, 3, 4, 5, 6], [4, 5, 6, 7]]

    owner.loop.run()

    # then each offset from the checkpoint on is processed and committed once, in order
    assert owner.processed() == [5, 6, 7, 8, 9]
    assert owner.committed() == [(5, 7), (7, 8), (8, 10)]
    assert_offsets_strictly_advance(owner, 5)


# -- holes --------------------------------------------------------------------------------------------------------
def test_a_hole_that_fills_within_the_grace_is_waited_for_and_nothing_is_skipped():
    # given offset 3 becomes visible 1 s after the records behind it
    owner = given_owner(range(0, 10), appear_at={3: 1.0})

    owner.loop.run()

    # then the batch stops before the hole, the hole is read again until it fills, and what followed it is read again
    assert owner.committed() == [(0, 3), (3, 10)]
    assert all(b.skipped is None for b in owner.spans.batches) and owner.loop.status()["skipped_offsets"] == 0
    assert owner.processed() == list(range(10))  # 4..9 were read twice, processed once
    assert owner.partition.seeks[:2] == [0, 3] and set(owner.partition.seeks[1:]) == {3}
    assert 1.0 <= owner.clock.now < 5.0 and set(owner.stop.waits) == {0.05}


def test_a_hole_that_outlives_the_grace_is_skipped_and_the_skipped_range_reported(caplog):
    # given offsets 3 and 4 never appear
    owner = given_owner([0, 1, 2, 5, 6, 7], grace_s=5.0)

    with caplog.at_level(logging.WARNING, logger="pipelines.owner_loop"):
        owner.loop.run()

    # then after the grace the batch from 5 commits from 3, saying [3, 5) was skipped
    assert owner.committed() == [(0, 3), (3, 8)]
    assert [b.skipped for b in owner.spans.batches] == [None, (3, 5)]
    assert owner.loop.status()["skipped_offsets"] == 2
    assert owner.clock.now >= 5.0
    assert "offsets 3..4 stayed absent for 5s; skipping them" in caplog.text


def test_a_hole_in_the_middle_of_a_batch_commits_what_precedes_it_and_reads_what_follows_again():
    owner = given_owner([0, 1, 2, 3, 4, 8, 9, 10], grace_s=2.0)

    owner.loop.run()

    assert owner.committed() == [(0, 5), (5, 11)]
    assert owner.partition.seeks[:2] == [0, 5]  # read again from the hole after the commit of 0..4
    assert owner.processed() == [0, 1, 2, 3, 4, 8, 9, 10]


@pytest.mark.parametrize("seed", range(25))
def test_whatever_the_holes_and_redeliveries_every_offset_commits_once_in_order(seed):
    # given a log with random permanent holes, late records (visible within the grace) and re-deliveries
    rng = random.Random(seed)
    offsets = [o for o in range(200) if rng.random() > 0.1]
    late = {o: rng.uniform(0.0, 3.0) for o in offsets if rng.random() < 0.1}
    owner = given_owner(offsets, appear_at=late, batch_max=rng.randint(1, 40), grace_s=5.0)
    owner.partition.again = [sorted(rng.sample(offsets, 15)) for _ in range(3)]

    owner.loop.run()

    # then the commits tile [0, last + 1) exactly, skipping only what never appeared, and each record is processed once
    assert_offsets_strictly_advance(owner, 0)
    assert owner.committed()[-1][1] == offsets[-1] + 1
    assert owner.processed() == offsets
    skipped = {o for b in owner.spans.batches if b.skipped for o in range(*b.skipped)}
    assert skipped == set(range(offsets[-1])) - set(offsets)


# -- commits ------------------------------------------------------------------------------------------------------
def test_a_commit_that_fails_is_retried_as_it_is_until_it_commits():
    owner = given_owner(range(0, 5), Outage("writer down"), Outage("writer down"), CommitOutcome(True, new_events=5))

    owner.loop.run()

    assert owner.sent() == [(0, 5)] * 3 and owner.committed() == [(0, 5)]
    st = owner.loop.status()
    assert (st["commit_failures"], st["commit_error"], st["events"], st["failing_for_s"]) == (2, None, 5, 0.0)
    assert st["last_error"] == "writer down"


def test_an_owner_whose_commits_keep_failing_says_it_is_stalled_until_one_succeeds():
    states: list[str] = []

    def look(owner: Owner, encoded: EncodedBatch) -> None:
        states.append(str(owner.loop.status()["state"]))

    owner = given_owner(range(0, 5), *[Outage("database down")] * 12, on_send=look)

    owner.loop.run()

    assert states[0] == "running" and states[-1] == "stalled"
    assert owner.loop.status()["state"] == "running" and owner.committed() == [(0, 5)]


def test_a_retry_that_finds_its_batch_committed_is_counted_as_already_committed():
    owner = given_owner(range(0, 5), Outage("ack lost"), CommitOutcome(True, already_committed=True))

    owner.loop.run()

    assert owner.loop.status()["already_committed"] == 1 and owner.committed() == [(0, 5)]


def test_a_refused_batch_is_split_and_the_refused_record_dead_lettered_in_its_place():
    # given the store refuses 0..3, accepts 0..1, refuses 2..3, accepts 2, refuses 3's event row, stores its letter
    owner = given_owner(range(0, 4), REFUSED, CommitOutcome(True), REFUSED, CommitOutcome(True), REFUSED)

    owner.loop.run()

    assert owner.sent() == [(0, 4), (0, 2), (2, 4), (2, 3), (3, 4), (3, 4)]
    (batch,) = owner.spans.batches
    assert (batch.expected_offset, batch.next_offset) == (0, 4)
    assert [(d.offset, d.error_kind) for d in batch.dead] == [(3, "store_rejected")]
    assert owner.dlq.published == [3]
    assert owner.loop.status()["store_rejected"] == 1 and owner.loop.status()["committed_offset"] == 4


# -- endings ------------------------------------------------------------------------------------------------------
def test_a_fenced_owner_stops_for_good_and_reads_and_commits_nothing_more():
    owner = given_owner(range(0, 20), CommitOutcome(False, fenced=True, current_epoch=4), batch_max=10)

    owner.loop.run()

    st = owner.loop.status()
    assert st["state"] == "fenced" and "superseded by 4" in str(st["last_error"])
    assert owner.sent() == [(0, 10)] and owner.committed() == []
    assert owner.partition.polls == 1 and owner.leader.claims == 1 and owner.runs == ["open", "closed"]
    owner.loop.mark_stopped()
    assert owner.loop.status()["state"] == "fenced"


def test_an_owner_stopped_while_even_a_bare_dead_letter_is_refused_abandons_the_batch_and_says_so():
    def stop_after_the_fourth_attempt(owner: Owner, encoded: EncodedBatch) -> None:
        if len(owner.writer.sent) == 3:
            owner.stop.set()

    owner = given_owner([7], *[REFUSED] * 10, leader=Leader(start=7), on_send=stop_after_the_fourth_attempt)

    owner.loop.run()

    st = owner.loop.status()
    assert st["state"] == "abandoned" and "offset 7" in str(st["last_error"])
    assert owner.committed() == [] and st["committed_offset"] == 7
    owner.loop.mark_stopped()
    assert owner.loop.status()["state"] == "abandoned"


def test_a_stop_during_a_commit_finishes_that_batch_and_commits_nothing_after():
    def stop_on_first_attempt(owner: Owner, encoded: EncodedBatch) -> None:
        owner.stop.set()

    # given a stop requested while the first batch's commit is failing
    owner = given_owner(range(0, 30), Outage("writer restarting"), batch_max=10, on_send=stop_on_first_attempt)

    owner.loop.run()

    # then that batch is retried until it commits, and nothing is read or committed after it
    assert owner.sent() == [(0, 10), (0, 10)] and owner.committed() == [(0, 10)]
    assert owner.partition.polls == 1 and owner.runs == ["open", "closed"]
    owner.loop.mark_stopped()
    st = owner.loop.status()
    assert (st["state"], st["committed_offset"], st["in_flight"]) == ("stopped", 10, False)


def test_an_unexpected_error_restarts_the_loop_from_a_new_claim_with_doubling_backoff():
    # given a consumer that fails seven times in a row
    owner = given_owner(range(0, 10))
    owner.partition.failures = [RuntimeError("consumer broke")] * 7

    owner.loop.run()

    # then each failure closes the run, backs off (0.5 s doubling to 10 s), claims a new epoch and reads from it
    assert owner.stop.waits == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert owner.leader.claims == 8 and owner.runs == ["open", "closed"] * 8
    assert owner.committed() == [(0, 10)] and {e.epoch for e in owner.writer.sent} == {8}
    st = owner.loop.status()
    assert (st["state"], st["epoch"], st["last_error"]) == ("running", 8, "RuntimeError: consumer broke")


def test_an_unavailable_claim_is_asked_again_with_backoff_and_an_open_breakers_hint_honoured():
    leader = Leader(ClaimUnavailable("no leader yet"), ClaimUnavailable("postgres breaker open", retry_after_s=3.0))
    owner = given_owner(range(0, 3), leader=leader)

    owner.loop.run()

    first, second = owner.stop.waits[:2]
    assert 0.5 <= first <= 0.75 and 3.0 <= second <= 3.25
    assert owner.leader.claims == 3 and owner.committed() == [(0, 3)]
    assert owner.loop.status()["last_error"] == "claim: postgres breaker open"


def test_a_stop_while_waiting_to_claim_ends_the_loop_before_it_reads():
    owner = given_owner(range(0, 3), leader=Leader(*[ClaimUnavailable("no leader yet")] * 3))
    owner.stop.at = 0.1  # asked while the first claim waits to be asked again

    owner.loop.run()

    assert owner.leader.claims == 1 and owner.runs == [] and owner.partition.polls == 0
    owner.loop.mark_stopped()
    assert owner.loop.status()["state"] == OwnerState.STOPPED  # a stop, not an error


def test_a_stopped_owner_says_stopped():
    owner = given_owner(range(0, 3))

    owner.loop.run()
    owner.loop.mark_stopped()

    assert owner.loop.status()["state"] == OwnerState.STOPPED
