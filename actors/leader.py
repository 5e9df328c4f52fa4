"""Leader: the single named, detached coordinator of one Ray cluster; holds the leader lease in PostgreSQL, creates
the writers and one owner per partition, and hands out partition epochs.

It assigns and supervises, never processes events. GCS's named-actor guarantee makes it the only leader inside its
Ray cluster; the leader lease (cluster/adapters/leases.py) makes its cluster the only one that may claim partitions
from a shared database. Without the lease it stands by: it creates no owners and claims nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict

import ray

from actors import names
from actors.checkpoint_writer import CheckpointWriter
from actors.lease_keeper import LeaseKeeper, Role
from actors.metrics_hub import start_metrics_push
from actors.partition_owner import PartitionOwner
from cluster.adapters.checkpoint_store import CheckpointStore, Lease, is_unavailable
from cluster.adapters.kafka_admin import cluster_id, ensure_topics
from cluster.adapters.leases import LeaseNotHeld, LeaseStore, leader_lease_name
from cluster.adapters.retention import Purged, RetentionPolicy, RetentionStore, describe
from cluster.observability.breakers import breaker
from cluster.observability.logs import setup_logging
from cluster.settings import Settings

log = logging.getLogger(__name__)
_SUPERVISE_EVERY_S = 2.0
_RETENTION_CATCH_UP_PAUSE_S = 1.0  # between purge rounds while rows past their window remain
_STOP_OWNERS_TIMEOUT_S = 5.0


def holder_id(settings: Settings) -> str:
    """This Ray cluster's identity as lease holder: the configured cluster_name, else the Ray session and namespace.

    The Ray session name is the same in every process of one Ray cluster and survives actor restarts; a second Ray
    cluster on the same machine has another one.
    """
    if settings.cluster_name:
        return settings.cluster_name
    context = ray.get_runtime_context()
    return f"ray-{context.get_session_name()}/{context.namespace}"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Leader:
    def __init__(self, settings: Settings) -> None:
        settings = settings.in_process()  # secrets come from this process's environment, not Ray
        setup_logging(settings, "leader")
        self._settings = settings
        url = settings.database_url.get_secret_value()
        self._store = CheckpointStore(url, pool_size=4)  # claims come in bursts when owners restart
        self._retention = RetentionStore(url)
        self._pg = breaker("postgres", settings)
        self._wake = threading.Event()
        self._keeper = LeaseKeeper(
            LeaseStore(url),
            leader_lease_name(settings.topic_prefix),
            holder_id(settings),
            settings.leader_lease_ttl_s,
            on_change=lambda _role: self._wake.set(),
        )
        self._log_id: str | None = None
        self._term = 0  # the keeper term whose owners this leader has set up; 0: none (standby)
        self._assignments: dict[tuple[str, int], tuple[int, Lease]] = {}  # partition -> (term, lease)
        self._fenced: list[dict[str, object]] = []  # owners found fenced, for operators and tests
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        start_metrics_push(settings, "leader")
        # Nothing that can block on the broker or PostgreSQL runs here: a dependency outage must not crash-loop us.
        threading.Thread(target=self._keeper.run, name="leader-lease", daemon=True).start()
        threading.Thread(target=self._supervise, name="leader-supervisor", daemon=True).start()
        threading.Thread(target=self._housekeep, name="leader-housekeeping", daemon=True).start()

    def partitions(self) -> list[tuple[str, int]]:
        return [(t, p) for t in self._settings.owned_topics() for p in range(self._settings.partitions)]

    def assign(self, topic: str, partition: int, owner_id: str) -> Lease:
        """Give the partition to owner_id with a new epoch: every earlier owner is fenced in PostgreSQL.

        Raises LeaseNotHeld while this leader stands by (or its lease is unconfirmed), and CircuitOpen while
        PostgreSQL is failing; both are retriable, and the owner asks again.
        """
        held = self._keeper.held()
        if held is None or self._log_id is None:
            status = self._keeper.status()
            other = f", held by {status.held_by}" if status.held_by else ""
            raise LeaseNotHeld(f"leader {status.holder} is {status.role.value}{other}: it assigns no partitions now")
        lease, term = held
        log_id = self._log_id
        try:
            claimed = self._pg.call(
                lambda: self._store.claim(topic, partition, owner_id, log_id, lease), is_failure=is_unavailable
            )
        except LeaseNotHeld as exc:
            self._keeper.recheck(str(exc))
            raise
        with self._lock:
            self._assignments[(topic, partition)] = (term, claimed)
        log.info("assigned %s[%d] to %s at epoch %d", topic, partition, owner_id, claimed.epoch)
        return claimed

    def ready(self) -> bool:
        """True once this leader holds the lease and every partition has an owner that claimed it in this term."""
        held = self._keeper.held()
        if held is None or held[1] != self._term:
            return False
        with self._lock:
            current = sum(1 for term, _ in self._assignments.values() if term == self._term)
        return current == len(self.partitions())

    def leadership(self) -> dict[str, object]:
        """Role, lease holder and epoch, term and how many partitions are assigned in it: for status and tests."""
        status = self._keeper.status()
        with self._lock:
            assigned = {
                f"{t}:{p}": {"epoch": lease.epoch, "owner_id": lease.owner_id}
                for (t, p), (term, lease) in self._assignments.items()
                if term == self._term
            }
        return {**asdict(status), "role": status.role.value, "assigned": assigned, "pid": os.getpid()}

    def pid(self) -> int:
        return os.getpid()

    def fenced_owners(self) -> list[dict[str, object]]:
        """Owners that found themselves fenced (a newer epoch committed) and were restarted by the leader."""
        with self._lock:
            return list(self._fenced)

    def owner_statuses(self, timeout_s: float = 5.0) -> list[dict[str, object]]:
        return self._ask_owners("status", timeout_s)

    def stop_all(self, timeout_s: float = 30.0) -> list[dict[str, object]]:
        """Graceful shutdown: owners finish their batch in flight and stop; then actors are released.

        The lease is still renewed meanwhile; kill_all releases it.
        """
        self._stopping.set()
        return self._stop_owners(timeout_s)

    def kill_all(self) -> None:
        self._stopping.set()
        self._keeper.close()  # release the lease: another cluster's leader may take over at once
        self._kill_owners()
        for i in range(self._settings.checkpoint_writers):
            try:
                ray.kill(ray.get_actor(names.writer_name(i)), no_restart=True)
            except ValueError:
                pass
        try:  # started by actors.lifecycle, released here with the rest
            ray.kill(ray.get_actor(names.SPOOL_DRAINER), no_restart=True)
        except ValueError:
            pass

    def purge_dedup(self) -> int:
        """Delete dedup keys past their TTL (the events table still refuses a re-used id)."""
        purged = self._pg.call(self._store.purge_dedup, is_failure=is_unavailable)
        log.info("purged %d expired dedup keys", purged)
        return purged

    def purge_retention(self) -> dict[str, int]:
        """One retention round: rows past their window, at most `retention_max_chunks` chunks per table. Returns the
        rows deleted per table (results deleted with their events under `results_of_events`) and `more_left`."""
        purged = self._purge_retention()
        rows = {p.table.value: p.rows for p in purged} | {"results_of_events": sum(p.results for p in purged)}
        return rows | {"more_left": int(not all(p.finished for p in purged))}

    def _purge_retention(self) -> list[Purged]:
        policy = RetentionPolicy.from_settings(self._settings)
        purged = self._pg.call(lambda: self._retention.purge(policy), is_failure=is_unavailable)
        rows = {p.table.value: p.rows for p in purged} | {"results_of_events": sum(p.results for p in purged)}
        log.info("retention purge: %s", describe(purged), extra={"purged": rows})
        return purged

    # -- taking and leaving office --------------------------------------------------------------
    def _take_office(self, term: int) -> None:
        """The lease was acquired afresh (a new leader instance, or after a loss): every partition is claimed again.

        Owners left from an earlier leader instance are restarted, unless they already claimed through us in this
        term; their new incarnations claim new epochs, which fences anything the old ones still hold.
        """
        owned = {t: self._settings.partitions for t in self._settings.owned_topics()}
        ensure_topics(self._settings.kafka_bootstrap, owned, self._settings.replication_factor)
        ensure_topics(
            self._settings.kafka_bootstrap,
            {self._settings.dlq_topic: 1},
            self._settings.replication_factor,
            owned=False,
        )
        self._log_id = cluster_id(self._settings.kafka_bootstrap)
        self._ensure_writers()
        with self._lock:
            claimed = {key for key, (t, _) in self._assignments.items() if t == term}
        restarted = 0
        for topic, partition in self.partitions():
            if (topic, partition) in claimed:
                continue
            try:
                ray.kill(ray.get_actor(names.owner_name(topic, partition)), no_restart=False)
                restarted += 1
            except ValueError:
                continue  # none yet: created below
        self._ensure_owners()
        self._term = term
        log.info("leader in office (term %d): %d owners restarted to claim again", term, restarted)

    def _leave_office(self) -> None:
        """The lease is gone to another holder: stop our owners (their commits would be fenced anyway)."""
        log.warning("leader lease lost: stopping this cluster's partition owners")
        self._term = 0
        with self._lock:
            self._assignments.clear()
        self._stop_owners(_STOP_OWNERS_TIMEOUT_S)
        self._kill_owners()

    def _stop_owners(self, timeout_s: float) -> list[dict[str, object]]:
        return self._ask_owners("stop", timeout_s + 1, timeout_s)

    def _ask_owners(self, method: str, timeout_s: float, *args: object) -> list[dict[str, object]]:
        """Call `method` on every existing owner at once; the answers that came within timeout_s."""
        refs = []
        for topic, partition in self.partitions():
            try:
                refs.append(getattr(ray.get_actor(names.owner_name(topic, partition)), method).remote(*args))
            except ValueError:
                continue
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        out = []
        for ref in ready:
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayError as exc:
                log.warning("owner %s failed: %s", method, exc)
        return out

    def _kill_owners(self) -> None:
        for topic, partition in self.partitions():
            try:
                ray.kill(ray.get_actor(names.owner_name(topic, partition)), no_restart=True)
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

    def _supervise(self) -> None:
        """Follow the lease: set up owners on taking office, stop them on losing it; while in office, recreate
        missing actors and restart an owner that was fenced while still being the named owner."""
        while not self._stopping.is_set():
            self._wake.wait(_SUPERVISE_EVERY_S)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                held = self._keeper.held()
                if held is None:
                    # Unconfirmed (PostgreSQL silent): keep the owners, claim nothing. Standby: the lease is gone.
                    if self._term and self._keeper.role is Role.STANDBY:
                        self._leave_office()
                    continue
                if held[1] != self._term:
                    self._take_office(held[1])
                self._ensure_writers()
                self._ensure_owners()
                self._restart_fenced()
            except Exception:  # noqa: BLE001 - supervision must outlive any one failure
                log.exception("supervision round failed")

    def _housekeep(self) -> None:
        """Every purge_interval_s while this cluster holds the lease: expired dedup keys, then one retention round;
        while a round leaves rows past their window (a backlog), the next round follows after a short pause. Its own
        thread: a long purge never delays supervision."""
        behind = False
        while not self._stopping.wait(_RETENTION_CATCH_UP_PAUSE_S if behind else self._settings.purge_interval_s):
            if self._keeper.held() is None:
                behind = False
                continue
            try:
                if not behind:
                    self.purge_dedup()
                behind = not all(p.finished for p in self._purge_retention())
            except Exception as exc:  # noqa: BLE001 - the next round tries again; PostgreSQL may be down
                behind = False
                log.warning("purge failed: %s", exc)

    def _restart_fenced(self) -> None:
        for status in self.owner_statuses(timeout_s=2.0):
            if status.get("state") == "fenced":
                name = names.owner_name(str(status["topic"]), int(status["partition"]))  # type: ignore[arg-type]
                log.warning("restarting fenced owner %s", name)
                with self._lock:
                    self._fenced.append({**status, "restarted_at": time.time()})
                ray.kill(ray.get_actor(name), no_restart=False)
