"""Who is asking: tenants, scopes and the principal an API key resolves to. Pure: no I/O.

A key belongs to one tenant; every event, id, read and read model is scoped by that tenant (ADR 0014). The API turns
a request's key into a Principal once, and everything after it (ingest, reads, the rate limiter) takes the Principal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

DEFAULT_TENANT = "default"  # the tenant of rows written before tenants existed, and of the development key
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # fits a Kafka header, a label and a URL without escaping


class Scope(StrEnum):
    INGEST = "ingest"  # POST /events, /events/batch
    READ = "read"  # GET events, audit, summaries, dead letters, schemas
    ADMIN = "admin"  # key management, dead-letter replay


def valid_tenant(name: str) -> bool:
    return bool(TENANT_PATTERN.fullmatch(name))  # fullmatch: `$` alone would admit a trailing newline


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated API key: what it may do, for whom, and how often."""

    key_id: str  # the key's public id (stored, logged, a metric label's source); never the secret
    name: str
    tenant: str
    scopes: frozenset[Scope]
    requests_per_minute: int
    events_per_minute: int | None = None  # None: no limit on events, only on requests

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes
