"""Edge limits for values whose shape the schema alone cannot bound: free-form metadata and the event time.

Pure checks that return a problem text (or None); they never recurse, read a clock or raise on hostile input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from pipelines.jsontext import has_nul

MAX_METADATA_DEPTH = 8  # the metadata object itself is level 1
MAX_METADATA_BYTES = 16_384  # serialised as compact JSON
MAX_METADATA_KEY_CHARS = 128

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Every instant in a window must have a UTC date (year 1..9999) whatever its offset (up to +-23:59): a day's margin.
_EARLIEST_ALLOWED = datetime(1, 1, 2, tzinfo=UTC)
_LATEST_ALLOWED_S = (datetime(9999, 12, 30, tzinfo=UTC) - EPOCH).total_seconds()


def metadata_problem(value: dict[str, Any]) -> str | None:
    """Why `value` is not acceptable metadata, or None.

    Serialised first: orjson bounds its own nesting (255 levels) natively and refuses what is not JSON (non-string
    keys, integers over 64 bits, unknown types), so the checks that follow only ever see at most MAX_METADATA_BYTES.
    Small metadata (the usual case) cannot break the depth or key limits, so only the round trip runs for it."""
    try:
        text = orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError, ValueError) as exc:
        if "recursion" in str(exc).lower():
            return f"must be nested at most {MAX_METADATA_DEPTH} levels deep"
        return f"{_PLAIN_JSON}: {exc}"
    if len(text) > MAX_METADATA_BYTES:
        return f"must serialise to at most {MAX_METADATA_BYTES} bytes of JSON, got {len(text)}"
    if b"\\u0000" in text and has_nul(text):
        return "strings must not contain the NUL character (U+0000), which cannot be stored"
    containers = text.count(b"{") + text.count(b"[")  # brackets inside strings only overcount: safe
    if len(text) > MAX_METADATA_KEY_CHARS or containers > MAX_METADATA_DEPTH:
        problem = _shape_problem(value)
        if problem is not None:
            return problem
    # What orjson wrote as something else (NaN and inf as null, a tuple as a list, a date as a string) reads back
    # different: only plain JSON values survive the round trip unchanged.
    if orjson.loads(text) != value:
        return _PLAIN_JSON
    return None


_PLAIN_JSON = "must be plain JSON (objects, arrays, strings, finite numbers, booleans, null)"


def _shape_problem(value: dict[str, Any]) -> str | None:
    """Depth and key length, walked with an explicit stack (no recursion a deep input could exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            return f"must be nested at most {MAX_METADATA_DEPTH} levels deep"
        if isinstance(node, dict):
            for key, child in node.items():
                if len(key) > MAX_METADATA_KEY_CHARS:
                    return f"object keys must be at most {MAX_METADATA_KEY_CHARS} characters, got {len(key)}"
                stack.append((child, depth + 1))
        elif isinstance(node, list | tuple):
            stack.extend((child, depth + 1) for child in node)
    return None


@dataclass(frozen=True)
class TimeWindow:
    """Event times accepted: from `earliest` to `max_ahead_s` after now (now read from a clock the caller injects).

    The lower bound is absolute on purpose: a record replayed days later is judged as it was when accepted. The upper
    bound moves only forward with the clock, so an event accepted once stays acceptable when read again later
    (partition owners add a grace for clock skew between hosts). Raising `earliest` turns records still in the log
    that are older than it into dead letters when they are read again.
    """

    earliest: datetime = EPOCH
    max_ahead_s: float = 86_400.0
    _earliest_s: float = field(init=False, repr=False, compare=False, default=0.0)

    def __post_init__(self) -> None:
        if self.earliest.tzinfo is None:
            raise ValueError("TimeWindow.earliest must carry a timezone")
        if self.earliest < _EARLIEST_ALLOWED:
            raise ValueError(f"TimeWindow.earliest must be on or after {_EARLIEST_ALLOWED.isoformat()}")
        if not (0 <= self.max_ahead_s <= 10 * 366 * 86_400):
            raise ValueError("TimeWindow.max_ahead_s must be between 0 and ten years")
        object.__setattr__(self, "_earliest_s", self.earliest.timestamp())

    def problem(self, value: datetime, now: float) -> str | None:
        """Why `value` (timezone-aware) is outside the window at `now` (epoch seconds), or None.

        `timestamp()` of an aware datetime is timedelta arithmetic: year 1 at +14:00 or year 9999 at -14:00 give a
        number, never an OverflowError."""
        latest_s = now + self.max_ahead_s
        if not latest_s <= _LATEST_ALLOWED_S:  # also a clock that returned NaN
            latest_s = _LATEST_ALLOWED_S
        if self._earliest_s <= value.timestamp() <= latest_s:
            return None
        latest = EPOCH + timedelta(seconds=latest_s)
        return (
            f"must be between {_iso(self.earliest)} and now + {self.max_ahead_s:g} s ({_iso(latest)}), "
            f"got {value.isoformat()}"
        )

    def describe(self) -> str:
        return f"Event time: from {_iso(self.earliest)} to {self.max_ahead_s:g} seconds after the time of validation."


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
