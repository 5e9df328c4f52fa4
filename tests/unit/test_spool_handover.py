"""Specification of the way out of spool mode under steady load (ADR 0009, addendum): the pure handover rules of
serve_app/admission.py, alone and driven by a small discrete-time model of one replica, its spool and the drainer.

No I/O, no Ray, no sleeps: the model's clock is a number the test advances.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from pipelines.policies.breaker import BreakerState, CircuitBreaker
from serve_app.admission import (
    NO_HOLD,
    Handover,
    HandoverPolicy,
    Hold,
    Route,
    SpoolCondition,
    SpoolLook,
    choose_route,
    drainer_progressed,
    may_ask_breaker,
    next_handover,
    route_after_publish_failure,
)

POLICY = HandoverPolicy(max_wait_s=1.5, max_rows=1_000, cooldown_s=3.0)
EMPTY = SpoolCondition(enabled=True, pending=False, full=False)
PENDING = SpoolCondition(enabled=True, pending=True, full=False)
PENDING_FULL = SpoolCondition(enabled=True, pending=True, full=True)
HOLDING = Hold(on=True, confirmed=True)


def look(pending: bool = True, rows: int = 20, draining: bool = True, breaker: BreakerState = BreakerState.HALF_OPEN):
    return SpoolLook(pending, rows, draining, breaker)


# -- the rules one by one -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("before", "now", "progressed"),
    [
        (10, 12, True),  # the drainer deleted the oldest rows
        (10, None, True),  # ... all of them
        (10, 10, False),  # stuck on the oldest row (the broker takes nothing)
        (None, 10, False),  # rows appeared: that is intake, not draining
        (None, None, False),
        (12, 10, False),  # an older seq committed late: nothing was drained
    ],
)
def test_only_the_oldest_row_moving_on_counts_as_the_drainer_publishing(before, now, progressed):
    assert drainer_progressed(before, now) is progressed


def test_a_draining_spool_of_at_most_one_drain_round_starts_a_bounded_hold():
    assert next_handover(Handover(), look(rows=1_000), 10.0, POLICY) == Handover(hold_until=11.5)


@pytest.mark.parametrize(
    "facts",
    [
        look(draining=False),  # the broker takes nothing from the drainer: it may still be down
        look(rows=1_001),  # more than a round to drain: events keep joining the spool meanwhile, unheld
        look(breaker=BreakerState.OPEN),  # this replica's breaker would refuse them anyway
        look(pending=False),  # nothing to leave
    ],
)
def test_no_hold_without_evidence_that_the_spool_is_about_to_empty(facts):
    assert next_handover(Handover(), facts, 10.0, POLICY) == Handover()


def test_no_new_hold_during_the_cooldown_after_one_that_gave_up():
    cooling = Handover(None, next_try_at=12.0)
    assert next_handover(cooling, look(), 11.9, POLICY) == cooling
    assert next_handover(cooling, look(), 12.0, POLICY).holding(12.0)


def test_the_hold_ends_once_the_spool_is_empty_and_the_breaker_closed():
    assert next_handover(Handover(11.5), look(pending=False, breaker=BreakerState.CLOSED), 10.2, POLICY) == Handover()


def test_a_hold_that_runs_out_with_rows_left_spools_again_and_cools_down():
    after = next_handover(Handover(11.5), look(), 11.5, POLICY)
    assert after == Handover(None, next_try_at=14.5) and not after.holding(11.5)


def test_a_failed_probe_ends_the_hold_at_once():
    after = next_handover(Handover(11.5), look(pending=False, breaker=BreakerState.OPEN), 10.3, POLICY)
    assert after == Handover(None, next_try_at=13.3)


def test_a_zero_wait_never_holds():
    assert next_handover(Handover(), look(), 10.0, replace(POLICY, max_wait_s=0)) == Handover()


@pytest.mark.parametrize(
    ("spool", "hold", "route"),
    [
        (PENDING, HOLDING, Route.WAIT),  # older rows remain: neither published nor appended
        (PENDING_FULL, HOLDING, Route.WAIT),
        (PENDING, NO_HOLD, Route.SPOOL),  # spool mode as before
        (EMPTY, Hold(on=True, confirmed=False), Route.WAIT),  # "empty" was read before these events arrived
        (EMPTY, Hold(on=True, confirmed=True, probe_in_flight=True), Route.WAIT),  # the probe's answer is near
        (EMPTY, NO_HOLD, Route.SPOOL),  # breaker refused, no hold: as before
    ],
)
def test_while_older_rows_may_remain_nothing_is_published(spool, hold, route):
    assert choose_route(spool, False, hold) is route


def test_a_held_request_goes_to_the_broker_once_a_later_look_finds_the_spool_empty():
    hold = Hold(on=True, confirmed=True)
    assert may_ask_breaker(EMPTY, hold)
    assert choose_route(EMPTY, True, hold) is Route.PUBLISH


def test_the_breaker_is_not_asked_before_a_look_confirms_the_spool_empty():
    assert not may_ask_breaker(EMPTY, Hold(on=True, confirmed=False))
    assert not may_ask_breaker(PENDING, HOLDING)
    assert may_ask_breaker(EMPTY, NO_HOLD)  # outside a hold: the watch's latest look, as before


# -- a steady stream against the model ------------------------------------------------------------
STEP_S = 0.01  # one event arrives every step: 100 events/s
ROUND_S = 0.03  # one drain round: read the oldest rows, publish them, delete them
LOOK_S, QUICK_LOOK_S = 0.2, 0.05  # the watch's interval, and while requests wait for a look
KEYS = 4


@dataclass
class Model:
    """One API replica (routing as serve_app/delivery.py does), the spool, the drainer and the broker's log."""

    policy: HandoverPolicy
    broker_up: bool
    now: float = 0.0
    seq: int = 0
    spool: list[tuple[int, str]] = field(default_factory=list)  # (seq, event), committed rows
    log: list[str] = field(default_factory=list)  # what the broker acknowledged, in order
    routes: list[tuple[float, str, Route]] = field(default_factory=list)  # (when decided, event, route), final only
    arrived: dict[str, float] = field(default_factory=dict)
    acked: dict[str, float] = field(default_factory=dict)  # when the client got its 202 (spool commit or broker ack)
    waiting: list[tuple[str, int]] = field(default_factory=list)  # (event, looks begun before it arrived)
    in_flight: list[str] = field(default_factory=list)  # direct publishes, acknowledged at the next step
    round_rows: list[tuple[int, str]] | None = None
    round_ends: float = 0.0
    # the watch's view
    pending: bool = False
    rows: int = 0
    draining: bool = False
    oldest: int | None = None
    looks: int = 0
    next_look: float = 0.0
    handover: Handover = field(default_factory=Handover)

    def __post_init__(self) -> None:
        self.breaker = CircuitBreaker("kafka", failure_threshold=1, reset_timeout_s=2.0, clock=lambda: self.now)
        self.now = -3.0
        self.breaker.record_failure("blackhole")  # opened during the outage; half-open when next asked
        self.now = 0.0
        for n in range(30):  # the outage left rows behind
            self._append(f"k{n % KEYS}-old{n}")

    def _append(self, event: str) -> None:
        self.acked[event] = self.now
        self.seq += 1
        self.spool.append((self.seq, event))
        self.pending, self.rows = True, self.rows + 1  # as SpoolWatch.spooled()

    def run(self, seconds: float) -> None:
        for n in range(round(seconds / STEP_S)):
            self.now = round(n * STEP_S, 6)
            self._acknowledge_direct()
            self._drain()
            if self.now >= self.next_look:
                self._look()
            event = f"k{n % KEYS}-{n}"
            self.arrived[event] = self.now
            self._route(event, self.looks)

    def _acknowledge_direct(self) -> None:
        for event in self.in_flight:
            if self.broker_up:
                self.log.append(event)
                self.acked[event] = self.now
                self.breaker.record_success()
            else:
                self.breaker.record_failure("timeout")
                assert route_after_publish_failure(EMPTY) is Route.SPOOL
                self._append(event)
        self.in_flight = []

    def _drain(self) -> None:
        if self.round_rows is not None and self.now >= self.round_ends:
            if self.broker_up:
                self.log += [event for _, event in self.round_rows]
                done = {seq for seq, _ in self.round_rows}
                self.spool = [row for row in self.spool if row[0] not in done]
            self.round_rows = None
        if self.round_rows is None and self.spool:
            self.round_rows, self.round_ends = list(self.spool[:1_000]), self.now + ROUND_S

    def _look(self) -> None:
        self.looks += 1
        oldest = self.spool[0][0] if self.spool else None
        self.draining, self.oldest = drainer_progressed(self.oldest, oldest), oldest
        self.pending, self.rows = bool(self.spool), len(self.spool)
        waiting, self.waiting = self.waiting, []
        for event, arrived_after in waiting:
            self._route(event, arrived_after)
        self.next_look = self.now + (QUICK_LOOK_S if self.waiting else LOOK_S)

    def _route(self, event: str, arrived_after: int) -> None:
        hold = NO_HOLD
        if self.pending or self.handover.hold_until is not None:
            facts = SpoolLook(self.pending, self.rows, self.draining, self.breaker.state)
            self.handover = next_handover(self.handover, facts, self.now, self.policy)
            if self.handover.holding(self.now):
                hold = Hold(on=True, confirmed=self.looks > arrived_after)
        spool = SpoolCondition(enabled=True, pending=self.pending, full=False)
        allowed = may_ask_breaker(spool, hold) and self.breaker.allow()
        if hold.on and not allowed and not spool.pending:
            hold = replace(hold, probe_in_flight=self.breaker.state is BreakerState.HALF_OPEN)
        route = choose_route(spool, allowed, hold)
        if route is Route.WAIT:
            self.waiting.append((event, arrived_after))
            self.next_look = min(self.next_look, self.now + QUICK_LOOK_S)
            return
        self.routes.append((self.now, event, route))
        if route is Route.PUBLISH:
            self.in_flight.append(event)
        else:
            self._append(event)

    def routed_after(self, t: float) -> list[Route]:
        return [route for at, event, route in self.routes if self.arrived[event] >= t]


