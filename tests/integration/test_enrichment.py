"""Merchant enrichment through the real pipeline: results carry merchant data, and the fake service going down only
marks transactions `enrichment: unavailable` (processed, none lost), until it is back and the breaker closes.

The pipeline's enrichment_url points at the session's fake service (tests/pipeline.py); the cache TTL there is 1 s.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.factories import TS
from tests.fakes.enrichment_service import MERCHANTS, FakeEnrichmentService
from tests.pipeline import Pipeline, unique_prefix, wait_until

pytestmark = pytest.mark.integration

OUTAGE_MERCHANTS = ("m-rail", "m-hotel", "m-watch")  # not used by the other tests here: nothing of theirs is cached


def transaction(event_id: str, user_id: str, merchant_id: str | None, amount: str = "10.00") -> dict[str, Any]:
    event = {"id": event_id, "type": "transaction", "timestamp": TS, "user_id": user_id, "amount": amount}
    event["currency"] = "EUR"
    if merchant_id is not None:
        event["merchant_id"] = merchant_id
    return event


def post_batch(pipeline: Pipeline, events: list[dict[str, Any]]) -> None:
    r = httpx.post(f"{pipeline.base_url}/events/batch", json=events, headers=pipeline.headers, timeout=30)
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == len(events)


def results(pipeline: Pipeline, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Committed results of those ids that are processed (dead-lettered ids have none)."""
    rows = pipeline.query(
        "SELECT e.id, r.result FROM events e JOIN results r ON r.event_id = e.id "
        "WHERE e.id = ANY(%s) AND e.status = 'processed'",
        ids,
    )
    return {event_id: result for event_id, result in rows}


def all_results(pipeline: Pipeline, ids: list[str], what: str) -> dict[str, dict[str, Any]]:
    def complete() -> dict[str, dict[str, Any]] | None:
        got = results(pipeline, ids)
        return got if len(got) == len(ids) else None

    return wait_until(complete, 60, what)


def dead_letters(pipeline: Pipeline, ids: list[str]) -> int:
    return pipeline.scalar("SELECT count(*) FROM dead_letters WHERE event_id = ANY(%s)", ids)


def test_transactions_carry_their_merchant_or_say_why_not(pipeline: Pipeline) -> None:
    prefix = unique_prefix("enrich")
    sent = {
        f"{prefix}-coffee": "m-coffee",
        f"{prefix}-books": "m-books",
        f"{prefix}-nobody": "m-nobody",
        f"{prefix}-none": None,
    }
    post_batch(pipeline, [transaction(i, f"{prefix}-u{n}", m) for n, (i, m) in enumerate(sent.items())])

    got = all_results(pipeline, list(sent), "the four transactions to be processed")

    assert got[f"{prefix}-coffee"]["enrichment"] == "ok"
    assert got[f"{prefix}-coffee"]["merchant"] == MERCHANTS["m-coffee"]
    assert got[f"{prefix}-books"]["merchant"] == MERCHANTS["m-books"]
    assert got[f"{prefix}-nobody"]["enrichment"] == "unknown_merchant"
    assert got[f"{prefix}-none"]["enrichment"] == "not_requested"
    assert all(r["base_amount"] == "10.800000" for r in got.values())  # the FX conversion is unchanged
    # The API serves the enriched result too.
    body = httpx.get(f"{pipeline.base_url}/events/{prefix}-coffee", headers=pipeline.headers, timeout=10).json()
    assert body["result"]["merchant"]["name"] == MERCHANTS["m-coffee"]["name"]


def test_service_down_processes_every_transaction_as_unavailable_and_enriches_again_once_back(
    pipeline: Pipeline, enrichment_service: FakeEnrichmentService
) -> None:
    prefix = unique_prefix("enrich-outage")
    user = f"{prefix}-u"  # one key: one partition, one owner, one cache and one breaker to reason about
    sent: list[str] = []

    def send(tag: str, merchants: tuple[str, ...] = OUTAGE_MERCHANTS) -> list[str]:
        ids = [f"{prefix}-{tag}-{m}" for m in merchants]
        post_batch(pipeline, [transaction(i, user, m) for i, m in zip(ids, merchants, strict=True)])
        sent.extend(ids)
        return ids

    def marks(ids: list[str], what: str) -> Counter[str]:
        return Counter(r["enrichment"] for r in all_results(pipeline, ids, what).values())

    assert marks(send("before"), "transactions before the outage") == {"ok": 3}

    with enrichment_service.while_down():
        # Answers cached before the outage may still be served for up to the TTL; wait until they have expired.
        probes = iter(range(1000))
        wait_until(
            lambda: marks(send(f"probe{next(probes)}"), "a probe") == {"unavailable": 3},
            30,
            "the cached answers to expire while the service is down",
        )
        during: list[str] = []
        for n in range(20):
            during += send(f"down{n}")

        assert marks(during, "every transaction sent during the outage") == {"unavailable": 60}

    # Back up: the owner's breaker is open and lets a probe through after its reset timeout (2 s here).
    recovered = iter(range(1000))
    wait_until(
        lambda: marks(send(f"after{next(recovered)}"), "a transaction after the outage") == {"ok": 3},
        30,
        "transactions to be enriched again after the service came back",
    )

    processed = results(pipeline, sent)
    assert len(processed) == len(sent)  # none lost
    assert dead_letters(pipeline, sent) == 0  # none dead-lettered
    totals = pipeline.query("SELECT tx_count, total_amount::text FROM user_totals WHERE user_id = %s", user)
    assert totals == [(len(sent), str(Decimal("10.800000") * len(sent)))]  # every effect applied once
