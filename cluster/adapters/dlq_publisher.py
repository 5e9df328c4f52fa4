"""Writes dead letters to the `events.dlq` topic before their batch commits (at least once, keyed by position).

Readers of the topic dedupe on the key `topic:partition:offset`; the dead_letters table is the authority. A dead
letter the broker refuses for its size goes again without its bytes: it must never hold its partition.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message, Producer

from cluster.adapters.kafka_config import DEFAULT_MESSAGE_MAX_BYTES
from cluster.adapters.kafka_producer import PublishError, Record, idempotence_lost, is_size_error
from pipelines.batch import CommitBatch, DeadLetter
from pipelines.envelope import tenant_of
from pipelines.errors import DeadLetterKind

# Room a dead letter's value leaves under message.max.bytes for its key, headers (reason cut to 1 KiB, meta, source)
# and the record's framing.
DLQ_HEADROOM_BYTES = 8 * 1024


def dlq_value_limit(message_max_bytes: int) -> int:
    """The most of a dead record's value the topic carries (the dead_letters table keeps it whole)."""
    return max(0, message_max_bytes - DLQ_HEADROOM_BYTES)


class DeadLetterPublisher:
    def __init__(self, config: dict[str, Any], topic: str) -> None:
        self._config = config
        self._producer = Producer(config)
        self._topic = topic
        self._max_value = dlq_value_limit(int(config.get("message.max.bytes", DEFAULT_MESSAGE_MAX_BYTES)))

    def publish(self, batch: CommitBatch, timeout_s: float = 10.0) -> None:
        if not batch.dead:
            return
        failed: list[KafkaError] = []
        too_large: list[DeadLetter] = []

        def report(dead: DeadLetter) -> Callable[[KafkaError | None, Message], None]:
            def on_delivery(err: KafkaError | None, _msg: Message) -> None:
                if err is None:
                    return
                if is_size_error(err):
                    too_large.append(dead)  # the broker takes less than we cap at: send it again without its bytes
                else:
                    failed.append(err)

            return on_delivery

        for dead in batch.dead:
            self._produce(batch, dead, report(dead), with_payload=True)
        remaining = self._producer.flush(timeout_s)
        for dead in list(too_large):
            self._produce(batch, dead, report(dead), with_payload=False)
        if too_large:
            remaining += self._producer.flush(timeout_s)
        if remaining:
            raise TimeoutError(f"{remaining} dead letters not acknowledged by the broker within {timeout_s}s")
        if failed:
            if any(idempotence_lost(err) for err in failed):
                self._producer = Producer(self._config)  # fenced by its own newer epoch: only a new id recovers
            # Raised so the owner keeps its batch and publishes again: the topic is at least once, never at most.
            raise PublishError(f"{len(failed)} dead letters not acknowledged: {failed[0].str()}")

    def _produce(
        self,
        batch: CommitBatch,
        dead: DeadLetter,
        on_delivery: Callable[[KafkaError | None, Message], None],
        *,
        with_payload: bool,
    ) -> None:
        key = f"{batch.topic}:{batch.partition}:{dead.offset}".encode()
        headers = [
            ("error_kind", dead.error_kind.encode()),
            ("reason", dead.reason.encode()[:1024]),
            ("source", f"{batch.topic}:{batch.partition}:{dead.offset}".encode()),
            # The tenant is null when the record named none we know (a reader must not hand it to any tenant).
            ("meta", orjson.dumps({"event_id": dead.event_id, "attempts": dead.attempts, "tenant": dead.tenant})),
        ]
        payload = dead.payload if with_payload else None
        if payload is not None and len(payload) > self._max_value:
            # The table keeps the whole record; the topic carries a prefix so it stays under message.max.bytes.
            payload = payload[: self._max_value]
        if payload != dead.payload:
            headers.append(("truncated_from", str(len(dead.payload or b"")).encode()))
        self._producer.produce(self._topic, key=key, value=payload, headers=headers, on_delivery=on_delivery)

    def close(self) -> None:
        self._producer.flush(5.0)


def spool_dead_letter(
    dlq_topic: str,
    seq: int,
    event_id: str,
    record: Record,
    reason: str,
    attempts: int,
    *,
    message_max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES,
) -> Record:
    """The `events.dlq` record of a spooled record the drainer dead-lettered (keyed `spool:<seq>`; it has no log
    position). Like the owners' dead letters, the value is the record's, cut to stay under message.max.bytes."""
    max_value = dlq_value_limit(message_max_bytes)
    topic, _key, value, _headers = record
    headers = [
        ("error_kind", DeadLetterKind.PUBLISH_REJECTED.value.encode()),
        ("reason", reason.encode()[:1024]),
        ("source", f"spool:{seq}".encode()),
        (
            "meta",
            orjson.dumps({"event_id": event_id, "attempts": attempts, "topic": topic, "tenant": tenant_of(value)}),
        ),
    ]
    if len(value) > max_value:
        headers.append(("truncated_from", str(len(value)).encode()))
        value = value[:max_value]
    return (dlq_topic, f"spool:{seq}".encode(), value, headers)
