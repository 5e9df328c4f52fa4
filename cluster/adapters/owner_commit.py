"""The partition owner's side of one fenced commit: encode the batch, put its dead letters on the DLQ topic once,
send it to a checkpoint writer, retry dependency outages as they are, and hand a refusal back as a value.

It never splits a batch (pipelines.policies.bisect does), never retries a batch refused for what it holds, and never
retries forever a commit that keeps failing for any reason but an outage (DESIGN §2.5).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Protocol

from cluster.adapters.commit_doc import EncodedBatch, UnencodableEvent, encode
from cluster.observability.recording import CommitFailure
from pipelines.batch import CommitBatch, CommitOutcome
from pipelines.errors import DeadLetterKind, Fenced
from pipelines.policies.bisect import Refusal

log = logging.getLogger(__name__)

# Commit attempts of one batch failing for a reason that is no outage (CommitFailure.OTHER: a bug in the writer, a
# PostgreSQL internal error, out of memory on a big document) before it is handed back as a refusal to split.
MAX_OTHER_FAILURES = 3

# What a failed attempt was: its class (the metric's reason), a one-line description, and a breaker's retry hint.
Explained = tuple[CommitFailure, str, float | None]


class DeadLetterSink(Protocol):
    def publish(self, batch: CommitBatch) -> None:
        """Put every dead letter of the batch on the DLQ topic; raise when the broker did not acknowledge them."""
        ...


class OwnerCommitter:
    """Used from one owner loop thread. `send` ships an encoded batch to a writer and returns its outcome (raising
    on outages); `explain` classifies what it raised; `on_failure` / `on_success` keep the owner's status."""

    def __init__(
        self,
        send: Callable[[EncodedBatch], CommitOutcome],
        dead_letters: DeadLetterSink,
        explain: Callable[[BaseException], Explained],
        on_failure: Callable[[CommitFailure, str], None],
        on_success: Callable[[], None],
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        max_delay_s: float = 5.0,
        max_other_failures: int = MAX_OTHER_FAILURES,
    ) -> None:
        self._send = send
        self._dead_letters = dead_letters
        self._explain = explain
        self._on_failure = on_failure
        self._on_success = on_success
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._max_delay_s = max_delay_s
        self._max_other_failures = max_other_failures
        self._published: set[int] = set()

    def begin(self) -> None:
        """A new batch of records: the dead letters published for the last one are forgotten."""
        self._published.clear()

    def commit(self, batch: CommitBatch, trace_contexts: Mapping[int, str] | None = None) -> CommitOutcome | Refusal:
        """Commit one batch, or say it was refused for what it holds; raises Fenced.

        A dependency outage only pauses us: the batch is kept and retried as it is until it commits or we are fenced.
        Dead letters the broker does not acknowledge are an outage too. Any other failure of the commit is tried
        `max_other_failures` times (outages in between do not restart the count), then comes back as a refusal.
        A retry after a lost acknowledgement (the writer died after COMMIT) comes back as already_committed. While
        the PostgreSQL breaker is open the writer refuses at once and says when to come back; we wait that long.
        """
        try:
            encoded = encode(batch, trace_contexts)
        except UnencodableEvent as exc:
            self._on_failure(CommitFailure.REJECTED, str(exc))
            return Refusal(DeadLetterKind.HANDLER_ERROR, f"commit document: {exc.reason}", exc.offset)
        except Exception as exc:  # noqa: BLE001 - no single record named: the bisection finds it
            reason = f"commit document: {type(exc).__name__}: {exc}"
            self._on_failure(CommitFailure.REJECTED, reason)
            return Refusal(DeadLetterKind.HANDLER_ERROR, reason)
        delay, others = 0.05, 0
        while True:
            sending = False
            try:
                self._publish_once(batch)
                sending = True
                outcome = self._send(encoded)
            except Exception as exc:  # noqa: BLE001 - PostgreSQL, broker or writer down: back off and retry as is
                failure, description, hint = self._explain(exc)
                if sending and failure is CommitFailure.OTHER:
                    others += 1
                    if others >= self._max_other_failures:
                        self._on_failure(failure, description)
                        log.warning(
                            "commit of %s failed %d times (%s); splitting it", _range(batch), others, description
                        )
                        return Refusal(DeadLetterKind.STORE_REJECTED, f"{description} (failed {others} times)")
                if hint is not None:  # fail-fast refusal: not a failed attempt, so the backoff does not grow
                    wait = hint + self._rng.uniform(0, min(1.0, hint / 4 + 0.05))
                else:
                    wait = delay + self._rng.uniform(0, delay)
                    delay = min(delay * 2, self._max_delay_s)
                self._on_failure(failure, description)
                log.warning("commit of %s failed (%s); retrying in %.2fs", _range(batch), description, wait)
                self._sleep(wait)
                continue
            if outcome.fenced:
                self._on_failure(CommitFailure.FENCED, f"fenced by epoch {outcome.current_epoch}")
                raise Fenced(f"epoch {batch.epoch} superseded by {outcome.current_epoch}")
            if outcome.rejected is not None:
                self._on_failure(CommitFailure.REJECTED, outcome.rejected)
                log.warning("PostgreSQL refused %s: %s; splitting it", _range(batch), outcome.rejected)
                return Refusal(DeadLetterKind.STORE_REJECTED, outcome.rejected)
            self._on_success()
            return outcome

    def _publish_once(self, batch: CommitBatch) -> None:
        """Dead letters go to the DLQ topic before their commit, each once per batch of records however many
        sub-batches and retries it takes (the topic is at least once: a restarted owner publishes again)."""
        fresh = tuple(d for d in batch.dead if d.offset not in self._published)
        if fresh:
            self._dead_letters.publish(replace(batch, dead=fresh))
            self._published.update(d.offset for d in fresh)


def _range(batch: CommitBatch) -> str:
    return f"{batch.topic}[{batch.partition}] {batch.expected_offset}..{batch.next_offset}"
