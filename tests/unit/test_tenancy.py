"""Specification of tenancy in the pure core: the envelope's tenant, tenant-scoped idempotency ids, the raw record's
`tenant` header judged against the owner's cache of known tenants, and in-batch duplicates by (tenant, id).

Plain data, an in-memory loader and a fake clock: no broker, no database.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from pipelines import ids
from pipelines.access import DEFAULT_TENANT, valid_tenant
from pipelines.batch import DeadLetter, InBatchDuplicate, ProcessedEvent, SourceRecord
from pipelines.engine import PartitionProcessor
from pipelines.envelope import Envelope, tenant_of
from pipelines.errors import InvalidEvent
from pipelines.registry import default_registry
from pipelines.tenants import KnownTenants, TenantsUnavailable, claimed_tenants

INGEST = "events.ingest"
BASE = {"id": "e", "type": "sensor", "payload": {}, "received_at": 1}


# --- the envelope ------------------------------------------------------------------------------------------------


def test_the_envelope_carries_its_tenant_through_a_round_trip(transaction_data):
    event = default_registry().parse(transaction_data(id="order-1"))
    record = Envelope.encode_event(event, 5.0, tenant="shop-eu")

    assert Envelope.decode(record).tenant == "shop-eu"
    assert tenant_of(record) == "shop-eu"


def test_a_record_written_before_tenants_existed_is_the_default_tenants():
    record = orjson.dumps(BASE)

    assert Envelope.decode(record).tenant == DEFAULT_TENANT
    assert tenant_of(record) == DEFAULT_TENANT


@pytest.mark.parametrize("tenant", ["Shop", "", "-shop", "a" * 64, "shop eu", 7, None, ["x"]])
def test_a_tenant_that_is_no_tenant_name_makes_the_record_invalid(tenant):
    record = orjson.dumps({**BASE, "tenant": tenant})

    with pytest.raises(InvalidEvent) as caught:
        Envelope.decode(record)
    assert "tenant" in caught.value.reason
    assert tenant_of(record) is None


@pytest.mark.parametrize("data", [b"", b"\xff", b"[1]", b"{broken"])
def test_tenant_of_never_raises_on_bytes_that_are_no_envelope(data):
    assert tenant_of(data) is None


# --- idempotency ids ---------------------------------------------------------------------------------------------


def test_the_same_idempotency_key_gives_each_tenant_its_own_id():
    eu = ids.from_idempotency_key(ids.idempotency_scope("shop-eu"), "k-1")
    us = ids.from_idempotency_key(ids.idempotency_scope("shop-us"), "k-1")

    assert eu != us
    assert eu == ids.from_idempotency_key(ids.idempotency_scope("shop-eu"), "k-1")


def test_the_default_tenant_keeps_the_ids_it_had_before_tenants_existed():
    # the scope every request had before: a client resending across the upgrade gets the same id
    assert ids.idempotency_scope(DEFAULT_TENANT) == "anonymous"
    # and no tenant, not even one named after it, shares that scope
    assert ids.idempotency_scope("anonymous") != ids.idempotency_scope(DEFAULT_TENANT)


# --- the cache of known tenants ----------------------------------------------------------------------------------


class Tenants:
    """The tenants table as a loader sees it, with a count of loads and a switch to make it fail."""

    def __init__(self, *names: str) -> None:
        self.names = set(names)
        self.failing = False

    def __call__(self) -> set[str]:
        if self.failing:
            raise ConnectionError("PostgreSQL is down")
        return set(self.names)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_batch_without_tenant_headers_never_loads_the_tenants():
    known = KnownTenants(Tenants(), Clock())

    known.prepare([])
    known.prepare([DEFAULT_TENANT])

    assert known.loads == 0 and DEFAULT_TENANT in known


def test_a_tenant_created_after_the_last_load_is_found_by_a_reload_on_the_miss():
    table, clock = Tenants("shop-eu"), Clock()
    known = KnownTenants(table, clock, max_age_s=60.0, min_refresh_s=1.0)
    known.prepare(["shop-eu"])
    table.names.add("shop-us")
    clock.now += 1.0

    known.prepare(["shop-us"])

    assert "shop-us" in known and known.loads == 2


def test_a_flood_of_unknown_tenants_loads_at_most_once_per_refresh_interval():
    table, clock = Tenants("shop-eu"), Clock()
    known = KnownTenants(table, clock, max_age_s=60.0, min_refresh_s=1.0)

    for n in range(1000):  # 1000 batches over 10 s, each naming a tenant nobody created
        known.prepare([f"bogus-{n}"])
        assert f"bogus-{n}" not in known
        clock.now += 0.01

    assert known.loads == 10
    # names that cannot be tenants never cost a load
    clock.now += 5.0
    known.prepare(["NOT A TENANT", "x" * 100])
    assert known.loads == 10


def test_a_stale_cache_is_reloaded_and_a_failed_reload_keeps_judging_known_names():
    table, clock = Tenants("shop-eu"), Clock()
    known = KnownTenants(table, clock, max_age_s=5.0, min_refresh_s=1.0)
    known.prepare(["shop-eu"])
    table.failing = True
    clock.now += 6.0

    known.prepare(["shop-eu"])  # stale, the reload fails, but every name of the batch is known

    assert "shop-eu" in known and known.loads == 2


def test_a_name_that_cannot_be_judged_while_the_tenants_cannot_be_loaded_stops_the_batch():
    table, clock = Tenants("shop-eu"), Clock()
    table.failing = True
    known = KnownTenants(table, clock)

    with pytest.raises(TenantsUnavailable):
        known.prepare(["shop-eu"])
    clock.now += 0.1
    with pytest.raises(TenantsUnavailable):  # within the refresh interval, with nothing ever loaded
        known.prepare(["shop-eu"])


def test_a_new_tenant_is_never_judged_unknown_because_its_reload_failed():
    # given a cache loaded once, and a tenant created while PostgreSQL blips
    table, clock = Tenants("shop-eu"), Clock()
    known = KnownTenants(table, clock, max_age_s=5.0, min_refresh_s=1.0)
    known.prepare(["shop-eu"])
    table.names.add("acme")
    table.failing = True
    clock.now += 1.5
    with pytest.raises(TenantsUnavailable):
        known.prepare(["acme"])  # the reload its name asked for fails
    # when the owner retries sooner than the refresh interval (its first backoff is 0.5 s), the database back
    table.failing = False
    clock.now += 0.5
    # then the name is not judged by the stale set (that would dead-letter a real tenant's record): the batch waits
    with pytest.raises(TenantsUnavailable):
        known.prepare(["acme"])
    clock.now += 0.6
    known.prepare(["acme"])
    assert "acme" in known


# --- the engine ----------------------------------------------------------------------------------------------------


def raw(offset: int, event: dict[str, Any], tenant: bytes | None = None) -> SourceRecord:
    headers = (("traceparent", b"00-x"), ("tenant", tenant)) if tenant is not None else None
    return SourceRecord(INGEST, 0, offset, None, orjson.dumps(event), 1714557700250, headers)


@pytest.fixture
def processor() -> PartitionProcessor:
    return PartitionProcessor(
        default_registry(),
        INGEST,
        rng=random.Random(0),
        known_tenants=frozenset({DEFAULT_TENANT, "shop-eu", "shop-us"}),
    )


def test_raw_records_are_their_headers_tenants_and_one_id_of_two_tenants_is_two_events(processor, user_action_data):
    event = user_action_data(id="order-1")
    records = [raw(0, event, b"shop-eu"), raw(1, event, b"shop-us"), raw(2, event), raw(3, event, b"shop-eu")]

    outcomes = processor.outcomes(records, 0.0)

    assert [type(o) for o in outcomes] == [ProcessedEvent, ProcessedEvent, ProcessedEvent, InBatchDuplicate]
    assert [o.tenant for o in outcomes] == ["shop-eu", "shop-us", DEFAULT_TENANT, "shop-eu"]
    assert {o.event_id for o in outcomes} == {"order-1"}


@pytest.mark.parametrize(
    ("header", "named"), [(b"shop-xx", "shop-xx"), (b"Shop-EU", "Shop-EU"), (b"\xffbad", "\\xffbad"), (b"", "")]
)
def test_a_raw_record_of_an_unknown_tenant_is_dead_lettered_with_its_bytes_and_no_tenant(
    processor, user_action_data, header, named
):
    record = raw(5, user_action_data(id="order-1"), header)

    (dead, after) = processor.outcomes([record, raw(6, user_action_data(id="order-2"))], 0.0)

    assert isinstance(dead, DeadLetter)
    assert (dead.reason, dead.error_kind, dead.payload, dead.tenant, dead.event_id) == (
        f"unknown tenant {named!r}",
        "invalid",
        record.value,
        None,
        None,
    )
    assert isinstance(after, ProcessedEvent) and after.tenant == DEFAULT_TENANT


def test_a_known_tenants_invalid_event_is_dead_lettered_as_that_tenants(processor):
    (dead,) = processor.outcomes([raw(0, {"type": "user_action", "id": "x"}, b"shop-us")], 0.0)

    assert isinstance(dead, DeadLetter) and dead.tenant == "shop-us" and "unknown tenant" not in dead.reason


def test_the_claimed_tenants_of_a_batch_are_its_raw_records_headers(user_action_data):
    event = user_action_data()
    api = SourceRecord("events.user_action", 0, 9, None, b"{}", None, (("tenant", b"shop-zz"),))

    names = claimed_tenants([raw(0, event, b"shop-eu"), raw(1, event), api], INGEST)

    assert names == {"shop-eu"}


def test_a_periodic_reload_just_before_does_not_delay_the_reload_a_new_tenant_asks_for():
    table, clock = Tenants("shop-eu"), Clock()
    known = KnownTenants(table, clock, max_age_s=5.0, min_refresh_s=1.0)
    known.prepare(["shop-eu"])
    clock.now += 5.0
    known.prepare(["shop-eu"])  # stale: reloaded
    table.names.add("shop-us")
    clock.now += 0.1

    known.prepare(["shop-us"])

    assert "shop-us" in known and known.loads == 3


@pytest.mark.parametrize("name", ["acme\n", "acme\r\n", "\nacme", "Acme", "-acme", "a" * 64, ""])
def test_a_tenant_name_outside_the_pattern_is_refused_whole(name: str):
    assert not valid_tenant(name)
