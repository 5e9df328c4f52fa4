"""Turns a run's raw records into figures (a JSON-able dict) and prints them as rich tables.

Computes from measurements only; never talks to the server or the database.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.commit_watch import DrainResult
from benchmarks.cpu_sampler import GroupCpu
from benchmarks.sender import LoadResult
from benchmarks.stats import summarize_ms

BROKER_FLOOR_NOTE = (
    "includes the embedded broker's ~60-110 ms readability floor (time before a produced record is fetchable)"
)


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
        "ingest_to_commit_ms": summarize_ms([r.committed_at - r.received_at for r in rows]),
        "consumed_to_commit_ms": summarize_ms([r.committed_at - r.consumed_at for r in consumed if r.consumed_at]),
        "received_to_consumed_ms": summarize_ms([r.consumed_at - r.received_at for r in consumed if r.consumed_at]),
        "received_to_consumed_note": BROKER_FLOOR_NOTE,
    }


def cpu_figures(cpu: dict[str, GroupCpu] | None) -> dict[str, Any]:
    if cpu is None:
        return {"measured": False, "reason": "disabled or psutil not installed"}
    return {"measured": True, "unit": "percent of one core", "groups": {g: asdict(c) for g, c in cpu.items()}}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(figures: dict[str, Any], console: Console) -> None:
    send, commit, cpu = figures["send"], figures["commit"], figures["cpu"]
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
    for label, s in rows:
        latency.add_row(label, _fmt(s["count"]), *(_fmt(s[k]) for k in ("p50", "p95", "p99", "max")))
    console.print(latency)
    if commit["measured"]:
        console.print(f"* {BROKER_FLOOR_NOTE}")

    if cpu["measured"]:
        table = Table(title="CPU by process group (% of one core, sampled every second)")
        table.add_column("group", overflow="fold")
        for column in ("procs", "avg during send", "avg whole run", "peak"):
            table.add_column(column, justify="right")
        for group, c in sorted(cpu["groups"].items(), key=lambda kv: -kv[1]["avg_send"]):
            table.add_row(group, str(c["processes"]), _fmt(c["avg_send"]), _fmt(c["avg_all"]), _fmt(c["peak"]))
        console.print(table)
    else:
        console.print(f"CPU: not measured ({cpu['reason']})")
