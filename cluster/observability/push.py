"""Pushing this process's metrics to the metrics hub: a daemon thread sends a snapshot of the registry every interval.

Fire-and-forget with at most one push in flight: a slow or restarting hub makes this process skip pushes, never
queue them or block its work. It never merges or serves metrics (cluster.observability.hub does).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import ray
from prometheus_client import CollectorRegistry

from cluster.observability.snapshot import take

log = logging.getLogger(__name__)

_STUCK_AFTER_S = 30.0  # a push unanswered this long is abandoned, and the next one sent anyway


class MetricsPusher:
    """Pushes `registry` as source `source` to the actor `find_hub()` returns (None: no hub yet, try later)."""

    def __init__(
        self, registry: CollectorRegistry, source: str, find_hub: Callable[[], Any | None], interval_s: float
    ) -> None:
        self.source = source
        self._registry = registry
        self._find_hub = find_hub
        self._interval_s = interval_s
        self._hub: Any | None = None
        self._inflight: tuple[Any, float] | None = None  # (ObjectRef, sent at)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-push", daemon=True)
        self.pushes = 0

    def start(self) -> MetricsPusher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def push_once(self) -> bool:
        """Send one snapshot unless the previous push is still in flight; True when one was sent."""
        if self._inflight is not None:
            ref, sent_at = self._inflight
            ready, _ = ray.wait([ref], timeout=0)
            if not ready and time.monotonic() - sent_at < _STUCK_AFTER_S:
                return False
            self._inflight = None
            if ready:
                try:
                    ray.get(ref)
                except ray.exceptions.RayError as exc:
                    log.debug("metrics push failed (%s); looking the hub up again", exc)
                    self._hub = None
            else:
                self._hub = None
        if self._hub is None:
            self._hub = self._find_hub()
            if self._hub is None:
                return False
        self._inflight = (self._hub.push.remote(self.source, take(self._registry)), time.monotonic())
        self.pushes += 1
        return True

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.push_once()
            except Exception:  # noqa: BLE001 - metrics must never take a process down; the next round tries again
                log.warning("metrics push round failed", exc_info=True)
                self._hub = None


_pusher: MetricsPusher | None = None
_pusher_lock = threading.Lock()


def start(registry: CollectorRegistry, role: str, hub_name: str, namespace: str, interval_s: float) -> MetricsPusher:
    """The one pusher of this process (created on the first call; later calls return it)."""
    global _pusher
    with _pusher_lock:
        if _pusher is None:
            source = f"{role}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
            _pusher = MetricsPusher(registry, source, _named_actor(hub_name, namespace), interval_s).start()
        return _pusher


def _named_actor(name: str, namespace: str) -> Callable[[], Any | None]:
    def find() -> Any | None:
        try:
            return ray.get_actor(name, namespace=namespace)
        except ValueError:  # not started (yet), or being restarted under its name
            return None

    return find
