"""Bisection of a batch the store refuses for a data reason: the good records commit in contiguous, fenced sub-batches
with their offsets, and the record that causes the refusal is isolated and dead-lettered, once.

It never retries a refused range as it is and never commits offsets out of order; it does no I/O, waiting or logging
itself: the commit function and what to do when even a bare dead letter is refused are given to it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipelines.batch import (
    CommitBatch,
    CommitOutcome,
    DeadLetter,
    ProcessedEvent,
    RecordOutcome,
    SourceRecord,
    assemble,
    bare_dead_letter,
    dead_instead,
)
from pipelines.errors import DeadLetterKind


@dataclass(frozen=True)
class Refusal:
    """A commit refused for what the batch holds (never for a dependency being down: that is retried as it is)."""

    kind: DeadLetterKind  # what the isolated record's dead letter says: store_rejected, or handler_error (encoding)
    reason: str
    offset: int | None = None  # the record that caused it, when the refuser could tell


# Commits one batch, fenced by its epoch and expected offset: an outcome, or a Refusal. It retries dependency outages
# itself and raises to abort (fenced, stopping).
CommitFn = Callable[[CommitBatch], CommitOutcome | Refusal]
# Called after the n-th refusal of a record's bare dead letter (a bug: it should never happen): it reports loudly and
# waits; True to try again, False to give up (Abandoned is raised).
KeepTrying = Callable[[int, int, Refusal], bool]


class Abandoned(Exception):
    """Even the bare dead letter of a record was refused, and the caller chose to stop trying."""


@dataclass(frozen=True)
class Isolated:
    """A record dead-lettered because its commit was refused."""

    offset: int
    refusal: Refusal
    bare: bool  # stored without its event row: its event row was refused too, or it had none


@dataclass(frozen=True)
class Committed:
    """What the commit of one batch ended as, however many transactions it took."""

    batch: CommitBatch  # the whole range as committed: isolated records appear as their dead letters
    outcome: CommitOutcome  # the sub-commits' outcomes summed
    commits: int  # commit calls that returned an outcome
    refusals: int  # commit calls that were refused
    isolated: tuple[Isolated, ...] = ()


class BatchBisector:
    """Commits a batch; on a refusal, halves the refused range until the offending record stands alone."""

    def __init__(self, commit: CommitFn, keep_trying: KeepTrying) -> None:
        self._commit = commit
        self._keep_trying = keep_trying

    def commit(
        self, whole: CommitBatch, outcomes: Sequence[RecordOutcome], records: Sequence[SourceRecord]
    ) -> Committed:
        """`whole` is `assemble(outcomes, ...)`; `outcomes[i]` is what `records[i]` became (offset order, one per
        record). The first call commits `whole` as it is: a batch nobody refuses costs nothing more."""
        if len(outcomes) != len(records) or not records:
            raise ValueError("one outcome per record, and at least one record")
        first = self._commit(whole)
        if isinstance(first, CommitOutcome):
            return Committed(whole, first, commits=1, refusals=0)
        run = _Bisection(self._commit, self._keep_trying, whole, list(outcomes), records)
        run.refused(0, len(records), first)
        return run.result()


class _Bisection:
    def __init__(
        self,
        commit: CommitFn,
        keep_trying: KeepTrying,
        whole: CommitBatch,
        items: list[RecordOutcome],
        records: Sequence[SourceRecord],
    ) -> None:
        self._commit_fn = commit
        self._keep_trying = keep_trying
        self._whole = whole
        self._items = items
        self._records = records
        self._outcomes: list[CommitOutcome] = []
        self._refusals = 1  # the whole batch's
        self._isolated: list[Isolated] = []

    def refused(self, lo: int, hi: int, refusal: Refusal) -> None:
        """[lo, hi) was refused: commit it in parts, left to right, isolating the record that is refused alone.

        A loop over a stack of ranges, not recursion: a batch whose every record is refused by name (or refused at
        all) takes as many rounds as it has records, however many that is, and the stack never holds more than
        about log2(n) + 2 ranges."""
        todo: list[tuple[int, int, Refusal | None]] = [(lo, hi, refusal)]  # leftmost range last; None: not tried
        while todo:
            lo, hi, known = todo.pop()
            if lo >= hi:
                continue
            if known is None:
                result = self._commit(lo, hi)
                if not isinstance(result, Refusal):
                    continue
                known = result
            if hi - lo == 1:
                self._isolate(lo, known)
                continue
            at = self._index_of(known.offset, lo, hi)
            if at is not None:  # the refuser named the record: no need to search for it
                todo += [(at + 1, hi, None), (at, at + 1, known), (lo, at, None)]
            else:
                mid = (lo + hi) // 2
                todo += [(mid, hi, None), (lo, mid, None)]

    def result(self) -> Committed:
        w = self._whole
        batch = assemble(
            self._items,
            topic=w.topic,
            partition=w.partition,
            epoch=w.epoch,
            owner_id=w.owner_id,
            expected_offset=w.expected_offset,
            next_offset=w.next_offset,
            consumed_at=w.consumed_at,
            skipped=w.skipped,
        )
        return Committed(batch, _sum(self._outcomes), len(self._outcomes), self._refusals, tuple(self._isolated))

    def _isolate(self, i: int, refusal: Refusal) -> None:
        """Dead-letter record i with the refusal's reason: with its event row if it has one, else (or when that is
        refused too) a bare dead letter; if even that is refused, ask whether to keep trying."""
        item, record = self._items[i], self._records[i]
        if isinstance(item, ProcessedEvent):
            self._items[i] = dead_instead(item, refusal.kind, refusal.reason, record.value)
            if not isinstance(self._commit(i, i + 1), Refusal):
                self._isolated.append(Isolated(record.offset, refusal, bare=False))
                return
        reason = refusal.reason
        if isinstance(item, DeadLetter):
            reason = f"{reason}; dead-lettered before as {item.error_kind}: {item.reason}"
        received_at = item.received_at if isinstance(item, ProcessedEvent | DeadLetter) else self._whole.consumed_at
        attempts = item.attempts if isinstance(item, ProcessedEvent | DeadLetter) else 1
        tenant = item.tenant  # every outcome knows its record's tenant, or None
        self._items[i] = bare_dead_letter(
            record.offset, refusal.kind, reason, record.value, received_at, attempts, tenant
        )
        attempt = 0
        while True:
            result = self._commit(i, i + 1)
            if not isinstance(result, Refusal):
                self._isolated.append(Isolated(record.offset, refusal, bare=True))
                return
            attempt += 1
            if not self._keep_trying(attempt, record.offset, result):
                raise Abandoned(f"the bare dead letter of offset {record.offset} was refused: {result.reason}")

    def _commit(self, lo: int, hi: int) -> CommitOutcome | Refusal:
        result = self._commit_fn(self._sub_batch(lo, hi))
        if isinstance(result, Refusal):
            self._refusals += 1
        else:
            self._outcomes.append(result)
        return result

    def _sub_batch(self, lo: int, hi: int) -> CommitBatch:
        """Records [lo, hi) as a batch that continues exactly where the one before it ends (the first carries the
        whole batch's start and skipped offsets, the last its end), so every sub-commit is fenced as usual."""
        w, records = self._whole, self._records
        return assemble(
            self._items[lo:hi],
            topic=w.topic,
            partition=w.partition,
            epoch=w.epoch,
            owner_id=w.owner_id,
            expected_offset=w.expected_offset if lo == 0 else records[lo].offset,
            next_offset=w.next_offset if hi == len(records) else records[hi].offset,
            consumed_at=w.consumed_at,
            skipped=w.skipped if lo == 0 else None,
        )

    def _index_of(self, offset: int | None, lo: int, hi: int) -> int | None:
        """Where the record at `offset` is in [lo, hi), if there (records are in offset order)."""
        if offset is None:
            return None
        i = bisect_left(self._records, offset, lo, hi, key=lambda r: r.offset)
        return i if i < hi and self._records[i].offset == offset else None


def _sum(outcomes: Sequence[CommitOutcome]) -> CommitOutcome:
    return CommitOutcome(
        committed=True,
        already_committed=any(o.already_committed for o in outcomes),
        new_events=sum(o.new_events for o in outcomes),
        duplicates=sum(o.duplicates for o in outcomes),
        dead_letters=sum(o.dead_letters for o in outcomes),
        duration_s=sum(o.duration_s for o in outcomes),
        duplicate_ids=tuple(i for o in outcomes for i in o.duplicate_ids),
    )
