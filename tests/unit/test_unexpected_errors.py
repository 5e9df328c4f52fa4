"""Specification of the API's answer to an exception a route let through: a generic 500 with an error id, and the
exception (with its text) only in the log line that carries the id.

A small FastAPI app with the API's handler, served in-process: no Ray.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.testclient import TestClient

from serve_app.app import unexpected_error


def test_an_unexpected_exception_is_a_generic_500_whose_error_id_leads_to_the_cause_in_the_log(caplog):
    api = FastAPI()
    api.add_exception_handler(Exception, unexpected_error)

    @api.get("/boom")
    async def boom() -> None:
        raise RuntimeError("connection to postgresql://app:hunter2@10.0.0.5/db failed")

    client = TestClient(api, raise_server_exceptions=False)
    with caplog.at_level(logging.ERROR, logger="serve_app.app"), client:
        reply = client.get("/boom")

    assert reply.status_code == 500
    body = reply.json()
    assert body["error"] == "internal_error" and "retry" in body["reason"] and body["error_id"]
    assert "hunter2" not in reply.text and "RuntimeError" not in reply.text and "10.0.0.5" not in reply.text
    (line,) = [r for r in caplog.records if body["error_id"] in r.getMessage()]
    assert "hunter2" in line.getMessage() and line.exc_info is not None  # the cause and its traceback, for operators
