"""What one record became once its batch committed: the one spelling of an event row's `status`, of the `status` label
of `events_processed_total`, of a processing span's `event.outcome`, and of the audit trail's outcome."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """What one record of a committed batch became: the one spelling of an event row's `status`, of the `status`
    label of `events_processed_total` and of a processing span's `event.outcome`."""

    PROCESSED = "processed"  # handled; its effects are stored
    DEAD_LETTERED = "dead_lettered"  # stored as a dead letter, with its bytes and a DeadLetterKind
    DUPLICATE = "duplicate"  # its event id was already stored, or carried by an earlier record of the same batch


# The audit trail's name for a record whose event id was already stored (`audit_log.to_status`): a DUPLICATE.
AUDIT_DUPLICATE = "duplicate_ignored"
