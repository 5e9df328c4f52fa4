"""`eventpipe run` as a supervisor, started as a user starts it (a child process, real broker, PostgreSQL and Ray):
a second run in the same data dir refuses; Ray killed the way `ray stop --force` kills it, mid-load, is restarted
with the pipeline and nothing acknowledged is lost or doubled; the embedded broker killed while events wait in its
memory log: the loss is counted exactly and reported, and processing resumes; the command SIGKILLed leaves processes
that the next start stops, after counting what the orphaned pipeline acknowledged but never committed; after a clean
stop no process the run started remains.

One run of the whole story (starting a run costs about a minute on two cores), in order.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cluster.local import free_port
from cluster.run_command import EXIT_ALREADY_RUNNING
from tests.chaos.conftest import REPORT_KEY
from tests.chaos.harness import Expect, Scenario, steady
from tests.chaos.workload import build_event
from tests.pipeline import wait_until
from tests.run_process import (
    EventpipeRun,
    RunPipeline,
    alive,
    broker_pid,
    kill_ray_like_ray_stop_force,
    run_env,
    signal_actors,
)

RESTART_TIMEOUT_S = 240.0
LOST_EVENTS = 120
ORPHAN_EVENTS = 40
STOP_TIMEOUT_S = 180.0
# Clients retry for 60 s; a Ray restart with the pipeline takes 20-40 s on two shared cores, so most events get in.
EXPECT = Expect(min_acked=0.5)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def env(data_dir: Path) -> dict[str, str]:
    return run_env(data_dir, free_port(), free_port(), free_port())


@pytest.fixture
def runs(data_dir: Path, env: dict[str, str]) -> Iterator[list[EventpipeRun]]:
    started: list[EventpipeRun] = []
    yield started
    for run in reversed(started):
        run.cleanup()


def send_batch(base_url: str, headers: dict[str, str], prefix: str, n: int) -> list[str]:
    """n user actions in one batch request; all must be acknowledged (202, accepted). Their ids."""
    events = [build_event(prefix, i, 0, f"{prefix}-k", "user_action") for i in range(n)]
    r = httpx.post(f"{base_url}/events/batch", json=events, headers=headers, timeout=30)
    assert r.status_code == 202, r.text
    assert [item["status"] for item in r.json()["results"]] == ["accepted"] * n, r.text
    return [e["id"] for e in events]


def test_run_refuses_a_second_start_survives_ray_dying_and_leaves_no_orphans(
    data_dir: Path, env: dict[str, str], runs: list[EventpipeRun], request: pytest.FixtureRequest
) -> None:
    # given a run serving traffic
    first = EventpipeRun(data_dir, env, "first").start()
    runs.append(first)
    first.wait_ready()
    # and its first screen holds the friendly lines only: no JSON log line, no warning from Ray or a library
    noise = [line for line in first.output.splitlines() if line.startswith("{") or "WARN" in line or "XDG" in line]
    assert noise == [], first.output
    # and it did not make itself every other Ray program's default cluster (ray.init() without an address connects
    # to what /tmp/ray/ray_current_cluster names)
    port = first.record().ray_address.rpartition(":")[2]
    current = Path("/tmp/ray/ray_current_cluster")
    assert not (current.exists() and current.read_text().strip().endswith(f":{port}")), current.read_text()

    # when a second run starts in the same data dir, it says so at once, naming the running one, and exits non-zero
    t0 = time.monotonic()
    second = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "run"],
        env=env,
        cwd=data_dir.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == EXIT_ALREADY_RUNNING, second.stdout + second.stderr
    assert f"already running in {data_dir} (pid {first.pid})" in second.stdout, second.stdout
    assert time.monotonic() - t0 < 30

    # when Ray is killed mid-load (every process of its session SIGKILLed), clients retrying with the same ids
    pipeline = RunPipeline.of(first.banner(), data_dir)
    scenario = Scenario(request.node.name, pipeline, request.config.stash[REPORT_KEY])  # type: ignore[arg-type]
    try:
        # Serve's ingress answers `404 Path '/events' not found` for ~0.6 s after a restart, before it has the
        # API's route (cluster/deploy.py: start_serve_routes_first); these clients retry that 404 like a refused
        # connection, and the test asserts how many there were (known gap, reported).
        with scenario.workload(rate=50, retry_no_route=True) as load:
            steady(2.0)
            with scenario.fault("Ray killed like `ray stop --force`; the supervisor restarts it"):
                killed = kill_ray_like_ray_stop_force(first.record(), data_dir)
                scenario.note(f"{killed} Ray processes SIGKILLed")
                first.wait_for(r"Ray died \(", 10)
                scenario.note("the supervisor said Ray died")
                back = first.wait_for(r"Ray and the pipeline are back in ([0-9.]+)s", RESTART_TIMEOUT_S)
                scenario.note(f"the supervisor said Ray is back ({back.group(1)} s)")
            steady(3.0)
        # then nothing acknowledged was lost or doubled, and the supervisor saw processing resume
        row = scenario.verify(expect=EXPECT)
        resumed = first.wait_for(r"processing resumed: first commit ([0-9.]+)s after the failure", 60)
        scenario.notes.append(f"supervisor: Ray back in {back.group(1)} s, first commit after {resumed.group(1)} s")
    finally:
        scenario.close()
    assert row.offered_acked > 0
    assert load.stats.statuses["404"] == load.stats.no_route  # every 404 was the ingress's, none the API's

    # when the partition owners are frozen, events are acknowledged (so only in the broker's memory log), the
    # supervisor reads the log ends, and the broker dies
    frozen = signal_actors(first.record(), data_dir, "PartitionOwner", signal.SIGSTOP)
    assert len(frozen) == 8, frozen
    lost_ids = send_batch(pipeline.base_url, pipeline.headers, f"{scenario.prefix}-lost", LOST_EVENTS)
    steady(2.5)  # the supervisor reads the broker's log ends every 2 s
    mark = len(first.output)
    os.kill(broker_pid(first.record()), signal.SIGKILL)
    # then it says so, counts exactly the acknowledged events that were not committed, and brings everything back
    lost = first.wait_for(r"LOST: at least (\d+) acknowledged events", 60, after=mark)
    assert pipeline.query("SELECT count(*) FROM events WHERE id = ANY(%s)", lost_ids) == [(0,)]
    assert int(lost.group(1)) == LOST_EVENTS, lost.group(0)
    first.wait_for(r"the broker is back on", 60, after=mark)
    first.wait_for(r"Ray and the pipeline are back in ([0-9.]+)s", RESTART_TIMEOUT_S, after=mark)
    # and processing resumes on the new log
    after_ids = send_batch(pipeline.base_url, pipeline.headers, f"{scenario.prefix}-after", 20)
    wait_until(
        lambda: pipeline.query("SELECT count(*) FROM events WHERE id = ANY(%s)", after_ids) == [(20,)],
        60,
        "events sent after the broker restart processed",
    )
    first.wait_for(r"processing resumed: first commit", 30, after=mark)

    # when the command itself is SIGKILLed, everything it started keeps running...
    recorded = first.record()
    first.signal(signal.SIGKILL)
    first.wait_exit(10)
    assert alive(recorded, data_dir), "SIGKILL of the supervisor stopped its children: nothing to prove"
    # ...its API still acknowledges events into its broker's memory log, while its owners (paused here) commit none
    frozen = signal_actors(recorded, data_dir, "PartitionOwner", signal.SIGSTOP)
    assert len(frozen) == 8, frozen
    orphan_ids = send_batch(pipeline.base_url, pipeline.headers, f"{scenario.prefix}-orphan", ORPHAN_EVENTS)
    signal_actors(recorded, data_dir, "PartitionOwner", signal.SIGCONT)

    # ...and the next start drains that pipeline, stops exactly those processes, says so, and starts cleanly
    again = EventpipeRun(data_dir, env, "again").start()
    runs.append(again)
    stopped = again.wait_for(r"Leftovers\s+stopped (\d+) processes of an earlier run \(pid (\d+)\)", 180)
    assert int(stopped.group(2)) == first.pid
    again.wait_ready()
    assert alive(recorded, data_dir) == []
    # and every event the orphaned API acknowledged is processed, or counted in the LOST line: never silently gone
    loss = re.search(r"LOST: at least (\d+) acknowledged events|no loss found", again.output)
    assert loss is not None, again.output
    lost_count = int(loss.group(1) or 0)
    later = RunPipeline.of(again.banner(), data_dir)
    [(committed,)] = later.query("SELECT count(*) FROM events WHERE id = ANY(%s)", orphan_ids)
    assert committed + lost_count == ORPHAN_EVENTS, again.output
    assert "pipeline drained" in again.output, again.output
    assert committed == ORPHAN_EVENTS, again.output  # drained before it was stopped: nothing lost

    # when it is stopped with SIGTERM, it stops everything it started, says so, and exits 0
    running = again.record()
    assert running.ray_sessions and len(running.processes) > 3
    again.signal(signal.SIGTERM)
    assert again.wait_exit(STOP_TIMEOUT_S) == 0, again.output
    assert re.search(r"Stopped .*nothing left running", again.output), again.output
    assert alive(running, data_dir) == []
    wait_until(lambda: not (data_dir / "run" / "processes.json").exists(), 5, "the record removed")
