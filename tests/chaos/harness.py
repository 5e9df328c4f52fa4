"""The chaos harness: a Scenario runs workloads and faults on a timeline, then verifies the pipeline Jepsen-style.

It injects no fault itself (scenarios do); it records, waits for the pipeline to settle, and judges from PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg
import ray
from confluent_kafka import Consumer, TopicPartition

from actors import names
from cluster.adapters.kafka_config import consumer_config
from tests.chaos import rawlog
from tests.chaos.checker import Checker, Expect, Expectation, Record, Row, Verdict
from tests.chaos.report import ChaosReport, Entry
from tests.chaos.workload import Workload, build_event
from tests.pipeline import Pipeline, unique_prefix

__all__ = ["FAULT_S", "Checker", "Expect", "Expectation", "Record", "Row", "Scenario", "Workload", "steady"]

FAULT_S: float = float(os.environ.get("EVENTPIPE_CHAOS_FAULT_S", "3.0"))
_WORKLOAD_SPACING = 10_000_000  # each workload of a scenario numbers its events in its own range


def steady(seconds: float) -> None:
    """Let the workload run (a duration of load or of a fault, not a wait for a condition)."""
    time.sleep(seconds)


def direct_db_url(pipeline: Pipeline) -> str:
    """The database as the pipeline's own processes cannot break it: not through any fault proxy."""
    return str(getattr(pipeline, "direct_db_url", None) or pipeline.db_url)


class RecoveryProbe:
    """After a heal, watches partition_checkpoints for the first offset advance and keeps its updated_at."""

    def __init__(self, db_url: str, healed_at: float) -> None:
        self.healed_at = healed_at
        self.advanced_at: float | None = None
        self._db_url = db_url
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="chaos-recovery-probe", daemon=True)
        self._thread.start()

    @property
    def recover_s(self) -> float | None:
        return None if self.advanced_at is None else max(0.0, self.advanced_at - self.healed_at)

    def wait(self, timeout_s: float) -> bool:
        self._thread.join(max(0.0, timeout_s))
        return self.advanced_at is not None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _watch(self) -> None:
        last: dict[tuple[str, int], int] | None = None
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._db_url, autocommit=True, connect_timeout=2) as conn:
                    while not self._stop.is_set():
                        rows = conn.execute(
                            "SELECT topic, partition, next_offset, extract(epoch FROM updated_at)"
                            " FROM partition_checkpoints"
                        ).fetchall()
                        now = {(t, p): int(o) for t, p, o, _ in rows}
                        if last is not None:
                            moved = [
                                float(at) for t, p, o, at in rows if o > last.get((t, p), o) and at >= self.healed_at
                            ]
                            if moved:
                                self.advanced_at = min(moved)
                                return
                        last = now
                        self._stop.wait(0.1)
            except psycopg.Error:
                self._stop.wait(0.5)  # the database itself may be what is recovering


