"""PostgreSQL side of API keys (table api_keys, migration 010): create, list, revoke, load the active ones, record use.

It stores a key's public id and hash only, never the key; it returns no hash to a caller but the replicas' key ring.
Every statement is a constant; values travel only as parameters.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import psycopg

from pipelines.access import Principal, Scope, valid_tenant
from pipelines.api_keys import KEY_NAME_PATTERN, ActiveKey, IssuedKey, issue_key, parse_key

_COLUMNS = "key_id, name, tenant, scopes, requests_per_minute, events_per_minute, created_at, last_used_at, revoked_at"
_ADD_TENANT = "INSERT INTO tenants (name) VALUES (%s) ON CONFLICT (name) DO NOTHING"
_CREATE = f"""
INSERT INTO api_keys (key_id, name, tenant, key_hash, scopes, requests_per_minute, events_per_minute)
VALUES (%s, %s, %s, %s, %s, %s, %s)
RETURNING {_COLUMNS}
"""
_LIST = f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, name"
_REVOKE = f"""
UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE name = %s RETURNING {_COLUMNS}
"""
# A key replaced under its name (the development key after its file or database was lost): revoked, and renamed
# `<name>-<key id>` so the name is free again and the history stays.
_RETIRE = """
UPDATE api_keys SET name = name || '-' || key_id, revoked_at = coalesce(revoked_at, now()) WHERE name = %s
"""
_ACTIVE = f"SELECT key_hash, {_COLUMNS} FROM api_keys WHERE revoked_at IS NULL"
_IS_ACTIVE = "SELECT 1 FROM api_keys WHERE key_id = %s AND key_hash = %s AND revoked_at IS NULL"
# Use is recorded in batches (a replica's refresh timer), never per request; an older time never overwrites a newer.
_TOUCH = """
UPDATE api_keys SET last_used_at = greatest(coalesce(last_used_at, 'epoch'::timestamptz), now())
 WHERE key_id = ANY(%s)
"""


class KeyNameTaken(Exception):
    """A key of that name exists (revoked keys keep their names)."""


class UnknownKeyName(Exception):
    """No key has that name."""


@dataclass(frozen=True)
class KeyRecord:
    """A key as `keys list` shows it: everything but the secret and its hash."""

    key_id: str
    name: str
    tenant: str
    scopes: frozenset[Scope]
    requests_per_minute: int
    events_per_minute: int | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: tuple) -> KeyRecord:  # type: ignore[type-arg]
        key_id, name, tenant, scopes, rpm, epm, created, used, revoked = row
        return cls(key_id, name, tenant, frozenset(Scope(s) for s in scopes), rpm, epm, created, used, revoked)

    def principal(self) -> Principal:
        return Principal(
            self.key_id, self.name, self.tenant, self.scopes, self.requests_per_minute, self.events_per_minute
        )


def check_new_key(name: str, tenant: str, requests_per_minute: int, events_per_minute: int | None) -> None:
    """Raises ValueError saying what is wrong with a key about to be created (before any database work)."""
    if not KEY_NAME_PATTERN.fullmatch(name):
        raise ValueError(f"key name {name!r} must match {KEY_NAME_PATTERN.pattern}")
    if not valid_tenant(tenant):
        raise ValueError(f"tenant {tenant!r} must be 1-63 lowercase letters, digits or '-', starting with no '-'")
    if requests_per_minute < 1 or (events_per_minute is not None and events_per_minute < 1):
        raise ValueError("limits per minute must be at least 1")


class KeyStore:
    """One connection, opened on first use and again after it broke; safe to call from one thread at a time (a lock
    serialises callers)."""

    def __init__(self, database_url: str, connect_timeout_s: float = 5.0) -> None:
        self._url = database_url
        self._timeout = max(1, round(connect_timeout_s))
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            # a statement bound too: a replica's reload must never hang its refresh timer on a wedged connection
            options = f"-c statement_timeout={self._timeout * 1000}"
            self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=self._timeout, options=options)
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def create(
        self,
        name: str,
        tenant: str,
        scopes: frozenset[Scope],
        requests_per_minute: int = 1000,
        events_per_minute: int | None = None,
        issue: Callable[[], IssuedKey] = issue_key,
    ) -> tuple[IssuedKey, KeyRecord]:
        """A new key for `tenant` (created if new). Raises ValueError for a bad name, tenant or limit, KeyNameTaken."""
        check_new_key(name, tenant, requests_per_minute, events_per_minute)
        issued = issue()
        params = (issued.key_id, name, tenant, issued.key_hash, sorted(scopes), requests_per_minute, events_per_minute)
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    conn.execute(_ADD_TENANT, (tenant,))
                    row = conn.execute(_CREATE, params).fetchone()
            except psycopg.errors.UniqueViolation as exc:
                if exc.diag.constraint_name == "api_keys_name_key":
                    raise KeyNameTaken(f"a key named {name!r} exists (revoked keys keep their names)") from None
                raise
        if row is None:
            raise RuntimeError("INSERT … RETURNING returned no row")
        return issued, KeyRecord.from_row(row)

    def list(self) -> list[KeyRecord]:
        with self._lock:
            return [KeyRecord.from_row(r) for r in self._connection().execute(_LIST).fetchall()]

    def revoke(self, name: str) -> KeyRecord:
        """Revoke the key named `name` (a revoked key stays revoked, at its first time). Raises UnknownKeyName."""
        with self._lock:
            row = self._connection().execute(_REVOKE, (name,)).fetchone()
        if row is None:
            raise UnknownKeyName(f"no key is named {name!r}")
        return KeyRecord.from_row(row)

    def retire(self, name: str) -> bool:
        """Revoke the key named `name` and free its name (renamed `<name>-<key id>`); False when none has it."""
        with self._lock:
            return self._connection().execute(_RETIRE, (name,)).rowcount > 0

    def active(self) -> list[ActiveKey]:
        """Every key not revoked, as a replica's key ring holds them."""
        with self._lock:
            rows = self._connection().execute(_ACTIVE).fetchall()
        return [ActiveKey(bytes(r[0]), KeyRecord.from_row(r[1:]).principal()) for r in rows]

    def is_active(self, key: str) -> bool:
        """Whether `key` (the text) is a well-formed key stored here and not revoked."""
        presented = parse_key(key)
        if presented is None:
            return False
        with self._lock:
            row = self._connection().execute(_IS_ACTIVE, (presented.key_id, presented.key_hash)).fetchone()
        return row is not None

    def touch(self, key_ids: Iterable[str]) -> None:
        """Record that these keys were used (now)."""
        ids = sorted(set(key_ids))
        if ids:
            with self._lock:
                self._connection().execute(_TOUCH, (ids,))
