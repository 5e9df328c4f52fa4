"""MetricsHub: the named, detached actor behind the cluster's ONE Prometheus scrape target (and the status page).

Every eventpipe process pushes snapshots of its registry here (cluster.observability.push); the hub merges them
(cluster.observability.hub) and measures what no single worker can see: worker health (owners, writers, drainer,
leader: asked directly, silence is unhealthy), queue lag per partition (broker high watermark minus committed offset)
and the dead letters stored. It never touches events, offsets or actors' state: it only asks and reads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import ray

from actors import names
from cluster.adapters.pipeline_stats import PipelineStats
from cluster.observability import metrics as catalogue  # a module: Ray pickles methods by value, locks cannot be
from cluster.observability import push
from cluster.observability.endpoint import MetricsEndpoint
from cluster.observability.hub import HUB_SOURCE, MetricsMerger
from cluster.observability.lag import HighWatermarks, Partition, queue_lag, watermark_consumer_config
from cluster.observability.logs import setup_logging
from cluster.observability.snapshot import Snapshot, take
from cluster.observability.status_page import StatusPage
from cluster.settings import Settings
from pipelines.owner_status import HEALTHY_OWNER_STATES

log = logging.getLogger(__name__)

_MEASURE_EVERY_S = 2.0
_HEALTH_TIMEOUT_S = 3.0
_DLQ_EVERY_S = 5.0
_BIND_RETRY_S = 5.0


def start_metrics_push(settings: Settings, role: str) -> push.MetricsPusher:
    """Start pushing this process's metrics to the hub (once per process; later calls are no-ops)."""
    interval_s = settings.metrics_push_interval_s
    return push.start(catalogue.REGISTRY, role, names.METRICS_HUB, settings.ray_namespace, interval_s)


def workers(settings: Settings) -> list[str]:
    """Every worker whose health the hub reports, by its actor name (the `worker` label)."""
    out = [names.LEADER]
    out += [names.writer_name(i) for i in range(settings.checkpoint_writers)]
    out += [names.owner_name(t, p) for t in settings.owned_topics() for p in range(settings.partitions)]
    if settings.spool_enabled:
        out.append(names.SPOOL_DRAINER)
    return out


def healthy(worker: str, answer: Any) -> bool:
    """Whether a worker's answer to its status call says it is doing its job (an answer at all is required)."""
    if worker.startswith("owner:"):
        return isinstance(answer, dict) and answer.get("state") in HEALTHY_OWNER_STATES
    if worker == names.SPOOL_DRAINER:
        return isinstance(answer, dict) and bool(answer.get("running"))
    return answer is not None


def _status_call(worker: str, actor: Any) -> Any:
    if worker.startswith("owner:") or worker == names.SPOOL_DRAINER:
        return actor.status.remote()
    if worker == names.LEADER:
        return actor.leadership.remote()
    return actor.stats.remote()


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class MetricsHub:
    def __init__(self, settings: Settings) -> None:
        settings = settings.in_process()  # secrets come from this process's environment, not Ray
        setup_logging(settings, "metrics-hub")
        self._settings = settings
        self._merger = MetricsMerger(retire_after_s=max(10.0, 10 * settings.metrics_push_interval_s))
        self._endpoint = MetricsEndpoint(
            settings.http_host, settings.metrics_port, self.render, pages=[StatusPage().handle]
        )
        self._stopping = threading.Event()
        self._highs: dict[Partition, int] = {}  # last known high watermark per partition
        # Neither connects here: the broker and PostgreSQL are first reached from the lag thread.
        self._stats = PipelineStats(settings.database_url.get_secret_value())
        self._watermarks = HighWatermarks(watermark_consumer_config(settings.kafka_bootstrap))
        self._last_dlq = 0.0
        self._threads = [
            threading.Thread(target=self._keep_serving, name="hub-http", daemon=True),
            threading.Thread(target=self._loop, args=(self._measure_lag,), name="hub-lag", daemon=True),
            threading.Thread(target=self._loop, args=(self._measure_health,), name="hub-health", daemon=True),
        ]
        self._endpoint.start()
        for thread in self._threads:
            thread.start()

    # -- Ray-facing API -------------------------------------------------------------------------
    def push(self, source: str, snapshot: Snapshot) -> None:
        self._merger.update(source, snapshot, time.time())

    def address(self) -> str | None:
        """Base URL of /metrics and /status once the port is bound, else None."""
        bound = self._endpoint.address
        return f"http://{bound[0]}:{bound[1]}" if bound else None

    def sources(self) -> dict[str, dict[str, object]]:
        return self._merger.sources(time.time())

    def render(self) -> bytes:
        """The merged exposition, as /metrics serves it."""
        now = time.time()
        self._merger.update(HUB_SOURCE, take(catalogue.REGISTRY), now)
        return self._merger.render(now)

    def stop(self) -> None:
        self._stopping.set()
        self._endpoint.close()

    # -- background work -------------------------------------------------------------------------
    def _keep_serving(self) -> None:
        """The port may be held a little longer by a hub that just died: keep trying to bind it."""
        while self._endpoint.address is None and not self._stopping.wait(_BIND_RETRY_S):
            self._endpoint.start()

    def _loop(self, measure: Callable[[], None]) -> None:
        while not self._stopping.wait(_MEASURE_EVERY_S):
            try:
                measure()
            except Exception:  # noqa: BLE001 - a dependency being down must not stop the measuring
                log.warning("%s failed", measure.__name__, exc_info=True)

    def _measure_health(self) -> None:
        calls: dict[str, Any] = {}
        for worker in workers(self._settings):
            try:
                calls[worker] = _status_call(worker, ray.get_actor(worker, namespace=self._settings.ray_namespace))
            except ValueError:
                continue  # no such actor: unhealthy
        refs = list(calls.values())
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=_HEALTH_TIMEOUT_S) if refs else ([], [])
        answered = set(ready)
        for worker in workers(self._settings):
            answer = None
            ref = calls.get(worker)
            if ref is not None and ref in answered:
                try:
                    answer = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    log.debug("health of %s: %s", worker, exc)
            catalogue.METRICS.worker_health.labels(worker).set(1 if healthy(worker, answer) else 0)

    def _measure_lag(self) -> None:
        s = self._settings
        topics = s.owned_topics()
        committed = self._stats.committed_offsets(topics)
        positions = {(t, p): committed.get((t, p), 0) for t in topics for p in range(s.partitions)}
        self._highs.update(self._watermarks.read(positions))
        for (topic, partition), lag in queue_lag(self._highs, positions).items():
            catalogue.METRICS.queue_lag.labels(topic, str(partition)).set(lag)
        if time.monotonic() - self._last_dlq >= _DLQ_EVERY_S:
            catalogue.METRICS.dlq_size.set(self._stats.dead_letter_count())
            self._last_dlq = time.monotonic()
