"""Watches the API's degraded mode while a fault lasts and after it heals: the kafka breaker's state (from /readyz and
from the `circuit_breaker_state` gauge on the metrics hub), the spool's depth and /readyz's `degraded`, polled on a
background thread, plus the share of acknowledgements that came from the spool per range of workload events.

It only reads; scenarios assert on what it saw (a degraded mode that never engaged, or never ended, proves nothing).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.chaos.checker import Record

_POLL_S = 0.1
_GAUGE_STATES = {0.0: "closed", 1.0: "open", 2.0: "half_open"}


@dataclass
class Seen:
    breaker_states: set[str] = field(default_factory=set)  # kafka breaker states /readyz reported
    gauge_states: set[str] = field(default_factory=set)  # circuit_breaker_state{dependency="kafka"} on the hub
    max_spool_depth: int = 0
    polls: int = 0
    # (monotonic time, degraded) of each /readyz answer
    readyz: list[tuple[float, bool]] = field(default_factory=list, repr=False)

    def healthy_since(self, after: float) -> float | None:
        """When /readyz last turned not degraded after `after` (monotonic) and stayed so to the last answer; None if
        the last answer was degraded, or none came after `after`."""
        since: float | None = None
        for at, degraded in self.readyz:
            if at < after:
                continue
            if degraded:
                since = None
            elif since is None:
                since = at
        return since


class DegradationWatch:
    """Context manager: polls /readyz and the hub's /metrics until exit; `seen` holds what they reported."""

    def __init__(self, api_url: str, metrics_url: str | None, dependency: str = "kafka") -> None:
        self.seen = Seen()
        self._api_url, self._metrics_url, self._dependency = api_url, metrics_url, dependency
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="chaos-degradation-watch", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(10)

    def _watch(self) -> None:
        with httpx.Client(timeout=2) as client:
            while not self._stop.is_set():
                self.seen.polls += 1
                self._readyz(client)
                self._gauge(client)
                self._stop.wait(_POLL_S)

    def _readyz(self, client: httpx.Client) -> None:
        try:
            body = client.get(f"{self._api_url}/readyz").json()
        except (httpx.HTTPError, ValueError):
            return  # the replica is busy or restarting: the next poll will tell
        if isinstance(body.get("degraded"), bool):
            self.seen.readyz.append((time.monotonic(), body["degraded"]))
        state = body.get("breakers", {}).get(self._dependency)
        if state:
            self.seen.breaker_states.add(str(state))
        depth = (body.get("spool") or {}).get("depth")
        if isinstance(depth, int):
            self.seen.max_spool_depth = max(self.seen.max_spool_depth, depth)

    def _gauge(self, client: httpx.Client) -> None:
        if self._metrics_url is None:
            return
        try:
            text = client.get(f"{self._metrics_url}/metrics").text
        except httpx.HTTPError:
            return
        for family in text_string_to_metric_families(text):
            if family.name != "circuit_breaker_state":
                continue
            for sample in family.samples:
                if sample.labels.get("dependency") == self._dependency:
                    self.seen.gauge_states.add(_GAUGE_STATES.get(sample.value, str(sample.value)))


@dataclass(frozen=True)
class SpooledShare:
    """Of the acknowledged events numbered in [first, end) of one workload, how many came from the spool."""

    acknowledged: int
    spooled: int
    last: int | None = None  # the highest event number among the spooled ones

    @property
    def share(self) -> float | None:
        return None if self.acknowledged == 0 else self.spooled / self.acknowledged

    def __str__(self) -> str:
        share = "-" if self.share is None else f"{self.share:.1%}"
        return f"{self.spooled}/{self.acknowledged} spooled ({share})"


def spooled_share(acknowledged: Iterable[Record], prefix: str, first: int, end: int) -> SpooledShare:
    """Workload events are `{prefix}-e{n}`, numbered in the order they were first sent."""
    tag = f"{prefix}-e"
    acked = spooled = 0
    last: int | None = None
    for rec in acknowledged:
        if rec.event_id is None or not rec.event_id.startswith(tag) or not rec.event_id[len(tag) :].isdigit():
            continue
        n = int(rec.event_id[len(tag) :])
        if first <= n < end:
            acked += 1
            if rec.spooled:
                spooled += 1
                last = n if last is None else max(last, n)
    return SpooledShare(acked, spooled, last)
