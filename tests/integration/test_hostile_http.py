"""Hostile input at the HTTP edge, on the real pipeline: limits judged before the body is read, bodies read under a
byte cap, each event's broker record bounded (an oversized item costs that item, not the batch), nothing oversized
ever produced or spooled, a spool row that can never be published dead-lettered while the rows behind it drain, and
503 bodies with an error id and no driver text.

HTTP tests speak raw sockets, so a test can send headers without a body, or keep streaming, and see when the answer
comes. Tests that need other limits than the session's run an Ingestor in this process against the same broker and
database, as the API replica would (tests/integration/test_spool.py does the same).
"""

from __future__ import annotations

import asyncio
import select
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import psycopg
import pytest

from cluster.local import free_port
from pipelines.envelope import Envelope
from pipelines.policies.breaker import BreakerState
from pipelines.registry import default_registry
from serve_app.ingest import RequestMeta
from tests.chaos.faultproxy import FaultProxy
from tests.chaos.rawlog import dlq_keys, high_watermark
from tests.factories import TS
from tests.ingestor import in_process_ingestor
from tests.pipeline import Pipeline, unique_prefix, wait_until

pytestmark = pytest.mark.integration

JSON = RequestMeta("application/json", None, None)
_CHUNK = 64 * 1024


# -- raw HTTP ------------------------------------------------------------------------------------------------------


def _connect(pipeline: Pipeline) -> socket.socket:
    url = urlsplit(pipeline.base_url)
    sock = socket.create_connection((url.hostname, url.port), timeout=10)
    sock.settimeout(10)
    return sock


