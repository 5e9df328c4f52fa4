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
from cluster.settings import Settings
from tests.unit.test_run_record import FakeTable

WORKER = RecordedProcess(Role.RAY, 301, ("ray::PartitionOwner", "--flag"), start_time=3010)


def _settings(data_dir: Path) -> Settings:
    return Settings(_env_file=None, data_dir=data_dir)  # type: ignore[call-arg]


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
    started = _stop_leftovers(run_dir, table, out, _settings(tmp_path))  # type: ignore[arg-type]
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
    assert _stop_leftovers(run_dir, table, out, _settings(tmp_path)) is True  # type: ignore[arg-type]
    assert "stopped 1 processes of an earlier run (pid 77)" in buffer.getvalue()


def test_an_earlier_runs_ray_is_stopped_before_its_brokers_loss_is_read_and_the_broker_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an earlier run's Ray (still acknowledging events into its broker) and its memory-only broker
    broker = RecordedProcess(Role.BROKER, 100, ("tansu", "broker", "--listener-url", "tcp://127.0.0.1:4000"), 0, 1000)
    run_dir = RunDir(tmp_path)
    run_dir.write(RunRecord(supervisor_pid=77, processes=[broker, WORKER]))
    table = FakeTable({100: broker.cmdline, 301: WORKER.cmdline})
    steps: list[str] = []

    def stop(processes: list[RecordedProcess], table: FakeTable) -> list[RecordedProcess]:
        steps.append("stop " + ", ".join(p.role for p in processes))
        for p in processes:
            del table.cmdlines[p.pid]
        return []

    monkeypatch.setattr(run_command, "stop_processes", stop)
    monkeypatch.setattr(run_command, "_report_leftover_loss", lambda p, settings, out: steps.append(f"loss {p.pid}"))
    out, _ = _terminal()
    assert _stop_leftovers(run_dir, table, out, _settings(tmp_path)) is True  # type: ignore[arg-type]
    # then nothing more is acknowledged or committed before the loss is counted, and the broker goes last
    assert steps == ["stop ray", "loss 100", "stop broker"]


class FailingSupervisor:
    def stop_ray(self, drain: bool) -> None:
        raise RuntimeError("the drain broke")

    def close(self) -> None:
        pass


class FailingStack:
    def __exit__(self, *exc: object) -> None:
        raise RuntimeError("pg_ctl broke")


def test_the_final_sweep_runs_even_when_every_stop_step_before_it_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a run whose supervisor and stack both fail to stop, with a recorded process still running
    run_dir = RunDir(tmp_path)
    record = RunRecord(supervisor_pid=77, processes=[WORKER])
    table = FakeTable({301: WORKER.cmdline})
    swept: list[list[int]] = []

    def stop(processes: list[RecordedProcess], table: FakeTable, grace_s: float) -> list[RecordedProcess]:
        swept.append([p.pid for p in processes])
        table.cmdlines.clear()
        return []

    monkeypatch.setattr(run_command, "stop_processes", stop)
    out, buffer = _terminal()
    with pytest.raises(RuntimeError):
        run_command._stop_all(FailingStack(), FailingSupervisor(), run_dir, record, table, out)  # type: ignore[arg-type]
    # then the sweep by the record still stopped what was left
    assert swept == [[301]] and "nothing left running" in buffer.getvalue()
