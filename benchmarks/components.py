"""Which pipeline component a process belongs to, from its name and command line (Ray titles its workers
`ray::<ActorClass>`), in the order the cost table lists them.

Pure: it reads no process table; callers pass what they read. It never decides which processes belong to the stack.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import StrEnum
from pathlib import PurePath


class Component(StrEnum):
    """A row of the cost table; the declaration order is the row order."""

    API = "API"
    OWNERS = "owners"
    WRITERS = "writers"
    POSTGRES = "PostgreSQL"
    BROKER = "broker"
    RAY_CORE = "Ray core"
    METRICS_HUB = "metrics hub"
    DRIVER = "driver"
    OTHER = "other"


# What each row holds, printed under the table so a reader knows what a figure covers.
MEMBERS: dict[Component, str] = {
    Component.API: "Serve replicas, proxy, HAProxyManager, haproxy, ServeController",
    Component.OWNERS: "ray::PartitionOwner",
    Component.WRITERS: "ray::CheckpointWriter",
    Component.POSTGRES: "postmaster and its backends",
    Component.BROKER: "tansu",
    Component.RAY_CORE: (
        "eventpipe run (the supervisor), raylet, gcs_server, dashboard, log_monitor, autoscaler monitor, "
        "Ray client server, every other ray:: worker (DashboardAgent, RuntimeEnvAgent, Leader, SpoolDrainer, IDLE, ...)"
    ),
    Component.METRICS_HUB: "ray::MetricsHub",
    Component.DRIVER: "the load driver (this process)",
    Component.OTHER: "any other process of the stack's tree",
}

# Ray titles worker processes "ray::<ActorClass>" or "ray::<ActorClass>.<method>" while running.
RAY_TITLE = re.compile(r"^ray::([^\s.]+)")
SERVE_ACTORS = ("ServeReplica", "ProxyActor", "HAProxyManager", "ServeController")
ACTOR_COMPONENTS: dict[str, Component] = {
    "PartitionOwner": Component.OWNERS,
    "CheckpointWriter": Component.WRITERS,
    "MetricsHub": Component.METRICS_HUB,
}
EXECUTABLES: dict[str, Component] = {
    "haproxy": Component.API,
    "tansu": Component.BROKER,
    "postgres": Component.POSTGRES,
    "postmaster": Component.POSTGRES,
    "raylet": Component.RAY_CORE,
    "gcs_server": Component.RAY_CORE,
}
# Ray's Python helpers: dashboard and its forkserver children, log monitor, autoscaler, a worker not yet titled.
RAY_PYTHON = re.compile(
    r"[/\\]ray[/\\]|^ray-dashboard-|multiprocessing\.(forkserver|resource_tracker)|-m ray\.util\.client\.server"
)


def _actor_component(actor_class: str) -> Component:
    if actor_class.startswith(SERVE_ACTORS):
        return Component.API
    return ACTOR_COMPONENTS.get(actor_class, Component.RAY_CORE)


def is_eventpipe_run(cmdline: Sequence[str]) -> bool:
    """`eventpipe run`, the CLI that starts the stack and supervises it."""
    names = [PurePath(arg).name for arg in cmdline]
    return any(name == "eventpipe" and names[i + 1 : i + 2] == ["run"] for i, name in enumerate(names))


def component_of(name: str, cmdline: Sequence[str], *, is_driver: bool = False) -> Component:
    """The component of one process of the stack (or of the driver)."""
    if is_driver:
        return Component.DRIVER
    head = cmdline[0] if cmdline else name
    if match := RAY_TITLE.match(head):
        return _actor_component(match.group(1))
    if head.startswith("postgres:"):
        return Component.POSTGRES  # a backend's title, e.g. "postgres: walwriter"
    executable = EXECUTABLES.get(PurePath(head).name) or EXECUTABLES.get(name)
    if executable is not None:
        return executable
    if is_eventpipe_run(cmdline) or RAY_PYTHON.search(" ".join(cmdline) or name):
        return Component.RAY_CORE
    return Component.OTHER
