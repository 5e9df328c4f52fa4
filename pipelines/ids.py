"""Stable event ids: the client's own, one derived from an idempotency key, or one derived from a log position.

Deterministic derivation is what makes a retried request or a re-read record the same event.
"""

from __future__ import annotations

import uuid

_NAMESPACE = uuid.UUID("2b6f0cc9-0d5c-4c5f-8a55-0a6d3c4e7f11")


def from_idempotency_key(scope: str, key: str, index: int | None = None) -> str:
    """The same (scope, key, index) always gives the same id; index numbers the items of a batch."""
    suffix = "" if index is None else f"\x1f{index}"
    return str(uuid.uuid5(_NAMESPACE, f"idem\x1f{scope}\x1f{key}{suffix}"))


def from_log_position(topic: str, partition: int, offset: int) -> str:
    """For records written straight to the broker without an id: re-reading the record gives the same id."""
    return str(uuid.uuid5(_NAMESPACE, f"log\x1f{topic}\x1f{partition}\x1f{offset}"))


def new_id() -> str:
    return str(uuid.uuid4())
