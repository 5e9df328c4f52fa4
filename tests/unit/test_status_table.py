"""Specification of `eventpipe status`'s table: it fits an 80-column terminal and never cuts a topic name."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from cluster import cli

LEADER = {"holder": "eventpipe-4f1c2a9e", "role": "leader", "epoch": 3, "term": 2}
TOPICS = ("events.transaction", "events.user_action", "events.sensor", "events.ingest")


def _status(topic: str, partition: int) -> dict[str, object]:
    # large values everywhere: the widest table a long-running pipeline shows
    return {
        "topic": topic,
        "partition": partition,
        "state": "running",
        "epoch": 1234,
        "committed_offset": 123_456_789,
        "events": 123_456_789,
        "duplicates": 1_234_567,
        "dead_letters": 123_456,
    }


@pytest.mark.parametrize("width", [80, 100])
def test_status_fits_the_terminal_with_whole_topic_names(monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=out, width=width))
    cli.print_status(LEADER, [_status(t, p) for t in TOPICS for p in range(2)])
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= width
    for topic in TOPICS:
        for partition in range(2):
            assert any(f"{topic}[{partition}]" in line for line in lines), out.getvalue()
    assert "…" not in out.getvalue()  # no value and no header cut short
    assert any("123456789" in line for line in lines)
