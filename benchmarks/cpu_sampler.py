"""Samples CPU% of the pipeline's processes once a second, grouped by role (Ray actor class, broker, ...).

Observes only: it never signals or changes other processes, and is a no-op when psutil is missing.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

try:
    import psutil
except ImportError:  # psutil is optional: without it the report just has no CPU section
    psutil = None  # type: ignore[assignment]

DRIVER = "driver (this process)"
# Ray titles worker processes "ray::<ActorClass>" or "ray::<ActorClass>.<method>" while running.
RAY_TITLE = re.compile(r"^ray::([^\s.]+)")
DEFAULT_PATTERNS: tuple[tuple[str, str], ...] = (
    ("tansu", r"tansu"),
    ("postgres", r"^(postgres|postmaster)\b"),
    ("haproxy", r"haproxy"),
    ("ray core (raylet/gcs/dashboard)", r"^(raylet|gcs_server)\b|ray/dashboard|dashboard\.py|log_monitor"),
)


@dataclass(frozen=True)
class GroupCpu:
    """CPU% summed over a group's processes (100 = one core), averaged over samples."""

    avg_send: float
    avg_all: float
    peak: float
    processes: int


def available() -> bool:
    return psutil is not None


def classify(
    pid: int, name: str, cmdline: Sequence[str], patterns: Sequence[tuple[str, re.Pattern[str]]], self_pid: int
) -> str | None:
    """The group a process belongs to, or None if it is not part of the system under test."""
    if pid == self_pid:
        return DRIVER
    head = cmdline[0] if cmdline else name
    if match := RAY_TITLE.match(head):
        return f"ray::{match.group(1)}"
    text = " ".join([name, *cmdline])
    for label, pattern in patterns:
        if pattern.search(name) or pattern.search(text):
            return label
    return None


class CpuSampler:
    """Background thread; `mark_send_end()` splits the send phase from the drain phase."""

    def __init__(self, interval: float = 1.0, extra: Sequence[tuple[str, str]] = ()) -> None:
        self._interval = interval
        self._patterns = [(label, re.compile(p)) for label, p in (*extra, *DEFAULT_PATTERNS)]
        self._self_pid = os.getpid()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)
        self._procs: dict[int, Any] = {}
        self._samples: list[tuple[float, dict[str, float]]] = []
        self._members: dict[str, set[int]] = defaultdict(set)
        self._send_end: float | None = None

    def start(self) -> None:
        if psutil is not None:
            self._thread.start()

    def mark_send_end(self) -> None:
        self._send_end = time.monotonic()

    def stop(self) -> dict[str, GroupCpu]:
        if psutil is None:
            return {}
        self._stop.set()
        self._thread.join()
        return self._summary()

    def _loop(self) -> None:
        self._sample()  # primes cpu_percent; the first reading of each process is meaningless
        while not self._stop.wait(self._interval):
            self._samples.append((time.monotonic(), self._sample()))

    def _sample(self) -> dict[str, float]:
        if psutil is None:
            return {}
        totals: dict[str, float] = defaultdict(float)
        seen: set[int] = set()
        for proc in psutil.process_iter(["name", "cmdline"]):
            try:
                group = classify(
                    proc.pid, proc.info["name"] or "", proc.info["cmdline"] or [], self._patterns, self._self_pid
                )
                if group is None:
                    continue
                seen.add(proc.pid)
                known = self._procs.get(proc.pid)
                if known is None:
                    self._procs[proc.pid] = proc
                    proc.cpu_percent(None)
                    continue
                totals[group] += known.cpu_percent(None)
                self._members[group].add(proc.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        for gone in set(self._procs) - seen:
            del self._procs[gone]
        return dict(totals)

    def _summary(self) -> dict[str, GroupCpu]:
        groups = sorted({g for _, sample in self._samples for g in sample})
        cut = self._send_end if self._send_end is not None else float("inf")
        send = [s for t, s in self._samples if t <= cut]
        summary: dict[str, GroupCpu] = {}
        for group in groups:
            every = [s.get(group, 0.0) for _, s in self._samples]
            during_send = [s.get(group, 0.0) for s in send]
            summary[group] = GroupCpu(
                avg_send=round(sum(during_send) / len(during_send), 1) if during_send else 0.0,
                avg_all=round(sum(every) / len(every), 1),
                peak=round(max(every), 1),
                processes=len(self._members[group]),
            )
        return summary
