"""`eventpipe run` as a user starts it: a child process with its own data dir and ports, whose terminal output tests
read line by line. Also a Pipeline-shaped view of it for the chaos harness (URLs from its banner).

It never stops a process the run did not record; `cleanup()` stops what a failed test left behind, by the record.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from pydantic import SecretStr

from cluster.local import free_port
from cluster.run_record import ProcTable, Role, RunDir, RunRecord, session_processes, still_ours, stop_processes
from cluster.settings import Settings
from tests.pipeline import TEST_KEY_REQUESTS_PER_MINUTE, auth_headers, wait_until

READY_LINE = "eventpipe is running."
START_TIMEOUT_S = 300.0


def run_env(data_dir: Path, http_port: int, metrics_port: int, dashboard_port: int) -> dict[str, str]:
    """The environment of a run that shares the host with test sessions and other runs: its own ports everywhere
    (Serve's HAProxy stats/metrics/fallback ports and replica port range included), and no database or broker
    from the caller's environment (the run starts its embedded ones)."""
    # Replica ports of their own: tests/pipeline.py's sessions take 10,000-29,999; these stay below the ephemeral range
    block = os.getpid() % 10
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTPIPE_", "RAY_", "DATABASE_URL"))}
    env.update(
        {
            "EVENTPIPE_DATA_DIR": str(data_dir),
            "EVENTPIPE_HTTP_PORT": str(http_port),
            "EVENTPIPE_METRICS_PORT": str(metrics_port),
            "EVENTPIPE_DASHBOARD_PORT": str(dashboard_port),
            "EVENTPIPE_PARTITIONS": "2",
            "EVENTPIPE_BREAKER_RESET_TIMEOUT_S": "2",
            # The chaos workloads send far more than a key's 1,000 requests/min through the development key; the rate
            # limit itself is tested with its own limit (tests/integration/test_rate_limit_http.py).
            "EVENTPIPE_RATE_LIMIT_REQUESTS_PER_MINUTE": str(TEST_KEY_REQUESTS_PER_MINUTE),
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(30_000 + block * 100),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(30_000 + block * 100 + 99),
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(31_000 + block * 100),
            "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(31_000 + block * 100 + 99),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        }
    )
    return env


class EventpipeRun:
    """One `eventpipe run` child; its terminal output goes to `<name>.out` next to the data dir."""

    def __init__(self, data_dir: Path, env: dict[str, str], name: str) -> None:
        self.data_dir = data_dir
        self.env = env
        self.out_path = data_dir.parent / f"{name}.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> EventpipeRun:
        with self.out_path.open("wb") as out:
            # cwd: the data dir's parent, so a .env of the repository is not read
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cluster.cli", "run"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.data_dir.parent,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("not started")
        return self.proc.pid

    @property
    def output(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def wait_for(self, pattern: str, timeout_s: float, after: int = 0) -> re.Match[str]:
        """The first match of `pattern` in the output from character `after` on (`len(run.output)` taken before an
        action: a line printed because of it); fails early if the run exits without printing it."""

        def found() -> re.Match[str] | None:
            match = re.compile(pattern).search(self.output, after)
            if match is None and self.proc is not None and self.proc.poll() is not None:
                code = self.proc.returncode
                raise AssertionError(f"eventpipe run exited ({code}) without {pattern!r}:\n{self.output}")
            return match

        try:
            match: re.Match[str] = wait_until(found, timeout_s, f"{pattern!r} from eventpipe run", interval_s=0.25)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\noutput so far:\n{self.output}") from None
        return match

    def wait_ready(self) -> None:
        self.wait_for(re.escape(READY_LINE), START_TIMEOUT_S)

    def record(self) -> RunRecord:
        return RunDir(self.data_dir).read()

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait_exit(self, timeout_s: float) -> int:
        if self.proc is None:
            raise RuntimeError("not started")
        return self.proc.wait(timeout=timeout_s)

    def banner(self) -> Banner:
        text = self.output
        db = re.search(r"PostgreSQL\s+(postgresql://\S+)", text)
        kafka = re.search(r"Kafka\s+(\S+)", text)
        api = re.search(r"HTTP API\s+(http://\S+)", text)
        key = re.search(r"^API key: (evp_\S+)$", text, re.MULTILINE)
        if not (db and kafka and api and key):
            raise AssertionError(f"no PostgreSQL, Kafka and API addresses and API key in the banner:\n{text}")
        return Banner(db.group(1), kafka.group(1), api.group(1), key.group(1))

    def cleanup(self) -> None:
        """After a test, however it ended: kill the supervisor, then every process its record still names."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        table = ProcTable()
        stop_processes(still_ours(self.record(), table, self.data_dir), table, grace_s=2.0)


@dataclass(frozen=True)
class Banner:
    database_url: str
    kafka_bootstrap: str
    base_url: str
    api_key: str


@dataclass(frozen=True)
class RunPipeline:
    """What the chaos harness needs of a pipeline (tests/pipeline.py's Pipeline), for one started by `eventpipe run`.
    Its actors live in the run's own Ray, which the test process does not join: no owner statuses."""

    settings: Settings
    base_url: str
    direct_db_url: str
    api_key: str  # the run's development key, from its banner

    @property
    def headers(self) -> dict[str, str]:
        return auth_headers(self.api_key)

    @classmethod
    def of(cls, banner: Banner, data_dir: Path) -> RunPipeline:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            kafka_bootstrap=banner.kafka_bootstrap,
            database_url=SecretStr(banner.database_url),
            data_dir=data_dir,
            partitions=2,
        )
        return cls(settings, banner.base_url, banner.database_url, banner.api_key)

    @property
    def db_url(self) -> str:
        return self.direct_db_url

    def owner_statuses(self) -> list[dict[str, Any]]:
        return []

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.direct_db_url, autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(sql, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []


def kill_ray_like_ray_stop_force(record: RunRecord, data_dir: Path) -> int:
    """SIGKILL every process of the run's Ray, as `ray stop --force` does (it SIGKILLs Ray's processes by name on
    the whole host; test sessions share the host, so only this run's Ray session is hit). Returns how many."""
    table = ProcTable()
    killed = 0
    for sid in record.ray_sessions:
        for p in session_processes(sid, table, data_dir):
            try:
                os.kill(p.pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


def signal_actors(record: RunRecord, data_dir: Path, title: str, sig: int) -> list[int]:
    """Send `sig` to every process of the run's Ray whose title is `ray::<title>` (idle) or `ray::<title>.<method>`."""
    table = ProcTable()
    hit = []
    for sid in record.ray_sessions:
        for p in session_processes(sid, table, data_dir):
            first = p.cmdline[0] if p.cmdline else ""
            if first == f"ray::{title}" or first.startswith(f"ray::{title}."):
                os.kill(p.pid, sig)
                hit.append(p.pid)
    return hit


def broker_pid(record: RunRecord) -> int:
    return next(p.pid for p in record.processes if p.role == Role.BROKER)


def alive(record: RunRecord, data_dir: Path) -> list[str]:
    """The recorded processes still running (same pid, start time and command line), and the members of its Ray
    sessions that carry its data dir."""
    return [f"{p.role} {p.pid} {p.name}" for p in still_ours(record, ProcTable(), data_dir)]
