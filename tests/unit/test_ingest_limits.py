"""Specification of the API's limits before work: headers judged before the body, bodies read under a byte cap,
each event's broker record bounded, and a request bounded in time with an honest answer when it runs out.

In-process, with a recording delivery in place of the broker: no broker, no database, no Ray.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from cluster.adapters.kafka_producer import Delivered, Record
from cluster.settings import RECORD_HEADROOM_BYTES, Settings
from pipelines.registry import default_registry
from serve_app.admission import InflightGate
from serve_app.body import BadContentLength, BodyTooLarge, declared_length, read_capped
from serve_app.delivery import Refused, Unknown
from serve_app.ingest import Ingestor, Reply, RequestMeta

MAX_EVENT_BYTES = 2048
JSON = RequestMeta("application/json", None, None)


def _settings(**fields: Any) -> Settings:
    return Settings(_env_file=None, tracing_enabled=False, max_event_bytes=MAX_EVENT_BYTES, **fields)  # type: ignore[call-arg]


class RecordingDelivery:
    """Acknowledges every record it is given (or never answers, when `hang`), and remembers them."""

    def __init__(self, hang: bool = False) -> None:
        self.delivered: list[tuple[str, Record]] = []
        self._hang = hang

    async def deliver(self, items: list[tuple[str, Record]]) -> list[Any]:
        self.delivered += items
        if self._hang:
            await asyncio.Event().wait()
        return [Delivered(record[0], 0, n) for n, (_, record) in enumerate(items)]


def _ingestor(delivery: RecordingDelivery, **fields: Any) -> Ingestor:
    settings = _settings(**fields)
    registry = default_registry(settings.base_currency, settings.risk_amount_threshold)
    return Ingestor(settings, registry, delivery, InflightGate(10_000))  # type: ignore[arg-type]


def _event(n: int, metadata_bytes: int = 0) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": f"limits-{n}",
        "type": "user_action",
        "user_id": "user-1",
        "action": "click",
        "target": "checkout-button",
        "timestamp": "2024-05-01T10:00:00Z",
    }
    if metadata_bytes:
        event["metadata"] = {"note": "x" * metadata_bytes}
    return event


# -- headers before the body --------------------------------------------------------------------------------------


def test_a_declared_length_over_the_limit_is_refused_from_the_headers_alone():
    ingestor = _ingestor(RecordingDelivery())
    meta = RequestMeta("application/json", None, None, content_length=MAX_EVENT_BYTES + 1)

    reply = ingestor.precheck(meta, ingestor.single_limit)

    assert reply is not None and reply.status == 413
    assert reply.body["error"] == "payload_too_large" and reply.body["limit"] == MAX_EVENT_BYTES


def test_a_wrong_media_type_is_refused_from_the_headers_alone():
    ingestor = _ingestor(RecordingDelivery())
    reply = ingestor.precheck(RequestMeta("text/plain", None, None, content_length=10), ingestor.batch_limit)
    assert reply is not None and reply.status == 415


def test_a_declared_length_within_the_limit_passes_the_headers_check():
    ingestor = _ingestor(RecordingDelivery())
    meta = RequestMeta("application/json; charset=utf-8", None, None, content_length=MAX_EVENT_BYTES)
    assert ingestor.precheck(meta, ingestor.single_limit) is None


@pytest.mark.parametrize(("header", "length"), [(None, None), ("0", 0), (" 512 ", 512)])
def test_content_length_is_read_as_declared(header, length):
    assert declared_length(header) == length


@pytest.mark.parametrize("header", ["-1", "12a", "1e3", "", "١٢"])
def test_a_content_length_that_is_not_a_non_negative_integer_is_refused(header):
    with pytest.raises(BadContentLength):
        declared_length(header)


def test_a_streamed_body_is_read_no_further_than_the_chunk_that_exceeds_the_cap():
    pulled: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        n = 0
        while True:
            pulled.append(n)
            n += 1
            yield b"x" * 1000

    with pytest.raises(BodyTooLarge):
        asyncio.run(read_capped(endless(), 4500))
    assert len(pulled) == 5  # 5000 bytes > 4500: the sixth chunk was never asked for


def test_a_streamed_body_within_the_cap_is_read_whole():
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b'{"a":', b"", b" 1}"):
            yield part

    assert asyncio.run(read_capped(chunks(), 8)) == b'{"a": 1}'


def test_malformed_json_is_answered_with_its_position_not_the_parser_text():
    reply = asyncio.run(_ingestor(RecordingDelivery()).single(b'{"type": nope}', JSON))
    assert reply.status == 400 and reply.body["reason"] == "body is not valid JSON (at line 1, column 10)"


# -- each event's broker record ----------------------------------------------------------------------------------


def test_a_batch_item_whose_record_exceeds_max_event_bytes_is_rejected_and_the_others_are_delivered():
    delivery = RecordingDelivery()
    body = orjson.dumps([_event(0), _event(1, metadata_bytes=MAX_EVENT_BYTES), _event(2)])
    assert len(body) < _settings().max_body_bytes  # the body as a whole is within its limit

    reply = asyncio.run(_ingestor(delivery).batch(body, JSON))

    assert reply.status == 202
    assert (reply.body["accepted"], reply.body["rejected"], reply.body["failed"]) == (2, 1, 0)
    big = reply.body["results"][1]
    assert big["status"] == "rejected" and big["error"] == "event_too_large" and big["id"] == "limits-1"
    assert f"{MAX_EVENT_BYTES}-byte limit" in big["reason"]
    assert [event_id for event_id, _ in delivery.delivered] == ["limits-0", "limits-2"]  # never handed on


def test_every_delivered_record_fits_max_event_bytes():
    delivery = RecordingDelivery()
    near = MAX_EVENT_BYTES - 700  # bodies just under the limit, records around it
    body = orjson.dumps([_event(n, metadata_bytes=near + 20 * n) for n in range(30)])

    asyncio.run(_ingestor(delivery).batch(body, JSON))

    sizes = [len(record[2]) + len(record[1] or b"") for _, record in delivery.delivered]
    assert sizes and max(sizes) <= MAX_EVENT_BYTES
    assert len(delivery.delivered) < 30  # some were over: the bound was exercised


def test_a_single_event_whose_record_exceeds_max_event_bytes_is_413_though_its_body_fits():
    delivery = RecordingDelivery()
    body = orjson.dumps(_event(0, metadata_bytes=MAX_EVENT_BYTES - 250))  # the envelope makes the record larger
    assert len(body) <= MAX_EVENT_BYTES

    reply = asyncio.run(_ingestor(delivery).single(body, JSON))

    assert reply.status == 413 and reply.body["error"] == "event_too_large" and reply.body["id"] == "limits-0"
    assert delivery.delivered == []


def test_max_event_bytes_above_the_brokers_message_max_bytes_is_a_configuration_error():
    with pytest.raises(ValidationError, match="max_event_bytes"):
        Settings(_env_file=None, kafka_message_max_bytes=100_000, max_event_bytes=100_000)  # type: ignore[call-arg]
    fits = Settings(  # type: ignore[call-arg]
        _env_file=None, kafka_message_max_bytes=100_000, max_event_bytes=100_000 - RECORD_HEADROOM_BYTES
    )
    assert fits.max_event_bytes == 100_000 - RECORD_HEADROOM_BYTES


def test_the_default_limits_are_consistent():
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.max_event_bytes + RECORD_HEADROOM_BYTES <= settings.kafka_message_max_bytes


# -- the request's time bound ------------------------------------------------------------------------------------


def test_a_batch_whose_delivery_outlives_the_request_timeout_is_504_with_every_event_marked_unknown():
    delivery = RecordingDelivery(hang=True)
    body = orjson.dumps([_event(0), {"type": "user_action"}, {**_event(2), "id": None}])

    reply = asyncio.run(_ingestor(delivery, request_timeout_s=0.05).batch(body, JSON))

    assert reply.status == 504 and reply.body["error"] == "timeout" and reply.body["error_id"]
    assert reply.headers == {"Retry-After": "1"}
    statuses = [r["status"] for r in reply.body["results"]]
    assert statuses == ["unknown", "rejected", "unknown"]
    assert reply.body["accepted"] == 0 and reply.body["unknown"] == 2
    generated = reply.body["results"][2]["id"]  # the id the API gave the event: the client can resend with it
    assert [event_id for event_id, _ in delivery.delivered] == ["limits-0", generated]


def test_a_single_event_whose_delivery_outlives_the_request_timeout_is_504_unknown_not_accepted():
    reply = asyncio.run(
        _ingestor(RecordingDelivery(hang=True), request_timeout_s=0.05).single(orjson.dumps(_event(0)), JSON)
    )
    assert reply.status == 504
    assert reply.body["status"] == "unknown" and reply.body["id"] == "limits-0"
    assert "same ids" in reply.body["reason"]


class AnsweringDelivery(RecordingDelivery):
    """Answers every record with the same outcome."""

    def __init__(self, outcome: Any) -> None:
        super().__init__()
        self._outcome = outcome

    async def deliver(self, items: list[tuple[str, Record]]) -> list[Any]:
        self.delivered += items
        return [self._outcome] * len(items)


def test_a_refused_single_event_carries_its_id_so_a_retry_can_reuse_it():
    # given an event without a client id (the API makes one), and neither the broker nor the spool taking it
    refused = Refused("broker_unavailable", "the broker is unavailable; retry later", 3, "err-1")
    delivery = AnsweringDelivery(refused)
    body = orjson.dumps({k: v for k, v in _event(0).items() if k != "id"})
    # when it is sent
    reply = asyncio.run(_ingestor(delivery).single(body, JSON))
    # then the 503 names the id the event was given, and says to resend with it
    (event_id, _) = delivery.delivered[0]
    assert reply.status == 503 and reply.body["id"] == event_id and reply.body["error_id"] == "err-1"
    assert "same id" in reply.body["reason"]


def test_a_single_event_whose_spooling_is_unknown_is_504_unknown_with_its_id():
    delivery = AnsweringDelivery(Unknown("err-2"))
    body = orjson.dumps({k: v for k, v in _event(0).items() if k != "id"})
    reply = asyncio.run(_ingestor(delivery).single(body, JSON))
    (event_id, _) = delivery.delivered[0]
    assert reply.status == 504 and reply.body["status"] == "unknown" and reply.body["id"] == event_id
    assert reply.body["error_id"] == "err-2" and "same id" in reply.body["reason"]


def test_batch_events_whose_spooling_is_unknown_are_marked_unknown_not_failed():
    delivery = AnsweringDelivery(Unknown("err-3"))
    reply = asyncio.run(_ingestor(delivery).batch(orjson.dumps([_event(0), _event(1)]), JSON))
    assert reply.status == 504 and reply.body["unknown"] == 2 and reply.body["error_id"] == "err-3"
    assert [(r["status"], r["id"]) for r in reply.body["results"]] == [("unknown", "limits-0"), ("unknown", "limits-1")]


# -- the key's events limit: after decoding, before validation ----------------------------------------------------


def test_a_batch_over_the_events_limit_is_refused_after_decoding_and_nothing_is_delivered() -> None:
    # given an ingestor whose request carries the key's events admission, with room for 4 events
    async def run() -> None:
        delivery = RecordingDelivery()
        ingestor = _ingestor(delivery)
        asked: list[int] = []
        refusal = Reply(429, {"error": "rate_limited", "reason": "test"}, {"Retry-After": "1"})

        async def admit(count: int) -> Reply | None:
            asked.append(count)
            return refusal if sum(asked) > 4 else None

        meta = dataclasses.replace(JSON, admit_events=admit)
        # when a batch of 3 and then a batch of 3 more (and an invalid one) arrive
        first = await ingestor.batch(orjson.dumps([_event(n) for n in range(3)]), meta)
        second = await ingestor.batch(orjson.dumps([_event(n) for n in range(3, 5)] + [{"type": "x"}]), meta)
        # then the second is refused whole: not one of its events, valid or not, was validated or delivered
        assert first.status == 202 and second is refusal
        assert asked == [3, 3]
        assert [event_id for event_id, _ in delivery.delivered] == [f"limits-{n}" for n in range(3)]

    asyncio.run(run())


def test_a_malformed_body_is_not_counted_against_the_events_limit() -> None:
    async def run() -> None:
        asked: list[int] = []

        async def admit(count: int) -> Reply | None:
            asked.append(count)
            return None

        reply = await _ingestor(RecordingDelivery()).batch(b"[{", dataclasses.replace(JSON, admit_events=admit))
        assert reply.status == 400 and asked == []

    asyncio.run(run())
