"""Graceful degradation at the API on real components: with the broker unreachable, events are acknowledged from the
durable spool and drained once it is back, exactly once and in per-key order; with neither broker nor spool the API
answers 503 with Retry-After; beyond its in-flight bound it answers 429.

The broker is made unreachable through the session's fault proxy (blackhole), so every client sees a silent broker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import httpx
import pytest

from cluster.local import free_port
from serve_app.ingest import Reply, RequestMeta
from tests.chaos.faultproxy import FaultProxy
from tests.factories import TS
from tests.ingestor import in_process_ingestor
from tests.pipeline import Pipeline, unique_prefix, wait_until

pytestmark = pytest.mark.integration

JSON = RequestMeta("application/json", None, None)


def transaction(prefix: str, user: int, seq: int) -> dict[str, Any]:
    """The `seq`-th event of user `user`: one key per user, so the user's events must keep their order."""
    return {
        "id": f"{prefix}:u{user}:{seq}",
        "type": "transaction",
        "timestamp": TS,
        "user_id": f"{prefix}-u{user}",
        "amount": f"{seq + 1}.00",
        "currency": "USD",
        "metadata": {"seq": seq},
    }


@contextmanager
def broker_unreachable(proxy: FaultProxy) -> Iterator[None]:
    proxy.blackhole()
    try:
        yield
    finally:
        proxy.heal()


def spooled_ids(pipeline: Pipeline, ids: list[str]) -> int:
    return int(pipeline.scalar("SELECT count(*) FROM ingest_spool WHERE event_id = ANY(%s)", ids))


def assert_processed_once_in_send_order(pipeline: Pipeline, sent: list[dict[str, Any]]) -> None:
    """Every event committed once with its full audit trail; per user, log offsets follow the order of sending."""
    ids = [e["id"] for e in sent]
    wait_until(lambda: spooled_ids(pipeline, ids) == 0, timeout_s=120, what="the spool to be drained")
    wait_until(
        lambda: pipeline.scalar("SELECT count(*) FROM events WHERE id = ANY(%s)", ids) == len(ids),
        timeout_s=120,
        what=f"{len(ids)} events committed",
    )
    assert pipeline.scalar("SELECT count(*) FROM events WHERE id = ANY(%s) AND status = 'processed'", ids) == len(ids)
    assert pipeline.scalar("SELECT count(*) FROM results WHERE event_id = ANY(%s)", ids) == len(ids)
    trails = pipeline.query(
        """SELECT event_id, array_agg(to_status ORDER BY at, id) FILTER (WHERE to_status <> 'duplicate_ignored')
             FROM audit_log WHERE event_id = ANY(%s) GROUP BY event_id""",
        ids,
    )
    assert {event_id: tuple(t) for event_id, t in trails} == {i: ("accepted", "consumed", "processed") for i in ids}

    positions = {
        event_id: (partition, offset)
        for event_id, partition, offset in pipeline.query(
            'SELECT id, partition, "offset" FROM events WHERE id = ANY(%s)', ids
        )
    }
    users = sorted({e["user_id"] for e in sent})
    for user in users:
        in_send_order = [positions[e["id"]] for e in sent if e["user_id"] == user]
        assert len({p for p, _ in in_send_order}) == 1, f"{user}'s events are on one partition"
        assert in_send_order == sorted(in_send_order), f"{user}'s events were logged out of order: {in_send_order}"
        total = pipeline.scalar("SELECT total_amount FROM user_totals WHERE user_id = %s", user)
        assert Decimal(total) == sum(Decimal(e["amount"]) for e in sent if e["user_id"] == user)


def test_events_sent_while_the_broker_is_unreachable_are_spooled_then_processed_once_in_key_order(
    pipeline: Pipeline, broker_proxy: FaultProxy
) -> None:
    prefix = unique_prefix("spool")
    users = range(3)
    sent: list[dict[str, Any]] = []
    with httpx.Client(base_url=pipeline.base_url, headers=pipeline.headers, timeout=60) as client:
        r = client.post("/events", json=transaction(prefix, 0, 0))
        assert r.status_code == 202 and "offset" in r.json(), r.text  # given a healthy broker: published directly
        sent.append(transaction(prefix, 0, 0))

        with broker_unreachable(broker_proxy):
            waits: list[float] = []
            for seq in range(1, 4):  # single events, one user after the other
                for user in users:
                    event = transaction(prefix, user, seq)
                    started = time.monotonic()
                    r = client.post("/events", json=event)
                    waits.append(time.monotonic() - started)
                    assert r.status_code == 202, r.text
                    assert r.json() == {"id": event["id"], "status": "accepted", "type": "transaction", "spooled": True}
                    sent.append(event)
            # once events wait in the spool, new ones join them without waiting on the broker
            timeout_s = pipeline.settings.producer_message_timeout_ms / 1000
            assert max(waits[1:]) < timeout_s, waits

            batch = [transaction(prefix, user, seq) for seq in range(4, 6) for user in users]
            r = client.post("/events/batch", json=batch)
            assert r.status_code == 202, r.text
            body = r.json()
            assert (body["accepted"], body["spooled"], body["failed"]) == (len(batch), len(batch), 0)
            assert all(item["spooled"] and "offset" not in item for item in body["results"])
            sent += batch

            spooled_now = [e["id"] for e in sent[1:]]
            assert spooled_ids(pipeline, spooled_now) == len(spooled_now)  # committed before the 202
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["degraded"] is True
            assert ready.json()["spool"]["depth"] >= len(spooled_now)

        # right after the broker is back, while the spool may still drain, more events for the same users
        for seq in range(6, 9):
            for user in users:
                event = transaction(prefix, user, seq)
                r = client.post("/events", json=event)
                assert r.status_code == 202, r.text
                sent.append(event)

        assert_processed_once_in_send_order(pipeline, sent)
        ready = wait_until(
            lambda: (got := client.get("/readyz")).status_code == 200 and not got.json()["degraded"] and got.json(),
            timeout_s=60,
            what="the API to report itself healthy again",
        )
        assert ready["breakers"] == {"kafka": "closed"} and ready["spool"]["depth"] == 0


