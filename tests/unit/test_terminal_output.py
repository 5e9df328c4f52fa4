"""Specification of what `eventpipe trace` and `eventpipe status` print from events and spans: control characters
shown escaped, never sent to the terminal, and rich markup shown as written, never interpreted.

Spans are written by the real tracer and its span-file exporter and read back by the real command.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from cluster import cli
from cluster.observability.terminal import printable, terminal_markup, terminal_text
from cluster.observability.tracing import Tracing
from cluster.settings import Settings

# An OSC title change, a screen clear, and markup that would turn the rest of the line bold red.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J[bold red]boom[/bold red]\x9b31m\x7f\u202eevil"
SHOWN = "\\x1b]0;pwned\\x07\\x1b[2J[bold red]boom[/bold red]\\x9b31m\\x7f\\u202eevil"


def _console(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """The CLI's console, wide (no wrapping) and writing into a buffer, as a terminal that renders styles."""
    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=out, width=1000, force_terminal=True, color_system="standard"))
    return out


def _without_rich_styles(text: str) -> str:
    """The output with rich's own style sequences (ESC [ ... m) removed: what is left must hold no ESC at all."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


@pytest.mark.parametrize("value", [HOSTILE, f"user-{HOSTILE}"])
def test_control_characters_are_shown_escaped(value: str) -> None:
    shown = printable(value)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c == "\u202e" for c in shown)
    assert SHOWN in shown


def test_markup_from_a_value_is_shown_as_written() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=True, color_system="standard")
    console.print(terminal_text(HOSTILE))
    console.print(f"id {terminal_markup(HOSTILE)} end")
    printed = out.getvalue()
    assert "\x1b[1;31m" not in printed  # bold red never switched on
    assert "\x1b]0;" not in printed and "\x07" not in printed and "\x9b" not in printed
    assert _without_rich_styles(printed).count(SHOWN) == 2  # the highlighter may colour brackets, nothing more


def test_trace_prints_hostile_span_attributes_and_event_id_escaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an event whose id and user id carry escape sequences and markup, traced by the real exporter
    settings = Settings(_env_file=None, data_dir=tmp_path, trace_sample_ratio=1.0)  # type: ignore[call-arg]
    tracing = Tracing.start(settings, "api")
    event_id = f"ev-{HOSTILE}"
    with tracing.tracer.start_as_current_span("event-ingestion") as span:
        span.set_attribute("event.id", event_id)
        span.set_attribute("event.type", "transaction")
        span.set_attribute("user.id", HOSTILE)
        span.set_attribute("dead_letter.reason", HOSTILE)
    tracing.shutdown()
    out = _console(monkeypatch)

    # when `eventpipe trace <id>` prints its tree
    assert cli.cmd_trace(settings, event_id) == 0

    # then every hostile value is visible, escaped, and nothing reached the terminal raw
    printed = out.getvalue()
    assert "\x1b" not in _without_rich_styles(printed)
    assert "\x07" not in printed and "\x9b" not in printed and "\u202e" not in printed
    assert f"user.id={SHOWN}" in _without_rich_styles(printed)
    assert f"event ev-{SHOWN}" in _without_rich_styles(printed)
    assert "\x1b[1;31m" not in printed


def test_trace_of_an_unknown_hostile_event_id_prints_it_escaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    out = _console(monkeypatch)
    assert cli.cmd_trace(settings, HOSTILE) == 1
    printed = out.getvalue()
    assert "\x1b" not in _without_rich_styles(printed)
    assert SHOWN in _without_rich_styles(printed)
    assert "\x1b[1;31m" not in printed


def test_status_prints_hostile_owner_and_leader_fields_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    # given a leader and an owner whose reported strings carry escape sequences and markup
    lead = {"holder": HOSTILE, "role": "leader", "epoch": 3, "term": 1, "held_by": HOSTILE}
    status = {
        "topic": f"events.{HOSTILE}",
        "partition": 0,
        "state": HOSTILE,
        "epoch": 1,
        "committed_offset": 10,
        "events": 5,
        "duplicates": 0,
        "dead_letters": 1,
    }
    out = _console(monkeypatch)
    # when `eventpipe status` prints them
    cli.print_status(lead, [status])
    # then they show escaped and as written
    printed = _without_rich_styles(out.getvalue())
    assert "\x1b" not in printed and "\x07" not in printed
    assert printed.count(SHOWN) == 4  # holder, held_by, topic, state
    assert "\x1b[1;31m" not in out.getvalue()
