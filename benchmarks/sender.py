"""Open-loop sender: POSTs batches (or single events) on a fixed schedule over a bounded keep-alive pool.

Never lowers the rate when the server is slow: late batches go out as soon as a connection frees,
and their lateness is recorded so the report can say the driver fell behind.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import orjson

from benchmarks.events import EventFactory

BATCH_PATH = "/events/batch"
SINGLE_PATH = "/events"


@dataclass(frozen=True)
class LoadPlan:
    """What to offer: `rate` events/s for `duration` s in batches of `batch_size`."""

    rate: float
    duration: float
    batch_size: int
    concurrency: int
    request_timeout: float = 30.0
    late_grace: float = 10.0  # seconds past the duration during which late batches may still start
    lag_tolerance: float = 0.1  # a batch starting later than this after its slot counts as late
    single: bool = False  # POST /events with one event per request instead of /events/batch (batch_size must be 1)

    def __post_init__(self) -> None:
        if self.single and self.batch_size != 1:
            raise ValueError("single-event requests carry one event: batch_size must be 1")

    @property
    def path(self) -> str:
        return SINGLE_PATH if self.single else BATCH_PATH

    @property
    def interval(self) -> float:
        return self.batch_size / self.rate

    @property
    def batches(self) -> int:
        return max(1, round(self.rate * self.duration / self.batch_size))


@dataclass(frozen=True)
class RequestRecord:
    """One POST: times are seconds since the schedule start (monotonic clock)."""

    index: int
    scheduled: float
    started: float
    finished: float
    status: int | None  # None when the request failed before a response
    error: str | None  # exception class name for transport failures
    sent: int
    accepted: int
    rejected: int


@dataclass
class LoadResult:
    plan: LoadPlan
    records: list[RequestRecord] = field(default_factory=list)
    accepted_ids: list[str] = field(default_factory=list)
    unsent_batches: int = 0
    wall_start: float = 0.0  # time.time() at the schedule start, to relate to database timestamps


def _parse_accepted(body: bytes, ids: list[str]) -> tuple[int, int, list[str]]:
    """Accepted/rejected counts and accepted ids from a 202 body (a batch's, or a single event's); falls back to our
    ids by index."""
    payload = orjson.loads(body)
    if isinstance(payload, dict) and payload.get("status") == "accepted" and "id" in payload:
        return 1, 0, [str(payload["id"])]
    results = payload.get("results") if isinstance(payload, dict) else None
    if not isinstance(results, list):
        accepted = int(payload.get("accepted", 0)) if isinstance(payload, dict) else 0
        return accepted, len(ids) - accepted, ids[:accepted] if accepted == len(ids) else []
    accepted_ids = [str(r.get("id") or ids[int(r["index"])]) for r in results if r.get("status") == "accepted"]
    return len(accepted_ids), len(results) - len(accepted_ids), accepted_ids


class OpenLoopSender:
    """Sends `plan.batches` batches, batch i scheduled at start + i * interval."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        factory: EventFactory,
        plan: LoadPlan,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._factory = factory
        self._plan = plan
        self._clock = clock
        self._slots = asyncio.Semaphore(plan.concurrency)
        self._result = LoadResult(plan=plan)
        self._start = 0.0
        self._bodies: list[tuple[list[str], bytes]] | None = None

    def prepare(self) -> None:
        """Build every body before the first is sent, as wrk sends a prepared one: inside the send window the driver's
        CPU goes to sending and reading answers, not to making events. `run` does it when it has not been done."""
        self._bodies = [self._build() for _ in range(self._plan.batches)]

    async def run(self) -> LoadResult:
        plan = self._plan
        if self._bodies is None:
            self.prepare()
        bodies, self._bodies = self._bodies or [], None
        self._start = self._clock()
        self._result.wall_start = time.time()
        stop_at = self._start + plan.duration + plan.late_grace
        in_flight: set[asyncio.Task[None]] = set()
        for index, (ids, body) in enumerate(bodies):
            slot = self._start + index * plan.interval
            if (delay := slot - self._clock()) > 0:
                await asyncio.sleep(delay)
            remaining = stop_at - self._clock()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(self._slots.acquire(), remaining)
            except TimeoutError:
                self._result.unsent_batches = plan.batches - index
                break
            task = asyncio.create_task(self._send(index, slot - self._start, ids, body))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            await asyncio.sleep(0)  # let the request go out before the next slot is looked at
        if in_flight:
            await asyncio.gather(*in_flight)
        self._result.records.sort(key=lambda r: r.index)
        return self._result

    def _build(self) -> tuple[list[str], bytes]:
        events = self._factory.batch(self._plan.batch_size, datetime.now(UTC))
        return [e["id"] for e in events], orjson.dumps(events[0] if self._plan.single else events)

    async def _send(self, index: int, scheduled: float, ids: list[str], body: bytes) -> None:
        started = self._clock() - self._start
        status: int | None = None
        error: str | None = None
        accepted = rejected = 0
        try:
            response = await self._client.post(
                self._plan.path, content=body, headers={"content-type": "application/json"}
            )
            status = response.status_code
            if 200 <= status < 300:
                accepted, rejected, accepted_ids = _parse_accepted(response.content, ids)
                self._result.accepted_ids.extend(accepted_ids)
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        except orjson.JSONDecodeError:
            error = "InvalidJSONResponse"
        finally:
            self._slots.release()
        self._result.records.append(
            RequestRecord(
                index=index,
                scheduled=scheduled,
                started=started,
                finished=self._clock() - self._start,
                status=status,
                error=error,
                sent=len(ids),
                accepted=accepted,
                rejected=rejected,
            )
        )


def make_client(base_url: str, plan: LoadPlan, api_key: str | None = None) -> httpx.AsyncClient:
    """HTTP/1.1 keep-alive client with exactly `concurrency` connections, sending `api_key` with every request."""
    limits = httpx.Limits(max_connections=plan.concurrency, max_keepalive_connections=plan.concurrency)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = httpx.Timeout(plan.request_timeout)
    return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout, http1=True, headers=headers)


def schedule_ok(plan: LoadPlan) -> str | None:
    """Why a plan cannot run, or None."""
    if plan.rate <= 0 or plan.duration <= 0 or plan.concurrency <= 0:
        return "rate, duration and concurrency must be positive"
    if not 1 <= plan.batch_size <= 1000:
        return "batch size must be between 1 and 1000 (the API limit)"
    if math.isinf(plan.interval):
        return "rate too low"
    return None
