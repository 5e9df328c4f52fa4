"""Specification of /readyz's cache (at most one computation per second, shared by concurrent probes) and of error
ids (one log line per cause per window, the same id for every answer in it).

In-process with injected clocks: no Ray, no database.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from serve_app.incidents import Incidents
from serve_app.readiness import CachedReadiness


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_readiness_is_computed_once_per_ttl_and_again_after_it():
    clock, calls = Clock(), []

    async def compute() -> int:
        calls.append(clock.now)
        return len(calls)

    async def scenario() -> list[int]:
        cache = CachedReadiness(compute, ttl_s=1.0, clock=clock)
        answers = [await cache.get(), await cache.get()]
        clock.now += 0.99
        answers.append(await cache.get())
        clock.now += 0.02
        answers.append(await cache.get())
        return answers

    assert asyncio.run(scenario()) == [1, 1, 1, 2]
    assert calls == [100.0, pytest.approx(101.01)]


def test_concurrent_probes_share_one_computation():
    calls = []

    async def compute() -> str:
        calls.append(1)
        await asyncio.sleep(0.01)
        return "ready"

    async def scenario() -> list[str]:
        cache = CachedReadiness(compute, ttl_s=1.0)
        return list(await asyncio.gather(*(cache.get() for _ in range(50))))

    assert asyncio.run(scenario()) == ["ready"] * 50 and len(calls) == 1


def test_a_failed_computation_is_not_cached():
    outcomes = [RuntimeError("down"), "ready"]

    async def compute() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def scenario() -> tuple[str, str]:
        cache = CachedReadiness(compute, ttl_s=60.0)
        try:
            await cache.get()
        except RuntimeError as exc:
            first = str(exc)
        return first, await cache.get()

    assert asyncio.run(scenario()) == ("down", "ready")


def test_one_cause_is_logged_once_per_window_and_every_answer_in_it_shares_its_error_id(caplog):
    clock = Clock()
    incidents = Incidents(logging.getLogger("test.incidents"), window_s=5.0, clock=clock)
    cause = ConnectionRefusedError("connect to 10.0.0.7:5432 failed")

    with caplog.at_level(logging.WARNING, logger="test.incidents"):
        first = incidents.report("could not spool", cause)
        again = incidents.report("could not spool", cause)
        other = incidents.report("could not spool", TimeoutError("pool timeout"))
        clock.now += 5.0
        later = incidents.report("could not spool", cause)

    assert first == again and len({first, other, later}) == 3
    assert [r.error_id for r in caplog.records] == [first, other, later]  # type: ignore[attr-defined]
    assert "10.0.0.7:5432" in caplog.records[0].getMessage() and first in caplog.records[0].getMessage()
    assert "10.0.0.7" not in first
