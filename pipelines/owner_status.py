"""What a partition owner says about itself: its state (one closed set, read by the metrics hub and status page), its
counters, and the recent per-stage durations of its batches.

Plain data kept by the owner's loop; it decides no health beyond naming the healthy states, and reads no clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum


class OwnerState(StrEnum):
    STARTING = "starting"  # claiming its partition
    RUNNING = "running"  # reading and committing
    STALLED = "stalled"  # running, but its commits have failed for owner_stalled_after_s without one success
    FENCED = "fenced"  # a newer epoch owns the partition: it stopped and commits nothing more
    ABANDONED = "abandoned"  # it stopped on a batch it could not commit (even a bare dead letter was refused)
    STOPPED = "stopped"  # stopped on request (graceful shutdown)
    ERROR = "error"  # its loop failed; it backs off and starts over


# The states in which an owner is doing its job (the metrics hub's worker health).
HEALTHY_OWNER_STATES = frozenset({OwnerState.STARTING, OwnerState.RUNNING})

# The states a stop request leaves as they are: they already say why the owner is not reading.
FINAL_OWNER_STATES = frozenset({OwnerState.FENCED, OwnerState.ABANDONED, OwnerState.ERROR})


@dataclass
class OwnerStatus:
    topic: str
    partition: int
    owner_id: str
    pid: int
    state: OwnerState = OwnerState.STARTING  # STALLED is never stored: the loop's status() derives it
    epoch: int | None = None
    committed_offset: int | None = None
    batches: int = 0
    events: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    last_commit_at: float | None = None
    last_record_at: float | None = None
    last_error: str | None = None
    commit_error: str | None = None  # why the batch in flight has not committed yet; None once it has
    in_flight: bool = False
    skipped_offsets: int = 0
    already_committed: int = 0  # retries that found their batch committed (the COMMIT's acknowledgement was lost)
    last_batch_size: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)  # p50/p99 of recent batches, per stage
    commit_failures: int = 0
    store_rejected: int = 0  # records dead-lettered because PostgreSQL refused them (or their rows did not encode)


class StageTimings:
    """Recent per-batch stage durations, for status and profiling (not the Prometheus histograms)."""

    def __init__(self, window: int = 2000) -> None:
        self._samples: dict[str, deque[float]] = {}
        self._window = window

    def add(self, **seconds: float) -> None:
        for stage, value in seconds.items():
            self._samples.setdefault(stage, deque(maxlen=self._window)).append(value)

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for stage, values in self._samples.items():
            ordered = sorted(values)
            out[f"{stage}_p50"] = round(ordered[len(ordered) // 2] * 1000, 2)
            out[f"{stage}_p99"] = round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2)
        return out
