"""Micro-benchmark of the API's own CPU per event on the batch path: Ingestor.batch on 500-event bodies, in one
process, with no Ray, so only the API's work counts. `--delivery stub` acknowledges at once; `--delivery real` runs
the real Delivery (breaker, routing, spool caps, publish metrics) over a publisher stand-in that acknowledges at once
and a spool stand-in that is never written; `--delivery kafka` runs the real Delivery and KafkaPublisher against an
embedded broker (Tansu, a separate process) and waits for its acknowledgements, as the ApiGateway replica does.
`--tracing` traces as a replica does by default (sampling at `trace_sample_ratio`, spans exported to nowhere).

Times are CPU seconds of this process (librdkafka's threads included, the broker's not), the best of `--repeat` runs.
`--single N`: N single-event requests (Ingestor.single) one after the other instead, with their latency.
Run: python -m benchmarks.ingest_cpu [--batches 200] [--repeat 5] [--delivery stub|real|kafka] [--tracing] [--single N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from benchmarks.events import EventFactory
from cluster.adapters.kafka_admin import ensure_topics
from cluster.adapters.kafka_config import producer_config
from cluster.adapters.kafka_producer import Delivered, KafkaPublisher, Record
from cluster.local import EmbeddedBroker
from cluster.observability.event_spans import IngestSpans
from cluster.observability.tracing import Tracing
from cluster.settings import EVENT_TYPES, Settings
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


class _Discard(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _real_delivery(settings: Settings, publisher: Any) -> Any:
    spool: Any = object()  # never written: the broker takes everything; the watch reads nothing
    return Delivery(publisher, CircuitBreaker("kafka"), spool, SpoolWatch(spool), settings.spool_max_rows)


@contextlib.contextmanager
def _delivery(kind: str, settings: Settings) -> Iterator[Any]:
    if kind == "stub":
        yield _AckingDelivery()
    elif kind == "real":
        yield _real_delivery(settings, _AckingPublisher())
    else:
        with tempfile.TemporaryDirectory(prefix="ingest-cpu-") as tmp, EmbeddedBroker(Path(tmp)) as broker:
            ensure_topics(broker.bootstrap, {settings.topic(t): settings.partitions for t in EVENT_TYPES})
            publisher = KafkaPublisher(
                producer_config(
                    broker.bootstrap,
                    settings.producer_linger_ms,
                    message_timeout_ms=settings.producer_message_timeout_ms,
                    message_max_bytes=settings.kafka_message_max_bytes,
                )
            )
            try:
                yield _real_delivery(settings, publisher)
            finally:
                publisher.close()


def _bodies(batches: int, size: int = BATCH) -> list[bytes]:
    factory = EventFactory("bench-ingest-cpu", seed=1)
    at = datetime.now(UTC)
    if size == 1:
        return [orjson.dumps(event) for event in factory.batch(batches, at)]
    return [orjson.dumps(factory.batch(size, at)) for _ in range(batches)]


async def _run(ingestor: Ingestor, bodies: list[bytes], latencies: list[float] | None = None) -> float:
    meta = RequestMeta("application/json", None, None)
    started = time.process_time()
    for body in bodies:
        if latencies is None:
            reply = await ingestor.batch(body, meta)
            if reply.status != 202 or reply.body["accepted"] != BATCH:
                raise AssertionError(f"unexpected reply {reply.status}: {str(reply.body)[:300]}")
        else:
            sent = time.perf_counter()
            reply = await ingestor.single(body, meta)
            latencies.append(time.perf_counter() - sent)
            if reply.status != 202:
                raise AssertionError(f"unexpected reply {reply.status}: {str(reply.body)[:300]}")
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--delivery", choices=("stub", "real", "kafka"), default="stub")
    parser.add_argument("--tracing", action="store_true", help="trace as a replica does (default sampling ratio)")
    parser.add_argument("--single", type=int, default=0, help="this many single-event requests instead of batches")
    args = parser.parse_args()
    settings = Settings(_env_file=None, tracing_enabled=args.tracing)  # type: ignore[call-arg]
    tracing = Tracing.start(settings, "api", exporter=_Discard())
    registry = default_registry(settings.base_currency, settings.risk_amount_threshold)
    bodies = _bodies(args.single, 1) if args.single else _bodies(args.batches)
    latencies: list[float] | None = [] if args.single else None
    with _delivery(args.delivery, settings) as delivery:
        ingestor = Ingestor(
            settings, registry, delivery, InflightGate(settings.max_inflight_events), IngestSpans(tracing)
        )
        best = min(asyncio.run(_run(ingestor, bodies, latencies)) for _ in range(args.repeat))
    tracing.shutdown()
    traced = f"tracing at {settings.trace_sample_ratio:g}" if args.tracing else "tracing off"
    if latencies:
        ordered = sorted(latencies)
        p50, p99 = (ordered[int(q * (len(ordered) - 1))] * 1000 for q in (0.5, 0.99))
        label = f"Ingestor.single, one after another, {args.delivery} delivery, {traced}"
        cpu = best / args.single * 1e6
        print(f"{label}: {cpu:.1f} µs CPU/event (best of {args.repeat}); p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        return
    per_event = best / (args.batches * BATCH) * 1e6
    label = f"Ingestor.batch, {BATCH}-event bodies, {args.delivery} delivery, {traced}"
    print(f"{label}: {per_event:.1f} µs CPU/event (best of {args.repeat})")


if __name__ == "__main__":
    main()
