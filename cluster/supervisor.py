"""The watch loop of `eventpipe run`: it starts Ray and the pipeline, notices within a second when Ray, the embedded
broker or the embedded PostgreSQL dies, restarts what died (and the pipeline on top of it), says so on the
terminal, and keeps the run record (cluster/run_record.py) current.

It never processes events and never decides a policy itself (cluster/restart_policy.py does); it never stops a
process it did not start.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from cluster.local import EmbeddedBroker
from cluster.observability.lag import HighWatermarks, Partition, watermark_consumer_config
from cluster.ray_head import JoinedRay, RayHead
from cluster.restart_policy import RestartBudget, RestartPolicy, lost_with_the_log
from cluster.run_record import ProcessTable, RecordedProcess, Role, RunDir, RunRecord, observe
from cluster.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

TICK_S = 0.5
RECORD_EVERY_S = 5.0
WATERMARKS_EVERY_S = 2.0
DEPLOY_TIMEOUT_S = 300.0

Say = Callable[[str, bool], None]  # a line for the terminal, and whether it is good news


class Unrecoverable(RuntimeError):
    """A component kept dying: the run stops everything and exits non-zero with this reason."""


class DeployError(RuntimeError):
    """`python -m cluster.deploy` failed; the message names its log."""


@dataclass(frozen=True)
class Deployed:
    metrics_url: str | None
    owners: int


class Deployer:
    """Runs `python -m cluster.deploy up|down` against the Ray at `env['EVENTPIPE_RAY_ADDRESS']`."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path

    def run(self, action: str, timeout_s: float = DEPLOY_TIMEOUT_S) -> dict[str, Any]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as err:
            try:
                done = subprocess.run(
                    [sys.executable, "-m", "cluster.deploy", action],
                    stdout=subprocess.PIPE,
                    stderr=err,
                    env={**os.environ, **self.env},
                    timeout=timeout_s,
                    check=False,
                    start_new_session=True,  # a Ctrl-C in the terminal is the supervisor's to handle
                )
            except subprocess.TimeoutExpired:
                raise DeployError(f"`deploy {action}` took over {timeout_s:.0f}s; see {self.log_path}") from None
        lines = done.stdout.decode(errors="replace").strip().splitlines()
        if done.returncode != 0 or not lines:
            raise DeployError(f"`deploy {action}` failed ({done.returncode}); see {self.log_path}")
        # Ray pushes raylet warnings to every driver's stdout ("N PYTHON worker processes have been started ..."),
        # even after the child printed its result: the result is the last line that is a JSON object.
        for line in reversed(lines):
            try:
                result = json.loads(line)
            except ValueError:
                continue
            if isinstance(result, dict):
                return result
        raise DeployError(f"`deploy {action}` ended without its JSON result; see {self.log_path}")

    def up(self) -> Deployed:
        result = self.run("up")
        return Deployed(result.get("metrics_url"), int(result.get("owners", 0)))


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        run_dir: RunDir,
        record: RunRecord,
        table: ProcessTable,
        ray: RayHead | JoinedRay,
        deployer: Deployer,
        say: Say,
        broker: EmbeddedBroker | None = None,
        postgres: RecordedProcess | None = None,
        restart_postgres: Callable[[RecordedProcess], RecordedProcess] | None = None,
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.record = record
        self.table = table
        self.ray = ray
        self.deployer = deployer
        self.say = say
        self.broker = broker
        self.postgres = postgres
        self._restart_postgres = restart_postgres
        self._policy = policy or RestartPolicy()
        self._budgets = {role: RestartBudget(self._policy) for role in (Role.RAY, Role.BROKER, Role.POSTGRES)}
        self._clock = clock
        self._db_url = settings.database_url.get_secret_value()
        self._highs: dict[Partition, int] = {}
        self._watermarks: HighWatermarks | None = None
        self._next_record = 0.0
        self._next_watermarks = 0.0
        # When a failure happened (wall clock) and the committed offsets then: the first advance is "resumed".
        self._waiting_commit: tuple[float, dict[Partition, int]] | None = None
        self.deployed: Deployed | None = None
        self._stop_requested: Callable[[], bool] = lambda: False

    # -- start and stop --------------------------------------------------------------------------------------
    def start_ray_and_pipeline(self) -> Deployed:
        self.ray.start()
        self.deployer.env["EVENTPIPE_RAY_ADDRESS"] = self.record.ray_address = self.ray.address
        self._write_record()
        self.deployed = self.deployer.up()
        self._write_record()
        return self.deployed

    def stop_ray(self, drain: bool) -> None:
        """Drain the pipeline (when Ray is healthy) and stop every process of the Ray session."""
        if drain and self.deployed is not None and self.ray.failure() is None:
            try:
                self.deployer.run("down", timeout_s=90)
            except DeployError as exc:
                self.say(f"the pipeline did not drain cleanly ({exc}); stopping Ray anyway", False)
        self.ray.stop()
        self._write_record()

    def close(self) -> None:
        if self._watermarks is not None:
            self._watermarks.close()
            self._watermarks = None

    # -- the loop --------------------------------------------------------------------------------------------
    def watch(self, stop_requested: Callable[[], bool]) -> None:
        """Until a stop is requested; raises Unrecoverable when a component cannot be brought back. A stop requested
        while something is being restarted ends the restarts before their next attempt."""
        self._stop_requested = stop_requested
        while not stop_requested():
            now = self._clock()
            self._check_postgres(now)
            self._check_broker(now)
            self._check_ray(now)
            if now >= self._next_record:
                self._write_record()
                self._next_record = now + RECORD_EVERY_S
            if now >= self._next_watermarks and self.broker is not None:
                self._read_watermarks()
                self._next_watermarks = self._clock() + WATERMARKS_EVERY_S
            self._report_first_commit()
            time.sleep(TICK_S)

    def _check_ray(self, now: float) -> None:
        reason = self.ray.failure()
        budget = self._budgets[Role.RAY]
        if reason is None:
            budget.healthy(now)
            return
        budget.died(now)
        self.say(f"Ray died ({reason}): restarting Ray and the pipeline on the same broker and PostgreSQL", False)
        self._restart_ray(now, f"Ray died: {reason}")

    def _restart_ray(self, died_at: float, cause: str, log_replaced: bool = False) -> None:
        """Restart Ray and the pipeline; with `log_replaced` the owners claim their partitions at offset 0 of the
        new log (the leader sees a new broker cluster id), so any offset above 0 afterwards is a new commit."""
        baseline = {} if log_replaced else self._committed()

        def attempt() -> Deployed:
            self.ray.stop()  # what is left of it: raylet, workers, HAProxy
            return self.start_ray_and_pipeline()

        deployed = self._restart(Role.RAY, cause, "restart", attempt, (ValueError,))
        if deployed is None:
            return
        took = self._clock() - died_at
        self.say(f"Ray and the pipeline are back in {took:.1f}s ({deployed.owners} partition owners)", True)
        self._waiting_commit = (time.time() - (self._clock() - died_at), baseline)

    def _check_broker(self, now: float) -> None:
        broker = self.broker
        if broker is None:
            return
        budget = self._budgets[Role.BROKER]
        if broker.running:
            budget.healthy(now)
            return
        budget.died(now)
        self.say("the embedded broker died: stopping the pipeline, restarting the broker (its log is gone)", False)
        if self._watermarks is not None:
            self._watermarks.close()  # before its librdkafka threads retry a dead port
            self._watermarks = None
        # Nothing commits once Ray is stopped: the checkpoints read then are final for the old log.
        self.ray.stop()
        self._report_loss()

        def attempt() -> bool:
            broker.stop()
            broker.start()
            self._record_broker(broker)
            return True

        if self._restart(Role.BROKER, "the embedded broker died", "broker restart", attempt) is None:
            return
        self._highs = {}
        self.say(f"the broker is back on {broker.bootstrap}", True)
        self._restart_ray(now, "the embedded broker died", log_replaced=True)

    def _check_postgres(self, now: float) -> None:
        pg = self.postgres
        if pg is None or self._restart_postgres is None:
            return
        budget = self._budgets[Role.POSTGRES]
        if self.table.cmdline(pg.pid) == pg.cmdline:
            budget.healthy(now)
            return
        budget.died(now)
        self.say("the embedded PostgreSQL died: restarting it (its data and WAL are kept)", False)
        restart = self._restart_postgres
        restarted = self._restart(
            Role.POSTGRES, "the embedded PostgreSQL died", "PostgreSQL restart", lambda: restart(pg), (psycopg.Error,)
        )
        if restarted is None:
            return
        self.postgres = restarted
        self.record.processes = [p for p in self.record.processes if p.role != Role.POSTGRES] + [self.postgres]
        self._write_record()
        self.say("PostgreSQL is back; the pipeline reconnects by itself", True)
        self._waiting_commit = (time.time() - (self._clock() - now), self._committed())

    def _restart(
        self,
        role: Role,
        cause: str,
        what: str,
        attempt: Callable[[], T],
        errors: tuple[type[Exception], ...] = (),
    ) -> T | None:
        """Try `attempt` under `role`'s restart budget until it works (its result), a stop is requested (None), or
        the budget is spent (Unrecoverable, naming `cause`). Each failure is said on the terminal as `what`."""
        budget = self._budgets[role]
        while True:
            if budget.exhausted:
                raise Unrecoverable(f"{cause}; {budget.failures} restarts in a row failed")
            if not self._wait_before_attempt(budget):
                return None
            try:
                result = attempt()
            except (RuntimeError, OSError, subprocess.SubprocessError, *errors) as exc:
                budget.failed()
                self._failed_restart(what, budget, exc)
                continue
            budget.restarted(self._clock())
            return result

    def _wait_before_attempt(self, budget: RestartBudget) -> bool:
        """Wait out the backoff before a restart attempt; False (no attempt) once a stop is requested."""
        if self._stop_requested():
            return False
        time.sleep(budget.backoff_s())
        return not self._stop_requested()

    # -- what the terminal is told ---------------------------------------------------------------------------
    def _failed_restart(self, what: str, budget: RestartBudget, exc: Exception) -> None:
        """One line on the terminal (the error's first line); the whole error, log tails included, in the log."""
        log.warning("%s failed", what, exc_info=exc)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        self.say(f"{what} {budget.failures} of {self._policy.max_failures} failed: {first}", False)

    def _report_loss(self) -> None:
        report_loss(
            self.say,
            self._highs,
            self._committed(),
            log_ends=f"the broker's last reported log ends (read every {WATERMARKS_EVERY_S:g}s)",
            unknown="the broker died before its log ends were ever read",
        )

    def _report_first_commit(self) -> None:
        if self._waiting_commit is None:
            return
        since, baseline = self._waiting_commit
        # a partition committed since the failure (a row left by an earlier partition count is older) and ahead of
        # where it was then
        advanced = [
            at for tp, (offset, at) in self._checkpoints().items() if at >= since and offset > baseline.get(tp, 0)
        ]
        if not advanced:
            return
        self._waiting_commit = None
        # the earliest last-commit time of the partitions that advanced: an upper bound of the first commit's time
        self.say(f"processing resumed: first commit {min(advanced) - since:.1f}s after the failure", True)

    # -- bookkeeping -----------------------------------------------------------------------------------------
    def _checkpoints(self) -> dict[Partition, tuple[int, float]]:
        """Committed next offset and the time of its commit (epoch seconds), per partition; empty when unreadable."""
        return read_checkpoints(self._db_url) or {}

    def _committed(self) -> dict[Partition, int]:
        return {tp: offset for tp, (offset, _) in self._checkpoints().items()}

    def _read_watermarks(self) -> None:
        broker = self.broker
        if broker is None or not broker.running:
            return
        if self._watermarks is None:
            # librdkafka logs through `log` (to the log files), not to the terminal's stderr
            self._watermarks = HighWatermarks(watermark_consumer_config(broker.bootstrap) | {"logger": log})
        for tp, high in read_log_ends(self._watermarks, self.settings, self._committed(), timeout_s=1.0).items():
            self._highs[tp] = max(high, self._highs.get(tp, 0))

    def _record_broker(self, broker: EmbeddedBroker) -> None:
        self.record.processes = [p for p in self.record.processes if p.role != Role.BROKER]
        self.record.processes.append(observe(Role.BROKER, broker.pid, self.table))
        self._write_record()

    def _write_record(self) -> None:
        fixed = [p for p in self.record.processes if p.role != Role.RAY]
        self.record.processes = fixed + self.ray.processes()
        self.record.ray_sessions = list(self.ray.sessions)
        self.run_dir.write(self.record)


