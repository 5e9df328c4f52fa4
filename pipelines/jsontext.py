"""JSON text helpers shared by the edge and the engine: serialise, and detect NUL characters.

PostgreSQL text and jsonb cannot hold U+0000, so anything headed for storage is checked here first.
"""

from __future__ import annotations

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
