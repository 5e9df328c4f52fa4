"""Merging the metrics of many processes into one exposition: the rules behind the cluster's ONE scrape target.

Counters and histograms are summed over every process that ever pushed, including processes that went silent (their
last values are kept), so a merged counter never goes backwards when an actor dies or a replica is replaced. Gauges
come from live processes only, merged per family: `circuit_breaker_state` is the worst state any process sees, the
hub's own gauges (`worker_health`, `queue_lag`, `dlq_size`) are taken from the hub alone, any other gauge is the
maximum. It holds no I/O: the hub actor feeds it snapshots and serves what it renders.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from cluster.observability.snapshot import Family, Labels, Snapshot

log = logging.getLogger(__name__)

HUB_SOURCE = "hub"
_SUMMED = frozenset({"counter", "histogram", "summary"})


class GaugeRule(StrEnum):
    MAX = "max"  # the highest value any live process reports
    WORST_BREAKER = "worst_breaker"  # open (1) > half-open (2) > closed (0)
    HUB = "hub"  # the hub measures it itself; other processes' (unset) copies are ignored


GAUGE_RULES: Mapping[str, GaugeRule] = {
    "circuit_breaker_state": GaugeRule.WORST_BREAKER,
    "worker_health": GaugeRule.HUB,
    "queue_lag": GaugeRule.HUB,
    "dlq_size": GaugeRule.HUB,
}
# circuit_breaker_state value -> severity; a value not listed is treated as the worst.
_BREAKER_SEVERITY = {0.0: 0, 2.0: 1, 1.0: 2}


def _severity(value: float) -> int:
    return _BREAKER_SEVERITY.get(value, len(_BREAKER_SEVERITY))


@dataclass
class _Source:
    snapshot: Snapshot
    last_seen: float


@dataclass
class _Merged:
    type: str
    help: str
    values: dict[tuple[str, Labels], float]  # (sample name, labels) -> value, in first-seen order


class MetricsMerger:
    """Thread-safe. `update` a source's snapshot whenever it arrives; `render` whenever Prometheus scrapes.

    A source silent for `retire_after_s` is retired: its gauges are dropped, its counters and histograms kept. After
    `fold_after_s` its counters are folded into one accumulator and the source forgotten (a Ray process that died
    never speaks again: a restarted actor is a new process with a new source id).
    """

    def __init__(
        self,
        retire_after_s: float = 10.0,
        fold_after_s: float = 600.0,
        gauge_rules: Mapping[str, GaugeRule] = GAUGE_RULES,
    ) -> None:
        if fold_after_s < retire_after_s:
            raise ValueError("fold_after_s must not be shorter than retire_after_s")
        self._retire_after_s = retire_after_s
        self._fold_after_s = fold_after_s
        self._rules = dict(gauge_rules)
        self._sources: dict[str, _Source] = {}
        self._folded: dict[str, _Merged] = {}
        self._folded_ids: set[str] = set()
        self._lock = threading.Lock()

    def update(self, source: str, snapshot: Snapshot, now: float) -> None:
        with self._lock:
            if source in self._folded_ids:
                # Cannot happen with Ray processes (see the class docstring); counting it again would double it.
                log.warning("metrics source %s spoke again after it was folded; ignoring it", source)
                return
            self._sources[source] = _Source(snapshot, now)

    def sources(self, now: float) -> dict[str, dict[str, object]]:
        """Every known source with its age and whether it counts as live: for operators and tests."""
        with self._lock:
            return {
                name: {"age_s": round(now - s.last_seen, 3), "live": self._live(name, s, now)}
                for name, s in sorted(self._sources.items())
            }

    def families(self, now: float) -> list[Metric]:
        """The merged families, ready for prometheus-client's exposition."""
        with self._lock:
            self._fold_old(now)
            merged: dict[str, _Merged] = {
                name: _Merged(m.type, m.help, dict(m.values)) for name, m in self._folded.items()
            }
            for name, source in self._sources.items():
                live = self._live(name, source, now)
                for family in source.snapshot:
                    self._merge_family(merged, family, name, live)
        out = []
        for name, m in merged.items():
            metric = Metric(name, m.help, m.type)
            for (sample, labels), value in m.values.items():
                metric.add_sample(sample, dict(labels), value)
            out.append(metric)
        return out

    def render(self, now: float) -> bytes:
        """The merged exposition in Prometheus text format."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(self.families(now)))
        return generate_latest(registry)

    # -- rules ---------------------------------------------------------------------------------
    def _live(self, name: str, source: _Source, now: float) -> bool:
        return name == HUB_SOURCE or now - source.last_seen <= self._retire_after_s

    def _merge_family(self, merged: dict[str, _Merged], family: Family, source: str, live: bool) -> None:
        summed = family.type in _SUMMED
        if not summed:
            rule = self._rules.get(family.name, GaugeRule.MAX)
            if not live or (rule is GaugeRule.HUB and source != HUB_SOURCE):
                return
        target = merged.get(family.name)
        if target is None:
            target = merged[family.name] = _Merged(family.type, family.help, {})
        elif target.type != family.type:
            log.warning("metric %s: a %s in %s, a %s elsewhere; skipped", family.name, family.type, source, target.type)
            return
        values = target.values
        for sample, labels, value in family.samples:
            key = (sample, labels)
            if key not in values:
                values[key] = value
            elif summed:
                values[key] += value
            elif self._rules.get(family.name) is GaugeRule.WORST_BREAKER:
                if _severity(value) > _severity(values[key]):
                    values[key] = value
            else:
                values[key] = max(values[key], value)

    def _fold_old(self, now: float) -> None:
        for name, source in list(self._sources.items()):
            if name == HUB_SOURCE or now - source.last_seen <= self._fold_after_s:
                continue
            for family in source.snapshot:
                if family.type in _SUMMED:
                    self._merge_family(self._folded, family, name, live=False)
            del self._sources[name]
            self._folded_ids.add(name)


class _Fixed:
    """A collector that yields families computed beforehand."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return iter(self._families)
