"""A corpus of hostile requests through the real API, each with its expected 4xx and nothing stored: parser attacks
(10^5-deep nesting, NaN/Infinity/1e400, invalid UTF-8, lone surrogates, duplicate keys), values the domain cannot hold
(40-digit amounts, NUL in strings and keys, timestamps in year 0 and 9999 and with odd offsets, ids that differ only
by Unicode normalisation), compressed bodies and gzip bombs (415: only identity is taken), bodies of 10 and 100 MB
refused while the client is still sending, and header floods answered 4xx or cut, never 5xx or a hang.

tests/integration/test_hostile_http.py and test_edge_bounds_http.py hold the neighbouring cases (declared and chunked
bodies over the limit, per-event record bounds, hostile read paths, physical bounds); this file does not repeat them.
"""

from __future__ import annotations

import gzip
import select
import socket
import time
import unicodedata
import zlib
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.test_hostile_http import _connect
from tests.pipeline import Pipeline, unique_prefix, wait_until

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).isoformat()
_CHUNK = 64 * 1024
PACE_S = 0.005  # between two chunks of a large body


def _action(event_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": event_id, "type": "user_action", "timestamp": NOW, "user_id": "u", "action": "click",
            "target": "t", **fields}  # fmt: skip


def _sensor_with(event_id: str, reading: bytes) -> bytes:
    """A sensor event whose reading is the literal JSON text `reading` (which orjson could not write)."""
    head = orjson.dumps({"id": event_id, "type": "sensor", "timestamp": NOW, "device_id": "d", "unit": "C",
                         "location": {"lat": 0.0, "lon": 0.0}})  # fmt: skip
    return head[:-1] + b',"reading":' + reading + b"}"


def _tx_text(event_id: str, amount: bytes) -> bytes:
    head = orjson.dumps({"id": event_id, "type": "transaction", "timestamp": NOW, "user_id": "u", "currency": "USD"})
    return head[:-1] + b',"amount":' + amount + b"}"


def _nested(event_id: str, depth: int) -> bytes:
    head = orjson.dumps(_action(event_id))
    return b"[" + head[:-1] + b',"metadata":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}]"


