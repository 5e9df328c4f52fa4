"""Open-loop throughput benchmark: offers a fixed event rate, waits for commits, reports rates, latencies and the CPU
µs per event and memory of each component; `--idle SECONDS` samples the stack without traffic instead.

Read-only towards PostgreSQL and never retries a batch (a retry would hide loss and distort the rate).
Run: python -m benchmarks.throughput --rate 10000 --duration 60 --batch-size 500
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil
import psycopg
from rich.console import Console

from benchmarks import stack
from benchmarks.broker_floor import BrokerFloor
from benchmarks.commit_watch import DrainResult, wait_for_commits
from benchmarks.cost import budget_us, events_in_window
from benchmarks.cpu_sampler import Phase, ProcessSampler, StackScope
from benchmarks.events import EventFactory, EventMix, run_prefix
from benchmarks.report import (
    commit_figures,
    cost_figures,
    floor_figures,
    make_console,
    render,
    render_cost,
    send_figures,
)
from benchmarks.sender import LoadPlan, LoadResult, OpenLoopSender, make_client, schedule_ok
from cluster.settings import Settings

SEND, DRAIN, IDLE = "send", "drain", "idle"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="API base URL")
    p.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL") or stack.embedded_database_url(stack.data_dir()),
        help="PostgreSQL URL (default: $DATABASE_URL, else the embedded one of $EVENTPIPE_DATA_DIR or .data); "
        "without it commit figures are skipped",
    )
    p.add_argument(
        "--api-key",
        help="API key with the ingest scope (default: $EVENTPIPE_API_KEY, else a 'benchmark' key the driver makes in "
        "the stack's database and keeps in the data dir, else the development key)",
    )
    p.add_argument("--rate", type=float, default=10_000, help="target events per second")
    p.add_argument("--duration", type=float, default=60, help="seconds of sending")
    p.add_argument("--batch-size", type=int, default=500, help="events per POST /events/batch (max 1000)")
    p.add_argument(
        "--single", action="store_true", help="one event per POST /events instead of batches (sets --batch-size 1)"
    )
    p.add_argument("--concurrency", type=int, default=16, help="keep-alive connections = max requests in flight")
    p.add_argument("--drain-timeout", type=float, default=120, help="max seconds to wait for commits after sending")
    p.add_argument("--poll-interval", type=float, default=0.5, help="seconds between PostgreSQL polls while draining")
    p.add_argument("--request-timeout", type=float, default=30, help="per-request HTTP timeout in seconds")
    p.add_argument(
        "--late-grace",
        type=float,
        default=10,
        help="seconds after --duration during which late batches may still start; the rest count as unsent",
    )
    p.add_argument(
        "--lag-tolerance-ms",
        type=float,
        default=100,
        help="a batch starting later than this after its slot counts as late (driver fell behind)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for event contents (ids always get a fresh run prefix)")
    p.add_argument(
        "--run-id", default=None, help="id prefix for this run's events (default: bench-<utc time>-<random>)"
    )
    p.add_argument("--mix", default="0.5,0.3,0.2", help="sensor,user_action,transaction shares")
    p.add_argument("--no-cpu", action="store_true", help="do not sample the stack's CPU and memory")
    p.add_argument(
        "--stack-pid",
        type=int,
        default=None,
        help="pid of `eventpipe run` whose process tree is sampled (default: the only one running)",
    )
    p.add_argument(
        "--idle",
        type=float,
        default=None,
        metavar="SECONDS",
        help="send nothing: sample the idle stack for SECONDS and print CPU and memory by component",
    )
    p.add_argument(
        "--kafka-bootstrap",
        default=None,
        help="broker for the floor probe (default: $EVENTPIPE_KAFKA_BOOTSTRAP, else the stack's embedded broker)",
    )
    p.add_argument("--no-floor", action="store_true", help="do not probe the broker's own produce -> readable latency")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write all figures as JSON")
    args = p.parse_args(argv)
    if args.api_key is None:
        args.api_key = stack.api_key(stack.data_dir(), args.database_url)
    return args


def _mix(text: str) -> EventMix:
    sensor, user_action, transaction = (float(x) for x in text.split(","))
    return EventMix(sensor=sensor, user_action=user_action, transaction=transaction)


def _sampler(args: argparse.Namespace, console: Console) -> ProcessSampler | None:
    """A sampler over the stack's process tree and its PostgreSQL server, or None (said on the console)."""
    if args.no_cpu:
        return None
    try:
        root = stack.find_stack_root(args.stack_pid)
    except stack.StackNotFound as exc:
        console.print(f"[yellow]CPU and memory not sampled: {exc}[/yellow]")
        return None
    postgres = stack.find_postgres(args.database_url) if args.database_url else None
    if postgres is None:
        why = "no listener on this host for the database URL" if args.database_url else "no database URL"
        console.print(f"[yellow]PostgreSQL not sampled ({why}): its CPU and memory are not in the table[/yellow]")
    sessions = stack.ray_sessions(root)
    if not sessions and not stack.has_raylet_below(root):
        console.print(
            "[red]Ray's processes not found (no Ray session in the run's record, no raylet below it): the API, owners,"
            " writers, metrics hub and Ray core are missing from the table[/red]"
        )
    return ProcessSampler(StackScope([root, *([postgres] if postgres else [])], sessions=sessions))


