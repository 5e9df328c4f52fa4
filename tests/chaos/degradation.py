"""Watches the API's degraded mode while a fault lasts: the kafka breaker's state (from /readyz and from the
`circuit_breaker_state` gauge on the metrics hub) and the spool's depth, polled on a background thread.

It only reads; scenarios assert on what it saw (a degraded mode that never engaged proves nothing).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import httpx
from prometheus_client.parser import text_string_to_metric_families

_POLL_S = 0.1
_GAUGE_STATES = {0.0: "closed", 1.0: "open", 2.0: "half_open"}


@dataclass
class Seen:
    breaker_states: set[str] = field(default_factory=set)  # kafka breaker states /readyz reported
    gauge_states: set[str] = field(default_factory=set)  # circuit_breaker_state{dependency="kafka"} on the hub
    max_spool_depth: int = 0
    polls: int = 0


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
