"""JSON text helpers shared by the edge and the engine: serialise, and detect NUL characters.

PostgreSQL text and jsonb cannot hold U+0000, so anything headed for storage is checked here first.
"""

from __future__ import annotations

import json
import re

import orjson

# A JSON \u0000 escape not itself escaped (an odd number of backslashes before 'u0000').
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def has_nul(json_text: bytes) -> bool:
    return b"\\u0000" in json_text and _NUL_ESCAPE.search(json_text) is not None


def dumps_storable(value: object) -> bytes:
    """orjson bytes of value; ValueError if any string in it holds a NUL character."""
    text = orjson.dumps(value)
    if has_nul(text):
        raise ValueError("contains a NUL character (\\u0000), which cannot be stored")
    return text


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return obj


def ambiguity(json_text: bytes) -> str | None:
    """Why JSON text that orjson accepted is still ambiguous, or None: an object with a key twice (parsers disagree
    on which value wins, so a checker and a consumer could read different events). Costs a second parse (~3 µs for
    a small event), paid only by bodies orjson accepted."""
    try:
        json.loads(json_text, object_pairs_hook=_unique)
    except _Duplicate as dup:
        return f"an object has the key {ascii(dup.key[:64])} more than once"
    except RecursionError:
        return "nesting deeper than the API parses"
    return None