def test_a_steady_stream_behind_a_non_empty_spool_ends_in_publish_once_the_drainer_empties_it():
    # given the spool an outage left behind, a broker that is back and 100 events/s arriving
    model = Model(POLICY, broker_up=True)
    # when the stream goes on for 5 s
    model.run(5.0)
    # then the replica stopped spooling within a second and publishes directly from then on
    first_publish = min(at for at, _, route in model.routes if route is Route.PUBLISH)
    assert first_publish < 1.0, first_publish
    assert set(model.routed_after(first_publish + POLICY.max_wait_s)) == {Route.PUBLISH}
    # and no event waited longer than the hold allows
    assert max(at - model.arrived[event] for at, event, _ in model.routes) <= POLICY.max_wait_s
    assert model.breaker.state is BreakerState.CLOSED and not model.spool


def test_every_event_reaches_the_broker_once_and_never_ahead_of_one_acknowledged_before_it_was_sent():
    model = Model(POLICY, broker_up=True)
    model.run(5.0)
    model.now += 1.0
    model._acknowledge_direct()
    model._drain()
    model.now += 1.0
    model._drain()  # what was still spooled or in flight at the end
    sent = [f"k{n % KEYS}-old{n}" for n in range(30)] + [f"k{n % KEYS}-{n}" for n in range(500)]
    assert sorted(model.log) == sorted(sent) and len(set(model.log)) == len(model.log)
    # per-key order: an event acknowledged (spooled or published) before another of its key arrived precedes it
    # on the log; events in flight together have no order between them, with or without a spool
    at = {event: i for i, event in enumerate(model.log)}
    spooled = {event for _, event, route in model.routes if route is Route.SPOOL} | set(sent[:30])
    checked = 0
    for key in range(KEYS):
        mine = [event for event in sent if event.startswith(f"k{key}-")]
        for older in mine:
            for newer in mine:
                if model.acked[older] < model.arrived.get(newer, 0.0):
                    assert at[older] < at[newer], f"{newer} overtook {older} on the log"
                    checked += older in spooled and newer not in spooled
    assert checked > 1_000  # the switch itself was tested: spooled events, then direct ones of the same keys


def test_without_the_handover_a_steady_stream_never_leaves_spool_mode():
    # the bug: the drainer keeps up, but at every look a few new rows wait, so every event joins them
    model = Model(replace(POLICY, max_wait_s=0), broker_up=True)
    model.run(5.0)
    assert set(model.routed_after(0.0)) == {Route.SPOOL}
    assert model.spool  # never seen empty


def test_an_unreachable_broker_keeps_the_stream_in_the_spool():
    model = Model(POLICY, broker_up=False)
    model.run(5.0)
    assert set(model.routed_after(0.0)) == {Route.SPOOL}
    assert model.log == [] and model.handover.hold_until is None
    assert len(model.spool) == 30 + 500
