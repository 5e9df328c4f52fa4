"""Property: any event, however extreme, is refused at the edge, or it goes through the owner to storable JSON.

Hypothesis draws events of every type mixing valid values with extreme ones (huge, tiny and negative numbers, every
unit, deep and wide metadata, timestamps of years 1..9999 at +-14:00, long and odd unicode), derandomised for CI.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cluster.adapters.commit_doc import decode, encode
from pipelines.batch import CommitBatch, DeadLetter, ProcessedEvent, SourceRecord
from pipelines.engine import PartitionProcessor
from pipelines.envelope import Envelope
from pipelines.errors import DeadLetterKind, InvalidEvent
from pipelines.handlers.transaction import DEFAULT_RATES_TO_USD
from pipelines.registry import default_registry
from pipelines.schemas import SUPPORTED_UNITS
from pipelines.units import PHYSICAL_RANGES

NOW = datetime(2027, 1, 15, 8, 0, tzinfo=UTC).timestamp()
API = default_registry(clock=lambda: NOW)
OWNER = default_registry(clock=lambda: NOW + 3600.0, event_time_max_ahead_s=86_400.0 + 3600.0)
INGEST = "events.ingest"
PROPERTY = settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


EDGE_FLOATS = [1e308, -1e308, 1.7976931348623157e308, 5e-324, -5e-324, -0.0, 1e9, 1e9 + 1, 2**53 + 1.0]
EDGE_FLOATS += [bound + d for bounds in PHYSICAL_RANGES.values() for bound in bounds for d in (-1e-9, 0.0, 1e-9)]
numbers = st.one_of(
    st.floats(),
    st.sampled_from(EDGE_FLOATS),
    st.integers(-(2**70), 2**70),
    st.sampled_from(["1e308", "NaN", "12.5", True, None, [1.0]]),
)
OFFSETS = [
    UTC,
    timezone(timedelta(hours=14)),
    timezone(-timedelta(hours=14)),
    timezone(timedelta(hours=23, minutes=59)),
]
LATEST = datetime.fromtimestamp(NOW + 86_400, UTC).replace(tzinfo=None)


def stamp(moment: datetime, tz: timezone | None) -> str:
    """`moment` in UTC written with offset `tz` (naive when None): the same instant, another wall clock."""
    return moment.replace(tzinfo=UTC).astimezone(tz).isoformat() if tz else moment.isoformat()


def nested(levels: int, leaf: Any) -> Any:
    node = leaf
    for _ in range(levels):
        node = {"a": node}
    return node


def reading_in(unit: str) -> st.SearchStrategy[float]:
    low, high = PHYSICAL_RANGES[unit]
    return st.one_of(st.floats(low, high), st.sampled_from([low, high]))


odd_text = st.one_of(
    st.text(min_size=120, max_size=300),
    st.sampled_from(["\x00", "a\x00b", "\ud800", "🙂" * 200, " ", "a" * 129, "", 7, None]),
)
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=30),
)
ids = st.one_of(st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True), st.none())

# Per field: values the schema accepts, seeking their edges; and values it must refuse (or that test its limits).
VALID: dict[str, st.SearchStrategy[Any]] = {
    "timestamp": st.builds(
        stamp,
        st.one_of(
            st.datetimes(min_value=datetime(1970, 1, 1), max_value=LATEST),
            st.sampled_from([datetime(1970, 1, 1), LATEST]),
        ),
        st.sampled_from([*OFFSETS, None]),
    ),
    "text": st.one_of(
        st.text(min_size=1, max_size=128).filter(lambda s: s.strip() and "\x00" not in s),
        st.sampled_from(["\u202e\u0007\x1b[31m", "🙂" * 128, "\\u0000", "é" * 128]),
    ),
    "amount": st.one_of(
        st.decimals(min_value=-(10**12) + 1, max_value=10**12 - 1, places=6).map(str),
        st.sampled_from(["999999999999.999999", "-999999999999.999999", "0.000001", "-0", "1E+11"]),
    ),
    "currency": st.sampled_from(list(DEFAULT_RATES_TO_USD)),
    "metadata": st.one_of(
        st.dictionaries(
            st.text(max_size=20),
            st.recursive(
                json_leaves,
                lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                max_leaves=20,
            ),
            max_size=6,
        ),
        st.builds(nested, st.integers(0, 7), json_leaves),
    ),
    "unit_reading": st.sampled_from(SUPPORTED_UNITS).flatmap(lambda u: st.tuples(st.just(u), reading_in(u))),
    "location": st.fixed_dictionaries({"lat": st.floats(-90, 90), "lon": st.floats(-180, 180)}),
    "id": ids,
    "parent_ids": st.lists(st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True), max_size=32),
}
EXTREME: dict[str, st.SearchStrategy[Any]] = {
    "timestamp": st.one_of(
        st.builds(lambda d, tz: d.replace(tzinfo=tz).isoformat(), st.datetimes(), st.sampled_from([*OFFSETS, None])),
        st.sampled_from(
            [
                "0001-01-01T00:00:00+14:00",
                "9999-12-31T23:59:59.999999-14:00",
                "1969-12-31T23:59:59.999999Z",
                stamp(LATEST + timedelta(microseconds=1), UTC),
            ]
        ),
        st.integers(-(2**64), 2**64),
        st.floats(),
    ),
    "text": odd_text,
    "amount": st.one_of(
        st.decimals(allow_nan=True, allow_infinity=True).map(str),
        st.sampled_from(["1e12", "0.0000001", "1e308"]),
        numbers,
    ),
    "currency": st.sampled_from(["XXX", "usd", "", 1]),
    "metadata": st.one_of(
        st.dictionaries(st.one_of(st.text(max_size=200), st.just("k" * 129)), st.one_of(numbers, odd_text), max_size=4),
        st.builds(nested, st.integers(8, 400), json_leaves),
        st.integers(0, 200).map(lambda n: {f"k{i}": i for i in range(n)}),
        st.integers(0, 20_000).map(lambda n: {"blob": "x" * n}),
        st.builds(lambda n, k: {k * n: 1}, st.integers(1, 300), st.sampled_from(["k", "é", "🙂"])),
    ),
    "unit_reading": st.tuples(st.sampled_from([*SUPPORTED_UNITS, "mph"]), numbers),
    "location": st.fixed_dictionaries({"lat": numbers, "lon": numbers}),
    "id": odd_text,
    "parent_ids": st.lists(st.one_of(ids, odd_text), max_size=40),
}
FIELDS = {  # event field -> kind of value
    "transaction": {
        "timestamp": "timestamp",
        "user_id": "text",
        "amount": "amount",
        "currency": "currency",
        "metadata": "metadata",
        "merchant_id": "text",
    },
    "sensor": {"timestamp": "timestamp", "device_id": "text", "unit_reading": "unit_reading", "location": "location"},
    "user_action": {
        "timestamp": "timestamp",
        "user_id": "text",
        "action": "text",
        "target": "text",
        "metadata": "metadata",
    },
}
LINEAGE = {"id": "id", "correlation_id": "text", "causation_id": "text", "parent_ids": "parent_ids"}


def _as_event(event_type: str, fields: dict[str, Any]) -> dict[str, Any]:
    event = {"type": event_type, **fields}
    if "unit_reading" in event:
        event["unit"], event["reading"] = event.pop("unit_reading")
    return event


def events_of(event_type: str) -> st.SearchStrategy[dict[str, Any]]:
    """Valid events, valid events with one extreme field, and events with every field drawn from both."""
    fields = FIELDS[event_type]
    valid = st.fixed_dictionaries(
        {name: VALID[kind] for name, kind in fields.items()},
        optional={name: VALID[kind] for name, kind in LINEAGE.items()},
    )
    one_extreme = st.tuples(valid, st.sampled_from(sorted({**fields, **LINEAGE}.items()))).flatmap(
        lambda drawn: EXTREME[drawn[1][1]].map(lambda value: {**drawn[0], drawn[1][0]: value})
    )
    anything = st.fixed_dictionaries(
        {name: VALID[kind] | EXTREME[kind] for name, kind in fields.items()},
        optional={name: VALID[kind] | EXTREME[kind] for name, kind in LINEAGE.items()},
    )
    return st.one_of(valid, one_extreme, one_extreme, anything).map(lambda f: _as_event(event_type, f))


events = {event_type: events_of(event_type) for event_type in FIELDS}


def process(record: SourceRecord) -> ProcessedEvent | DeadLetter:
    owner = PartitionProcessor(OWNER, INGEST, sleep=lambda s: None, rng=random.Random(0))
    batch = owner.process([record], epoch=1, owner_id="property", expected_offset=0, consumed_at=NOW + 60)
    (outcome,) = batch.processed + batch.dead
    return outcome


def assert_finite_numbers(value: Any) -> None:
    """Every number in `value` is finite: orjson writes inf and NaN as null, where a number was expected."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, float):
            assert math.isfinite(node), value
        elif isinstance(node, Decimal):
            assert node.is_finite(), value
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
        elif hasattr(node, "__dataclass_fields__"):
            stack.extend(getattr(node, name) for name in node.__dataclass_fields__)