def _nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def corpus(prefix: str) -> list[tuple[str, str, bytes, dict[str, str], int, str, str | None]]:
    """(label, path, body, extra headers, status, error code, the field a 422 must name)."""
    ids = iter(f"{prefix}-{n}" for n in range(1000))
    json = {"Content-Type": "application/json"}
    bomb = gzip.compress(b"[" + b" " * (100 * 1024 * 1024) + b"]", compresslevel=9)  # 100 MiB of whitespace
    assert len(bomb) < 200_000

    def body(event: dict[str, Any]) -> bytes:
        return orjson.dumps(event)

    return [
        ("nesting 10^5 deep", "/events/batch", _nested(next(ids), 100_000), json, 400, "malformed_json", None),
        ("NaN", "/events", _sensor_with(next(ids), b"NaN"), json, 400, "malformed_json", None),
        ("Infinity", "/events", _sensor_with(next(ids), b"Infinity"), json, 400, "malformed_json", None),
        ("-Infinity", "/events", _sensor_with(next(ids), b"-Infinity"), json, 400, "malformed_json", None),
        ("1e400", "/events", _sensor_with(next(ids), b"1e400"), json, 400, "malformed_json", None),
        ("40-digit amount", "/events", _tx_text(next(ids), b"1" * 40), json, 422, "validation_failed", "amount"),
        (
            "40-digit amount text",
            "/events",
            _tx_text(next(ids), b'"' + b"9" * 40 + b'"'),
            json,
            422,
            "validation_failed",
            "amount",
        ),  # fmt: skip
        (
            "invalid UTF-8",
            "/events",
            body(_action(next(ids), target="x"))[:-2] + b'\xff\xfe"}',
            json,
            400,
            "malformed_json",
            None,
        ),  # fmt: skip
        (
            "UTF-8-encoded surrogate",
            "/events",
            body(_action(next(ids), target="x"))[:-2] + b'\xed\xa0\x80"}',
            json,
            400,
            "malformed_json",
            None,
        ),  # fmt: skip
        (
            "lone surrogate escape",
            "/events",
            body(_action(next(ids), target="x"))[:-2] + b'\\ud800"}',
            json,
            400,
            "malformed_json",
            None,
        ),  # fmt: skip
        (
            "NUL in a string",
            "/events",
            body(_action(next(ids), user_id="a\x00b")),
            json,
            422,
            "validation_failed",
            "user_id",
        ),  # fmt: skip
        (
            "NUL in a metadata key",
            "/events",
            body(_action(next(ids), metadata={"k\x00": 1})),
            json,
            422,
            "validation_failed",
            "metadata",
        ),  # fmt: skip
        (
            "NUL in a metadata value",
            "/events",
            body(_action(next(ids), metadata={"k": "v\x00"})),
            json,
            422,
            "validation_failed",
            "metadata",
        ),  # fmt: skip
        (
            "NUL in a field name",
            "/events",
            body({**_action(next(ids)), "target\x00": "t"}),
            json,
            422,
            "validation_failed",
            None,
        ),  # fmt: skip
        (
            "duplicate amount",
            "/events",
            _tx_text(next(ids), b'"1.00","amount":"9000.00"'),
            json,
            400,
            "malformed_json",
            None,
        ),  # fmt: skip
        (
            "duplicate id",
            "/events",
            body(_action(next(ids)))[:-1] + f',"id":"{prefix}-dup"}}'.encode(),
            json,
            400,
            "malformed_json",
            None,
        ),  # fmt: skip
        (
            "gzip-encoded body",
            "/events",
            gzip.compress(body(_action(next(ids)))),
            {**json, "Content-Encoding": "gzip"},
            415,
            "unsupported_media_type",
            None,
        ),  # fmt: skip
        (
            "gzip bomb",
            "/events/batch",
            bomb,
            {**json, "Content-Encoding": "gzip"},
            415,
            "unsupported_media_type",
            None,
        ),  # fmt: skip
        (
            "deflate-encoded body",
            "/events",
            zlib.compress(body(_action(next(ids)))),
            {**json, "Content-Encoding": "deflate"},
            415,
            "unsupported_media_type",
            None,
        ),  # fmt: skip
        (
            "brotli-labelled body",
            "/events",
            body(_action(next(ids))),
            {**json, "Content-Encoding": "br"},
            415,
            "unsupported_media_type",
            None,
        ),  # fmt: skip
        (
            "year 0",
            "/events",
            body(_action(next(ids), timestamp="0000-01-01T00:00:00Z")),
            json,
            422,
            "validation_failed",
            "timestamp",
        ),  # fmt: skip
        (
            "year 9999",
            "/events",
            body(_action(next(ids), timestamp="9999-12-31T23:59:59Z")),
            json,
            422,
            "validation_failed",
            "timestamp",
        ),  # fmt: skip
        (
            "9999 at -23:59 (past year 9999 in UTC)",
            "/events",
            body(_action(next(ids), timestamp="9999-12-31T23:59:59-23:59")),
            json,
            422,
            "validation_failed",
            "timestamp",
        ),  # fmt: skip
        (
            "year 1 at +23:59 (before year 1 in UTC)",
            "/events",
            body(_action(next(ids), timestamp="0001-01-01T00:00:00+23:59")),
            json,
            422,
            "validation_failed",
            "timestamp",
        ),  # fmt: skip
        (
            "offset +24:00",
            "/events",
            body(_action(next(ids), timestamp="2026-11-30T06:00:00+24:00")),
            json,
            422,
            "validation_failed",
            "timestamp",
        ),  # fmt: skip
        (
            "offset with seconds",
            "/events",
            body(_action(next(ids), timestamp="2026-11-30T06:00:00+00:00:30")),
            json,
            422,
            "validation_failed",
            "timestamp",
        ),  # fmt: skip
        (
            "leap second",
            "/events",
            body(_action(next(ids), timestamp="2026-06-30T23:59:60Z")),
            json,
            422,
            "validation_failed",
            "timestamp",
        ),  # fmt: skip
        (
            "hour 24",
            "/events",
            body(_action(next(ids), timestamp="2026-11-30T24:00:00Z")),
            json,
            422,
            "validation_failed",
            "timestamp",
        ),  # fmt: skip
        (
            "user id in NFD",
            "/events",
            body(_action(next(ids), user_id=_nfd("café"))),
            json,
            422,
            "validation_failed",
            "user_id",
        ),  # fmt: skip
        (
            "device id in NFD",
            "/events",
            _sensor_with(next(ids), b"1.0").replace(b'"d"', _nfd('"Å"').encode()),
            json,
            422,
            "validation_failed",
            "device_id",
        ),  # fmt: skip
        (
            "correlation id in NFD",
            "/events",
            body(_action(next(ids), correlation_id=_nfd("é"))),
            json,
            422,
            "validation_failed",
            "correlation_id",
        ),  # fmt: skip
        ("event id outside ASCII", "/events", body(_action(f"{prefix}-café")), json, 422, "validation_failed", "id"),
    ]


