"""Fuzzed events through the whole pipeline: whatever Hypothesis builds from the published schemas, extreme values
included, gets a 4xx at the edge or a committed outcome (processed or dead-lettered) within a bound, never a 5xx and
never a stalled partition; the same events written straight to `events.ingest` never stall its partitions either.

It must never loosen the bound or skip an example that misbehaves: a failure here is a record that can halt a partition.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.handlers.transaction import DEFAULT_RATES_TO_USD
from pipelines.units import CONVERSIONS
from tests.chaos import rawlog
from tests.pipeline import Pipeline, unique_prefix, wait_until

pytestmark = pytest.mark.integration

EDGE_STATUSES = {202, 400, 413, 415, 422}
OUTCOME_BOUND_S = 60.0

_EXTREME_FLOATS = [1e308, -1e308, 1.7976931348623157e308, 5e-324, -0.0, 1e16, 9.3e18, -273.16, 1e-300]
floats = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(_EXTREME_FLOATS))
huge_ints = st.integers(min_value=-(2**80), max_value=2**80)
amounts = st.one_of(
    st.decimals(min_value=-1_000_000, max_value=1_000_000, places=2).map(str),
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
    st.sampled_from(["999999999999.999999", "-999999999999.999999", "1e308", "1E-400", "0.0000001", "-0"]),
    floats,
    huge_ints,
)
zones = st.sampled_from(
    [None, UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-14)), timezone(timedelta(minutes=330))]
)
timestamps = st.one_of(
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2026, 11, 1), timezones=zones).map(
        datetime.isoformat
    ),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59), timezones=zones).map(
        datetime.isoformat
    ),
    st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "1970-01-01T00:00:00Z"]),
    floats,
    huge_ints,
)
text = st.text(max_size=40)
leaves = st.one_of(st.none(), st.booleans(), huge_ints, floats, text)
json_values = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=25,
)


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"d": value}
    return value


metadata = st.one_of(
    st.dictionaries(st.text(max_size=20), json_values, max_size=8),
    st.integers(min_value=1, max_value=300).map(nested),
    st.integers(min_value=1, max_value=400_000).map(lambda n: {"blob": "x" * n}),
)
entity = st.one_of(st.text(min_size=1, max_size=130), st.sampled_from(["u", " padded ", "\u202eevil", "a\x1b[31mb"]))


def _base(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"type": st.just(kind), "timestamp": timestamps},
        optional={
            "correlation_id": st.one_of(st.none(), text),
            "causation_id": st.one_of(st.none(), text),
            "parent_ids": st.lists(st.from_regex(r"\A[A-Za-z0-9._:-]{1,20}\Z"), max_size=3),
        },
    )


def _with(base: st.SearchStrategy[dict[str, Any]], **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.tuples(base, st.fixed_dictionaries(fields)).map(lambda pair: {**pair[0], **pair[1]})


events = st.one_of(
    _with(
        _base("transaction"),
        user_id=entity,
        amount=amounts,
        currency=st.one_of(st.sampled_from(sorted(DEFAULT_RATES_TO_USD)), st.sampled_from(["XYZ", "usd", "EURO"])),
        metadata=metadata,
    ),
    _with(
        _base("sensor"),
        device_id=entity,
        reading=st.one_of(st.floats(min_value=-500, max_value=20_000), floats, huge_ints),
        unit=st.sampled_from(sorted(CONVERSIONS)),
        location=st.fixed_dictionaries({"lat": floats, "lon": floats}),
    ),
    _with(_base("user_action"), user_id=entity, action=text, target=text, metadata=metadata),
)


def encode(event: dict[str, Any]) -> bytes | None:
    """JSON as any client could send it (integers beyond 64 bits included); None if JSON cannot express it."""
    try:
        return json.dumps(event, allow_nan=False, default=_default).encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return None


def _default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def with_id(event: dict[str, Any], event_id: str) -> dict[str, Any]:
    return {**event, "id": event_id}


def committed_ids(pipeline: Pipeline, ids: list[str]) -> dict[str, str]:
    rows = pipeline.query("SELECT id, status FROM events WHERE id = ANY(%s)", ids)
    return {row[0]: row[1] for row in rows}


def test_fuzzed_events_get_a_4xx_or_a_committed_outcome_and_no_partition_stalls(pipeline: Pipeline) -> None:
    # Given: events built from the schemas with extreme values, each with an id of this test's own
    prefix = unique_prefix("fuzz")
    generated: list[dict[str, Any]] = []

    @settings(
        max_examples=250,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(events)
    def collect(event: dict[str, Any]) -> None:
        generated.append(event)

    collect()
    statuses: Counter[int] = Counter()
    accepted: list[str] = []
    client = httpx.Client(base_url=pipeline.base_url, headers=pipeline.headers, timeout=30)

    # When: each is sent alone over HTTP, then all again in batches, then written raw to events.ingest
    for n, event in enumerate(generated):
        body = encode(with_id(event, f"{prefix}-s{n}"))
        if body is None:
            continue
        r = client.post("/events", content=body, headers={"Content-Type": "application/json"})
        statuses[r.status_code] += 1
        assert r.status_code in EDGE_STATUSES, f"{r.status_code} for {body[:300]!r}: {r.text[:300]}"
        if r.status_code == 202:
            accepted.append(r.json()["id"])
    for start in range(0, len(generated), 50):
        items = [with_id(e, f"{prefix}-b{start + i}") for i, e in enumerate(generated[start : start + 50])]
        body = encode(items)
        if body is None:
            continue
        r = client.post("/events/batch", content=body, headers={"Content-Type": "application/json"})
        statuses[r.status_code] += 1
        assert r.status_code in EDGE_STATUSES, f"batch answered {r.status_code}: {r.text[:300]}"
        if r.status_code == 202:
            accepted += [item["id"] for item in r.json()["results"] if item["status"] == "accepted"]
    client.close()
    ends: dict[int, int] = {}
    with rawlog.RawProducer(pipeline.settings.kafka_bootstrap) as producer:
        for n, event in enumerate(generated):
            value = encode(with_id(event, f"{prefix}-k{n}"))
            if value is None:
                continue
            partition = n % pipeline.settings.partitions
            delivered = producer.produce(pipeline.settings.ingest_topic, partition, value)
            ends[partition] = max(ends.get(partition, -1), delivered.offset + 1)

    # Then: every accepted event has a committed outcome, and every raw partition is committed to its end
    assert accepted, f"no fuzzed event was accepted at all: {statuses}"
    assert statuses[202] < sum(statuses.values()), f"no fuzzed event was refused at all: {statuses}"

    def all_committed() -> bool:
        return len(committed_ids(pipeline, accepted)) == len(set(accepted))

    try:
        wait_until(all_committed, OUTCOME_BOUND_S, f"a committed outcome for all {len(set(accepted))} accepted events")
    except AssertionError as exc:
        missing = sorted(set(accepted) - set(committed_ids(pipeline, accepted)))
        errors = {(s["topic"], s["partition"]): s.get("commit_error") for s in pipeline.owner_statuses()}
        failing = {k: v for k, v in errors.items() if v}
        detail = f"HTTP {dict(statuses)}; {len(missing)} missing, e.g. {missing[:5]}; failing commits {failing}"
        raise AssertionError(f"{exc}; {detail}") from None

    def raw_committed() -> dict[int, int] | None:
        rows = pipeline.query(
            "SELECT partition, next_offset FROM partition_checkpoints WHERE topic = %s", pipeline.settings.ingest_topic
        )
        at = {int(p): int(o) for p, o in rows}
        behind = {p: (at.get(p, 0), end) for p, end in ends.items() if at.get(p, 0) < end}
        return None if behind else at

    wait_until(raw_committed, OUTCOME_BOUND_S, f"events.ingest committed to {ends}")
    outcomes = Counter(committed_ids(pipeline, accepted).values())
    kinds = Counter(
        row[0] for row in pipeline.query("SELECT error_kind FROM dead_letters WHERE event_id LIKE %s", f"{prefix}-%")
    )
    stuck = [s for s in pipeline.owner_statuses() if s.get("commit_error")]
    assert not stuck, f"owners still failing a commit: {stuck}"
    print(
        f"\nfuzzed {len(generated)} events: HTTP statuses {dict(statuses)}, outcomes {dict(outcomes)}, "
        f"dead-letter kinds {dict(kinds)}, raw partitions committed to {ends}"
    )
