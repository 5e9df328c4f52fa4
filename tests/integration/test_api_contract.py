"""The API against its own OpenAPI document: schemathesis generates requests for every operation of the live
`/openapi.json` (valid ones and ones the schema forbids) and each answer must be no 5xx, a documented status code,
and a body that conforms to the documented schema (ErrorBody for every 4xx/5xx, the 202 models for ingestion).

It must never drop an operation or a check to make the run pass: a failure here is a contract the API broke. The run
is bounded (examples per operation and mode, a deadline per example) to stay within ~2 minutes on 2 cores.
Hypothesis drives schemathesis' strategies directly: its pytest plugin does not run under this pytest (9.x).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from serve_app.app import app
from tests.pipeline import Pipeline

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 40  # per operation and generation mode
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Every operation of the document this code builds (the test checks the live one serves the same), with the modes
# that apply: a request the schema forbids exists only for a body or a bounded query (a free string path has none).
_DOCUMENT = app.openapi()["paths"]


def _negatable(op: dict[str, Any]) -> bool:
    return "requestBody" in op or any(p["in"] == "query" for p in op.get("parameters", []))


OPERATIONS = [(method.upper(), path) for path, ops in _DOCUMENT.items() for method in ops]
RUNS = [
    pytest.param(method.upper(), path, mode, id=f"{method.upper()} {path} {mode.value}")
    for path, ops in _DOCUMENT.items()
    for method, op in ops.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or _negatable(op)
]
CASES: Counter[tuple[str, str]] = Counter()  # requests sent, by operation and mode: the closing note quotes the total
STATUSES: Counter[tuple[str, str]] = Counter()  # answers, by operation and status code


@pytest.fixture(scope="module")
def live_schema(pipeline: Pipeline, request: pytest.FixtureRequest) -> Iterator[Any]:
    schema = schemathesis.openapi.from_url(f"{pipeline.base_url}/openapi.json", wait_for_schema=30)
    yield schema
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        operations = len({op for op, _ in CASES})
        print(f"\nschemathesis: {sum(CASES.values())} cases over {operations} operations")
        for (operation, mode), n in sorted(CASES.items()):
            print(f"  {operation} ({mode}): {n}")
        print("  answers: " + ", ".join(f"{op} {status}: {n}" for (op, status), n in sorted(STATUSES.items())))


def test_the_live_document_lists_every_operation(live_schema: Any) -> None:
    live = [(op.method.upper(), op.path) for op in (result.ok() for result in live_schema.get_all_operations())]
    assert sorted(live) == sorted(OPERATIONS)


@pytest.mark.parametrize(("method", "path", "mode"), RUNS)
def test_every_operation_answers_as_documented(
    live_schema: Any, api_headers: dict[str, str], method: str, path: str, mode: GenerationMode
) -> None:
    operation = live_schema[path][method]

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=5_000,  # ms per example: a request is bounded by request_timeout_s; room for 2 busy cores
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def answers_as_documented(case: Any) -> None:
        # given a request generated from the live document (valid, or violating it), with the session's API headers
        CASES[(f"{method} {path}", mode.value)] += 1
        # when it is sent, then: no 5xx, a documented status, a body of the documented schema
        response = case.call_and_validate(headers=api_headers, checks=CHECKS, timeout=30)
        STATUSES[(f"{method} {path}", str(response.status_code))] += 1

    answers_as_documented()


PROTECTED = [(m, p) for m, p in OPERATIONS if "security" in _DOCUMENT[p][m.lower()]]
OPEN = sorted(set(OPERATIONS) - set(PROTECTED))
NO_KEY_EXAMPLES = 10  # per operation: every answer must be the documented 401, whatever the request


def test_only_health_readiness_and_the_document_itself_are_open() -> None:
    assert OPEN == [("GET", "/healthz"), ("GET", "/readyz")]  # /openapi.json and /docs are not in the document


@pytest.mark.parametrize(("method", "path"), PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
def test_without_a_key_every_protected_operation_answers_401_as_documented(
    live_schema: Any, method: str, path: str
) -> None:
    operation = live_schema[path][method]

    @settings(
        max_examples=NO_KEY_EXAMPLES,
        deadline=5_000,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    def refused_as_documented(case: Any) -> None:
        # given a valid request sent with no API key at all
        CASES[(f"{method} {path}", "no key")] += 1
        response = case.call_and_validate(headers={}, checks=CHECKS, timeout=30)
        STATUSES[(f"{method} {path}", str(response.status_code))] += 1
        # then it is refused before anything is read, with the challenge that names the scheme
        assert response.status_code == 401, (response.status_code, response.text[:200])
        challenges = {name.lower(): values for name, values in response.headers.items()}["www-authenticate"]
        assert challenges[0].startswith("Bearer"), challenges

    refused_as_documented()
