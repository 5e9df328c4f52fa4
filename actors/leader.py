"""Leader: the single named, detached coordinator; creates the writers and one owner per partition, bumps epochs.

It assigns and supervises, never processes events; GCS's named-actor guarantee makes it the only leader.
"""

from __future__ import annotations

import logging
import threading
import time

import ray

from actors import names
from actors.checkpoint_writer import CheckpointWriter
from actors.partition_owner import PartitionOwner
from cluster.adapters.checkpoint_store import CheckpointStore, Lease
from cluster.adapters.kafka_admin import cluster_id, ensure_topics
from cluster.settings import Settings

log = logging.getLogger(__name__)
_SUPERVISE_EVERY_S = 2.0
_PURGE_DEDUP_EVERY_S = 600.0


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Leader:
    def __init__(self, settings: Settings) -> None:
        logging.basicConfig(level=logging.INFO)
        self._settings = settings
        partitions = {t: settings.partitions for t in settings.owned_topics()}
        partitions[settings.dlq_topic] = 1
        ensure_topics(settings.kafka_bootstrap, partitions, settings.replication_factor)
        self._log_id = cluster_id(settings.kafka_bootstrap)
        self._store = CheckpointStore(settings.database_url.get_secret_value(), pool_size=2)
        self._assignments: dict[tuple[str, int], Lease] = {}
        self._fenced: list[dict[str, object]] = []  # owners found fenced, for operators and tests
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._ensure_writers()
        self._ensure_owners()
        threading.Thread(target=self._supervise, name="leader-supervisor", daemon=True).start()

    def partitions(self) -> list[tuple[str, int]]:
        return [(t, p) for t in self._settings.owned_topics() for p in range(self._settings.partitions)]

    def assign(self, topic: str, partition: int, owner_id: str) -> Lease:
        """Give the partition to owner_id with a new epoch: every earlier owner is fenced in PostgreSQL."""
        lease = self._store.claim(topic, partition, owner_id, self._log_id)
        with self._lock:
            self._assignments[(topic, partition)] = lease
        log.info("assigned %s[%d] to %s at epoch %d", topic, partition, owner_id, lease.epoch)
        return lease

    def ready(self) -> bool:
        """True once every partition has an owner that claimed it."""
        with self._lock:
            return len(self._assignments) == len(self.partitions())

    def fenced_owners(self) -> list[dict[str, object]]:
        """Owners that found themselves fenced (a newer epoch committed) and were restarted by the leader."""
        with self._lock:
            return list(self._fenced)

    def owner_statuses(self, timeout_s: float = 5.0) -> list[dict[str, object]]:
        refs = []
        for topic, partition in self.partitions():
            try:
                refs.append(ray.get_actor(names.owner_name(topic, partition)).status.remote())
            except ValueError:
                continue
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        out = []
        for ref in ready:
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayError as exc:
                log.warning("owner status failed: %s", exc)
        return out

    def stop_all(self, timeout_s: float = 30.0) -> list[dict[str, object]]:
        """Graceful shutdown: owners finish their batch in flight and stop; then actors are released."""
        self._stopping.set()
        refs = []
        for topic, partition in self.partitions():
            try:
                refs.append(ray.get_actor(names.owner_name(topic, partition)).stop.remote(timeout_s))
            except ValueError:
                continue
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        return [ray.get(r) for r in ready]

    def kill_all(self) -> None:
        self._stopping.set()
        for topic, partition in self.partitions():
            try:
                ray.kill(ray.get_actor(names.owner_name(topic, partition)), no_restart=True)
            except ValueError:
                pass
        for i in range(self._settings.checkpoint_writers):
            try:
                ray.kill(ray.get_actor(names.writer_name(i)), no_restart=True)
            except ValueError:
                pass

    # -- supervision ----------------------------------------------------------------------------
    def _ensure_writers(self) -> None:
        for i in range(self._settings.checkpoint_writers):
            CheckpointWriter.options(  # type: ignore[attr-defined]
                name=names.writer_name(i),
                lifetime="detached",
                get_if_exists=True,
                max_concurrency=64,  # every owner's call waits in the group committer, none in Ray's queue
            ).remote(self._settings)

    def _ensure_owners(self) -> None:
        for topic, partition in self.partitions():
            PartitionOwner.options(  # type: ignore[attr-defined]
                name=names.owner_name(topic, partition),
                lifetime="detached",
                get_if_exists=True,
                max_concurrency=4,
            ).remote(self._settings, topic, partition)

    def purge_dedup(self) -> int:
        """Delete dedup keys past their TTL (the events table still refuses a re-used id)."""
        purged = self._store.purge_dedup()
        log.info("purged %d expired dedup keys", purged)
        return purged

    def _supervise(self) -> None:
        """Recreate missing actors; restart an owner that was fenced while still being the named owner."""
        last_purge = time.monotonic()
        while not self._stopping.wait(_SUPERVISE_EVERY_S):
            try:
                if time.monotonic() - last_purge > _PURGE_DEDUP_EVERY_S:
                    last_purge = time.monotonic()
                    self.purge_dedup()
                self._ensure_writers()
                self._ensure_owners()
                for status in self.owner_statuses(timeout_s=2.0):
                    if status.get("state") == "fenced":
                        name = names.owner_name(str(status["topic"]), int(status["partition"]))  # type: ignore[arg-type]
                        log.warning("restarting fenced owner %s", name)
                        with self._lock:
                            self._fenced.append({**status, "restarted_at": time.time()})
                        ray.kill(ray.get_actor(name), no_restart=False)
            except Exception:  # noqa: BLE001 - supervision must outlive any one failure
                log.exception("supervision round failed")
