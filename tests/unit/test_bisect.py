"""Specification of BatchBisector: a batch the store refuses for a data reason is never retried as it is; the good
records commit in contiguous, fenced sub-batches with their offsets, and the offending record is dead-lettered once.

The store is an in-memory fake that fences like the real one (epoch and expected offset) and refuses chosen events.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from pipelines.batch import CommitBatch, CommitOutcome, DeadLetter, SourceRecord, assemble
from pipelines.engine import PartitionProcessor
from pipelines.errors import DeadLetterKind
from pipelines.policies.bisect import Abandoned, BatchBisector, Refusal
from pipelines.registry import default_registry

TOPIC = "events.ingest"
EPOCH = 3


def action(n: int, **fields: Any) -> bytes:
    event = {
        "id": f"ev-{n}",
        "type": "user_action",
        "timestamp": "2026-11-24T10:00:00Z",
        "user_id": f"u-{n % 5}",
        "action": "click",
        "target": "item",
        **fields,
    }
    return orjson.dumps(event)


class FencedStore:
    """Commits like PostgreSQL's one statement: only at the expected offset and epoch; refuses what `refuse` says."""

    def __init__(self, start: int, refuse: Callable[[CommitBatch], str | None]) -> None:
        self.next_offset = start
        self.refuse = refuse
        self.committed: list[CommitBatch] = []
        self.attempts: list[tuple[int, int]] = []

    def commit(self, batch: CommitBatch) -> CommitOutcome | Refusal:
        self.attempts.append((batch.expected_offset, batch.next_offset))
        if batch.epoch != EPOCH or batch.expected_offset != self.next_offset:
            raise AssertionError(f"unfenced commit {batch.expected_offset}..{batch.next_offset} at {self.next_offset}")
        reason = self.refuse(batch)
        if reason is not None:
            return Refusal(DeadLetterKind.STORE_REJECTED, reason)
        self.committed.append(batch)
        self.next_offset = batch.next_offset
        return CommitOutcome(committed=True, new_events=len(batch.processed), dead_letters=len(batch.dead))

    def dead_letters(self) -> list[DeadLetter]:
        return [d for b in self.committed for d in b.dead]

    def processed_ids(self) -> list[str]:
        return [p.event_id for b in self.committed for p in b.processed]


def refuse_processed(event_id: str) -> Callable[[CommitBatch], str | None]:
    """Like a CHECK on `results`: the event's processed row is refused; as a dead letter it is stored."""

    def refuse(batch: CommitBatch) -> str | None:
        if any(p.event_id == event_id for p in batch.processed):
            return '23514 new row for relation "results" violates check constraint "no_poison"'
        return None

    return refuse


def given_batch(n: int, start: int = 100, skipped: tuple[int, int] | None = None, **poison: Any):
    records = [SourceRecord(TOPIC, 0, start + i, None, action(i), 1_764_000_000_000) for i in range(n)]
    if poison:
        at = poison.pop("at")
        records[at] = SourceRecord(TOPIC, 0, start + at, None, action(at, **poison), 1_764_000_000_000)
    processor = PartitionProcessor(default_registry(), TOPIC, rng=random.Random(0))
    outcomes = processor.outcomes(records, consumed_at=1.0)
    whole = assemble(
        outcomes,
        topic=TOPIC,
        partition=0,
        epoch=EPOCH,
        owner_id="owner",
        expected_offset=skipped[0] if skipped else start,
        next_offset=start + n,
        consumed_at=1.0,
        skipped=skipped,
    )
    return whole, outcomes, records


def never_called(attempt: int, offset: int, refusal: Refusal) -> bool:
    raise AssertionError(f"keep_trying called for offset {offset}: {refusal}")