def _stored(pipeline: Pipeline, prefix: str) -> dict[str, int]:
    like = prefix + "-%"
    counts = {
        "events": pipeline.scalar("SELECT count(*) FROM events WHERE id LIKE %s", like),
        "ingest_spool": pipeline.scalar("SELECT count(*) FROM ingest_spool WHERE event_id LIKE %s", like),
        "dead_letters": pipeline.scalar("SELECT count(*) FROM dead_letters WHERE event_id LIKE %s", like),
    }
    return {table: int(n) for table, n in counts.items() if n}


def test_each_hostile_request_gets_its_4xx_and_nothing_is_stored(pipeline: Pipeline, api_headers: dict[str, str]):
    # given a corpus of hostile requests, every event in it carrying an id under one prefix
    prefix = unique_prefix("corpus")
    cases = corpus(prefix)
    answers: list[str] = []
    # when each is sent
    with httpx.Client(base_url=pipeline.base_url, timeout=30, headers=api_headers) as client:
        for label, path, content, headers, status, code, field in cases:
            r = client.post(path, content=content, headers=headers)
            # then it is refused with its status and code, naming the field when it is a field's fault
            body = r.json()
            answers.append(f"{label}: {r.status_code} {body.get('error')}")
            assert (r.status_code, body.get("error")) == (status, code), (label, r.text[:300])
            assert body.get("reason"), (label, body)
            if field is not None:
                assert field in [e["loc"] for e in body["errors"]], (label, body)
        # and after a valid event under the same prefix is processed, nothing else under it was stored
        sentinel = f"{prefix}-sentinel"
        assert client.post("/events", json=_action(sentinel)).status_code == 202
    wait_until(
        lambda: pipeline.query("SELECT status FROM events WHERE id = %s", sentinel) == [("processed",)],
        60,
        "the sentinel processed",
    )
    stored = _stored(pipeline, prefix)
    assert stored == {"events": 1}, stored
    print(f"\nhostile corpus: {len(cases)} requests refused as expected")


# -- raw HTTP: bodies refused before they are read whole, header floods, slow bodies -----------------------------


def _answer(sock: socket.socket, timeout_s: float) -> tuple[int | None, bytes]:
    """The status and head of the answer, or None when the server closed or reset the connection without one."""
    sock.settimeout(timeout_s)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    if not data.startswith(b"HTTP/"):
        return None, data
    return int(data.split(b" ", 2)[1]), data.partition(b"\r\n\r\n")[0]


def _lines(headers: dict[str, str]) -> list[str]:
    return [f"{name}: {value}" for name, value in headers.items()]


