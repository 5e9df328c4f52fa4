"""Specification of the API's error contract: every row of the README's error table is produced by the real ingest
path (Ingestor, edge, Reads) with its status, code and body (`error`, `reason`, `errors[]` where it applies), and every
such body is an instance of the ErrorBody the OpenAPI document publishes. Also: a partly rejected batch delivers
exactly its valid items, and ids derived from an Idempotency-Key are the same when the batch is sent again.

In-process with a recording delivery in place of the broker (tests/unit/test_ingest_limits.py); the database row uses
a real read pool against a server that never answers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from cluster.adapters.read_store import ReadStore
from pipelines.access import DEFAULT_TENANT, Scope
from pipelines.api_keys import Denial, Denied
from pipelines.jsontext import ambiguity
from pipelines.rate_lease import never
from pipelines.rate_limit import Measure, request_quota
from pipelines.registry import default_registry
from serve_app.admission import InflightGate
from serve_app.auth import denied
from serve_app.body import BodyLease
from serve_app.delivery import Refused, Rejected
from serve_app.edge import receive
from serve_app.incidents import Incidents
from serve_app.ingest import Ingestor, Reply, RequestMeta
from serve_app.openapi import ErrorBody
from serve_app.reads import Reads
from serve_app.replies import rate_limited
from tests.unit.test_ingest_limits import JSON, AnsweringDelivery, RecordingDelivery, _event, _ingestor, _settings

README = Path(__file__).resolve().parents[2] / "README.md"
INCIDENTS = Incidents(logging.getLogger("tests.error_contract"))


def documented_rows() -> set[tuple[int, str]]:
    """(status, error) of every row of the README's error table."""
    rows = re.findall(r"^\| (\d{3}) \| (`[a-z_]+`(?: / `[a-z_]+`)*) \|", README.read_text(), flags=re.MULTILINE)
    return {(int(status), code) for status, codes in rows for code in re.findall(r"`([a-z_]+)`", codes)}


# -- one producer per row: the real path that answers it ---------------------------------------------------------


def _single(body: bytes, meta: RequestMeta = JSON, **settings: Any) -> Reply:
    return asyncio.run(_ingestor(RecordingDelivery(), **settings).single(body, meta))


def _batch(items: list[Any], meta: RequestMeta = JSON, delivery: Any = None, **settings: Any) -> Reply:
    return asyncio.run(_ingestor(delivery or RecordingDelivery(), **settings).batch(orjson.dumps(items), meta))


async def _chunks(*parts: bytes, pause_s: float = 0.0) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(pause_s)
        yield part


async def _started() -> None:
    return None


def _receive(chunks: AsyncIterator[bytes], budget: InflightGate, declared: int | None = None) -> Reply:
    async def run() -> Any:
        deadline = asyncio.get_running_loop().time() + 0.2
        meta = RequestMeta("application/json", None, None, content_length=declared, deadline=deadline)
        return await receive(chunks, meta, 10_000, BodyLease(budget), _started, INCIDENTS)

    got = asyncio.run(run())
    assert isinstance(got, Reply), got
    return got


def _overloaded_events() -> Reply:
    settings = _settings()
    gate = InflightGate(2)
    assert gate.try_acquire(1)  # another request's event is in flight
    registry = default_registry(settings.base_currency, settings.risk_amount_threshold)
    ingestor = Ingestor(settings, registry, RecordingDelivery(), gate)  # type: ignore[arg-type]
    return asyncio.run(ingestor.batch(orjson.dumps([_event(0), _event(1)]), JSON))


def _overloaded_bytes() -> Reply:
    budget = InflightGate(100)
    assert budget.try_acquire(100)  # other requests hold the whole budget
    return _receive(_chunks(b"{}"), budget, declared=50)


