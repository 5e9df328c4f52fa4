"""Versioned pydantic models for the event types accepted at the edge.

Pure data definitions: no I/O, no knowledge of Kafka, Ray or PostgreSQL.
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

from pipelines import entity
from pipelines.limits import MAX_METADATA_BYTES, MAX_METADATA_DEPTH, MAX_METADATA_KEY_CHARS, metadata_problem
from pipelines.units import PHYSICAL_RANGES, READING_MAX, READING_MIN, physical_range_problem


def _storable(value: str) -> str:
    """PostgreSQL text and jsonb cannot hold U+0000: refused here, with the field named, not when stored."""
    if "\x00" in value:
        raise PydanticCustomError("nul_character", "must not contain the NUL character (U+0000)")
    return value


Storable = AfterValidator(_storable)


def _nfc(value: str) -> str:
    """An id that differs from another only by Unicode normalisation ('café' composed or decomposed) would name a
    second user who looks the same: ids must be sent in NFC, the form nearly every system writes."""
    if not value.isascii() and not unicodedata.is_normalized("NFC", value):
        raise PydanticCustomError("not_nfc", "must be in Unicode normalisation form NFC (composed characters)")
    return value


Canonical = AfterValidator(_nfc)
EventId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]
EntityId = Annotated[str, StringConstraints(min_length=1, max_length=128), Storable, Canonical]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=256), Storable]
# Blank lineage ids are refused: stripped to "", they made an envelope the partition owner rejects after a 202.
LineageId = Annotated[str, StringConstraints(min_length=1, max_length=128), Storable, Canonical]

SUPPORTED_CURRENCIES = ("USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD")
SUPPORTED_UNITS = ("C", "F", "K", "Pa", "kPa", "bar", "psi", "%", "m", "cm", "ft", "lux")


def _aware(value: datetime) -> datetime:
    """Naive timestamps are read as UTC so every stored time is comparable."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _bounded_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """Depth, size, key length and value types of free-form metadata, checked without recursion."""
    if value:
        problem = metadata_problem(value)
        if problem is not None:
            raise PydanticCustomError("metadata_limit", "{detail}", {"detail": problem})
    return value


Timestamp = Annotated[datetime, AfterValidator(_aware)]
Metadata = Annotated[
    dict[str, Any],
    Field(
        default_factory=dict,
        max_length=64,
        description=(
            f"Free-form JSON object: at most 64 keys at the top, nested at most {MAX_METADATA_DEPTH} levels, at most "
            f"{MAX_METADATA_BYTES} bytes as compact JSON; numbers finite, integers within 64 bits."
        ),
        json_schema_extra={"propertyNames": {"maxLength": MAX_METADATA_KEY_CHARS}},
    ),
    AfterValidator(_bounded_metadata),
]


class EventBase(BaseModel):
    """Fields every event carries: identity, time, version and lineage."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    id: EventId | None = None
    timestamp: Timestamp
    schema_version: Literal[1] = 1
    correlation_id: LineageId | None = None
    causation_id: LineageId | None = None
    parent_ids: Annotated[list[EventId], Field(max_length=32)] = Field(default_factory=list)

    def entity_key(self) -> str:
        """The key that orders this event's effects (Kafka message key); pipelines.entity says which field holds it."""
        key = entity.entity_key(self)
        if key is None:
            raise ValueError(f"{type(self).__name__} names no entity ({', '.join(entity.ENTITY_FIELDS)})")
        return key


class TransactionV1(EventBase):
    type: Literal["transaction"]
    user_id: EntityId
    amount: Annotated[Decimal, Field(max_digits=18, decimal_places=6, allow_inf_nan=False)]
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
    metadata: Metadata
    # Optional, so version 1 stays compatible; left out of the payload when absent, so records of events without
    # it are byte-for-byte what they were (owners built before the field still read them).
    merchant_id: EntityId | None = Field(None, exclude_if=lambda value: value is None)


class Location(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lat: Annotated[float, Field(ge=-90, le=90)]
    lon: Annotated[float, Field(ge=-180, le=180)]


def _physical_ranges_schema() -> list[dict[str, Any]]:
    """The per-unit reading range as JSON Schema conditionals (one `if unit == u then reading in range`)."""
    return [
        {
            "if": {"properties": {"unit": {"const": unit}}, "required": ["unit"]},
            "then": {"properties": {"reading": {"minimum": low, "maximum": high}}},
        }
        for unit, (low, high) in PHYSICAL_RANGES.items()
    ]


class SensorV1(EventBase):
    # The range per unit is published as well as checked; the Field bounds are their envelope, checked first.
    model_config = ConfigDict(json_schema_extra={"allOf": _physical_ranges_schema()})

    type: Literal["sensor"]
    device_id: EntityId
    reading: Annotated[
        float,
        Field(
            ge=READING_MIN,
            le=READING_MAX,
            allow_inf_nan=False,
            description="Physically possible range depends on the unit (see allOf); finite.",
        ),
    ]
    unit: Literal["C", "F", "K", "Pa", "kPa", "bar", "psi", "%", "m", "cm", "ft", "lux"]
    location: Location

    @model_validator(mode="after")
    def _physically_possible(self) -> SensorV1:
        problem = physical_range_problem(self.unit, self.reading)
        if problem is not None:
            # `field` names the input at fault: a model-level check has no location of its own.
            raise PydanticCustomError("physical_range", "{detail}", {"detail": problem, "field": "reading"})
        return self


class UserActionV1(EventBase):
    type: Literal["user_action"]
    user_id: EntityId
    action: ShortText
    target: ShortText
    metadata: Metadata