def _head(path: str, length: int | None, extra: list[str] | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: eventpipe", "Content-Type: application/json", *(extra or [])]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize("size", [10 * 1024 * 1024, 100 * 1024 * 1024], ids=["10MB", "100MB"])
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_huge_body_is_refused_413_before_the_client_has_sent_it(
    pipeline: Pipeline, api_headers: dict[str, str], size: int, declared: bool
):
    # given a client that starts sending a body far over max_body_bytes, declared or chunked
    piece = b" " * _CHUNK
    frame = piece if declared else f"{_CHUNK:x}\r\n".encode() + piece + b"\r\n"
    sent = 0
    started = time.monotonic()
    with _connect(pipeline) as sock:
        sock.sendall(_head("/events/batch", size if declared else None, _lines(api_headers)))
        # when it keeps sending (paced at ~13 MB/s, so socket buffers do not swallow megabytes unseen) until an
        # answer is waiting, or the server stops taking bytes
        while sent < size and not select.select([sock], [], [], PACE_S)[0]:
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += _CHUNK
        status, head = _answer(sock, 10)
    # then the answer is 413, and it came while most of the body was still unsent: the server did not read it
    took = time.monotonic() - started
    print(f"\n{size} bytes, {'declared' if declared else 'chunked'}: {status} after {sent} bytes sent, {took:.2f}s")
    assert status == 413, head
    assert sent < size // 2, f"{sent} of {size} bytes sent before the answer"
    assert took < 60


@pytest.mark.parametrize(
    "extra",
    [
        [f"X-Flood-{n}: {n}" for n in range(10_000)],
        ["X-Big: " + "a" * (64 * 1024)],
        ["X-Big: " + "a" * (1024 * 1024)],
        ["Idempotency-Key: " + "k" * (1024 * 1024)],
    ],
    ids=["10000-headers", "64KiB-value", "1MiB-value", "1MiB-idempotency-key"],
)
def test_a_header_flood_is_answered_4xx_or_cut_never_5xx_or_a_hang(
    pipeline: Pipeline, api_headers: dict[str, str], extra: list[str]
):
    body = orjson.dumps(_action(unique_prefix("flood")))
    started = time.monotonic()
    with _connect(pipeline) as sock:
        try:
            sock.sendall(_head("/events", len(body), _lines(api_headers) + extra) + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading the headers: its answer, if any, is waiting
        status, head = _answer(sock, 15)
    took = time.monotonic() - started
    print(f"\n{len(extra)} header(s), {sum(map(len, extra))} bytes: {status or 'cut'} after {took:.2f}s")
    assert took < 15
    assert status is None or 400 <= status < 500, head[:300]
    # and the API still answers everyone else
    assert httpx.get(f"{pipeline.base_url}/healthz", timeout=10).status_code == 200


SLOW_CLIENTS = 300  # more than the replica's max_ongoing_requests (256): held workers would starve everyone else


def test_slow_bodies_are_cut_off_within_the_request_bound_and_hold_no_worker(
    pipeline: Pipeline, api_headers: dict[str, str]
):
    # given 300 clients that each declare a 1000-byte body and send it one byte a second
    bound = pipeline.settings.request_timeout_s
    prefix = unique_prefix("slow")
    slow = [_connect(pipeline) for _ in range(SLOW_CLIENTS)]
    for sock in slow:
        sock.sendall(_head("/events", 1000, _lines(api_headers)))
    started = time.monotonic()
    ended: dict[socket.socket, tuple[int | None, float]] = {}
    latencies: list[float] = []
    with httpx.Client(base_url=pipeline.base_url, timeout=30, headers=api_headers) as client:
        next_drip = started
        while len(ended) < len(slow) and time.monotonic() - started < bound + 20:
            if time.monotonic() >= next_drip:
                next_drip += 1.0
                for sock in slow:
                    if sock not in ended:
                        try:
                            sock.send(b" ")
                        except OSError:
                            ended[sock] = (None, time.monotonic() - started)  # cut by the server
                # when another client sends an event meanwhile, once a second
                sent = time.monotonic()
                r = client.post("/events", json=_action(f"{prefix}-{len(latencies)}"))
                latencies.append(time.monotonic() - sent)
                assert r.status_code == 202, r.text
            pending = [sock for sock in slow if sock not in ended]
            for sock in select.select(pending, [], [], 0.2)[0] if pending else []:
                status, _ = _answer(sock, 2)
                ended[sock] = (status, time.monotonic() - started)
    for sock in slow:
        sock.close()
    # then every slow client was answered 408 or cut, within the request bound (and a margin for 2 busy cores)
    statuses = sorted({str(status) for status, _ in ended.values()})
    last = max((at for _, at in ended.values()), default=float("inf"))
    print(f"\nslow bodies: {len(ended)}/{SLOW_CLIENTS} ended ({statuses}) by {last:.1f}s (bound {bound:g}s); "
          f"{len(latencies)} other requests, slowest {max(latencies):.2f}s")  # fmt: skip
    assert len(ended) == SLOW_CLIENTS
    assert all(status in (408, None) for status, _ in ended.values()), statuses
    assert last <= bound + 10
    # and the other client's events were all answered promptly: no worker was held by the slow ones
    assert len(latencies) >= bound / 2 and max(latencies) < 5.0, latencies
