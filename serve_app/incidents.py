"""Error ids for the API's 5xx answers: the client gets the id and advice, the log gets the id with the real cause.

One WARNING (or ERROR) line per distinct cause per window, and every answer in that window carries the same id, so an
outage costs a few log lines, not one per request. It never puts the cause into anything a client sees.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

_MAX_CAUSES = 256  # distinct causes remembered per window; beyond it the memory is cleared (ids are then new)


class Incidents:
    def __init__(
        self, logger: logging.Logger, window_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = logger
        self._window_s = window_s
        self._clock = clock
        self._recent: dict[str, tuple[str, float]] = {}  # cause -> (error id, when it was logged)

    def report(
        self, message: str, exc: BaseException | None = None, *, cause: str | None = None, level: int = logging.WARNING
    ) -> str:
        """The error id for this cause: logged now with the exception (and its traceback at ERROR), or the id of the
        line already logged for the same cause within the window."""
        key = cause or (f"{message}|{type(exc).__name__}: {exc}" if exc is not None else message)
        now = self._clock()
        known = self._recent.get(key)
        if known is not None and now - known[1] < self._window_s:
            return known[0]
        if len(self._recent) >= _MAX_CAUSES:
            self._recent.clear()
        error_id = uuid.uuid4().hex[:16]
        self._recent[key] = (error_id, now)
        detail = f"{message}: {type(exc).__name__}: {exc}" if exc is not None else message
        self._log.log(
            level,
            "%s (error_id %s)",
            detail,
            error_id,
            exc_info=exc if exc is not None and level >= logging.ERROR else None,
            extra={"error_id": error_id},
        )
        return error_id
