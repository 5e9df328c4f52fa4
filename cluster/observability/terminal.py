"""Text that came from events or spans, made safe to show in a terminal: control characters (C0, DEL, C1, line and
paragraph separators, bidi overrides) shown escaped as `\\x1b`, and rich markup never interpreted.

It never drops a character: what was sent stays visible, only escaped.
"""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text

_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_ESCAPES: dict[int, str] = {
    code: (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    for code in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029, *_BIDI)
}


def printable(value: object) -> str:
    """`str(value)` with every control character replaced by its escape (ESC becomes the four characters `\\x1b`)."""
    return str(value).translate(_ESCAPES)


def terminal_text(value: object, style: str = "") -> Text:
    """`value` as rich Text: control characters escaped, and since Text is never parsed as markup, `[bold red]`
    shows as written. Use it for every value from an event or a span that rich prints (tree labels, table cells)."""
    return Text(printable(value), style=style)


def terminal_markup(value: object) -> str:
    """`value` for a place that takes a markup string (an f-string given to `console.print`): controls escaped and
    `[`...`]` escaped so rich shows it literally."""
    return escape(printable(value))
