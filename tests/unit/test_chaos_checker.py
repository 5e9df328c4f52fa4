"""The chaos checker's pure verdict: what clients were told against what PostgreSQL holds, column by column.

No database: observations are built by hand, so each column is shown to fail on exactly its anomaly.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any

import pytest

from tests.chaos.checker import Expect, Observed, Record, Row, compute_row, judge

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


# -- the verdict must be able to fail: what a scenario promises beyond "nothing lost" -------------------------------
AT = ("events.transaction", 0, 7)


def judged(
    records: list[Record], seen: Observed, expect: Expect | None = None, recover_s: float | None = 0.4
) -> list[str]:
    """The scenario's failures as the harness computes them, after one fault healed (recovery at `recover_s`)."""
    verdict = compute_row("s", records, seen, set(seen.events))
    verdict.row.faults, verdict.row.recover_s = 1, recover_s
    return verdict.failures(expect)


def test_a_healthy_run_with_every_promise_kept_passes() -> None:
    events = [tx(0), tx(1, "2.50")]
    assert judged([acked(e) for e in events], processed_state(*events)) == []


def test_an_api_that_refused_every_event_fails_although_nothing_acknowledged_was_lost() -> None:
    # given a workload whose every send was answered 503 until its retries ran out, and one answered 4xx
    unknown = [Record(f"{P}-e{n}", "processed", outcome="unknown", event=tx(n), statuses=["503"] * 5) for n in range(9)]
    refused = Record(f"{P}-e9", "processed", outcome="failed", event=tx(9), statuses=["400"])
    # when it is judged against an empty database
    verdict = compute_row("s", [*unknown, refused], Observed(), set())
    verdict.row.faults, verdict.row.recover_s = 1, 0.5
    # then no error column shows it (nothing acknowledged was lost)...
    assert verdict.row.errors() == {}
    # ...but the verdict fails: nothing was acknowledged, and a valid event was refused
    failures = verdict.failures(Expect(min_acked=0.5))
    assert any("0 of 10 valid events acknowledged" in f for f in failures), failures
    assert any("1 valid events refused" in f for f in failures), failures


def test_a_share_of_acknowledged_events_under_the_scenarios_floor_fails() -> None:
    events = [tx(n) for n in range(10)]
    records = [acked(e) for e in events[:8]] + [
        Record(e["id"], "processed", outcome="unknown", event=e) for e in events[8:]
    ]
    seen = processed_state(*events[:8])
    assert judged(records, seen, Expect(min_acked=0.8)) == []
    assert judged(records, seen, Expect(min_acked=0.9)) != []


def test_a_missing_recovery_fails() -> None:
    event = tx(0)
    failures = judged([acked(event)], processed_state(event), recover_s=None)
    assert failures == ["no recovery observed: no checkpoint advanced after the last heal"]


def test_a_scenario_without_a_fault_fails_unless_it_says_so() -> None:
    event = tx(0)
    verdict = compute_row("s", [acked(event)], processed_state(event), {event["id"]})
    assert verdict.failures() == ["no fault was injected: there is nothing to recover from"]
    assert verdict.failures(Expect(recovery=False)) == []


def test_a_floor_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="proves nothing"):
        Expect(min_acked=0)


def test_an_acknowledged_event_committed_at_another_offset_is_misplaced() -> None:
    event = tx(0)
    rec = acked(event)
    rec.acked_at = AT
    seen = processed_state(event)
    seen.positions[event["id"]] = AT
    assert judged([rec], seen) == []
    # when PostgreSQL says it was read at another offset than the one its 202 named
    seen.positions[event["id"]] = ("events.transaction", 0, 8)
    verdict = compute_row("s", [rec], seen, {event["id"]})
    assert verdict.row.errors() == {"misplaced": 1}
    assert (
        "acknowledged at ('events.transaction', 0, 7), committed at ('events.transaction', 0, 8)"
        in (verdict.details["misplaced"][0])
    )
    assert judged([rec], seen) == ["misplaced: 1"]


def test_a_retried_event_may_be_committed_from_an_earlier_attempts_copy_found_on_the_log() -> None:
    # given an event whose first answer was lost (a timeout) and whose retry was acknowledged at offset 7
    event = tx(0)
    rec = acked(event)
    rec.attempts, rec.statuses, rec.acked_at = 2, ["ReadTimeout", "202"], AT
    seen = processed_state(event)
    earlier = ("events.transaction", 0, 3)
    seen.positions[event["id"]] = earlier
    # then a commit at offset 3 is misplaced unless the log holds the event there
    assert compute_row("s", [rec], seen, {event["id"]}).row.misplaced == 1
    seen.on_log.add((event["id"], earlier))
    assert compute_row("s", [rec], seen, {event["id"]}).row.errors() == {}
    # ...and a copy on the log does not excuse an event sent once
    rec.attempts, rec.statuses = 1, ["202"]
    assert compute_row("s", [rec], seen, {event["id"]}).row.misplaced == 1


def test_a_spooled_event_must_be_committed_where_the_log_carries_it() -> None:
    event = tx(0)
    rec = acked(event)
    rec.spooled = True  # answered from the spool: its 202 names no position
    seen = processed_state(event)
    seen.positions[event["id"]] = AT
    assert compute_row("s", [rec], seen, {event["id"]}).row.misplaced == 1
    seen.on_log.add((event["id"], AT))
    verdict = compute_row("s", [rec], seen, {event["id"]})
    assert verdict.row.errors() == {} and verdict.row.spooled == 1


def test_a_raw_record_must_be_committed_at_the_position_its_producer_was_told() -> None:
    event = tx(0)
    raw = Record(event["id"], "processed", outcome="acknowledged", event=event, position=AT)
    seen = processed_state(event)
    seen.positions[event["id"]] = ("events.transaction", 1, 7)
    assert compute_row("s", [raw], seen, {event["id"]}).row.misplaced == 1


def test_offset_gaps_made_on_purpose_must_all_be_recorded_and_no_more() -> None:
    row = Row("s", faults=1, recover_s=0.1, offered=1, offered_acked=1, offset_gaps=1)
    assert judge(row, Expect(offset_gaps=1)) == []
    assert judge(row, Expect()) == ["offset_gaps: 1 (made on purpose: 0)"]
    row.offset_gaps = 0
    assert judge(row, Expect(offset_gaps=1)) == ["offset_gaps: 0 (made on purpose: 1)"]
