"""Starting and stopping the processing side: the metrics hub, the leader (which creates writers and owners), the
spool drainer, the rate limiter, readiness, drain.

Used by the CLI and by tests; it holds no processing logic and never kills an owner with a batch in flight
unless told to.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray

from actors import names
from actors.leader import Leader
from actors.metrics_hub import MetricsHub
from actors.rate_limiter import start_rate_limiter
from actors.spool_drainer import SpoolDrainer
from cluster.settings import Settings

log = logging.getLogger(__name__)


def start_pipeline(settings: Settings, ready_timeout_s: float = 120.0) -> Any:
    """Create (or find) the metrics hub and the leader, and wait until every partition has a live owner."""
    start_metrics_hub(settings)  # first: every worker pushes its metrics to it from the start
    start_rate_limiter(settings)  # before the API: its replicas' first requests lease from it
    leader = Leader.options(  # type: ignore[attr-defined]
        name=names.LEADER, lifetime="detached", get_if_exists=True, max_concurrency=64
    ).remote(settings)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if ray.get(leader.ready.remote(), timeout=ready_timeout_s):
            start_spool_drainer(settings)  # after the leader: it creates the topics on taking office
            return leader
        time.sleep(0.2)
    raise TimeoutError(f"partition owners were not all assigned within {ready_timeout_s}s")


def start_spool_drainer(settings: Settings) -> Any | None:
    """Create (or find) the drainer that publishes spooled events; None when the spool is disabled."""
    if not settings.spool_enabled:
        return None
    return SpoolDrainer.options(  # type: ignore[attr-defined]
        name=names.SPOOL_DRAINER, lifetime="detached", get_if_exists=True, max_concurrency=2
    ).remote(settings)


def start_metrics_hub(settings: Settings) -> Any:
    """Create (or find) the hub behind the cluster's one /metrics endpoint, on the head node (a stable address)."""
    return MetricsHub.options(  # type: ignore[attr-defined]
        name=names.METRICS_HUB,
        lifetime="detached",
        get_if_exists=True,
        max_concurrency=8,
        resources={"node:__internal_head__": 0.001},
    ).remote(settings)


def metrics_url(timeout_s: float = 10.0) -> str | None:
    """Base URL of the running hub's /metrics and /status, None while its port is not bound."""
    hub = ray.get_actor(names.METRICS_HUB)
    deadline = time.monotonic() + timeout_s
    while True:
        url: str | None = ray.get(hub.address.remote(), timeout=timeout_s)
        if url is not None or time.monotonic() > deadline:
            return url
        time.sleep(0.2)


def stop_metrics_hub() -> None:
    try:
        hub = ray.get_actor(names.METRICS_HUB)
    except ValueError:
        return
    try:
        ray.get(hub.stop.remote(), timeout=5)
    except (ray.exceptions.RayError, TimeoutError) as exc:
        log.warning("metrics hub did not stop cleanly: %s", exc)
    ray.kill(hub, no_restart=True)


def stop_rate_limiter() -> None:
    """Release the limiter; it holds nothing durable (a new one starts every key's bucket full)."""
    try:
        ray.kill(ray.get_actor(names.RATE_LIMITER), no_restart=True)
    except ValueError:
        return


def stop_spool_drainer(timeout_s: float = 15.0) -> None:
    """Let the drainer finish its batch in flight, then release it; spooled rows stay for the next start."""
    try:
        drainer = ray.get_actor(names.SPOOL_DRAINER)
    except ValueError:
        return
    try:
        ray.get(drainer.stop.remote(timeout_s), timeout=timeout_s + 5)
    except (ray.exceptions.RayError, TimeoutError) as exc:
        log.warning("spool drainer did not stop cleanly: %s", exc)
    ray.kill(drainer, no_restart=True)


def get_leader() -> Any:
    return ray.get_actor(names.LEADER)


def wait_idle(leader: Any, quiet_s: float = 1.0, timeout_s: float = 60.0) -> bool:
    """True once no owner has read a record for quiet_s and none has a batch in flight."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        statuses = ray.get(leader.owner_statuses.remote())
        now = time.time()
        busy = [s for s in statuses if s["in_flight"] or (s["last_record_at"] or 0) > now - quiet_s]
        if statuses and not busy:
            return True
        time.sleep(0.2)
    return False


def stop_pipeline(leader: Any, drain_timeout_s: float = 30.0) -> None:
    """Drain (owners finish and commit what they read), then release every actor."""
    try:
        stop_spool_drainer()
        wait_idle(leader, timeout_s=drain_timeout_s)
        ray.get(leader.stop_all.remote(10.0), timeout=drain_timeout_s)
        ray.get(leader.kill_all.remote(), timeout=30)
    finally:
        ray.kill(leader, no_restart=True)
        stop_rate_limiter()
        stop_metrics_hub()
