"""Micro-benchmark of what a partition owner's loop thread pays per event, stage by stage, without Ray.

Per batch, in the owner's order: the consumer's records from its messages (with their headers; each API record
carries the `traceparent` of its publish span, sampled at the default ratio), the merchant-id hint for enrichment,
`ProcessingSpans.begin`, the processor's outcomes with the real `on_outcome` hook (processing-time metric and the
event's span), `assemble`, the commit document's encoding, `ProcessingSpans.committed` and `record_commit`; tracing
is on at the default ratio (0.01) and exports JSON lines to a temporary directory, as a default owner does.
Each topic is read by its own owners, so every batch is one topic's: 40% sensor, 25% user_action, 20% transaction
envelopes, 15% bare events on the ingest topic (3% of those malformed); 1% of envelopes resend an earlier event.

Figures are CPU µs per event of the loop thread (thread_time), the best of `--repeat` runs per stage, and the
process's CPU (the span exporter's thread included).
Run: python -m benchmarks.owner_hot_path [--events 5000] 2>/dev/null   (stderr: the owner's JSON log lines)
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import orjson
from confluent_kafka import Message
from opentelemetry.trace import SpanContext, TraceFlags

from benchmarks.events import EventFactory
from cluster.adapters.commit_doc import encode
from cluster.adapters.kafka_source import source_records
from cluster.observability import metrics as catalogue
from cluster.observability.event_spans import ProcessingSpans
from cluster.observability.logs import setup_logging
from cluster.observability.recording import record_commit, record_processing
from cluster.observability.tracing import Tracing
from cluster.settings import Settings
from pipelines.batch import CommitOutcome, DeadLetter, ProcessedEvent, SourceRecord, assemble
from pipelines.engine import PartitionProcessor
from pipelines.enrichment import merchant_ids
from pipelines.envelope import Envelope
from pipelines.outcome import Outcome
from pipelines.registry import default_registry

INGEST = "events.ingest"
SHARES = {"events.sensor": 0.40, "events.user_action": 0.25, "events.transaction": 0.20, INGEST: 0.15}
STAGES = (
    "consume",
    "merchant_ids",
    "spans.begin",
    "outcomes",
    "assemble",
    "encode",
    "spans.committed",
    "record_commit",
)


def _traceparent(rng: random.Random, ratio: float) -> bytes:
    """The header the API's publish span gives a record: a fresh trace, sampled with probability `ratio`."""
    flags = TraceFlags(TraceFlags.SAMPLED if rng.random() < ratio else TraceFlags.DEFAULT)
    context = SpanContext(rng.getrandbits(128) or 1, rng.getrandbits(64) or 1, is_remote=False, trace_flags=flags)
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(flags):02x}".encode()


def topic_records(topic: str, n: int, ratio: float, seed: int) -> list[SourceRecord]:
    """n records of one partition of `topic`, offsets 0..n-1, as the consumer builds them."""
    event_type = topic.removeprefix("events.")
    factory = EventFactory(f"owner-bench-{event_type}", seed=seed)
    registry = default_registry()
    at = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    rng = random.Random(seed)
    out: list[SourceRecord] = []
    while len(out) < n:
        offset = len(out)
        event = factory.event(at)
        if topic != INGEST and event["type"] != event_type:
            continue
        if event["type"] == "transaction" and rng.random() < 0.5:
            event["merchant_id"] = f"m-{rng.randrange(300)}"
        if topic == INGEST:
            del event["id"]  # producers writing straight to the ingest topic rarely set ids: derived from the offset
            value = b'{"type": "sensor", "reading": ' if rng.random() < 0.03 else orjson.dumps(event)
            out.append(SourceRecord(topic, 0, offset, None, value, 1_764_000_000_000, None))
            continue
        if out and rng.random() < 0.01:
            previous = out[rng.randrange(len(out))]
            out.append(SourceRecord(topic, 0, offset, previous.key, previous.value, None, previous.headers))
            continue
        parsed = registry.parse(event)
        value = Envelope.encode_event(parsed, 1_764_000_000.0, correlation_id="corr")
        headers = (("traceparent", _traceparent(rng, ratio)),)
        out.append(SourceRecord(topic, 0, offset, parsed.entity_key().encode(), value, 1_764_000_000_000, headers))
    return out


