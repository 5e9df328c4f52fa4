"""Specification of the transaction handler: conversion to the base currency, the risk rule, merchant enrichment.

Enrichment is specified with an in-memory lookup (this is a pure unit); the HTTP client has its own tests.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from pipelines.effects import UserSpend
from pipelines.enrichment import EnrichmentUnavailable, Merchant
from pipelines.envelope import Envelope
from pipelines.errors import InvalidEvent, PoisonEvent
from pipelines.handlers.transaction import TransactionHandler
from pipelines.registry import default_registry
from pipelines.schemas import TransactionV1


@pytest.fixture
def transaction(transaction_data):
    registry = default_registry()

    def build(**overrides) -> TransactionV1:
        event = registry.parse(transaction_data(**overrides))
        assert isinstance(event, TransactionV1)
        return event

    return build


def test_euro_amount_is_converted_to_usd_with_the_rate_table(transaction):
    outcome = TransactionHandler()(transaction(amount="12.50", currency="EUR"))

    assert outcome.result == {
        "base_amount": "13.500000",
        "base_currency": "USD",
        "rate": "1.080000",
        "risk": {"flagged": False, "reasons": []},
        "enrichment": "not_requested",
    }
    assert outcome.effects == (UserSpend("user-1", "USD", Decimal("13.500000"), False),)


def test_base_amount_has_six_decimal_places(transaction):
    outcome = TransactionHandler()(transaction(amount="1000", currency="JPY"))

    assert outcome.result["base_amount"] == "6.700000"


def test_base_amount_is_rounded_half_to_even():
    # 0.0000025 and 0.0000035 sit exactly halfway between two micro-units.
    handler = TransactionHandler(rates_to_usd={"USD": Decimal("1"), "XTS": Decimal("0.5")})

    def base(amount: str) -> str:
        event = TransactionV1(type="transaction", user_id="u", amount=Decimal(amount), currency="XTS", timestamp=0)
        return handler(event).result["base_amount"]

    assert base("0.000005") == "0.000002"
    assert base("0.000007") == "0.000004"
    assert base("0.000003") == "0.000002"


@pytest.mark.parametrize(("amount", "currency"), [("10000", "USD"), ("9259.26", "EUR"), ("25000", "USD")])
def test_amount_at_or_above_threshold_in_base_currency_is_flagged(transaction, amount, currency):
    outcome = TransactionHandler(risk_threshold=Decimal("10000"))(transaction(amount=amount, currency=currency))

    assert outcome.result["risk"] == {"flagged": True, "reasons": ["amount >= 10000 USD"]}
    assert outcome.effects[0].flagged is True


@pytest.mark.parametrize(("amount", "currency"), [("9999.999999", "USD"), ("9259.25", "EUR")])
def test_amount_just_below_threshold_is_not_flagged(transaction, amount, currency):
    outcome = TransactionHandler(risk_threshold=Decimal("10000"))(transaction(amount=amount, currency=currency))

    assert outcome.result["risk"] == {"flagged": False, "reasons": []}


def test_negative_amount_is_flagged_as_refund(transaction):
    outcome = TransactionHandler()(transaction(amount="-5", currency="USD"))

    assert outcome.result["base_amount"] == "-5.000000"
    assert outcome.result["risk"] == {"flagged": True, "reasons": ["negative amount (refund or reversal)"]}
    assert outcome.effects == (UserSpend("user-1", "USD", Decimal("-5.000000"), True),)


def test_large_negative_amount_gives_both_reasons(transaction):
    outcome = TransactionHandler()(transaction(amount="-20000", currency="USD"))

    assert outcome.result["risk"]["reasons"] == ["amount >= 10000 USD", "negative amount (refund or reversal)"]


def test_currency_without_a_rate_is_poison(transaction):
    with pytest.raises(PoisonEvent, match="'XYZ'"):
        TransactionHandler()(transaction(currency="XYZ"))


def test_base_currency_without_a_rate_is_poison(transaction):
    with pytest.raises(PoisonEvent, match="'SEK'"):
        TransactionHandler(base_currency="SEK")(transaction(currency="USD"))


def test_custom_base_currency_converts_through_usd(transaction):
    handler = TransactionHandler(base_currency="EUR", risk_threshold=Decimal("100"))

    outcome = handler(transaction(amount="10.80", currency="USD"))

    assert outcome.result["base_amount"] == "10.000000"
    assert outcome.result["base_currency"] == "EUR"
    assert outcome.result["rate"] == "0.925926"
    assert outcome.effects == (UserSpend("user-1", "EUR", Decimal("10.000000"), False),)


def test_custom_base_currency_threshold_is_in_that_currency(transaction):
    handler = TransactionHandler(base_currency="EUR", risk_threshold=Decimal("100"))

    assert handler(transaction(amount="108", currency="USD")).result["risk"]["flagged"] is True
    assert handler(transaction(amount="107.99", currency="USD")).result["risk"]["flagged"] is False


def test_default_registry_passes_its_threshold_and_base_currency_to_the_handler(transaction):
    handler = default_registry(base_currency="GBP", risk_threshold=50.0).spec("transaction").handler

    outcome = handler(transaction(amount="50", currency="GBP"))

    assert outcome.result["base_currency"] == "GBP"
    assert outcome.result["risk"]["flagged"] is True


# --- merchant enrichment ------------------------------------------------------------------------------------------

COFFEE = Merchant("m-coffee", "Corner Coffee", "food_and_drink", "US")


class MerchantBook:
    """An in-memory MerchantLookup: answers from `known`, or raises EnrichmentUnavailable while `down`."""

    def __init__(self, *known: Merchant, down: bool = False) -> None:
        self.known = {m.id: m for m in known}
        self.down = down
        self.asked: list[str] = []

    def get(self, merchant_id: str) -> Merchant | None:
        self.asked.append(merchant_id)
        if self.down:
            raise EnrichmentUnavailable("circuit for enrichment is open")
        return self.known.get(merchant_id)


def test_known_merchant_is_added_to_the_result(transaction):
    book = MerchantBook(COFFEE)

    outcome = TransactionHandler(merchants=book)(transaction(merchant_id="m-coffee"))

    assert outcome.result["enrichment"] == "ok"
    assert outcome.result["merchant"] == {
        "id": "m-coffee",
        "name": "Corner Coffee",
        "category": "food_and_drink",
        "country": "US",
    }
    assert book.asked == ["m-coffee"]


def test_merchant_the_service_does_not_know_is_processed_and_marked_unknown(transaction):
    outcome = TransactionHandler(merchants=MerchantBook(COFFEE))(transaction(merchant_id="m-nobody"))

    assert outcome.result["enrichment"] == "unknown_merchant"
    assert "merchant" not in outcome.result
    assert outcome.result["base_amount"] == "13.500000"


def test_unavailable_service_is_the_fallback_processed_with_the_rate_table_and_marked_unavailable(transaction):
    enriched = TransactionHandler(merchants=MerchantBook(COFFEE))(transaction(merchant_id="m-coffee"))

    outcome = TransactionHandler(merchants=MerchantBook(COFFEE, down=True))(transaction(merchant_id="m-coffee"))

    assert outcome.result["enrichment"] == "unavailable"
    assert "merchant" not in outcome.result
    # Everything but the enrichment is what it would have been: same conversion, same risk, same effect.
    assert {k: v for k, v in outcome.result.items() if k not in ("enrichment", "merchant")} == {
        k: v for k, v in enriched.result.items() if k not in ("enrichment", "merchant")
    }
    assert outcome.effects == enriched.effects == (UserSpend("user-1", "USD", Decimal("13.500000"), False),)


def test_transaction_without_merchant_is_not_looked_up(transaction):
    book = MerchantBook(COFFEE)

    outcome = TransactionHandler(merchants=book)(transaction())

    assert outcome.result["enrichment"] == "not_requested"
    assert book.asked == []


def test_without_an_enrichment_service_nothing_is_looked_up(transaction):
    outcome = TransactionHandler()(transaction(merchant_id="m-coffee"))

    assert outcome.result["enrichment"] == "not_configured"
    assert "merchant" not in outcome.result


def test_currency_without_a_rate_is_poison_before_any_lookup(transaction):
    book = MerchantBook(COFFEE)

    with pytest.raises(PoisonEvent):
        TransactionHandler(merchants=book)(transaction(currency="XYZ", merchant_id="m-coffee"))
    assert book.asked == []


def test_default_registry_gives_the_transaction_handler_its_merchant_lookup(transaction):
    handler = default_registry(merchants=MerchantBook(COFFEE)).spec("transaction").handler

    assert handler(transaction(merchant_id="m-coffee")).result["enrichment"] == "ok"


# --- merchant_id in schema version 1 ------------------------------------------------------------------------------


def test_merchant_id_is_optional_and_stripped(transaction):
    assert transaction().merchant_id is None
    assert transaction(merchant_id="  m-coffee ").merchant_id == "m-coffee"


@pytest.mark.parametrize("bad", ["", "   ", "m" * 129, 42])
def test_blank_overlong_or_non_text_merchant_id_is_refused(transaction_data, bad):
    with pytest.raises(InvalidEvent) as caught:
        default_registry().parse(transaction_data(merchant_id=bad))

    assert [e.loc for e in caught.value.errors] == ["merchant_id"]


def test_event_without_merchant_id_keeps_its_version_1_payload(transaction):
    # Records of events without a merchant are what they were before the field existed, byte for byte.
    event = transaction(id="tx-1")

    assert "merchant_id" not in event.model_dump(mode="json")
    assert b"merchant_id" not in Envelope.encode_event(event, 1.0)
    assert transaction(id="tx-1", merchant_id="m-coffee").model_dump(mode="json")["merchant_id"] == "m-coffee"
