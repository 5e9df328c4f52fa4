"""Specification of the engine's per-event guard: whatever one record does on its way through the owner (its handler
raising anything, a result that cannot be serialised, numbers the read models cannot hold) costs that record a dead
letter with the exception's kind and text, never its batch an exception; an observation hook choking on it costs
nothing but a log line.

And the commit document names the one record whose rows cannot be encoded, instead of failing for the batch.
"""

from __future__ import annotations

import random
from collections import Counter
from decimal import Decimal
from typing import Any

import orjson
import pytest

from cluster.adapters.commit_doc import UnencodableEvent, encode
from pipelines.batch import DeadLetter, InBatchDuplicate, ProcessedEvent, SourceRecord, assemble
from pipelines.effects import DeviceReading, UserSpend
from pipelines.engine import PartitionProcessor
from pipelines.handlers.base import HandlerResult
from pipelines.handlers.user_action import UserActionHandler
from pipelines.outcome import Outcome
from pipelines.registry import EventTypeSpec, Registry, default_registry
from pipelines.schemas import EventBase, UserActionV1

TOPIC = "events.ingest"


class Scripted:
    """A user-action handler whose behaviour is picked by the event's `target`."""

    def __init__(self, behaviours: dict[str, Any]) -> None:
        self.behaviours = behaviours

    def __call__(self, event: UserActionV1) -> HandlerResult:
        behaviour = self.behaviours.get(event.target)
        if behaviour is None:
            return UserActionHandler()(event)
        if isinstance(behaviour, BaseException):
            raise behaviour
        return behaviour


def registry_with(handler: Any) -> Registry:
    given = Registry()
    given.register(EventTypeSpec("user_action", {1: UserActionV1}, handler))
    return given


def record(offset: int, target: str, **fields: Any) -> SourceRecord:
    event = {
        "id": f"ev-{offset}",
        "type": "user_action",
        "timestamp": "2026-11-24T10:00:00Z",
        "user_id": "u-1",
        "action": "click",
        "target": target,
        **fields,
    }
    return SourceRecord(TOPIC, 0, offset, None, orjson.dumps(event), 1_764_000_000_000)


def outcomes_of(processor: PartitionProcessor, *targets: str) -> list[Any]:
    records = [record(i, t) for i, t in enumerate(targets)]
    return processor.outcomes(records, consumed_at=1.0)


class Unclassified(Exception):
    """An exception type nobody in the pipeline knows."""


def nested(depth: int) -> list[Any]:
    out: list[Any] = []
    for _ in range(depth):
        out = [out]
    return out


