"""When a partition is stuck: the age of the oldest record read and not yet committed, and how long commits have been
failing without one success; past `stalled_after_s` of failing the partition is `stalled`.

Pure state with the time passed in: the owner tells it what happened, it never reads a clock or decides a retry.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StallPolicy:
    stalled_after_s: float = 30.0


@dataclass
class StallWatch:
    policy: StallPolicy
    pending_since: float | None = None  # when the oldest record not yet committed was read
    failing_since: float | None = None  # the first failed commit attempt since the last one that succeeded

    def read(self, now: float) -> None:
        """Records were read; the oldest pending one keeps its time."""
        if self.pending_since is None:
            self.pending_since = now

    def failed(self, now: float) -> None:
        """A commit attempt failed (unavailable, refused, anything)."""
        if self.failing_since is None:
            self.failing_since = now

    def progressed(self) -> None:
        """A commit succeeded, perhaps of part of what is pending: commits are not failing any more."""
        self.failing_since = None

    def caught_up(self) -> None:
        """Everything read is committed."""
        self.pending_since = None
        self.failing_since = None

    def uncommitted_age(self, now: float) -> float:
        return 0.0 if self.pending_since is None else max(0.0, now - self.pending_since)

    def failing_for(self, now: float) -> float:
        return 0.0 if self.failing_since is None else max(0.0, now - self.failing_since)

    def stalled(self, now: float) -> bool:
        return self.failing_since is not None and self.failing_for(now) >= self.policy.stalled_after_s
