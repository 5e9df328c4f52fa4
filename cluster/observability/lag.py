"""Queue lag measured honestly: the broker's latest offset per partition minus the next offset committed in PostgreSQL.

The latest offset comes from the high watermark in the broker's fetch responses, as a consumer caches it: on the
embedded broker (Tansu) `get_watermark_offsets(cached=False)` and the admin `list_offsets` always answer 1, but a
fetch response carries the true value. So `HighWatermarks` briefly reads each partition from its committed offset
(a few records at most) and takes the cached watermark. It never commits offsets and never stays assigned between
readings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

log = logging.getLogger(__name__)

Partition = tuple[str, int]


def watermark_consumer_config(bootstrap: str, fetch_wait_ms: int = 50) -> dict[str, Any]:
    """A consumer that fetches little: one small fetch per partition is all a reading needs."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": "eventpipe-metrics-hub",  # required by librdkafka; nothing is committed under it
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,  # an empty fetch at the end still proves a fresh response arrived
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": fetch_wait_ms,
        "fetch.message.max.bytes": 65_536,
        "fetch.max.bytes": 1_048_576,
        "queued.max.messages.kbytes": 1_024,
        "fetch.queue.backoff.ms": 10,
    }


class HighWatermarks:
    def __init__(self, config: dict[str, Any]) -> None:
        self._consumer = Consumer(config)

    def read(self, positions: Mapping[Partition, int], timeout_s: float = 1.5) -> dict[Partition, int]:
        """The high watermark of every partition that answered a fetch from `positions[partition]` within timeout_s.

        A partition missing from the answer did not answer (broker unreachable, topic not created yet).
        """
        if not positions:
            return {}
        self._consumer.assign([TopicPartition(t, p, max(0, offset)) for (t, p), offset in positions.items()])
        answered: set[Partition] = set()
        deadline = time.monotonic() + timeout_s
        try:
            while len(answered) < len(positions):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                for msg in self._consumer.consume(1000, min(left, 0.1)):
                    err = msg.error()
                    if err is None or err.code() == KafkaError._PARTITION_EOF:
                        answered.add((msg.topic(), msg.partition()))
            out: dict[Partition, int] = {}
            for topic, partition in answered:
                _low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
                if high >= 0:
                    out[(topic, partition)] = int(high)
            return out
        finally:
            self._consumer.unassign()

    def close(self) -> None:
        self._consumer.close()


def queue_lag(high: Mapping[Partition, int], committed: Mapping[Partition, int]) -> dict[Partition, int]:
    """Records not yet committed, per partition whose high watermark is known (never negative: a broker that lost
    its log, like the memory-only embedded one after a restart, can be behind PostgreSQL until offsets start over)."""
    return {tp: max(0, hw - committed.get(tp, 0)) for tp, hw in high.items()}
