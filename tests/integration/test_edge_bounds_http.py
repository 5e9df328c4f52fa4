"""Values the domain cannot hold are refused at the API with a 422 naming the field, never a 500 or a later dead
letter; in a batch they cost only their own item, and the valid items are committed.

Issue 8 findings 1, 3 and 5 through the real API, broker, partition owners and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.pipeline import Pipeline, unique_prefix, wait_until

pytestmark = pytest.mark.integration


def deep(levels: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(levels - 1):
        node["a"] = {}
        node = node["a"]
    return root


def hostile(prefix: str) -> list[tuple[str, dict[str, Any], str]]:
    """(label, event, the field its 422 must name)."""
    now = datetime.now(UTC).isoformat()
    sensor = {"type": "sensor", "timestamp": now, "device_id": f"{prefix}-d", "reading": 1.0, "unit": "bar",
              "location": {"lat": 0.0, "lon": 0.0}}  # fmt: skip
    action = {"type": "user_action", "timestamp": now, "user_id": f"{prefix}-u", "action": "click", "target": "t"}
    tx = {"type": "transaction", "timestamp": now, "user_id": f"{prefix}-u", "amount": "1.00", "currency": "USD"}
    return [
        ("1e308 bar", {**sensor, "reading": 1e308}, "reading"),
        ("below absolute zero", {**sensor, "reading": -300.0, "unit": "C"}, "reading"),
        ("metadata 256 levels deep", {**action, "metadata": deep(256)}, "metadata"),
        ("metadata 256 levels deep (transaction)", {**tx, "metadata": deep(256)}, "metadata"),
        ("year 1 at +14:00", {**action, "timestamp": "0001-01-01T00:00:00+14:00"}, "timestamp"),
        ("year 9999 at -14:00", {**action, "timestamp": "9999-12-31T23:59:59-14:00"}, "timestamp"),
        ("13-digit amount", {**tx, "amount": "1000000000000"}, "amount"),
    ]


def test_each_hostile_value_gets_a_422_naming_its_field(pipeline: Pipeline) -> None:
    prefix = unique_prefix("bounds")
    with httpx.Client(base_url=pipeline.base_url, headers=pipeline.headers, timeout=30) as client:
        for label, event, field in hostile(prefix):
            r = client.post("/events", json=event)

            assert r.status_code == 422, (label, r.status_code, r.text)
            assert field in [e["loc"] for e in r.json()["errors"]], (label, r.text)


def test_a_batch_with_hostile_items_rejects_only_them_and_commits_the_rest(pipeline: Pipeline) -> None:
    # given a batch mixing the hostile events with valid ones
    prefix = unique_prefix("bounds-batch")
    bad = [event for _, event, _ in hostile(prefix)]
    now = datetime.now(UTC).isoformat()
    good = [
        {
            "id": f"{prefix}-ok{i}",
            "type": "sensor",
            "timestamp": now,
            "device_id": f"{prefix}-d",
            "reading": 1e4,
            "unit": "bar",
            "location": {"lat": 0.0, "lon": 0.0},
        }  # fmt: skip
        for i in range(3)
    ]

    # when it is posted
    with httpx.Client(base_url=pipeline.base_url, headers=pipeline.headers, timeout=30) as client:
        r = client.post("/events/batch", json=[good[0], *bad, good[1], good[2]])

    # then only the hostile items are rejected, and the valid ones are processed by their owner
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"], body["failed"]) == (3, len(bad), 0)
    ids = [g["id"] for g in good]
    wait_until(
        lambda: pipeline.scalar("SELECT count(*) FROM events WHERE id = ANY(%s) AND status = 'processed'", ids) == 3,
        60,
        "the valid items of the batch processed",
    )
    stats = pipeline.query("SELECT reading_count, reading_max FROM device_stats WHERE device_id = %s", f"{prefix}-d")
    assert stats == [(3, 1e9)]
