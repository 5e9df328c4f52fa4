"""Publishers over confluent-kafka: an async one (each record resolves a future on the broker's acknowledgement) for
the API, and a blocking one that publishes a batch in order and waits for every report, for the spool drainer.

Success is never reported before the broker acknowledged the record; a record the local queue could not take within
the message timeout is reported failed, never left waiting; produce() never raises into a caller: every refusal is a
PublishError for that record, classified permanent (never retry it as it is) or transient.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivered:
    topic: str
    partition: int
    offset: int
    acked_ns: int = field(default=0, compare=False)  # wall clock (ns) when the acknowledgement reached us


class PublishError(Exception):
    """The broker did not acknowledge the record; the client must not be told it was accepted.

    `permanent`: the record can never be published as it is (too large, invalid for the broker): retrying it, spooling
    it or opening a breaker for it is wrong. `transient`: an outage or an ambiguous answer explains it (timeout, no
    leader, unreachable broker, full local queue, purge): it may succeed later, and a timed-out record may even have
    been written. Neither: an error this module does not know (counted against the record by the spool drainer).
    `producer_lost`: the failure is the producer's own (fenced by its own newer epoch, or purged when it was replaced):
    the broker answered, and the replacement producer should succeed; it says nothing against the broker's health.
    The message is for logs only (it carries librdkafka's text), never for clients.
    """

    def __init__(
        self,
        detail: str,
        *,
        permanent: bool = False,
        code: str | None = None,
        producer_lost: bool = False,
        transient: bool | None = None,
    ) -> None:
        super().__init__(detail)
        self.permanent = permanent
        self.code = code  # librdkafka's error name (e.g. MSG_SIZE_TOO_LARGE), when the error came from it
        self.producer_lost = producer_lost
        # Default: a failure without a librdkafka code is a local timeout (queue full, no report): transient.
        self.transient = (not permanent) if transient is None else (transient and not permanent)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_publish_error, (str(self), self.permanent, self.code, self.producer_lost, self.transient))


def _publish_error(
    detail: str, permanent: bool, code: str | None, producer_lost: bool = False, transient: bool | None = None
) -> PublishError:
    return PublishError(detail, permanent=permanent, code=code, producer_lost=producer_lost, transient=transient)


# The one classification of librdkafka's errors for a record (the API, the spool drainer and the DLQ publisher all
# use it). Size: the record is larger than the broker (or the producer) takes.
_SIZE = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,  # local (produce() raises) or the broker's
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.RECORD_LIST_TOO_LARGE,
    }
)
_SIZE_NAMES = frozenset(KafkaError(code).name() for code in _SIZE)
# Permanent: this very record can never be published (retriable() is False for timeouts too, so it cannot tell them
# apart): sizes, and records the broker validated and refused. Unknown topics and authorisation are not here: they
# are configuration, fixed without touching the record.
_PERMANENT = _SIZE | {KafkaError.INVALID_RECORD, KafkaError.INVALID_MSG, KafkaError._INVALID_ARG}
# Transient: an outage, a leader election, a full local queue or a purge explains the failure, or the answer is
# ambiguous (a timed-out record may have been written). Such a failure says nothing against the record itself.
_TRANSIENT = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_LEADER_FOR_PARTITION,  # also NOT_LEADER_OR_FOLLOWER
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._QUEUE_FULL,
        KafkaError._PURGE_QUEUE,
        KafkaError._PURGE_INFLIGHT,
        KafkaError._DESTROY,
        KafkaError._RESOLVE,
        KafkaError._FATAL,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.BROKER_NOT_AVAILABLE,
        KafkaError.REPLICA_NOT_AVAILABLE,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.KAFKA_STORAGE_ERROR,
        KafkaError.NOT_CONTROLLER,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.THROTTLING_QUOTA_EXCEEDED,
    }
)


def is_permanent(err: KafkaError) -> bool:
    """Whether the record that met this error can never succeed as it is."""
    return not err.retriable() and not err.fatal() and err.code() in _PERMANENT


def is_transient(err: KafkaError) -> bool:
    """Whether an outage, an election or an ambiguous answer explains this error (the record may still succeed)."""
    return bool(err.retriable()) or bool(err.fatal()) or err.code() in _TRANSIENT or idempotence_lost(err)


def is_size_error(err: KafkaError | PublishError) -> bool:
    """Whether the record was refused for its size (a librdkafka error, or a PublishError made from one)."""
    if isinstance(err, PublishError):
        return err.code in _SIZE_NAMES
    return err.code() in _SIZE


def publish_error(err: KafkaError, context: str) -> PublishError:
    lost = idempotence_lost(err) or err.code() in _PURGED
    return PublishError(
        f"{context}: {err.str()}",
        permanent=is_permanent(err),
        code=err.name(),
        producer_lost=lost,
        transient=is_transient(err),
    )


def refused_by_producer(exc: Exception) -> PublishError:
    """produce() raised (not BufferError): the record was never queued."""
    if isinstance(exc, KafkaException) and isinstance(exc.args[0] if exc.args else None, KafkaError):
        return publish_error(exc.args[0], "the producer refused the record")
    # Anything else from produce() is about the record's arguments (types, encodings): it cannot succeed as it is.
    return PublishError(f"the producer refused the record: {type(exc).__name__}: {exc}", permanent=True)


Record = tuple[str, bytes | None, bytes, list[tuple[str, bytes]] | None]


class _Round:
    """One publish_many call: its records' outcomes, filled in by delivery reports (on the poller thread) or by
    refusals at produce() (on the event loop), and one future, settled once the last outcome is in."""

    __slots__ = ("_left", "_lock", "future", "loop", "outcomes")

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.outcomes: list[Delivered | PublishError | None] = [None] * size
        self._left = size
        self._lock = threading.Lock()

    def settle(self, index: int, outcome: Delivered | PublishError) -> bool:
        """Record one record's outcome; True for the last one (then the future is to be settled)."""
        self.outcomes[index] = outcome
        with self._lock:
            self._left -= 1
            return self._left == 0

    def done(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


_BUFFER_FULL_WAIT_S = 0.005


def _message_timeout_s(config: dict[str, Any]) -> float:
    return float(config.get("message.timeout.ms", 300_000)) / 1000.0


# Delivery errors after which an idempotent producer never succeeds again: the broker holds a newer epoch for its
# producer id (e.g. a stale InitProducerId, sent during a network partition, landed after it healed). librdkafka does
# not flag them fatal, and every later record fails the same way; only a new producer (a new id) recovers.
_IDEMPOTENCE_LOST = frozenset({KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})
# What a replaced producer's purge() fails with: records it still held when it was given up.
_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})


