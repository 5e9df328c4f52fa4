"""Micro-benchmark of the API's own CPU per event on the batch path: Ingestor.batch on 500-event bodies, in one
process, with no broker, no Ray and tracing off, so only the API's work counts. `--delivery stub` acknowledges at
once; `--delivery real` runs the real Delivery (breaker, routing, spool caps, publish metrics) over a publisher
stand-in that acknowledges at once and a spool stand-in that is never written.

Times are CPU seconds of this process, the best of `--repeat` runs.
Run: python -m benchmarks.ingest_cpu [--batches 200] [--repeat 5] [--delivery stub|real]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from benchmarks.events import EventFactory
from cluster.adapters.kafka_producer import Delivered, Record
from cluster.settings import Settings
from pipelines.policies.breaker import CircuitBreaker
from pipelines.registry import default_registry
from serve_app.admission import InflightGate
from serve_app.delivery import Delivery, SpoolWatch
from serve_app.ingest import Ingestor, RequestMeta

BATCH = 500


class _AckingDelivery:
    """Acknowledges every record at once: the broker's cost is not the API's."""

    def __init__(self) -> None:
        self._offset = 0

    async def deliver(self, items: list[tuple[str, Record]]) -> list[Any]:
        out = []
        for _, record in items:
            self._offset += 1
            out.append(Delivered(record[0], 0, self._offset))
        return out


class _AckingPublisher:
    def __init__(self) -> None:
        self._offset = 0

    async def publish_many(self, records: list[Record]) -> list[Any]:
        out = []
        for record in records:
            self._offset += 1
            out.append(Delivered(record[0], 0, self._offset))
        return out


def _real_delivery(settings: Settings) -> Any:
    spool: Any = object()  # never written: the broker takes everything; the watch reads nothing
    return Delivery(_AckingPublisher(), CircuitBreaker("kafka"), spool, SpoolWatch(spool), settings.spool_max_rows)  # type: ignore[arg-type]


def _bodies(batches: int) -> list[bytes]:
    factory = EventFactory("bench-ingest-cpu", seed=1)
    at = datetime.now(UTC)
    return [orjson.dumps(factory.batch(BATCH, at)) for _ in range(batches)]


async def _run(ingestor: Ingestor, bodies: list[bytes]) -> float:
    meta = RequestMeta("application/json", None, None)
    started = time.process_time()
    for body in bodies:
        reply = await ingestor.batch(body, meta)
        if reply.status != 202 or reply.body["accepted"] != BATCH:
            raise AssertionError(f"unexpected reply {reply.status}: {str(reply.body)[:300]}")
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--delivery", choices=("stub", "real"), default="stub")
    args = parser.parse_args()
    settings = Settings(_env_file=None, tracing_enabled=False)  # type: ignore[call-arg]
    registry = default_registry(settings.base_currency, settings.risk_amount_threshold)
    delivery = _AckingDelivery() if args.delivery == "stub" else _real_delivery(settings)
    ingestor = Ingestor(settings, registry, delivery, InflightGate(settings.max_inflight_events))
    bodies = _bodies(args.batches)
    best = min(asyncio.run(_run(ingestor, bodies)) for _ in range(args.repeat))
    events = args.batches * BATCH
    per_event = best / events * 1e6
    label = f"Ingestor.batch, {BATCH}-event bodies, {args.delivery} delivery"
    print(f"{label}: {per_event:.1f} µs CPU/event (best of {args.repeat})")


if __name__ == "__main__":
    main()
