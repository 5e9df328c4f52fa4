"""The entity an event is about (a user or a device): the one place that says which field holds its key.

The key orders an event's effects (it is the Kafka message key and the `entity_key` of stored rows). Pure: it reads
fields it is given and never validates them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The fields that name an event's entity, in the order they are looked for; each event type has one of them.
ENTITY_FIELDS: tuple[str, ...] = ("user_id", "device_id")


def entity_of(event: Mapping[str, Any] | object) -> tuple[str, str] | None:
    """(field, key) of the entity an event is about: a validated event, or the fields of one not (yet) validated
    (a record's payload); None when no entity field holds a string."""
    fields = event if type(event) is dict or isinstance(event, Mapping) else vars(event)
    for name in ENTITY_FIELDS:
        value = fields.get(name)
        if isinstance(value, str):
            return name, value
    return None


def entity_key(event: Mapping[str, Any] | object) -> str | None:
    """The key of the entity an event is about (see `entity_of`)."""
    entity = entity_of(event)
    return entity[1] if entity is not None else None
