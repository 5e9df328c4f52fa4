"""Specification of the supervisor's watch loop with fake parts (no Ray, no processes): Ray dying is said at once
and restarted; three failed restarts in a row end the run with the reason; a restart that works says so."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from cluster import supervisor
from cluster.ray_head import RayStartError
from cluster.restart_policy import RestartPolicy
from cluster.run_record import RecordedProcess, RunDir, RunRecord
from cluster.settings import Settings
from cluster.supervisor import Deployed, Deployer, DeployError, Supervisor, Unrecoverable

NO_DATABASE = "postgresql://nobody@127.0.0.1:1/none"  # refused at once: checkpoints unknown


class FakeRay:
    """A Ray that is dead from the start and fails to start `failures` times, then starts."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.starts = 0
        self.up = False
        self.sid = 4242
        self.sessions = [4242]
        self.address = "127.0.0.1:6000"

    def failure(self) -> str | None:
        return None if self.up else "the Ray GCS is gone"

    def start(self) -> None:
        self.starts += 1
        if self.starts <= self.failures:
            raise RayStartError("`ray start --head` failed (1); its output is in ray-start.log\nmore detail")
        self.up = True

    def stop(self) -> None:
        self.up = False

    def processes(self) -> list[RecordedProcess]:
        return []


class FakeDeployer:
    def __init__(self) -> None:
        self.env: dict[str, str] = {}

    def up(self) -> Deployed:
        return Deployed("http://127.0.0.1:9464", 8)

    def run(self, action: str, timeout_s: float = 0) -> dict[str, Any]:
        return {}


class Table:
    def cmdline(self, pid: int) -> tuple[str, ...] | None:
        return None

    def session_members(self, sid: int) -> list[int]:
        return []

    def start_time(self, pid: int) -> int | None:
        return None

    def parent(self, pid: int) -> int | None:
        return None

    def env_var(self, pid: int, name: str) -> str | None:
        return None


class DeadBroker:
    """An embedded broker found dead; start() brings it back as pid 5150."""

    def __init__(self) -> None:
        self.running = False
        self.pid = 0
        self.bootstrap = "127.0.0.1:9092"

    def stop(self) -> None:
        self.running = False

    def start(self) -> None:
        self.running, self.pid = True, 5150


def _supervisor(
    tmp_path: Path, ray: FakeRay, lines: list[tuple[str, bool]], broker: DeadBroker | None = None
) -> Supervisor:
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=SecretStr(NO_DATABASE))  # type: ignore[call-arg]
    return Supervisor(
        settings,
        RunDir(tmp_path),
        RunRecord(supervisor_pid=1),
        Table(),
        ray,  # type: ignore[arg-type]
        FakeDeployer(),  # type: ignore[arg-type]
        lambda text, good: lines.append((text, good)),
        broker=broker,  # type: ignore[arg-type]
        policy=RestartPolicy(max_failures=3, base_s=0.0, max_s=0.0),
    )


def test_three_failed_ray_restarts_in_a_row_end_the_run_with_the_reason(tmp_path: Path) -> None:
    lines: list[tuple[str, bool]] = []
    ray = FakeRay(failures=10)
    with pytest.raises(Unrecoverable, match="Ray died: the Ray GCS is gone; 3 restarts in a row failed"):
        _supervisor(tmp_path, ray, lines).watch(lambda: False)
    assert ray.starts == 3
    assert lines[0] == ("Ray died (the Ray GCS is gone): restarting Ray and the pipeline on the same broker and "
                        "PostgreSQL", False)  # fmt: skip
    # each failure is one line, the first line of its error
    assert [text for text, _ in lines[1:]] == [
        f"restart {n} of 3 failed: `ray start --head` failed (1); its output is in ray-start.log" for n in (1, 2, 3)
    ]


def test_a_restart_that_works_after_two_failures_is_announced(tmp_path: Path) -> None:
    lines: list[tuple[str, bool]] = []
    ray = FakeRay(failures=2)
    _supervisor(tmp_path, ray, lines).watch(lambda: ray.up)  # stop once Ray is back
    assert ray.up and ray.starts == 3
    text, good = lines[-1]
    assert good and text.startswith("Ray and the pipeline are back in ") and text.endswith("(8 partition owners)")
    assert RunDir(tmp_path).read().ray_address == "127.0.0.1:6000"  # `eventpipe status` finds the new Ray


def test_a_restarted_broker_is_recorded_before_anything_else_can_fail(tmp_path: Path) -> None:
    # given a dead broker that restarts, and a Ray that then never comes back
    lines: list[tuple[str, bool]] = []
    with pytest.raises(Unrecoverable):
        _supervisor(tmp_path, FakeRay(failures=10), lines, DeadBroker()).watch(lambda: False)
    # then the record on disk names the new broker: a next start knows it even though this run died right after
    assert [(p.role, p.pid) for p in RunDir(tmp_path).read().processes] == [("broker", 5150)]


def test_a_stop_requested_while_ray_restarts_ends_the_restarts_before_the_next_attempt(tmp_path: Path) -> None:
    # given a Ray that keeps failing to start, and a Ctrl-C that arrives after the first failed attempt
    lines: list[tuple[str, bool]] = []
    ray = FakeRay(failures=10)
    _supervisor(tmp_path, ray, lines).watch(lambda: ray.starts >= 1)  # returns: no Unrecoverable, no more attempts
    assert ray.starts == 1


def test_a_deploy_that_ends_without_its_json_result_is_a_deploy_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given `python -m cluster.deploy up` that exits 0 but prints log lines and no JSON result
    def run(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.CompletedProcess(args, 0, b"starting\nWARNING something\n[1, 2]\n", None)

    monkeypatch.setattr(supervisor.subprocess, "run", run)
    with pytest.raises(DeployError, match="ended without its JSON result"):
        Deployer({}, tmp_path / "deploy.log").up()


def test_a_deploy_result_followed_by_rays_warnings_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given the JSON result, then a raylet warning Ray pushed to the driver's stdout after it (seen on `make run`)
    warning = b"\x1b[33m(raylet)\x1b[0m WARNING: 10 PYTHON worker processes have been started on node: abc\n"
    out = b'{"metrics_url": "http://127.0.0.1:9", "owners": 8}\n' + warning

    def run(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.CompletedProcess(args, 0, out, None)

    monkeypatch.setattr(supervisor.subprocess, "run", run)
    deployed = Deployer({}, tmp_path / "deploy.log").up()
    assert deployed.owners == 8
