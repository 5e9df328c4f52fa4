"""CPU µs per event and % of one core per component, from one sampled phase: the rows of the cost table.

Pure arithmetic on figures already measured; never reads processes, clocks or the database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from benchmarks.components import Component
from benchmarks.cpu_sampler import Phase, Usage

STACK = "stack (all but driver)"
TOTAL = "total"
GIB = 1024**3


@dataclass(frozen=True)
class CostRow:
    label: str
    processes: int
    cpu_seconds: float
    percent_of_core: float  # 100 = one core busy for the whole phase
    us_per_event: float | None  # None when no events were processed in the phase
    share: float  # percent of the total CPU
    peak_rss_bytes: int


def us_per_event(cpu_seconds: float, events: int | None) -> float | None:
    """Core-seconds ÷ events, in µs of CPU per event."""
    if not events:
        return None
    return cpu_seconds * 1_000_000 / events


def budget_us(cores: int, rate: float) -> float:
    """µs of CPU per event that `cores` fully busy cores allow at `rate` events/s."""
    return cores * 1_000_000 / rate


def percent_of_core(cpu_seconds: float, seconds: float) -> float:
    return 100 * cpu_seconds / seconds if seconds > 0 else 0.0


def events_in_window(times: Iterable[float], start: float, end: float) -> int:
    """How many of `times` (epoch seconds, e.g. committed_at) fall inside [start, end]."""
    return sum(1 for t in times if start <= t <= end)


def _row(label: str, usage: Usage, phase: Phase, events: int | None, total_cpu: float) -> CostRow:
    return CostRow(
        label=label,
        processes=usage.processes,
        cpu_seconds=usage.cpu_seconds,
        percent_of_core=percent_of_core(usage.cpu_seconds, phase.seconds),
        us_per_event=us_per_event(usage.cpu_seconds, events),
        share=100 * usage.cpu_seconds / total_cpu if total_cpu > 0 else 0.0,
        peak_rss_bytes=usage.peak_rss_bytes,
    )


def _sum(usages: list[Usage], peak_rss_bytes: int) -> Usage:
    return Usage(sum(u.cpu_seconds for u in usages), sum(u.processes for u in usages), peak_rss_bytes)


def cost_rows(phase: Phase, events: int | None) -> list[CostRow]:
    """One row per component seen (table order), then the stack without the driver, then the total.

    The summed rows' RSS is the highest sample of the sum, not a sum of each component's peak.
    """
    seen = [c for c in Component if c in phase.components]
    total_cpu = sum(phase.components[c].cpu_seconds for c in seen)
    rows = [_row(str(c), phase.components[c], phase, events, total_cpu) for c in seen]
    stack = [phase.components[c] for c in seen if c is not Component.DRIVER]
    driver = phase.components.get(Component.DRIVER)
    # Driver and stack are sampled together, so their peaks may come from different samples: an upper bound.
    total_rss = phase.peak_stack_rss_bytes + (driver.peak_rss_bytes if driver else 0)
    rows.append(_row(STACK, _sum(stack, phase.peak_stack_rss_bytes), phase, events, total_cpu))
    rows.append(_row(TOTAL, _sum([phase.components[c] for c in seen], total_rss), phase, events, total_cpu))
    return rows
