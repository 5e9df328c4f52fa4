"""Specification of dead-letter records on `events.dlq`: a dead letter's value is cut to fit the producer's
message.max.bytes (with room left for its headers), so the topic never refuses it for its size.

The producers are real librdkafka producers with nowhere to connect: their local size check needs no broker.
"""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, Producer

from cluster.adapters.dlq_publisher import DLQ_HEADROOM_BYTES, DeadLetterPublisher, dlq_value_limit, spool_dead_letter
from cluster.adapters.kafka_config import producer_config
from cluster.adapters.kafka_producer import PublishError, is_size_error, publish_error
from pipelines.batch import CommitBatch, DeadLetter
from pipelines.errors import DeadLetterKind

NOWHERE = "127.0.0.1:9"
LIMIT = 20_000


def test_a_dead_letter_value_is_cut_below_the_producers_message_max_bytes():
    # given a producer that takes at most LIMIT bytes, and a dead letter four times as large
    publisher = DeadLetterPublisher(producer_config(NOWHERE, message_max_bytes=LIMIT), "events.dlq")
    dead = DeadLetter(7, DeadLetterKind.PUBLISH_REJECTED, "too large", 1, b"x" * (4 * LIMIT), 0.0, event_id="ev-7")
    batch = CommitBatch("events.sensor", 0, 1, "owner", 7, 8, 0.0, dead=(dead,))
    # when it is published (the broker never answers)
    with pytest.raises(TimeoutError):  # queued and waiting for the broker: never refused locally for its size
        publisher.publish(batch, timeout_s=0.2)


def test_a_spooled_dead_letter_is_cut_to_the_same_limit_and_says_from_what():
    record = ("events.sensor", b"k", b"y" * (4 * LIMIT), None)
    topic, key, value, headers = spool_dead_letter("events.dlq", 3, "ev-3", record, "r", 10, message_max_bytes=LIMIT)
    assert len(value) == dlq_value_limit(LIMIT) == LIMIT - DLQ_HEADROOM_BYTES
    assert dict(headers or [])["truncated_from"] == str(4 * LIMIT).encode()
    Producer(producer_config(NOWHERE, message_max_bytes=LIMIT)).produce(topic, key=key, value=value, headers=headers)


@pytest.mark.parametrize(
    ("code", "size"),
    [
        (KafkaError.MSG_SIZE_TOO_LARGE, True),
        (KafkaError.INVALID_MSG_SIZE, True),
        (KafkaError.RECORD_LIST_TOO_LARGE, True),
        (KafkaError.INVALID_RECORD, False),
        (KafkaError._MSG_TIMED_OUT, False),
    ],
)
def test_size_errors_are_recognised_alike_from_librdkafka_and_from_a_publish_error(code, size):
    assert is_size_error(KafkaError(code)) is size
    assert is_size_error(publish_error(KafkaError(code), "ctx")) is size
    assert is_size_error(PublishError("no code")) is False
