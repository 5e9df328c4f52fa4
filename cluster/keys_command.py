"""`eventpipe keys create|list|revoke`: API keys in the pipeline's database (DATABASE_URL, else the embedded
PostgreSQL of the data dir, started for the command when no run is using it).

It prints a key's text once, at creation, and never its hash; every other line names keys by name and id.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from cluster.adapters.key_store import KeyNameTaken, KeyRecord, KeyStore, UnknownKeyName
from cluster.adapters.migrations import migrate
from cluster.observability.terminal import terminal_text
from cluster.settings import Settings
from pipelines.api_keys import parse_scopes

EXIT_REFUSED = 2  # a bad argument, a taken name, an unknown key


def add_parser(sub: Any) -> None:
    """The `keys` subcommand and its three actions, on the `eventpipe` parser's subparsers."""
    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key and print it (once: only its hash is stored)")
    create.add_argument("--name", required=True, help="unique name of the key (letters, digits, '.', '_', '-')")
    create.add_argument("--scopes", required=True, help="comma-separated: ingest, read, admin")
    create.add_argument(
        "--tenant", help="the tenant whose data the key writes and reads (default: the key's name; created if new)"
    )
    create.add_argument(
        "--requests-per-minute", type=int, help="default: the rate_limit_requests_per_minute setting (1000)"
    )
    create.add_argument(
        "--events-per-minute",
        type=int,
        help="at least max_batch_events (1000); default: the rate_limit_events_per_minute setting (none: no limit)",
    )
    listing = actions.add_parser("list", help="names, tenants, scopes, limits, created and last used; never the key")
    listing.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    revoke = actions.add_parser("revoke", help="revoke a key: every API replica refuses it within auth_refresh_s")
    revoke.add_argument("name")


@contextmanager
def key_store(settings: Settings) -> Iterator[KeyStore]:
    """A store on the pipeline's database, its schema brought up to date first."""
    from cluster.local import EmbeddedPostgres

    url = settings.database_url.get_secret_value()
    with ExitStack() as stack:
        if not url:
            postgres = EmbeddedPostgres(settings.data_dir)
            url = postgres.live_url() or stack.enter_context(postgres).url  # no run holds it: up for this command
        migrate(url)
        store = stack.enter_context(closing(KeyStore(url)))
        yield store


def run(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    with key_store(settings) as store:
        try:
            if args.action == "create":
                return _create(args, store, console, settings)
            if args.action == "list":
                return _list(store, console, as_json=args.json)
            record = store.revoke(args.name)
            console.print(f"revoked key {record.name!r} ({record.key_id}) at {_when(record.revoked_at)}", markup=False)
            return 0
        except (ValueError, KeyNameTaken, UnknownKeyName) as exc:
            console.print(f"refused: {exc}", markup=False, soft_wrap=True)
            return EXIT_REFUSED


def _create(args: argparse.Namespace, store: KeyStore, console: Console, settings: Settings) -> int:
    scopes = parse_scopes(args.scopes)
    tenant = args.tenant if args.tenant is not None else args.name
    # `is None`, not `or`: an explicit 0 is refused by the store's check, never replaced by the default
    per_minute = (
        settings.rate_limit_requests_per_minute if args.requests_per_minute is None else args.requests_per_minute
    )
    events = settings.rate_limit_events_per_minute if args.events_per_minute is None else args.events_per_minute
    if events is not None and events < settings.max_batch_events:
        # the events bucket's burst is at least one full batch: a smaller limit could not hold per 60 s (ADR 0014)
        raise ValueError(f"--events-per-minute must be at least max_batch_events ({settings.max_batch_events})")
    issued, record = store.create(args.name, tenant, scopes, per_minute, events)
    console.print(
        f"created key {record.name!r} ({record.key_id}) for tenant {record.tenant!r}, scopes "
        f"{','.join(sorted(record.scopes))}. It is shown once, keep it now:",
        markup=False,
        soft_wrap=True,
    )
    console.print(issued.key, markup=False, soft_wrap=True)
    return 0


def as_dict(record: KeyRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "key_id": record.key_id,
        "tenant": record.tenant,
        "scopes": sorted(record.scopes),
        "requests_per_minute": record.requests_per_minute,
        "events_per_minute": record.events_per_minute,
        "created_at": _iso(record.created_at),
        "last_used_at": _iso(record.last_used_at),
        "revoked_at": _iso(record.revoked_at),
    }


def _list(store: KeyStore, console: Console, *, as_json: bool) -> int:
    records = store.list()
    if as_json:
        print(json.dumps([as_dict(r) for r in records], indent=2))
        return 0
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("name", "id", "tenant", "scopes", "req/min", "events/min", "created", "last used", "revoked"):
        table.add_column(header, overflow="fold")
    for r in records:
        cells = (r.name, r.key_id, r.tenant, ",".join(sorted(r.scopes)), str(r.requests_per_minute))
        times = (_when(r.created_at), _when(r.last_used_at), _when(r.revoked_at))
        table.add_row(*(terminal_text(c) for c in cells), str(r.events_per_minute or "-"), *times)
    console.print(table)
    return 0


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M") if at is not None else "-"