@pytest.fixture(scope="module")
def silent_server() -> Iterator[str]:
    """A PostgreSQL URL whose server accepts connections and never says a word."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as server:
        yield f"postgresql://postgres:pw@127.0.0.1:{server.getsockname()[1]}/eventpipe?connect_timeout=1"


def _database_unavailable(url: str) -> Reply:
    async def run() -> Reply:
        store = ReadStore(url)

        async def opened() -> ReadStore:
            await store.open()
            return store

        try:
            return await Reads(opened, INCIDENTS, timeout_s=0.2).event(DEFAULT_TENANT, "some-event")
        finally:
            await store.close()

    return asyncio.run(run())


def _answered_by(outcome: Any) -> Reply:
    return asyncio.run(_ingestor(AnsweringDelivery(outcome)).single(orjson.dumps(_event(0)), JSON))


def _not_started() -> Reply:
    async def never() -> None:
        await asyncio.Event().wait()

    async def run() -> Any:
        meta = RequestMeta("application/json", None, None, deadline=asyncio.get_running_loop().time() + 0.05)
        return await receive(_chunks(b"{}"), meta, 10_000, BodyLease(InflightGate(1000)), never, INCIDENTS)

    return asyncio.run(run())


# Every README row, produced by the real code path that answers it (the silent server's URL for the database row).
ROWS: dict[tuple[int, str], list[Any]] = {
    (400, "malformed_json"): [lambda _: _single(b'{"type": nope}'), lambda _: _single(b'{"a": 1, "a": 2}')],
    (400, "bad_idempotency_key"): [
        lambda _: _single(orjson.dumps(_event(0)), RequestMeta("application/json", "", None)),
        lambda _: _single(orjson.dumps(_event(0)), RequestMeta("application/json", "k" * 257, None)),
    ],
    (401, "missing_api_key"): [lambda _: denied(Denied(Denial.MISSING))],
    (401, "invalid_api_key"): [lambda _: denied(Denied(Denial.INVALID))],
    (403, "insufficient_scope"): [lambda _: denied(Denied(Denial.INSUFFICIENT_SCOPE, Scope.INGEST))],
    (429, "rate_limited"): [lambda _: rate_limited(never(request_quota(10), 100), Measure.REQUESTS)],
    (408, "request_timeout"): [lambda _: _receive(_chunks(b"{", b"}", pause_s=0.5), InflightGate(1000))],
    (413, "payload_too_large"): [
        lambda _: _single(orjson.dumps(_event(0, metadata_bytes=4096))),
        lambda _: _receive(_chunks(b" " * 6000, b" " * 6000), InflightGate(100_000)),
    ],
    (413, "event_too_large"): [lambda _: _single(orjson.dumps(_event(0, metadata_bytes=1798)))],
    (413, "batch_too_large"): [lambda _: _batch([_event(n) for n in range(3)], max_batch_events=2)],
    (415, "unsupported_media_type"): [
        lambda _: _single(b"{}", RequestMeta("text/plain", None, None)),
        lambda _: _single(b"{}", RequestMeta("application/json", None, None, content_encoding="gzip")),
    ],
    (422, "validation_failed"): [
        lambda _: _single(orjson.dumps({**_event(0), "user_id": 7})),
        lambda _: _batch([{**_event(0), "type": "no_such_type"}]),
    ],
    (422, "publish_rejected"): [lambda _: _answered_by(Rejected("publish_rejected", "the broker refuses it"))],
    (429, "overloaded"): [lambda _: _overloaded_events(), lambda _: _overloaded_bytes()],
    (503, "broker_unavailable"): [lambda _: _answered_by(Refused("broker_unavailable", "the broker is down", 3, "e1"))],
    (503, "starting"): [lambda _: _not_started()],
    (503, "database_unavailable"): [_database_unavailable],
    (503, "spool_full"): [lambda _: _answered_by(Refused("spool_full", "the spool is full", 5, "e2"))],
    (504, "timeout"): [
        lambda _: asyncio.run(
            _ingestor(RecordingDelivery(hang=True), request_timeout_s=0.05).single(orjson.dumps(_event(0)), JSON)
        )
    ],
}
CASES = [pytest.param(row, n, id=f"{row[0]}-{row[1]}-{n}") for row, makers in ROWS.items() for n in range(len(makers))]
NEEDS = {  # what a row's body carries beside `error` and `reason`
    "malformed_json": (),
    "payload_too_large": ("limit",),
    "event_too_large": ("id",),
    "publish_rejected": ("id",),
    "broker_unavailable": ("error_id",),
    "starting": ("error_id",),
    "database_unavailable": ("error_id",),
    "spool_full": ("error_id",),
    "timeout": ("error_id", "id"),
    "insufficient_scope": ("scope",),
}
CHALLENGED = {401, 403}  # answers that carry WWW-Authenticate
RETRY_AFTER = {429, 503, 504}


def test_every_row_of_the_readmes_error_table_has_a_producer_here():
    assert documented_rows() == set(ROWS)


@pytest.mark.parametrize(("row", "n"), CASES)
def test_each_error_is_answered_with_its_status_code_and_body(row: tuple[int, str], n: int, silent_server: str):
    # given the request (or the state of the replica) the row describes; when the real path answers it
    reply = ROWS[row][n](silent_server)
    # then: its status and code, a reason for people, what the row promises, and the published ErrorBody shape
    status, code = row
    assert (reply.status, reply.body.get("error")) == (status, code), reply.body
    assert isinstance(reply.body["reason"], str) and reply.body["reason"]
    for field in NEEDS.get(code, ()):
        assert reply.body.get(field), (field, reply.body)
    if code == "validation_failed":  # field errors: the event's own, or each batch item's
        errors = reply.body.get("errors") or [e for item in reply.body["results"] for e in item["errors"]]
        assert errors and all(set(e) == {"loc", "msg", "type"} for e in errors), reply.body
    if status in CHALLENGED:
        assert (reply.headers or {})["WWW-Authenticate"].startswith("Bearer"), reply.headers
    if status in RETRY_AFTER:
        assert int((reply.headers or {})["Retry-After"]) >= 1
    ErrorBody.model_validate(reply.body)


def test_a_field_error_names_its_field_in_errors():
    reply = _single(orjson.dumps({**_event(0), "user_id": 7}))
    assert [e["loc"] for e in reply.body["errors"]] == ["user_id"], reply.body


# -- hostile JSON the parser must refuse (400), with the position or the ambiguity, never the parser's text ------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"reading": NaN}',
        b'{"reading": Infinity}',
        b'{"reading": -Infinity}',
        b'{"reading": 1e400}',
        b'{"user_id": "\\ud800"}',
        b'{"user_id": "\xff\xfe"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"id": "a", "id": "b"}',
        b'{"metadata": {"k": 1, "k": 2}}',
    ],
    ids=["nan", "inf", "-inf", "1e400", "lone-surrogate", "invalid-utf8", "nested-1e5", "dup-id", "dup-nested"],
)
def test_json_no_parser_can_read_one_way_is_refused_400(body: bytes):
    delivery = RecordingDelivery()
    reply = asyncio.run(_ingestor(delivery).batch(body, JSON))
    assert reply.status == 400 and reply.body["error"] == "malformed_json", reply.body
    assert delivery.delivered == []


def test_a_duplicate_key_is_named_in_the_reason():
    assert ambiguity(b'[{"a": {"b": 1, "c": 2, "b": 3}}]') == "an object has the key 'b' more than once"
    assert ambiguity(b'[{"a": {"b": 1}, "b": {"a": 2}}]') is None


# -- batches: the valid part is delivered, the rest is not; idempotency-derived ids are stable ----------------------


def test_a_partly_rejected_batch_delivers_exactly_its_valid_items():
    delivery = RecordingDelivery()
    items = [_event(0), {**_event(1), "user_id": 7}, _event(2), {"type": "nope"}, _event(4, metadata_bytes=1798)]
    reply = _batch(items, delivery=delivery)
    assert reply.status == 202, reply.body
    assert [r["status"] for r in reply.body["results"]] == ["accepted", "rejected", "accepted", "rejected", "rejected"]
    assert (reply.body["accepted"], reply.body["rejected"], reply.body["failed"]) == (2, 3, 0)
    assert [event_id for event_id, _ in delivery.delivered] == ["limits-0", "limits-2"]
    assert reply.body["results"][1]["errors"][0]["loc"] == "user_id"


def _without_ids(n: int) -> list[dict[str, Any]]:
    return [{k: v for k, v in _event(i).items() if k != "id"} for i in range(n)]


def test_batch_ids_derived_from_an_idempotency_key_are_the_same_when_the_batch_is_sent_again():
    def send(key: str) -> list[str]:
        delivery = RecordingDelivery()
        reply = _batch(_without_ids(3), RequestMeta("application/json", key, None), delivery=delivery)
        assert reply.status == 202, reply.body
        answered = [r["id"] for r in reply.body["results"]]
        assert answered == [event_id for event_id, _ in delivery.delivered]
        return answered

    first, again, other = send("order-7"), send("order-7"), send("order-8")
    assert first == again and len(set(first)) == 3
    assert not set(first) & set(other)


def test_without_an_idempotency_key_a_resent_batch_gets_new_ids():
    first = _batch(_without_ids(2)).body["results"]
    again = _batch(_without_ids(2)).body["results"]
    assert not {r["id"] for r in first} & {r["id"] for r in again}