# -- what a memory-only broker takes with it (also read by a start that finds an earlier run's broker) -------------
def read_checkpoints(db_url: str) -> dict[Partition, tuple[int, float]] | None:
    """Committed next offset and the time of its commit (epoch seconds), per partition; None when unreadable."""
    try:
        with psycopg.connect(db_url, autocommit=True, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT topic, partition, next_offset, extract(epoch FROM updated_at) FROM partition_checkpoints"
            ).fetchall()
    except psycopg.Error as exc:
        log.warning("checkpoints not readable: %s", exc)
        return None
    return {(str(t), int(p)): (int(o), float(at)) for t, p, o, at in rows}


def read_log_ends(
    watermarks: HighWatermarks, settings: Settings, committed: dict[Partition, int], timeout_s: float
) -> dict[Partition, int]:
    """The broker's high watermark of every owned partition that answered within timeout_s."""
    owned = [(t, p) for t in settings.owned_topics() for p in range(settings.partitions)]
    return watermarks.read({tp: committed.get(tp, 0) for tp in owned}, timeout_s=timeout_s)


def report_loss(
    say: Say, highs: dict[Partition, int], committed: dict[Partition, int], log_ends: str, unknown: str
) -> int:
    """Say how many acknowledged events a memory-only broker's log held above the committed checkpoints (the `LOST:`
    line), or that none did (`log_ends`: which reading of its log ends that is), or that nobody knows (`unknown`:
    why). Returns the count."""
    lost = lost_with_the_log(highs, committed)
    total = sum(r.count for r in lost)
    if not highs:
        say(f"LOST: unknown — {unknown}", False)
    elif total == 0:
        say(f"no loss found: {log_ends} were all committed", True)
    else:
        where = "; ".join(str(r) for r in lost)
        say(
            f"LOST: at least {total} acknowledged events were still only in the broker's memory log and are gone"
            f" ({where}); their clients were told 202",
            False,
        )
    log.warning("broker died", extra={"lost_events": total, "lost": [str(r) for r in lost]})
    return total
