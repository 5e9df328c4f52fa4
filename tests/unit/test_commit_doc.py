"""The commit document: positional rows in the order their RowSchema declares, read back by name.

Pure: encodes CommitBatches and decodes the bytes; the SQL side reads the same schemas (tests/integration).
"""

from __future__ import annotations

from decimal import Decimal

from cluster.adapters.commit_doc import DOCUMENT, EVENT, decode, encode
from pipelines.batch import CommitBatch, DeadLetter, ProcessedEvent
from pipelines.effects import ActionCount, DeviceReading, UserSpend
from pipelines.errors import DeadLetterKind


def _batch() -> CommitBatch:
    processed = ProcessedEvent(
        event_id="ev-b",
        type="transaction",
        schema_version=2,
        offset=10,
        entity_key="user-1",
        payload_json='{"amount": "1.50"}',
        result_json='{"ok": true}',
        effects=(
            UserSpend("user-1", "EUR", Decimal("1.620000"), True),
            DeviceReading("dev-1", "K", 294.5, False),
            ActionCount("user-1", "click"),
        ),
        received_at=1_764_000_000.25,
        attempts=2,
        correlation_id="corr",
        causation_id="cause",
        parent_ids=("p1", "p2"),
        idempotency_key="idem",
    )
    named = DeadLetter(
        11, DeadLetterKind.POISON, "kept failing", 3, b"\x00raw", 1.0, event_id="ev-a", type="sensor", tenant="shop-eu"
    )
    bare = DeadLetter(12, DeadLetterKind.INVALID, "not JSON", 1, None, 1.0)
    return CommitBatch(
        "t", 0, 1, "owner", 10, 20, 2.0, (processed,), (named, bare), (("ev-b", 13, "default"),), skipped=(14, 20)
    )


def test_every_list_reads_back_by_name_as_its_schema_declares() -> None:
    doc = decode(encode(_batch(), {10: "00-trace"}).doc)

    assert set(doc) == set(DOCUMENT)
    # events sorted by (tenant, id) (one lock order across commits); a dead letter with an id is stored as an event too
    assert [(e["ten"], e["id"]) for e in doc["events"]] == [("default", "ev-b"), ("shop-eu", "ev-a")]
    event, dead_event = doc["events"]
    assert event == {
        "ten": "default",
        "id": "ev-b",
        "type": "transaction",
        "v": 2,
        "status": "processed",
        "off": 10,
        "key": "user-1",
        "corr": "corr",
        "caus": "cause",
        "parents": ["p1", "p2"],
        "idem": "idem",
        "trace": "00-trace",
        "payload": {"amount": "1.50"},
        "recv": 1_764_000_000.25,
        "att": 2,
        "result": {"ok": True},
        "dk": None,
        "dr": None,
    }
    assert (dead_event["status"], dead_event["dk"], dead_event["dr"], dead_event["result"]) == (
        "dead_lettered",
        "poison",
        "kept failing",
        None,
    )
    assert doc["spend"] == [{"t": "default", "e": "ev-b", "u": "user-1", "c": "EUR", "a": "1.620000", "f": 1}]
    assert doc["readings"] == [{"t": "default", "e": "ev-b", "d": "dev-1", "u": "K", "v": 294.5, "o": 0}]
    assert doc["actions"] == [{"t": "default", "e": "ev-b", "u": "user-1", "a": "click"}]
    assert doc["dead"] == [
        {"t": "shop-eu", "e": "ev-a", "off": 11, "k": "poison", "r": "kept failing", "att": 3, "p": "AHJhdw=="},
        {"t": None, "e": None, "off": 12, "k": "invalid", "r": "not JSON", "att": 1, "p": None},
    ]
    assert doc["dups"] == [{"t": "default", "e": "ev-b", "off": 13}]
    assert doc["gaps"] == [{"from_off": 14, "to_off": 20}]


def test_the_sql_select_list_reads_each_column_at_its_position_with_its_type() -> None:
    select = EVENT.select("r")
    assert select.startswith("r ->> 0 AS ten, r ->> 1 AS id, r ->> 2 AS type, (r ->> 3)::int AS v,")
    assert "nullif(r -> 12, 'null') AS payload" in select  # a JSON null is an SQL NULL, as jsonb_to_recordset gave
    assert select.count(" AS ") == len(EVENT.columns)
