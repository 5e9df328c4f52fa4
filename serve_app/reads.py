"""The read API's answers, for the caller's tenant: an event's status and audit trail, a user's or device's summary,
the dead letters. Another tenant's event, audit, summary or dead letter is a 404, exactly as a missing one.

Path ids are judged before any query (an id no event, user or device can have is a 404, never a driver error), and a
database that does not answer in time is a 503 with an error id and Retry-After; it never puts driver text in a body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from pydantic import TypeAdapter, ValidationError

from cluster.adapters.read_store import ReadStore
from pipelines.schemas import EventId
from serve_app.incidents import Incidents
from serve_app.replies import Reply, database_unavailable

T = TypeVar("T")
_EVENT_ID = TypeAdapter(EventId)  # the schema's own rule: ^[A-Za-z0-9._:-]+$, at most 128 characters
MAX_ENTITY_ID = 128  # user and device ids are free text, but never longer, and never with NUL (PostgreSQL refuses it)
# What a database that does not answer looks like (PoolTimeout is an OperationalError); TimeoutError is our bound.
_UNAVAILABLE = (psycopg.OperationalError, TimeoutError, OSError)


def valid_event_id(event_id: str) -> bool:
    try:
        _EVENT_ID.validate_python(event_id)
    except ValidationError:
        return False
    return True


def valid_entity_id(entity_id: str) -> bool:
    return 0 < len(entity_id) <= MAX_ENTITY_ID and "\x00" not in entity_id


def not_found(what: str, key: str) -> Reply:
    return Reply(404, {"error": "not_found", "reason": f"no {what} {key!r} (yet)"})


def impossible(what: str) -> Reply:
    """An id no such thing can have: answered without a query, and without echoing it."""
    rule = "^[A-Za-z0-9._:-]+$, at most 128 characters" if what == "event" else "at most 128 characters, no NUL"
    return Reply(404, {"error": "not_found", "reason": f"no {what} has such an id ({rule})"})


class Reads:
    def __init__(self, store: Callable[[], Awaitable[ReadStore]], incidents: Incidents, timeout_s: float) -> None:
        self._store = store
        self._incidents = incidents
        self._timeout_s = timeout_s

    async def _query(self, what: str, query: Callable[[ReadStore], Awaitable[T]]) -> T | Reply:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await query(await self._store())
        except _UNAVAILABLE as exc:
            error_id = self._incidents.report(f"read API: the database did not answer ({what})", exc, cause="reads")
            return database_unavailable(error_id)

    async def event(self, tenant: str, event_id: str) -> Reply:
        if not valid_event_id(event_id):
            return impossible("event")
        event = await self._query("event", lambda s: s.event(tenant, event_id))
        if isinstance(event, Reply):
            return event
        return Reply(200, event) if event else not_found("event", event_id)

    async def audit(self, tenant: str, event_id: str) -> Reply:
        if not valid_event_id(event_id):
            return impossible("event")
        rows = await self._query("audit", lambda s: s.audit(tenant, event_id))
        if isinstance(rows, Reply):
            return rows
        return Reply(200, {"event_id": event_id, "transitions": rows}) if rows else not_found("event", event_id)

    async def user(self, tenant: str, user_id: str) -> Reply:
        return await self._summary("user", user_id, lambda s: s.user_summary(tenant, user_id))

    async def device(self, tenant: str, device_id: str) -> Reply:
        return await self._summary("device", device_id, lambda s: s.device_summary(tenant, device_id))

    async def _summary(
        self, what: str, key: str, query: Callable[[ReadStore], Awaitable[dict[str, Any] | None]]
    ) -> Reply:
        if not valid_entity_id(key):
            return impossible(what)
        summary = await self._query(what, query)
        if isinstance(summary, Reply):
            return summary
        return Reply(200, summary) if summary else not_found(what, key)

    async def dead_letters(self, tenant: str, after: int, limit: int) -> Reply:
        items = await self._query("dead letters", lambda s: s.dead_letters(tenant, after, limit))
        return items if isinstance(items, Reply) else Reply(200, {"items": items})
