"""Async publisher over confluent-kafka: each produce resolves an asyncio future on the broker's acknowledgement.

A background thread polls for delivery reports; the publisher never reports success before the broker does.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message, Producer


@dataclass(frozen=True)
class Delivered:
    topic: str
    partition: int
    offset: int


class PublishError(Exception):
    """The broker did not acknowledge the record; the client must not be told it was accepted."""


class KafkaPublisher:
    def __init__(self, config: dict[str, Any]) -> None:
        self._producer = Producer(config)
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="kafka-delivery-poller", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.05)

    async def publish(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> Delivered:
        results = await self.publish_many([(topic, key, value, headers)])
        outcome = results[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def publish_many(
        self, records: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]] | None]]
    ) -> list[Delivered | PublishError]:
        """Produce all records, then wait for every acknowledgement; one outcome per record, in order."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Delivered | PublishError]] = []
        for topic, key, value, headers in records:
            future: asyncio.Future[Delivered | PublishError] = loop.create_future()
            futures.append(future)

            def on_delivery(err: KafkaError | None, msg: Message, fut: asyncio.Future = future) -> None:
                outcome: Delivered | PublishError
                if err is not None:
                    outcome = PublishError(f"broker did not acknowledge: {err.str()}")
                else:
                    outcome = Delivered(msg.topic(), msg.partition(), msg.offset())
                loop.call_soon_threadsafe(_settle, fut, outcome)

            while True:
                try:
                    self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                    break
                except BufferError:
                    # The local queue is full: this is backpressure, wait for deliveries to drain it.
                    await asyncio.sleep(0.005)
        return list(await asyncio.gather(*futures))

    def flush(self, timeout: float = 10.0) -> int:
        return self._producer.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        self._producer.flush(timeout)
        self._closed.set()
        self._poller.join(timeout=1.0)


def _settle(future: asyncio.Future, outcome: object) -> None:
    if not future.done():
        future.set_result(outcome)
