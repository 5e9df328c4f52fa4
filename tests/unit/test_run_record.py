"""Specification of the run record of `eventpipe run`: which recorded processes are still ours (pid, start time and
command line all match: pids are reused; a Ray session member must carry the run's data dir), how leftovers are
stopped, and the one-run-per-data-dir lock.

Real child processes (`sleep`) where a signal is sent; a dict as the process table where only logic is checked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from cluster.local import LocalStack
from cluster.ray_head import RayHead
from cluster.run_record import (
    DATA_DIR_VAR,
    AlreadyRunning,
    ProcTable,
    RecordedProcess,
    Role,
    RunDir,
    RunRecord,
    describe,
    is_running,
    observe,
    still_ours,
    stop_processes,
)
from cluster.settings import Settings
from tests.pipeline import wait_until

DATA_DIR = Path("/data/run-a")
OURS = {DATA_DIR_VAR: str(DATA_DIR)}
THEIRS = {DATA_DIR_VAR: "/data/run-b"}


class FakeTable:
    """Live processes by pid: command line, start time (default: the pid * 10) and environment."""

    def __init__(
        self,
        cmdlines: dict[int, tuple[str, ...]],
        sessions: dict[int, list[int]] | None = None,
        starts: dict[int, int] | None = None,
        environs: dict[int, dict[str, str]] | None = None,
        parents: dict[int, int] | None = None,
    ) -> None:
        self.cmdlines = cmdlines
        self.sessions = sessions or {}
        self.starts = starts or {}
        self.environs = environs or {}
        self.parents = parents or {}

    def cmdline(self, pid: int) -> tuple[str, ...] | None:
        return self.cmdlines.get(pid)

    def session_members(self, sid: int) -> list[int]:
        return [p for p in self.sessions.get(sid, []) if p in self.cmdlines]

    def start_time(self, pid: int) -> int | None:
        return self.starts.get(pid, pid * 10) if pid in self.cmdlines else None

    def env_var(self, pid: int, name: str) -> str | None:
        return self.environs.get(pid, {}).get(name) if pid in self.cmdlines else None

    def parent(self, pid: int) -> int | None:
        return self.parents.get(pid, 1) if pid in self.cmdlines else None


BROKER = RecordedProcess(
    Role.BROKER, 100, ("/venv/tansu", "broker", "--listener-url", "tcp://127.0.0.1:4000"), start_time=1000
)
POSTGRES = RecordedProcess(Role.POSTGRES, 200, ("/pg/bin/postgres", "-D", "/data/pg"), signal.SIGINT, 2000)


def test_a_recorded_process_with_its_command_line_and_start_time_is_still_ours() -> None:
    table = FakeTable({100: BROKER.cmdline, 200: POSTGRES.cmdline})
    assert still_ours(RunRecord(1, processes=[BROKER, POSTGRES]), table, DATA_DIR) == [BROKER, POSTGRES]


def test_a_reused_pid_running_something_else_is_not_ours() -> None:
    # given the broker's pid now taken by the user's editor, and the postgres pid by nothing at all
    table = FakeTable({100: ("vim", "notes.txt")})
    assert still_ours(RunRecord(1, processes=[BROKER, POSTGRES]), table, DATA_DIR) == []


def test_a_reused_pid_with_the_same_command_line_but_a_later_start_is_not_ours() -> None:
    # given another run's broker (same binary, same flags) started later at the recorded pid
    table = FakeTable({100: BROKER.cmdline}, starts={100: 5000})
    assert still_ours(RunRecord(1, processes=[BROKER]), table, DATA_DIR) == []


def test_a_process_of_a_recorded_ray_session_is_ours_even_if_the_record_missed_it() -> None:
    # given a worker Ray forked after the record's last update, in the session the run started Ray in
    table = FakeTable(
        {300: ("gcs_server",), 301: ("ray::PartitionOwner",), 999: ("bash",)},
        {42: [300, 301]},
        environs={300: OURS, 301: OURS},
    )
    gcs = RecordedProcess(Role.RAY, 300, ("gcs_server",), start_time=3000)
    found = still_ours(RunRecord(1, ray_sessions=[42], processes=[gcs]), table, DATA_DIR)
    assert [(p.role, p.pid, p.start_time) for p in found] == [(Role.RAY, 300, 3000), (Role.RAY, 301, 3010)]


def test_a_child_of_our_ray_process_is_ours_though_its_title_hides_its_environment() -> None:
    # given the dashboard (ours) and its module processes, whose long titles overwrote what /proc shows as environment
    table = FakeTable(
        {310: ("dashboard.py",), 311: ("ray-dashboard-NodeHead-0 (...)",), 312: ("ray-dashboard-x-0 (...)",)},
        {42: [310, 311, 312]},
        environs={310: OURS},
        parents={311: 310, 312: 311},
    )
    found = still_ours(RunRecord(1, ray_sessions=[42]), table, DATA_DIR)
    assert [p.pid for p in found] == [310, 311, 312]


def test_a_reused_session_id_of_another_ray_on_the_host_is_not_ours() -> None:
    # given our session 42 emptied, and 42 now the session of another run's Ray, whose workers have our titles
    table = FakeTable(
        {42: ("ray", "start", "--head"), 43: ("ray::IDLE",), 44: ("ray::PartitionOwner",)},
        {42: [42, 43, 44]},
        environs={42: THEIRS, 43: THEIRS},  # 44: no data dir at all (a Ray not started by eventpipe)
    )
    idle = RecordedProcess(Role.RAY, 43, ("ray::IDLE",), start_time=100)  # ours, long gone: 43 started at 430 now
    assert still_ours(RunRecord(1, ray_sessions=[42], processes=[idle]), table, DATA_DIR) == []


def test_an_old_record_without_start_times_is_ours_only_where_the_data_dir_matches_too() -> None:
    # given a record written before start times were kept: the same command lines at both pids, one of them ours
    old_broker = RecordedProcess(Role.BROKER, 100, BROKER.cmdline)
    old_worker = RecordedProcess(Role.RAY, 301, ("ray::IDLE",))
    table = FakeTable({100: BROKER.cmdline, 301: ("ray::IDLE",)}, environs={301: OURS})
    found = still_ours(RunRecord(1, processes=[old_broker, old_worker]), table, DATA_DIR)
    assert found == [RecordedProcess(Role.RAY, 301, ("ray::IDLE",), start_time=3010)]


def test_an_old_record_file_without_start_times_reads(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path)
    run_dir.path.mkdir(parents=True)
    old = {"supervisor_pid": 7, "ray_sessions": [42], "processes": [{"role": "ray", "pid": 5, "cmdline": ["raylet"]}]}
    run_dir.record_path.write_text(json.dumps(old))
    assert run_dir.read().processes == [RecordedProcess(Role.RAY, 5, ("raylet",))]


def test_the_proc_table_reads_start_time_and_environment(tmp_path: Path) -> None:
    env = {**os.environ, DATA_DIR_VAR: str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        table = ProcTable()
        # right after exec the kernel shows neither command line nor environment for a moment: wait for them
        wait_until(lambda: table.cmdline(proc.pid) == tuple(proc.args), 10, "the exec", interval_s=0.01)
        assert table.env_var(proc.pid, DATA_DIR_VAR) == str(tmp_path)
        assert table.env_var(proc.pid, "EVENTPIPE_NO_SUCH_VARIABLE") is None
        assert table.parent(proc.pid) == os.getpid()
        started = table.start_time(proc.pid)
        assert started is not None and started >= (table.start_time(os.getpid()) or 0)
    finally:
        proc.kill()
        proc.wait()
    assert ProcTable().start_time(proc.pid) is None


def test_ray_head_stop_forgets_a_session_it_saw_empty(tmp_path: Path) -> None:
    # given a session whose processes are all gone, and one whose id is now another Ray's (not our data dir)
    told: list[list[int]] = []
    table = FakeTable({60: ("ray::IDLE",)}, {50: [], 60: [60]}, environs={60: THEIRS})
    head = RayHead(tmp_path, {}, 8265, table, tmp_path / "ray", told.append)
    head.sessions = [50, 60]
    head.stop(grace_s=0.1)
    assert head.sessions == [] and told == [[]]


def test_describe_names_single_processes_and_counts_the_rest() -> None:
    ray = [RecordedProcess(Role.RAY, pid, ("raylet",)) for pid in (300, 301, 302)]
    assert describe([BROKER, POSTGRES, *ray]) == "broker 100, postgres 200, ray 3 processes"


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def _recorded(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> RecordedProcess:
    # right after fork the child still shows its parent's command line: wait for the exec
    cmdline = wait_until(
        lambda: (c := ProcTable().cmdline(proc.pid)) == tuple(proc.args) and c, 10, "the exec", interval_s=0.01
    )
    return RecordedProcess(Role.BROKER, proc.pid, cmdline, sig)


def test_stop_processes_stops_a_recorded_process(sleeper: subprocess.Popen[bytes]) -> None:
    killed = stop_processes([_recorded(sleeper)], ReapingTable(sleeper), grace_s=5)
    assert sleeper.wait(timeout=5) == -signal.SIGTERM
    assert killed == []  # it stopped on its stop signal: nothing needed SIGKILL


def test_stop_processes_kills_one_that_ignores_its_stop_signal(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = (
        "import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        f" pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        wait_until(ready.exists, 10, "the child to ignore SIGTERM", interval_s=0.01)
        killed = stop_processes([_recorded(proc)], ReapingTable(proc), grace_s=0.5)
        assert proc.wait(timeout=5) == -signal.SIGKILL
        assert [p.pid for p in killed] == [proc.pid]
    finally:
        proc.kill()
        proc.wait()


def test_stop_processes_never_signals_a_pid_whose_command_line_changed(sleeper: subprocess.Popen[bytes]) -> None:
    # given the record of another program at the sleeper's pid (the pid was reused since)
    stale = RecordedProcess(Role.RAY, sleeper.pid, ("/usr/bin/some-old-raylet",))
    stop_processes([stale], ProcTable(), grace_s=0.2)
    assert sleeper.poll() is None


class ReapingTable(ProcTable):
    """/proc, but our own child is reaped as soon as it exits (a zombie still has its /proc entry)."""

    def __init__(self, child: subprocess.Popen[bytes]) -> None:
        self.child = child

    def cmdline(self, pid: int) -> tuple[str, ...] | None:
        if pid == self.child.pid and self.child.poll() is not None:
            return None
        return super().cmdline(pid)


def test_a_second_lock_on_the_data_dir_is_refused_naming_the_holder(tmp_path: Path) -> None:
    first, second = RunDir(tmp_path), RunDir(tmp_path)
    first.lock()
    try:
        with pytest.raises(AlreadyRunning) as refused:
            second.lock()
        assert refused.value.pid == os.getpid()
    finally:
        first.unlock()
    second.lock()  # released: the next run gets it
    second.unlock()


def test_the_record_survives_a_round_trip(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path)
    record = RunRecord(supervisor_pid=7, ray_address="127.0.0.1:6000", ray_sessions=[42], processes=[BROKER, POSTGRES])
    run_dir.write(record)
    assert run_dir.read() == record


def test_a_torn_record_records_nothing(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path)
    run_dir.path.mkdir(parents=True)
    run_dir.record_path.write_text('{"processes": [{"role": "bro')
    assert run_dir.read() == RunRecord()


def test_the_embedded_broker_is_recorded_the_moment_it_exists(tmp_path: Path) -> None:
    # given a stack that starts the broker only (PostgreSQL is given), with a recorder as run_command's
    seen: list[RecordedProcess] = []
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, data_dir=tmp_path, database_url=SecretStr("postgresql://nobody@127.0.0.1:1/none")
    )
    stack = LocalStack(settings, lambda role, pid: seen.append(observe(role, pid, ProcTable())))
    with stack:
        # then it was recorded once, with the broker's pid and its own command line (right after exec the kernel
        # shows none for a moment: observe waits for it), and that record matches the running broker
        assert stack.broker is not None
        assert [(p.role, p.pid) for p in seen] == [(Role.BROKER, stack.broker.pid)]
        assert Path(seen[0].cmdline[0]).name == "tansu"
        assert is_running(seen[0], ProcTable())
