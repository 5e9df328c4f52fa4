"""An Ingestor built like an API replica's, in the test process, with its own limits: for tests that drive the edge
(spool, limits, refusals) without going through HTTP and Serve.

It uses the session's real broker and the given spool database; it must never stand in for a component.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from cluster.adapters.kafka_config import producer_config
from cluster.adapters.kafka_producer import KafkaPublisher
from cluster.adapters.spool import AsyncSpool
from cluster.settings import Settings
from pipelines.policies.breaker import CircuitBreaker
from pipelines.registry import default_registry
from serve_app.admission import InflightGate
from serve_app.delivery import Delivery, SpoolWatch
from serve_app.ingest import Ingestor
from tests.pipeline import Pipeline


@asynccontextmanager
async def in_process_ingestor(
    pipeline: Pipeline,
    *,
    settings: Settings | None = None,
    spool_url: str | None = None,
    spool_max_rows: int = 1_000,
    max_inflight_events: int = 1_000,
    broker_timeout_ms: int = 1_000,
    message_max_bytes: int | None = None,
) -> AsyncIterator[tuple[Ingestor, CircuitBreaker]]:
    """The Ingestor and its kafka breaker (opens after 2 failures); no spool when `spool_url` is None."""
    settings = settings or pipeline.settings
    publisher = KafkaPublisher(
        producer_config(
            settings.kafka_bootstrap,
            message_timeout_ms=broker_timeout_ms,
            message_max_bytes=message_max_bytes or settings.kafka_message_max_bytes,
        )
    )
    spool = AsyncSpool(spool_url, timeout_s=1.0) if spool_url else None
    watch = SpoolWatch(spool) if spool else None
    if spool is not None and watch is not None:
        await spool.open()
        await watch.refresh()
    breaker = CircuitBreaker("kafka", failure_threshold=2, reset_timeout_s=60.0)
    delivery = Delivery(publisher, breaker, spool, watch, spool_max_rows, spool_timeout_s=2.0)
    registry = default_registry(settings.base_currency, settings.risk_amount_threshold)
    try:
        yield Ingestor(settings, registry, delivery, InflightGate(max_inflight_events)), breaker
    finally:
        if spool is not None:
            await spool.close()
        publisher.close(timeout=5.0)
