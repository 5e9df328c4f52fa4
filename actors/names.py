"""Names of eventpipe's Ray actors, in one place, so every process finds the same ones.

Only naming rules: no actor is created here.
"""

from __future__ import annotations

import zlib

LEADER = "eventpipe-leader"
SPOOL_DRAINER = "spool-drainer"
METRICS_HUB = "metrics-hub"
RATE_LIMITER = "rate-limiter"


def owner_name(topic: str, partition: int) -> str:
    return f"owner:{topic}:{partition}"


def writer_name(index: int) -> str:
    return f"checkpoint-writer-{index}"


def writer_for(topic: str, partition: int, writers: int) -> int:
    """Stable shard: crc32, never Python's salted hash()."""
    return zlib.crc32(f"{topic}:{partition}".encode()) % writers
