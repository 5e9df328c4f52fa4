"""A local fake of the merchant enrichment service (test fixture, not product): a threaded stdlib HTTP server.

It serves a fixed set of merchants and can be switched at run time to `up`, `down` (stops listening: connection
refused) or `slow` (answers after a delay). It keeps no state besides its mode and request counters.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

MERCHANTS: Mapping[str, Mapping[str, str]] = {
    m["id"]: m
    for m in (
        {"id": "m-coffee", "name": "Corner Coffee", "category": "food_and_drink", "country": "US"},
        {"id": "m-books", "name": "Paper Trail Books", "category": "retail", "country": "GB"},
        {"id": "m-rail", "name": "Nordbahn", "category": "transport", "country": "DE"},
        {"id": "m-hotel", "name": "Hotel Lumen", "category": "travel", "country": "FR"},
        {"id": "m-cloud", "name": "Nimbus Compute", "category": "software", "country": "US"},
        {"id": "m-grocer", "name": "Green Basket", "category": "groceries", "country": "CA"},
        {"id": "m-sushi", "name": "Sushi Kaito", "category": "food_and_drink", "country": "JP"},
        {"id": "m-watch", "name": "Uhrwerk Genf", "category": "retail", "country": "CH"},
    )
}


class Mode(StrEnum):
    UP = "up"
    DOWN = "down"
    SLOW = "slow"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], service: FakeEnrichmentService) -> None:
        self.service = service
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out closed its socket while we were slow: expected, not worth a traceback.
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if not self.path.startswith("/merchants/"):
            self._send(404, {"error": "not_found"})
            return
        merchant_id = unquote(self.path.removeprefix("/merchants/"))
        service = self.server.service
        service._arrived([merchant_id])
        merchant = service.merchants.get(merchant_id)
        if merchant is None:
            self._send(404, {"error": "unknown_merchant", "id": merchant_id})
        else:
            self._send(200, dict(merchant))

    def do_POST(self) -> None:
        if self.path != "/merchants/lookup":
            self._send(404, {"error": "not_found"})
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            ids = [str(i) for i in body["ids"]]
        except (ValueError, KeyError, TypeError) as exc:
            self._send(400, {"error": "bad_request", "reason": str(exc)})
            return
        service = self.server.service
        service._arrived(ids)
        found = [dict(service.merchants[i]) for i in ids if i in service.merchants]
        self._send(200, {"merchants": found, "unknown": [i for i in ids if i not in service.merchants]})


class FakeEnrichmentService:
    """`GET /merchants/{id}` and `POST /merchants/lookup` for `merchants`, on 127.0.0.1 at a port kept across
    down/up; use as a context manager, switch with up()/down()/slow(s) or the while_* context managers."""

    def __init__(self, merchants: Mapping[str, Mapping[str, str]] = MERCHANTS, host: str = "127.0.0.1") -> None:
        self.merchants = merchants
        self._host = host
        self._port = 0
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._mode = Mode.UP
        self._delay_s = 0.0
        self._release = threading.Event()  # set: slow requests answer now
        self._requests = 0
        self._ids_asked: list[str] = []

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> FakeEnrichmentService:
        self._listen()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._close()

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("the fake enrichment service has not been started")
        return f"http://{self._host}:{self._port}"

    # -- modes ----------------------------------------------------------------------------------
    @property
    def mode(self) -> Mode:
        return self._mode

    def up(self) -> None:
        self._mode, self._delay_s = Mode.UP, 0.0
        self._release.set()
        self._listen()

    def down(self) -> None:
        """Stop listening: new connections are refused until up()."""
        self._mode = Mode.DOWN
        self._release.set()
        self._close()

    def slow(self, seconds: float) -> None:
        """Answer every request only after `seconds`."""
        self._release.clear()
        self._mode, self._delay_s = Mode.SLOW, seconds
        self._listen()

    @contextmanager
    def while_down(self) -> Iterator[None]:
        self.down()
        try:
            yield
        finally:
            self.up()

    @contextmanager
    def while_slow(self, seconds: float) -> Iterator[None]:
        self.slow(seconds)
        try:
            yield
        finally:
            self.up()

    # -- what it was asked ----------------------------------------------------------------------
    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    @property
    def ids_asked(self) -> list[str]:
        with self._lock:
            return list(self._ids_asked)

    def reset_counters(self) -> None:
        with self._lock:
            self._requests, self._ids_asked = 0, []

    # -- internals ------------------------------------------------------------------------------
    def _arrived(self, ids: list[str]) -> None:
        with self._lock:
            self._requests += 1
            self._ids_asked.extend(ids)
            delay = self._delay_s if self._mode is Mode.SLOW else 0.0
        if delay:
            self._release.wait(delay)

    def _listen(self) -> None:
        with self._lock:
            if self._server is not None:
                return
            server = _Server((self._host, self._port), self)
            self._port = server.server_address[1]
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever, args=(0.05,), name="fake-enrichment", daemon=True
            )  # a short poll interval: down() returns within 50 ms
            self._thread.start()

    def _close(self) -> None:
        with self._lock:
            server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(5)
