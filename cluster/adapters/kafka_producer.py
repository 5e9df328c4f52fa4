"""Async publisher over confluent-kafka: each produce resolves an asyncio future on the broker's acknowledgement.

A background thread polls for delivery reports and settles futures in batches; success is never reported before the
broker acknowledged the record.
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


Record = tuple[str, bytes | None, bytes, list[tuple[str, bytes]] | None]
_Settled = tuple[asyncio.Future, "Delivered | PublishError"]


class KafkaPublisher:
    def __init__(self, config: dict[str, Any]) -> None:
        self._producer = Producer(config)
        self._closed = threading.Event()
        # Delivery reports of one poll() are handed to each event loop in one call, not one wake-up per record.
        self._pending: dict[asyncio.AbstractEventLoop, list[_Settled]] = {}
        self._poller = threading.Thread(target=self._poll_loop, name="kafka-delivery-poller", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.05)
            self._hand_over()

    def _hand_over(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        for loop, settled in pending.items():
            loop.call_soon_threadsafe(_settle_all, settled)

    async def publish_many(self, records: list[Record]) -> list[Delivered | PublishError]:
        """Produce all records, then wait for every acknowledgement; one outcome per record, in order."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Delivered | PublishError]] = []

        def on_delivery(fut: asyncio.Future, err: KafkaError | None, msg: Message) -> None:
            # Runs on the poller thread, inside poll().
            outcome: Delivered | PublishError
            if err is not None:
                outcome = PublishError(f"broker did not acknowledge: {err.str()}")
            else:
                outcome = Delivered(msg.topic(), msg.partition(), msg.offset())
            self._pending.setdefault(loop, []).append((fut, outcome))

        for topic, key, value, headers in records:
            future: asyncio.Future[Delivered | PublishError] = loop.create_future()
            futures.append(future)
            while True:
                try:
                    self._producer.produce(
                        topic,
                        value=value,
                        key=key,
                        headers=headers,
                        on_delivery=lambda err, msg, fut=future: on_delivery(fut, err, msg),
                    )
                    break
                except BufferError:
                    # The local queue is full: backpressure; wait for deliveries to drain it.
                    await asyncio.sleep(0.005)
        return list(await asyncio.gather(*futures))

    def close(self, timeout: float = 10.0) -> None:
        self._producer.flush(timeout)
        self._closed.set()
        self._poller.join(timeout=1.0)
        self._hand_over()


def _settle_all(settled: list[_Settled]) -> None:
    for future, outcome in settled:
        if not future.done():
            future.set_result(outcome)
