"""Tenancy through the data path on real components: two tenants sending the same explicit id and the same
Idempotency-Key are each processed once, with read models of their own and reads that do not cross; a raw ingest
record naming an unknown tenant is dead-lettered with its bytes and reason while the record behind it is processed.

Raw records go straight to `events.ingest` with a `tenant` header; API events through an Ingestor built like a
replica's (the HTTP-level tests come with API keys).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from cluster.adapters.read_store import ReadStore
from pipelines import ids
from pipelines.access import DEFAULT_TENANT, Scope
from serve_app.ingest import RequestMeta
from tests.chaos.rawlog import RawProducer
from tests.factories import TS
from tests.ingestor import in_process_ingestor
from tests.pipeline import Pipeline, auth_headers, create_api_key, unique_prefix, wait_until

pytestmark = pytest.mark.integration


def action(prefix: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "user_action",
        "timestamp": TS,
        "user_id": f"{prefix}-u1",
        "action": "click",
        "target": "item-1",
        "metadata": {},
        **fields,
    }


def stored(pipeline: Pipeline, event_id: str) -> list[tuple[Any, ...]]:
    return pipeline.query("SELECT tenant, status FROM events WHERE id = %s ORDER BY tenant", event_id)


async def _reads(pipeline: Pipeline, tenant: str, event_id: str, user_id: str) -> dict[str, Any]:
    store = ReadStore(pipeline.db_url, max_size=1)
    await store.open()
    try:
        return {
            "event": await store.event(tenant, event_id),
            "audit": await store.audit(tenant, event_id),
            "user": await store.user_summary(tenant, user_id),
        }
    finally:
        await store.close()


def reads(pipeline: Pipeline, tenant: str, event_id: str, user_id: str) -> dict[str, Any]:
    return asyncio.run(_reads(pipeline, tenant, event_id, user_id))


async def post_with_key(pipeline: Pipeline, prefix: str, tenant: str, key: str) -> str:
    meta = RequestMeta("application/json", key, None, tenant=tenant)
    # a broker bound for a healthy broker (the fixture's 1 s is for fault tests): a fresh producer's first publish
    # on a busy 2-core box can take longer, and a 503 here would test nothing of tenancy
    async with in_process_ingestor(pipeline, broker_timeout_ms=10_000) as (ingestor, _breaker):
        reply = await ingestor.single(orjson.dumps(action(prefix, target=f"idem-{tenant}")), meta)
    assert reply.status == 202, reply.body
    return str(reply.body["id"])


def answered(url: str, headers: dict[str, str]) -> httpx.Response:
    """The read's answer once it is not a 503: a client retries a 503 after its Retry-After, and the session's read
    pool may still hold a connection an earlier test's database fault broke (it fails once, then is replaced)."""
    last: list[httpx.Response] = []

    def not_unavailable() -> bool:
        last[:] = [httpx.get(url, headers=headers, timeout=10)]
        return last[0].status_code != 503

    wait_until(not_unavailable, timeout_s=30, what=f"an answer other than 503 from {url}", interval_s=1.0)
    return last[0]