def idempotence_lost(err: KafkaError) -> bool:
    """Whether this producer is unusable from now on (fatal, or fenced by its own newer epoch)."""
    return bool(err.fatal()) or err.code() in _IDEMPOTENCE_LOST


class KafkaPublisher:
    """Replaces its producer by itself when the old one lost its idempotence state; records still queued in the old
    one fail (their callers answer as for any unacknowledged record) while it is polled until empty."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = config
        self._producer = Producer(config)
        self._retired: list[Producer] = []
        self._lost: str | None = None
        # How long produce() may keep meeting a full local queue before the record is reported failed.
        self._enqueue_timeout_s = _message_timeout_s(config)
        self._closed = threading.Event()
        # Rounds completed by one poll() are handed to each event loop in one call, not one wake-up per record.
        self._pending: dict[asyncio.AbstractEventLoop, list[_Round]] = {}
        self._poller = threading.Thread(target=self._poll_loop, name="kafka-delivery-poller", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.05)
            for old in list(self._retired):
                old.poll(0)
                if len(old) == 0:
                    self._retired.remove(old)
            if self._lost is not None:
                self._renew()
            self._hand_over()

    def _renew(self) -> None:
        log.warning("kafka producer unusable (%s); replacing it with a new one", self._lost)
        old, self._producer, self._lost = self._producer, Producer(self._config), None
        old.purge()  # what it still holds fails now instead of waiting out the message timeout
        self._retired.append(old)

    def _hand_over(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        for loop, rounds in pending.items():
            loop.call_soon_threadsafe(_settle_all, rounds)

    async def publish_many(self, records: list[Record]) -> list[Delivered | PublishError]:
        """Produce all records, then wait for every acknowledgement; one outcome per record, in order."""
        if not records:
            return []
        loop = asyncio.get_running_loop()
        batch = _Round(loop, len(records))

        def on_delivery(index: int, err: KafkaError | None, msg: Message) -> None:
            # Runs on the poller thread, inside poll().
            outcome: Delivered | PublishError
            if err is not None:
                outcome = publish_error(err, "broker did not acknowledge")
                if idempotence_lost(err):
                    self._lost = err.str()
            else:
                outcome = Delivered(msg.topic(), msg.partition(), msg.offset(), time.time_ns())
            if batch.settle(index, outcome):
                self._pending.setdefault(loop, []).append(batch)

        deadline = time.monotonic() + self._enqueue_timeout_s
        for index, (topic, key, value, headers) in enumerate(records):
            refused: PublishError | None = None
            while True:
                try:
                    self._producer.produce(
                        topic, value=value, key=key, headers=headers, on_delivery=partial(on_delivery, index)
                    )
                    break
                except BufferError:
                    # The local queue is full: backpressure; wait for deliveries to drain it, but not for ever.
                    if time.monotonic() > deadline:
                        refused = PublishError("the local producer queue stayed full (broker not draining)")
                        break
                    await asyncio.sleep(_BUFFER_FULL_WAIT_S)
                except Exception as exc:  # noqa: BLE001 - never into the request: a failed outcome for this record
                    refused = refused_by_producer(exc)
                    if isinstance(exc, KafkaException) and exc.args and idempotence_lost(exc.args[0]):
                        self._lost = exc.args[0].str()
                    break
            if refused is not None and batch.settle(index, refused):
                batch.done()
        await batch.future
        return batch.outcomes  # type: ignore[return-value]  # every one is set once the future is

    def close(self, timeout: float = 10.0) -> None:
        self._producer.flush(timeout)
        self._closed.set()
        self._poller.join(timeout=1.0)
        self._hand_over()


class BlockingPublisher:
    """Publishes a batch in order from one thread and waits for every delivery report (the spool drainer's producer).

    Per-key order holds across retries because the producer is idempotent and records are produced in list order.
    After a fatal producer error (idempotence state lost) `broken` is set and the owner must build a new one.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self._fatal: str | None = None
        self._producer = Producer({**config, "error_cb": self._on_error})
        self._timeout_s = _message_timeout_s(config)

    @property
    def broken(self) -> str | None:
        """The fatal error that made this producer unusable, if any."""
        return self._fatal

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err.str()

    def publish_in_order(self, records: list[Record]) -> list[Delivered | PublishError]:
        """Produce every record in order, then wait up to the message timeout for all reports; one outcome each.

        A record refused for good at produce() (too large) fails alone and the rest go on; once a record cannot be
        queued for a transient reason, the rest are not produced (they would overtake it) and are failed.
        """
        outcomes: list[Delivered | PublishError | None] = [None] * len(records)

        def report(index: int, err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                outcomes[index] = publish_error(err, "broker did not acknowledge")
                if idempotence_lost(err) and self._fatal is None:
                    self._fatal = err.str()  # fenced by its own newer epoch: only a new producer recovers
            else:
                outcomes[index] = Delivered(msg.topic(), msg.partition(), msg.offset(), time.time_ns())

        deadline = time.monotonic() + self._timeout_s + 1.0
        for index, (topic, key, value, headers) in enumerate(records):
            queued = False
            stop: PublishError | None = None
            while not queued and time.monotonic() < deadline:
                try:
                    self._producer.produce(
                        topic, value=value, key=key, headers=headers, on_delivery=lambda e, m, i=index: report(i, e, m)
                    )
                    queued = True
                except BufferError:
                    self._producer.poll(0.05)
                except Exception as exc:  # noqa: BLE001 - a failed outcome for this record, never a failed round
                    refused = refused_by_producer(exc)
                    if refused.producer_lost and self._fatal is None:
                        self._fatal = str(refused)  # only a new producer recovers
                    if refused.permanent:
                        outcomes[index] = refused  # it never will be published: the rest do not overtake anything
                    else:
                        stop = refused
                    break
            if queued or outcomes[index] is not None:
                continue
            reason = stop or PublishError("the local producer queue stayed full (broker not draining)")
            for later in range(index, len(records)):
                outcomes[later] = reason
            break
        while any(o is None for o in outcomes) and time.monotonic() < deadline:
            self._producer.poll(0.05)
        return [o if o is not None else PublishError("no delivery report within the message timeout") for o in outcomes]

    def close(self, timeout: float = 5.0) -> None:
        self._producer.flush(timeout)


def _settle_all(rounds: list[_Round]) -> None:
    for batch in rounds:
        batch.done()