class Owner:
    """The owner loop's per-batch work, wired as actors/partition_owner.py wires it."""

    def __init__(self, settings: Settings) -> None:
        self.tracing = Tracing.start(settings, "partition-owner")
        self.spans = ProcessingSpans(self.tracing)
        registry = default_registry()
        self.types = frozenset(registry.types)
        self.metrics = catalogue.METRICS
        self.processor = PartitionProcessor(
            registry, INGEST, rng=random.Random(0), max_record_bytes=settings.max_event_bytes, on_outcome=self._observe
        )
        self.times: dict[str, float] = defaultdict(float)

    def _observe(self, outcome: ProcessedEvent | DeadLetter, seconds: float, status: Outcome) -> None:
        record_processing(self.metrics, outcome, seconds, self.types)
        self.spans.observe(outcome, seconds, status)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.thread_time()
        yield
        self.times[name] += time.thread_time() - started

    def batch(self, messages: list[Message]) -> None:
        consumed_at = time.time()
        with self.stage("consume"):
            records = source_records(messages[0].topic(), 0, messages)
        with self.stage("merchant_ids"):
            merchant_ids(records, INGEST)
        with self.stage("spans.begin"):
            traced = self.spans.begin(records)
        with self.stage("outcomes"):
            outcomes = self.processor.outcomes(records, consumed_at)
        with self.stage("assemble"):
            batch = assemble(
                outcomes,
                topic=records[0].topic,
                partition=0,
                epoch=1,
                owner_id="owner-bench",
                expected_offset=records[0].offset,
                next_offset=records[-1].offset + 1,
                consumed_at=consumed_at,
            )
        started_ns = time.time_ns()
        with self.stage("encode"):
            encoded = encode(batch, traced.trace_contexts)
        result = CommitOutcome(
            committed=True,
            new_events=len(batch.processed),
            dead_letters=encoded.dead_letters,
            duplicates=encoded.in_batch_duplicates,
            duration_s=0.002,
        )
        with self.stage("spans.committed"):
            self.spans.committed(traced, batch, result, started_ns)
        with self.stage("record_commit"):
            record_commit(self.metrics, batch, result, time.time(), ingest_topic=INGEST, known_types=self.types)


def messages_of(records: list[SourceRecord]) -> list[Message]:
    """The consumer's messages of the records (the broker's CreateTime when a record has a timestamp)."""
    return [
        Message(
            topic=r.topic,
            partition=r.partition,
            offset=r.offset,
            key=r.key,
            value=r.value,
            headers=list(r.headers) if r.headers else None,
            timestamp=(1, r.timestamp_ms) if r.timestamp_ms else (0, -1),
        )
        for r in records
    ]


def run(owner: Owner, streams: dict[str, list[Message]], size: int) -> tuple[dict[str, float], float, int]:
    """Every stream in batches of `size`: stage thread-CPU seconds, process CPU seconds, events."""
    owner.times.clear()
    events = 0
    started = time.process_time()
    for records in streams.values():
        for first in range(0, len(records), size):
            chunk = records[first : first + size]
            owner.batch(chunk)
            events += len(chunk)
    owner.tracing.flush()
    return dict(owner.times), time.process_time() - started, events


def measure(events: int, repeat: int, sizes: list[int], ratio: float, out: Callable[[str], None]) -> None:
    with tempfile.TemporaryDirectory(prefix="owner-bench-") as data:
        settings = Settings(_env_file=None, data_dir=Path(data), trace_sample_ratio=ratio)  # type: ignore[call-arg]
        streams = {
            topic: messages_of(topic_records(topic, round(events * share), ratio, i))
            for i, (topic, share) in enumerate(SHARES.items())
        }
        setup_logging(settings, "partition-owner")  # dead letters are logged, as in an owner (stderr and a file)
        owner = Owner(settings)
        run(owner, streams, 50)  # warm up: imports, caches, the exporter's thread
        header = f"{'batch':>5} " + " ".join(f"{s:>15}" for s in STAGES) + f" {'stages':>8} {'process':>8}"
        out(f"events per run: {sum(map(len, streams.values()))}, best of {repeat}, CPU µs/event, trace ratio {ratio}")
        out(header)
        for size in sizes:
            best: dict[str, float] = {}
            best_process = float("inf")
            for _ in range(repeat):
                times, process, n = run(owner, streams, size)
                for stage in STAGES:
                    best[stage] = min(best.get(stage, float("inf")), times.get(stage, 0.0) * 1e6 / n)
                best_process = min(best_process, process * 1e6 / n)
            cells = " ".join(f"{best[s]:>15.1f}" for s in STAGES)
            out(f"{size:>5} {cells} {sum(best.values()):>8.1f} {best_process:>8.1f}")
        owner.tracing.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", default="5,50,500", help="batch sizes, comma-separated")
    parser.add_argument("--trace-ratio", type=float, default=0.01)
    args = parser.parse_args(argv)
    measure(args.events, args.repeat, [int(s) for s in args.sizes.split(",")], args.trace_ratio, print)


if __name__ == "__main__":
    main()
