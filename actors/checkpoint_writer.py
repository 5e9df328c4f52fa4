"""CheckpointWriter: a Ray actor that commits owners' batches to PostgreSQL with group commit.

Thin shell over CheckpointStore: batches that arrive while a transaction runs go into the next one together (one WAL
flush for all); it retries only what is safe to retry, since every batch's statement is fenced and idempotent.
"""

from __future__ import annotations

import logging

import ray

from actors.group_commit import GroupCommitter
from cluster.adapters.checkpoint_store import CheckpointStore
from cluster.adapters.commit_doc import EncodedBatch
from cluster.settings import Settings
from pipelines.batch import CommitOutcome

log = logging.getLogger(__name__)


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
