"""One partition of the log as a source of SourceRecord batches, positioned by an offset we own.

It never commits offsets to Kafka for correctness: the checkpoint in PostgreSQL is the truth.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from pipelines.batch import SourceRecord

log = logging.getLogger(__name__)


class PartitionSource:
    def __init__(self, config: dict[str, Any], topic: str, partition: int) -> None:
        self._consumer = Consumer(config)
        self.topic = topic
        self.partition = partition

    def seek(self, offset: int) -> None:
        self._consumer.assign([TopicPartition(self.topic, self.partition, offset)])

    def poll_batch(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        """Up to max_records records, waiting at most timeout_s for the first one and not at all for the rest.

        A batch is whatever has arrived: one record at low load (lowest latency), up to max_records under load.
        """
        messages = self._consumer.consume(max_records, 0)
        if not messages:
            first = self._consumer.poll(timeout_s)
            if first is None:
                return []
            messages = [first, *self._consumer.consume(max_records - 1, 0)] if max_records > 1 else [first]
        return source_records(self.topic, self.partition, messages)

    def close(self) -> None:
        self._consumer.close()


def source_records(topic: str, partition: int, messages: Sequence[Message]) -> list[SourceRecord]:
    """The records of one partition's consumed messages, in their order: the end of the partition is skipped, a
    transient error is logged and skipped, a fatal one raised."""
    out: list[SourceRecord] = []
    append = out.append
    for msg in messages:
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                continue
            if err.fatal() or not err.retriable():
                raise KafkaException(err)
            log.warning("transient consume error on %s[%d]: %s", topic, partition, err)
            continue
        ts_type, ts = msg.timestamp()
        headers = msg.headers()
        append(
            SourceRecord(
                topic,
                partition,
                msg.offset(),
                msg.key(),
                msg.value(),
                ts if ts_type != 0 and ts > 0 else None,
                tuple(headers) if headers else None,
            )
        )
    return out
