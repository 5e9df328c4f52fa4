"""ASGI middleware counting every answered request in `http_requests_total{route,method,status}`.

The route label is the matched route's template (`/events/{event_id}`), never the raw path, so ids in URLs cannot
create series; it only observes requests and never changes them.
"""

from __future__ import annotations

from typing import Any

from cluster.observability.metrics import METRICS, Metrics

UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

Scope = dict[str, Any]
Message = dict[str, Any]


class RequestMetrics:
    def __init__(self, app: Any, metrics: Metrics = METRICS) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        status = 500  # unless the app starts an answer: an exception becomes a 500 further out

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, observe)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED  # set by FastAPI's router on a match
            method = scope.get("method", "")
            self._metrics.http_requests.labels(route, method if method in _METHODS else "other", str(status)).inc()
