"""Raw access to the log for chaos scenarios: produce bytes straight to a partition (past the API), read a
partition back, and read the DLQ topic.

Clients only, configured like an outside producer would be; it records nothing (scenarios call the checker).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import orjson
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from cluster.adapters.kafka_config import consumer_config
from tests.pipeline import unique_prefix

MAX_RECORD_BYTES = 16 * 1024 * 1024  # lets the producer send the 10 MB records; the broker decides what it takes


@dataclass(frozen=True)
class Delivered:
    topic: str
    partition: int
    offset: int | None  # None when the broker refused the record
    error: KafkaError | None


class RawProducer:
    """An idempotent producer that writes exactly the bytes given, to the partition given."""

    def __init__(self, bootstrap: str) -> None:
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "none",
                "message.max.bytes": MAX_RECORD_BYTES,
                "message.timeout.ms": 30_000,
            }
        )

    def produce(
        self,
        topic: str,
        partition: int,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Delivered:
        """Write one record (with these headers) and wait for the broker's answer."""
        out: list[Delivered] = []

        def report(err: KafkaError | None, msg: Message) -> None:
            out.append(Delivered(topic, partition, None if err else msg.offset(), err))

        self._producer.produce(
            topic, value=value, key=key, partition=partition, headers=headers or None, on_delivery=report
        )
        self._producer.flush(60)
        if not out:
            raise AssertionError(f"no delivery report for a record to {topic}[{partition}] within 60 s")
        return out[0]

    def close(self) -> None:
        self._producer.flush(10)

    def __enter__(self) -> RawProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_partition(
    bootstrap: str, topic: str, partition: int, start: int, count: int, timeout_s: float = 30.0
) -> list[Message]:
    """`count` records of a partition from offset `start` (fewer if the log ends first)."""
    consumer = Consumer(consumer_config(bootstrap, unique_prefix("chaos-reader")))
    try:
        consumer.assign([TopicPartition(topic, partition, start)])
        out: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < count and time.monotonic() < deadline:
            out += [m for m in consumer.consume(count - len(out), 0.5) if m.error() is None]
        return out[:count]
    finally:
        consumer.close()


def high_watermark(bootstrap: str, topic: str, partition: int) -> int:
    consumer = Consumer(consumer_config(bootstrap, unique_prefix("chaos-watermark")))
    try:
        return int(consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1])
    finally:
        consumer.close()


def dlq_keys(bootstrap: str, dlq_topic: str, start: int, idle_s: float = 2.0) -> Counter[bytes]:
    """How many times each key appears on the DLQ topic from offset `start` (its partition 0) to its end."""
    consumer = Consumer(consumer_config(bootstrap, unique_prefix("chaos-dlq")))
    keys: Counter[bytes] = Counter()
    try:
        consumer.assign([TopicPartition(dlq_topic, 0, start)])
        end = high_watermark(bootstrap, dlq_topic, 0)
        idle_since = time.monotonic()
        position = start
        while position < end and time.monotonic() - idle_since < idle_s:
            msgs = consumer.consume(500, 0.2)
            if msgs:
                idle_since = time.monotonic()
            for m in msgs:
                if m.error() is None:
                    position = max(position, m.offset() + 1)
                    keys[m.key() or b""] += 1
        return keys
    finally:
        consumer.close()


def dlq_key(topic: str, partition: int, offset: int) -> bytes:
    return f"{topic}:{partition}:{offset}".encode()


def envelope_id(value: bytes | None) -> str:
    """The event id of an API envelope read back from a typed topic."""
    return str(orjson.loads(value or b"{}")["id"])
