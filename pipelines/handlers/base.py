"""The handler contract: a pure function from a validated event to a result and read-model effects.

Handlers never do I/O of their own here; a failure is raised as PoisonEvent or TransientError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pipelines.effects import Effect


@dataclass(frozen=True)
class HandlerResult:
    result: dict[str, Any]
    effects: tuple[Effect, ...]


class Handler(Protocol):
    def __call__(self, event: Any, /) -> HandlerResult: ...
