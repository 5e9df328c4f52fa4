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


def single_body_schema() -> dict[str, Any]:
    schema = _event_schema()
    schema.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def batch_body_schema() -> dict[str, Any]:
    item = _event_schema()
    item.pop("$defs", None)
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "array", "items": item, "maxItems": 1000}}},
        }
    }
