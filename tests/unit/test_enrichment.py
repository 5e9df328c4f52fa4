"""Specification of merchant enrichment in the pure core: which merchants a batch needs, and the fallback in a batch.

No network: the lookup is an in-memory object; the HTTP adapter is specified in test_enrichment_client.py.
"""

from __future__ import annotations

import random

import orjson

from pipelines.batch import SourceRecord
from pipelines.engine import PartitionProcessor
from pipelines.enrichment import Enrichment, EnrichmentStatus, EnrichmentUnavailable, Merchant, merchant_ids
from pipelines.envelope import Envelope
from pipelines.registry import default_registry

INGEST = "events.ingest"
TX_TOPIC = "events.transaction"
COFFEE = Merchant("m-coffee", "Corner Coffee", "food_and_drink", "US")


def api_record(offset: int, raw: dict, event_id: str) -> SourceRecord:
    event = default_registry().parse(raw)
    return SourceRecord(TX_TOPIC, 0, offset, None, Envelope.wrap(event, event_id, 1.0).encode(), None)


def ingest_record(offset: int, value: bytes) -> SourceRecord:
    return SourceRecord(INGEST, 0, offset, None, value, None)


class Outage:
    """A MerchantLookup whose service is down: every lookup is unavailable."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def get(self, merchant_id: str) -> Merchant | None:
        self.asked.append(merchant_id)
        raise EnrichmentUnavailable("connection refused")


def test_batch_merchants_are_the_distinct_ids_of_its_transactions(transaction_data, sensor_data, user_action_data):
    records = [
        api_record(0, transaction_data(merchant_id="m-coffee"), "a"),
        api_record(1, transaction_data(merchant_id="m-books"), "b"),
        api_record(2, transaction_data(merchant_id=" m-coffee "), "c"),
        api_record(3, transaction_data(), "d"),
        ingest_record(4, orjson.dumps(transaction_data(merchant_id="m-rail"))),
        ingest_record(5, orjson.dumps(user_action_data(metadata={"merchant_id": "m-not-a-transaction"}))),
    ]

    assert merchant_ids(records, INGEST) == {"m-coffee", "m-books", "m-rail"}


def test_unreadable_records_give_no_merchant_and_no_error(transaction_data):
    records = [
        ingest_record(0, b'{"type": "transaction", "merchant_id": '),  # broken JSON
        ingest_record(1, b'["merchant_id"]'),  # not an object
        ingest_record(2, orjson.dumps(transaction_data(merchant_id=7))),  # wrong type
        ingest_record(3, orjson.dumps(transaction_data(merchant_id="m" * 129))),  # longer than an id may be
        SourceRecord(TX_TOPIC, 0, 4, None, b'{"payload": "merchant_id"}', None),  # envelope without an object
        SourceRecord(TX_TOPIC, 0, 5, None, None, None),
    ]

    assert merchant_ids(records, INGEST) == set()


def test_enrichment_outcome_adds_its_status_and_only_a_found_merchant():
    assert Enrichment(EnrichmentStatus.OK, COFFEE).as_result() == {"enrichment": "ok", "merchant": COFFEE.as_dict()}
    assert Enrichment(EnrichmentStatus.UNAVAILABLE).as_result() == {"enrichment": "unavailable"}


def test_service_outage_processes_every_transaction_of_the_batch_with_the_unavailable_mark(transaction_data):
    outage = Outage()
    processor = PartitionProcessor(
        default_registry(merchants=outage), INGEST, sleep=lambda s: None, rng=random.Random(0)
    )
    records = [api_record(n, transaction_data(merchant_id=f"m-{n}"), f"tx-{n}") for n in range(20)]

    batch = processor.process(records, epoch=1, owner_id="o", expected_offset=0, consumed_at=2.0)

    assert batch.dead == ()
    assert len(batch.processed) == 20
    assert all(orjson.loads(e.result_json)["enrichment"] == "unavailable" for e in batch.processed)
    assert all(e.attempts == 1 for e in batch.processed)  # the fallback is not a retry
    assert len(outage.asked) == 20
