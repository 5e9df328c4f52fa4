"""Turns a run's raw records into figures (a JSON-able dict) and prints them as rich tables.

Computes from measurements only; never talks to the server or the database.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.commit_watch import CommittedRow, DrainResult
from benchmarks.cost import GIB, STACK, TOTAL, cost_rows
from benchmarks.cpu_sampler import Phase
from benchmarks.sender import LoadResult
from benchmarks.stats import summarize_ms

PIPE_WIDTH = 140
BROKER_FLOOR_NOTE = "includes the broker's own produce -> readable time: the floor probe's row measures it in this run"


def make_console() -> Console:
    """Rich console; when output goes to a file or pipe (`make bench | tee`), wide enough not to wrap the tables."""
    return Console() if sys.stdout.isatty() else Console(width=PIPE_WIDTH)


def _rate(count: int, window: float) -> float | None:
    return round(count / window, 1) if window > 0 else None


def send_figures(load: LoadResult) -> dict[str, Any]:
    plan, records = load.plan, load.records
    statuses = Counter(str(r.status) if r.status is not None else (r.error or "unknown") for r in records)
    errors = {k: v for k, v in statuses.items() if not (k.isdigit() and 200 <= int(k) < 300)}
    # N batches fill N schedule slots: the window runs to the end of the last slot or the last response.
    window = (
        max(max(r.finished for r in records), max(r.started for r in records) + plan.interval)
        - min(r.started for r in records)
        if records
        else 0.0
    )
    lags = [max(0.0, r.started - r.scheduled) for r in records]
    late = sum(1 for lag in lags if lag > plan.lag_tolerance)
    accepted = sum(r.accepted for r in records)
    sent = sum(r.sent for r in records)
    last_start = max((r.started for r in records), default=0.0)
    return {
        "target_rate_eps": plan.rate,
        "target_events": plan.batches * plan.batch_size,
        "batches_planned": plan.batches,
        "batches_sent": len(records),
        "unsent_batches": load.unsent_batches,
        "events_sent": sent,
        "accepted": accepted,
        "accepted_ids_known": len(load.accepted_ids),
        "rejected": sum(r.rejected for r in records),
        "send_window_s": round(window, 3),
        # Offered rate: what the driver actually put on the wire per second of its own schedule.
        "offered_rate_eps": _rate(sent, last_start + plan.interval),
        "sustained_ingest_eps": _rate(accepted, window),
        "fell_behind": late > 0 or load.unsent_batches > 0,
        "late_batches": late,
        "lag_tolerance_ms": plan.lag_tolerance * 1000,
        "schedule_lag_ms": summarize_ms(lags),
        "http_status": dict(sorted(statuses.items())),
        "errors": dict(sorted(errors.items())),
        "request_latency_ms": summarize_ms([r.finished - r.started for r in records]),
        # From the scheduled slot: counts time a late batch waited for a connection (no coordinated omission).
        "request_latency_from_schedule_ms": summarize_ms([r.finished - r.scheduled for r in records]),
    }


# Issue 9's "sustained": processed keeps pace with accepted, the backlog when sending ends is under 2 s of traffic.
SUSTAINED_BACKLOG_S = 2.0


def backlog_at_end(rows: list[CommittedRow], missing: int = 0) -> dict[str, Any]:
    """What was still uncommitted when the last event was received: the committed rows committed after that, plus
    the `missing` accepted events never committed; in events and in seconds of the run's own traffic (its events
    over its receive window). `sustained` when under SUSTAINED_BACKLOG_S; `catch_up_s` is None when it never did."""
    if not rows:
        return {"events": missing, "seconds_of_traffic": None, "catch_up_s": None, "sustained": None}
    first = min(r.received_at for r in rows)
    last = max(r.received_at for r in rows)
    behind = missing + sum(1 for r in rows if r.committed_at > last)
    rate = (len(rows) + missing) / (last - first) if last > first else None
    seconds = behind / rate if rate else 0.0
    caught_up = round(max(0.0, max(r.committed_at for r in rows) - last), 3) if not missing else None
    return {
        "events": behind,
        "seconds_of_traffic": round(seconds, 3),
        "catch_up_s": caught_up,
        "sustained": seconds < SUSTAINED_BACKLOG_S and not missing,
    }


def p99_above_floor(commit: dict[str, Any], floor: dict[str, Any]) -> float | None:
    """Issue 9's latency target: ingest -> committed p99 minus the broker's own produce -> readable p99."""
    if not (commit.get("measured") and floor.get("measured")):
        return None
    ours, broker = commit["ingest_to_commit_ms"]["p99"], floor["latency_ms"]["p99"]
    return None if ours is None or broker is None else round(ours - broker, 3)


def floor_figures(latencies_ms: list[float] | None, sent: int) -> dict[str, Any]:
    """The broker floor probe's produce -> readable latencies, in ms (None: not probed)."""
    if latencies_ms is None:
        return {"measured": False}
    return {"measured": True, "sent": sent, "latency_ms": summarize_ms([ms / 1000 for ms in latencies_ms])}


