"""The chaos checker's pure verdict: what clients were told against what PostgreSQL holds, column by column.

No database: observations are built by hand, so each column is shown to fail on exactly its anomaly.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any

from tests.chaos.checker import Observed, Record, compute_row

P = "ch-x-1234"


def tx(n: int, amount: str = "10.00", user: str = f"{P}-k0") -> dict[str, Any]:
    return {"id": f"{P}-e{n}", "type": "transaction", "user_id": user, "amount": amount, "currency": "USD"}


def acked(event: dict[str, Any]) -> Record:
    return Record(event["id"], "processed", outcome="acknowledged", event=event)


def processed_state(*events: dict[str, Any]) -> Observed:
    """What a correct pipeline holds after processing `events` once each."""
    seen = Observed()
    for e in events:
        seen.events[e["id"]] = "processed"
        seen.entity_keys[e["id"]] = e["user_id"]
        seen.audit[e["id"]] = Counter({"accepted": 1, "consumed": 1, "processed": 1})
        seen.results.add(e["id"])
        total, count = seen.spend.get(e["user_id"], (Decimal(0), 0))
        seen.spend[e["user_id"]] = (total + Decimal(e["amount"]), count + 1)
    return seen


def test_events_processed_once_give_a_clean_row() -> None:
    events = [tx(0), tx(1, "2.50")]
    verdict = compute_row("s", [acked(e) for e in events], processed_state(*events), {e["id"] for e in events})
    assert verdict.row.errors() == {}
    assert (verdict.row.acknowledged, verdict.row.processed, verdict.row.dead_lettered) == (2, 2, 0)


def test_acknowledged_event_missing_from_postgres_is_lost() -> None:
    events = [tx(0), tx(1)]
    verdict = compute_row("s", [acked(e) for e in events], processed_state(events[0]), {events[0]["id"]})
    assert verdict.row.errors() == {"lost": 1}
    assert f"{P}-e1" in verdict.details["lost"][0]


def test_unknown_outcome_may_be_absent_or_present() -> None:
    absent = Record(f"{P}-e1", "processed", outcome="unknown", event=tx(1))
    present = Record(f"{P}-e2", "processed", outcome="unknown", event=tx(2))
    seen = processed_state(tx(2))
    assert compute_row("s", [absent, present], seen, {f"{P}-e2"}).row.errors() == {}


def test_effect_applied_twice_is_duplicated_twice_over() -> None:
    event = tx(0)
    seen = processed_state(event)
    seen.audit[event["id"]]["processed"] = 2
    seen.spend[event["user_id"]] = (Decimal("20.00"), 2)
    verdict = compute_row("s", [acked(event)], seen, {event["id"]})
    assert verdict.row.errors() == {"duplicated": 2}  # the audit rows and the read model each show it


def test_read_model_of_an_unknown_event_that_was_processed_counts_it() -> None:
    maybe = Record(f"{P}-e1", "processed", outcome="unknown", event=tx(1, "5.00"))
    seen = processed_state(tx(1, "5.00"))
    assert compute_row("s", [maybe], seen, {f"{P}-e1"}).row.duplicated == 0
    seen.spend[f"{P}-k0"] = (Decimal("10.00"), 2)
    assert compute_row("s", [maybe], seen, {f"{P}-e1"}).row.duplicated == 1


def test_event_nobody_sent_and_refused_event_that_got_in_are_unexpected() -> None:
    refused = Record(f"{P}-e0", "processed", outcome="failed", event=tx(0))
    stranger = tx(9)
    seen = processed_state(tx(0), stranger)
    verdict = compute_row("s", [refused], seen, {f"{P}-e0", stranger["id"]})
    assert verdict.row.unexpected == 2


def test_valid_event_dead_lettered_and_bad_record_processed_are_misrouted() -> None:
    valid = acked(tx(0))
    bad = Record(f"{P}-e1", "dead_letter", outcome="acknowledged")
    seen = processed_state(tx(1))
    seen.events[valid.event_id or ""] = "dead_lettered"
    seen.entity_keys[valid.event_id or ""] = f"{P}-k0"
    seen.audit[valid.event_id or ""] = Counter({"accepted": 1, "consumed": 1, "dead_lettered": 1})
    seen.dead_letters.append((valid.event_id, ("events.transaction", 0, 3)))
    seen.spend = {}
    verdict = compute_row("s", [valid, bad], seen, {f"{P}-e0", f"{P}-e1"})
    assert verdict.row.misrouted == 2


def test_bad_record_without_id_is_matched_by_its_position() -> None:
    bad = Record(None, "dead_letter", outcome="acknowledged", position=("events.ingest", 1, 42))
    assert compute_row("s", [bad], Observed(), set()).row.lost == 1
    seen = Observed(dead_letters=[(None, ("events.ingest", 1, 42))])
    verdict = compute_row("s", [bad], seen, set())
    assert verdict.row.errors() == {}
    assert verdict.row.dead_lettered == 1


def test_rows_without_their_audit_trail_are_orphans() -> None:
    event = tx(0)
    seen = processed_state(event)
    seen.audit[event["id"]] = Counter()
    verdict = compute_row("s", [acked(event)], seen, {event["id"]})
    assert verdict.row.orphans == 2  # no 'accepted' for the event, no 'processed' for its result


def test_offset_gaps_during_the_scenario_are_reported() -> None:
    seen = Observed(offset_gaps=1)
    assert compute_row("s", [], seen, set()).row.errors() == {"offset_gaps": 1}


def test_processed_record_without_payload_does_not_fail_its_keys_read_model() -> None:
    raw = Record(f"{P}-e5", "processed", outcome="acknowledged")  # produced straight to a topic, payload not given
    seen = processed_state(tx(5, "7.00"))
    assert compute_row("s", [raw], seen, {f"{P}-e5"}).row.errors() == {}
