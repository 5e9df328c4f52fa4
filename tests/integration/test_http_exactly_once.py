"""Exactly-once through the HTTP API: distinct events, idempotent re-sends, invalid input, all on real components.

Counts effects (results, read models, audit), not only event rows.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import orjson
import pytest

from tests.factories import Expected, read_models, valid_event
from tests.pipeline import Pipeline, unique_prefix, wait_until

pytestmark = pytest.mark.integration


def invalid_requests(prefix: str) -> list[tuple[str, dict[str, str], bytes, int]]:
    """100 bad requests, each with the status it must get: (path, headers, body, expected status)."""
    json_h = {"Content-Type": "application/json"}
    good = valid_event(prefix, 0, random.Random(1))
    cases: list[tuple[str, dict[str, str], bytes, int]] = []
    for i in range(20):
        cases.append(("/events", json_h, b'{"type": "sensor", "reading": ', 400))  # broken JSON
        cases.append(("/events", json_h, orjson.dumps({**good, "amount": f"lots-{i}"}), 422))  # wrong type
        cases.append(("/events", json_h, orjson.dumps({**good, "type": f"weather-{i}"}), 422))  # unknown type
        cases.append(("/events", {"Content-Type": "text/plain"}, orjson.dumps(good), 415))  # not JSON
        cases.append(("/events", json_h, orjson.dumps({**good, "metadata": {"blob": "x" * 300_000}}), 413))
    return cases


async def _send_all(pipeline: Pipeline, prefix: str) -> dict[str, Any]:
    rng = random.Random(42)
    events = [valid_event(prefix, n, rng, with_id=n < 9_000) for n in range(10_000)]
    batch_events, single_events = events[:9_000], events[9_000:]
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(
        base_url=pipeline.base_url, headers=pipeline.headers, timeout=60, limits=limits
    ) as client:
        ids: list[str] = []
        for start in range(0, len(batch_events), 500):
            r = await client.post("/events/batch", json=batch_events[start : start + 500])
            assert r.status_code == 202, r.text
            body = r.json()
            assert body["accepted"] == 500 and body["rejected"] == 0
            ids += [item["id"] for item in body["results"]]
        assert ids == [e["id"] for e in batch_events]  # the client's own ids are kept

        sem = asyncio.Semaphore(32)

        async def post_single(event: dict[str, Any], key: str) -> str:
            async with sem:
                r = await client.post("/events", json=event, headers={"Idempotency-Key": key})
                assert r.status_code == 202, r.text
                return str(r.json()["id"])

        keys = [f"{prefix}-key-{n}" for n in range(len(single_events))]
        single_ids = await asyncio.gather(*(post_single(e, k) for e, k in zip(single_events, keys, strict=True)))
        assert len(set(single_ids)) == 1_000
        resent_ids = await asyncio.gather(*(post_single(e, k) for e, k in zip(single_events, keys, strict=True)))
        assert resent_ids == single_ids  # a retried request gets the same id

        statuses = []
        for path, headers, body, expected in invalid_requests(prefix):
            r = await client.post(path, content=body, headers=headers)
            statuses.append((r.status_code, expected, r.json().get("reason")))
    return {"events": events, "ids": ids + single_ids, "single_ids": single_ids, "invalid": statuses}


def test_ten_thousand_events_with_resends_and_invalid_ones_are_processed_exactly_once(pipeline: Pipeline) -> None:
    prefix = unique_prefix("http")
    sent = asyncio.run(_send_all(pipeline, prefix))
    ids: list[str] = sent["ids"]

    # every invalid request got its 4xx with a reason
    wrong = [(got, want) for got, want, _ in sent["invalid"] if got != want]
    assert not wrong, wrong
    assert all(reason for _, _, reason in sent["invalid"])
    assert len(sent["invalid"]) == 100

    wait_until(
        lambda: pipeline.scalar("SELECT count(*) FROM events WHERE id = ANY(%s)", ids) == 10_000,
        timeout_s=180,
        what="10,000 events committed",
    )
    # the re-sends reach the owners after the originals; wait until every one was seen and ignored
    wait_until(
        lambda: (
            pipeline.scalar(
                "SELECT count(*) FROM audit_log WHERE event_id = ANY(%s) AND to_status = 'duplicate_ignored'",
                sent["single_ids"],
            )
            >= 1_000
        ),
        timeout_s=120,
        what="1,000 re-sends recognised as duplicates",
    )

    assert pipeline.scalar("SELECT count(*) FROM events WHERE id = ANY(%s) AND status = 'processed'", ids) == 10_000
    assert pipeline.scalar("SELECT count(*) FROM results WHERE event_id = ANY(%s)", ids) == 10_000
    assert pipeline.scalar("SELECT count(*) FROM dead_letters WHERE event_id = ANY(%s)", ids) == 0

    # read models: each event's effect applied exactly once
    expected = Expected()
    for event in sent["events"]:
        expected.add(event)
    seen = read_models(pipeline, prefix)
    assert seen.spend == expected.spend
    assert seen.tx_count == expected.tx_count
    assert seen.device_count == expected.device_count
    assert seen.action_count == expected.action_count

    # a complete audit trail: accepted -> consumed -> processed, once each, in that order
    trails = pipeline.query(
        """SELECT event_id, array_agg(to_status ORDER BY at, id) FILTER (WHERE to_status <> 'duplicate_ignored')
             FROM audit_log WHERE event_id = ANY(%s) GROUP BY event_id""",
        ids,
    )
    assert len(trails) == 10_000
    assert {tuple(t) for _, t in trails} == {("accepted", "consumed", "processed")}
    dup_notes = pipeline.scalar(
        "SELECT count(*) FROM audit_log WHERE event_id = ANY(%s) AND to_status = 'duplicate_ignored'", ids
    )
    assert dup_notes == 1_000


def test_processed_event_is_readable_with_status_timestamps_position_and_audit(pipeline: Pipeline) -> None:
    prefix = unique_prefix("read")
    event = valid_event(prefix, 0, random.Random(3), with_id=False)
    with httpx.Client(base_url=pipeline.base_url, headers=pipeline.headers, timeout=30) as client:
        r = client.post("/events", json=event, headers={"Idempotency-Key": f"{prefix}-k"})
        assert r.status_code == 202
        accepted = r.json()
        event_id = accepted["id"]

        def fetched() -> dict[str, Any] | None:
            got = client.get(f"/events/{event_id}")
            return got.json() if got.status_code == 200 else None

        body = wait_until(fetched, timeout_s=30, what="the event to be processed")
        assert body["status"] == "processed"
        assert (body["topic"], body["partition"], body["offset"]) == (
            accepted["topic"],
            accepted["partition"],
            accepted["offset"],
        )
        assert body["received_at"] <= body["consumed_at"] <= body["committed_at"]
        assert body["result"]["base_currency"] == "USD"
        audit = client.get(f"/events/{event_id}/audit").json()["transitions"]
        assert [a["to_status"] for a in audit] == ["accepted", "consumed", "processed"]
        summary = client.get(f"/users/{event['user_id']}/summary").json()
        assert summary["transactions"]["tx_count"] == 1
        assert client.get("/events/does-not-exist").status_code == 404
        schemas = client.get("/schemas").json()["types"]
        assert set(schemas) == {"transaction", "sensor", "user_action"}
        assert "amount" in schemas["transaction"]["1"]["properties"]
