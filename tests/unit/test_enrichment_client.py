"""Specification of the enrichment HTTP client: cache, timeout, circuit breaker and one lookup per batch.

Runs against the real fake service (a stdlib HTTP server on 127.0.0.1, started per module); no Ray, no broker.
Clocks of the cache and the breaker are injected, so expiry and cool-downs need no sleeping.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from cluster.adapters.enrichment_client import EnrichmentClient, TtlCache
from cluster.settings import Settings
from pipelines.batch import SourceRecord
from pipelines.engine import PartitionProcessor
from pipelines.enrichment import EnrichmentUnavailable, Merchant, merchant_ids
from pipelines.envelope import Envelope
from pipelines.policies.breaker import BreakerState, CircuitBreaker
from pipelines.registry import default_registry
from tests.fakes.enrichment_service import MERCHANTS, FakeEnrichmentService

TIMEOUT_S = 0.1
SLOWER_THAN_TIMEOUT_S = 5.0  # the fake answers after this; up() releases it at once
COFFEE = Merchant(**MERCHANTS["m-coffee"])


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def module_service() -> Iterator[FakeEnrichmentService]:
    with FakeEnrichmentService() as service:
        yield service


@pytest.fixture
def service(module_service: FakeEnrichmentService) -> Iterator[FakeEnrichmentService]:
    module_service.up()
    module_service.reset_counters()
    yield module_service
    module_service.up()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def client(service: FakeEnrichmentService, clock: ManualClock) -> Iterator[EnrichmentClient]:
    circuit = CircuitBreaker("enrichment", failure_threshold=5, reset_timeout_s=2.0, clock=clock)
    given = EnrichmentClient(service.url, TIMEOUT_S, TtlCache(60.0, clock=clock), circuit)
    yield given
    given.close()


def unavailable(client: EnrichmentClient, merchant_id: str) -> bool:
    try:
        client.get(merchant_id)
    except EnrichmentUnavailable:
        return True
    return False


# --- answers and the cache ----------------------------------------------------------------------------------------


def test_known_merchant_is_returned_and_then_served_from_the_cache(client, service):
    assert client.get("m-coffee") == COFFEE
    assert client.get("m-coffee") == COFFEE

    assert service.requests == 1


def test_unknown_merchant_is_none_and_cached_too(client, service):
    assert client.get("m-nobody") is None
    assert client.get("m-nobody") is None

    assert service.requests == 1


def test_cached_answer_expires_after_the_ttl(client, service, clock):
    client.get("m-coffee")
    clock.now += 59.9
    client.get("m-coffee")
    clock.now += 0.2

    assert client.get("m-coffee") == COFFEE
    assert service.requests == 2


def test_merchant_id_is_sent_as_one_path_segment(client, service):
    assert client.get("m/../coffee?x=1") is None

    assert service.ids_asked == ["m/../coffee?x=1"]


def test_failure_is_not_cached(client, service):
    with service.while_down():
        assert unavailable(client, "m-coffee")

    assert client.get("m-coffee") == COFFEE


def test_answer_slower_than_the_timeout_is_unavailable(client, service):
    with service.while_slow(SLOWER_THAN_TIMEOUT_S):
        assert unavailable(client, "m-coffee")
        assert service.requests == 1


def test_bare_404_from_a_wrong_url_is_a_failure_not_an_unknown_merchant(service, clock):
    circuit = CircuitBreaker("enrichment", clock=clock)
    misconfigured = EnrichmentClient(f"{service.url}/v9", TIMEOUT_S, TtlCache(60.0, clock=clock), circuit)

    assert unavailable(misconfigured, "m-coffee")
    assert circuit.consecutive_failures == 1


# --- the circuit breaker ------------------------------------------------------------------------------------------


def test_five_failures_open_the_breaker_and_lookups_then_fail_without_a_request(client, service):
    with service.while_slow(SLOWER_THAN_TIMEOUT_S):
        assert all(unavailable(client, f"m-{n}") for n in range(5))
        assert client.breaker.state is BreakerState.OPEN

        assert unavailable(client, "m-coffee")
        assert service.requests == 5


def test_open_breaker_lets_one_probe_through_after_the_reset_timeout_and_closes_on_success(client, service, clock):
    with service.while_down():
        for n in range(5):
            unavailable(client, f"m-{n}")
    assert unavailable(client, "m-coffee")  # the service is back, but the breaker is still open
    assert service.requests == 0

    clock.now += 2.0

    assert client.get("m-coffee") == COFFEE
    assert client.breaker.state is BreakerState.CLOSED


def test_cached_answers_are_served_while_the_breaker_is_open(client, service):
    client.get("m-coffee")
    with service.while_down():
        for n in range(5):
            unavailable(client, f"m-{n}")

        assert client.breaker.state is BreakerState.OPEN
        assert client.get("m-coffee") == COFFEE


# --- one lookup per batch -----------------------------------------------------------------------------------------


def test_prefetch_asks_once_for_the_uncached_ids_and_gets_are_answered_from_memory(client, service):
    client.get("m-coffee")
    service.reset_counters()

    client.prefetch(["m-books", "m-rail", "m-nobody", "m-coffee", "m-books"])

    assert service.requests == 1
    assert sorted(service.ids_asked) == ["m-books", "m-nobody", "m-rail"]
    assert client.get("m-books") == Merchant(**MERCHANTS["m-books"])
    assert client.get("m-nobody") is None
    assert service.requests == 1


def test_prefetch_answers_hold_for_the_batch_even_without_a_cache(service, clock):
    no_cache = EnrichmentClient(service.url, TIMEOUT_S, TtlCache(0.0), CircuitBreaker("enrichment", clock=clock))
    no_cache.prefetch(["m-books"])

    assert no_cache.get("m-books") == Merchant(**MERCHANTS["m-books"])
    assert service.requests == 1


def test_ids_a_failed_prefetch_asked_for_are_unavailable_without_another_request(client, service):
    with service.while_slow(SLOWER_THAN_TIMEOUT_S):
        client.prefetch(["m-books", "m-rail"])

        assert unavailable(client, "m-books") and unavailable(client, "m-rail")
        assert service.requests == 1

    client.prefetch(["m-books"])  # the next batch asks again: failures are not remembered beyond one batch
    assert client.get("m-books") == Merchant(**MERCHANTS["m-books"])


def test_prefetch_makes_no_request_while_the_breaker_is_open(client, service):
    with service.while_down():
        for n in range(5):
            unavailable(client, f"m-{n}")

    client.prefetch(["m-books"])

    assert service.requests == 0
    assert unavailable(client, "m-books")


def test_a_batch_of_500_transactions_against_a_slow_service_makes_one_request(client, service, transaction_data):
    registry = default_registry(merchants=client)
    processor = PartitionProcessor(registry, "events.ingest", sleep=lambda s: None, rng=random.Random(0))
    records = []
    for n in range(500):
        event = registry.parse(transaction_data(merchant_id=f"m-{n % 250}"))
        value = Envelope.wrap(event, f"tx-{n}", 1.0).encode()
        records.append(SourceRecord("events.transaction", 0, n, None, value, None))

    with service.while_slow(SLOWER_THAN_TIMEOUT_S):
        client.prefetch(merchant_ids(records, "events.ingest"))
        batch = processor.process(records, epoch=1, owner_id="o", expected_offset=0, consumed_at=2.0)

        assert service.requests == 1
    assert len(batch.processed) == 500 and batch.dead == ()


def test_no_client_without_an_enrichment_url():
    assert EnrichmentClient.from_settings(Settings(_env_file=None)) is None  # type: ignore[call-arg]


def test_client_from_settings_uses_the_enrichment_breaker(service):
    settings = Settings(_env_file=None, enrichment_url=service.url)  # type: ignore[call-arg]
    configured = EnrichmentClient.from_settings(settings)

    assert configured is not None
    assert configured.breaker.dependency == "enrichment"
    assert configured.breaker.reset_timeout_s == settings.breaker_reset_timeout_s
    assert configured.get("m-coffee") == COFFEE
