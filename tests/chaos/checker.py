"""The chaos checker: what clients were told (records), what PostgreSQL holds (observations), and the verdict row.

Jepsen-style: the workload only records outcomes; the comparison is pure and never trusts the pipeline's own counts.
A verdict must be able to fail: besides nothing lost, doubled or misplaced, a scenario states what it promises
(`Expect`: the share of valid events acknowledged, recovery after the fault) and `judge` fails it otherwise, so an API
that refused every event fails every scenario.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import psycopg

from pipelines import ids

Expectation = Literal["processed", "dead_letter"]
Outcome = Literal["pending", "acknowledged", "failed", "unknown"]
Position = tuple[str, int, int]  # (topic, partition, offset)

# The checker's own unit table (test data: independent of the sensor handler's code) -> (SI unit, factor, offset).
SI_UNITS: dict[str, tuple[str, float, float]] = {
    "K": ("K", 1.0, 0.0),
    "C": ("K", 1.0, 273.15),
    "Pa": ("Pa", 1.0, 0.0),
    "kPa": ("Pa", 1_000.0, 0.0),
    "bar": ("Pa", 100_000.0, 0.0),
    "%": ("ratio", 0.01, 0.0),
    "m": ("m", 1.0, 0.0),
    "cm": ("m", 0.01, 0.0),
    "lux": ("lx", 1.0, 0.0),
}
USD_RATES: dict[str, Decimal] = {"USD": Decimal(1)}  # workloads send USD, so base amounts are the amounts sent


@dataclass
class Record:
    """One thing a client tried to get into the pipeline, and what it was told."""

    event_id: str | None
    expected: Expectation
    outcome: Outcome = "pending"
    event: dict[str, Any] | None = None  # the event as sent, when its effects are to be checked in the read models
    position: Position | None = None
    attempts: int = 0
    statuses: list[str] = field(default_factory=list)  # what each attempt got: "202", "503", "ConnectError", ...
    acked_at: Position | None = None  # where the API said it wrote the event (its 202 answer), for diagnosis
    spooled: bool = False  # the API answered 202 from its spool: it was not yet on the broker


@dataclass
class Observed:
    """A consistent snapshot (one REPEATABLE READ transaction) of the scenario's state in PostgreSQL."""

    events: dict[str, str] = field(default_factory=dict)  # id -> status
    entity_keys: dict[str, str | None] = field(default_factory=dict)  # id -> user or device id
    audit: dict[str, Counter[str]] = field(default_factory=dict)  # id -> Counter(to_status)
    results: set[str] = field(default_factory=set)
    dead_letters: list[tuple[str | None, Position]] = field(default_factory=list)
    spend: dict[str, tuple[Decimal, int]] = field(default_factory=dict)  # user -> (total, count)
    actions: dict[tuple[str, str], int] = field(default_factory=dict)
    devices: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)  # (device, si unit) -> (n, sum)
    offset_gaps: int = 0
    positions: dict[str, Position] = field(default_factory=dict)  # id -> where its events row says it was read
    # (id, position) pairs read back from the log: the record at that position carries that event id. Filled by
    # Checker.observe for acknowledged events whose committed position cannot be checked against a 202's answer.
    on_log: set[tuple[str, Position]] = field(default_factory=set)


@dataclass
class Row:
    scenario: str
    acknowledged: int = 0
    processed: int = 0
    dead_lettered: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    misrouted: int = 0
    offset_gaps: int = 0
    orphans: int = 0
    misplaced: int = 0  # acknowledged events committed at another log position than the one they were written at
    recover_s: float | None = None
    offered: int = 0  # valid events clients tried to get in (expected "processed")
    offered_acked: int = 0  # ... of which the API (or the broker, for raw records) acknowledged
    refused: int = 0  # ... of which were refused with a 4xx: a valid event must never be
    spooled: int = 0  # acknowledged from the API's spool (no log position in the 202)
    faults: int = 0  # faults the scenario injected (set by the harness)
    stall_s: float | None = None  # longest wait of a record behind a poison (set by scenarios that inject one)

    ERRORS = ("lost", "duplicated", "unexpected", "misrouted", "offset_gaps", "orphans", "misplaced")

    def errors(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.ERRORS if getattr(self, name)}

    @property
    def acked_share(self) -> float | None:
        return None if self.offered == 0 else self.offered_acked / self.offered


