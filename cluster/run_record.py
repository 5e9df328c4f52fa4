"""What `eventpipe run` started, kept under the data dir: one lock (one run per data dir) and one record of every
process (pid, start time and command line), so a later start can stop exactly the leftovers of a run that died.

It never signals a process whose pid, start time and command line are not all the recorded ones: pids are reused,
and a Ray worker's title (`ray::IDLE`) is the same in every Ray on the host.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import IO, Protocol

RUN_DIR = "run"
LOCK_FILE = "lock"
RECORD_FILE = "processes.json"
# Every process of the run's Ray carries it (run_command.ray_env): it tells our Ray from another one on the host.
DATA_DIR_VAR = "EVENTPIPE_DATA_DIR"


class Role(StrEnum):
    """Which part of the stack a recorded process belongs to (one name per part, used in messages)."""

    BROKER = "broker"
    POSTGRES = "postgres"
    RAY = "ray"
    DEPLOY = "deploy"


@dataclass(frozen=True)
class RecordedProcess:
    role: str
    pid: int
    cmdline: tuple[str, ...]
    # PostgreSQL shuts down fast on SIGINT (SIGTERM waits for every client); everything else stops on SIGTERM.
    stop_signal: int = signal.SIGTERM
    # Clock ticks since boot (/proc/<pid>/stat field 22): a reused pid has a later one. None in an old record.
    start_time: int | None = None

    @property
    def name(self) -> str:
        """A short name for messages: the program's file name."""
        return Path(self.cmdline[0]).name if self.cmdline else "?"