def accepted_event_is_processed_into_storable_json(raw: dict[str, Any]) -> None:
    raw = {**raw, "id": raw.get("id") or "prop-1"}  # as the API does: an id before validation
    try:
        parsed = API.parse(raw)
    except InvalidEvent as refused:
        assert refused.errors  # a 422 with field errors
        event(f"refused: {sorted({e.loc for e in refused.errors})[:2]}")
        return
    event("accepted")
    record = Envelope.encode_event(parsed, NOW)  # never raises for an accepted event
    topic = f"events.{raw['type']}"

    outcome = process(SourceRecord(topic, 0, 0, parsed.entity_key().encode(), record))

    if raw["type"] == "transaction" and raw["currency"] not in DEFAULT_RATES_TO_USD:
        # a well-formed currency without a rate: the handler's classified refusal, by design (PoisonEvent)
        assert isinstance(outcome, DeadLetter) and outcome.error_kind is DeadLetterKind.POISON, outcome
        return
    assert isinstance(outcome, ProcessedEvent), outcome
    result = orjson.loads(outcome.result_json)
    assert_finite_numbers(result)
    assert_finite_numbers(outcome.effects)
    doc = decode(encode(CommitBatch(topic, 0, 1, "property", 0, 1, NOW, processed=(outcome,))).doc)
    for reading in doc["readings"]:
        assert isinstance(reading["v"], float | int) and math.isfinite(reading["v"])
    for spend in doc["spend"]:
        assert Decimal(spend["a"]).is_finite()


def raw_record_is_processed_or_invalid(raw: dict[str, Any]) -> None:
    try:
        value = orjson.dumps(raw)
    except (TypeError, orjson.JSONEncodeError):
        return  # not JSON at all: a producer cannot write it
    outcome = process(SourceRecord(INGEST, 0, 0, None, value))

    if isinstance(outcome, DeadLetter):
        # INVALID (refused by validation) or POISON (a currency without a rate); never a crash or a retry
        assert outcome.error_kind in (DeadLetterKind.INVALID, DeadLetterKind.POISON), outcome.reason
    else:
        assert_finite_numbers(orjson.loads(outcome.result_json))


@pytest.mark.parametrize("event_type", sorted(events))
def test_every_event_is_refused_at_the_edge_or_processed_into_finite_storable_json(event_type):
    @PROPERTY
    @given(events[event_type])
    def check(raw: dict[str, Any]) -> None:
        accepted_event_is_processed_into_storable_json(raw)  # through the API, then its owner
        raw_record_is_processed_or_invalid(raw)  # straight onto the raw ingest topic

    check()
