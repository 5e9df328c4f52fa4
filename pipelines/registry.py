"""Maps an event type and schema version to its model and handler; validates raw objects, JSON bytes and whole
batches (one pydantic-core call for a batch, dispatching on type and version as `parse` does).

Validation turns every problem into InvalidEvent with field-level errors; it never raises anything else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Union

import orjson
from pydantic import Discriminator, Tag, TypeAdapter, ValidationError

from pipelines.enrichment import MerchantLookup
from pipelines.errors import FieldError, InvalidEvent
from pipelines.handlers.base import Handler
from pipelines.handlers.sensor import SensorHandler
from pipelines.handlers.transaction import TransactionHandler
from pipelines.handlers.user_action import UserActionHandler
from pipelines.limits import EPOCH, TimeWindow
from pipelines.schemas import EventBase, SensorV1, TransactionV1, UserActionV1


@dataclass(frozen=True)
class EventTypeSpec:
    name: str
    versions: Mapping[int, type[EventBase]]
    handler: Handler


def field_errors(exc: ValidationError) -> tuple[FieldError, ...]:
    """One FieldError per problem; a model-level check names its field in the error context (`field`)."""
    return tuple(
        FieldError(
            ".".join(str(p) for p in err["loc"]) or str(err.get("ctx", {}).get("field", "$")), err["msg"], err["type"]
        )
        for err in exc.errors()
    )


@dataclass
class Registry:
    """Event types by name, and the event-time window checked at `now` from the injected clock (epoch seconds)."""

    specs: dict[str, EventTypeSpec] = field(default_factory=dict)
    time_window: TimeWindow = field(default_factory=TimeWindow)
    clock: Callable[[], float] = time.time
    _batches: TypeAdapter[list[EventBase]] | None = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the compiled batch validator (it is built again on first use where it lands)."""
        return {**self.__dict__, "_batches": None}

    def register(self, spec: EventTypeSpec) -> None:
        if spec.name in self.specs:
            raise ValueError(f"event type {spec.name!r} is already registered")
        self.specs[spec.name] = spec
        self._batches = None  # built again, with the new type, on the next batch

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(self.specs)

    def spec(self, event_type: str) -> EventTypeSpec:
        return self.specs[event_type]

    def parse(self, raw: Any) -> EventBase:
        """Validate a decoded JSON value into its typed event; raises InvalidEvent and nothing else, for any input."""
        try:
            return self._parse(raw)
        except InvalidEvent:
            raise
        except Exception as exc:  # noqa: BLE001 - a validator failing on hostile input (RecursionError, ...) is a 422
            raise InvalidEvent(
                "event could not be validated",
                (FieldError("$", f"cannot be validated: {type(exc).__name__}", "unvalidatable"),),
            ) from exc

    def parse_json(self, data: bytes) -> EventBase:
        """`parse(orjson.loads(data))` of a record's bytes, with bytes that are not JSON an InvalidEvent too (the
        reason a dead letter carries, worded as for an envelope record); raises nothing else."""
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent(f"record is not valid JSON: {exc}") from None
        return self.parse(raw)

    def parse_many(self, raws: list[Any]) -> list[EventBase | InvalidEvent]:
        """`parse` of each decoded value, in order: each result is the event or the InvalidEvent `parse` raises.

        The whole list is validated in one pydantic-core call (a union tagged by type and version, chosen as `parse`
        chooses); only a list with an invalid item is validated again item by item, for each item's own errors."""
        adapter = self._batch_adapter()
        if adapter is None:
            return [self._outcome(raw) for raw in raws]
        try:
            events = adapter.validate_python(raws)
        except Exception:  # noqa: BLE001 - some item is invalid (or unvalidatable): each one's own answer below
            return [self._outcome(raw) for raw in raws]
        now = self.clock()
        window = self.time_window
        out: list[EventBase | InvalidEvent] = list(events)
        for index, event in enumerate(events):
            problem = window.problem(event.timestamp, now)
            if problem is not None:
                out[index] = InvalidEvent(
                    f"invalid {event.type} event",  # type: ignore[attr-defined]
                    (FieldError("timestamp", problem, "time_window"),),
                )
        return out

    def _outcome(self, raw: Any) -> EventBase | InvalidEvent:
        try:
            return self.parse(raw)
        except InvalidEvent as exc:
            return exc

    def _batch_adapter(self) -> TypeAdapter[list[EventBase]] | None:
        """None with fewer than two models: a tagged union needs two (such a registry validates item by item)."""
        if self._batches is None:
            choices = [
                Annotated[model, Tag(_tag(name, version))]
                for name, spec in self.specs.items()
                for version, model in spec.versions.items()
            ]
            if len(choices) < 2:
                return None
            self._batches = TypeAdapter(list[Annotated[_union(choices), Discriminator(self._tag_of)]])
        return self._batches

    def _tag_of(self, raw: Any) -> str | None:
        """The tag of the model `parse` would validate `raw` with; None (invalid) wherever `parse` refuses first."""
        if not isinstance(raw, dict):
            return None
        event_type = raw.get("type")
        if not isinstance(event_type, str) or event_type not in self.specs:
            return None
        version = raw.get("schema_version", 1)
        if type(version) is not int or version not in self.specs[event_type].versions:  # bool is not a version
            return None
        return _tag(event_type, version)

    def _parse(self, raw: Any) -> EventBase:
        if not isinstance(raw, dict):
            raise InvalidEvent("event must be a JSON object", (FieldError("$", "expected an object", "type_error"),))
        event_type = raw.get("type")
        if not isinstance(event_type, str) or event_type not in self.specs:
            known = ", ".join(sorted(self.specs))
            raise InvalidEvent(
                f"unknown event type {event_type!r}",
                (FieldError("type", f"must be one of: {known}", "unknown_type"),),
            )
        spec = self.specs[event_type]
        version = raw.get("schema_version", 1)
        model = spec.versions.get(version) if type(version) is int else None  # bool is not a version
        if model is None:
            raise InvalidEvent(
                f"unsupported schema_version {version!r} for {event_type}",
                (FieldError("schema_version", f"supported: {sorted(spec.versions)}", "unsupported_version"),),
            )
        try:
            event = model.model_validate(raw)
        except ValidationError as exc:
            raise InvalidEvent(f"invalid {event_type} event", field_errors(exc)) from None
        problem = self.time_window.problem(event.timestamp, self.clock())
        if problem is not None:
            raise InvalidEvent(f"invalid {event_type} event", (FieldError("timestamp", problem, "time_window"),))
        return event

    def json_schemas(self) -> dict[str, dict[str, Any]]:
        """JSON Schema per type and version, as published at GET /schemas."""
        return {
            name: {str(v): self._published(model) for v, model in sorted(spec.versions.items())}
            for name, spec in self.specs.items()
        }

    def _published(self, model: type[EventBase]) -> dict[str, Any]:
        schema = model.model_json_schema()
        schema["properties"]["timestamp"]["description"] = self.time_window.describe()  # the configured window
        return schema


