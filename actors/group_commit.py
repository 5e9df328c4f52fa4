"""Group commit: concurrent commit calls queue up; committer threads take everything queued into one transaction.

It knows only a store with `commit_group(batches) -> outcomes`; it never decides what a batch contains.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Protocol

import psycopg

from cluster.adapters.commit_doc import EncodedBatch
from pipelines.batch import CommitOutcome

log = logging.getLogger(__name__)
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


class GroupStore(Protocol):
    def commit_group(self, batches: list[EncodedBatch]) -> list[CommitOutcome]: ...


class GroupCommitter:
    """Queues concurrent commit calls; one thread commits whatever is queued, up to max_group, per transaction."""

    def __init__(self, store: GroupStore, threads: int = 2, max_group: int = 32) -> None:
        self._store = store
        self._max_group = max_group
        self._queue: queue.Queue[tuple[EncodedBatch, Future[CommitOutcome]]] = queue.Queue()
        self.groups = 0
        self.batches = 0
        for n in range(threads):
            threading.Thread(target=self._run, name=f"group-committer-{n}", daemon=True).start()

    def commit(self, batch: EncodedBatch) -> CommitOutcome:
        future: Future[CommitOutcome] = Future()
        self._queue.put((batch, future))
        return future.result()

    def _run(self) -> None:
        while True:
            group = [self._queue.get()]
            while len(group) < self._max_group:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                outcomes = self._commit_with_retry([b for b, _ in group])
            except Exception as exc:  # noqa: BLE001 - handed to the callers, who keep their batches and retry
                if len(group) == 1:
                    group[0][1].set_exception(exc)
                    continue
                # One bad batch must not fail its neighbours again and again: commit each on its own.
                log.warning("group of %d failed (%s); committing its batches one by one", len(group), exc)
                for batch, future in group:
                    try:
                        future.set_result(self._commit_with_retry([batch])[0])
                    except Exception as single:  # noqa: BLE001 - this caller keeps its batch and retries
                        future.set_exception(single)
                continue
            self.groups += 1
            self.batches += len(group)
            for (_, future), outcome in zip(group, outcomes, strict=True):
                future.set_result(outcome)

    def _commit_with_retry(self, batches: list[EncodedBatch]) -> list[CommitOutcome]:
        for attempt in range(1, 6):
            try:
                return self._store.commit_group(batches)
            except _RETRYABLE as exc:
                log.warning(
                    "group of %d batches hit %s, retrying (attempt %d)", len(batches), type(exc).__name__, attempt
                )
                time.sleep(0.01 * attempt)
        return self._store.commit_group(batches)