@pytest.mark.parametrize("poison_at", [0, 1, 250, 498, 499])
def test_one_refused_event_among_500_is_dead_lettered_once_and_the_rest_commit_in_order(poison_at):
    whole, outcomes, records = given_batch(500)
    store = FencedStore(100, refuse_processed(f"ev-{poison_at}"))

    done = BatchBisector(store.commit, never_called).commit(whole, outcomes, records)

    # every sub-batch continued exactly where the one before ended, and the last ends at the batch's end
    ranges = [(b.expected_offset, b.next_offset) for b in store.committed]
    assert ranges[0][0] == 100 and ranges[-1][1] == 600
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert store.next_offset == 600
    # the good ones committed once each, the poison never as processed
    ids = store.processed_ids()
    assert sorted(ids) == sorted(f"ev-{i}" for i in range(500) if i != poison_at)
    # the poison dead-lettered once, with the database's reason and its raw bytes, its identity kept
    (dead,) = store.dead_letters()
    assert (dead.offset, dead.error_kind, dead.event_id) == (100 + poison_at, "store_rejected", f"ev-{poison_at}")
    assert "no_poison" in dead.reason and dead.payload == records[poison_at].value
    # the result says the same as the store
    assert [d.offset for d in done.batch.dead] == [100 + poison_at]
    assert len(done.batch.processed) == 499
    assert (done.outcome.new_events, done.outcome.dead_letters) == (499, 1)
    assert [i.offset for i in done.isolated] == [100 + poison_at] and not done.isolated[0].bare
    # bisection, not one record at a time: about 2 log2(500) transactions
    assert done.commits == len(store.committed) and done.commits <= 20
    assert done.refusals == len(store.attempts) - len(store.committed)


def test_a_batch_nobody_refuses_is_committed_in_one_call_as_it_is():
    whole, outcomes, records = given_batch(50)
    store = FencedStore(100, lambda _b: None)

    done = BatchBisector(store.commit, never_called).commit(whole, outcomes, records)

    assert store.committed == [whole] and done.batch is whole
    assert (done.commits, done.refusals, done.isolated) == (1, 0, ())


def test_a_refused_range_is_never_committed_again_as_it_was():
    whole, outcomes, records = given_batch(64)
    store = FencedStore(100, refuse_processed("ev-17"))

    BatchBisector(store.commit, never_called).commit(whole, outcomes, records)

    refused = [a for a in store.attempts if a not in [(b.expected_offset, b.next_offset) for b in store.committed]]
    assert len(refused) == len(set(refused)), f"a refused range was tried twice: {store.attempts}"


def test_skipped_offsets_travel_with_the_first_sub_batch_only():
    whole, outcomes, records = given_batch(8, start=100, skipped=(95, 100))
    store = FencedStore(95, refuse_processed("ev-5"))

    BatchBisector(store.commit, never_called).commit(whole, outcomes, records)

    assert store.committed[0].expected_offset == 95 and store.committed[0].skipped == (95, 100)
    assert all(b.skipped is None for b in store.committed[1:])
    assert store.next_offset == 108


def test_the_refuser_naming_the_record_isolates_it_without_searching():
    whole, outcomes, records = given_batch(100)
    store = FencedStore(100, lambda _b: None)
    refused_once: list[bool] = []

    def commit(batch: CommitBatch) -> CommitOutcome | Refusal:
        if not refused_once:
            refused_once.append(True)
            store.attempts.append((batch.expected_offset, batch.next_offset))
            return Refusal(DeadLetterKind.HANDLER_ERROR, "commit document: surrogates not allowed", offset=142)
        return store.commit(batch)

    done = BatchBisector(commit, never_called).commit(whole, outcomes, records)

    assert [(b.expected_offset, b.next_offset) for b in store.committed] == [(100, 142), (142, 143), (143, 200)]
    (dead,) = store.dead_letters()
    assert (dead.offset, dead.error_kind) == (142, "handler_error")
    assert done.refusals == 1


def test_when_the_event_row_of_the_dead_letter_is_refused_too_a_bare_dead_letter_is_stored():
    whole, outcomes, records = given_batch(10)

    def refuse_any_row_of(batch: CommitBatch) -> str | None:  # like a CHECK on `events`
        rows = [p.event_id for p in batch.processed] + [d.event_id for d in batch.dead]
        return "23514 violates check constraint events_no_poison" if "ev-4" in rows else None

    store = FencedStore(100, refuse_any_row_of)

    done = BatchBisector(store.commit, never_called).commit(whole, outcomes, records)

    (dead,) = store.dead_letters()
    assert (dead.offset, dead.event_id, dead.payload_json) == (104, None, None)
    assert dead.payload == records[4].value and "events_no_poison" in dead.reason
    assert done.isolated[0].bare and store.next_offset == 110


