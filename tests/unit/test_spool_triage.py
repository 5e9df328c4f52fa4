"""Specification of the spool drainer's rule: acknowledged rows leave, rows that can never be published go to the dead
letters and the rows behind them move on, and an outage never dead-letters anything.

Pure: outcomes are plain values.
"""

from __future__ import annotations

from cluster.adapters.kafka_producer import Delivered, PublishError
from cluster.adapters.spool import Settlement, SpooledRecord
from cluster.spool_triage import settle

ACK = Delivered("events.sensor", 0, 1)
TIMEOUT = PublishError("broker did not acknowledge: Local: Message timed out")
TOO_LARGE = PublishError("the producer refused the record: Broker: Message size too large", permanent=True)
MAX_ATTEMPTS = 3


def _rows(*attempts: int) -> list[SpooledRecord]:
    return [SpooledRecord(seq, f"ev-{seq}", ("events.sensor", None, b"v", None), a) for seq, a in enumerate(attempts)]


def test_a_fully_acknowledged_round_deletes_every_row():
    settlement, blocked = settle(_rows(0, 0), [ACK, ACK], MAX_ATTEMPTS)
    assert settlement == Settlement(acked=(0, 1)) and blocked is None


def test_a_permanently_refused_row_is_dead_lettered_at_once_and_the_rows_behind_it_move_on():
    settlement, blocked = settle(_rows(0, 0, 0), [ACK, TOO_LARGE, ACK], MAX_ATTEMPTS)
    assert settlement.acked == (0, 2)
    assert [seq for seq, _ in settlement.dead] == [1] and "Message size too large" in settlement.dead[0][1]
    assert settlement.failed_attempt is None and blocked is None


def test_a_permanently_refused_row_is_dead_lettered_even_when_the_broker_is_down():
    settlement, blocked = settle(_rows(0, 0), [TOO_LARGE, TIMEOUT], MAX_ATTEMPTS)
    assert [seq for seq, _ in settlement.dead] == [0]
    assert settlement.failed_attempt is None and blocked is TIMEOUT  # the outage is not counted against row 1


def test_an_outage_blocks_the_spool_without_counting_anything():
    settlement, blocked = settle(_rows(MAX_ATTEMPTS - 1, 0), [TIMEOUT, TIMEOUT], MAX_ATTEMPTS)
    assert settlement == Settlement() and blocked is TIMEOUT


def test_a_row_failing_while_the_broker_takes_others_is_counted_and_blocks_the_rows_behind_it():
    settlement, blocked = settle(_rows(0, 0, 0), [ACK, TIMEOUT, ACK], MAX_ATTEMPTS)
    assert settlement.acked == (0,)  # row 2 must not overtake row 1: it is published again next round
    assert settlement.failed_attempt == (1, str(TIMEOUT)) and settlement.dead == ()
    assert blocked is TIMEOUT


def test_a_row_that_reaches_the_attempt_bound_is_dead_lettered_and_the_rows_behind_it_move_on():
    settlement, blocked = settle(_rows(0, MAX_ATTEMPTS - 1, 0), [ACK, TIMEOUT, ACK], MAX_ATTEMPTS)
    assert settlement.acked == (0, 2)
    ((seq, reason),) = settlement.dead
    assert seq == 1 and f"failed {MAX_ATTEMPTS} times" in reason and "timed out" in reason
    assert settlement.failed_attempt is None and blocked is None
