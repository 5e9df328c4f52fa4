"""Percentile summaries for latency samples, in milliseconds.

Pure arithmetic on lists of seconds; never reads clocks or prints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def summarize_ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """count, mean, p50/p95/p99 and max of durations given in seconds, reported in ms (None if empty)."""
    values = sorted(seconds)
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    return {
        "count": len(values),
        "mean": round(1000 * sum(values) / len(values), 3),
        "p50": round(1000 * percentile(values, 50), 3),
        "p95": round(1000 * percentile(values, 95), 3),
        "p99": round(1000 * percentile(values, 99), 3),
        "max": round(1000 * values[-1], 3),
    }
