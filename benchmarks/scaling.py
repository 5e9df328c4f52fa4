"""Scaling benchmark: for each partition count per topic, starts a fresh stack, offers a rate above what it can
process for a while, stops the stack, and prints how processed events/s, latency, CPU per event and memory change.

Starts at most one stack at a time, each under the machine-wide stack lock, and stops each before the next starts.
Run: python -m benchmarks.scaling --partitions 1,2,4,8 --rate 20000 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from benchmarks import throughput
from benchmarks.components import Component
from benchmarks.cost import GIB, TOTAL
from benchmarks.local_stack import running_stack, stack_lock
from benchmarks.report import make_console, render
from benchmarks.stack import api_key as stack_api_key


@dataclass(frozen=True)
class ScalingRow:
    partitions: int
    owners: int | None  # PartitionOwner processes seen while sending
    accepted_eps: float | None
    processed_eps: float | None  # events committed during the send window ÷ its length
    consumed_to_commit_p99_ms: float | None
    us_per_event: float | None  # all processes, driver included
    peak_rss_gib: float | None  # the stack, driver excluded
    committed: int | None
    expected: int | None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.splitlines()[0])
    p.add_argument("--partitions", default="1,2,4,8", help="partition counts per topic, comma-separated")
    p.add_argument("--rate", type=float, default=20_000, help="offered events/s (above the ceiling, on purpose)")
    p.add_argument("--duration", type=float, default=30, help="seconds of sending per partition count")
    p.add_argument("--batch-size", type=int, default=500, help="events per POST /events/batch")
    p.add_argument("--concurrency", type=int, default=32, help="keep-alive connections = max requests in flight")
    p.add_argument("--drain-timeout", type=float, default=60, help="max seconds to wait for commits after sending")
    p.add_argument("--start-timeout", type=float, default=300, help="max seconds for a stack to become ready")
    p.add_argument("--stop-timeout", type=float, default=180, help="max seconds for a stack to stop after SIGINT")
    p.add_argument("--keep-data", action="store_true", help="keep each run's data directory (logs, PostgreSQL)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write every run's figures as JSON")
    return p.parse_args(argv)


def _component_row(cost: dict[str, Any], label: str) -> dict[str, Any] | None:
    return next((row for row in cost.get("rows", []) if row["label"] == label), None)


def scaling_row(partitions: int, figures: dict[str, Any]) -> ScalingRow:
    """The table row of one run, from the throughput benchmark's figures."""
    send, commit, cost = figures["send"], figures["commit"], figures["cost"]
    owners = _component_row(cost, str(Component.OWNERS))
    total = _component_row(cost, TOTAL)
    measured = commit["measured"]
    return ScalingRow(
        partitions=partitions,
        owners=owners["processes"] if owners else None,
        accepted_eps=send["sustained_ingest_eps"],
        processed_eps=cost.get("events_per_s"),
        consumed_to_commit_p99_ms=commit["consumed_to_commit_ms"]["p99"] if measured else None,
        us_per_event=total["us_per_event"] if total else None,
        peak_rss_gib=cost["peak_stack_rss_bytes"] / GIB if cost["measured"] else None,
        committed=commit["committed"] if measured else None,
        expected=commit["expected"] if measured else None,
    )


def _cell(value: float | int | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def scaling_table(rows: list[ScalingRow], rate: float, duration: float) -> Table:
    table = Table(title=f"scaling: partitions per topic, {rate:,.0f} events/s offered for {duration:g} s each")
    columns = (
        "partitions",
        "owners",
        "accepted/s",
        "processed/s",
        "consumed->committed p99 ms",
        "CPU µs/event",
        "peak RSS GiB",
        "committed / expected",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for r in rows:
        done = f"{_cell(r.committed)} / {_cell(r.expected)}"
        table.add_row(
            str(r.partitions),
            _cell(r.owners),
            _cell(r.accepted_eps),
            _cell(r.processed_eps),
            _cell(r.consumed_to_commit_p99_ms),
            _cell(r.us_per_event),
            _cell(r.peak_rss_gib, 2),
            done,
        )
    return table


def _throughput_args(args: argparse.Namespace, pid: int, database_url: str, data_dir: Path) -> argparse.Namespace:
    return throughput.parse_args(
        [
            f"--rate={args.rate}",
            f"--duration={args.duration}",
            f"--batch-size={args.batch_size}",
            f"--concurrency={args.concurrency}",
            f"--drain-timeout={args.drain_timeout}",
            # Offered load stops at --duration: above the ceiling every batch is late, so a grace would only stretch it.
            "--late-grace=0",
            f"--stack-pid={pid}",
            f"--database-url={database_url}",
            f"--api-key={stack_api_key(data_dir) or ''}",
        ]
    )


def measure(partitions: int, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """One fresh stack with `partitions` per topic: start, send, stop; the throughput benchmark's figures."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"eventpipe-scaling-p{partitions}-"))
    try:
        with stack_lock(console.print):
            console.print(f"[bold]{partitions} partition(s) per topic[/]: starting a stack in {data_dir}")
            with running_stack(partitions, data_dir, args.start_timeout, args.stop_timeout, console.print) as stack:
                figures = asyncio.run(
                    throughput.run(_throughput_args(args, stack.pid, stack.database_url, data_dir), console)
                )
                console.print("stopping the stack (SIGINT to its process group)")
        return figures
    finally:
        if args.keep_data:
            console.print(f"data kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = make_console()
    counts = [int(n) for n in args.partitions.split(",")]
    rows: list[ScalingRow] = []
    runs: dict[int, dict[str, Any]] = {}
    for n in counts:
        runs[n] = measure(n, args, console)
        rows.append(scaling_row(n, runs[n]))
        render(runs[n], console)
        console.print(scaling_table(rows, args.rate, args.duration))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        document = {"rows": [asdict(r) for r in rows], "runs": runs}
        args.json.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
        console.print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
