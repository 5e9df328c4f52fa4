"""Micro-benchmark of the partition owner's per-event CPU: PartitionProcessor plus the commit-document encoding.

No Ray, broker or PostgreSQL: mixed records (API envelopes of the three types, bare events on the ingest topic, a few
malformed ones) in 500-record batches through `PartitionProcessor.process` and `encode`. Times are CPU seconds of this
process, the best of `--repeat` runs. Run: python -m benchmarks.owner_hot_path [--records 5000]
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, datetime

import orjson

from benchmarks.events import EventFactory
from cluster.adapters.commit_doc import encode
from pipelines.batch import SourceRecord
from pipelines.engine import PartitionProcessor
from pipelines.envelope import Envelope
from pipelines.registry import default_registry

BATCH = 500
INGEST = "events.ingest"


def mixed_records(n: int) -> list[SourceRecord]:
    """n records of one partition: 80% API envelopes, 18% bare events on the ingest topic, 2% malformed."""
    factory = EventFactory("owner-bench", seed=1)
    registry = default_registry()
    at = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    rng = random.Random(2)
    out: list[SourceRecord] = []
    for offset in range(n):
        event = factory.event(at)
        roll = rng.random()
        if roll < 0.02:
            out.append(SourceRecord(INGEST, 0, offset, None, b'{"type": "sensor", "reading": ', None))
        elif roll < 0.20:
            out.append(SourceRecord(INGEST, 0, offset, None, orjson.dumps(event), 1_764_000_000_000))
        else:
            value = Envelope.encode_event(registry.parse(event), 1_764_000_000.0, correlation_id="corr")
            out.append(SourceRecord(f"events.{event['type']}", 0, offset, None, value, None))
    return out


def run_once(processor: PartitionProcessor, records: list[SourceRecord]) -> float:
    started = time.process_time()
    for first in range(0, len(records), BATCH):
        chunk = records[first : first + BATCH]
        batch = processor.process(chunk, epoch=1, owner_id="o", expected_offset=chunk[0].offset, consumed_at=1.0)
        encode(batch)
    return time.process_time() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    records = mixed_records(args.records)
    processor = PartitionProcessor(default_registry(), INGEST, rng=random.Random(0))
    run_once(processor, records[:BATCH])  # warm up
    best = min(run_once(processor, records) for _ in range(args.repeat))
    print(f"records: {args.records}, best of {args.repeat}: {best * 1e6 / args.records:.1f} us/event (process+encode)")


if __name__ == "__main__":
    main()
