"""The broker's own produce -> readable latency, measured during a run beside the pipeline's latencies (issue 9).

A probe producer sends one small record every `interval` seconds to a topic of its own, acknowledged like the API's
(acks=all); a probe consumer configured as the partition owners are (the same `fetch.wait.max.ms`) reads them back. Each
record carries the time it was handed to the producer; the latency is the time it was read minus that. Nothing of
eventpipe reads the probe topic. The probe adds two records' worth of broker work per `interval`.
"""

from __future__ import annotations

import threading
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from cluster.adapters.kafka_admin import ensure_topics
from cluster.adapters.kafka_config import consumer_config

FLOOR_TOPIC = "eventpipe.bench.broker-floor"


class BrokerFloor:
    """Context manager: probes while inside; `latencies_ms()` afterwards (records never read are left out)."""

    def __init__(self, bootstrap: str, fetch_wait_ms: int, interval_s: float = 0.05) -> None:
        self._bootstrap = bootstrap
        self._fetch_wait_ms = fetch_wait_ms
        self._interval = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._latencies: list[float] = []
        self._sent = 0
        self._threads: list[threading.Thread] = []
        self._started_ns = 0

    def __enter__(self) -> BrokerFloor:
        self._started_ns = time.time_ns()
        ensure_topics(self._bootstrap, {FLOOR_TOPIC: 1}, owned=False)
        consumer = Consumer(consumer_config(self._bootstrap, f"bench-floor-{uuid.uuid4()}", self._fetch_wait_ms))
        # Only what is produced from now on: the end of the log, as the owners read a live partition.
        consumer.assign([TopicPartition(FLOOR_TOPIC, 0, _end_offset(consumer))])
        producer = Producer({"bootstrap.servers": self._bootstrap, "acks": "all", "linger.ms": 0})
        self._threads = [
            threading.Thread(target=self._consume, args=(consumer,), name="floor-consumer", daemon=True),
            threading.Thread(target=self._produce, args=(producer,), name="floor-producer", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(1.0)  # the last records' time to become readable
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    @property
    def sent(self) -> int:
        return self._sent

    def latencies_ms(self) -> list[float]:
        with self._lock:
            return list(self._latencies)

    def _produce(self, producer: Producer) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            producer.produce(FLOOR_TOPIC, value=str(time.time_ns()).encode(), partition=0)
            producer.poll(0)
            self._sent += 1
            next_at += self._interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))
        producer.flush(5)

    def _consume(self, consumer: Consumer) -> None:
        try:
            while not self._stop.is_set():
                message = consumer.poll(0.1)
                if message is None or message.error() is not None:
                    continue
                read_ns = time.time_ns()
                value = message.value()
                if value and value.isdigit() and int(value) >= self._started_ns:  # not an earlier run's record
                    with self._lock:
                        self._latencies.append((read_ns - int(value)) / 1e6)
        finally:
            consumer.close()


def _end_offset(consumer: Consumer) -> int:
    """The partition's end, from its watermarks. The embedded Tansu answers 1 for a topic's high watermark whatever
    its length: earlier runs' records read then are left out by their timestamps (`_consume`)."""
    _, high = consumer.get_watermark_offsets(TopicPartition(FLOOR_TOPIC, 0), timeout=10)
    return max(high, 0)
