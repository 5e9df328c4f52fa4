"""CheckpointWriter: a Ray actor that commits owners' batches to PostgreSQL with group commit.

Thin shell over CheckpointStore: batches that arrive while a transaction runs go into the next one together (one WAL
flush for all); it retries only what is safe to retry, since every batch's statement is fenced and idempotent.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future

import psycopg
import ray

from cluster.adapters.checkpoint_store import CheckpointStore
from cluster.adapters.commit_doc import EncodedBatch
from cluster.settings import Settings
from pipelines.batch import CommitOutcome

log = logging.getLogger(__name__)
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


class GroupCommitter:
    """Queues concurrent commit calls; one thread commits whatever is queued, up to max_group, per transaction."""

    def __init__(self, store: CheckpointStore, threads: int = 2, max_group: int = 32) -> None:
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
            except Exception as exc:  # noqa: BLE001 - handed to every caller, who keeps its batch and retries
                for _, future in group:
                    future.set_exception(exc)
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


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class CheckpointWriter:
    def __init__(self, settings: Settings) -> None:
        self._store = CheckpointStore(
            settings.database_url.get_secret_value(), settings.writer_pool_size, settings.dedup_ttl_hours
        )
        self._committer = GroupCommitter(self._store, threads=max(1, settings.writer_pool_size // 2))
        self._events = 0

    def commit(self, batch: EncodedBatch) -> CommitOutcome:
        outcome = self._committer.commit(batch)
        self._events += outcome.new_events
        return outcome

    def stats(self) -> dict[str, int]:
        return {"groups": self._committer.groups, "batches": self._committer.batches, "events": self._events}

    def ping(self) -> bool:
        return True
