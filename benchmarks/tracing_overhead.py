"""Micro-benchmark of what tracing costs per event, in one process, without Ray, the broker or PostgreSQL.

Four configurations: tracing off, every trace sampled (trace_sample_ratio 1), the default ratio (Settings), and
every trace sampled out (ratio 0: non-recording spans, the traceparent header still set). API side: validate and
envelope one event, plus the event-ingestion and event-publish spans and the header. Owner side: PartitionProcessor
on 500-record batches, plus the event-processing spans, the state-store spans (batch span with links, one child per
event) and the trace contexts in the commit document. Spans go through the batching processor to the real JSON-lines
exporter; the time to flush them is included. Times are CPU seconds of this process (its exporter thread included),
the best of `--repeat` runs, so other load on the machine disturbs them less than wall time.
Run: python -m benchmarks.tracing_overhead [--events 20000]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from cluster.adapters.commit_doc import encode
from cluster.adapters.kafka_producer import Delivered
from cluster.observability.event_spans import IngestSpans, ProcessingSpans
from cluster.observability.tracing import Tracing
from cluster.settings import Settings
from pipelines.batch import CommitOutcome, SourceRecord
from pipelines.engine import PartitionProcessor
from pipelines.envelope import Envelope
from pipelines.registry import default_registry

BATCH = 500


def _event(n: int) -> dict[str, Any]:
    return {
        "id": f"bench-{n}",
        "type": "transaction",
        "user_id": f"user-{n % 97}",
        "amount": "12.50",
        "currency": "EUR",
        "timestamp": "2026-01-01T00:00:00Z",
    }


def api_side(events: int, tracing: Tracing) -> tuple[float, list[SourceRecord]]:
    """Seconds for `events` events through validation, envelope and (when enabled) spans; the records produced."""
    registry = default_registry()
    spans = IngestSpans(tracing)
    records: list[SourceRecord] = []
    started = time.process_time()
    for n in range(events):
        traced = spans.begin("corr")
        event = registry.parse(_event(n))
        spans.identified(traced, str(event.id), "transaction", ("user_id", "user"))
        value = Envelope.encode_event(event, time.time(), correlation_id="corr")
        topic, key, value, headers = spans.publishing(traced, ("events.transaction", b"user", value, None))
        spans.published(traced, Delivered(topic, 0, n, time.time_ns()))
        records.append(SourceRecord(topic, 0, n, key, value, None, tuple(headers or ()) or None))
    tracing.flush()
    return time.process_time() - started, records


def owner_side(records: list[SourceRecord], tracing: Tracing) -> float:
    spans = ProcessingSpans(tracing)
    processor = PartitionProcessor(
        default_registry(), "events.ingest", rng=random.Random(0), on_outcome=spans.observe if tracing.enabled else None
    )
    started = time.process_time()
    for first in range(0, len(records), BATCH):
        chunk = records[first : first + BATCH]
        traced = spans.begin(chunk)
        batch = processor.process(chunk, epoch=1, owner_id="o", expected_offset=first, consumed_at=time.time())
        commit_started = time.time_ns()
        encode(batch, traced.trace_contexts)
        spans.committed(traced, batch, CommitOutcome(committed=True, new_events=len(batch.processed)), commit_started)
    tracing.flush()
    return time.process_time() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    runs: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(_env_file=None, data_dir=Path(tmp))  # type: ignore[call-arg]
        every = settings.model_copy(update={"trace_sample_ratio": 1.0})
        unsampled = settings.model_copy(update={"trace_sample_ratio": 0.0})
        configs = {
            "off": (Tracing.disabled(), Tracing.disabled()),
            "sampled": (Tracing.start(every, "api"), Tracing.start(every, "partition-owner")),
            f"default {settings.trace_sample_ratio:g}": (
                Tracing.start(settings, "api"),
                Tracing.start(settings, "partition-owner"),
            ),
            "unsampled": (Tracing.start(unsampled, "api"), Tracing.start(unsampled, "partition-owner")),
        }
        api_side(2000, configs["off"][0])  # warm up imports and pydantic
        for _ in range(args.repeat):
            for name, (api, owner) in configs.items():
                seconds, records = api_side(args.events, api)
                runs.setdefault(("api", name), []).append(seconds)
                runs.setdefault(("owner", name), []).append(owner_side(records, owner))
        size = sum(p.stat().st_size for p in (Path(tmp) / "traces").iterdir()) / args.repeat
    per = 1e6 / args.events
    print(f"events: {args.events}, best of {args.repeat}; span files: {size / args.events:.0f} bytes per event")
    for side in ("api", "owner"):
        off = min(runs[(side, "off")])
        cells = [f"{side:6s} off {off * per:6.1f} us/event"]
        for name in list(configs)[1:]:
            on = min(runs[(side, name)])
            cells.append(f"{name} {on * per:6.1f} us/event (+{(on - off) * per:5.1f})")
        print("   ".join(cells))


if __name__ == "__main__":
    main()
