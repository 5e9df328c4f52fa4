"""A client workload for chaos scenarios: a background thread POSTs valid events at a steady rate and records
what each send was told (acknowledged, failed, unknown) in the checker, retrying like a real client.

It never judges the pipeline; the checker does that from PostgreSQL afterwards.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from tests.chaos.checker import Checker

TS = "2026-11-24T10:00:00Z"
ACTIONS = ("click", "view", "buy")
_MAX_RETRY_AFTER_S = 5.0
_NO_ROUTE = "not found. Ping http://.../-/routes"  # Serve ingress (proxy or HAProxy) with no route for the path
_NO_ROUTE_WAIT_S = 0.5
_MAX_OUTSTANDING = 64  # requests in flight at most: enough for 1,000/s at 60 ms, quick to drain on exit


def build_event(prefix: str, n: int, seq: int, key: str, kind: str) -> dict[str, Any]:
    """The n-th workload event: a unique id under the prefix, a known amount/reading, the key's sequence number."""
    event_id = f"{prefix}-e{n}"
    if kind == "transaction":
        return {
            "id": event_id,
            "type": "transaction",
            "timestamp": TS,
            "user_id": key,
            "amount": f"{1 + n % 997}.{n % 100:02d}",
            "currency": "USD",
            "metadata": {"seq": seq},
        }
    if kind == "sensor":
        return {
            "id": event_id,
            "type": "sensor",
            "timestamp": TS,
            "device_id": key,
            "reading": 1000.0 + (n % 500) / 4,
            "unit": "Pa",
            "location": {"lat": 52.5, "lon": 13.4},
        }
    if kind == "user_action":
        return {
            "id": event_id,
            "type": "user_action",
            "timestamp": TS,
            "user_id": key,
            "action": ACTIONS[n % len(ACTIONS)],
            "target": f"item-{n % 5}",
            "metadata": {"seq": seq},
        }
    raise ValueError(f"the workload cannot build {kind!r} events")


@dataclass
class WorkloadStats:
    requests: int = 0
    events: int = 0
    retries: int = 0
    statuses: Counter[str] = field(default_factory=Counter)  # per attempt: "202", "503", "ReadTimeout", ...
    missing_retry_after: int = 0  # 429/503 answers without a Retry-After header (a defect of the API)
    behind_s: float = 0.0  # how far the sender fell behind its schedule at worst
    slowest_s: float = 0.0  # the longest a request waited for its answer (or its timeout)
    no_route: int = 0  # 404s from an ingress without a route yet, retried (only with retry_no_route)


