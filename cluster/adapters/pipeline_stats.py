"""Read-only PostgreSQL queries behind the hub's gauges: committed offsets per partition, dead letters stored.

One autocommit connection, reopened after a failure; it never writes.
"""

from __future__ import annotations

import logging

import psycopg

log = logging.getLogger(__name__)

_COMMITTED = "SELECT topic, partition, next_offset FROM partition_checkpoints WHERE topic = ANY(%s)"
_DEAD_LETTERS = "SELECT count(*) FROM dead_letters"


class PipelineStats:
    def __init__(self, database_url: str, timeout_s: float = 5.0) -> None:
        self._url = database_url
        self._timeout_s = timeout_s
        self._conn: psycopg.Connection | None = None

    def committed_offsets(self, topics: list[str]) -> dict[tuple[str, int], int]:
        """Next offset to process per partition of `topics` that has a checkpoint row."""
        rows = self._query(_COMMITTED, (topics,))
        return {(str(t), int(p)): int(n) for t, p, n in rows}

    def dead_letter_count(self) -> int:
        return int(self._query(_DEAD_LETTERS, ())[0][0])

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _query(self, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(
                    self._url,
                    autocommit=True,
                    connect_timeout=max(1, int(self._timeout_s)),
                    options=f"-c statement_timeout={int(self._timeout_s * 1000)}",
                )
            return self._conn.execute(sql, params).fetchall()  # type: ignore[arg-type]
        except psycopg.Error:
            self.close()
            raise
