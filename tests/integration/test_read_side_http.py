"""The read side through the real API: `/dead-letters` pages through every dead letter once, in id order, with no gap
or repeat; `/devices/{id}/summary` agrees with statistics computed here from the unit definitions (°F to kelvin, kPa to
pascal); a dead-lettered event's status and audit trail say how it got there.

The expected figures are computed in the test from the definitions (K = (°F - 32) x 5/9 + 273.15, Pa = kPa x 1000),
never by calling the pipeline's own conversion code.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from pipelines.access import DEFAULT_TENANT
from tests.pipeline import Pipeline, unique_prefix, wait_until

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).isoformat()


def _poison(event_id: str) -> dict[str, Any]:
    """Valid at the API; the owner has no exchange rate for XYZ and dead-letters it."""
    return {"id": event_id, "type": "transaction", "timestamp": NOW, "user_id": f"{event_id}-u", "amount": "1.00",
            "currency": "XYZ"}  # fmt: skip


def _sensor(event_id: str, device_id: str, reading: float, unit: str) -> dict[str, Any]:
    return {"id": event_id, "type": "sensor", "timestamp": NOW, "device_id": device_id, "reading": reading,
            "unit": unit, "location": {"lat": 52.37, "lon": 4.89}}  # fmt: skip


def _statuses(pipeline: Pipeline, ids: list[str]) -> dict[str, str]:
    return dict(pipeline.query("SELECT id, status FROM events WHERE id = ANY(%s)", ids))


def test_dead_letters_are_paged_in_id_order_without_gaps_or_repeats(pipeline: Pipeline, api_headers: dict[str, str]):
    # given seven events the owner dead-letters, sent after the last dead letter so far
    prefix = unique_prefix("dlq-pages")
    start = int(pipeline.scalar("SELECT coalesce(max(id), 0) FROM dead_letters WHERE tenant = %s", DEFAULT_TENANT))
    ids = [f"{prefix}-{n}" for n in range(7)]
    with httpx.Client(base_url=pipeline.base_url, timeout=30, headers=api_headers) as client:
        assert client.post("/events/batch", json=[_poison(i) for i in ids]).status_code == 202
        every = dict.fromkeys(ids, "dead_lettered")
        wait_until(lambda: _statuses(pipeline, ids) == every, 60, "all seven dead-lettered")
        # when they are read three at a time from there, each page starting after the last id of the one before
        paged: list[dict[str, Any]] = []
        after = start
        while True:
            page = client.get("/dead-letters", params={"after": after, "limit": 3})
            assert page.status_code == 200, page.text
            items = page.json()["items"]
            assert len(items) <= 3
            if not items:
                break
            paged += items
            after = items[-1]["id"]
    # then the pages hold every dead letter of the tenant after `start` exactly once, in id order, as the table does
    paged_ids = [item["id"] for item in paged]
    assert paged_ids == sorted(set(paged_ids)), "a repeat or an out-of-order page"
    mine = "SELECT id FROM dead_letters WHERE tenant = %s AND id > %s AND id <= %s ORDER BY id"
    in_table = [row[0] for row in pipeline.query(mine, DEFAULT_TENANT, start, paged_ids[-1])]
    assert paged_ids == in_table, "a gap between pages"
    assert set(ids) <= {item["event_id"] for item in paged}


def test_a_device_summary_agrees_with_statistics_computed_from_the_unit_definitions(
    pipeline: Pipeline, api_headers: dict[str, str]
):
    # given a device reporting in °F and in kPa
    prefix = unique_prefix("summary")
    device = f"{prefix}-dev"
    fahrenheit = [32.0, 212.0, 98.6, -40.0, 451.0]
    kilopascal = [101.325, 0.5, 250.0, 99.9]
    events = [_sensor(f"{prefix}-f{n}", device, v, "F") for n, v in enumerate(fahrenheit)]
    events += [_sensor(f"{prefix}-p{n}", device, v, "kPa") for n, v in enumerate(kilopascal)]
    with httpx.Client(base_url=pipeline.base_url, timeout=30, headers=api_headers) as client:
        assert client.post("/events/batch", json=events).json()["accepted"] == len(events)
        ids = [e["id"] for e in events]
        every = dict.fromkeys(ids, "processed")
        wait_until(lambda: _statuses(pipeline, ids) == every, 60, "every reading processed")
        # when its summary is read
        reply = client.get(f"/devices/{device}/summary")
    assert reply.status_code == 200, reply.text
    by_unit = {row["si_unit"]: row for row in reply.json()["readings"]}
    # then each SI unit's count, sum, min, max and mean are those of the readings converted by definition
    expected = {
        "K": [(f - 32.0) * 5.0 / 9.0 + 273.15 for f in fahrenheit],
        "Pa": [k * 1000.0 for k in kilopascal],
    }
    assert set(by_unit) == set(expected), by_unit
    for unit, values in expected.items():
        row = by_unit[unit]
        assert row["reading_count"] == len(values), row
        stats = {
            "reading_sum": math.fsum(values),
            "reading_min": min(values),
            "reading_max": max(values),
            "reading_mean": math.fsum(values) / len(values),
        }
        for field, want in stats.items():
            assert math.isclose(float(row[field]), want, rel_tol=1e-9, abs_tol=1e-9), (unit, field, row[field], want)


def test_a_dead_lettered_event_says_why_and_its_audit_trail_ends_in_dead_lettered(
    pipeline: Pipeline, api_headers: dict[str, str]
):
    # given an event the owner dead-letters
    event_id = f"{unique_prefix('dlq-audit')}-0"
    with httpx.Client(base_url=pipeline.base_url, timeout=30, headers=api_headers) as client:
        assert client.post("/events", json=_poison(event_id)).status_code == 202
        wait_until(lambda: _statuses(pipeline, [event_id]) == {event_id: "dead_lettered"}, 60, "the dead letter")
        # when its status and audit trail are read
        status = client.get(f"/events/{event_id}").json()
        audit = client.get(f"/events/{event_id}/audit").json()
    # then the status names the dead letter's kind and reason, matching the dead_letters row
    assert status["status"] == "dead_lettered", status
    ((kind, reason),) = pipeline.query("SELECT error_kind, reason FROM dead_letters WHERE event_id = %s", event_id)
    assert (status["dead_letter"]["error_kind"], status["dead_letter"]["reason"]) == (kind, reason)
    assert "XYZ" in reason
    # and the audit trail is a chain of transitions, in time order, ending in dead_lettered
    transitions = audit["transitions"]
    assert audit["event_id"] == event_id and transitions, audit
    assert transitions[-1]["to_status"] == "dead_lettered", transitions
    assert all(t["actor"] for t in transitions), transitions
    assert [t["at"] for t in transitions] == sorted(t["at"] for t in transitions)
    for before, after in zip(transitions, transitions[1:], strict=False):
        assert after["from_status"] == before["to_status"], transitions
