"""One partition of the log as a source of SourceRecord batches, positioned by an offset we own.

It never commits offsets to Kafka for correctness: the checkpoint in PostgreSQL is the truth.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

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
        out: list[SourceRecord] = []
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal() or not err.retriable():
                    raise KafkaException(err)
                log.warning("transient consume error on %s[%d]: %s", self.topic, self.partition, err)
                continue
            ts_type, ts = msg.timestamp()
            out.append(
                SourceRecord(
                    topic=self.topic,
                    partition=self.partition,
                    offset=msg.offset(),
                    key=msg.key(),
                    value=msg.value(),
                    timestamp_ms=ts if ts_type != 0 and ts > 0 else None,
                    headers=tuple(msg.headers() or ()) or None,
                )
            )
        return out

    def close(self) -> None:
        self._consumer.close()