def test_two_tenants_with_the_same_id_and_idempotency_key_are_each_processed_once_and_read_apart(
    pipeline: Pipeline,
) -> None:
    prefix = unique_prefix("tenancy")
    eu, us = f"{prefix}-eu", f"{prefix}-us"
    pipeline.query("INSERT INTO tenants (name) VALUES (%s), (%s)", eu, us)
    topic = pipeline.settings.ingest_topic
    order = f"{prefix}:order-1"
    user = f"{prefix}-u1"

    # given both tenants write the same explicit id straight to the ingest topic, each twice
    with RawProducer(pipeline.settings.kafka_bootstrap) as producer:
        for tenant in (eu, us, eu, us):
            sent = producer.produce(
                topic, 0, orjson.dumps(action(prefix, id=order)), headers=[("tenant", tenant.encode())]
            )
            assert sent.error is None
    # and both send one event with the same Idempotency-Key through the API's ingestor, each twice
    key = f"{prefix}-key"
    eu_ids = [asyncio.run(post_with_key(pipeline, prefix, eu, key)) for _ in range(2)]
    us_ids = [asyncio.run(post_with_key(pipeline, prefix, us, key)) for _ in range(2)]

    # then the same key gives each tenant its own stable id (the default tenant keeps the legacy scope)
    assert eu_ids[0] == eu_ids[1] and us_ids[0] == us_ids[1] and eu_ids[0] != us_ids[0]
    assert ids.from_idempotency_key(ids.LEGACY_DEFAULT_SCOPE, key) not in (eu_ids[0], us_ids[0])
    # and every event is processed once, for its own tenant
    wait_until(lambda: len(stored(pipeline, order)) == 2, timeout_s=60, what="both tenants' order-1")
    wait_until(lambda: stored(pipeline, eu_ids[0]) and stored(pipeline, us_ids[0]), timeout_s=60, what="API events")
    assert stored(pipeline, order) == [(eu, "processed"), (us, "processed")]
    assert stored(pipeline, eu_ids[0]) == [(eu, "processed")]
    assert stored(pipeline, us_ids[0]) == [(us, "processed")]
    # resends counted as duplicates, each against its own tenant's event
    wait_until(
        lambda: (
            pipeline.scalar(
                "SELECT count(*) FROM audit_log WHERE event_id = %s AND to_status = 'duplicate_ignored'", order
            )
            == 2
        ),
        timeout_s=60,
        what="the resent order-1 records audited as duplicates",
    )
    # and each tenant's read models count its own two events (order-1 and the API event) once
    for tenant in (eu, us):
        seen = reads(pipeline, tenant, order, user)
        assert seen["event"]["id"] == order and seen["event"]["status"] == "processed"
        assert [t["to_status"] for t in seen["audit"]] == ["accepted", "consumed", "processed", "duplicate_ignored"]
        assert seen["user"]["actions"] == {"click": 2}
    # and reads across tenants find nothing: another tenant's event is a missing one
    assert reads(pipeline, DEFAULT_TENANT, order, user) == {"event": None, "audit": [], "user": None}
    assert reads(pipeline, us, eu_ids[0], user)["event"] is None
    # and over HTTP: the default tenant's key finds none of it; a key of tenant eu reads eu's
    assert answered(f"{pipeline.base_url}/events/{order}", pipeline.headers).status_code == 404
    user_url = f"{pipeline.base_url}/users/{user}/summary"
    assert answered(user_url, pipeline.headers).status_code == 404
    eu_key = auth_headers(create_api_key(pipeline.direct_db_url, f"{eu}-reader", frozenset({Scope.READ}), tenant=eu))
    wait_until(
        lambda: httpx.get(f"{pipeline.base_url}/events/{order}", headers=eu_key, timeout=10).status_code == 200,
        timeout_s=30,
        what="tenant eu's key reading eu's order-1 over HTTP (keys reload every auth_refresh_s)",
    )
    assert httpx.get(user_url, headers=eu_key, timeout=10).json()["actions"] == {"click": 2}


def test_a_raw_record_of_an_unknown_tenant_is_dead_lettered_and_the_next_record_is_processed(
    pipeline: Pipeline,
) -> None:
    prefix = unique_prefix("tenancy")
    topic = pipeline.settings.ingest_topic
    stranger = f"{prefix}-nobody"
    rejected = orjson.dumps(action(prefix, id=f"{prefix}:stranger"))
    after = action(prefix, id=f"{prefix}:after")

    # given a record naming a tenant nobody created, then a record without a tenant header
    with RawProducer(pipeline.settings.kafka_bootstrap) as producer:
        bad = producer.produce(topic, 0, rejected, headers=[("tenant", stranger.encode())])
        good = producer.produce(topic, 0, orjson.dumps(after))
    assert bad.offset is not None and good.offset == bad.offset + 1

    # then the record behind it is processed, as the default tenant's
    wait_until(lambda: stored(pipeline, after["id"]), timeout_s=60, what="the record after the stranger's")
    assert stored(pipeline, after["id"]) == [(DEFAULT_TENANT, "processed")]
    # and the stranger's record is a dead letter of nobody's, with its bytes and the reason, and no event row
    rows = pipeline.query(
        'SELECT tenant, event_id, error_kind, reason, payload FROM dead_letters WHERE topic = %s AND "offset" = %s',
        topic,
        bad.offset,
    )
    assert rows == [(None, None, "invalid", f"unknown tenant {stranger!r}", rejected)]
    assert stored(pipeline, f"{prefix}:stranger") == []
