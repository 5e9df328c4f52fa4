"""A stuck partition is loud, on real components: while PostgreSQL refuses every connection (the fault proxy resets
them), an owner holding a record it cannot commit says `stalled`, and the cluster's scrape target shows the record's
age growing and the failed commits by reason; once PostgreSQL is back the record commits and the owner runs again.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.chaos import rawlog
from tests.chaos.faultproxy import FaultProxy
from tests.pipeline import Pipeline, unique_prefix, wait_until

pytestmark = pytest.mark.integration

PARTITION = 1


def samples(pipeline: Pipeline, name: str, **labels: str) -> float:
    """The sum of a metric's samples with these labels, as the cluster's one scrape target serves them."""
    text = httpx.get(f"{pipeline.metrics_url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def owner(pipeline: Pipeline, topic: str) -> dict[str, Any]:
    return next(s for s in pipeline.owner_statuses() if s["topic"] == topic and s["partition"] == PARTITION)


def test_an_owner_that_cannot_commit_says_stalled_and_its_partition_shows_the_age_and_the_failures(
    pipeline: Pipeline, pg_proxy: FaultProxy
) -> None:
    settings = pipeline.settings
    topic = settings.ingest_topic
    where = {"topic": topic, "partition": str(PARTITION)}
    failures_before = samples(pipeline, "partition_commit_failures_total", reason="unavailable", **where)
    event = {
        "id": unique_prefix("stuck"),
        "type": "user_action",
        "timestamp": "2026-11-24T10:00:00Z",
        "user_id": "stuck-user",
        "action": "click",
        "target": "item",
    }
    assert owner(pipeline, topic)["state"] == "running"
    try:
        # given PostgreSQL refuses every connection
        pg_proxy.reset()
        # when a record reaches the partition
        with rawlog.RawProducer(settings.kafka_bootstrap) as producer:
            assert producer.produce(topic, PARTITION, orjson.dumps(event)).offset is not None

        # then its owner says it is stalled, why, and for how long
        stalled = wait_until(
            lambda: (s := owner(pipeline, topic))["state"] == "stalled" and s,
            timeout_s=30,
            what=f"the owner of {topic}[{PARTITION}] to say it is stalled",
        )
        assert stalled["commit_error"] and stalled["failing_for_s"] >= settings.owner_stalled_after_s
        assert stalled["oldest_uncommitted_s"] >= settings.owner_stalled_after_s
        # ... and the scrape target shows the age of the record and the failed commits, as unavailable
        wait_until(
            lambda: (
                samples(pipeline, "partition_oldest_uncommitted_age_seconds", **where) >= settings.owner_stalled_after_s
            ),
            timeout_s=15,
            what="the uncommitted record's age on /metrics",
        )
        assert samples(pipeline, "partition_commit_failures_total", reason="unavailable", **where) > failures_before
    finally:
        pg_proxy.heal()

    # once PostgreSQL is back the record commits, the age falls back to 0 and the owner runs again
    wait_until(
        lambda: pipeline.scalar("SELECT count(*) FROM events WHERE id = %s", event["id"]) == 1,
        timeout_s=60,
        what="the record committed after the heal",
    )
    wait_until(lambda: owner(pipeline, topic)["state"] == "running", timeout_s=30, what="the owner running again")
    wait_until(
        lambda: samples(pipeline, "partition_oldest_uncommitted_age_seconds", **where) == 0,
        timeout_s=15,
        what="the age back to 0 on /metrics",
    )
