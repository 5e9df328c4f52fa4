"""CheckpointWriter: a Ray actor that commits CommitBatches to PostgreSQL, one transaction each.

Thin shell over CheckpointStore: retries only what is safe to retry (the commit is fenced, so a retry is idempotent).
"""

from __future__ import annotations

import logging
import time

import psycopg
import ray

from cluster.adapters.checkpoint_store import CheckpointStore
from cluster.adapters.commit_doc import EncodedBatch
from cluster.settings import Settings
from pipelines.batch import CommitOutcome

log = logging.getLogger(__name__)
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class CheckpointWriter:
    def __init__(self, settings: Settings) -> None:
        self._store = CheckpointStore(
            settings.database_url.get_secret_value(), settings.writer_pool_size, settings.dedup_ttl_hours
        )
        self._commits = 0
        self._events = 0

    def commit(self, batch: EncodedBatch) -> CommitOutcome:
        for attempt in range(1, 6):
            try:
                outcome = self._store.commit(batch)
                if outcome.committed:
                    self._commits += 1
                    self._events += outcome.new_events
                return outcome
            except _RETRYABLE as exc:
                log.warning(
                    "commit of %s[%d] hit %s, retrying (attempt %d)",
                    batch.topic,
                    batch.partition,
                    type(exc).__name__,
                    attempt,
                )
                time.sleep(0.01 * attempt)
        return self._store.commit(batch)

    def stats(self) -> dict[str, int]:
        return {"commits": self._commits, "events": self._events}

    def ping(self) -> bool:
        return True