@dataclass
class RunRecord:
    """The record file's content: the supervisor's pid, the Ray sessions (sid) it started, the processes."""

    supervisor_pid: int = 0
    ray_address: str = ""  # the GCS of the running Ray, for `eventpipe status`
    ray_sessions: list[int] = field(default_factory=list)
    processes: list[RecordedProcess] = field(default_factory=list)

    def roles(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self.processes:
            counts[p.role] = counts.get(p.role, 0) + 1
        return counts


class ProcessTable(Protocol):
    """The live processes as this module needs them; /proc in production, a dict in unit tests."""

    def cmdline(self, pid: int) -> tuple[str, ...] | None:
        """The command line of a live process, None when no such process (or a zombie, which has none)."""
        ...

    def session_members(self, sid: int) -> list[int]:
        """Pids of the live processes of session `sid`."""
        ...

    def start_time(self, pid: int) -> int | None:
        """When the process started (clock ticks since boot), None when no such process."""
        ...

    def parent(self, pid: int) -> int | None:
        """The parent's pid, None when no such process."""
        ...

    def env_var(self, pid: int, name: str) -> str | None:
        """The value of `name` in the process's initial environment, None when unset or unreadable."""
        ...


class ProcTable:
    """ProcessTable read from Linux's /proc."""

    def cmdline(self, pid: int) -> tuple[str, ...] | None:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        if not raw:
            return None  # a zombie or a kernel thread: nothing to stop
        return tuple(part.decode(errors="replace") for part in raw.rstrip(b"\0").split(b"\0"))

    def session_members(self, sid: int) -> list[int]:
        pids = (int(entry) for entry in os.listdir("/proc") if entry.isdigit())
        return [pid for pid in pids if self._stat_field(pid, 6) == sid]

    def start_time(self, pid: int) -> int | None:
        return self._stat_field(pid, 22)

    def parent(self, pid: int) -> int | None:
        return self._stat_field(pid, 4)

    @staticmethod
    def _stat_field(pid: int, number: int) -> int | None:
        """Field `number` of /proc/<pid>/stat as proc(5) counts them (1 = pid, 4 = ppid, 6 = session, 22 =
        starttime)."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        # after the command name (which may hold spaces and parentheses): field 3 (state) is at index 0
        fields = stat.rpartition(")")[2].split()
        return int(fields[number - 3]) if len(fields) > number - 3 else None

    def env_var(self, pid: int, name: str) -> str | None:
        try:
            raw = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return None  # gone, or another user's
        prefix = name.encode() + b"="
        for entry in raw.split(b"\0"):
            if entry.startswith(prefix):
                return entry[len(prefix) :].decode(errors="replace")
        return None


def observe(
    role: str,
    pid: int,
    table: ProcessTable,
    stop_signal: int = signal.SIGTERM,
    wait_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> RecordedProcess:
    """The record of a live process: its command line and start time as they are now. A child that Popen just
    returned is past exec but shows no command line for a moment (the kernel sets it up after closing the pipe
    Popen waits on): wait up to wait_s for it, as a record with an empty one would never match again."""
    cmdline = table.cmdline(pid)
    for _ in range(int(wait_s / 0.005)):
        if cmdline is not None or table.start_time(pid) is None:
            break
        sleep(0.005)
        cmdline = table.cmdline(pid)
    return RecordedProcess(role, pid, cmdline or (), stop_signal, table.start_time(pid))


def is_running(p: RecordedProcess, table: ProcessTable) -> bool:
    """Whether the recorded process still runs: same pid, command line and (when recorded) start time."""
    if table.cmdline(p.pid) != p.cmdline:
        return False
    return p.start_time is None or table.start_time(p.pid) == p.start_time


def _runs_for(pid: int, table: ProcessTable, data_dir: Path) -> bool:
    return table.env_var(pid, DATA_DIR_VAR) == str(Path(data_dir).resolve())


def session_processes(sid: int, table: ProcessTable, data_dir: Path) -> list[RecordedProcess]:
    """The live members of Ray session `sid` started for the run in `data_dir`: those that carry its DATA_DIR_VAR (a
    session id is a pid, reusable by anyone once its session is empty) and the children of those. A child counts
    on its own because a long process title (setproctitle) overwrites the environment /proc shows: Ray's
    dashboard modules (`ray-dashboard-NodeHead-0 (...)`) show none."""
    members = [pid for pid in table.session_members(sid) if table.cmdline(pid) is not None]
    ours = {pid for pid in members if _runs_for(pid, table, data_dir)}
    grew = True
    while grew:
        adopted = {pid for pid in members if pid not in ours and table.parent(pid) in ours}
        ours |= adopted
        grew = bool(adopted)
    return [observe(Role.RAY, pid, table) for pid in members if pid in ours]


def still_ours(record: RunRecord, table: ProcessTable, data_dir: Path) -> list[RecordedProcess]:
    """The recorded processes that still run (same pid, start time and command line: a reused pid is another
    process), plus any live member of a recorded Ray session that carries this run's data dir in its environment
    (started after the record's last update). A recorded process without a start time (an older record) is ours
    only when its command line matches and it carries the data dir too.
    """
    found: dict[int, RecordedProcess] = {}
    for p in record.processes:
        if p.start_time is not None:
            if is_running(p, table):
                found[p.pid] = p
        elif table.cmdline(p.pid) == p.cmdline and _runs_for(p.pid, table, data_dir):
            found[p.pid] = replace(p, start_time=table.start_time(p.pid))
    for sid in record.ray_sessions:
        for p in session_processes(sid, table, data_dir):
            found.setdefault(p.pid, p)
    return sorted(found.values(), key=lambda p: (p.role, p.pid))


def describe(processes: Sequence[RecordedProcess]) -> str:
    """`broker 1234, postgres 1240, ray 15 processes` for one line of output."""
    by_role: dict[str, list[int]] = {}
    for p in processes:
        by_role.setdefault(p.role, []).append(p.pid)
    return ", ".join(
        f"{role} {pids[0]}" if len(pids) == 1 else f"{role} {len(pids)} processes" for role, pids in by_role.items()
    )


def stop_processes(
    processes: Iterable[RecordedProcess],
    table: ProcessTable,
    grace_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[RecordedProcess]:
    """Send each process its stop signal, then SIGKILL those still running (see is_running) after grace_s. Returns
    the processes that had to be killed."""
    pending = [p for p in processes if is_running(p, table)]
    for p in pending:
        _signal(p.pid, p.stop_signal)
    deadline = clock() + grace_s
    while pending and clock() < deadline:
        sleep(0.1)
        pending = [p for p in pending if is_running(p, table)]
    for p in pending:
        _signal(p.pid, signal.SIGKILL)
    deadline = clock() + 5.0
    while clock() < deadline and any(is_running(p, table) for p in pending):
        sleep(0.05)
    return pending


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        if sig != signal.SIGKILL:
            os.kill(pid, signal.SIGCONT)  # a stopped process acts on no signal but SIGKILL
        os.kill(pid, sig)


class AlreadyRunning(RuntimeError):
    """Another `eventpipe run` holds the data dir's lock."""

    def __init__(self, pid: int | None, lock_path: Path) -> None:
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"eventpipe is already running in this data dir ({who}, lock {lock_path})")
        self.pid = pid


class RunDir:
    """`<data_dir>/run/`: the lock and the record. `lock()` holds an flock for the life of this object."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir).resolve() / RUN_DIR
        self.lock_path = self.path / LOCK_FILE
        self.record_path = self.path / RECORD_FILE
        self._lock: IO[str] | None = None

    def lock(self) -> None:
        """Take the data dir's lock or raise AlreadyRunning naming the holder. The kernel drops the lock when this
        process dies, however it dies, so a stale lock file never blocks a start."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = self.lock_path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            text = handle.read().strip()
            handle.close()
            raise AlreadyRunning(int(text) if text.isdigit() else None, self.lock_path) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None

    def read(self) -> RunRecord:
        try:
            data = json.loads(self.record_path.read_text())
        except FileNotFoundError:
            return RunRecord()
        except (OSError, ValueError):
            return RunRecord()  # a torn or foreign file records nothing we could trust
        processes = [
            RecordedProcess(
                p["role"],
                int(p["pid"]),
                tuple(p["cmdline"]),
                int(p.get("stop_signal", signal.SIGTERM)),
                None if p.get("start_time") is None else int(p["start_time"]),  # absent in an older record
            )
            for p in data.get("processes", [])
        ]
        return RunRecord(
            int(data.get("supervisor_pid", 0)),
            str(data.get("ray_address", "")),
            [int(s) for s in data.get("ray_sessions", [])],
            processes,
        )

    def write(self, record: RunRecord) -> None:
        """Atomically (write then rename): a reader never sees half a record."""
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.record_path.with_suffix(".tmp")
        data = {
            "supervisor_pid": record.supervisor_pid,
            "ray_address": record.ray_address,
            "ray_sessions": record.ray_sessions,
            "processes": [asdict(p) | {"cmdline": list(p.cmdline)} for p in record.processes],
        }
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.record_path)
