"""Specification of GroupCommitter: batches queued while a transaction runs commit together in the next one,
and one bad batch fails alone instead of failing every group it lands in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from actors.group_commit import GroupCommitter
from cluster.adapters.commit_doc import EncodedBatch
from pipelines.batch import CommitOutcome


def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


def _batch(partition: int) -> EncodedBatch:
    return EncodedBatch("events.sensor", partition, 1, "o", 0, 1, 0.0, b"{}", 0, 0)


class GatedStore:
    """Records each group; the first transaction waits for a gate so that later calls queue up behind it."""

    def __init__(self, bad_partition: int | None = None) -> None:
        self.groups: list[list[int]] = []
        self.gate = threading.Event()
        self.first_started = threading.Event()
        self.bad = bad_partition

    def commit_group(self, batches: list[EncodedBatch]) -> list[CommitOutcome]:
        if not self.first_started.is_set():
            self.first_started.set()
            self.gate.wait(30)
        partitions = [b.partition for b in batches]
        if self.bad in partitions:
            raise ValueError(f"partition {self.bad} carries a batch PostgreSQL refuses")
        self.groups.append(partitions)
        return [CommitOutcome(committed=True, new_events=1) for _ in batches]


def test_batches_that_arrive_during_a_transaction_commit_together_in_the_next() -> None:
    store = GatedStore()
    committer = GroupCommitter(store, threads=1)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(committer.commit, _batch(0))
        assert store.first_started.wait(30)
        rest = [pool.submit(committer.commit, _batch(p)) for p in range(1, 6)]
        _until(lambda: committer._queue.qsize() == 5)  # all five are waiting behind the first transaction
        store.gate.set()
        outcomes = [first.result(5)] + [f.result(5) for f in rest]
    assert all(o.committed for o in outcomes)
    assert store.groups == [[0], [1, 2, 3, 4, 5]]


def test_a_batch_that_fails_is_reported_to_its_caller_alone() -> None:
    store = GatedStore(bad_partition=3)
    committer = GroupCommitter(store, threads=1)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(committer.commit, _batch(0))
        assert store.first_started.wait(30)
        rest = {p: pool.submit(committer.commit, _batch(p)) for p in range(1, 6)}
        _until(lambda: committer._queue.qsize() == 5)
        store.gate.set()
        assert first.result(5).committed
        with pytest.raises(ValueError, match="partition 3"):
            rest[3].result(5)
        assert all(rest[p].result(5).committed for p in (1, 2, 4, 5))
    assert sorted(p for group in store.groups for p in group) == [0, 1, 2, 4, 5]


def test_a_batch_refused_for_its_data_in_a_group_comes_back_to_its_caller_as_a_rejection() -> None:
    store = GatedStore(bad_partition=3)
    committer = GroupCommitter(
        store, threads=1, rejection=lambda exc: f"23514 {exc}" if isinstance(exc, ValueError) else None
    )
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(committer.commit, _batch(0))
        assert store.first_started.wait(30)
        rest = {p: pool.submit(committer.commit, _batch(p)) for p in range(1, 6)}
        _until(lambda: committer._queue.qsize() == 5)
        store.gate.set()
        refused = rest[3].result(5)
        assert all(rest[p].result(5).committed for p in (1, 2, 4, 5)) and first.result(5).committed
    assert refused == CommitOutcome(committed=False, rejected="23514 partition 3 carries a batch PostgreSQL refuses")
    assert sorted(p for group in store.groups for p in group) == [0, 1, 2, 4, 5]
