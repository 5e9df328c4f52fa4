"""Specification of the read API's answers: ids no event, user or device can have are 404 before any query, and a
database that does not answer is a 503 with an error id and Retry-After, never a 500 with driver text.

The read store is the real one, pointed at a port where nothing listens (no PostgreSQL needed, none mocked).
"""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest

from cluster.adapters.read_store import ReadStore
from cluster.local import free_port
from serve_app.incidents import Incidents
from serve_app.reads import Reads, valid_entity_id, valid_event_id

SECRET = "hunter2"


@pytest.mark.parametrize(
    ("event_id", "valid"),
    [
        ("ev-1", True),
        ("a.b:c_d-e", True),
        ("e" * 128, True),
        ("e" * 129, False),
        ("a\x00b", False),
        ("a b", False),
        ("été", False),
        ("", False),
    ],
)
def test_event_ids_are_judged_by_the_schemas_pattern(event_id, valid):
    assert valid_event_id(event_id) is valid


@pytest.mark.parametrize(
    ("entity_id", "valid"), [("user 1", True), ("été", True), ("u" * 128, True), ("u" * 129, False), ("a\x00", False)]
)
def test_entity_ids_are_free_text_without_nul_and_at_most_128_characters(entity_id, valid):
    assert valid_entity_id(entity_id) is valid


def _reads_of_a_database_that_is_down() -> tuple[Reads, ReadStore]:
    store = ReadStore(f"postgresql://postgres:{SECRET}@127.0.0.1:{free_port()}/eventpipe")
    opened = False

    async def open_store() -> ReadStore:
        nonlocal opened
        if not opened:
            await store.open()
            opened = True
        return store

    return Reads(open_store, Incidents(logging.getLogger("serve_app.reads")), timeout_s=0.3), store


@pytest.mark.parametrize("route", ["event", "audit", "user", "device", "dead_letters"])
def test_a_read_route_whose_database_is_down_answers_503_with_an_error_id_and_retry_after(route, caplog):
    reads, store = _reads_of_a_database_that_is_down()

    async def ask() -> object:
        try:
            if route == "dead_letters":
                return await reads.dead_letters("default", 0, 10)
            return await getattr(reads, route)("default", "ev-1")
        finally:
            await store.close()

    with caplog.at_level(logging.WARNING, logger="serve_app.reads"):
        reply = asyncio.run(ask())

    assert reply.status == 503 and reply.body["error"] == "database_unavailable"  # type: ignore[attr-defined]
    assert reply.body["error_id"] and reply.headers and int(reply.headers["Retry-After"]) >= 1  # type: ignore[attr-defined]
    assert SECRET not in orjson.dumps(reply.body).decode()  # type: ignore[attr-defined]
    assert [r for r in caplog.records if reply.body["error_id"] in r.getMessage()]  # type: ignore[attr-defined]


def test_a_hostile_id_is_answered_without_touching_the_database():
    reads, store = _reads_of_a_database_that_is_down()  # a query would be a 503: a 404 proves none was made
    reply = asyncio.run(reads.event("default", "a\x00b"))
    asyncio.run(store.close())
    assert reply.status == 404 and reply.body["error"] == "not_found"
