"""Group commit: concurrent commit calls queue up; committer threads take everything queued into one transaction.

It knows only a store with `commit_group(batches) -> outcomes` and, optionally, a circuit breaker that every
transaction reports to: while it is open, calls fail fast with CircuitOpen. A batch the database refuses for a data
reason comes back as a value (`CommitOutcome(rejected=...)`), never as an error to retry. It never decides what a
batch contains.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol

import psycopg

from cluster.adapters.commit_doc import EncodedBatch
from pipelines.batch import CommitOutcome
from pipelines.policies.breaker import BreakerState, CircuitBreaker, CircuitOpen

log = logging.getLogger(__name__)
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


class GroupStore(Protocol):
    def commit_group(self, batches: list[EncodedBatch]) -> list[CommitOutcome]: ...


class GroupCommitter:
    """Queues concurrent commit calls; one thread commits whatever is queued, up to max_group, per transaction."""

    def __init__(
        self,
        store: GroupStore,
        threads: int = 2,
        max_group: int = 32,
        breaker: CircuitBreaker | None = None,
        is_failure: Callable[[BaseException], bool] = lambda _exc: True,
        rejection: Callable[[BaseException], str | None] = lambda _exc: None,
    ) -> None:
        """`is_failure`: the error means the database is unavailable (it counts against the breaker). `rejection`:
        the database's reason when the error refuses the batch's data for good, else None."""
        self._store = store
        self._rejection = rejection
        self._max_group = max_group
        self._breaker = breaker
        self._is_failure = is_failure
        self._queue: queue.Queue[tuple[EncodedBatch, Future[CommitOutcome]]] = queue.Queue()
        self.groups = 0
        self.batches = 0
        for n in range(threads):
            threading.Thread(target=self._run, name=f"group-committer-{n}", daemon=True).start()

    def commit(self, batch: EncodedBatch) -> CommitOutcome:
        """Commit in the next group; raises CircuitOpen at once while the breaker is open (nothing was tried)."""
        if self._breaker is not None and self._breaker.state is BreakerState.OPEN:
            raise self._refusal()
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
                self._serve(group)
            except Exception as exc:  # noqa: BLE001 - this thread must outlive any bug: callers keep batches, retry
                log.exception("group committer failed on a group of %d; its callers will retry", len(group))
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)

    def _serve(self, group: list[tuple[EncodedBatch, Future[CommitOutcome]]]) -> None:
        """Commit one group; a failure is handed to its callers, split one by one unless the database is down."""
        if not self._admit(group):
            return
        try:
            outcomes = self._commit_with_retry([b for b, _ in group])
        except Exception as exc:  # noqa: BLE001 - handed to the callers, who keep their batches and retry
            if len(group) == 1 or (self._breaker is not None and self._is_failure(exc)):
                # One caller, or the database itself is failing: one by one would only fail again.
                for _, future in group:
                    self._fail(future, exc)
                return
            # One bad batch must not fail its neighbours again and again: commit each on its own.
            log.warning("group of %d failed (%s); committing its batches one by one", len(group), exc)
            for batch, future in group:
                if not self._admit([(batch, future)]):
                    continue
                try:
                    future.set_result(self._commit_with_retry([batch])[0])
                except Exception as single:  # noqa: BLE001 - this caller keeps its batch and retries, or splits it
                    self._fail(future, single)
            return
        self.groups += 1
        self.batches += len(group)
        for (_, future), outcome in zip(group, outcomes, strict=True):
            future.set_result(outcome)

    def _fail(self, future: Future[CommitOutcome], exc: Exception) -> None:
        """A batch that failed alone: refused for its data (a value: its owner splits it), or an error to retry."""
        try:
            reason = self._rejection(exc)
        except Exception:  # noqa: BLE001 - a classification bug must not hide the error: hand it over as it is
            log.exception("classifying %s failed", type(exc).__name__)
            reason = None
        if reason is None:
            future.set_exception(exc)
        else:
            future.set_result(CommitOutcome(committed=False, rejected=reason))

    def _refusal(self) -> CircuitOpen:
        breaker = self._breaker
        if breaker is None:
            raise RuntimeError("no breaker to refuse with")
        return CircuitOpen(breaker.dependency, max(breaker.retry_after_s(), 0.1))

    def _admit(self, group: list[tuple[EncodedBatch, Future[CommitOutcome]]]) -> bool:
        """Whether the breaker lets this transaction through (half-open: as the probe); else refuse every caller."""
        if self._breaker is None or self._breaker.allow():
            return True
        refusal = self._refusal()
        for _, future in group:
            future.set_exception(refusal)
        return False

    def _commit_with_retry(self, batches: list[EncodedBatch]) -> list[CommitOutcome]:
        for attempt in range(1, 6):
            try:
                return self._commit_reported(batches)
            except _RETRYABLE as exc:
                log.warning(
                    "group of %d batches hit %s, retrying (attempt %d)", len(batches), type(exc).__name__, attempt
                )
                time.sleep(0.01 * attempt)
        return self._commit_reported(batches)

    def _commit_reported(self, batches: list[EncodedBatch]) -> list[CommitOutcome]:
        """One transaction; its outcome is reported to the breaker (an error the database answered is a success)."""
        try:
            outcomes = self._store.commit_group(batches)
        except Exception as exc:
            if self._breaker is not None:
                if self._is_failure(exc):
                    self._breaker.record_failure(f"{type(exc).__name__}: {exc}")
                else:
                    self._breaker.record_success()
            raise
        if self._breaker is not None:
            self._breaker.record_success()
        return outcomes
