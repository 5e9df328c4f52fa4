"""A process's metrics as plain data: what a process pushes to the metrics hub, and the unit the hub merges.

It only reads a registry: it never records, sends or merges anything. `_created` timestamp series are left out
(a merged counter has no single creation time).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, Labels, float]  # (sample name, sorted labels, value), e.g. ("events_received_total", (...), 3.0)


@dataclass(frozen=True)
class Family:
    """One metric family as prometheus-client collects it: counters are named without `_total`, their samples with."""

    name: str
    type: str  # counter | gauge | histogram (anything else is merged like a gauge)
    help: str
    samples: tuple[Sample, ...]


Snapshot = tuple[Family, ...]


def take(registry: CollectorRegistry) -> Snapshot:
    """Every family of `registry` with its current samples; cheap enough to run every second."""
    families = []
    for metric in registry.collect():
        samples = tuple(
            (s.name, tuple(sorted(s.labels.items())), float(s.value))
            for s in metric.samples
            if not s.name.endswith("_created")
        )
        families.append(Family(metric.name, metric.type, metric.documentation, samples))
    return tuple(families)
