"""The order of work before an ingestion request's body is handled: the replica's start (503 when it does not finish
in time), the replica-wide budget of body bytes (429), then the body under its cap and time bound (413, 408).

It never blames the client (408) for the server's slow start, and never reads a body the budget cannot hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from serve_app import replies
from serve_app.body import BodyLease, BodyTooLarge, OverBudget, read_capped
from serve_app.incidents import Incidents
from serve_app.ingest import Reply, RequestMeta


async def receive(
    chunks: AsyncIterator[bytes],
    meta: RequestMeta,
    limit: int,
    lease: BodyLease,
    started: Callable[[], Awaitable[None]],
    incidents: Incidents,
) -> bytes | Reply:
    """The body, or the answer that ends the request. `meta.deadline` (event-loop time) bounds it all; the caller
    releases `lease` once the request is answered (the body is held until then)."""
    if meta.deadline is None:
        raise ValueError("receive needs the request's deadline")
    try:
        async with asyncio.timeout_at(meta.deadline):
            await started()
    except TimeoutError:
        return replies.not_started(incidents.report("the replica did not finish starting in time", cause="starting"))
    try:
        if meta.content_length is not None:
            lease.take(meta.content_length)  # before any byte is read
        async with asyncio.timeout_at(meta.deadline):
            return await read_capped(chunks, limit, None if meta.content_length is not None else lease)
    except OverBudget:
        return replies.bodies_over_budget()
    except BodyTooLarge:
        return replies.body_too_large(limit)
    except TimeoutError:
        # Nothing was taken yet: the client may send the same request again as it is.
        return replies.error(408, "request_timeout", "the body did not arrive in time; nothing was taken")