@pytest.mark.parametrize(
    "raised",
    [
        KeyError("k"),
        ZeroDivisionError("division by zero"),
        RecursionError("maximum recursion depth exceeded"),
        MemoryError("out of memory"),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        Unclassified("\ud800 lone surrogate in the text"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_handler_raising_anything_dead_letters_that_event_only(raised):
    processor = PartitionProcessor(registry_with(Scripted({"bad": raised})), TOPIC, rng=random.Random(0))

    before, bad, after = outcomes_of(processor, "ok", "bad", "ok")

    assert isinstance(before, ProcessedEvent) and isinstance(after, ProcessedEvent)
    assert isinstance(bad, DeadLetter) and bad.error_kind == "handler_error"
    assert bad.reason.startswith(f"{type(raised).__name__}: ") and bad.event_id == "ev-1"
    assert bad.payload == record(1, "bad").value
    encode(assemble([before, bad, after], **_header(3)))  # and the batch still encodes


@pytest.mark.parametrize(
    "result",
    [
        {"when": object()},  # not JSON at all
        {"text": "\ud800"},  # a lone surrogate
        {"deep": nested(300)},  # deeper than orjson writes
        {"big": 2**70},  # beyond 64 bits
        {"nul": "a\u0000b"},  # PostgreSQL cannot store it
    ],
    ids=["object", "surrogate", "300 levels", "int beyond 64 bits", "NUL"],
)
def test_a_result_that_cannot_be_serialised_dead_letters_its_event(result):
    processor = PartitionProcessor(
        registry_with(Scripted({"bad": HandlerResult(result, ())})), TOPIC, rng=random.Random(0)
    )

    ok, bad = outcomes_of(processor, "ok", "bad")

    assert isinstance(ok, ProcessedEvent)
    assert isinstance(bad, DeadLetter) and bad.error_kind in {"handler_error", "invalid"} and bad.reason


@pytest.mark.parametrize(
    "effect",
    [
        DeviceReading("d-1", "Pa", float("inf"), False),
        DeviceReading("d-1", "Pa", float("-inf"), False),
        DeviceReading("d-1", "Pa", float("nan"), False),
        UserSpend("u-1", "USD", Decimal("NaN"), False),
        UserSpend("u-1", "USD", Decimal("Infinity"), False),
    ],
    ids=["inf", "-inf", "nan", "amount NaN", "amount Infinity"],
)
def test_effects_with_numbers_that_are_not_finite_are_the_events_failure_not_the_databases(effect):
    processor = PartitionProcessor(
        registry_with(Scripted({"bad": HandlerResult({}, (effect,))})), TOPIC, rng=random.Random(0)
    )

    ok, bad = outcomes_of(processor, "ok", "bad")

    assert isinstance(ok, ProcessedEvent)
    assert isinstance(bad, DeadLetter) and bad.error_kind == "poison" and "not finite" in bad.reason


def test_finite_extreme_effects_are_left_to_the_domain_bounds():
    effect = DeviceReading("d-1", "Pa", 1e300, False)
    processor = PartitionProcessor(
        registry_with(Scripted({"big": HandlerResult({}, (effect,))})), TOPIC, rng=random.Random(0)
    )

    (big,) = outcomes_of(processor, "big")

    assert isinstance(big, ProcessedEvent) and big.effects == (effect,)


class PoisonedRegistry(Registry):
    """Parsing puts something unserialisable into the payload, then fails: even the event's dead letter cannot be
    built with its payload."""

    def parse(self, raw: Any) -> EventBase:
        if isinstance(raw, dict) and raw.get("target") == "bad":
            raw["sneaky"] = object()
            raise RuntimeError("parser bug")
        return super().parse(raw)


def test_when_building_the_dead_letter_itself_fails_a_bare_one_with_the_raw_bytes_is_made():
    given = PoisonedRegistry()
    given.register(EventTypeSpec("user_action", {1: UserActionV1}, UserActionHandler()))
    processor = PartitionProcessor(given, TOPIC, rng=random.Random(0))

    ok, bad, after = outcomes_of(processor, "ok", "bad", "ok")

    assert isinstance(ok, ProcessedEvent) and isinstance(after, ProcessedEvent)
    assert isinstance(bad, DeadLetter) and bad.error_kind == "handler_error"
    assert bad.payload == record(1, "bad").value and bad.payload_json is None
    assert "TypeError" in bad.reason or "RuntimeError" in bad.reason


def test_a_hook_that_raises_only_logs_once_per_batch_and_every_outcome_is_kept_as_it_was(caplog):
    # given an observation hook (metrics, spans) that chokes on a processed event and on a dead letter
    def hook(outcome: ProcessedEvent | DeadLetter, seconds: float, status: Outcome) -> None:
        if outcome.event_id in ("ev-1", "ev-2"):
            raise ValueError("metrics choked")

    processor = PartitionProcessor(
        registry_with(Scripted({"bad": KeyError("k")})), TOPIC, rng=random.Random(0), on_outcome=hook
    )

    # when the batch is processed
    with caplog.at_level("ERROR", logger="pipelines.engine"):
        ok, observed_badly, dead, after = outcomes_of(processor, "a", "b", "bad", "c")

    # then the valid event stays processed, the dead letter keeps its own reason, and the failure is logged once
    assert all(isinstance(o, ProcessedEvent) for o in (ok, observed_badly, after))
    assert isinstance(dead, DeadLetter) and dead.error_kind == "handler_error" and "KeyError" in dead.reason
    hook_logs = [r for r in caplog.records if "on_outcome" in r.getMessage()]
    assert len(hook_logs) == 1 and "ValueError: metrics choked" in hook_logs[0].getMessage()
    assert "2 of 4" in hook_logs[0].getMessage()


def test_outcomes_are_one_per_record_with_in_batch_duplicates_marked():
    processor = PartitionProcessor(registry_with(Scripted({})), TOPIC, rng=random.Random(0))
    records = [record(0, "a"), record(1, "b"), SourceRecord(TOPIC, 0, 2, None, record(0, "a").value, None)]

    outcomes = processor.outcomes(records, consumed_at=1.0)

    assert [type(o).__name__ for o in outcomes] == ["ProcessedEvent", "ProcessedEvent", "InBatchDuplicate"]
    assert outcomes[2] == InBatchDuplicate("ev-0", 2)


def _header(n: int) -> dict[str, Any]:
    return dict(topic=TOPIC, partition=0, epoch=1, owner_id="o", expected_offset=0, next_offset=n, consumed_at=1.0)


def _event(offset: int, **fields: Any) -> ProcessedEvent:
    base: dict[str, Any] = dict(
        event_id=f"ev-{offset}",
        type="user_action",
        schema_version=1,
        offset=offset,
        entity_key="u-1",
        payload_json="{}",
        result_json="{}",
        effects=(),
        received_at=1.0,
    )
    return ProcessedEvent(**{**base, **fields})


@pytest.mark.parametrize(
    "bad",
    [
        {"entity_key": "\ud800"},
        {"correlation_id": "x\udfff"},
        {"schema_version": 2**70},
        {"effects": (UserSpend("\ud800", "USD", Decimal("1"), False),)},
    ],
    ids=["surrogate key", "surrogate correlation id", "version beyond 64 bits", "surrogate in an effect"],
)
def test_the_commit_document_names_the_one_event_it_cannot_encode(bad):
    batch = assemble([_event(0), _event(1, **bad), _event(2)], **_header(3))

    with pytest.raises(UnencodableEvent) as raised:
        encode(batch)

    assert raised.value.offset == 1 and raised.value.reason
    encode(assemble([_event(0), _event(2)], **_header(3)))  # the others encode


def test_a_nul_in_the_commit_document_names_its_event_and_no_stored_text_is_rewritten():
    # given one event holding the literal text \u0000 (a backslash, then u0000) and another holding a NUL character
    literal = _event(0, payload_json=orjson.dumps({"note": "C:\\u0000"}).decode())
    nul = _event(1, correlation_id="a\u0000b")

    # when the batch is encoded, the event with the NUL is named, so bisection dead-letters it alone
    with pytest.raises(UnencodableEvent) as raised:
        encode(assemble([literal, nul], **_header(2)))
    assert raised.value.offset == 1 and "NUL" in raised.value.reason

    # and the other event's text is stored byte for byte
    assert b'"note":"C:\\\\u0000"' in encode(assemble([literal], **_header(1))).doc


def _hostile_value(rng: random.Random, depth: int = 0) -> Any:
    """A JSON value of the kinds that broke pipelines before: huge and tiny numbers, NUL, surrogate escapes, deep
    nesting, long strings, wrong types."""
    choices = [
        lambda: rng.choice([0, -1, 2**63, -(2**63) - 1, 10**400, 1e308, -1e308, 5e-324, 1.5]),
        lambda: rng.choice(["", "a\u0000b", "\u202e", "x" * rng.randrange(1, 5000), "\U0001f600", "null", "1e999"]),
        lambda: rng.choice([True, False, None]),
    ]
    if depth < 6:
        choices.append(lambda: [_hostile_value(rng, depth + 1) for _ in range(rng.randrange(3))])
        choices.append(lambda: {f"k{i}": _hostile_value(rng, depth + 1) for i in range(rng.randrange(3))})
    if depth == 0:
        choices.append(lambda: nested(rng.randrange(200, 400)))
    return rng.choice(choices)()


def _hostile_record(rng: random.Random, offset: int) -> SourceRecord:
    event: dict[str, Any] = {
        "id": f"fz-{offset}",
        "timestamp": rng.choice(
            ["2026-11-24T10:00:00Z"] * 8 + ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]
        ),
        **rng.choice(
            [
                {"type": "transaction", "user_id": "u", "amount": "12.5", "currency": "USD"},
                {"type": "sensor", "device_id": "d", "reading": 1.0, "unit": "bar", "location": {"lat": 1, "lon": 2}},
                {"type": "user_action", "user_id": "u", "action": "click", "target": "t"},
            ]
        ),
    }
    roll = rng.random()
    if roll < 0.6:  # valid in shape, hostile inside: what a schema lets through
        if event["type"] == "sensor":
            event["reading"] = rng.choice([1e308, -1e308, 1e300, 5e-324, 0.0, 21.5])
        else:
            event["metadata"] = {"x": _hostile_value(rng)}
    elif roll < 0.9:  # a field of the wrong kind
        event[rng.choice([*event, "metadata", "location", "merchant_id"])] = _hostile_value(rng)
    try:
        value = orjson.dumps(event, option=orjson.OPT_PASSTHROUGH_SUBCLASS)
    except orjson.JSONEncodeError:
        value = repr(event).encode("utf-8", "backslashreplace")  # not even JSON: the raw bytes, as a producer might
    if rng.random() < 0.1:
        value = value.replace(b'"u"', b'"\\ud800"')  # a lone surrogate escape in the bytes
    return SourceRecord(TOPIC, 0, offset, None, value, 1_764_000_000_000)


def test_no_hostile_record_makes_a_batch_raise_and_the_batch_encodes():
    # given 2,000 seeded hostile records through the real registry and handlers
    rng = random.Random(8)
    records = [_hostile_record(rng, offset) for offset in range(2000)]
    processor = PartitionProcessor(default_registry(), TOPIC, rng=random.Random(0), max_record_bytes=262_144)

    # when they are processed in batches of 200 and their commit documents encoded
    kinds: Counter[str] = Counter()
    for first in range(0, len(records), 200):
        chunk = records[first : first + 200]
        outcomes = processor.outcomes(chunk, consumed_at=1.0)
        # then every record has exactly one outcome, and the batch encodes in one go
        assert [o.offset for o in outcomes] == [r.offset for r in chunk]
        encode(assemble(outcomes, **{**_header(0), "expected_offset": first, "next_offset": first + 200}))
        kinds.update(o.error_kind if isinstance(o, DeadLetter) else type(o).__name__ for o in outcomes)
    assert kinds["ProcessedEvent"] > 0 and kinds["invalid"] > 0, kinds


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


def test_an_exception_whose_text_raises_still_dead_letters_its_event_by_kind():
    processor = PartitionProcessor(registry_with(Scripted({"bad": Unprintable()})), TOPIC, rng=random.Random(0))

    ok, bad = outcomes_of(processor, "ok", "bad")

    assert isinstance(ok, ProcessedEvent)
    assert isinstance(bad, DeadLetter) and bad.reason == "Unprintable" and bad.error_kind == "handler_error"