def commit_figures(drain: DrainResult | None, expected: int, reason: str = "") -> dict[str, Any]:
    if drain is None:
        return {"measured": False, "reason": reason or "no --database-url / DATABASE_URL"}
    rows = list(drain.rows.values())
    statuses = Counter(r.status for r in rows)
    window = (max(r.committed_at for r in rows) - min(r.received_at for r in rows)) if rows else 0.0
    consumed = [r for r in rows if r.consumed_at is not None]
    return {
        "measured": True,
        "expected": expected,
        "committed": len(rows),
        "by_status": dict(sorted(statuses.items())),
        "missing": drain.missing,
        "timed_out": drain.timed_out,
        "drain_wait_s": round(drain.waited, 3),
        "polls": drain.polls,
        "commit_window_s": round(window, 3) if rows else None,
        "processed_rate_eps": _rate(len(rows), window),
        "backlog_at_end": backlog_at_end(rows, drain.missing),
        "ingest_to_commit_ms": summarize_ms([r.committed_at - r.received_at for r in rows]),
        "consumed_to_commit_ms": summarize_ms([r.committed_at - r.consumed_at for r in consumed if r.consumed_at]),
        "received_to_consumed_ms": summarize_ms([r.consumed_at - r.received_at for r in consumed if r.consumed_at]),
        "received_to_consumed_note": BROKER_FLOOR_NOTE,
    }


