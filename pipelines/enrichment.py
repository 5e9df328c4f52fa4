"""Merchant enrichment of transactions: the lookup port the handler depends on and the outcome it records.

Pure: the network, the cache and the circuit breaker live in an adapter behind `MerchantLookup`; nothing here does
I/O. An unavailable service never fails an event: it is processed with `enrichment: unavailable` (ADR 0007).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import orjson

from pipelines.batch import SourceRecord

_MAX_ID_LENGTH = 128  # the schema's EntityId bound


@dataclass(frozen=True)
class Merchant:
    """Reference data about the merchant of a transaction, as the enrichment service describes it."""

    id: str
    name: str
    category: str
    country: str

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "category": self.category, "country": self.country}


class EnrichmentUnavailable(Exception):
    """The reference service gave no answer (down, too slow, breaker open): apply the fallback, do not retry."""


class MerchantLookup(Protocol):
    def get(self, merchant_id: str) -> Merchant | None:
        """The merchant, or None when the service says it does not know the id; raises EnrichmentUnavailable."""
        ...


class BatchMerchantLookup(MerchantLookup, Protocol):
    def prefetch(self, merchant_ids: Collection[str]) -> None:
        """Fetch what is not cached in one go before a batch is processed, so `get` answers from memory.

        Never raises: ids it could not fetch make `get` raise EnrichmentUnavailable at once until the next prefetch.
        """
        ...


class EnrichmentStatus(StrEnum):
    OK = "ok"
    UNKNOWN_MERCHANT = "unknown_merchant"
    UNAVAILABLE = "unavailable"
    NOT_REQUESTED = "not_requested"  # the event carries no merchant_id
    NOT_CONFIGURED = "not_configured"  # no enrichment service is configured (enrichment_url empty)


@dataclass(frozen=True)
class Enrichment:
    status: EnrichmentStatus
    merchant: Merchant | None = None

    def as_result(self) -> dict[str, object]:
        """The fields this adds to a transaction's result."""
        out: dict[str, object] = {"enrichment": self.status.value}
        if self.merchant is not None:
            out["merchant"] = self.merchant.as_dict()
        return out


def enrich(lookup: MerchantLookup | None, merchant_id: str | None) -> Enrichment:
    """Look the merchant up; an unreachable service yields UNAVAILABLE (the documented fallback), never an error."""
    if merchant_id is None:
        return Enrichment(EnrichmentStatus.NOT_REQUESTED)
    if lookup is None:
        return Enrichment(EnrichmentStatus.NOT_CONFIGURED)
    try:
        merchant = lookup.get(merchant_id)
    except EnrichmentUnavailable:
        return Enrichment(EnrichmentStatus.UNAVAILABLE)
    if merchant is None:
        return Enrichment(EnrichmentStatus.UNKNOWN_MERCHANT)
    return Enrichment(EnrichmentStatus.OK, merchant)


def merchant_ids(records: Iterable[SourceRecord], ingest_topic: str) -> set[str]:
    """Distinct merchant ids of the transactions among raw log records (API envelopes, or bare events on the
    ingest topic), so a lookup can fetch them once per batch. Records it cannot read are skipped: the processor
    dead-letters them later, this is only a hint."""
    found: set[str] = set()
    for record in records:
        if record.value is None or b'"merchant_id"' not in record.value:
            continue  # cheap filter: most records carry no merchant and are never decoded here
        try:
            obj = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            continue
        event = obj if record.topic == ingest_topic else (obj.get("payload") if isinstance(obj, dict) else None)
        if not isinstance(event, dict) or event.get("type") != "transaction":
            continue
        value = event.get("merchant_id")
        if isinstance(value, str):
            value = value.strip()  # as the schema does (str_strip_whitespace)
            if 0 < len(value) <= _MAX_ID_LENGTH:
                found.add(value)
    return found
