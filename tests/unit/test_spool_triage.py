"""Specification of the spool drainer's rule: acknowledged rows leave, rows that can never be published go to the dead
letters and the rows behind them move on, and an outage never dead-letters anything.

Pure: outcomes are plain values.
"""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from cluster.adapters.kafka_producer import Delivered, PublishError, publish_error
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


UNEXPLAINED = publish_error(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), "broker did not acknowledge")


def test_a_row_failing_for_an_unexplained_reason_while_the_broker_takes_others_is_counted_and_blocks_the_rest():
    settlement, blocked = settle(_rows(0, 0, 0), [ACK, UNEXPLAINED, ACK], MAX_ATTEMPTS)
    assert settlement.acked == (0,)  # row 2 must not overtake row 1: it is published again next round
    assert settlement.failed_attempt == (1, str(UNEXPLAINED)) and settlement.dead == ()
    assert blocked is UNEXPLAINED


def test_a_row_that_reaches_the_attempt_bound_is_dead_lettered_and_the_rows_behind_it_move_on():
    settlement, blocked = settle(_rows(0, MAX_ATTEMPTS - 1, 0), [ACK, UNEXPLAINED, ACK], MAX_ATTEMPTS)
    assert settlement.acked == (0, 2)
    ((seq, reason),) = settlement.dead
    assert seq == 1 and f"failed {MAX_ATTEMPTS} times" in reason and "authorization failed" in reason
    assert settlement.failed_attempt is None and blocked is None


# What one partition without a leader (broker restart, slow election) does to its records while the other partitions'
# leaders acknowledge theirs; and what an ambiguous timeout (the record may have been written) looks like.
TRANSIENT_CODES = [
    KafkaError._MSG_TIMED_OUT,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._QUEUE_FULL,
    KafkaError._PURGE_INFLIGHT,
    KafkaError.NOT_ENOUGH_REPLICAS,
]


@pytest.mark.parametrize("code", TRANSIENT_CODES, ids=lambda c: KafkaError(c).name())
def test_a_transient_failure_is_never_counted_even_when_the_broker_acknowledges_other_records(code):
    # given a row one failure short of the bound, and a round in which other rows were acknowledged
    failure = publish_error(KafkaError(code), "broker did not acknowledge")
    # when its own record fails for a reason an outage or an election explains
    settlement, blocked = settle(_rows(0, MAX_ATTEMPTS - 1, 0), [ACK, failure, ACK], MAX_ATTEMPTS)
    # then it stays in the spool, uncounted, and blocks the rows behind it (they must not overtake it)
    assert settlement == Settlement(acked=(0,)) and blocked is failure


def test_a_failure_without_a_librdkafka_code_is_transient():
    # the local queue stayed full, or no delivery report came within the message timeout
    settlement, blocked = settle(_rows(0, MAX_ATTEMPTS - 1), [ACK, TIMEOUT], MAX_ATTEMPTS)
    assert settlement == Settlement(acked=(0,)) and blocked is TIMEOUT


@pytest.mark.parametrize(
    ("code", "transient", "permanent"),
    [
        (KafkaError._MSG_TIMED_OUT, True, False),
        (KafkaError.NOT_LEADER_FOR_PARTITION, True, False),
        (KafkaError.MSG_SIZE_TOO_LARGE, False, True),
        (KafkaError.INVALID_RECORD, False, True),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, False, False),  # unexplained: counted, bounded by attempts
        (KafkaError.INVALID_REQUIRED_ACKS, False, False),
    ],
)
def test_publish_errors_are_classified_transient_permanent_or_unexplained(code, transient, permanent):
    error = publish_error(KafkaError(code), "ctx")
    assert (error.transient, error.permanent) == (transient, permanent)
