"""Specification of the work before an ingestion body is handled: a replica that has not finished starting answers
503 (never a 408 that blames the client), and the replica-wide budget of body bytes is taken from the declared
Content-Length before any byte is read, or chunk by chunk while a chunked body streams, answering 429 beyond it.

In-process: no broker, no database, no Ray.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from serve_app.admission import InflightGate
from serve_app.body import BodyLease
from serve_app.edge import receive
from serve_app.incidents import Incidents
from serve_app.ingest import Reply, RequestMeta

INCIDENTS = Incidents(logging.getLogger("tests.edge"))


async def _started() -> None:
    return None


def _chunks(*parts: bytes, pulled: list[int] | None = None) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for n, part in enumerate(parts):
            if pulled is not None:
                pulled.append(n)
            yield part

    return gen()


async def _receive(chunks, budget, declared=None, started=_started, bound_s=5.0, limit=10_000):
    deadline = asyncio.get_running_loop().time() + bound_s
    meta = RequestMeta("application/json", None, None, content_length=declared, deadline=deadline)
    lease = BodyLease(budget)
    got = await receive(chunks, meta, limit, lease, started, INCIDENTS)
    return got, lease


def test_a_replica_that_does_not_finish_starting_answers_503_not_408():
    async def never_started() -> None:
        await asyncio.Event().wait()

    got, _ = asyncio.run(_receive(_chunks(b"{}"), InflightGate(1000), started=never_started, bound_s=0.05))
    assert isinstance(got, Reply) and got.status == 503 and got.body["error"] == "starting"
    assert got.body["error_id"] and got.headers == {"Retry-After": "1"}


def test_a_declared_body_over_the_budget_left_is_429_before_any_byte_is_read():
    # given a budget of 1000 body bytes of which 900 are held by other requests
    budget = InflightGate(1000)
    assert budget.try_acquire(900)
    pulled: list[int] = []
    # when a request declares 200 bytes
    got, lease = asyncio.run(_receive(_chunks(b"x" * 200, pulled=pulled), budget, declared=200))
    # then it is turned away at once, nothing of it read, and it holds nothing
    assert isinstance(got, Reply) and got.status == 429 and got.headers == {"Retry-After": "1"}
    assert pulled == [] and lease.held == 0 and budget.inflight == 900


def test_a_chunked_body_takes_the_budget_chunk_by_chunk_and_stops_reading_where_it_runs_out():
    budget = InflightGate(1000)
    assert budget.try_acquire(700)
    pulled: list[int] = []
    got, lease = asyncio.run(_receive(_chunks(*[b"x" * 100] * 6, pulled=pulled), budget))
    assert isinstance(got, Reply) and got.status == 429
    assert len(pulled) == 4  # 3 chunks fit the 300 bytes left; the 4th did not, the rest were never asked for
    lease.release()
    assert budget.inflight == 700  # what the request took is given back


def test_a_body_within_the_budget_is_held_until_released():
    budget = InflightGate(1000)
    got, lease = asyncio.run(_receive(_chunks(b'{"a":', b" 1}"), budget, declared=8))
    assert got == b'{"a": 1}' and budget.inflight == 8
    lease.release()
    assert budget.inflight == 0


@pytest.mark.parametrize("declared", [None, 20_000])
def test_a_body_over_the_per_request_cap_is_still_413(declared):
    got, _ = asyncio.run(_receive(_chunks(b"x" * 20_000), InflightGate(1 << 20), declared=declared, limit=10_000))
    assert isinstance(got, Reply) and got.status == 413
