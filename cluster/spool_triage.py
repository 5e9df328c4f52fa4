"""The spool drainer's rule for one round's delivery outcomes: which rows leave the spool as published, which leave it
for the dead letters, and which failure is counted against the row that blocks the rest.

Pure: no I/O, no clock. It never dead-letters a row for a failure an outage, a leader election or an ambiguous
answer explains (a client was told 202 for it, and a timed-out record may have been written), and never lets a row
overtake an older one that may still be published.

The rule (docs/runbook.md, "Spool dead letters"):
1. A row the broker acknowledged leaves the spool.
2. A row refused for good (PublishError.permanent: too large, invalid record) goes to the dead letters at once; the
   rows behind it move on.
3. A row that failed transiently (PublishError.transient: timeouts, no leader, unknown partition, transport, all
   brokers down, full queue, purge; see kafka_producer._TRANSIENT) blocks the rows behind it (per-key order) and is
   never counted, however long it lasts and whatever else the broker acknowledged.
4. A row that failed for an unexplained reason (neither transient nor permanent: e.g. authorisation) blocks the rows
   behind it too. If the broker acknowledged other records in the same round, the failure is counted, and at
   `max_attempts` counted failures the row goes to the dead letters with its last error, and the rows behind it move
   on. If the broker acknowledged nothing, nothing is counted.
"""

from __future__ import annotations

from collections.abc import Sequence

from cluster.adapters.kafka_producer import Delivered, PublishError
from cluster.adapters.spool import Settlement, SpooledRecord


def settle(
    rows: Sequence[SpooledRecord], outcomes: Sequence[Delivered | PublishError], max_attempts: int
) -> tuple[Settlement, PublishError | None]:
    """The round's settlement, and the transient error that stopped it (None when every row was settled)."""
    if len(rows) != len(outcomes):
        raise ValueError(f"{len(rows)} rows but {len(outcomes)} outcomes")
    broker_took_others = any(isinstance(o, Delivered) for o in outcomes)
    acked: list[int] = []
    dead: list[tuple[int, str]] = []
    for row, outcome in zip(rows, outcomes, strict=True):
        if isinstance(outcome, Delivered):
            acked.append(row.seq)
        elif outcome.permanent:
            dead.append((row.seq, f"the broker refuses this record for good: {outcome}"))
        elif outcome.transient or not broker_took_others:
            return Settlement(tuple(acked), tuple(dead)), outcome
        elif row.attempts + 1 >= max_attempts:
            reason = f"failed {row.attempts + 1} times while the broker acknowledged other records; last: {outcome}"
            dead.append((row.seq, reason))
        else:
            return Settlement(tuple(acked), tuple(dead), (row.seq, str(outcome))), outcome
    return Settlement(tuple(acked), tuple(dead)), None