def _tag(event_type: str, version: int) -> str:
    return f"{event_type}/{version}"


def _union(choices: list[Any]) -> Any:
    return Union[tuple(choices)]  # noqa: UP007 - built from a runtime list of models


def default_registry(
    base_currency: str = "USD",
    risk_threshold: float = 10_000.0,
    merchants: MerchantLookup | None = None,
    *,
    event_time_min: datetime = EPOCH,
    event_time_max_ahead_s: float = 86_400.0,
    clock: Callable[[], float] = time.time,
) -> Registry:
    """The three built-in types; `merchants` enriches transactions (None: no enrichment service configured).

    Event times are accepted from `event_time_min` to `event_time_max_ahead_s` after `clock()`."""
    registry = Registry(time_window=TimeWindow(event_time_min, event_time_max_ahead_s), clock=clock)
    registry.register(
        EventTypeSpec(
            "transaction",
            {1: TransactionV1},
            TransactionHandler(
                base_currency=base_currency, risk_threshold=Decimal(str(risk_threshold)), merchants=merchants
            ),
        )
    )
    registry.register(EventTypeSpec("sensor", {1: SensorV1}, SensorHandler()))
    registry.register(EventTypeSpec("user_action", {1: UserActionV1}, UserActionHandler()))
    return registry
