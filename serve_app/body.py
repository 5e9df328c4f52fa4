"""Reading a request body under a byte cap and the replica's byte budget: the declared Content-Length is judged (and
taken from the budget) before any byte is read, and a chunked body is read only up to the cap, each chunk taken from
the budget as it arrives.

It never holds more than `limit` bytes of a body, and never reads past the point where the cap or the budget is
exceeded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from serve_app.admission import InflightGate


class BodyTooLarge(Exception):
    """The body exceeded the cap: the rest of it was not read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the body exceeds the {limit}-byte limit")
        self.limit = limit


class OverBudget(Exception):
    """The replica already holds its budget of request-body bytes: the request must come back later (429)."""


class BodyLease:
    """The bytes of one request's body counted against the replica-wide budget (an InflightGate of bytes) until
    released; a body larger than the whole budget is admitted only when no other body is held."""

    def __init__(self, budget: InflightGate) -> None:
        self._budget = budget
        self.held = 0

    def take(self, size: int) -> None:
        if size and not self._budget.try_acquire(size):
            raise OverBudget(f"{self._budget.inflight} body bytes held; {size} more exceed the {self._budget.limit}")
        self.held += size

    def release(self) -> None:
        self._budget.release(self.held)
        self.held = 0


class BadContentLength(ValueError):
    """The Content-Length header is not a non-negative integer."""


def declared_length(header: str | None) -> int | None:
    """The Content-Length a client declared; None when it sent none (a chunked body)."""
    if header is None:
        return None
    value = header.strip()
    if not value.isdigit() or not value.isascii():
        raise BadContentLength(f"Content-Length must be a non-negative integer, got {header[:32]!r}")
    return int(value)


async def read_capped(chunks: AsyncIterator[bytes], limit: int, lease: BodyLease | None = None) -> bytes:
    """The whole body, or BodyTooLarge as soon as more than `limit` bytes arrived; with a `lease`, each chunk is taken
    from the budget as it arrives (OverBudget when it cannot be)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        if lease is not None:
            lease.take(len(chunk))
        if chunk:
            parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)