def _head(pipeline: Pipeline, path: str, content_type: str, length: int | None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: eventpipe", f"Content-Type: {content_type}"]
    lines += [f"{name}: {value}" for name, value in pipeline.headers.items()]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_response(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of the answer (Content-Length framed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before an answer: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, orjson.loads(body[:length]) if length else {}


def test_a_declared_length_over_the_limit_gets_413_before_any_body_byte_is_sent(pipeline: Pipeline) -> None:
    limit = pipeline.settings.max_body_bytes
    with _connect(pipeline) as sock:
        started = time.monotonic()
        sock.sendall(
            _head(pipeline, "/events/batch", "application/json", limit + 1)
        )  # headers only: the body never comes
        status, body = _read_response(sock)
    assert status == 413, body
    assert body["error"] == "payload_too_large" and body["limit"] == limit
    assert time.monotonic() - started < 5  # answered at once, not after waiting for the body


def test_a_wrong_content_type_gets_415_before_any_body_byte_is_sent(pipeline: Pipeline) -> None:
    with _connect(pipeline) as sock:
        sock.sendall(_head(pipeline, "/events", "text/plain", 1000))
        status, body = _read_response(sock)
    assert status == 415 and body["error"] == "unsupported_media_type", body


def test_a_chunked_body_over_the_limit_gets_413_while_the_client_is_still_sending(pipeline: Pipeline) -> None:
    limit = pipeline.settings.max_event_bytes
    endless = 64 * 1024 * 1024  # far beyond the limit: the answer must come long before the client would stop
    frame = f"{_CHUNK:x}\r\n".encode() + b" " * _CHUNK + b"\r\n"  # whitespace: valid JSON padding so far
    sent = 0
    with _connect(pipeline) as sock:
        sock.sendall(_head(pipeline, "/events", "application/json", None))
        while sent < endless and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break  # the server stopped reading: its answer is waiting
            sent += _CHUNK
        status, body = _read_response(sock)
    assert status == 413 and body["error"] == "payload_too_large" and body["limit"] == limit, body
    assert sent < endless


# -- per-event record bounds (in-process Ingestor, real broker and pipeline) ----------------------------------------


def _action(prefix: str, n: int, note_bytes: int = 0) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": f"{prefix}:{n}",
        "type": "user_action",
        "timestamp": TS,
        "user_id": f"{prefix}-u{n}",
        "action": "click",
        "target": "checkout-button",
    }
    if note_bytes:
        event["metadata"] = {"note": "x" * note_bytes}
    return event


def _processed(pipeline: Pipeline, ids: list[str]) -> int:
    return int(pipeline.scalar("SELECT count(*) FROM events WHERE id = ANY(%s) AND status = 'processed'", ids))


def _seen_anywhere(pipeline: Pipeline, event_id: str) -> list[str]:
    tables = ("events", "ingest_spool", "dead_letters")
    column = {"events": "id"}
    return [
        t
        for t in tables
        if pipeline.scalar(f"SELECT count(*) FROM {t} WHERE {column.get(t, 'event_id')} = %s", event_id)
    ]


def test_a_batch_item_over_max_event_bytes_is_rejected_and_the_others_are_accepted_and_processed(
    pipeline: Pipeline,
) -> None:
    prefix = unique_prefix("edge-item")
    settings = pipeline.settings.model_copy(update={"max_event_bytes": 2048})
    batch = [_action(prefix, 0), _action(prefix, 1, note_bytes=4096), _action(prefix, 2)]

    async def scenario() -> Any:
        async with in_process_ingestor(pipeline, settings=settings, broker_timeout_ms=3_000) as (ingestor, _):
            return await ingestor.batch(orjson.dumps(batch), JSON)

    reply = asyncio.run(scenario())
    assert reply.status == 202, reply.body
    assert [r["status"] for r in reply.body["results"]] == ["accepted", "rejected", "accepted"]
    assert reply.body["results"][1]["error"] == "event_too_large"
    others = [batch[0]["id"], batch[2]["id"]]
    wait_until(lambda: _processed(pipeline, others) == 2, 60, "the batch's other events processed")
    assert _seen_anywhere(pipeline, batch[1]["id"]) == []


def test_a_record_over_the_producers_message_max_bytes_is_never_produced_and_the_breaker_stays_closed(
    pipeline: Pipeline,
) -> None:
    """Even with max_event_bytes misconfigured above it (model_copy skips the Settings check), librdkafka's refusal is a
    per-item rejection: no 500, nothing produced, nothing spooled, the broker not blamed."""
    prefix = unique_prefix("edge-msgmax")
    settings = pipeline.settings.model_copy(update={"max_event_bytes": 100_000})
    batch = [_action(prefix, 0), _action(prefix, 1, note_bytes=8192), _action(prefix, 2)]

    async def scenario() -> tuple[Any, Any, BreakerState]:
        async with in_process_ingestor(
            pipeline, settings=settings, message_max_bytes=4096, spool_url=pipeline.db_url, broker_timeout_ms=3_000
        ) as (
            ingestor,
            breaker,
        ):
            many = await ingestor.batch(orjson.dumps(batch), JSON)
            one = await ingestor.single(orjson.dumps(_action(prefix, 3, note_bytes=8192)), JSON)
            return many, one, breaker.state

    many, one, state = asyncio.run(scenario())
    assert many.status == 202, many.body
    assert [r["status"] for r in many.body["results"]] == ["accepted", "rejected", "accepted"]
    assert many.body["results"][1]["error"] == "event_too_large" and many.body["spooled"] == 0
    assert one.status == 413 and one.body["error"] == "event_too_large", one.body
    assert state is BreakerState.CLOSED
    wait_until(lambda: _processed(pipeline, [batch[0]["id"], batch[2]["id"]]) == 2, 60, "the others processed")
    assert _seen_anywhere(pipeline, batch[1]["id"]) == [] and _seen_anywhere(pipeline, f"{prefix}:3") == []


def test_a_batch_item_over_the_brokers_message_max_bytes_is_a_per_item_rejection_not_a_500(pipeline: Pipeline) -> None:
    prefix = unique_prefix("edge-http-item")
    big = pipeline.settings.kafka_message_max_bytes + 100_000  # the body as a whole is within max_body_bytes
    batch = [_action(prefix, 0), _action(prefix, 1, note_bytes=big), _action(prefix, 2)]
    with httpx.Client(base_url=pipeline.base_url, headers=pipeline.headers, timeout=30) as client:
        reply = client.post("/events/batch", json=batch)
    assert reply.status_code == 202, reply.text[:500]
    assert [r["status"] for r in reply.json()["results"]] == ["accepted", "rejected", "accepted"]
    wait_until(lambda: _processed(pipeline, [batch[0]["id"], batch[2]["id"]]) == 2, 60, "the others processed")
    assert _seen_anywhere(pipeline, batch[1]["id"]) == []


# -- the spool never jams --------------------------------------------------------------------------------------------


def _spool_row(pipeline: Pipeline, event: dict[str, Any]) -> tuple[str, str, bytes, bytes]:
    registry = default_registry(pipeline.settings.base_currency, pipeline.settings.risk_amount_threshold)
    parsed = registry.parse(event)
    value = Envelope.encode_event(parsed, time.time())
    return str(parsed.id), pipeline.settings.topic(event["type"]), parsed.entity_key().encode(), value


def test_a_spooled_row_the_broker_can_never_take_is_dead_lettered_with_its_bytes_and_the_rows_behind_it_drain(
    pipeline: Pipeline,
) -> None:
    prefix = unique_prefix("edge-jam")
    # An envelope the API can no longer spool (over message.max.bytes); its dead letter is its tenant's ('default')
    note = "x" * (pipeline.settings.kafka_message_max_bytes + 100_000)
    payload = {**_action(prefix, 0), "metadata": {"note": note}}
    oversized = Envelope(f"{prefix}:0", "user_action", 1, payload, time.time()).encode()
    good = [_spool_row(pipeline, _action(prefix, n)) for n in range(1, 4)]
    rows = [(f"{prefix}:0", pipeline.settings.topic("user_action"), f"{prefix}-u0".encode(), oversized), *good]
    last_dead = int(pipeline.scalar("SELECT coalesce(max(id), 0) FROM dead_letters"))
    bootstrap, dlq_topic = pipeline.settings.kafka_bootstrap, pipeline.settings.dlq_topic
    dlq_start = high_watermark(bootstrap, dlq_topic, 0)
    seqs = [
        seq
        for (seq,) in pipeline.query(
            "INSERT INTO ingest_spool (event_id, topic, key, value) SELECT * FROM unnest("
            "%s::text[], %s::text[], %s::bytea[], %s::bytea[]) RETURNING seq",
            *[list(column) for column in zip(*rows, strict=True)],
        )
    ]
    assert len(seqs) == 4

    wait_until(
        lambda: pipeline.scalar("SELECT count(*) FROM ingest_spool WHERE seq = ANY(%s)", seqs) == 0,
        60,
        "the spooled rows to leave the spool",
    )
    good_ids = [event_id for event_id, *_ in good]
    wait_until(lambda: _processed(pipeline, good_ids) == 3, 60, "the rows behind the bad one processed")
    ((source, kind, size, reason, partition, offset, tenant),) = pipeline.query(
        """SELECT source, error_kind, length(payload), reason, partition, "offset", tenant FROM dead_letters
            WHERE event_id = %s""",
        f"{prefix}:0",
    )
    assert (source, kind, size, partition, offset) == ("spool", "publish_rejected", len(oversized), None, None)
    assert tenant == "default"
    assert "too large" in reason
    assert dlq_keys(bootstrap, dlq_topic, dlq_start)[f"spool:{seqs[0]}".encode()] >= 1  # also on the DLQ topic

    with httpx.Client(base_url=pipeline.base_url, headers=pipeline.headers, timeout=30) as client:
        listed = client.get("/dead-letters", params={"after": last_dead, "limit": 1000})
        status = client.get(f"/events/{prefix}:0")
    assert listed.status_code == 200, listed.text
    mine = [d for d in listed.json()["items"] if d["event_id"] == f"{prefix}:0"]
    assert len(mine) == 1 and mine[0]["source"] == "spool" and mine[0]["payload_bytes"] == len(oversized)
    assert status.status_code == 200 and status.json()["status"] == "dead_lettered", status.text
    assert status.json()["dead_letter"]["error_kind"] == "publish_rejected"


def test_the_spool_usage_counters_follow_inserts_and_deletes_exactly(pipeline: Pipeline) -> None:
    """Counters and table read in one snapshot, inside a transaction that is rolled back (the drainer never sees it)."""
    check = """
        SELECT (SELECT sum(rows) FROM ingest_spool_usage), (SELECT count(*) FROM ingest_spool),
               (SELECT sum(bytes) FROM ingest_spool_usage),
               (SELECT coalesce(sum(octet_length(value) + coalesce(octet_length(key), 0)), 0) FROM ingest_spool)
    """
    with psycopg.connect(pipeline.direct_db_url, autocommit=False) as conn:
        before = conn.execute(check).fetchone()
        conn.execute(
            "INSERT INTO ingest_spool (event_id, topic, key, value) SELECT 'usage-' || n, 'events.sensor', 'k', "
            "repeat('v', n)::bytea FROM generate_series(1, 50) n"
        )
        added = conn.execute(check).fetchone()
        conn.execute("DELETE FROM ingest_spool WHERE event_id LIKE 'usage-%' AND octet_length(value) <= 20")
        removed = conn.execute(check).fetchone()
        conn.rollback()
    for rows, counted, size, measured in (before, added, removed):
        assert (rows, size) == (counted, measured)
    assert added[0] - before[0] == 50 and added[2] - before[2] == sum(range(1, 51)) + 50
    assert added[0] - removed[0] == 20


# -- no driver text in 503 bodies ------------------------------------------------------------------------------------


def test_503_bodies_carry_an_error_id_and_no_driver_text(pipeline: Pipeline, broker_proxy: FaultProxy) -> None:
    prefix = unique_prefix("edge-503")
    secret = "s3cret-pw"
    nowhere = f"postgresql://postgres:{secret}@127.0.0.1:{free_port()}/eventpipe"  # nothing listens there

    async def scenario() -> list[Any]:
        async with in_process_ingestor(pipeline, spool_url=nowhere) as (ingestor, _):
            replies = [await ingestor.single(orjson.dumps(_action(prefix, n)), JSON) for n in range(2)]
            replies.append(await ingestor.batch(orjson.dumps([_action(prefix, n) for n in range(3, 6)]), JSON))
            return replies

    broker_proxy.blackhole()
    try:
        replies = asyncio.run(scenario())
    finally:
        broker_proxy.heal()
    leaks = (secret, "127.0.0.1", "postgresql", "psycopg", "Error", "refused", "Local:", "timed out", "Errno")
    for reply in replies:
        assert reply.status == 503, reply.body
        assert reply.body["error_id"] and "retry" in reply.body["reason"], reply.body
        text = orjson.dumps(reply.body).decode()
        assert not [leak for leak in leaks if leak in text], text


# -- hostile path ids on the read routes ------------------------------------------------------------------------------

_HOSTILE_READS = [
    "/events/a%00b",
    "/events/a%00b/audit",
    "/users/a%00b/summary",
    "/devices/a%00b/summary",
    "/events/" + "e" * 129,
    "/events/has%20space",
    "/events/%C3%A9t%C3%A9/audit",
    "/users/" + "u" * 129 + "/summary",
]


@pytest.mark.parametrize("path", _HOSTILE_READS)
def test_a_hostile_path_id_on_a_read_route_is_404_before_any_query_never_500(pipeline: Pipeline, path: str) -> None:
    # given ids no event, user or device can have (NUL, over 128 characters, outside the event id pattern)
    # when a read route is asked for them
    reply = httpx.get(pipeline.base_url + path, headers=pipeline.headers, timeout=10)
    # then the answer is the client's fault, not the server's
    assert reply.status_code == 404, reply.text
    assert reply.json()["error"] == "not_found" and "\x00" not in reply.text


def test_an_entity_id_outside_the_event_id_pattern_is_still_looked_up(pipeline: Pipeline) -> None:
    # user and device ids are free text (no NUL, at most 128 characters): a space is a lookup, answered 404 when unknown
    reply = httpx.get(pipeline.base_url + "/users/no%20such%20user/summary", headers=pipeline.headers, timeout=10)
    assert reply.status_code == 404 and "no such user" in reply.json()["reason"], reply.text
