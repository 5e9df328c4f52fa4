"""The tenants table, read for a partition owner's cache of known tenants (pipelines.tenants.KnownTenants).

One connection, opened on first use and again after it broke; read-only, one small query per refresh. It never
decides whether a record's tenant is known (the cache does) and never writes.
"""

from __future__ import annotations

import psycopg

_NAMES = "SELECT name FROM tenants"


class TenantDirectory:
    def __init__(self, database_url: str, connect_timeout_s: int = 5) -> None:
        self._url = database_url
        self._connect_timeout_s = connect_timeout_s
        self._conn: psycopg.Connection | None = None

    def names(self) -> list[str]:
        """Every tenant's name; raises psycopg errors when PostgreSQL cannot answer (the next call reconnects)."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=self._connect_timeout_s)
            return [row[0] for row in self._conn.execute(_NAMES)]
        except psycopg.Error:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
