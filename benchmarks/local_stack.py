"""Starts a whole local stack (`eventpipe run`) for a benchmark and stops it cleanly, one stack per machine at a time.

Every start holds the exclusive lock STACK_LOCK (the same file the team's scripts take with `flock`), because stacks
share default ports. It only ever signals the process group it started, and never leaves that group running.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from benchmarks.stack import embedded_database_url
from cluster.local import EmbeddedPostgres

STACK_LOCK = Path("/tmp/eventpipe-stack.lock")
READY_LINE = "eventpipe is running"
POLL_S = 0.5
# Variables that would point the stack at infrastructure we did not start, or at another data directory.
FOREIGN_ENV = ("DATABASE_URL", "EVENTPIPE_KAFKA_BOOTSTRAP", "EVENTPIPE_RAY_ADDRESS", "EVENTPIPE_DATA_DIR")


class StackStartError(RuntimeError):
    """The stack exited or did not print READY_LINE in time; the message carries its output's tail."""


@dataclass(frozen=True)
class StartedStack:
    pid: int  # of `eventpipe run`, also its process group
    data_dir: Path
    database_url: str
    log_path: Path


@contextmanager
def stack_lock(say: Callable[[str], None], path: Path = STACK_LOCK) -> Iterator[None]:
    """Holds the machine-wide stack lock; says so when it has to wait for someone else's stack."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for {path} (another stack is running)")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def eventpipe_command() -> list[str]:
    """`eventpipe run` from the virtualenv this interpreter belongs to."""
    return [str(Path(sys.executable).parent / "eventpipe"), "run"]


def stack_environment(partitions: int, data_dir: Path, base: Mapping[str, str]) -> dict[str, str]:
    """`base` without foreign infrastructure, with the partition count and the fresh data directory."""
    env = {k: v for k, v in base.items() if k not in FOREIGN_ENV}
    # A throughput benchmark sends far more than a key's 1,000 requests/min: the limit is measured on its own
    # (benchmarks/ratelimit.py), not left to cap this one.
    unlimited = {"EVENTPIPE_RATE_LIMIT_REQUESTS_PER_MINUTE": str(1_000_000_000)}
    return env | unlimited | {"EVENTPIPE_PARTITIONS": str(partitions), "EVENTPIPE_DATA_DIR": str(data_dir)}


@contextmanager
def running_stack(
    partitions: int, data_dir: Path, start_timeout: float, stop_timeout: float, say: Callable[[str], None]
) -> Iterator[StartedStack]:
    """Starts `eventpipe run` in its own process group and yields once it is ready; SIGINT and wait on exit."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "eventpipe-run.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            eventpipe_command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=stack_environment(partitions, data_dir, os.environ),
            start_new_session=True,
        )
    try:
        _wait_ready(proc, log_path, start_timeout)
        url = embedded_database_url(data_dir)
        if url is None:
            raise StackStartError(f"no embedded PostgreSQL port in {data_dir}")
        yield StartedStack(proc.pid, data_dir, url, log_path)
    finally:
        _stop(proc, data_dir, stop_timeout, say)


def _wait_ready(proc: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while READY_LINE not in log_path.read_text(errors="replace"):
        if proc.poll() is not None:
            raise StackStartError(f"eventpipe run exited with {proc.returncode}:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            raise StackStartError(f"eventpipe run not ready after {timeout:g} s:\n{_tail(log_path)}")
        time.sleep(POLL_S)


def _stop(proc: subprocess.Popen[bytes], data_dir: Path, timeout: float, say: Callable[[str], None]) -> None:
    """SIGINT to the group, as Ctrl-C in a terminal (API, drain, workers, embedded services stop in order).

    Only after `timeout`: SIGKILL to the group and to every process it started (the broker runs in its own session),
    and a fast stop of the embedded PostgreSQL, which pg_ctl detached.
    """
    if proc.poll() is not None:
        return
    started = _descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout)
        return
    except subprocess.TimeoutExpired:
        say(f"eventpipe run (pid {proc.pid}) did not stop within {timeout:g} s: killing what it started")
    started += _descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for child in started:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    proc.wait()
    EmbeddedPostgres(data_dir).stop(mode="fast")


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