class Workload:
    """Context manager: sends while inside, stops and waits for every reply (and its retries) on exit."""

    def __init__(
        self,
        checker: Checker,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        rate: float = 200.0,
        keys: int = 16,
        types: Sequence[str] = ("transaction", "sensor", "user_action"),
        batch_size: int = 1,
        retry_for_s: float = 60.0,
        request_timeout_s: float = 10.0,
        first_n: int = 0,
        limit: int | None = None,
        extend: Callable[[dict[str, Any], int], None] | None = None,
        retry_no_route: bool = False,
    ) -> None:
        if rate <= 0 or batch_size < 1 or keys < 1 or not types:
            raise ValueError("rate, batch_size, keys and types must be positive")
        self.checker = checker
        self.base_url = base_url
        self.headers = headers or {}  # the API key
        self.rate = rate
        self.keys = keys
        self.types = tuple(types)
        self.batch_size = batch_size
        self.retry_for_s = retry_for_s
        self.request_timeout_s = request_timeout_s
        self.stats = WorkloadStats()
        self.extend = extend  # adds scenario-specific fields to each event (event, n) before it is recorded
        self.limit = limit  # stop sending after this many events (the context still waits for every reply)
        self.first_n = first_n
        # A 404 with Serve's "Path '/events' not found" comes from an ingress that has no route to the API yet (a
        # Serve restarting): no API saw the request, so it is retried like a refused connection when this is set.
        self.retry_no_route = retry_no_route
        self._next_n = first_n
        self._all_sent = threading.Event()
        self._seq: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # -- context manager ------------------------------------------------------------------------
    def __enter__(self) -> Workload:
        self._thread = threading.Thread(target=self._main, name="chaos-workload", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.retry_for_s + self.request_timeout_s + 30)
            if self._thread.is_alive():
                raise AssertionError("the workload did not finish its sends and retries in time")
            self._thread = None
        if self._error is not None:
            raise AssertionError(f"the workload crashed: {self._error!r}") from self._error

    @property
    def sent(self) -> int:
        """Events handed to a request so far (each counted once, however often it is retried)."""
        return self._next_n - self.first_n

    def wait_all_sent(self, timeout_s: float) -> bool:
        """With a `limit`: until every event has been sent once (replies may still be pending)."""
        return self._all_sent.wait(timeout_s)

    # -- sending --------------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001 - surfaced to the test in stop()
            self._error = exc

    def _events(self, count: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(count):
            n = self._next_n
            self._next_n += 1
            key = f"{self.checker.prefix}-k{n % self.keys}"
            kind = self.types[n % len(self.types)]
            self._seq[key] += 1
            event = build_event(self.checker.prefix, n, self._seq[key], key, kind)
            if self.extend is not None:
                self.extend(event, n)
            self.checker.record_sent(event["id"], event)
            out.append(event)
        return out

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        # Waiting for one of our own pooled connections is not the API's doing: no pool timeout, only I/O ones.
        timeout = httpx.Timeout(self.request_timeout_s, pool=None)
        async with httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=timeout, limits=limits
        ) as client:
            outstanding = asyncio.Semaphore(_MAX_OUTSTANDING)
            tasks: set[asyncio.Task[None]] = set()
            started = time.monotonic()
            sent_requests = 0
            interval = self.batch_size / self.rate
            while not self._stop.is_set():
                if self.limit is not None and self.sent >= self.limit:
                    self._all_sent.set()
                    await asyncio.sleep(0.05)
                    continue
                due = started + sent_requests * interval
                now = time.monotonic()
                if due > now:
                    await asyncio.sleep(min(due - now, 0.05))
                    continue
                self.stats.behind_s = max(self.stats.behind_s, now - due)
                await outstanding.acquire()
                count = self.batch_size if self.limit is None else min(self.batch_size, self.limit - self.sent)
                events = self._events(count)
                task = asyncio.create_task(self._send(client, events, outstanding))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent_requests += 1
            if tasks:
                await asyncio.gather(*tasks)

    async def _send(self, client: httpx.AsyncClient, events: list[dict[str, Any]], slots: asyncio.Semaphore) -> None:
        """Send until every event has a definite answer or the retry budget is spent; same ids on every retry.

        Holds one of `slots` (acquired by the caller) while a request is in flight, not while it waits to retry: a
        client told to come back later does not keep the next requests from being sent.
        """
        deadline = time.monotonic() + self.retry_for_s
        pending = list(events)
        backoff = 0.2
        holding = True
        try:
            while pending:
                wait_s, pending = await self._attempt(client, pending)
                if not pending:
                    return
                if time.monotonic() + wait_s > deadline:
                    for event in pending:
                        self.checker.record_outcome(event["id"], "unknown")
                    return
                self.stats.retries += 1
                slots.release()
                holding = False
                await asyncio.sleep(wait_s or backoff)
                backoff = min(backoff * 2, 2.0)
                await slots.acquire()
                holding = True
        finally:
            if holding:
                slots.release()

    async def _attempt(self, client: httpx.AsyncClient, events: list[dict[str, Any]]) -> tuple[float, list[dict]]:
        """One request; returns (seconds to wait before retrying, the events still without a definite answer)."""
        single = self.batch_size == 1
        self.stats.requests += 1
        asked = time.monotonic()
        try:
            if single:
                r = await client.post("/events", json=events[0])
            else:
                r = await client.post("/events/batch", json=events)
        except httpx.HTTPError as exc:
            self.stats.slowest_s = max(self.stats.slowest_s, time.monotonic() - asked)
            self._attempted(events, type(exc).__name__)
            for event in events:
                self.checker.record_outcome(event["id"], "unknown")
            return 0.0, events
        self.stats.slowest_s = max(self.stats.slowest_s, time.monotonic() - asked)
        status = str(r.status_code)
        self._attempted(events, status)
        if r.status_code in (429, 503):
            retry_after = r.headers.get("Retry-After")
            if retry_after is None:
                self.stats.missing_retry_after += 1
            for event in events:
                self.checker.record_outcome(event["id"], "unknown")
            return _retry_after_s(retry_after), events
        if r.status_code == 202:
            if single:
                self.checker.record_outcome(events[0]["id"], "acknowledged", _body(r))
                self.stats.events += 1
                return 0.0, []
            return 0.0, self._batch_items(events, r.json())
        if r.status_code == 404 and self.retry_no_route and _NO_ROUTE in r.text:
            self.stats.no_route += 1
            for event in events:
                self.checker.record_outcome(event["id"], "unknown")
            return _NO_ROUTE_WAIT_S, events
        if 400 <= r.status_code < 500:
            for event in events:
                self.checker.record_outcome(event["id"], "failed")
            return 0.0, []
        for event in events:  # 5xx: the request may or may not have been published
            self.checker.record_outcome(event["id"], "unknown")
        return 0.0, events

    def _batch_items(self, events: list[dict[str, Any]], body: dict[str, Any]) -> list[dict[str, Any]]:
        again = []
        for event, item in zip(events, body["results"], strict=True):
            if item["status"] == "accepted":
                self.checker.record_outcome(event["id"], "acknowledged", item)
                self.stats.events += 1
            elif item["status"] == "rejected":
                self.checker.record_outcome(event["id"], "failed")
            else:  # "failed": the broker did not acknowledge this item
                self.checker.record_outcome(event["id"], "unknown")
                again.append(event)
        return again

    def _attempted(self, events: list[dict[str, Any]], status: str) -> None:
        self.stats.statuses[status] += 1
        for event in events:
            self.checker.record_attempt(event["id"], status)


def _body(r: httpx.Response) -> dict[str, Any] | None:
    try:
        body = r.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _retry_after_s(value: str | None) -> float:
    try:
        return min(max(float(value), 0.05), _MAX_RETRY_AFTER_S) if value is not None else 1.0
    except ValueError:
        return 1.0
