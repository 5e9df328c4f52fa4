"""Everything `eventpipe run` starts listens on 127.0.0.1: the API and Serve's HAProxy (its stats and Prometheus
frontends and the fallback proxy included), the replicas, the metrics hub, Ray's dashboard and core processes,
PostgreSQL and the broker. Only kuberay/ binds every interface.

It starts the local stack as `make run` does (tests/run_process.py), lists the listening TCP sockets of every process
the run recorded (and their children), and fails on any not bound to a loopback address (0.0.0.0, ::, or the host's
routable address). A socket that cannot be moved is listed in KNOWN_WILDCARD with the reason found in Ray's source,
one socket per process, never dropped silently.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import psutil
import psycopg
import pytest

from cluster.local import free_port
from cluster.run_record import ProcTable, still_ours
from tests.factories import TS
from tests.pipeline import auth_headers, unique_prefix, wait_until
from tests.run_process import EventpipeRun, run_env

pytestmark = pytest.mark.integration

# (process title fragment) -> why Ray binds one socket of it to every interface and no setting can move it.
KNOWN_WILDCARD: dict[str, str] = {
    "ray::ServeReplica:": "Serve's inter-deployment gRPC server: ray/serve/_private/replica.py (Ray 2.60) starts it in "
    "_on_initialized with add_port_to_grpc_server(self._server, '[::]:0'), a literal address no option, environment "
    "variable or http_options host changes; it is started for every replica, whether handles use gRPC or not",
}


@dataclass(frozen=True)
class Listener:
    pid: int
    name: str
    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.name} (pid {self.pid}) on {self.address}:{self.port}"


def _listeners(pids: set[int]) -> list[Listener]:
    found: list[Listener] = []
    seen: set[int] = set()
    queue = list(pids)
    while queue:
        pid = queue.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            proc = psutil.Process(pid)
            name = " ".join(proc.cmdline())[:120] or proc.name()
            queue += [child.pid for child in proc.children()]
            sockets = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        found += [
            Listener(pid, name, s.laddr.ip, s.laddr.port) for s in sockets if s.status == psutil.CONN_LISTEN and s.laddr
        ]
    return found


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _wildcard(address: str) -> bool:
    return ipaddress.ip_address(address.split("%")[0]).is_unspecified


def _explained(listeners: list[Listener]) -> list[Listener]:
    """At most one every-interface socket per process whose title KNOWN_WILDCARD names."""
    known: dict[int, Listener] = {}
    for lst in listeners:
        if _wildcard(lst.address) and lst.pid not in known and any(k in lst.name for k in KNOWN_WILDCARD):
            known[lst.pid] = lst
    return list(known.values())


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EventpipeRun]:
    data_dir = tmp_path_factory.mktemp("binds") / "data"
    started = EventpipeRun(data_dir, run_env(data_dir, free_port(), free_port(), free_port()), "binds").start()
    try:
        started.wait_ready()
        yield started
    finally:
        started.cleanup()


def test_every_socket_the_local_stack_listens_on_is_bound_to_loopback(run: EventpipeRun) -> None:
    # given the local stack as `make run` starts it, ready
    record = run.record()
    pids = {p.pid for p in still_ours(record, ProcTable(), run.data_dir)} | {run.pid}
    # when every listening socket of its processes is listed
    listeners = _listeners(pids)
    # then there are some (the API, PostgreSQL, the broker at least), and none is on every interface
    assert len(listeners) >= 3, listeners
    api_port = int(run.banner().base_url.rsplit(":", 1)[1].strip("/"))
    assert any(lst.port == api_port for lst in listeners), [str(lst) for lst in listeners]
    known = _explained(listeners)
    exposed = [str(lst) for lst in listeners if not _loopback(lst.address) and lst not in known]
    print(f"\n{len(listeners)} listening sockets; beyond loopback, known and explained: {[str(k) for k in known]}")
    assert exposed == [], "listening beyond loopback:\n" + "\n".join(exposed)


def test_the_stack_on_loopback_processes_events(run: EventpipeRun) -> None:
    # given the stack with its Ray node on 127.0.0.1 and HAProxy's binds moved there
    banner = run.banner()
    event_id = unique_prefix("binds")
    event = {"id": event_id, "type": "user_action", "timestamp": TS, "user_id": "u", "action": "click", "target": "t"}
    # when an event is sent to its API
    reply = httpx.post(f"{banner.base_url}/events", json=event, headers=auth_headers(banner.api_key), timeout=30)
    # then it is acknowledged and processed by a partition owner
    assert reply.status_code == 202, reply.text

    def processed() -> bool:
        with psycopg.connect(banner.database_url, autocommit=True) as conn:
            row = conn.execute("SELECT status FROM events WHERE id = %s", (event_id,)).fetchone()
        return row is not None and row[0] == "processed"

    wait_until(processed, 60, "the event processed")


def test_eventpipe_status_reaches_the_loopback_ray_from_a_plain_shell(run: EventpipeRun) -> None:
    # given the run's Ray on 127.0.0.1 (single-machine mode), and a shell without the run's Ray environment
    env = {k: v for k, v in run.env.items() if not k.startswith("RAY_")}
    # when `eventpipe status` asks its leader, then it prints the partition owners
    done = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "status"],
        env=env,
        cwd=run.data_dir.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "partition" in done.stdout, done.stdout[-2000:]