@dataclass(frozen=True)
class Expect:
    """What a scenario promises beyond "nothing lost, nothing doubled", stated in the scenario.

    `min_acked`: the least share of the valid events offered that must be acknowledged; never 0 (a pipeline that
    refuses everything loses nothing). Lower it only where the fault legitimately refuses with 503 for longer than
    the clients retry. `recovery`: a fault was injected and a checkpoint advanced after the last heal.
    `valid_refused`: how many valid events may get a 4xx (0: a valid event is never refused).
    `offset_gaps`: how many offset holes the scenario makes on purpose (each must be recorded, no more).
    """

    min_acked: float = 0.9
    recovery: bool = True
    valid_refused: int = 0
    offset_gaps: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.min_acked <= 1:
            raise ValueError(f"min_acked must be in (0, 1], not {self.min_acked}: a floor of 0 proves nothing")


def judge(row: Row, expect: Expect) -> list[str]:
    """Why the scenario failed, beyond the error columns: too little acknowledged, no recovery, valid events refused.
    Empty when the scenario passed."""
    problems = [f"{column}: {count}" for column, count in row.errors().items() if column != "offset_gaps"]
    if row.offset_gaps != expect.offset_gaps:
        problems.append(f"offset_gaps: {row.offset_gaps} (made on purpose: {expect.offset_gaps})")
    share = row.acked_share
    if share is None:
        problems.append("no valid event was offered: the scenario tested nothing")
    elif share < expect.min_acked:
        problems.append(
            f"only {row.offered_acked} of {row.offered} valid events acknowledged ({share:.1%});"
            f" the scenario requires {expect.min_acked:.0%}"
        )
    if row.refused > expect.valid_refused:
        problems.append(f"{row.refused} valid events refused with a 4xx (allowed: {expect.valid_refused})")
    if expect.recovery:
        if row.faults == 0:
            problems.append("no fault was injected: there is nothing to recover from")
        elif row.recover_s is None:
            problems.append("no recovery observed: no checkpoint advanced after the last heal")
    return problems


@dataclass
class Verdict:
    row: Row
    details: dict[str, list[str]]  # column -> a few examples, for the assertion message

    def failures(self, expect: Expect | None = None) -> list[str]:
        """Everything that fails the scenario (empty: it passed); see `judge`."""
        return judge(self.row, expect or Expect())


