"""SpoolDrainer: the one named, detached actor that moves events from the durable ingest spool to the broker.

It publishes the oldest rows in seq order and deletes exactly the rows the broker acknowledged; it never deletes a row
before its ack and never publishes a row ahead of an older one that may still be published. A row that never can be
(cluster.spool_triage) leaves for the dead letters in the transaction that deletes it, so the spool never jams. A crash
between publish and delete re-publishes those rows, which the owners drop by event id.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import ray

from actors.metrics_hub import start_metrics_push
from cluster.adapters.dlq_publisher import spool_dead_letter
from cluster.adapters.kafka_config import producer_config
from cluster.adapters.kafka_producer import BlockingPublisher, Delivered
from cluster.adapters.spool import SpooledRecord, SpoolStore
from cluster.observability import metrics as catalogue  # a module: Ray pickles methods by value
from cluster.observability.breakers import breaker
from cluster.observability.event_spans import DrainSpans
from cluster.observability.logs import setup_logging
from cluster.observability.tracing import Tracing
from cluster.settings import Settings
from cluster.spool_triage import settle
from pipelines.envelope import tenant_of
from pipelines.errors import DeadLetterKind
from pipelines.outcome import Outcome

log = logging.getLogger(__name__)

_IDLE_POLL_S = 0.25  # empty spool (or another drainer holds the lock): look again after this
_FAILURE_PAUSE_S = 0.5  # after a failed publish, before the breaker has opened
_RENEWED_PAUSE_S = 0.1  # after the broker fenced the producer and a new one was built
_ERROR_BACKOFF_MIN_S = 0.5  # PostgreSQL unreachable: exponential backoff between these bounds
_ERROR_BACKOFF_MAX_S = 10.0
_COUNT_EVERY_S = 1.0  # spool_depth: read from the usage counters of a non-empty spool at most this often


def _publisher(settings: Settings) -> BlockingPublisher:
    return BlockingPublisher(
        producer_config(
            settings.kafka_bootstrap,
            linger_ms=5,
            message_timeout_ms=settings.producer_message_timeout_ms,
            message_max_bytes=settings.kafka_message_max_bytes,
        )
    )


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class SpoolDrainer:
    def __init__(self, settings: Settings) -> None:
        settings = settings.in_process()  # secrets come from this process's environment, not Ray
        setup_logging(settings, "spool-drainer")
        self._spans = DrainSpans(Tracing.start(settings, "spool-drainer"))
        self._settings = settings
        self._store = SpoolStore(settings.database_url.get_secret_value())
        self._publisher = _publisher(settings)
        self._breaker = breaker("kafka", settings)
        self._stopping = threading.Event()
        self._drained = 0
        self._dead_lettered = 0
        self._batches = 0
        self._last_error: str | None = None
        self._holds_lock = False
        self._counted_at = 0.0
        start_metrics_push(settings, "spool-drainer")
        self._thread = threading.Thread(target=self._run, name="spool-drainer", daemon=True)
        self._thread.start()

    def status(self) -> dict[str, Any]:
        return {
            "breaker": self._breaker.state.value,
            "drained": self._drained,
            "dead_lettered": self._dead_lettered,
            "batches": self._batches,
            "holds_lock": self._holds_lock,
            "last_error": self._last_error,
            "running": self._thread.is_alive(),
        }

    def stop(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Finish the batch in flight, then stop; rows not yet published stay in the spool for the next drainer."""
        self._stopping.set()
        self._thread.join(timeout_s)
        self._publisher.close(1.0)
        self._store.close()
        return self.status()

    # -- the loop -------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = _ERROR_BACKOFF_MIN_S
        while not self._stopping.is_set():
            try:
                pause = self._round()
                backoff = _ERROR_BACKOFF_MIN_S
            except Exception as exc:  # noqa: BLE001 - the drainer must outlive any one failure; it retries from the oldest row
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.warning("spool drain round failed, retrying in %.1fs: %s", backoff, self._last_error)
                pause, backoff = backoff, min(backoff * 2, _ERROR_BACKOFF_MAX_S)
            if pause:
                self._stopping.wait(pause)

    def _round(self) -> float:
        """One drain step; returns how long to pause before the next."""
        rows = self._store.oldest(self._settings.spool_drain_batch)
        self._measure_depth(bool(rows))
        if not rows:
            return _IDLE_POLL_S
        self._holds_lock = self._store.hold_drain_lock()
        if not self._holds_lock:
            return _IDLE_POLL_S
        if not self._breaker.allow():
            return max(0.05, min(self._breaker.retry_after_s(), 1.0))
        return self._publish(rows)

    def _measure_depth(self, has_rows: bool) -> None:
        if not has_rows:
            catalogue.METRICS.spool_depth.set(0)
        elif time.monotonic() - self._counted_at >= _COUNT_EVERY_S:
            catalogue.METRICS.spool_depth.set(self._store.usage().rows)
            self._counted_at = time.monotonic()

    def _publish(self, rows: list[SpooledRecord]) -> float:
        started = time.monotonic()
        records, spans = self._spans.publishing([row.event_id for row in rows], [row.record for row in rows])
        outcomes = self._publisher.publish_in_order(records)
        self._spans.published(spans, outcomes)
        settlement, blocked = settle(rows, outcomes, self._settings.spool_max_attempts)
        if settlement.dead:
            self._announce_dead_letters(rows, settlement.dead)
        by_seq = {row.seq: row for row in rows}
        # A spooled record is an API envelope: its dead letter belongs to the tenant it names (read only for these).
        self._store.settle(settlement, {seq: tenant_of(by_seq[seq].record[2]) for seq, _ in settlement.dead})
        self._drained += len(settlement.acked)
        self._batches += 1 if settlement.acked else 0
        if settlement.dead:
            self._dead_lettered += len(settlement.dead)
            self._count_dead_letters(rows, settlement.dead)
        # The broker answered if it acknowledged a record, or fenced a stale producer (replaced below, so the next
        # round should succeed): either way a half-open probe succeeded. A failing record is that record's problem.
        fenced = blocked is not None and blocked.producer_lost
        broker_answers = fenced or any(isinstance(o, Delivered) for o in outcomes)
        if broker_answers:
            self._breaker.record_success()
        if blocked is None:
            self._last_error = None
            log.debug("settled %d spooled events in %.0f ms", len(rows), (time.monotonic() - started) * 1000)
            return 0.0
        if not broker_answers:
            self._breaker.record_failure(str(blocked))  # nothing acknowledged: the broker is the problem
        self._last_error = str(blocked)
        log.debug("drained %d of %d spooled events, then stopped: %s", len(settlement.acked), len(rows), blocked)
        if self._publisher.broken:
            log.warning("spool producer failed fatally (%s); building a new one", self._publisher.broken)
            self._publisher.close(0)
            self._publisher = _publisher(self._settings)
            if fenced:
                return _RENEWED_PAUSE_S  # the broker answered (it fenced the old producer): the new one tries soon
        return 0.0 if settlement.acked or settlement.dead else _FAILURE_PAUSE_S

    def _announce_dead_letters(self, rows: list[SpooledRecord], dead: tuple[tuple[int, str], ...]) -> None:
        """Also on the `events.dlq` topic, before the table commit (at least once, like the owners'); best effort: the
        dead_letters table is the authority, and a topic that cannot take them must not jam the spool again."""
        by_seq = {row.seq: row for row in rows}
        topic = self._settings.dlq_topic
        records = [
            spool_dead_letter(
                topic,
                seq,
                row.event_id,
                row.record,
                reason,
                row.attempts + 1,
                message_max_bytes=self._settings.kafka_message_max_bytes,
            )
            for seq, reason in dead
            for row in (by_seq[seq],)
        ]
        failed = [o for o in self._publisher.publish_in_order(records) if not isinstance(o, Delivered)]
        if failed:
            log.warning("%d spool dead letters not published on %s: %s", len(failed), topic, failed[0])

    def _count_dead_letters(self, rows: list[SpooledRecord], dead: tuple[tuple[int, str], ...]) -> None:
        by_seq = {row.seq: row for row in rows}
        prefix = f"{self._settings.topic_prefix}."
        for seq, reason in dead:
            row = by_seq[seq]
            event_type = row.record[0].removeprefix(prefix)
            catalogue.METRICS.events_processed.labels(event_type, Outcome.DEAD_LETTERED).inc()
            log.warning(
                "spooled event moved to the dead letters (spool seq %d): %s",
                seq,
                reason,
                extra={"event_id": row.event_id, "error_kind": DeadLetterKind.PUBLISH_REJECTED.value},
            )
