"""Label values drawn from an open set (API key names), bounded: the first N distinct values keep their own series,
every later one shares OTHER, so a metric's cardinality cannot grow with its callers.

Only the mapping: it never records a metric. Each process bounds its own; the hub's merge sees at most N + 1 per
process, and replicas see keys in similar order, so the union stays near N.
"""

from __future__ import annotations

OTHER = "other"
DEFAULT_MAX_VALUES = 100


class BoundedLabels:
    def __init__(self, max_values: int = DEFAULT_MAX_VALUES) -> None:
        self._max = max_values
        self._known: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._known:
            return value
        if len(self._known) < self._max:
            self._known.add(value)
            return value
        return OTHER