def cost_figures(phase: Phase | None, events: int | None, basis: str, peak_stack_rss: int) -> dict[str, Any]:
    """The cost table of one phase as JSON-able figures; `basis` says which events `events` counts."""
    if phase is None:
        return {"measured": False, "reason": basis}
    return {
        "measured": True,
        "phase": phase.name,
        "window_s": round(phase.seconds, 3),
        "events": events,
        "events_basis": basis,
        "peak_stack_rss_bytes": peak_stack_rss,
        "stack_pss_bytes_at_end": phase.stack_pss_bytes,
        "rows": [asdict(row) for row in cost_rows(phase, events)],
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(figures: dict[str, Any], console: Console) -> None:
    send, commit = figures["send"], figures["commit"]
    ingest = Table(title=f"eventpipe throughput - run {figures['run_id']}", show_header=False)
    ingest.add_column("figure")
    ingest.add_column("value", justify="right")
    ingest.add_row("target rate (events/s)", _fmt(send["target_rate_eps"]))
    ingest.add_row("offered rate (events/s)", _fmt(send["offered_rate_eps"]))
    ingest.add_row("sustained ingest rate (accepted/s)", _fmt(send["sustained_ingest_eps"]))
    ingest.add_row("send window (s)", _fmt(send["send_window_s"]))
    ingest.add_row(
        "events sent / accepted / rejected", f"{send['events_sent']:,} / {send['accepted']:,} / {send['rejected']:,}"
    )
    behind = "[red]YES[/red]" if send["fell_behind"] else "no"
    ingest.add_row(
        "driver fell behind schedule",
        f"{behind} ({send['late_batches']} late > "
        f"{send['lag_tolerance_ms']:.0f} ms, {send['unsent_batches']} unsent, "
        f"max lag {_fmt(send['schedule_lag_ms']['max'])} ms)",
    )
    ingest.add_row("HTTP responses", ", ".join(f"{k}: {v:,}" for k, v in send["http_status"].items()) or "-")
    ingest.add_row("errors (non-2xx, transport)", ", ".join(f"{k}: {v:,}" for k, v in send["errors"].items()) or "none")
    if commit["measured"]:
        done = "[red]TIMED OUT[/red] " if commit["timed_out"] else ""
        ingest.add_row(
            "committed / expected",
            f"{done}{commit['committed']:,} / {commit['expected']:,} ({commit['missing']:,} missing)",
        )
        ingest.add_row("committed by status", ", ".join(f"{k}: {v:,}" for k, v in commit["by_status"].items()) or "-")
        ingest.add_row("processed (committed) rate (events/s)", _fmt(commit["processed_rate_eps"]))
        ingest.add_row("commit window: first received -> last committed (s)", _fmt(commit["commit_window_s"]))
        ingest.add_row("drain wait after send (s)", _fmt(commit["drain_wait_s"]))
        backlog = commit["backlog_at_end"]
        if backlog["sustained"] is not None:
            kept = "yes" if backlog["sustained"] else "[red]NO[/red]"
            ingest.add_row(
                f"backlog at the last event received (sustained: < {SUSTAINED_BACKLOG_S:g} s of traffic)",
                f"{kept}: {backlog['events']:,} events = {backlog['seconds_of_traffic']:g} s, "
                + (
                    f"caught up {backlog['catch_up_s']:g} s later"
                    if backlog["catch_up_s"] is not None
                    else "some never committed"
                ),
            )
    else:
        ingest.add_row("commit figures", f"not measured ({commit['reason']})")
    console.print(ingest)

    latency = Table(title="latencies (ms)")
    for column in ("measure", "count", "p50", "p95", "p99", "max"):
        latency.add_column(column, justify="left" if column == "measure" else "right")
    rows: list[tuple[str, dict[str, Any]]] = [
        ("request (client, send -> response)", send["request_latency_ms"]),
        ("request (client, scheduled slot -> response)", send["request_latency_from_schedule_ms"]),
        ("schedule lag (slot -> send start)", send["schedule_lag_ms"]),
    ]
    if commit["measured"]:
        rows += [
            ("ingest -> committed (committed_at - received_at)", commit["ingest_to_commit_ms"]),
            ("processing (committed_at - consumed_at)", commit["consumed_to_commit_ms"]),
            ("broker+queue wait (consumed_at - received_at) *", commit["received_to_consumed_ms"]),
        ]
    floor = figures.get("broker_floor", {"measured": False})
    if floor["measured"]:
        rows.append(("broker floor: produce -> readable (probe topic)", floor["latency_ms"]))
    for label, s in rows:
        latency.add_row(label, _fmt(s["count"]), *(_fmt(s[k]) for k in ("p50", "p95", "p99", "max")))
    console.print(latency)
    if commit["measured"]:
        console.print(f"* {BROKER_FLOOR_NOTE}")
        above = p99_above_floor(commit, floor)
        if above is not None:
            console.print(f"ingest -> committed p99 above the broker floor's p99, same run: {above:,.1f} ms")

    render_cost(figures["cost"], console)


def _mib(value: int) -> str:
    return f"{value / 1024**2:,.0f}"


def render_cost(cost: dict[str, Any], console: Console) -> None:
    """The per-component table; µs/event columns only when the phase had events."""
    if not cost["measured"]:
        console.print(f"CPU and memory: not measured ({cost['reason']})")
        return
    per_event = cost["events"] is not None
    title = f"CPU and memory by component - {cost['phase']} window {cost['window_s']:,.1f} s"
    if per_event:
        title += f", {cost['events']:,} events {cost['events_basis']}"
    table = Table(title=title)
    table.add_column("component")
    columns = ["procs", "% of one core", "CPU core-s"]
    columns += ["µs/event", "share %"] if per_event else []
    for column in [*columns, "peak RSS MiB"]:
        table.add_column(column, justify="right")
    for row in cost["rows"]:
        cells = [_fmt(row["processes"]), _fmt(row["percent_of_core"]), f"{row['cpu_seconds']:,.2f}"]
        cells += [_fmt(row["us_per_event"]), _fmt(row["share"])] if per_event else []
        style = "bold" if row["label"] in (STACK, TOTAL) else None
        table.add_row(row["label"], *cells, _mib(row["peak_rss_bytes"]), style=style)
    console.print(table)
    if per_event and "budget_us_per_event" in cost:
        console.print(
            f"{cost['cores']} cores at the target rate allow {cost['budget_us_per_event']:,.0f} µs of CPU per event "
            f"for everything (cores × 1,000,000 ÷ target rate)"
        )
    console.print(
        f"peak RSS of the stack (all processes but the driver, whole run): "
        f"{cost['peak_stack_rss_bytes'] / GIB:,.2f} GiB (issue 9 asks < 3 GB)"
    )
    if cost.get("stack_pss_bytes_at_end"):
        console.print(
            f"PSS of the stack at the end of the {cost['phase']} window: "
            f"{cost['stack_pss_bytes_at_end'] / GIB:,.2f} GiB (shared pages counted once; summed RSS counts them again "
            "in every process that maps them)"
        )
