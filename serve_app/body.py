"""Reading a request body under a byte cap: the declared Content-Length is judged before any byte is read, and a
chunked body is read only up to the cap.

It never holds more than `limit` bytes of a body, and never reads past the point where the cap is exceeded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator


class BodyTooLarge(Exception):
    """The body exceeded the cap: the rest of it was not read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the body exceeds the {limit}-byte limit")
        self.limit = limit


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


async def read_capped(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The whole body, or BodyTooLarge as soon as more than `limit` bytes arrived."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        if chunk:
            parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)
