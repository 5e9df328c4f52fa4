"""CheckpointWriter: a Ray actor that commits owners' batches to PostgreSQL with group commit.

Thin shell over CheckpointStore: batches that arrive while a transaction runs go into the next one together (one WAL
flush for all); it retries only what is safe to retry, since every batch's statement is fenced and idempotent. A
"postgres" circuit breaker sits around the group commit: while it is open, commit() raises CircuitOpen at once
(retriable: the owner keeps its batch and comes back after retry_after_s). A batch PostgreSQL refuses for a data
reason is answered `CommitOutcome(rejected=<reason>)`: the owner splits it. It never decides what a batch holds.
"""

from __future__ import annotations

import logging
import os

import ray

from actors.group_commit import GroupCommitter
from actors.metrics_hub import start_metrics_push
from cluster.adapters.checkpoint_store import CheckpointStore, is_unavailable, rejection_reason
from cluster.adapters.commit_doc import EncodedBatch
from cluster.observability.breakers import breaker
from cluster.observability.logs import setup_logging
from cluster.settings import Settings
from pipelines.batch import CommitOutcome

log = logging.getLogger(__name__)


# Restarted without limit when its process or node dies. Calls are not replayed by Ray: the owners retry them,
# which turns a lost acknowledgement (died after COMMIT) into already_committed.
@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class CheckpointWriter:
    def __init__(self, settings: Settings) -> None:
        settings = settings.in_process()  # secrets come from this process's environment, not Ray
        setup_logging(settings, "checkpoint-writer")
        self._store = CheckpointStore(
            settings.database_url.get_secret_value(), settings.writer_pool_size, settings.dedup_ttl_hours
        )
        self._breaker = breaker("postgres", settings)
        self._committer = GroupCommitter(
            self._store,
            threads=max(1, settings.writer_pool_size // 2),
            breaker=self._breaker,
            is_failure=is_unavailable,
            rejection=rejection_reason,
        )
        self._events = 0
        start_metrics_push(settings, "writer")

    def commit(self, batch: EncodedBatch) -> CommitOutcome:
        outcome = self._committer.commit(batch)
        self._events += outcome.new_events
        return outcome

    def stats(self) -> dict[str, object]:
        return {
            "groups": self._committer.groups,
            "batches": self._committer.batches,
            "events": self._events,
            "postgres_breaker": self._breaker.state.value,
        }

    def pid(self) -> int:
        """The process id, for operators and the chaos tests that SIGKILL a writer."""
        return os.getpid()
