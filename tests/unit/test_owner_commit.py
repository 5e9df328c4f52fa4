"""Specification of OwnerCommitter, the owner's side of one commit: outages are retried as they are (backoff, the
breaker's hint honoured), a refusal for the data comes back at once as a value and is never retried, fencing raises,
and dead letters reach the DLQ topic once per batch however many attempts and sub-batches it takes.
"""

from __future__ import annotations

import random

import pytest

from cluster.adapters.commit_doc import EncodedBatch
from cluster.adapters.owner_commit import Explained, OwnerCommitter
from cluster.observability.recording import CommitFailure
from pipelines.batch import CommitBatch, CommitOutcome, ProcessedEvent, bare_dead_letter
from pipelines.errors import DeadLetterKind, Fenced
from pipelines.policies.bisect import Refusal


class Outage(Exception):
    pass


class Writer:
    """Answers each send with the next scripted answer (an outcome, or an exception to raise)."""

    def __init__(self, *answers: CommitOutcome | Exception) -> None:
        self.answers = list(answers)
        self.sent: list[EncodedBatch] = []

    def __call__(self, encoded: EncodedBatch) -> CommitOutcome:
        self.sent.append(encoded)
        answer = self.answers.pop(0) if self.answers else CommitOutcome(committed=True)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Dlq:
    def __init__(self) -> None:
        self.published: list[int] = []

    def publish(self, batch: CommitBatch) -> None:
        self.published += [d.offset for d in batch.dead]


class Status:
    def __init__(self) -> None:
        self.failures: list[CommitFailure] = []
        self.successes = 0

    def failed(self, failure: CommitFailure, error: str) -> None:
        self.failures.append(failure)

    def succeeded(self) -> None:
        self.successes += 1


def explain(exc: BaseException) -> Explained:
    return CommitFailure.UNAVAILABLE if isinstance(exc, Outage) else CommitFailure.OTHER, str(exc), None


def batch(*dead_offsets: int, processed: tuple[ProcessedEvent, ...] = ()) -> CommitBatch:
    dead = tuple(bare_dead_letter(o, DeadLetterKind.INVALID, "bad", b"x", 1.0) for o in dead_offsets)
    return CommitBatch("events.ingest", 0, 2, "o", 10, 20, 1.0, processed=processed, dead=dead)


@pytest.fixture
def status() -> Status:
    return Status()


def committer(writer: Writer, dlq: Dlq, status: Status, sleeps: list[float]) -> OwnerCommitter:
    return OwnerCommitter(
        writer, dlq, explain, status.failed, status.succeeded, sleep=sleeps.append, rng=random.Random(0)
    )


def test_an_outage_is_retried_as_it_is_with_growing_backoff_until_it_commits(status):
    writer, dlq, sleeps = Writer(Outage("down"), Outage("down"), Outage("down")), Dlq(), []

    outcome = committer(writer, dlq, status, sleeps).commit(batch())

    assert outcome == CommitOutcome(committed=True)
    assert len({w.doc for w in writer.sent}) == 1 and len(writer.sent) == 4  # the same bytes each time
    assert status.failures == [CommitFailure.UNAVAILABLE] * 3 and status.successes == 1
    assert sleeps[0] < sleeps[1] < sleeps[2]


def test_a_refusal_for_the_data_comes_back_at_once_and_is_not_retried(status):
    writer, sleeps = Writer(CommitOutcome(committed=False, rejected="22003 numeric field overflow")), []

    result = committer(writer, Dlq(), status, sleeps).commit(batch())

    assert result == Refusal(DeadLetterKind.STORE_REJECTED, "22003 numeric field overflow")
    assert len(writer.sent) == 1 and sleeps == []
    assert status.failures == [CommitFailure.REJECTED] and status.successes == 0


def test_fenced_raises_and_is_counted(status):
    writer = Writer(CommitOutcome(committed=False, fenced=True, current_epoch=3))

    with pytest.raises(Fenced):
        committer(writer, Dlq(), status, []).commit(batch())

    assert status.failures == [CommitFailure.FENCED]


def test_a_record_that_cannot_be_encoded_is_named_without_sending_anything(status):
    bad = ProcessedEvent("ev", "user_action", 1, 13, "\ud800", "{}", "{}", (), 1.0)
    writer = Writer()

    result = committer(writer, Dlq(), status, []).commit(batch(processed=(bad,)))

    assert isinstance(result, Refusal) and result.offset == 13 and result.kind == "handler_error"
    assert writer.sent == [] and status.failures == [CommitFailure.REJECTED]


def test_dead_letters_are_published_once_per_batch_across_retries_and_sub_batches(status):
    writer, dlq = Writer(Outage("down"), CommitOutcome(committed=False, rejected="refused")), Dlq()
    c = committer(writer, dlq, status, [])

    c.begin()
    c.commit(batch(11, 12))  # published, then an outage, then refused
    c.commit(batch(11))  # a sub-batch of it
    c.commit(batch(12, 15))
    assert dlq.published == [11, 12, 15]

    c.begin()  # the next batch of records: a record read again is published again
    c.commit(batch(11))
    assert dlq.published == [11, 12, 15, 11]


def test_a_breakers_hint_is_waited_without_growing_the_backoff(status):
    writer, sleeps = Writer(Outage("open"), Outage("open")), []

    def hinted(exc: BaseException) -> Explained:
        return CommitFailure.UNAVAILABLE, "breaker open", 2.0

    OwnerCommitter(writer, Dlq(), hinted, status.failed, status.succeeded, sleeps.append, random.Random(0)).commit(
        batch()
    )

    assert len(sleeps) == 2 and all(2.0 <= s <= 2.55 for s in sleeps)


class Bug(Exception):
    pass


def test_a_failure_that_is_no_outage_is_tried_three_times_then_handed_back_as_a_refusal(status):
    # given a writer that fails on this batch with an error that says nothing about a dependency being down
    writer, sleeps = Writer(*[Bug("TypeError: bad operand")] * 3), []

    # when the owner commits it
    result = committer(writer, Dlq(), status, sleeps).commit(batch())

    # then after three attempts it is a refusal for what the batch holds, so the bisection isolates the record
    assert result == Refusal(DeadLetterKind.STORE_REJECTED, "TypeError: bad operand (failed 3 times)")
    assert len(writer.sent) == 3 and len(sleeps) == 2
    assert status.failures == [CommitFailure.OTHER] * 3 and status.successes == 0


def test_outages_between_other_failures_do_not_restart_their_count(status):
    writer = Writer(Bug("XX000"), Outage("down"), Bug("XX000"), Outage("down"), Bug("XX000"))

    result = committer(writer, Dlq(), status, []).commit(batch())

    assert isinstance(result, Refusal) and len(writer.sent) == 5


def test_an_outage_is_never_handed_back_as_a_refusal_however_long_it_lasts(status):
    writer = Writer(*[Outage("down")] * 25)

    outcome = committer(writer, Dlq(), status, []).commit(batch())

    assert outcome == CommitOutcome(committed=True) and len(writer.sent) == 26


def test_dead_letters_the_broker_does_not_take_are_retried_and_never_split(status):
    class FlakyDlq(Dlq):
        def __init__(self) -> None:
            super().__init__()
            self.failures_left = 5

        def publish(self, batch: CommitBatch) -> None:
            if self.failures_left:
                self.failures_left -= 1
                raise Bug("BufferError: local queue full")
            super().publish(batch)

    writer, dlq = Writer(), FlakyDlq()

    outcome = committer(writer, dlq, status, []).commit(batch(11))

    assert outcome == CommitOutcome(committed=True) and dlq.published == [11] and len(writer.sent) == 1
