"""Specification of the edge's promise: `Registry.parse` and `Envelope.encode_event` raise InvalidEvent, nothing else.

Whatever a validator or the serialiser trips over (RecursionError, OverflowError, ...) is the event's fault: a 422.
"""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import field_validator

from pipelines.envelope import Envelope
from pipelines.errors import InvalidEvent
from pipelines.handlers.base import HandlerResult
from pipelines.registry import EventTypeSpec, Registry, default_registry
from pipelines.schemas import EventBase, UserActionV1


class Fragile(EventBase):
    type: Literal["fragile"]
    value: int

    @field_validator("value")
    @classmethod
    def _explode(cls, value: int) -> int:
        raise {1: RecursionError, 2: OverflowError, 3: TypeError, 4: ZeroDivisionError}[value]("from a validator")


def fragile_registry() -> Registry:
    registry = Registry()
    registry.register(EventTypeSpec("fragile", {1: Fragile}, lambda event: HandlerResult({}, ())))
    return registry


@pytest.mark.parametrize("value", [1, 2, 3, 4])
def test_any_exception_from_a_validator_becomes_invalid_event(value):
    with pytest.raises(InvalidEvent) as caught:
        fragile_registry().parse({"type": "fragile", "timestamp": "2024-01-01T00:00:00Z", "value": value})

    (error,) = caught.value.errors
    assert (error.loc, error.type) == ("$", "unvalidatable")


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        "x",
        {"type": None},
        {"type": ["sensor"]},
        {"type": "sensor", "schema_version": 1.0},
        {"type": "sensor", "reading": [[[[[]]]]] * 1000},
        {"type": "user_action", "timestamp": "2024-01-01T00:00:00Z", **{f"k{i}": i for i in range(10_000)}},
    ],
)
def test_hostile_shapes_are_invalid_events(raw):
    with pytest.raises(InvalidEvent):
        default_registry().parse(raw)


def test_an_event_that_cannot_be_serialised_is_an_invalid_event_not_a_crash():
    # given an event built around validation (as a caller constructing models by hand could) with unserialisable data
    deep: dict = {}
    node = deep
    for _ in range(300):
        node["a"] = {}
        node = node["a"]
    for metadata in (deep, {"o": object()}):
        event = UserActionV1.model_construct(
            id="e-1", type="user_action", user_id="u", action="a", target="t", metadata=metadata, timestamp=None
        )

        # when it is encoded, then the failure is classified as the event's
        with pytest.raises(InvalidEvent, match="cannot be serialised"):
            Envelope.encode_event(event, 1.0)
