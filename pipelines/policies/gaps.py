"""Offset gaps: a batch is committed only up to the first hole in the offsets, and a hole is skipped only after it
has stayed a hole for a grace period (a compacted or transactional log has real holes; a broker's read-visibility
race has temporary ones, seen on the embedded broker with two producers on one partition).

Pure policy with an injected clock: the owner asks it what to do, it never reads the log itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipelines.batch import SourceRecord


def split_at_gap(records: Sequence[SourceRecord], expected: int) -> tuple[list[SourceRecord], int | None]:
    """The leading run of records with consecutive offsets from `expected`, and the first missing offset if any."""
    head: list[SourceRecord] = []
    want = expected
    for record in records:
        if record.offset != want:
            return head, want
        head.append(record)
        want += 1
    return head, None


@dataclass(frozen=True)
class GapPolicy:
    grace_s: float = 5.0


@dataclass
class GapState:
    """Tracks the hole the owner is waiting on; `should_skip` turns true once it outlived the grace period."""

    policy: GapPolicy
    offset: int | None = None
    first_seen: float = 0.0

    def observe(self, missing_offset: int, now: float) -> bool:
        """Record that `missing_offset` is still missing; True when the owner should stop waiting and skip it."""
        if self.offset != missing_offset:
            self.offset, self.first_seen = missing_offset, now
            return False
        return now - self.first_seen >= self.policy.grace_s

    def clear(self) -> None:
        self.offset = None
