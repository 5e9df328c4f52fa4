"""When the supervisor of `eventpipe run` gives up, and what a dead embedded broker took with it: pure decisions,
no processes, no clock of their own (time is passed in).

It never decides how to restart anything; cluster/supervisor.py does that.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

Partition = tuple[str, int]


@dataclass(frozen=True)
class RestartPolicy:
    """Give up after `max_failures` failed restarts in a row; wait `base_s * 2**n` (at most `max_s`) before the
    n-th retry. A restart that succeeded and then stayed healthy for `healthy_after_s` resets the count."""

    max_failures: int = 3
    base_s: float = 1.0
    max_s: float = 10.0
    healthy_after_s: float = 60.0


class RestartBudget:
    """Running state of a RestartPolicy for one component."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.failures = 0  # failed restarts in a row
        self._healthy_since: float | None = None

    @property
    def exhausted(self) -> bool:
        return self.failures >= self.policy.max_failures

    def backoff_s(self) -> float:
        """How long to wait before the next restart attempt (none before the first)."""
        if self.failures == 0:
            return 0.0
        return float(min(self.policy.max_s, self.policy.base_s * 2 ** (self.failures - 1)))

    def failed(self) -> None:
        self.failures += 1
        self._healthy_since = None

    def restarted(self, now: float) -> None:
        """A restart succeeded; the count is kept until the component has stayed up long enough."""
        self._healthy_since = now

    def healthy(self, now: float) -> None:
        if self._healthy_since is not None and now - self._healthy_since >= self.policy.healthy_after_s:
            self.failures = 0
            self._healthy_since = None

    def died(self, now: float) -> None:
        """The component died again: a death soon after a restart counts as a failed restart."""
        if self._healthy_since is not None and now - self._healthy_since < self.policy.healthy_after_s:
            self.failures += 1
        self._healthy_since = None


@dataclass(frozen=True)
class LostRange:
    """Offsets [first, end) of a partition that the broker acknowledged and the pipeline had not committed."""

    topic: str
    partition: int
    first: int
    end: int

    @property
    def count(self) -> int:
        return self.end - self.first

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}] offsets {self.first}-{self.end - 1}"


def lost_with_the_log(last_highs: Mapping[Partition, int], committed: Mapping[Partition, int]) -> list[LostRange]:
    """Acknowledged records a memory-only broker lost when it died: per partition, from the committed checkpoint up to
    the last high watermark seen while it lived. A lower bound: records acknowledged after the last reading are not
    known to anyone but their clients."""
    lost = []
    for (topic, partition), high in sorted(last_highs.items()):
        done = committed.get((topic, partition), 0)
        if high > done:
            lost.append(LostRange(topic, partition, done, high))
    return lost
