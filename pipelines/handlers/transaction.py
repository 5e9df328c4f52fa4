"""Transaction handler: converts the amount to the base currency, applies a simple risk rule, adds the merchant.

Reference data (rates, threshold, the merchant lookup) is injected; the handler never fetches anything itself, and an
unavailable merchant service only marks the result (`enrichment: unavailable`), it never fails the event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from pipelines.effects import UserSpend
from pipelines.enrichment import MerchantLookup, enrich
from pipelines.errors import PoisonEvent
from pipelines.handlers.base import HandlerResult
from pipelines.schemas import TransactionV1

# Units of the base currency (USD) per one unit of the currency. Reference data, replaceable via config.
DEFAULT_RATES_TO_USD: Mapping[str, Decimal] = {
    "USD": Decimal("1"),
    "EUR": Decimal("1.08"),
    "GBP": Decimal("1.27"),
    "JPY": Decimal("0.0067"),
    "CHF": Decimal("1.13"),
    "CAD": Decimal("0.73"),
    "AUD": Decimal("0.66"),
}
_QUANTUM = Decimal("0.000001")


@dataclass(frozen=True)
class TransactionHandler:
    base_currency: str = "USD"
    risk_threshold: Decimal = Decimal("10000")
    rates_to_usd: Mapping[str, Decimal] = field(default_factory=lambda: dict(DEFAULT_RATES_TO_USD))
    merchants: MerchantLookup | None = None  # None: no enrichment service configured

    def _rate(self, currency: str) -> Decimal:
        try:
            to_usd = self.rates_to_usd[currency]
            base_to_usd = self.rates_to_usd[self.base_currency]
        except KeyError as missing:
            raise PoisonEvent(f"no exchange rate for currency {missing.args[0]!r}") from None
        return to_usd / base_to_usd

    def __call__(self, event: TransactionV1) -> HandlerResult:
        rate = self._rate(event.currency)
        try:
            base_amount = (event.amount * rate).quantize(_QUANTUM, rounding=ROUND_HALF_EVEN)
        except InvalidOperation:  # only with configured rates so extreme that the result has over 22 integer digits
            raise PoisonEvent(f"{event.amount} {event.currency} does not fit in {self.base_currency}") from None
        reasons = []
        if abs(base_amount) >= self.risk_threshold:
            reasons.append(f"amount >= {self.risk_threshold} {self.base_currency}")
        if event.amount < 0:
            reasons.append("negative amount (refund or reversal)")
        flagged = bool(reasons)
        result = {
            "base_amount": str(base_amount),
            "base_currency": self.base_currency,
            "rate": str(rate.quantize(_QUANTUM)),
            "risk": {"flagged": flagged, "reasons": reasons},
            **enrich(self.merchants, event.merchant_id).as_result(),
        }
        return HandlerResult(result, (UserSpend(event.user_id, self.base_currency, base_amount, flagged),))
