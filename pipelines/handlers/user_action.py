"""User-action handler: enriches an action with a session id.

Sessions are fixed 30-minute windows per user, derived from the event time, so a replay gives the same id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from pipelines import ids
from pipelines.effects import ActionCount
from pipelines.handlers.base import HandlerResult
from pipelines.schemas import UserActionV1

_SESSION_NAMESPACE = uuid.UUID("6f1f9a52-3c1e-4d4e-9b7a-5d1c0b9e2a10")


@dataclass(frozen=True)
class UserActionHandler:
    session_window_s: int = 1800

    def __call__(self, event: UserActionV1) -> HandlerResult:
        epoch_s = int(event.timestamp.timestamp())
        window_start = epoch_s - epoch_s % self.session_window_s
        session_id = ids.name_based(_SESSION_NAMESPACE, f"{event.user_id}\x1f{window_start}")
        result = {
            "session_id": session_id,
            "session_window_start": datetime.fromtimestamp(window_start, tz=UTC).isoformat(),
        }
        return HandlerResult(result, (ActionCount(event.user_id, event.action),))