def _body(events: dict[str, Any] | list[dict[str, Any]]) -> bytes:
    return httpx.Request("POST", "/", json=events).read()


def test_broker_unreachable_and_spool_unavailable_answers_503_with_retry_after(
    pipeline: Pipeline, broker_proxy: FaultProxy
) -> None:
    prefix = unique_prefix("nospool")
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/eventpipe"  # nothing listens there

    async def scenario() -> list[tuple[int, dict[str, Any], dict[str, str] | None]]:
        async with in_process_ingestor(pipeline, spool_url=nowhere) as (ingestor, _):
            replies = []
            for seq in range(3):  # the first ones wait for the broker's timeout, then the breaker opens
                reply = await ingestor.single(_body(transaction(prefix, 0, seq)), JSON)
                replies.append((reply.status, reply.body, reply.headers))
            batch = [transaction(prefix, 1, seq) for seq in range(3)]
            reply = await ingestor.batch(_body(batch), JSON)
            replies.append((reply.status, reply.body, reply.headers))
            return replies

    with broker_unreachable(broker_proxy):
        replies = asyncio.run(scenario())
    for status, body, headers in replies:
        assert status == 503, body
        assert body["error"] == "broker_unavailable" and "spool could not take" in body["reason"], body
        assert headers and int(headers["Retry-After"]) >= 1
    assert replies[-1][1]["accepted"] == 0 and replies[-1][1]["failed"] == 3


def test_full_spool_answers_503_and_loses_nothing_it_acknowledged(pipeline: Pipeline, broker_proxy: FaultProxy) -> None:
    prefix = unique_prefix("fullspool")
    events = [transaction(prefix, user, 0) for user in range(6)]

    async def scenario(limit: int) -> list[tuple[dict[str, Any], int, dict[str, Any], dict[str, str] | None]]:
        async with in_process_ingestor(pipeline, spool_url=pipeline.db_url, spool_max_rows=limit) as (ingestor, _):
            replies = []
            for event in events:
                reply = await ingestor.single(_body(event), JSON)
                replies.append((event, reply.status, reply.body, reply.headers))
            return replies

    with broker_unreachable(broker_proxy):
        limit = int(pipeline.scalar("SELECT count(*) FROM ingest_spool")) + 2  # room for two more rows
        replies = asyncio.run(scenario(limit))
    acknowledged = [event for event, status, _, _ in replies if status == 202]
    refused = [(body, headers) for _, status, body, headers in replies if status == 503]
    assert len(acknowledged) == 2 and all(body.get("spooled") for _, s, body, _ in replies if s == 202)
    assert len(refused) == len(events) - 2
    for body, headers in refused:
        assert body["error"] == "spool_full" and "limit" in body["reason"], body
        assert headers and int(headers["Retry-After"]) >= 1
    # what was acknowledged is drained and processed once the broker is back; what was refused was never taken
    assert_processed_once_in_send_order(pipeline, acknowledged)
    never_taken = [event["id"] for event, status, _, _ in replies if status == 503]
    assert pipeline.scalar("SELECT count(*) FROM events WHERE id = ANY(%s)", never_taken) == 0


def test_requests_beyond_the_in_flight_bound_get_429_with_retry_after_at_once(
    pipeline: Pipeline, broker_proxy: FaultProxy
) -> None:
    prefix = unique_prefix("admission")

    async def scenario() -> tuple[Reply, bool, Reply, Reply]:
        async with in_process_ingestor(pipeline, max_inflight_events=3) as (ingestor, _):
            # a batch of 3 fills the bound while it waits on the silent broker
            slow = asyncio.create_task(ingestor.batch(_body([transaction(prefix, u, 0) for u in range(3)]), JSON))
            await asyncio.sleep(0)  # it runs up to its wait for the broker's acknowledgements
            assert not slow.done()
            shed = await ingestor.single(_body(transaction(prefix, 9, 0)), JSON)
            batch_still_waiting = not slow.done()
            first = await slow
            after = await ingestor.single(_body(transaction(prefix, 9, 1)), JSON)  # room again once it finished
            return shed, batch_still_waiting, first, after

    with broker_unreachable(broker_proxy):
        shed, batch_still_waiting, first, after = asyncio.run(scenario())
    assert shed.status == 429 and shed.body["error"] == "overloaded" and "limit of 3" in shed.body["reason"]
    assert shed.headers == {"Retry-After": "1"}
    assert batch_still_waiting  # refused at once, not queued behind the batch
    assert first.status == 503  # no spool here: the silent broker's batch was refused, not acknowledged
    assert after.status == 503 and after.body["error"] == "broker_unavailable"  # admitted, then refused by the broker