def _floor_probe(args: argparse.Namespace, console: Console) -> BrokerFloor | None:
    """The broker floor probe of the run, or None (said on the console) without a broker to probe."""
    if args.no_floor:
        return None
    bootstrap = args.kafka_bootstrap or os.environ.get("EVENTPIPE_KAFKA_BOOTSTRAP") or _embedded_bootstrap(args)
    if not bootstrap:
        console.print("[yellow]broker floor not probed: no --kafka-bootstrap and no embedded broker found[/yellow]")
        return None
    return BrokerFloor(bootstrap, Settings().consumer_fetch_wait_ms)


def _embedded_bootstrap(args: argparse.Namespace) -> str | None:
    try:
        return stack.embedded_broker_bootstrap(stack.find_stack_root(args.stack_pid))
    except stack.StackNotFound:
        return None


def _cost(phases: list[Phase], drain: DrainResult | None, load: LoadResult, cores: int, rate: float) -> dict[str, Any]:
    """Send-window CPU ÷ the events committed inside that window (accepted ones when commits are not read)."""
    send = next((p for p in phases if p.name == SEND), None)
    if send is None:
        return cost_figures(None, None, "not sampled", 0)
    if drain is not None:
        committed = (row.committed_at for row in drain.rows.values())
        events, basis = events_in_window(committed, send.wall_start, send.wall_end), "processed in it"
    else:
        events, basis = sum(r.accepted for r in load.records), "accepted in it (commits not read)"
    peak = max(p.peak_stack_rss_bytes for p in phases)
    return cost_figures(send, events, basis, peak) | {
        "events_per_s": round(events / send.seconds, 1) if send.seconds > 0 else None,
        "cores": cores,
        "budget_us_per_event": budget_us(cores, rate),
    }


async def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    plan = LoadPlan(
        rate=args.rate,
        duration=args.duration,
        batch_size=1 if args.single else args.batch_size,
        concurrency=args.concurrency,
        request_timeout=args.request_timeout,
        late_grace=args.late_grace,
        lag_tolerance=args.lag_tolerance_ms / 1000,
        single=args.single,
    )
    if problem := schedule_ok(plan):
        raise SystemExit(problem)
    started_at = datetime.now(UTC)
    run_id = args.run_id or run_prefix(started_at, secrets.token_hex(3))
    factory = EventFactory(run_id, seed=args.seed, mix=_mix(args.mix))
    sampler = _sampler(args, console)
    console.print(
        f"run {run_id}: {plan.batches} batches of {plan.batch_size} every {plan.interval * 1000:.1f} ms "
        f"({plan.rate:,.0f} events/s for {plan.duration:g} s) to {args.url}, "
        f"{plan.concurrency} connections"
    )
    phases: list[Phase] = []
    drain: DrainResult | None = None
    drain_error = ""
    sampling = False
    floor = _floor_probe(args, console)
    try:
        async with make_client(args.url, plan, args.api_key) as client:
            sender = OpenLoopSender(client, factory, plan)
            sender.prepare()  # before the send window: its CPU is not the driver's in the window
            with floor or contextlib.nullcontext():
                if sampler:
                    sampler.start(SEND)
                    sampling = True
                load = await sender.run()
        if sampler:
            sampler.begin(DRAIN)
        if args.database_url:
            console.print(f"sent; waiting up to {args.drain_timeout:g} s for {len(load.accepted_ids):,} commits")
            try:
                drain = await wait_for_commits(
                    args.database_url, load.accepted_ids, args.drain_timeout, poll_interval=args.poll_interval
                )
            except psycopg.Error as exc:
                # Sending already happened: report its figures and say plainly why commits are missing.
                drain_error = f"PostgreSQL error: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
                console.print(f"[red]{drain_error}[/red]")
    finally:
        if sampler and sampling:
            phases = sampler.stop()
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "database_url"}
    return {
        "run_id": run_id,
        "started_at": started_at.isoformat(),
        "config": config,
        "plan": asdict(plan) | {"interval_s": plan.interval, "batches": plan.batches},
        "send": send_figures(load),
        "commit": commit_figures(drain, expected=len(load.accepted_ids), reason=drain_error),
        "broker_floor": floor_figures(floor.latencies_ms() if floor else None, floor.sent if floor else 0),
        "cost": _cost(phases, drain, load, psutil.cpu_count() or 1, plan.rate),
    }


def run_idle(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """No traffic: the stack's own CPU and memory over `args.idle` seconds."""
    sampler = _sampler(args, console)
    if sampler is None:
        raise SystemExit("--idle needs the stack's processes (see above)")
    console.print(f"sampling the idle stack for {args.idle:g} s (no traffic)")
    sampler.start(IDLE)
    time.sleep(args.idle)  # the measurement window itself: nothing to poll for
    (idle,) = sampler.stop()
    return {"idle": cost_figures(idle, None, "", idle.peak_stack_rss_bytes)}


def _write_json(path: Path | None, figures: dict[str, Any], console: Console) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    console.print(f"figures written to {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = make_console()
    if args.idle is not None:
        figures = run_idle(args, console)
        render_cost(figures["idle"], console)
        _write_json(args.json, figures, console)
        return 0
    figures = asyncio.run(run(args, console))
    render(figures, console)
    _write_json(args.json, figures, console)
    commit = figures["commit"]
    # Non-zero when the run could not show every accepted event committed in time.
    return 1 if commit.get("timed_out") or (args.database_url and not commit["measured"]) else 0


if __name__ == "__main__":
    sys.exit(main())
