"""Locust user for interactive load tests: posts batches and single events (with Idempotency-Key) to the API.

Checks only what a client can see (status codes, echoed ids); it never reads the database.
Run: locust -f benchmarks/locustfile.py --host http://127.0.0.1:8000 (the API key: $EVENTPIPE_API_KEY, else the
driver's own 'benchmark' key, made in the stack's database: benchmarks/stack.py api_key)
"""

from __future__ import annotations

import os
import secrets
import sys
from collections import deque
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from typing import Any

import orjson
from locust import FastHttpUser, between, task
from locust import events as locust_events
from locust.env import Environment

# Locust imports this file by path and puts only benchmarks/ on sys.path; the package needs the repo root.
if __package__ in (None, "") and str(Path(__file__).resolve().parent.parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.events import EventFactory, run_prefix  # noqa: E402
from benchmarks.stack import api_key, data_dir, embedded_database_url  # noqa: E402

JSON = {"content-type": "application/json"}
_user_numbers = count()
_settings: dict[str, Any] = {"batch_size": 100, "run_id": ""}


@locust_events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    parser.add_argument("--batch-size", type=int, default=100, help="events per POST /events/batch (max 1000)")
    parser.add_argument("--run-id", default="", help="event id prefix (default: bench-<utc time>-<random>)")


@locust_events.test_start.add_listener
def _read_settings(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    _settings["batch_size"] = getattr(options, "batch_size", 100) if options else 100
    run_id = getattr(options, "run_id", "") if options else ""
    # Each worker process gets its own random token, so distributed runs never reuse an id.
    _settings["run_id"] = run_id or run_prefix(datetime.now(UTC), secrets.token_hex(3))
    database_url = os.environ.get("DATABASE_URL") or embedded_database_url(data_dir())
    _settings["api_key"] = api_key(data_dir(), database_url) or ""


class EventProducer(FastHttpUser):
    """One client: mostly single events, some batches, idempotent resends and status reads."""

    host = "http://127.0.0.1:8000"
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        number = next(_user_numbers)
        run_id = _settings["run_id"] or run_prefix(datetime.now(UTC), secrets.token_hex(3))
        self.factory = EventFactory(f"{run_id}-{number}", seed=number)
        self.sent_singles: deque[tuple[str, bytes, str]] = deque(maxlen=200)  # (key, body, id)
        self.accepted_ids: deque[str] = deque(maxlen=1000)
        self.client.auth_header = f"Bearer {_settings.get('api_key', '')}"  # FastHttpSession sends it on every request

    @task(4)
    def post_single(self) -> None:
        event = self.factory.event(datetime.now(UTC))
        key = f"idem-{event['id']}"
        body = orjson.dumps(event)
        with self.client.post(
            "/events", data=body, headers=JSON | {"Idempotency-Key": key}, name="/events", catch_response=True
        ) as response:
            if response.status_code != 202:
                response.failure(f"expected 202, got {response.status_code}")
                return
            event_id = orjson.loads(response.content or b"{}").get("id")
            if not event_id:
                response.failure("202 without an id")
                return
            self.sent_singles.append((key, body, event_id))
            self.accepted_ids.append(event_id)

    @task(1)
    def resend_single(self) -> None:
        """Same body, same Idempotency-Key: must be accepted again and name the same event."""
        if not self.sent_singles:
            return
        key, body, first_id = self.sent_singles[-1]
        with self.client.post(
            "/events",
            data=body,
            headers=JSON | {"Idempotency-Key": key},
            name="/events (idempotent resend)",
            catch_response=True,
        ) as response:
            if response.status_code not in (200, 202):
                response.failure(f"expected 200/202, got {response.status_code}")
            elif orjson.loads(response.content or b"{}").get("id") != first_id:
                response.failure("idempotent resend returned a different id")

    @task(1)
    def post_batch(self) -> None:
        batch = self.factory.batch(_settings["batch_size"], datetime.now(UTC))
        with self.client.post(
            "/events/batch", data=orjson.dumps(batch), headers=JSON, name="/events/batch", catch_response=True
        ) as response:
            if response.status_code != 202:
                response.failure(f"expected 202, got {response.status_code}")
                return
            payload = orjson.loads(response.content or b"{}")
            if payload.get("rejected"):
                # Generated events are valid, so any rejection is a server-side problem worth seeing.
                response.failure(f"{payload['rejected']} of {len(batch)} generated events rejected")
            self.accepted_ids.extend(
                r["id"] for r in payload.get("results", []) if r.get("status") == "accepted" and r.get("id")
            )

    @task(1)
    def read_status(self) -> None:
        """404 is fine (not committed yet); 200 must carry a final status."""
        if not self.accepted_ids:
            return
        event_id = self.accepted_ids[self.factory.issued % len(self.accepted_ids)]
        with self.client.get(f"/events/{event_id}", name="/events/[id]", catch_response=True) as response:
            if response.status_code == 404:
                response.success()
            elif response.status_code != 200:
                response.failure(f"expected 200/404, got {response.status_code}")
            elif orjson.loads(response.content or b"{}").get("status") not in ("processed", "dead_lettered"):
                response.failure("200 without a final status")
