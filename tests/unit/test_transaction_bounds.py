"""Specification of transaction amounts at the edge: at most 18 digits (6 decimals), convertible in every currency.

Issue 8, finding 1 (sums): a base-currency amount must always be a finite decimal that one read-model row can hold.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from pipelines.errors import InvalidEvent, PoisonEvent
from pipelines.handlers.transaction import DEFAULT_RATES_TO_USD, TransactionHandler
from pipelines.registry import default_registry

LARGEST = ("999999999999.999999", "-999999999999.999999", "0.000001", "-0.000001")


@pytest.mark.parametrize("base_currency", sorted(DEFAULT_RATES_TO_USD))
def test_the_largest_amount_converts_to_every_base_currency_from_every_currency(transaction_data, base_currency):
    registry = default_registry()
    handler = TransactionHandler(base_currency=base_currency)
    for currency in DEFAULT_RATES_TO_USD:
        for amount in LARGEST:
            event = registry.parse(transaction_data(amount=amount, currency=currency))

            (spend,) = handler(event).effects

            assert spend.amount.is_finite() and spend.amount.as_tuple().exponent == -6
            assert abs(spend.amount) < Decimal("1e18")  # even one numeric(24,6) row holds it


@pytest.mark.parametrize("amount", ["1000000000000", "1e308", "0.0000001", "Infinity", "NaN", 1e300, "-1e13"])
def test_an_amount_beyond_the_schema_bounds_is_refused_at_validation(transaction_data, amount):
    with pytest.raises(InvalidEvent) as caught:
        default_registry().parse(transaction_data(amount=amount))

    assert [e.loc for e in caught.value.errors] == ["amount"]


def test_a_configured_rate_too_large_to_convert_makes_the_event_poison_not_a_crash(transaction_data):
    handler = TransactionHandler(rates_to_usd={"USD": Decimal("1"), "EUR": Decimal("1e20")})
    event = default_registry().parse(transaction_data(amount="999999999999.999999", currency="EUR"))

    with pytest.raises(PoisonEvent, match="does not fit"):
        handler(event)
