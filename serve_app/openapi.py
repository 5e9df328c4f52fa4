"""OpenAPI request-body fragments for the ingestion routes, built from the registered pydantic models.

Documentation only: validation itself happens in serve_app.ingest through the registry.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from pipelines.schemas import SensorV1, TransactionV1, UserActionV1

_EVENT: TypeAdapter[TransactionV1 | SensorV1 | UserActionV1] = TypeAdapter(TransactionV1 | SensorV1 | UserActionV1)


def _event_schema() -> dict[str, Any]:
    return _EVENT.json_schema(ref_template="#/components/schemas/{model}")


# Answers besides 202, in the order a request meets them (limits before work: 415 and 413 come from the headers).
_ERRORS = {
    "400": "Malformed JSON, a bad Content-Length or Idempotency-Key.",
    "408": "The body did not arrive within the request timeout; nothing was taken: send the same request again.",
    "413": "The body is over its limit (from Content-Length alone, or while a chunked body streams), or the single "
    "event's broker record is over max_event_bytes (`event_too_large`); `limit` says the bound.",
    "415": "Content-Type is not JSON.",
    "422": "No valid event (field errors per event); in a batch, invalid or oversized items are `rejected` per item.",
    "429": "Too many events in flight on this replica; retry after Retry-After.",
    "503": "Neither the broker nor the spool can take the events; retry after Retry-After. `error_id` leads to the "
    "cause in the logs.",
    "504": "The request outlived its time bound while delivering: events marked `unknown` may or may not have been "
    "taken; send them again with the same ids (duplicates are dropped by event id).",
}


# Every route but /healthz, /readyz, /docs and /openapi.json needs an API key (serve_app/auth.py).
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "An eventpipe API key (`evp_…`)."},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "The same key, another header."},
}
_AUTH_ERRORS = {
    "401": "No API key, or not a valid one (malformed, unknown or revoked); `WWW-Authenticate` says so.",
    "403": "The API key lacks the scope this route needs (`insufficient_scope`, `scope` names it).",
}


def _responses() -> dict[str, Any]:
    return {"responses": {code: {"description": text} for code, text in _ERRORS.items()}}


def protected(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """`openapi_extra` of a route that needs an API key: its security requirement and its 401/403 answers, merged
    into `extra` (a body schema and its other answers)."""
    extra = dict(extra or {})
    responses = {code: {"description": text} for code, text in _AUTH_ERRORS.items()}
    extra["responses"] = {**extra.get("responses", {}), **responses}
    extra["security"] = [{"bearer": []}, {"apiKey": []}]
    return extra


def with_security_schemes(schema: dict[str, Any]) -> dict[str, Any]:
    """The generated OpenAPI document with the API key's security schemes declared."""
    schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    return schema


def single_body_schema() -> dict[str, Any]:
    schema = _event_schema()
    schema.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}, **_responses()}


def batch_body_schema() -> dict[str, Any]:
    item = _event_schema()
    item.pop("$defs", None)
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "array", "items": item, "maxItems": 1000}}},
        },
        **_responses(),
    }
