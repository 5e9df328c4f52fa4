"""Enrichment service faults under a load of transactions that name merchants: the service down, and slower than
the client's timeout. The fallback must process every transaction (marked `enrichment: unavailable` while the
service is out, `ok` again once it is back and the breaker closed): nothing lost, nothing doubled, no stall.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest

from tests.chaos.harness import FAULT_S, Expect, Scenario, steady
from tests.fakes.enrichment_service import MERCHANTS, FakeEnrichmentService
from tests.pipeline import wait_until

MERCHANT_IDS = tuple(MERCHANTS)
# The enrichment service is behind the owners, not the API: clients are not affected.
EXPECT = Expect(min_acked=0.95)


@pytest.fixture(autouse=True)
def healthy_service(enrichment_service: FakeEnrichmentService) -> Iterator[FakeEnrichmentService]:
    """Whatever a scenario did, the next test starts with the service up."""
    enrichment_service.up()
    yield enrichment_service
    enrichment_service.up()


def with_merchant(event: dict[str, Any], n: int) -> None:
    """Transactions name a merchant the fake service knows (round robin over the fixed set)."""
    if event["type"] == "transaction":
        event["merchant_id"] = MERCHANT_IDS[n % len(MERCHANT_IDS)]


def marks(scenario: Scenario, since: float, until: float = float("inf")) -> Counter[tuple[int, str]]:
    """(partition, enrichment mark) of the scenario's transactions committed in [since, until) (epoch seconds)."""
    rows = scenario.query(
        "SELECT e.partition, r.result->>'enrichment', count(*) FROM results r JOIN events e ON e.id = r.event_id"
        " WHERE r.event_id LIKE %s AND r.type = 'transaction'"
        " AND r.created_at >= to_timestamp(%s) AND r.created_at < to_timestamp(%s) GROUP BY 1, 2",
        f"{scenario.prefix}-%",
        since,
        min(until, 4e9),
    )
    return Counter({(partition, mark): n for partition, mark, n in rows})


def by_mark(counts: Counter[tuple[int, str]]) -> Counter[str]:
    out: Counter[str] = Counter()
    for (_, mark), n in counts.items():
        out[mark] += n
    return out


def every_partition_enriches(scenario: Scenario, since: float) -> bool:
    """Each transaction partition has committed an enriched transaction since then: every owner's breaker is
    closed (each owner process has its own)."""
    enriched = {partition for (partition, mark) in marks(scenario, since) if mark == "ok"}
    return enriched == set(range(scenario.pipeline.settings.partitions))


def run_fault(scenario: Scenario, description: str, fault: Callable[[], AbstractContextManager[None]]) -> None:
    with scenario.workload(rate=150, keys=16, types=("transaction",), extend=with_merchant):
        wait_until(lambda: every_partition_enriches(scenario, time.time() - 1), 60, "enrichment before the fault")
        fault_started = time.time()
        with scenario.fault(description), fault():
            steady(FAULT_S)
        healed = time.time()
        # Each owner's breaker is still open after the heal; it lets a probe through after its reset timeout.
        wait_until(lambda: every_partition_enriches(scenario, healed), 60, "enrichment again after the heal")
        enriching_again = time.time()
    scenario.verify(expect=EXPECT)

    everything = by_mark(marks(scenario, scenario.started_at))
    during = by_mark(marks(scenario, fault_started, healed + 0.5))  # + a commit in flight at the heal
    assert set(everything) <= {"ok", "unavailable"}, everything  # every transaction named a known merchant
    assert during["unavailable"] > 0, during
    # The fallback is the fault's doing: no transaction outside the fault and the breakers' reset was unenriched.
    outside = everything["unavailable"] - by_mark(marks(scenario, fault_started, enriching_again))["unavailable"]
    assert outside == 0, everything


def test_enrichment_service_down(scenario: Scenario, healthy_service: FakeEnrichmentService) -> None:
    run_fault(scenario, f"enrichment service down (connection refused) for {FAULT_S:g}s", healthy_service.while_down)


def test_enrichment_service_slower_than_the_timeout(scenario: Scenario, healthy_service: FakeEnrichmentService) -> None:
    delay_s = 4 * scenario.pipeline.settings.enrichment_timeout_s
    run_fault(
        scenario,
        f"enrichment service answers after {delay_s:g}s (timeout {scenario.pipeline.settings.enrichment_timeout_s:g}s)"
        f" for {FAULT_S:g}s",
        lambda: healthy_service.while_slow(delay_s),
    )
