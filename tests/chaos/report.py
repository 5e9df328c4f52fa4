"""The chaos session report: one row per verified scenario, rendered as a table, with each scenario's timeline.

It only formats what scenarios recorded; it never queries anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.checker import Row

COLUMNS = (
    "scenario",
    "offered",
    "acked_share",
    "acknowledged",
    "spooled",
    "processed",
    "dead_lettered",
    "lost",
    "duplicated",
    "unexpected",
    "misrouted",
    "offset_gaps",
    "orphans",
    "misplaced",
    "recover_s",
    "stall_s",
)


@dataclass
class Entry:
    row: Row
    timeline: list[str]
    details: dict[str, list[str]]
    notes: list[str]


@dataclass
class ChaosReport:
    fault_s: float
    entries: list[Entry] = field(default_factory=list)

    def add(self, entry: Entry) -> None:
        self.entries.append(entry)

    def table(self) -> str:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
        for entry in self.entries:
            lines.append("| " + " | ".join(_cell(entry.row, c) for c in COLUMNS) + " |")
        return "\n".join(lines)

    def markdown(self) -> str:
        out = [f"# Chaos report (faults of {self.fault_s:g} s)", "", self.table(), ""]
        for entry in self.entries:
            out += [f"## {entry.row.scenario}", ""]
            out += [f"- {line}" for line in entry.timeline]
            out += [f"- {line}" for line in entry.notes]
            for column, examples in entry.details.items():
                out.append(f"- **{column}**: " + "; ".join(examples[:10]))
            out.append("")
        return "\n".join(out)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.markdown())


def _cell(row: Row, column: str) -> str:
    value = getattr(row, column)
    if column in ("recover_s", "stall_s"):
        return "" if value is None else f"{value:.2f}"
    if column == "acked_share":
        return "" if value is None else f"{value:.1%}"
    return str(value)
