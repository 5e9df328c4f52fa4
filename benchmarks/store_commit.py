"""Micro-benchmark of the PostgreSQL side of a commit: CheckpointStore.commit_group on real encoded batches.

Mixed records (API envelopes of the three types, bare events on the ingest topic, a few malformed ones, a few re-sent
ids) go through the owner's PartitionProcessor and `encode` first, untimed; then the batches are committed, `--group`
partitions per transaction as the writer's group commit does. It prints per event: client CPU (this process), the
committing backend's CPU and all PostgreSQL processes' CPU (psutil), wall time, rows written and WAL bytes.

Run: python -m benchmarks.store_commit [--batches 10] [--rounds 5] [--group 1] [--database-url URL]
Without --database-url it starts an embedded PostgreSQL in a temporary directory (a fresh database each run).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil
import psycopg

from benchmarks.events import EventFactory
from cluster.adapters.checkpoint_store import CheckpointStore
from cluster.adapters.commit_doc import EncodedBatch, encode
from cluster.adapters.leases import LeaseStore
from cluster.adapters.migrations import migrate
from cluster.local import EmbeddedPostgres
from pipelines.batch import SourceRecord
from pipelines.engine import PartitionProcessor
from pipelines.envelope import Envelope
from pipelines.registry import default_registry

INGEST = "events.ingest"
TOPIC = "events.bench"
APP = "store-commit-bench"
WARM_UP = 6  # transactions
# Tables a commit writes; their row counts before and after give the rows written per event. `audit_log` is a table
# before migration 007 and a view after it (then `audit_trail` holds the rows): only tables are counted.
TABLES = (
    "dedup_keys",
    "events",
    "results",
    "audit_log",
    "audit_trail",
    "dead_letters",
    "user_totals",
    "device_stats",
    "user_action_counts",
    "offset_gaps",
)


def records(topic: str, prefix: str, partition: int, n: int, seed: int) -> list[SourceRecord]:
    """n records of one partition as the API writes them: 96% event envelopes of the three types, 2% malformed
    (dead-lettered without an id), 2% re-sends of an earlier event (duplicates)."""
    factory = EventFactory(f"{prefix}-p{partition}", seed=seed)
    registry = default_registry()
    at = datetime.now(UTC)
    rng = random.Random(seed)
    sent: list[bytes] = []
    out: list[SourceRecord] = []
    for offset in range(n):
        roll = rng.random()
        if roll < 0.02:
            value = b'{"type": "sensor", "reading": '
        elif roll < 0.04 and sent:
            value = rng.choice(sent)
        else:
            event = factory.event(at)
            value = Envelope.encode_event(registry.parse(event), time.time(), correlation_id=f"corr-{offset}")
            sent.append(value)
        out.append(SourceRecord(topic, partition, offset, None, value, None))
    return out


@dataclass(frozen=True)
class Sample:
    client_s: float
    backend_s: float
    postgres_s: float
    wall_s: float
    rows: int
    wal_bytes: int


@contextlib.contextmanager
def database(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp, EmbeddedPostgres(Path(tmp)) as pg:
        yield pg.url


def _cpu(proc: psutil.Process) -> float:
    """CPU seconds of a process: from /proc/<pid>/schedstat (nanoseconds) where Linux has it, else psutil's ticks."""
    try:
        return int(Path(f"/proc/{proc.pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        times = proc.cpu_times()
        return times.user + times.system


def _postgres_cpu(postmaster: psutil.Process) -> float:
    total = _cpu(postmaster)
    for child in postmaster.children():
        with contextlib.suppress(psutil.NoSuchProcess):
            total += _cpu(child)
    return total


class Bench:
    def __init__(self, url: str, partitions: int, batch: int, batches: int) -> None:
        self.url = url
        self.partitions = partitions
        self.batch = batch
        self.batches = batches
        self.admin = psycopg.connect(url, autocommit=True)
        # One pooled connection: every commit runs on the same backend, found by its application_name.
        sep = "&" if "?" in url else "?"
        self.store = CheckpointStore(f"{url}{sep}application_name={APP}", pool_size=1)

    def close(self) -> None:
        self.store.close()
        self.admin.close()

    def encoded(self) -> list[list[EncodedBatch]]:
        """Every partition's batches, encoded by the owner's code; groups[i] holds the i-th batch of each partition."""
        lease = LeaseStore(self.url)
        try:
            leader = lease.acquire(f"bench-{uuid.uuid4().hex[:8]}", APP, 3600.0)
        finally:
            lease.close()
        if leader is None:
            raise RuntimeError("could not take a bench lease")
        prefix = f"sb-{uuid.uuid4().hex[:8]}"
        topic = f"{TOPIC}-{prefix}"
        processor = PartitionProcessor(default_registry(), INGEST, rng=random.Random(0))
        per_partition: list[list[EncodedBatch]] = []
        for p in range(self.partitions):
            claim = self.store.claim(topic, p, f"owner-{p}", "bench-log", leader)
            recs = records(topic, prefix, p, self.batch * self.batches, seed=p)
            out = []
            for first in range(0, len(recs), self.batch):
                chunk = recs[first : first + self.batch]
                batch = processor.process(
                    chunk, epoch=claim.epoch, owner_id=f"owner-{p}", expected_offset=first, consumed_at=time.time()
                )
                out.append(encode(batch))
            per_partition.append(out)
        return [list(group) for group in zip(*per_partition, strict=True)]

    def _rows(self) -> int:
        tables = [
            t
            for (t,) in self.admin.execute(
                "SELECT relname::text FROM pg_class WHERE relkind = 'r' AND oid = ANY(ARRAY(SELECT to_regclass(t)"
                " FROM unnest(%s::text[]) AS t))",
                (list(TABLES),),
            )
        ]
        return sum(self.admin.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables)  # type: ignore[index]

    def _wal(self) -> int:
        return int(self.admin.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])  # type: ignore[index]

    def run(self, groups: list[list[EncodedBatch]], rounds: int) -> list[Sample]:
        """Warm up, then commit the remaining groups in `rounds` equal rounds, each measured on its own."""
        # Warm up the pooled connection, its caches and its prepared statement (PostgreSQL plans it afresh for the
        # first five executions, then keeps a generic plan).
        for group in groups[:WARM_UP]:
            self.store.commit_group(group)
        backend_pid = self.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (APP,)
        ).fetchone()[0]  # type: ignore[index]
        backend = psutil.Process(backend_pid)
        postmaster = backend.parent()
        if postmaster is None:
            raise RuntimeError("the backend has no parent process")
        measured = groups[WARM_UP:]
        per_round = len(measured) // rounds
        return [self._round(measured[r * per_round : (r + 1) * per_round], backend, postmaster) for r in range(rounds)]

    def _round(self, groups: list[list[EncodedBatch]], backend: psutil.Process, postmaster: psutil.Process) -> Sample:
        self.admin.execute("CHECKPOINT")  # each round pays for its own full-page images, none from the last one
        rows, wal = self._rows(), self._wal()
        client, back, pg, wall = time.process_time(), _cpu(backend), _postgres_cpu(postmaster), time.perf_counter()
        for group in groups:
            outcomes = self.store.commit_group(group)
            if not all(o.committed and not o.already_committed for o in outcomes):
                raise RuntimeError(f"a commit did not land: {outcomes}")
        wall = time.perf_counter() - wall
        client = time.process_time() - client
        back, pg = _cpu(backend) - back, _postgres_cpu(postmaster) - pg
        return Sample(client, back, pg, wall, self._rows() - rows, self._wal() - wal)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=10, help="measured batches per partition and round")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds; the best and the median are printed")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--group", type=int, default=1, help="partitions, one batch each per transaction")
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args(argv)
    with database(args.database_url) as url:
        migrate(url)
        bench = Bench(url, args.group, args.batch_size, WARM_UP + args.batches * args.rounds)
        try:
            samples = bench.run(bench.encoded(), args.rounds)
        finally:
            bench.close()
    events = args.batch_size * args.group * args.batches
    print(
        f"store_commit: {args.rounds} rounds of {args.batches} transactions of {args.group} x {args.batch_size}"
        f" records (per event: best round / median round)"
    )
    per = 1e6 / events
    lines = (
        ("client CPU", "client_s"),
        ("backend CPU", "backend_s"),
        ("postgres CPU", "postgres_s"),  # every server process: the backend, WAL writer, checkpointer, ...
        ("wall", "wall_s"),
    )
    for label, name in lines:
        values = sorted(getattr(s, name) * per for s in samples)
        print(f"  {label:13s} {values[0]:7.1f} / {statistics.median(values):7.1f} us/event")
    print(f"  rows written  {statistics.median(s.rows for s in samples) / events:7.2f} per event")
    print(f"  WAL           {statistics.median(s.wal_bytes for s in samples) / events:7.0f} bytes/event")


if __name__ == "__main__":
    main()
