"""The OpenAPI contract of the API: request-body fragments built from the registered pydantic models, the models of
the 202 and error answers, and which error answers each operation documents.

Documentation only: validation happens in serve_app.ingest through the registry, and replies are built in
serve_app.replies; these models describe those bodies so a contract test (schemathesis) can hold the API to them.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from pipelines.schemas import SensorV1, TransactionV1, UserActionV1

_EVENT: TypeAdapter[TransactionV1 | SensorV1 | UserActionV1] = TypeAdapter(TransactionV1 | SensorV1 | UserActionV1)


class FieldErrorBody(BaseModel):
    loc: str = Field(description="the field, dotted (`location.lat`), or `body` for the document as a whole")
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer. A refused or timed-out batch also carries its summary (`accepted`, `results`, ...)."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="a stable machine-readable code, e.g. `validation_failed`, `payload_too_large`")
    reason: str = Field(description="what went wrong and what to do, for people; never exception text or secrets")
    errors: list[FieldErrorBody] | None = Field(None, description="field errors (422 `validation_failed`)")
    error_id: str | None = Field(None, description="5xx and 503: leads to the cause in the server's logs")
    limit: int | None = Field(None, description="413: the bound, in bytes or events")
    id: str | None = Field(None, description="a single event's id: a retry must reuse it")


class AcceptedEvent(BaseModel):
    """202 for one event: its stable id and log position, or `spooled` while it waits for the broker."""

    id: str
    status: Literal["accepted"]
    type: str
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    spooled: bool | None = None


class BatchItem(BaseModel):
    """One item of a batch, by its `index` in the request; `error` and `reason` when it was not accepted."""

    model_config = ConfigDict(extra="allow")

    index: int
    id: str | None = None
    status: Literal["accepted", "rejected", "failed", "unknown"]
    type: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    spooled: bool | None = None
    error: str | None = None
    reason: str | None = None
    errors: list[FieldErrorBody] | None = None


class BatchAccepted(BaseModel):
    """202 for a batch with at least one accepted item; rejected items cost only themselves."""

    model_config = ConfigDict(extra="allow")

    accepted: int
    rejected: int
    failed: int
    unknown: int | None = None
    spooled: int
    results: list[BatchItem]


# What each error answer means, by status; an operation documents the ones that apply to it.
_MEANING = {
    400: "Malformed JSON, a bad Content-Length or Idempotency-Key.",
    401: "No API key, or not a valid one (malformed, unknown or revoked); `WWW-Authenticate` says so.",
    403: "The API key lacks the scope this route needs (`insufficient_scope`, `scope` names it).",
    404: "No such event, user or device in the caller's tenant (an id no event can have is 404 too, never a 500).",
    408: "The body did not arrive within the request timeout; nothing was taken: send the same request again.",
    413: "The body is over its limit (from Content-Length alone, or while a chunked body streams), or the single "
    "event's broker record is over max_event_bytes (`event_too_large`); `limit` says the bound.",
    415: "Content-Type is not JSON, or a Content-Encoding other than identity.",
    422: "No valid event (field errors per event in `errors`), or a query parameter out of range; in a batch, invalid "
    "or oversized items are `rejected` per item.",
    429: "Over the API key's rate limit, or too many events or body bytes in flight on this replica; retry after "
    "Retry-After.",
    503: "A dependency (broker and spool, or the database) cannot answer, or the replica is still starting; retry "
    "after Retry-After. `error_id` leads to the cause in the logs.",
    504: "The request outlived its time bound while delivering: events marked `unknown` may or may not have been "
    "taken; send them again with the same ids (duplicates are dropped by event id).",
}
INGEST_ERRORS = (400, 401, 403, 408, 413, 415, 422, 429, 503, 504)
READ_ERRORS = (401, 403, 404, 429, 503)
LIST_ERRORS = (401, 403, 422, 429, 503)  # /dead-letters: its query parameters are bounded
OPEN_ERRORS = (401, 403, 429)  # /schemas: no database behind it


def error_responses(*codes: int, ok: type[BaseModel] | None = None, ok_status: int = 200) -> dict[int | str, Any]:
    """The `responses=` of an operation: its error answers with the ErrorBody model, and its success model if any."""
    documented: dict[int | str, Any] = {code: {"model": ErrorBody, "description": _MEANING[code]} for code in codes}
    if ok is not None:
        documented[ok_status] = {"model": ok, "description": "Accepted: the broker (or the durable spool) holds it."}
    return documented


class Readiness(BaseModel):
    """/readyz: `ready` (200) or `unavailable` (503, with `reason` and `error_id`), and what each dependency says."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ready", "unavailable"]
    reason: str | None = None
    error_id: str | None = None


def readiness_responses() -> dict[int | str, Any]:
    meaning = "Neither the broker nor the spool can take events: send to another replica or retry later."
    return {200: {"model": Readiness}, 503: {"model": Readiness, "description": meaning}}


def _event_schema() -> dict[str, Any]:
    schema = _EVENT.json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return schema


# Every route but /healthz, /readyz, /docs and /openapi.json needs an API key (serve_app/auth.py).
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "An eventpipe API key (`evp_…`)."},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "The same key, another header."},
}


def protected(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """`openapi_extra` of a route that needs an API key: its security requirement, merged into `extra` (a body
    schema). Its 401 and 403 answers are documented with the others, by error_responses."""
    extra = dict(extra or {})
    extra["security"] = [{"bearer": []}, {"apiKey": []}]
    return extra


def with_security_schemes(schema: dict[str, Any]) -> dict[str, Any]:
    """The generated OpenAPI document with the API key's security schemes declared."""
    schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    return schema


def single_body_schema() -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _event_schema()}}}}


def batch_body_schema() -> dict[str, Any]:
    schema = {"type": "array", "items": _event_schema(), "maxItems": 1000}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def install(app: FastAPI) -> None:
    """Complete the generated document: the event models the request bodies refer to join its components, and
    FastAPI's own 422 (`HTTPValidationError`, which this API never answers: its 422s are ErrorBody) is dropped."""
    generate = app.openapi

    def document() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = generate()
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(_EVENT.json_schema(ref_template="#/components/schemas/{model}").get("$defs", {}))
        for operations in doc.get("paths", {}).values():
            for operation in operations.values():
                answer = operation.get("responses", {}).get("422", {})
                if "HTTPValidationError" in str(answer):
                    del operation["responses"]["422"]
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        app.openapi_schema = doc
        return doc

    app.openapi = document  # type: ignore[method-assign]
