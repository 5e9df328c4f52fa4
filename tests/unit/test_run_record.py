"""Specification of the run record of `eventpipe run`: which recorded processes are still ours (pid and command line
both match: pids are reused), how leftovers are stopped, and the one-run-per-data-dir lock.

Real child processes (`sleep`) where a signal is sent; a dict as the process table where only logic is checked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.run_record import (
    AlreadyRunning,
    ProcTable,
    RecordedProcess,
    Role,
    RunDir,
    RunRecord,
    describe,
    still_ours,
    stop_processes,
)
from tests.pipeline import wait_until


class FakeTable:
    def __init__(self, cmdlines: dict[int, tuple[str, ...]], sessions: dict[int, list[int]] | None = None) -> None:
        self.cmdlines = cmdlines
        self.sessions = sessions or {}

    def cmdline(self, pid: int) -> tuple[str, ...] | None:
        return self.cmdlines.get(pid)

    def session_members(self, sid: int) -> list[int]:
        return [p for p in self.sessions.get(sid, []) if p in self.cmdlines]


BROKER = RecordedProcess(Role.BROKER, 100, ("/venv/tansu", "broker", "--listener-url", "tcp://127.0.0.1:4000"))
POSTGRES = RecordedProcess(Role.POSTGRES, 200, ("/pg/bin/postgres", "-D", "/data/pg"), signal.SIGINT)


def test_a_recorded_process_with_its_command_line_is_still_ours() -> None:
    table = FakeTable({100: BROKER.cmdline, 200: POSTGRES.cmdline})
    assert still_ours(RunRecord(1, processes=[BROKER, POSTGRES]), table) == [BROKER, POSTGRES]


def test_a_reused_pid_running_something_else_is_not_ours() -> None:
    # given the broker's pid now taken by the user's editor, and the postgres pid by nothing at all
    table = FakeTable({100: ("vim", "notes.txt")})
    assert still_ours(RunRecord(1, processes=[BROKER, POSTGRES]), table) == []


def test_a_process_of_a_recorded_ray_session_is_ours_even_if_the_record_missed_it() -> None:
    # given a worker Ray forked after the record's last update, in the session the run started Ray in
    table = FakeTable({300: ("gcs_server",), 301: ("ray::PartitionOwner",), 999: ("bash",)}, {42: [300, 301]})
    gcs = RecordedProcess(Role.RAY, 300, ("gcs_server",))
    found = still_ours(RunRecord(1, ray_sessions=[42], processes=[gcs]), table)
    assert [(p.role, p.pid) for p in found] == [(Role.RAY, 300), (Role.RAY, 301)]


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
