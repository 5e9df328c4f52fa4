"""Specification of ReadModelDeltas: a batch's effects summed per key, with keys in sorted (lock) order."""

from __future__ import annotations

from decimal import Decimal

from pipelines.effects import ActionCount, DeviceAggregate, DeviceReading, ReadModelDeltas, UserSpend


def test_empty_batch_has_no_deltas():
    assert ReadModelDeltas.of([]) == ReadModelDeltas()


def test_spend_is_summed_per_user_and_currency_with_count_and_flags():
    deltas = ReadModelDeltas.of(
        [
            UserSpend("bob", "USD", Decimal("10.500000"), False),
            UserSpend("alice", "USD", Decimal("1.000001"), True),
            UserSpend("bob", "USD", Decimal("-0.500000"), True),
            UserSpend("bob", "EUR", Decimal("2"), False),
        ]
    )

    assert deltas.user_spend == {
        ("alice", "USD"): (Decimal("1.000001"), 1, 1),
        ("bob", "EUR"): (Decimal("2"), 1, 0),
        ("bob", "USD"): (Decimal("10.000000"), 2, 1),
    }


def test_spend_sum_is_exact_decimal():
    deltas = ReadModelDeltas.of([UserSpend("u", "USD", Decimal("0.1"), False)] * 3)

    assert deltas.user_spend[("u", "USD")][0] == Decimal("0.3")


def test_device_stats_count_sum_min_max_and_out_of_range():
    deltas = ReadModelDeltas.of(
        [
            DeviceReading("d1", "K", 290.0, False),
            DeviceReading("d1", "K", 400.0, True),
            DeviceReading("d1", "K", 280.0, False),
            DeviceReading("d1", "Pa", 5.0, False),
        ]
    )

    assert deltas.device_stats == {
        ("d1", "K"): DeviceAggregate(count=3, total=970.0, minimum=280.0, maximum=400.0, out_of_range=1),
        ("d1", "Pa"): DeviceAggregate(count=1, total=5.0, minimum=5.0, maximum=5.0, out_of_range=0),
    }


def test_single_negative_reading_is_both_min_and_max():
    deltas = ReadModelDeltas.of([DeviceReading("d", "m", -3.0, False)])

    assert (deltas.device_stats[("d", "m")].minimum, deltas.device_stats[("d", "m")].maximum) == (-3.0, -3.0)


def test_actions_are_counted_per_user_and_action():
    deltas = ReadModelDeltas.of(
        [ActionCount("u2", "click"), ActionCount("u1", "view"), ActionCount("u2", "click"), ActionCount("u1", "click")]
    )

    assert deltas.action_counts == {("u1", "click"): 1, ("u1", "view"): 1, ("u2", "click"): 2}


def test_keys_come_out_sorted_whatever_the_arrival_order():
    deltas = ReadModelDeltas.of(
        [
            UserSpend("zed", "USD", Decimal("1"), False),
            DeviceReading("d9", "K", 1.0, False),
            ActionCount("zed", "b"),
            UserSpend("amy", "USD", Decimal("1"), False),
            DeviceReading("d1", "K", 1.0, False),
            ActionCount("amy", "a"),
            ActionCount("zed", "a"),
        ]
    )

    assert list(deltas.user_spend) == [("amy", "USD"), ("zed", "USD")]
    assert list(deltas.device_stats) == [("d1", "K"), ("d9", "K")]
    assert list(deltas.action_counts) == [("amy", "a"), ("zed", "a"), ("zed", "b")]


def test_effects_can_be_a_one_shot_iterator():
    deltas = ReadModelDeltas.of(iter([ActionCount("u", "a"), ActionCount("u", "a")]))

    assert deltas.action_counts == {("u", "a"): 2}
