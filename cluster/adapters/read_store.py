"""Read side: event status, audit trail, dead letters and the read models, from PostgreSQL, for one tenant at a time.

Read-only queries with parameters; it never writes, and no query answers with another tenant's rows: every one
filters on the tenant it is given (another tenant's event reads exactly as a missing one).
"""

from __future__ import annotations

from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from pipelines.outcome import Outcome

_EVENT = """
SELECT e.id, e.type, e.schema_version, e.status, e.topic, e.partition, e."offset", e.entity_key,
       e.correlation_id, e.causation_id, e.parent_ids, e.idempotency_key, e.payload, e.received_at,
       e.consumed_at, e.committed_at, e.attempts, r.result
  FROM events e LEFT JOIN results r ON r.tenant = e.tenant AND r.event_id = e.id
 WHERE e.tenant = %s AND e.id = %s
"""
_AUDIT = """
SELECT from_status, to_status, at, actor, detail FROM audit_log WHERE tenant = %s AND event_id = %s ORDER BY at, id
"""
_DEAD_FOR_EVENT = """
SELECT error_kind, reason, attempts, created_at FROM dead_letters WHERE tenant = %s AND event_id = %s ORDER BY id
"""
_USER_TOTALS = """
SELECT base_currency, total_amount::text AS total_amount, tx_count, flagged_count, updated_at
  FROM user_totals WHERE tenant = %s AND user_id = %s
"""
_USER_ACTIONS = "SELECT action, count FROM user_action_counts WHERE tenant = %s AND user_id = %s ORDER BY action"
_DEVICE = """
SELECT si_unit, reading_count, reading_sum, reading_min, reading_max, out_of_range_count, updated_at
  FROM device_stats WHERE tenant = %s AND device_id = %s ORDER BY si_unit
"""
_DEAD_LETTERS = """
SELECT id, event_id, source, topic, partition, "offset", spool_seq, error_kind, reason, attempts,
       length(payload) AS payload_bytes, created_at
  FROM dead_letters WHERE tenant = %s AND id > %s ORDER BY id LIMIT %s
"""
# An event the spool drainer dead-lettered never reached the log, so it has no `events` row: its status is here.
_SPOOL_DEAD_LETTER = """
SELECT event_id AS id, topic, error_kind, reason, attempts, length(payload) AS payload_bytes, created_at
  FROM dead_letters WHERE tenant = %s AND event_id = %s AND source = 'spool' ORDER BY id LIMIT 1
"""


class ReadStore:
    def __init__(self, database_url: str, max_size: int = 8) -> None:
        self._pool = AsyncConnectionPool(
            database_url, min_size=1, max_size=max_size, open=False, kwargs={"autocommit": True}
        )

    async def open(self) -> None:
        await self._pool.open()

    async def close(self) -> None:
        await self._pool.close()

    async def _all(self, query: str, *params: Any) -> list[dict[str, Any]]:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, params)  # type: ignore[arg-type]
            return await cur.fetchall()

    async def ping(self) -> bool:
        await self._all("SELECT 1 AS ok")
        return True

    async def event(self, tenant: str, event_id: str) -> dict[str, Any] | None:
        rows = await self._all(_EVENT, tenant, event_id)
        if not rows:
            return await self._spool_dead_letter(tenant, event_id)
        event = rows[0]
        if event["status"] == Outcome.DEAD_LETTERED:
            event["dead_letter"] = (await self._all(_DEAD_FOR_EVENT, tenant, event_id) or [None])[0]
        return event

    async def _spool_dead_letter(self, tenant: str, event_id: str) -> dict[str, Any] | None:
        rows = await self._all(_SPOOL_DEAD_LETTER, tenant, event_id)
        if not rows:
            return None
        dead = rows[0]
        return {
            "id": dead.pop("id"),
            "status": Outcome.DEAD_LETTERED.value,
            "topic": dead.pop("topic"),
            "partition": None,
            "offset": None,
            "dead_letter": dead,
        }

    async def audit(self, tenant: str, event_id: str) -> list[dict[str, Any]]:
        return await self._all(_AUDIT, tenant, event_id)

    async def user_summary(self, tenant: str, user_id: str) -> dict[str, Any] | None:
        totals = await self._all(_USER_TOTALS, tenant, user_id)
        actions = await self._all(_USER_ACTIONS, tenant, user_id)
        if not totals and not actions:
            return None
        return {
            "user_id": user_id,
            "transactions": totals[0] if totals else None,
            "actions": {a["action"]: a["count"] for a in actions},
        }

    async def device_summary(self, tenant: str, device_id: str) -> dict[str, Any] | None:
        rows = await self._all(_DEVICE, tenant, device_id)
        if not rows:
            return None
        for row in rows:
            row["reading_mean"] = row["reading_sum"] / row["reading_count"] if row["reading_count"] else None
        return {"device_id": device_id, "readings": rows}

    async def dead_letters(self, tenant: str, after_id: int, limit: int) -> list[dict[str, Any]]:
        return await self._all(_DEAD_LETTERS, tenant, after_id, limit)
