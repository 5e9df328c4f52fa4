"""Writes dead letters to the `events.dlq` topic before their batch commits (at least once, keyed by position).

Readers of the topic dedupe on the key `topic:partition:offset`; the dead_letters table is the authority.
"""

from __future__ import annotations

from typing import Any

import orjson
from confluent_kafka import Producer

from pipelines.batch import CommitBatch

_MAX_DLQ_VALUE = 512 * 1024


class DeadLetterPublisher:
    def __init__(self, config: dict[str, Any], topic: str) -> None:
        self._producer = Producer(config)
        self._topic = topic

    def publish(self, batch: CommitBatch, timeout_s: float = 10.0) -> None:
        if not batch.dead:
            return
        for dead in batch.dead:
            key = f"{batch.topic}:{batch.partition}:{dead.offset}".encode()
            headers = [
                ("error_kind", dead.error_kind.encode()),
                ("reason", dead.reason.encode()[:1024]),
                ("source", f"{batch.topic}:{batch.partition}:{dead.offset}".encode()),
                ("meta", orjson.dumps({"event_id": dead.event_id, "attempts": dead.attempts})),
            ]
            payload = dead.payload
            if payload is not None and len(payload) > _MAX_DLQ_VALUE:
                # The table keeps the whole record; the topic carries a prefix so it stays under message.max.bytes.
                payload = payload[:_MAX_DLQ_VALUE]
                headers.append(("truncated_from", str(len(dead.payload or b"")).encode()))
            self._producer.produce(self._topic, key=key, value=payload, headers=headers)
        remaining = self._producer.flush(timeout_s)
        if remaining:
            raise TimeoutError(f"{remaining} dead letters not acknowledged by the broker within {timeout_s}s")

    def close(self) -> None:
        self._producer.flush(5.0)