@dataclass
class ReadModels:
    spend: dict[str, tuple[Decimal, int]] = field(default_factory=dict)
    actions: dict[tuple[str, str], int] = field(default_factory=dict)
    devices: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)

    def add(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "transaction":
            total, count = self.spend.get(event["user_id"], (Decimal(0), 0))
            base = (Decimal(str(event["amount"])) * USD_RATES[event["currency"]]).quantize(Decimal("0.000001"))
            self.spend[event["user_id"]] = (total + base, count + 1)
        elif kind == "sensor":
            si, factor, offset = SI_UNITS[event["unit"]]
            n, total_f = self.devices.get((event["device_id"], si), (0, 0.0))
            self.devices[(event["device_id"], si)] = (n + 1, total_f + float(event["reading"]) * factor + offset)
        elif kind == "user_action":
            k = (event["user_id"], event["action"])
            self.actions[k] = self.actions.get(k, 0) + 1
        else:
            raise ValueError(f"no read model for event type {kind!r}")


def entity_of(event: dict[str, Any]) -> str | None:
    value = event.get("user_id", event.get("device_id"))
    return value if isinstance(value, str) else None


def read_model_mismatches(expected: ReadModels, seen: Observed, tainted: set[str]) -> list[str]:
    """Keys whose read model differs from the effects of the processed events; keys in `tainted` are skipped
    (some processed event of theirs was recorded without its payload, so its effect is not known)."""
    out: list[str] = []
    for user in sorted(set(expected.spend) | set(seen.spend)):
        if user in tainted:
            continue
        want, got = expected.spend.get(user, (Decimal(0), 0)), seen.spend.get(user, (Decimal(0), 0))
        if want != got:
            out.append(f"user_totals[{user}]: expected {want}, found {got}")
    for key in sorted(set(expected.actions) | set(seen.actions)):
        if key[0] in tainted:
            continue
        if expected.actions.get(key, 0) != seen.actions.get(key, 0):
            out.append(
                f"user_action_counts{key}: expected {expected.actions.get(key, 0)}, found {seen.actions.get(key, 0)}"
            )
    for key in sorted(set(expected.devices) | set(seen.devices)):
        if key[0] in tainted:
            continue
        (wn, ws), (gn, gs) = expected.devices.get(key, (0, 0.0)), seen.devices.get(key, (0, 0.0))
        if wn != gn or abs(ws - gs) > 1e-6 * max(1.0, abs(ws)):
            out.append(f"device_stats{key}: expected ({wn}, {ws}), found ({gn}, {gs})")
    return out


def placement(rec: Record, seen: Observed) -> str | None:
    """Why an acknowledged, committed event is not where it was acknowledged; None when it is (or cannot be told).

    The 202 names the log position (topic, partition, offset) the broker wrote the event at; a raw record has the
    position its producer was told. The events row must hold that position. Two exceptions, each confirmed by
    reading the log (`seen.on_log`): an event acknowledged from the spool has no position in its 202, so the
    position it was committed at must carry it on the log; and an event whose client retried may have been written
    by an earlier attempt too (the answer to it was lost): the copy committed must then carry it on the log.
    """
    if rec.event_id is None or rec.event_id not in seen.positions:
        return None
    committed = seen.positions[rec.event_id]
    told = rec.acked_at or rec.position
    if told is not None and committed == told:
        return None
    confirmed = (rec.event_id, committed) in seen.on_log
    if told is None:
        if rec.spooled and not confirmed:
            return f"{rec.event_id} (spooled) committed at {committed}, which does not carry it on the log"
        return None
    if rec.attempts > 1 and confirmed:
        return None  # an earlier attempt's copy, committed first; the acknowledged one was a duplicate
    return f"{rec.event_id} acknowledged at {told}, committed at {committed} (attempts {rec.statuses})"


def compute_row(name: str, records: list[Record], seen: Observed, prefix_ids: set[str]) -> Verdict:
    """The verdict on one scenario. `prefix_ids` are the event ids found in PostgreSQL by the scenario's prefix
    (ids and entity keys), whether or not anybody recorded sending them."""
    details: dict[str, list[str]] = {}

    def flag(column: str, text: str) -> None:
        details.setdefault(column, []).append(text)

    dead_ids = {event_id for event_id, _ in seen.dead_letters if event_id is not None}
    dead_positions = {pos for _, pos in seen.dead_letters}
    known: set[str] = set()  # ids some client sent
    row = Row(scenario=name)
    expected_models = ReadModels()
    tainted: set[str] = set()
    for rec in records:
        if rec.event_id is not None:
            known.add(rec.event_id)  # a refused one found in PostgreSQL is flagged below, once
        status = seen.events.get(rec.event_id) if rec.event_id is not None else None
        dead = (rec.event_id is not None and rec.event_id in dead_ids) or (
            rec.position is not None and rec.position in dead_positions
        )
        processed = status == "processed"
        if processed and rec.event is not None:
            expected_models.add(rec.event)
        elif processed:
            tainted.add(seen.entity_keys.get(rec.event_id or "") or "")
        label = rec.event_id or f"{rec.position}"
        if rec.expected == "processed":
            row.offered += 1
            row.offered_acked += rec.outcome == "acknowledged"
            if rec.outcome == "failed":
                row.refused += 1
                flag("refused", f"valid {label} was refused ({rec.statuses})")
        if rec.outcome == "acknowledged":
            row.acknowledged += 1
            row.spooled += rec.spooled
            if not processed and not dead and status is None:
                row.lost += 1
                flag("lost", f"{label} ({rec.expected}; attempts {rec.statuses})")
            elif (why := placement(rec, seen)) is not None:
                row.misplaced += 1
                flag("misplaced", why)
        if rec.outcome == "failed" and (processed or dead or status is not None):
            row.unexpected += 1
            flag("unexpected", f"{label} was refused ({rec.statuses}) but is in PostgreSQL")
        if rec.expected == "processed" and (dead or status == "dead_lettered"):
            row.misrouted += 1
            flag("misrouted", f"valid {label} was dead-lettered")
        if rec.expected == "dead_letter" and processed:
            row.misrouted += 1
            flag("misrouted", f"bad {label} was processed")
    # positions are recorded for raw records; their dead letters count once per record (the table is unique on it)
    row.processed = sum(1 for s in seen.events.values() if s == "processed")
    row.dead_lettered = len(dead_positions)
    for event_id in sorted(prefix_ids - known):
        row.unexpected += 1
        flag("unexpected", f"{event_id} is in PostgreSQL but no client sent it")
    for event_id, counts in sorted(seen.audit.items()):
        if counts.get("processed", 0) > 1:
            row.duplicated += 1
            flag("duplicated", f"{event_id} has {counts['processed']} 'processed' audit rows")
    for text in read_model_mismatches(expected_models, seen, tainted):
        row.duplicated += 1
        flag("duplicated", text)
    for event_id, status in sorted(seen.events.items()):
        counts = seen.audit.get(event_id, Counter())
        if counts.get("accepted", 0) == 0:
            row.orphans += 1
            flag("orphans", f"event {event_id} has no 'accepted' audit row")
        if event_id in seen.results and counts.get("processed", 0) == 0:
            row.orphans += 1
            flag("orphans", f"result of {event_id} has no 'processed' audit row")
        if status == "processed" and event_id not in seen.results:
            row.orphans += 1
            flag("orphans", f"processed event {event_id} has no results row")
    row.offset_gaps = seen.offset_gaps
    if seen.offset_gaps:
        flag("offset_gaps", f"{seen.offset_gaps} offset_gaps rows written during the scenario")
    return Verdict(row, details)


class Checker:
    """Thread-safe record of every send; `observe` reads the scenario's state from PostgreSQL."""

    def __init__(self, prefix: str, ingest_topic: str, bootstrap: str | None = None) -> None:
        self.prefix = prefix
        self._ingest_topic = ingest_topic
        self._bootstrap = bootstrap  # the broker, to confirm positions that no 202 named (see `placement`)
        self._lock = threading.Lock()
        self._by_id: dict[str, Record] = {}
        self._anonymous: list[Record] = []

    # -- recording ------------------------------------------------------------------------------
    def record_sent(self, event_id: str, event: dict[str, Any] | None, expected: Expectation = "processed") -> Record:
        """A send is about to happen (outcome pending until `record_outcome`)."""
        with self._lock:
            rec = self._by_id.get(event_id)
            if rec is None:
                rec = self._by_id[event_id] = Record(event_id, expected, event=event)
            return rec

    def record_attempt(self, event_id: str, status: str) -> None:
        with self._lock:
            rec = self._by_id[event_id]
            rec.attempts += 1
            rec.statuses.append(status)

    def record_outcome(self, event_id: str, outcome: Outcome, answer: dict[str, Any] | None = None) -> None:
        """Acknowledged is final; otherwise the latest outcome wins (a definite refusal beats unknown). `answer` is
        the API's body for the event (its log position, or that it was spooled)."""
        with self._lock:
            rec = self._by_id[event_id]
            if rec.outcome != "acknowledged":
                rec.outcome = outcome
                if answer is not None and outcome == "acknowledged":
                    rec.spooled = bool(answer.get("spooled"))
                    if answer.get("topic") is not None and answer.get("offset") is not None:
                        rec.acked_at = (str(answer["topic"]), int(answer["partition"]), int(answer["offset"]))

    def record_raw(
        self,
        event_id: str | None,
        expected: Expectation,
        *,
        key: str | None = None,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        event: dict[str, Any] | None = None,
    ) -> None:
        """A record written straight to a topic and acknowledged by the broker. Without an id, a valid record on the
        ingest topic gets the id derived from its position; dead letters are also matched by position."""
        position = (
            (topic, partition, offset) if topic is not None and partition is not None and offset is not None else None
        )
        if event_id is None and expected == "processed" and position is not None and topic == self._ingest_topic:
            event_id = ids.from_log_position(topic, partition, offset)  # type: ignore[arg-type]
        rec = Record(event_id, expected, outcome="acknowledged", event=event, position=position)
        rec.statuses.append("produced")
        with self._lock:
            if event_id is None:
                self._anonymous.append(rec)
            elif event_id in self._by_id and self._by_id[event_id].outcome == "acknowledged":
                return  # the same event written again (a republish): one record of it is enough
            else:
                self._by_id[event_id] = rec
        del key  # the key is implied by the event; accepted for callers' convenience

    def records(self) -> list[Record]:
        with self._lock:
            return [*self._by_id.values(), *self._anonymous]

    def acknowledged(self) -> list[Record]:
        return [r for r in self.records() if r.outcome == "acknowledged"]

    def outcomes(self) -> Counter[str]:
        return Counter(r.outcome for r in self.records())

    # -- observing ------------------------------------------------------------------------------
    def like(self) -> str:
        escaped = self.prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return escaped + "%"

    def unresolved(self, conn: psycopg.Connection[Any]) -> list[Record]:
        """Acknowledged records not yet processed or dead-lettered."""
        acked = self.acknowledged()
        with_id = [r.event_id for r in acked if r.event_id is not None]
        done = {row[0] for row in conn.execute("SELECT id FROM events WHERE id = ANY(%s)", (with_id,))}
        done |= {
            row[0] for row in conn.execute("SELECT event_id FROM dead_letters WHERE event_id = ANY(%s)", (with_id,))
        }
        positions = [r.position for r in acked if r.position is not None and r.event_id not in done]
        dead_at: set[Position] = set()
        if positions:
            topics, parts, offs = (list(x) for x in zip(*positions, strict=True))
            dead_at = {
                (t, p, o)
                for t, p, o in conn.execute(
                    """SELECT d.topic, d.partition, d."offset" FROM dead_letters d
                         JOIN unnest(%s::text[], %s::int[], %s::bigint[]) AS x(t, p, o)
                           ON d.topic = x.t AND d.partition = x.p AND d."offset" = x.o""",
                    (topics, parts, offs),
                )
            }
        return [r for r in acked if r.event_id not in done and (r.position is None or r.position not in dead_at)]

    def observe(self, conn: psycopg.Connection[Any], since: float) -> tuple[Observed, set[str]]:
        """Read the scenario's state; call inside one REPEATABLE READ transaction so every query sees one snapshot.
        Returns the observation and the ids found by prefix."""
        records = self.records()
        rec_ids = [r.event_id for r in records if r.event_id is not None]
        like = self.like()
        seen = Observed()
        prefix_ids: set[str] = set()
        for event_id, status, entity, by_prefix, topic, partition, offset in conn.execute(
            """SELECT id, status, entity_key, (id LIKE %s OR entity_key LIKE %s), topic, partition, "offset"
                 FROM events WHERE id = ANY(%s) OR id LIKE %s OR entity_key LIKE %s""",
            (like, like, rec_ids, like, like),
        ):
            seen.events[event_id] = status
            seen.entity_keys[event_id] = entity
            seen.positions[event_id] = (str(topic), int(partition), int(offset))
            if by_prefix:
                prefix_ids.add(event_id)
        found = list(seen.events)
        for event_id, to_status, n in conn.execute(
            "SELECT event_id, to_status, count(*) FROM audit_log WHERE event_id = ANY(%s) GROUP BY 1, 2", (found,)
        ):
            seen.audit.setdefault(event_id, Counter())[to_status] = int(n)
        seen.results = {r[0] for r in conn.execute("SELECT event_id FROM results WHERE event_id = ANY(%s)", (found,))}
        positions = [r.position for r in records if r.position is not None]
        topics, parts, offs = (list(x) for x in zip(*positions, strict=True)) if positions else ([], [], [])
        for event_id, topic, partition, offset in conn.execute(
            """SELECT event_id, topic, partition, "offset" FROM dead_letters
                WHERE event_id = ANY(%s) OR event_id LIKE %s
                   OR (topic, partition, "offset") IN (SELECT * FROM unnest(%s::text[], %s::int[], %s::bigint[]))""",
            (rec_ids, like, topics, parts, offs),
        ):
            seen.dead_letters.append((event_id, (topic, int(partition), int(offset))))
            if event_id is not None and event_id.startswith(self.prefix):
                prefix_ids.add(event_id)
        for user, total, count in conn.execute(
            "SELECT user_id, total_amount, tx_count FROM user_totals WHERE user_id LIKE %s", (like,)
        ):
            seen.spend[user] = (Decimal(total), int(count))
        for user, action, count in conn.execute(
            "SELECT user_id, action, count FROM user_action_counts WHERE user_id LIKE %s", (like,)
        ):
            seen.actions[(user, action)] = int(count)
        for device, unit, count, total in conn.execute(
            "SELECT device_id, si_unit, reading_count, reading_sum FROM device_stats WHERE device_id LIKE %s", (like,)
        ):
            seen.devices[(device, unit)] = (int(count), float(total))
        seen.offset_gaps = int(
            conn.execute("SELECT count(*) FROM offset_gaps WHERE skipped_at >= to_timestamp(%s)", (since,)).fetchone()[
                0
            ]  # type: ignore[index]
        )
        seen.on_log = self._confirm_on_log(records, seen.positions)
        return seen, prefix_ids

    def _confirm_on_log(self, records: list[Record], positions: dict[str, Position]) -> set[tuple[str, Position]]:
        """(id, committed position) pairs whose record on the log carries the id, for the acknowledged events whose
        committed position no 202 named (spooled) or differs from it (see `placement`). One read per partition."""
        wanted: dict[tuple[str, int], dict[int, str]] = {}
        for rec in records:
            if rec.outcome != "acknowledged" or rec.event_id is None or rec.event_id not in positions:
                continue
            committed, told = positions[rec.event_id], rec.acked_at or rec.position
            if (told is None and rec.spooled) or (told is not None and committed != told and rec.attempts > 1):
                wanted.setdefault(committed[:2], {})[committed[2]] = rec.event_id  # type: ignore[index]
        if not wanted or self._bootstrap is None:
            return set()
        from tests.chaos import rawlog  # the broker client only where a position must be read back

        out: set[tuple[str, Position]] = set()
        for (topic, partition), by_offset in wanted.items():
            low, high = min(by_offset), max(by_offset)
            for msg in rawlog.read_partition(self._bootstrap, topic, partition, low, high - low + 1):
                event_id = by_offset.get(msg.offset())
                if event_id is not None and event_id.encode() in (msg.value() or b""):
                    out.add((event_id, (topic, partition, msg.offset())))
        return out

    def verdict(self, name: str, conn: psycopg.Connection[Any], since: float) -> Verdict:
        seen, prefix_ids = self.observe(conn, since)
        return compute_row(name, self.records(), seen, prefix_ids)
