"""A local Ray head started with `ray start --head` in a session of its own, so every process Ray starts for it (GCS,
raylet, dashboard, workers, HAProxy) is found by that session id, watched, and stopped, and none outlives a run.

It never stops a process outside its session or without this run's data dir in its environment, and never runs
`ray stop` (which stops every Ray cluster on the host).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cluster.local import LOCALHOST, can_connect, free_port
from cluster.run_record import ProcessTable, RecordedProcess, session_processes, stop_processes


def auth_env(token_path: Path) -> dict[str, str]:
    """Token authentication on, with the token kept in the data dir (not ~/.ray, which every Ray on the host reads);
    the token is created on first use. Every process that talks to this cluster needs these two variables."""
    if not token_path.exists():
        token_path.parent.mkdir(parents=True, exist_ok=True)
        token_path.touch(mode=0o600)
        token_path.write_text(secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path.resolve())}


@dataclass(frozen=True)
class HeadPorts:
    gcs: int
    dashboard: int
    client_server: int
    dashboard_agent: int
    dashboard_agent_grpc: int
    metrics_export: int
    runtime_env_agent: int

    @classmethod
    def choose(cls, dashboard: int) -> HeadPorts:
        """Ray's fixed defaults (6379, 10001, 52365, ...) collide with any other Ray on the host: take free ones,
        all different, and never the dashboard's (free for a moment while a killed dashboard's Ray restarts)."""
        taken = {dashboard}
        ports = []
        while len(ports) < 6:
            port = free_port()
            if port not in taken:
                taken.add(port)
                ports.append(port)
        return cls(ports[0], dashboard, *ports[1:])


class RayStartError(RuntimeError):
    """`ray start --head` failed or left no GCS or raylet; the message names its log."""


class RayHead:
    """One `ray start --head` and the session of processes it leaves behind."""

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str],
        dashboard_port: int,
        table: ProcessTable,
        temp_dir: Path,
        on_sessions: Callable[[list[int]], None] | None = None,
    ) -> None:
        """`temp_dir`: Ray's root for sessions, sockets and logs, ours alone: `ray start` writes the address of the
        cluster it started to `<temp_dir>/ray_current_cluster`, and every `ray.init()` on the host without an
        address connects to what /tmp/ray/ray_current_cluster names, so the default /tmp/ray would hand this
        run's Ray (or, once stopped, a dead address) to every other Ray program on the host.

        `on_sessions`: told the sessions that may hold a process of ours whenever they change (a session is added
        as soon as `ray start` is launched, dropped once seen empty), to keep the run record current."""
        self.data_dir = Path(data_dir).resolve()
        self.log_path = self.data_dir / "logs" / "ray-start.log"
        self.temp_dir = temp_dir
        self._env = env
        self._dashboard_port = dashboard_port
        self._table = table
        self.ports: HeadPorts | None = None
        self.sid: int | None = None
        self.sessions: list[int] = []
        self._on_sessions = on_sessions
        self._gcs: RecordedProcess | None = None
        self._raylet: RecordedProcess | None = None

    @property
    def address(self) -> str:
        if self.ports is None:
            raise RuntimeError("Ray head has no address before start()")
        return f"{LOCALHOST}:{self.ports.gcs}"

    def start(self, timeout_s: float = 120.0) -> None:
        self.ports = ports = HeadPorts.choose(self._dashboard_port)
        ray_bin = Path(sys.executable).parent / "ray"
        cmd = [
            str(ray_bin), "start", "--head",
            "--node-ip-address", LOCALHOST,
            "--port", str(ports.gcs),
            "--ray-client-server-port", str(ports.client_server),
            "--include-dashboard", "true",
            "--dashboard-host", LOCALHOST,
            "--dashboard-port", str(ports.dashboard),
            "--dashboard-agent-listen-port", str(ports.dashboard_agent),
            "--dashboard-agent-grpc-port", str(ports.dashboard_agent_grpc),
            "--metrics-export-port", str(ports.metrics_export),
            "--runtime-env-agent-port", str(ports.runtime_env_agent),
            "--temp-dir", str(self.temp_dir),
            "--disable-usage-stats",
        ]  # fmt: skip
        env = {**os.environ, **self._env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            # A session of its own: its id names every process of this Ray, and a Ctrl-C in the terminal reaches
            # only the supervisor, which stops Ray in order.
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self.sid = proc.pid
            self.sessions.append(proc.pid)
            self._sessions_changed()  # before the wait: a SIGKILL of the run from here on leaves nothing unknown
            try:
                code = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                code = -1
        if code != 0:
            self.stop()
            raise RayStartError(f"`ray start --head` failed ({code}); its output is in {self.log_path}")
        self._gcs = self._find("gcs_server")
        self._raylet = self._find("raylet")
        if self._gcs is None or self._raylet is None:
            self.stop()
            raise RayStartError(f"Ray started but its GCS or raylet is not running; see {self.log_path}")

    @property
    def log_dir(self) -> str | None:
        """Ray's own log directory of this session (`/tmp/ray/session_<time>/logs`), from its GCS command line."""
        if self._gcs is None:
            return None
        for arg in self._gcs.cmdline:
            if arg.startswith("--log_dir="):
                return arg.removeprefix("--log_dir=")
        return None

    def _find(self, program: str) -> RecordedProcess | None:
        for p in self.processes():
            if p.name == program:
                return p
        return None

    def processes(self) -> list[RecordedProcess]:
        """Every live process of this Ray's sessions (GCS, raylet, dashboard, workers, HAProxy)."""
        return [p for sid in self.sessions for p in session_processes(sid, self._table, self.data_dir)]

    def failure(self) -> str | None:
        """Why this Ray is not usable, None while its GCS and raylet run and the GCS accepts connections."""
        for what, p in (("GCS", self._gcs), ("raylet", self._raylet)):
            if p is None or self._table.cmdline(p.pid) != p.cmdline:
                return f"the Ray {what} is gone"
        if self.ports is None or not can_connect(self.ports.gcs, timeout_s=0.5):
            return "the Ray GCS does not accept connections"
        return None

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM every process of the session, SIGKILL what is left after grace_s (a raylet whose GCS died first
        waits for it far longer than that)."""
        processes = self.processes()
        stop_processes(processes, self._table, grace_s=grace_s)
        # A process forked while we were stopping the others: one more pass, straight to SIGKILL.
        leftover = self.processes()
        for p in leftover:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while leftover and time.monotonic() < deadline:
            time.sleep(0.05)
            leftover = self.processes()
        self._gcs = self._raylet = None
        # An empty session's id is a free pid again: keeping it would claim whoever gets that pid next.
        left = [sid for sid in self.sessions if session_processes(sid, self._table, self.data_dir)]
        if left != self.sessions:
            self.sessions = left
            self._sessions_changed()

    def _sessions_changed(self) -> None:
        if self._on_sessions is not None:
            self._on_sessions(list(self.sessions))


class JoinedRay:
    """A Ray cluster started by someone else (`ray_address`): joined, never started, stopped nor restarted here; its
    failure is its operator's to handle (the supervisor still watches the broker and PostgreSQL it started)."""

    sid: int | None = None
    log_dir: str | None = None

    def __init__(self, address: str) -> None:
        self.address = address
        self.sessions: list[int] = []

    def start(self) -> None:
        """Nothing to start: `python -m cluster.deploy` joins the cluster at `address`."""

    def failure(self) -> str | None:
        return None

    def processes(self) -> list[RecordedProcess]:
        return []

    def stop(self, grace_s: float = 5.0) -> None:
        """Not ours to stop."""
