"""Reads the spans that every process exported as JSON lines (`<data_dir>/traces/*.jsonl`) and builds the tree of one
event's trace, with the batch commits that link to it, for `eventpipe trace <event-id>`.

It only reads files; it never writes them and never needs the pipeline to be running. Every value from a span
(names, attributes, ids, error text) reaches the terminal through terminal_text: escaped, never as markup.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.text import Text
from rich.tree import Tree

from cluster.observability.terminal import terminal_text

# Attributes worth a glance in the tree, in this order (the event's id is in the title).
_SHOWN = (
    "event.type",
    "user.id",
    "device.id",
    "correlation.id",
    "spooled",
    "from_spool",
    "event.outcome",
    "event.attempts",
    "dead_letter.kind",
    "dead_letter.reason",
    "messaging.destination.name",
    "messaging.destination.partition.id",
    "messaging.kafka.offset",
    "eventpipe.batch.records",
    "eventpipe.batch.new_events",
    "event.already_stored",
    "db.transaction_ms",
)


@dataclass(frozen=True)
class SpanRow:
    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start_ns: int
    end_ns: int
    status: str
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...]  # (trace_id, span_id)
    resource: dict[str, Any]
    status_message: str | None = None

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> SpanRow:
        return cls(
            name=obj["name"],
            trace_id=obj["trace_id"],
            span_id=obj["span_id"],
            parent_id=obj.get("parent_id"),
            start_ns=int(obj["start_ns"]),
            end_ns=int(obj["end_ns"]),
            status=obj.get("status", "UNSET"),
            attributes=obj.get("attributes") or {},
            links=tuple((link["trace_id"], link["span_id"]) for link in obj.get("links") or ()),
            resource=obj.get("resource") or {},
            status_message=obj.get("status_message"),
        )

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    @property
    def process(self) -> str:
        return f"{self.resource.get('eventpipe.service', '?')} pid {self.resource.get('process.pid', '?')}"


@dataclass
class Node:
    span: SpanRow
    children: list[Node] = field(default_factory=list)
    linked: bool = False  # a span of another trace (a batch commit) that links to its parent here


def span_files(directory: Path) -> list[Path]:
    """Every process's span file, the rotated ones (`.jsonl.1`) included."""
    if not directory.is_dir():
        return []
    return sorted([*directory.glob("*.jsonl"), *directory.glob("*.jsonl.1")])


def _lines_with(files: Iterable[Path], needles: list[bytes]) -> Iterator[dict[str, Any]]:
    """Parsed lines that contain any needle (a cheap substring filter before JSON parsing)."""
    for path in files:
        with path.open("rb") as fh:
            for line in fh:
                if any(n in line for n in needles):
                    try:
                        yield orjson.loads(line)
                    except orjson.JSONDecodeError:
                        continue  # a line cut short by a crash mid-write


def spans_of_event(directory: Path, event_id: str) -> list[SpanRow]:
    """The spans of every trace that carries `event_id`, and the spans of other traces (batch commits) linking into
    them."""
    files = span_files(directory)
    quoted = orjson.dumps(event_id)
    trace_ids = set()
    for obj in _lines_with(files, [quoted]):
        if (obj.get("attributes") or {}).get("event.id") == event_id:
            trace_ids.add(obj["trace_id"])
    if not trace_ids:
        return []
    spans: dict[str, SpanRow] = {}
    for obj in _lines_with(files, [t.encode() for t in trace_ids]):
        row = SpanRow.from_json(obj)
        if row.trace_id in trace_ids or any(t in trace_ids for t, _ in row.links):
            spans[row.span_id] = row
    return sorted(spans.values(), key=lambda s: s.start_ns)


def build_trees(spans: list[SpanRow], event_id: str) -> list[Node]:
    """One root per trace of the event (or per span whose parent was not exported), children in start order; a span
    of another trace that links here (a batch commit) hangs under each span it links to, marked `linked`."""
    traces = {s.trace_id for s in spans if s.attributes.get("event.id") == event_id}
    nodes = {s.span_id: Node(s) for s in spans if s.trace_id in traces}
    roots: list[Node] = []
    for node in nodes.values():
        parent = nodes.get(node.span.parent_id) if node.span.parent_id else None
        (parent.children if parent is not None else roots).append(node)
    for s in spans:
        if s.trace_id not in traces:
            for _trace_id, span_id in s.links:
                if span_id in nodes:
                    nodes[span_id].children.append(Node(s, linked=True))
    for node in nodes.values():
        node.children.sort(key=lambda n: n.span.start_ns)
    return sorted(roots, key=lambda n: n.span.start_ns)


def _label(node: Node, origin_ns: int) -> Text:
    s = node.span
    label = Text()
    label.append("⤷ linked " if node.linked else "", style="magenta")
    label.append_text(terminal_text(s.name, "bold red" if s.status == "ERROR" else "bold"))
    label.append(f"  {s.duration_ms:.2f} ms", style="cyan")
    label.append(f"  at +{(s.start_ns - origin_ns) / 1e6:.2f} ms", style="dim")
    label.append_text(terminal_text(f"  [{s.process}]", "green"))
    shown = [f"{k}={s.attributes[k]}" for k in _SHOWN if k in s.attributes]
    if node.linked:
        shown.append(f"links={len(s.links)}")
    if shown:
        label.append_text(terminal_text("  " + " ".join(shown), "dim"))
    if s.status == "ERROR" and s.status_message:
        label.append_text(terminal_text(f"  error: {s.status_message}", "red"))
    return label


def render(event_id: str, roots: list[Node]) -> Tree:
    """The rich tree of an event's traces; times are offsets from the first span of each trace."""
    top = Tree(terminal_text(f"event {event_id}", "bold"))
    for root in roots:
        origin = root.span.start_ns
        branch = top.add(terminal_text(f"trace {root.span.trace_id}", "yellow"))
        _add(branch, root, origin)
    return top


def _add(tree: Tree, node: Node, origin_ns: int) -> None:
    branch = tree.add(_label(node, origin_ns))
    for child in node.children:
        _add(branch, child, origin_ns)
