"""OwnerState: what a partition owner says it is doing, in its status and to the metrics hub and status page.

One closed set, defined once; it holds no logic of the owner's and never decides health beyond naming healthy states.
"""

from __future__ import annotations

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