class Scenario:
    def __init__(self, name: str, pipeline: Pipeline, report: ChaosReport | None = None) -> None:
        self.name = name
        self.pipeline = pipeline
        short = "".join(c if c.isalnum() or c in "._-" else "-" for c in name.removeprefix("test_"))[:48]
        self.prefix = unique_prefix(f"ch-{short}")
        self.checker = Checker(self.prefix, pipeline.settings.ingest_topic, pipeline.settings.kafka_bootstrap)
        self.started_at = time.time()
        self.timeline: list[str] = []
        self.notes: list[str] = []
        self.workloads: list[Workload] = []
        self.db_url = direct_db_url(pipeline)
        self._report = report
        self._open_faults = 0
        self._faults = 0
        self._probe: RecoveryProbe | None = None
        self._canaries = 0
        self._t0 = time.monotonic()
        self.note(f"scenario starts (prefix {self.prefix})")

    # -- the timeline ---------------------------------------------------------------------------
    def note(self, text: str) -> None:
        self.timeline.append(f"t+{time.monotonic() - self._t0:6.2f}s {text}")

    @contextmanager
    def fault(self, description: str) -> Iterator[None]:
        self._open_faults += 1
        self._faults += 1
        self.note(f"FAULT {description}")
        if self._probe is not None:
            self._probe.stop()
            self._probe = None
        try:
            yield
        finally:
            self._open_faults -= 1
            self.note(f"HEALED {description}")
            if self._open_faults == 0:
                self._probe = RecoveryProbe(self.db_url, time.time())

    def workload(
        self,
        rate: float = 200.0,
        keys: int = 16,
        types: Sequence[str] = ("transaction", "sensor", "user_action"),
        batch_size: int = 1,
        retry_for_s: float | None = None,
        limit: int | None = None,
        extend: Callable[[dict[str, Any], int], None] | None = None,
        request_timeout_s: float = 10.0,
        retry_no_route: bool = False,
    ) -> Workload:
        """A background client (see Workload); retries run for max(60 s, 3 x FAULT_S) unless told otherwise;
        with `limit`, it stops sending after that many events."""
        w = Workload(
            self.checker,
            self.pipeline.base_url,
            headers=self.pipeline.headers,
            rate=rate,
            keys=keys,
            types=types,
            batch_size=batch_size,
            retry_for_s=retry_for_s if retry_for_s is not None else max(60.0, 3 * FAULT_S),
            first_n=(len(self.workloads) + 1) * _WORKLOAD_SPACING,
            limit=limit,
            extend=extend,
            request_timeout_s=request_timeout_s,
            retry_no_route=retry_no_route,
        )
        self.workloads.append(w)
        return w

    # -- helpers for scenarios ------------------------------------------------------------------
    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            cur = conn.execute(sql, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def scalar(self, sql: str, *params: Any) -> Any:
        return self.query(sql, *params)[0][0]

    def event(self, n: int, kind: str = "transaction", key: int = 0) -> dict[str, Any]:
        """A valid event under the scenario's prefix, for scenarios that send or produce their own."""
        return build_event(self.prefix, n, 0, f"{self.prefix}-k{key}", kind)

    def sigkill(self, pid: int, what: str) -> None:
        """SIGKILL a process of the pipeline and put it on the timeline."""
        os.kill(pid, signal.SIGKILL)
        self.note(f"SIGKILL {what} (pid {pid})")

    def owner_status(self, topic: str, partition: int) -> dict[str, Any]:
        for status in self.pipeline.owner_statuses():
            if status["topic"] == topic and status["partition"] == partition:
                return status
        raise AssertionError(f"no status from the owner of {topic}[{partition}]")

    def close(self) -> None:
        """Stop whatever a failed scenario left running (its workloads, the recovery probe)."""
        if self._probe is not None:
            self._probe.stop()
        for w in self.workloads:
            try:
                w.stop()
            except AssertionError as exc:
                self.notes.append(f"workload stopped with an error: {exc}")

    # -- verification ---------------------------------------------------------------------------
    def verify(self, timeout_s: float = 180.0, expect: Expect | None = None) -> Row:
        """Wait for the pipeline to settle, judge it from PostgreSQL, report the row, assert it passed: every error
        column zero, and what `expect` promises (default Expect(): 90% of the valid events acknowledged, a fault
        injected and recovered from, no valid event refused)."""
        expect = expect or Expect()
        if self._open_faults:
            raise AssertionError("verify() inside a fault: heal it first")
        deadline = time.monotonic() + timeout_s
        for w in self.workloads:
            w.stop()
        if self._probe is not None and self._probe.advanced_at is None:
            self._send_canary(deadline)
        self.note("verify: waiting for every acknowledged event")
        unresolved = self._wait_resolved(deadline)
        settled = self._wait_log_consumed(deadline)
        if self._probe is not None:
            self._probe.wait(min(30.0, deadline - time.monotonic()))
            self._probe.stop()
        with psycopg.connect(self.db_url) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with conn.transaction():
                verdict: Verdict = self.checker.verdict(self.name, conn, self.started_at)
        row = verdict.row
        row.faults = self._faults
        if self._faults:
            row.recover_s = self._probe.recover_s if self._probe else None
        self.note("verify: done")
        outcomes = dict(self.checker.outcomes())
        self.notes.append(f"client outcomes: {outcomes}")
        share = row.acked_share
        self.notes.append(
            f"{row.offered_acked} of {row.offered} valid events acknowledged"
            f" ({'-' if share is None else f'{share:.1%}'}; floor {expect.min_acked:.0%}), {row.spooled} from the spool"
        )
        unplaced = sum(
            1
            for r in self.checker.acknowledged()
            if r.acked_at is None and r.position is None and not r.spooled and r.event_id is not None
        )
        if unplaced:
            self.notes.append(f"{unplaced} acknowledged without a log position to check (their 202 body not kept)")
        for i, w in enumerate(self.workloads):
            st = w.stats
            self.notes.append(
                f"workload {i}: {w.sent} events at {w.rate:g}/s in {st.requests} requests, {st.retries} retries,"
                f" statuses {dict(st.statuses)},"
                f" 429/503 without Retry-After {st.missing_retry_after}, fell behind by {st.behind_s:.2f}s,"
                f" slowest answer {st.slowest_s:.2f}s, ingress 404s without a route (retried) {st.no_route}"
            )
        if unresolved:
            self.notes.append(f"{len(unresolved)} acknowledged events unresolved at the deadline")
            self.notes += self._diagnose(unresolved)
        if not settled:
            self.notes.append("the owners had not consumed every record at the deadline")
        if self._faults and row.recover_s is None:
            self.notes.append("no checkpoint advanced after the last heal")
        failures = verdict.failures(expect)
        self.notes += [f"FAILED: {text}" for text in failures]
        if self._report is not None:
            self._report.add(Entry(row, list(self.timeline), verdict.details, list(self.notes)))
        assert not failures, f"{self.name}: {failures}\n" + "\n".join(
            f"  {column}: {examples[:5]}" for column, examples in verdict.details.items()
        )
        return row

    def _diagnose(self, unresolved: list[Record]) -> list[str]:
        """Where unresolved events are stuck, as far as the harness can see: the ingest spool, the drainer."""
        out: list[str] = []
        ids = [r.event_id for r in unresolved if r.event_id is not None]
        spooled = sum(1 for r in unresolved if r.spooled)
        out.append(f"of them {spooled} were answered from the API's spool")
        checkpoints = {
            (t, p): o for t, p, o in self.query("SELECT topic, partition, next_offset FROM partition_checkpoints")
        }
        bootstrap = self.pipeline.settings.kafka_bootstrap
        for rec in [r for r in unresolved if r.acked_at is not None][:5]:
            topic, partition, offset = rec.acked_at  # type: ignore[misc]
            found = rawlog.read_partition(bootstrap, topic, partition, offset, 1, timeout_s=5)
            on_log = found[0] if found and found[0].offset() == offset else None
            holds = (
                "nothing"
                if on_log is None
                else ("it" if rec.event_id and rec.event_id.encode() in (on_log.value() or b"") else "another record")
            )
            row = self.query(
                'SELECT id FROM events WHERE topic = %s AND partition = %s AND "offset" = %s', topic, partition, offset
            )
            out.append(
                f"{rec.event_id}: acknowledged at {topic}[{partition}]@{offset}; the log holds {holds} there;"
                f" checkpoint {checkpoints.get((topic, partition))}; events row at that position: {row}"
            )
        if self.scalar("SELECT to_regclass('ingest_spool') IS NOT NULL"):
            spooled = self.scalar("SELECT count(*) FROM ingest_spool WHERE event_id = ANY(%s)", ids)
            total = self.scalar("SELECT count(*) FROM ingest_spool")
            out.append(f"of them {spooled} still in ingest_spool (which holds {total} rows)")
        try:
            drainer = ray.get_actor(names.SPOOL_DRAINER, namespace=self.pipeline.settings.ray_namespace)
            out.append(f"spool drainer: {ray.get(drainer.status.remote(), timeout=5)}")
        except (ValueError, AttributeError, ray.exceptions.RayError) as exc:
            out.append(f"spool drainer: no status ({type(exc).__name__})")
        try:
            owners = [(s["topic"], s["partition"], s["state"], s["last_error"]) for s in self.pipeline.owner_statuses()]
            out.append(f"owners: {owners}")
        except ray.exceptions.RayError as exc:
            out.append(f"owners: no status ({type(exc).__name__})")
        return out

    def _send_canary(self, deadline: float) -> None:
        """One event after the last heal, so that a recovered pipeline has something to advance its offsets with."""
        self._canaries += 1
        event = build_event(self.prefix, self._canaries, 0, f"{self.prefix}-canary", "user_action")
        event["id"] = f"{self.prefix}-canary{self._canaries}"
        self.checker.record_sent(event["id"], event)
        stop_at = min(deadline, time.monotonic() + 60)
        with httpx.Client(base_url=self.pipeline.base_url, headers=self.pipeline.headers, timeout=10) as client:
            while time.monotonic() < stop_at:
                try:
                    r = client.post("/events", json=event)
                    self.checker.record_attempt(event["id"], str(r.status_code))
                    if r.status_code == 202:
                        self.checker.record_outcome(event["id"], "acknowledged", r.json())
                        self.note("canary acknowledged")
                        return
                    self.checker.record_outcome(event["id"], "unknown")
                    if 400 <= r.status_code < 500 and r.status_code != 429:
                        self.checker.record_outcome(event["id"], "failed")
                        return
                except httpx.HTTPError as exc:
                    self.checker.record_attempt(event["id"], type(exc).__name__)
                    self.checker.record_outcome(event["id"], "unknown")
                time.sleep(0.5)

    def _wait_resolved(self, deadline: float) -> list[Record]:
        unresolved: list[Record] = []
        while True:
            try:
                with psycopg.connect(self.db_url, autocommit=True, connect_timeout=5) as conn:
                    unresolved = self.checker.unresolved(conn)
            except psycopg.Error as exc:
                self.note(f"verify: database not reachable yet ({type(exc).__name__})")
                unresolved = self.checker.acknowledged()
            if not unresolved or time.monotonic() > deadline:
                return unresolved
            time.sleep(0.5)

    def _wait_log_consumed(self, deadline: float) -> bool:
        """Until every owned partition's checkpoint has reached the end of its log: late duplicates show up too."""
        settings = self.pipeline.settings
        consumer = Consumer(consumer_config(settings.kafka_bootstrap, unique_prefix("chaos-watermarks")))
        try:
            while True:
                ends: dict[tuple[str, int], int] = {}
                try:
                    for topic in settings.owned_topics():
                        for p in range(settings.partitions):
                            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
                            ends[(topic, p)] = int(high)
                except Exception as exc:  # noqa: BLE001 - a broker still healing: try again until the deadline
                    self.note(f"verify: no log ends yet ({exc})")
                    ends = {}
                if ends:
                    done = {
                        (t, p): int(o)
                        for t, p, o in self.query("SELECT topic, partition, next_offset FROM partition_checkpoints")
                    }
                    if all(done.get(k, 0) >= end for k, end in ends.items()):
                        return True
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.3)
        finally:
            consumer.close()
