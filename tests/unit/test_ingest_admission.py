"""Specification of the API's degradation decisions: publish, spool or refuse; readiness; the in-flight bound.

Pure decisions only: no broker, no database, no Ray.
"""

from __future__ import annotations

import pytest

from pipelines.policies.breaker import BreakerState
from serve_app.admission import (
    InflightGate,
    Route,
    SpoolCondition,
    choose_route,
    readiness,
    route_after_publish_failure,
)

EMPTY = SpoolCondition(enabled=True, pending=False, full=False)
PENDING = SpoolCondition(enabled=True, pending=True, full=False)
FULL_EMPTYISH = SpoolCondition(enabled=True, pending=False, full=True)
PENDING_FULL = SpoolCondition(enabled=True, pending=True, full=True)
DISABLED = SpoolCondition(enabled=False, pending=False, full=False)


@pytest.mark.parametrize(
    ("spool", "broker_allowed", "route"),
    [
        (EMPTY, True, Route.PUBLISH),  # the normal path
        (EMPTY, False, Route.SPOOL),  # breaker open: acknowledge from the spool
        (PENDING, True, Route.SPOOL),  # older events wait in the spool: queue behind them (per-key order)
        (PENDING, False, Route.SPOOL),
        (PENDING_FULL, True, Route.REFUSE),  # cannot overtake the spooled events, cannot join them either
        (FULL_EMPTYISH, True, Route.PUBLISH),  # a full spool does not stop a healthy broker
        (FULL_EMPTYISH, False, Route.REFUSE),
        (DISABLED, True, Route.PUBLISH),
        (DISABLED, False, Route.REFUSE),  # no spool configured: breaker open means 503
    ],
)
def test_events_go_to_the_broker_the_spool_or_are_refused(spool, broker_allowed, route):
    assert choose_route(spool, broker_allowed) is route


@pytest.mark.parametrize(
    ("spool", "route"),
    [(EMPTY, Route.SPOOL), (PENDING, Route.SPOOL), (FULL_EMPTYISH, Route.REFUSE), (DISABLED, Route.REFUSE)],
)
def test_events_whose_publish_failed_are_spooled_when_the_spool_can_take_them(spool, route):
    assert route_after_publish_failure(spool) is route


def test_a_spool_is_writable_only_when_enabled_and_not_full():
    assert EMPTY.writable and PENDING.writable
    assert not FULL_EMPTYISH.writable and not DISABLED.writable


def test_healthy_replica_is_ready_and_not_degraded():
    verdict = readiness(BreakerState.CLOSED, EMPTY, spool_reachable=True)
    assert verdict.ready and not verdict.degraded


@pytest.mark.parametrize("state", [BreakerState.OPEN, BreakerState.HALF_OPEN])
def test_broker_trouble_with_a_working_spool_is_ready_but_degraded(state):
    verdict = readiness(state, PENDING, spool_reachable=True)
    assert verdict.ready and verdict.degraded


def test_events_waiting_in_the_spool_mark_the_replica_degraded():
    verdict = readiness(BreakerState.CLOSED, PENDING, spool_reachable=True)
    assert verdict.ready and verdict.degraded


def test_unreachable_spool_with_a_healthy_broker_is_ready_but_degraded():
    verdict = readiness(BreakerState.CLOSED, EMPTY, spool_reachable=False)
    assert verdict.ready and verdict.degraded


@pytest.mark.parametrize(
    ("spool", "reachable"),
    [(EMPTY, False), (FULL_EMPTYISH, True), (DISABLED, True)],
)
def test_open_breaker_and_no_usable_spool_is_not_ready(spool, reachable):
    assert not readiness(BreakerState.OPEN, spool, spool_reachable=reachable).ready


def test_full_spool_with_events_waiting_is_not_ready_even_with_a_healthy_broker():
    # New events may not overtake the spooled ones, and the spool cannot take more.
    assert not readiness(BreakerState.CLOSED, PENDING_FULL, spool_reachable=True).ready


def test_a_disabled_spool_is_configuration_not_degradation():
    verdict = readiness(BreakerState.CLOSED, DISABLED, spool_reachable=False)
    assert verdict.ready and not verdict.degraded


def test_gate_admits_up_to_its_limit_and_refuses_beyond():
    gate = InflightGate(10)
    assert gate.try_acquire(6)
    assert not gate.try_acquire(5)  # 11 > 10: turned away, nothing taken
    assert gate.inflight == 6
    assert gate.try_acquire(4)
    assert not gate.try_acquire(1)
    gate.release(4)
    assert gate.try_acquire(1) and gate.inflight == 7


def test_gate_admits_a_request_larger_than_the_limit_only_when_empty():
    gate = InflightGate(10)
    assert gate.try_acquire(25)  # clamped to the whole limit
    assert not gate.try_acquire(1)
    gate.release(25)
    assert gate.inflight == 0
    assert gate.try_acquire(1)
    assert not gate.try_acquire(25)


def test_gate_rejects_a_non_positive_limit():
    with pytest.raises(ValueError):
        InflightGate(0)
