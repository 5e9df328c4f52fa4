"""Classified failures: each exception type has exactly one meaning for the runtime.

InvalidEvent and PoisonEvent go to the dead-letter queue at once; TransientError is retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class FieldError:
    """One validation problem, addressed by its JSON path."""

    loc: str
    msg: str
    type: str

    def as_dict(self) -> dict[str, str]:
        return {"loc": self.loc, "msg": self.msg, "type": self.type}


class InvalidEvent(Exception):
    """The bytes or fields can never become a valid event: dead-letter, never retry."""

    def __init__(self, reason: str, errors: tuple[FieldError, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errors = errors

    def describe(self) -> str:
        if not self.errors:
            return self.reason
        detail = "; ".join(f"{e.loc}: {e.msg}" for e in self.errors[:10])
        return f"{self.reason}: {detail}"


class PoisonEvent(Exception):
    """A valid event the handler can never process (e.g. an unknown currency): dead-letter."""


class TransientError(Exception):
    """A failure worth retrying (a dependency hiccup); after the retry budget it is dead-lettered."""


class DeadLetterKind(StrEnum):
    """Why a record went to the dead letters: the one spelling of `dead_letters.error_kind` and of metric labels."""

    INVALID = "invalid"  # the bytes or fields can never become a valid event
    POISON = "poison"  # a valid event the handler can never process
    EXHAUSTED = "exhausted"  # transient failures outlasted the retry budget
    HANDLER_ERROR = "handler_error"  # an unexpected exception on the event's way through the owner
    STORE_REJECTED = "store_rejected"  # PostgreSQL refused the event's rows for a data reason (overflow, constraint)
    PUBLISH_REJECTED = "publish_rejected"  # the broker refuses the record for good (e.g. larger than allowed)


class Fenced(Exception):
    """A newer epoch owns the partition: this owner must stop and never commit again."""
