"""Specification of how `eventpipe run` meets the leftovers of an earlier run: stopped and said in one line, or, when
some survive, the start refused naming each survivor (pid and command) with the record kept for the next try."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from cluster import run_command
from cluster.run_command import Terminal, _stop_leftovers
from cluster.run_record import DATA_DIR_VAR, RecordedProcess, Role, RunDir, RunRecord
from tests.unit.test_run_record import FakeTable

WORKER = RecordedProcess(Role.RAY, 301, ("ray::PartitionOwner", "--flag"), start_time=3010)


def _terminal() -> tuple[Terminal, io.StringIO]:
    buffer = io.StringIO()
    return Terminal(Console(file=buffer, width=200, color_system=None)), buffer


def test_leftovers_that_survive_refuse_the_start_naming_them_and_keep_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an earlier run's worker that nothing stops (stuck in the kernel, say)
    run_dir = RunDir(tmp_path)
    previous = RunRecord(supervisor_pid=77, ray_sessions=[300], processes=[WORKER])
    run_dir.write(previous)
    table = FakeTable({301: WORKER.cmdline}, {300: [301]}, environs={301: {DATA_DIR_VAR: str(tmp_path.resolve())}})
    monkeypatch.setattr(run_command, "stop_processes", lambda processes, table: [])
    out, buffer = _terminal()
    # when a start meets it
    started = _stop_leftovers(run_dir, table, out)  # type: ignore[arg-type]
    # then it refuses, naming the survivor by pid and command, and keeps the record for the next try
    assert started is False
    assert "1 processes of an earlier run (pid 77) survived" in buffer.getvalue()
    assert "ray pid 301: ray::PartitionOwner --flag" in buffer.getvalue()
    assert run_dir.read() == previous


def test_leftovers_that_stop_are_said_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = RunDir(tmp_path)
    run_dir.write(RunRecord(supervisor_pid=77, processes=[WORKER]))
    table = FakeTable({301: WORKER.cmdline})

    def stop(processes: list[RecordedProcess], table: FakeTable) -> list[RecordedProcess]:
        table.cmdlines.clear()
        return []

    monkeypatch.setattr(run_command, "stop_processes", stop)
    out, buffer = _terminal()
    assert _stop_leftovers(run_dir, table, out) is True  # type: ignore[arg-type]
    assert "stopped 1 processes of an earlier run (pid 77)" in buffer.getvalue()