def test_a_refused_bare_dead_letter_is_loud_and_retried_until_it_commits():
    whole, outcomes, records = given_batch(4)
    refusals_left = [3]

    def refuse(batch: CommitBatch) -> str | None:
        if any(p.event_id == "ev-2" for p in batch.processed) or any(d.event_id == "ev-2" for d in batch.dead):
            return "refused row"
        if any(d.offset == 102 for d in batch.dead) and refusals_left[0] > 0:
            refusals_left[0] -= 1
            return "refused bare dead letter"
        return None

    store = FencedStore(100, refuse)
    calls: list[tuple[int, int]] = []

    def keep_trying(attempt: int, offset: int, refusal: Refusal) -> bool:
        calls.append((attempt, offset))
        return True

    BatchBisector(store.commit, keep_trying).commit(whole, outcomes, records)

    assert calls == [(1, 102), (2, 102), (3, 102)]
    assert [d.offset for d in store.dead_letters()] == [102] and store.next_offset == 104


def test_giving_up_on_a_refused_bare_dead_letter_raises_and_commits_nothing_past_it():
    whole, outcomes, records = given_batch(4)
    store = FencedStore(
        100, lambda b: "always refused" if any(r.offset == 102 for r in (*b.processed, *b.dead)) else None
    )

    with pytest.raises(Abandoned):
        BatchBisector(store.commit, lambda *_: False).commit(whole, outcomes, records)

    assert store.next_offset == 102  # everything before it committed, nothing at or after it


def test_records_that_were_already_dead_letters_keep_their_first_reason_when_refused():
    whole, outcomes, records = given_batch(6, at=3, action=17)  # invalid: dead-lettered by the engine
    assert isinstance(outcomes[3], DeadLetter) and outcomes[3].error_kind == "invalid"
    store = FencedStore(
        100,
        lambda b: (
            "22021 invalid byte sequence"
            if any(d.offset == 103 and d.error_kind == "invalid" for d in b.dead)
            else None
        ),
    )

    BatchBisector(store.commit, never_called).commit(whole, outcomes, records)

    (dead,) = store.dead_letters()
    assert dead.error_kind == "store_rejected" and dead.event_id is None
    assert "22021" in dead.reason and "dead-lettered before as invalid" in dead.reason
    assert store.next_offset == 106


@pytest.mark.parametrize("every", [1, 2], ids=["every-record-named", "every-other-record-named"])
def test_many_named_refusals_in_one_batch_isolate_each_record_without_deep_recursion(every):
    # given 500 records (half of consume_batch_max), every `every`-th refused as processed, the refuser naming it
    whole, outcomes, records = given_batch(500)
    poisons = {f"ev-{i}": 100 + i for i in range(0, 500, every)}
    store = FencedStore(100, lambda _b: None)

    def commit(batch: CommitBatch) -> CommitOutcome | Refusal:
        named = [p.offset for p in batch.processed if p.event_id in poisons]
        if named:
            store.attempts.append((batch.expected_offset, batch.next_offset))
            return Refusal(DeadLetterKind.HANDLER_ERROR, "commit document: surrogates not allowed", offset=named[0])
        return store.commit(batch)

    # when it is committed
    done = BatchBisector(commit, never_called).commit(whole, outcomes, records)

    # then every poison is dead-lettered once, every good record committed, in contiguous fenced sub-batches
    ranges = [(b.expected_offset, b.next_offset) for b in store.committed]
    assert ranges[0][0] == 100 and store.next_offset == 600
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert sorted(d.offset for d in store.dead_letters()) == sorted(poisons.values())
    assert sorted(store.processed_ids()) == sorted(f"ev-{i}" for i in range(500) if f"ev-{i}" not in poisons)
    assert len(done.isolated) == len(poisons) and done.refusals == len(poisons)


def test_unnamed_refusals_of_many_records_are_halved_without_deep_recursion():
    # given 500 records, every third refused by the store without it saying which
    whole, outcomes, records = given_batch(500)
    bad = {f"ev-{i}" for i in range(0, 500, 3)}
    store = FencedStore(100, lambda b: "23514 check" if any(p.event_id in bad for p in b.processed) else None)

    done = BatchBisector(store.commit, never_called).commit(whole, outcomes, records)

    assert store.next_offset == 600 and len(done.isolated) == len(bad)
    assert sorted(store.processed_ids()) == sorted(f"ev-{i}" for i in range(500) if f"ev-{i}" not in bad)
