"""Specification of publish failures at the API: produce() never raises into a request, a record the broker refuses
for good is a per-record rejection (never spooled, never held against the broker's breaker), and a client never sees
driver text: 503 bodies carry advice and an error id, the log line with that id carries the cause.

The producers are real librdkafka producers with nowhere to connect (their local size check needs no broker); the
publisher and spool in the Delivery tests are stand-ins, since what is specified is Delivery's decision.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from typing import Any

import psycopg
import pytest
from confluent_kafka import KafkaError

from cluster.adapters.kafka_config import producer_config
from cluster.adapters.kafka_producer import (
    BlockingPublisher,
    Delivered,
    KafkaPublisher,
    PublishError,
    Record,
    is_permanent,
    publish_error,
)
from cluster.adapters.spool import SpoolUsage
from pipelines.policies.breaker import BreakerState, CircuitBreaker
from serve_app.delivery import Delivery, Refused, Rejected, Spooled, SpoolWatch

NOWHERE = "127.0.0.1:9"  # discard port: nothing answers
LIMIT = 10_000
SECRET = "postgresql://eventpipe:hunter2@10.1.2.3:5432/eventpipe"


def _config() -> dict[str, Any]:
    return producer_config(NOWHERE, message_timeout_ms=1000, message_max_bytes=LIMIT)


def _record(size: int, topic: str = "events.sensor") -> Record:
    return (topic, b"key", b"x" * size, None)


@pytest.mark.parametrize(
    ("code", "permanent"),
    [
        (KafkaError.MSG_SIZE_TOO_LARGE, True),
        (KafkaError.INVALID_RECORD, True),
        (KafkaError.RECORD_LIST_TOO_LARGE, True),
        (KafkaError._MSG_TIMED_OUT, False),  # retriable() is False for it too: a timeout must never dead-letter
        (KafkaError._TRANSPORT, False),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, False),  # configuration, fixed without touching the record
        (KafkaError.NOT_LEADER_FOR_PARTITION, False),
        (KafkaError._QUEUE_FULL, False),
    ],
)
def test_only_errors_about_the_record_itself_are_permanent(code, permanent):
    assert is_permanent(KafkaError(code)) is permanent


def test_the_async_publisher_reports_a_record_over_message_max_bytes_as_a_permanent_failure_without_raising():
    publisher = KafkaPublisher(_config())
    try:
        (outcome,) = asyncio.run(publisher.publish_many([_record(LIMIT + 1)]))
    finally:
        publisher.close(0.1)
    assert isinstance(outcome, PublishError) and outcome.permanent and outcome.code == "MSG_SIZE_TOO_LARGE"


def test_the_blocking_publisher_fails_only_the_oversized_record_and_goes_on_with_the_rest():
    publisher = BlockingPublisher(producer_config(NOWHERE, message_timeout_ms=200, message_max_bytes=LIMIT))
    try:
        outcomes = publisher.publish_in_order([_record(LIMIT + 1), _record(10)])
    finally:
        publisher.close(0.1)
    big, small = outcomes
    assert isinstance(big, PublishError) and big.permanent
    # the small one was produced (not failed for the big one's sake); with no broker it times out, transiently
    assert isinstance(small, PublishError) and not small.permanent


class StandInPublisher:
    def __init__(self, outcomes: list[Delivered | PublishError]) -> None:
        self._outcomes = outcomes

    async def publish_many(self, records: list[Record]) -> list[Delivered | PublishError]:
        return self._outcomes[: len(records)]


class StandInSpool:
    """A spool that fails like an unreachable database (with the URL in the driver's text), or takes everything."""

    def __init__(self, broken: bool) -> None:
        self.appended: list[tuple[str, Record]] = []
        self._broken = broken

    async def append(self, rows: list[tuple[str, Record]]) -> None:
        if self._broken:
            raise psycopg.OperationalError(f"connection to {SECRET} failed: Connection refused")
        self.appended += rows

    async def usage(self) -> SpoolUsage:
        return SpoolUsage(bool(self.appended), len(self.appended), 0)


def _delivery(outcomes: list[Delivered | PublishError], spool: StandInSpool | None = None) -> Delivery:
    watch = SpoolWatch(spool) if spool is not None else None  # type: ignore[arg-type]
    breaker = CircuitBreaker("kafka", failure_threshold=1, reset_timeout_s=60)
    return Delivery(StandInPublisher(outcomes), breaker, spool, watch, 1000)  # type: ignore[arg-type]


def _items(n: int) -> list[tuple[str, Record]]:
    return [(f"ev-{i}", _record(10)) for i in range(n)]


def test_a_permanently_refused_record_is_rejected_never_spooled_and_the_breaker_stays_closed():
    spool = StandInSpool(broken=False)
    too_large = PublishError("the producer refused the record: too large", permanent=True, code="MSG_SIZE_TOO_LARGE")
    invalid = PublishError("broker did not acknowledge: invalid record", permanent=True, code="INVALID_RECORD")
    delivery = _delivery([Delivered("events.sensor", 0, 7), too_large, invalid], spool)

    outcomes = asyncio.run(delivery.deliver(_items(3)))

    assert outcomes[0] == Delivered("events.sensor", 0, 7)
    assert outcomes[1] == Rejected("event_too_large", outcomes[1].reason)  # type: ignore[union-attr]
    assert isinstance(outcomes[2], Rejected) and outcomes[2].error == "publish_rejected"
    assert spool.appended == []
    assert delivery.breaker.state is BreakerState.CLOSED  # failure_threshold=1: one counted failure would open it


def test_a_transient_failure_still_goes_to_the_spool_and_counts_against_the_broker():
    spool = StandInSpool(broken=False)
    delivery = _delivery([PublishError("broker did not acknowledge: Local: Message timed out")], spool)

    (outcome,) = asyncio.run(delivery.deliver(_items(1)))

    assert outcome == Spooled() and [event_id for event_id, _ in spool.appended] == ["ev-0"]
    assert delivery.breaker.state is BreakerState.OPEN


def test_a_refusal_body_carries_advice_and_an_error_id_and_the_log_line_with_that_id_carries_the_cause(caplog):
    delivery = _delivery([PublishError("broker did not acknowledge: Local: Message timed out")], StandInSpool(True))

    with caplog.at_level(logging.WARNING, logger="serve_app.delivery"):
        (outcome,) = asyncio.run(delivery.deliver(_items(1)))

    assert isinstance(outcome, Refused) and outcome.error == "broker_unavailable" and outcome.error_id
    for text in ("hunter2", "10.1.2.3", "postgresql://", "OperationalError", "Connection refused", "timed out"):
        assert text not in outcome.reason
    (line,) = [r for r in caplog.records if outcome.error_id in r.getMessage()]
    assert "OperationalError" in line.getMessage() and getattr(line, "error_id", None) == outcome.error_id


@pytest.mark.parametrize(
    ("code", "lost"),
    [
        (KafkaError.PRODUCER_FENCED, True),  # "a newer producer with the same transactionalId": a stale producer
        (KafkaError.INVALID_PRODUCER_EPOCH, True),
        (KafkaError._PURGE_QUEUE, True),  # what the replaced producer still held
        (KafkaError._PURGE_INFLIGHT, True),
        (KafkaError._MSG_TIMED_OUT, False),  # the broker did not answer: its health is in question
        (KafkaError._TRANSPORT, False),
    ],
)
def test_only_failures_of_the_producer_itself_are_marked_producer_lost(code, lost):
    error = publish_error(KafkaError(code), "broker did not acknowledge")
    assert error.producer_lost is lost and not error.permanent
    assert pickle.loads(pickle.dumps(error)).producer_lost is lost  # it crosses Ray as it is


def _half_open_delivery(outcomes: list[Delivered | PublishError], spool: StandInSpool) -> Delivery:
    clock = [0.0]
    breaker = CircuitBreaker("kafka", failure_threshold=1, reset_timeout_s=2.0, clock=lambda: clock[0])
    breaker.record_failure("blackhole")
    clock[0] = 2.0  # the cool-down passed: the next call is a probe
    return Delivery(StandInPublisher(outcomes), breaker, spool, SpoolWatch(spool), 1000)  # type: ignore[arg-type]


def test_a_probe_that_meets_a_fenced_producer_closes_the_breaker_for_the_replacement_producer():
    # given a half-open breaker, and a probe whose records the broker refuses because a newer epoch fenced the producer
    spool = StandInSpool(broken=False)
    fenced = publish_error(KafkaError(KafkaError.PRODUCER_FENCED), "broker did not acknowledge")
    delivery = _half_open_delivery([fenced, fenced], spool)
    assert delivery.breaker.state is BreakerState.HALF_OPEN
    # when the probe is made
    outcomes = asyncio.run(delivery.deliver(_items(2)))
    # then its events are spooled (not acknowledged by the broker), and the breaker does not wait out another cool-down
    assert outcomes == [Spooled(), Spooled()]
    assert delivery.breaker.state is BreakerState.CLOSED and delivery.breaker.allow()


def test_a_probe_that_times_out_reopens_the_breaker():
    spool = StandInSpool(broken=False)
    timed_out = publish_error(KafkaError(KafkaError._MSG_TIMED_OUT), "broker did not acknowledge")
    delivery = _half_open_delivery([timed_out], spool)
    assert asyncio.run(delivery.deliver(_items(1))) == [Spooled()]
    assert delivery.breaker.state is BreakerState.OPEN


class CommitsThenHangsSpool(StandInSpool):
    """A spool whose INSERT commits, but whose answer never comes back within the bound (a stalled connection)."""

    def __init__(self) -> None:
        super().__init__(broken=False)

    async def append(self, rows: list[tuple[str, Record]]) -> None:
        self.appended += rows
        await asyncio.Event().wait()


def test_a_spool_append_that_outlives_its_bound_is_unknown_never_refused():
    # given a broker that fails transiently and a spool that commits the rows but does not answer within the bound
    spool = CommitsThenHangsSpool()
    timed_out = publish_error(KafkaError(KafkaError._MSG_TIMED_OUT), "broker did not acknowledge")
    breaker = CircuitBreaker("kafka", failure_threshold=1, reset_timeout_s=60)
    delivery = Delivery(
        StandInPublisher([timed_out, timed_out]),  # type: ignore[arg-type]
        breaker,
        spool,  # type: ignore[arg-type]
        SpoolWatch(spool),  # type: ignore[arg-type]
        1000,
        spool_timeout_s=0.05,
    )
    # when the events are delivered
    outcomes = asyncio.run(delivery.deliver(_items(2)))
    # then nobody knows whether they were taken: never "not taken, retry later" (a retry with a new id duplicates)
    assert [type(o).__name__ for o in outcomes] == ["Unknown", "Unknown"]
    assert outcomes[0].error_id  # type: ignore[union-attr]
    assert len(spool.appended) == 2
