"""Where the pipeline's processes are: owner, checkpoint writer and Serve replica pids, for scenarios that kill them.

Lookups only: nothing here sends a signal (Scenario.sigkill does, and puts it on the timeline).
"""

from __future__ import annotations

import time
from typing import Any

import ray
from ray._private import state as ray_state  # GCS actor table: works without the dashboard (no ray.util.state)
from ray.exceptions import GetTimeoutError, RayActorError

from actors import names
from tests.pipeline import Pipeline

SERVE_REPLICA_CLASS = "ServeReplica:eventpipe:ApiGateway"


def owner_handles(pipeline: Pipeline) -> dict[tuple[str, int], Any]:
    ns = pipeline.settings.ray_namespace
    out = {}
    for topic in pipeline.settings.owned_topics():
        for p in range(pipeline.settings.partitions):
            out[(topic, p)] = ray.get_actor(names.owner_name(topic, p), namespace=ns)
    return out


def owner_status(pipeline: Pipeline, topic: str, partition: int, timeout_s: float = 2.0) -> dict[str, Any] | None:
    """The owner's status straight from its actor; None while it restarts."""
    try:
        handle = ray.get_actor(names.owner_name(topic, partition), namespace=pipeline.settings.ray_namespace)
        return dict(ray.get(handle.status.remote(), timeout=timeout_s))
    except (ValueError, RayActorError, GetTimeoutError):
        return None


def owner_restarted(pipeline: Pipeline, topic: str, partition: int, old_pid: int) -> dict[str, Any] | None:
    """The owner's status once a new process holds the partition (a new pid, running); else None."""
    status = owner_status(pipeline, topic, partition)
    if status and status["pid"] != old_pid and status["state"] == "running":
        return status
    return None


def wait_in_flight(pipeline: Pipeline, timeout_s: float = 30.0) -> dict[str, Any]:
    """Poll every owner until one is between reading a batch and finishing its commit; return its status."""
    handles = owner_handles(pipeline)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        refs = [h.status.remote() for h in handles.values()]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=2.0)
        for ref in ready:
            try:
                status = ray.get(ref)
            except RayActorError:
                continue
            if status["in_flight"] and status["state"] == "running":
                return dict(status)
    raise AssertionError(f"no owner was seen with a batch in flight within {timeout_s}s")


def writer_pid(pipeline: Pipeline, index: int, timeout_s: float = 2.0) -> int | None:
    try:
        handle = ray.get_actor(names.writer_name(index), namespace=pipeline.settings.ray_namespace)
        return int(ray.get(handle.pid.remote(), timeout=timeout_s))
    except (ValueError, RayActorError, GetTimeoutError):
        return None


def serve_replica_pids() -> list[int]:
    """Pids of the live ApiGateway replicas (from the GCS actor table)."""
    actors = ray_state.actors()
    return sorted(
        int(info["Pid"])
        for info in actors.values()
        if info.get("ActorClassName") == SERVE_REPLICA_CLASS and info.get("State") == "ALIVE" and info.get("Pid")
    )
