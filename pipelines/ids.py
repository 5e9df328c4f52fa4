"""Stable event ids: the client's own, one derived from an idempotency key, or one derived from a log position.

Deterministic derivation is what makes a retried request or a re-read record the same event.
"""

from __future__ import annotations

import hashlib
import uuid

from pipelines.access import DEFAULT_TENANT

_NAMESPACE = uuid.UUID("2b6f0cc9-0d5c-4c5f-8a55-0a6d3c4e7f11")
# The idempotency scope every request had before tenants existed. It stays the default tenant's, so a client that
# resends a request across the upgrade gets the ids it got before (and its events are not processed twice).
LEGACY_DEFAULT_SCOPE = "anonymous"


def name_based(namespace: uuid.UUID, name: str) -> str:
    """`str(uuid.uuid5(namespace, name))`, without building UUID objects: a third of the CPU (3.6 vs 12.8 µs here),
    paid per id-less raw record and per user action."""
    digest = bytearray(hashlib.sha1(namespace.bytes + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def from_idempotency_key(scope: str, key: str, index: int | None = None) -> str:
    """The same (scope, key, index) always gives the same id; index numbers the items of a batch."""
    suffix = "" if index is None else f"\x1f{index}"
    return name_based(_NAMESPACE, f"idem\x1f{scope}\x1f{key}{suffix}")


def idempotency_scope(tenant: str) -> str:
    """The scope of a tenant's idempotency-derived ids: two tenants using one Idempotency-Key get different ids. Other
    tenants are prefixed: `:` is no tenant name's character, so none can take the default tenant's legacy scope."""
    return LEGACY_DEFAULT_SCOPE if tenant == DEFAULT_TENANT else f"tenant:{tenant}"


def from_log_position(topic: str, partition: int, offset: int) -> str:
    """For records written straight to the broker without an id: re-reading the record gives the same id."""
    return name_based(_NAMESPACE, f"log\x1f{topic}\x1f{partition}\x1f{offset}")


def new_id() -> str:
    return str(uuid.uuid4())
