"""Samples the CPU time and RSS of the stack's processes once a second, summed by component, split into phases
(e.g. `send` and `drain`) whose boundaries are sampled exactly when the caller marks them.

Observes only: it never signals or changes other processes. CPU is read as cumulative user+system time per process,
so nothing between two samples is lost unless a process exits in between.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import psutil

from benchmarks.components import Component, component_of
from cluster.run_record import ProcTable

ProcessKey = tuple[int, float]  # (pid, create time): a reused pid is a new process
GONE = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)


@dataclass(frozen=True)
class Usage:
    """One component over one phase."""

    cpu_seconds: float  # core-seconds: user + system time of all its processes
    processes: int
    peak_rss_bytes: int  # RSS summed over its processes, highest sample


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float  # monotonic length
    wall_start: float  # time.time() at its start and end, to compare with database timestamps
    wall_end: float
    components: dict[Component, Usage]
    peak_stack_rss_bytes: int  # RSS summed over every process but the driver, highest sample
    # PSS summed over the same processes once, at the phase's end: each shared page (Ray's libraries mapped by every
    # worker, PostgreSQL's shared buffers) counted once in all, not once per process as summed RSS counts it.
    stack_pss_bytes: int = 0


class StackScope:
    """The processes to sample: each root and all its descendants, every live member of the given process sessions
    (`eventpipe run` starts Ray in a session of its own, whose processes are not its descendants), plus the driver
    (this process)."""

    def __init__(
        self, roots: list[psutil.Process], driver: psutil.Process | None = None, sessions: Sequence[int] = ()
    ) -> None:
        self.roots = roots
        self.driver = driver or psutil.Process()
        self.sessions = list(sessions)

    def processes(self) -> Iterator[psutil.Process]:
        """Each process once, even when one root descends from another."""
        seen = {self.driver.pid}
        yield self.driver
        trees = []
        for root in self.roots:
            try:
                trees.append([root, *root.children(recursive=True)])
            except GONE:
                continue
        # A session is whole already: its members' children are members too (each children() call reads all /proc).
        trees.extend(_session_members(sid) for sid in self.sessions)
        for tree in trees:
            for proc in tree:
                if proc.pid not in seen:
                    seen.add(proc.pid)
                    yield proc


def _session_members(sid: int) -> list[psutil.Process]:
    members = []
    for pid in ProcTable().session_members(sid):
        try:
            members.append(psutil.Process(pid))
        except GONE:
            continue
    return members


@dataclass
class _OpenPhase:
    name: str
    started: float
    wall_start: float
    cpu: dict[Component, float] = field(default_factory=lambda: defaultdict(float))
    members: dict[Component, set[ProcessKey]] = field(default_factory=lambda: defaultdict(set))
    peak_rss: dict[Component, int] = field(default_factory=lambda: defaultdict(int))
    peak_stack_rss: int = 0

    def close(self, ended: float, wall_end: float, stack_pss: int) -> Phase:
        seen = [c for c in Component if self.members[c]]
        components = {c: Usage(round(self.cpu[c], 3), len(self.members[c]), self.peak_rss[c]) for c in seen}
        return Phase(
            self.name, ended - self.started, self.wall_start, wall_end, components, self.peak_stack_rss, stack_pss
        )


class ProcessSampler:
    """Background thread sampling `scope` every `interval` s; `begin(name)` closes the phase running and opens one."""

    def __init__(self, scope: StackScope, interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._scope = scope
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="process-sampler", daemon=True)
        self._cpu: dict[ProcessKey, float] = {}  # cumulative CPU seconds at the last sample
        self._phase: _OpenPhase | None = None
        self._done: list[Phase] = []

    def start(self, phase: str) -> None:
        """Takes the baseline sample (CPU used before it is not counted) and starts sampling."""
        with self._lock:
            self._sample(None)
            self._phase = self._open(phase)
        self._thread.start()

    def begin(self, phase: str) -> None:
        with self._lock:
            self._close_phase()
            self._phase = self._open(phase)

    def stop(self) -> list[Phase]:
        self._stop.set()
        self._thread.join()
        with self._lock:
            self._close_phase()
            self._phase = None
        return list(self._done)

    def _open(self, name: str) -> _OpenPhase:
        return _OpenPhase(name, self._clock(), time.time())

    def _close_phase(self) -> None:
        if self._phase is not None:
            self._sample(self._phase)
            self._done.append(self._phase.close(self._clock(), time.time(), self._stack_pss()))

    def _stack_pss(self) -> int:
        """PSS of every process but the driver, read once (reading /proc/*/smaps_rollup costs too much per second)."""
        total = 0
        for proc in self._scope.processes():
            if proc == self._scope.driver:
                continue
            try:
                total += proc.memory_full_info().pss
            except GONE:
                continue
        return total

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                if self._phase is not None:
                    self._sample(self._phase)

    def _sample(self, phase: _OpenPhase | None) -> None:
        """Adds each process's CPU time since the last sample to `phase` (None: baseline only)."""
        seen: dict[ProcessKey, float] = {}
        rss: dict[Component, int] = defaultdict(int)
        for proc in self._scope.processes():
            try:
                with proc.oneshot():
                    key = (proc.pid, proc.create_time())
                    component = component_of(proc.name(), proc.cmdline(), is_driver=proc == self._scope.driver)
                    times = proc.cpu_times()
                    memory = proc.memory_info().rss
            except GONE:
                continue
            seen[key] = times.user + times.system
            if phase is None:
                continue
            # A process first seen after the baseline started after the previous sample: all its time is new.
            phase.cpu[component] += seen[key] - self._cpu.get(key, 0.0)
            phase.members[component].add(key)
            rss[component] += memory
        self._cpu = seen
        if phase is None:
            return
        for component, value in rss.items():
            phase.peak_rss[component] = max(phase.peak_rss[component], value)
        stack = sum(v for c, v in rss.items() if c is not Component.DRIVER)
        phase.peak_stack_rss = max(phase.peak_stack_rss, stack)
