"""The metrics hub's HTTP server: `/metrics` (Prometheus text format) and any extra pages (the live status page).

A small threaded stdlib server, started and stopped by its owner; it renders nothing itself (the callables it is given
do) and never binds a port other than the one configured (0: a free one, reported by `address`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
# A page answers (content type, body) for a path it serves, None for any other; it may read the metrics text.
Page = Callable[[str, Callable[[], str]], tuple[str, bytes] | None]

_INDEX = (
    b"<!doctype html><title>eventpipe metrics</title><h1>eventpipe</h1><ul>"
    b'<li><a href="/metrics">/metrics</a>: Prometheus scrape target of the whole cluster</li>'
    b'<li><a href="/status">/status</a>: live status page</li></ul>'
)


class MetricsEndpoint:
    def __init__(self, host: str, port: int, render: Callable[[], bytes], pages: Sequence[Page] = ()) -> None:
        self._host = host
        self._port = port
        self._render = render
        self._pages = list(pages)
        self._server: ThreadingHTTPServer | None = None

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) once bound."""
        if self._server is None:
            return None
        return self._host, int(self._server.server_address[1])

    def start(self) -> bool:
        """Bind and serve in a daemon thread; False (logged) when the port is taken, so the caller may try later."""
        if self._server is not None:
            return True
        try:
            server = ThreadingHTTPServer((self._host, self._port), self._handler())
        except OSError as exc:
            log.error("metrics endpoint cannot bind %s:%d: %s", self._host, self._port, exc)
            return False
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
        log.info("metrics endpoint on http://%s:%d%s", self._host, self.address[1], METRICS_PATH)  # type: ignore[index]
        return True

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def answer(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of `path`."""
        route = path.split("?", 1)[0]
        if route == METRICS_PATH:
            return 200, CONTENT_TYPE_LATEST, self._render()
        if route in ("", "/"):
            return 200, "text/html; charset=utf-8", _INDEX
        for page in self._pages:
            found = page(path, lambda: self._render().decode())
            if found is not None:
                return 200, found[0], found[1]
        return 404, "text/plain; charset=utf-8", b"not found\n"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                try:
                    status, ctype, body = endpoint.answer(self.path)
                except Exception:  # noqa: BLE001 - one failed render answers 500; the server keeps serving
                    log.exception("rendering %s failed", self.path)
                    status, ctype, body = 500, "text/plain; charset=utf-8", b"internal error\n"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the signature http.server uses
                log.debug("metrics http: " + format, *args)

        return Handler
