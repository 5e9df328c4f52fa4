"""HTTP client of the merchant enrichment service: short timeout, TTL cache, circuit breaker, one call per batch.

It implements pipelines.enrichment.BatchMerchantLookup. Every failure becomes EnrichmentUnavailable (the handler's
fallback); it must never cache a failure, retry, or let a slow service hold a batch for more than one timeout.

Service contract:
- `GET /merchants/{id}` → 200 `{"id", "name", "category", "country"}`, or 404 `{"error": "unknown_merchant"}`;
- `POST /merchants/lookup` `{"ids": [...]}` → 200 `{"merchants": [{...}, ...], "unknown": [ids]}`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from functools import partial
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from cluster.observability.breakers import breaker
from cluster.settings import Settings
from pipelines.enrichment import EnrichmentUnavailable, Merchant
from pipelines.policies.breaker import CircuitBreaker, CircuitOpen

log = logging.getLogger(__name__)
T = TypeVar("T")

BULK_MAX_IDS = 500  # ids per bulk request; a batch of more merchants (consume_batch_max is 1000) takes several


class BadAnswer(Exception):
    """The service answered, but not as the contract says (5xx, unexpected status, malformed body)."""


class TtlCache:
    """Answers (a merchant, or None for "unknown") kept for `ttl_s`; the oldest entry goes when it is full."""

    def __init__(self, ttl_s: float, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, Merchant | None]] = {}

    def get(self, key: str) -> tuple[bool, Merchant | None]:
        """(hit, value): a miss and a cached "unknown" differ."""
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        expires_at, value = entry
        if self._clock() >= expires_at:
            del self._entries[key]
            return False, None
        return True, value

    def put(self, key: str, value: Merchant | None) -> None:
        if self.ttl_s <= 0:
            return
        self._entries.pop(key, None)
        if len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]  # dicts keep insertion order: this is the oldest
        self._entries[key] = (self._clock() + self.ttl_s, value)

    def __len__(self) -> int:
        return len(self._entries)


def _merchant(obj: Any) -> Merchant:
    if not isinstance(obj, dict):
        raise BadAnswer(f"merchant is not an object: {obj!r:.200}")
    try:
        fields = {name: obj[name] for name in ("id", "name", "category", "country")}
    except KeyError as missing:
        raise BadAnswer(f"merchant without {missing.args[0]!r}") from None
    if not all(isinstance(v, str) for v in fields.values()):
        raise BadAnswer(f"merchant fields must be strings: {obj!r:.200}")
    return Merchant(**fields)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise BadAnswer(f"HTTP {response.status_code} with a body that is not JSON: {exc}") from None


class EnrichmentClient:
    """Used by one partition owner's thread: `prefetch` once per batch, then `get` per transaction."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float,
        cache: TtlCache,
        circuit: CircuitBreaker,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s, transport=transport)
        self._cache = cache
        self._breaker = circuit
        # What the last prefetch learnt, kept until the next one (also when the cache TTL is 0), and the ids it could
        # not fetch: those are unavailable for the rest of the batch instead of each waiting on the service again.
        self._answers: dict[str, Merchant | None] = {}
        self._failed: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> EnrichmentClient | None:
        """The configured client, or None when `enrichment_url` is empty (no lookups at all)."""
        if not settings.enrichment_url:
            return None
        return cls(
            settings.enrichment_url,
            settings.enrichment_timeout_s,
            TtlCache(settings.enrichment_cache_ttl_s),
            breaker("enrichment", settings),
        )

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    def close(self) -> None:
        self._http.close()

    # -- MerchantLookup -------------------------------------------------------------------------
    def get(self, merchant_id: str) -> Merchant | None:
        if merchant_id in self._answers:
            return self._answers[merchant_id]
        hit, value = self._cache.get(merchant_id)
        if hit:
            return value
        if merchant_id in self._failed:
            raise EnrichmentUnavailable(f"merchant {merchant_id!r}: the batch lookup failed moments ago")
        value = self._guarded(lambda: self._fetch_one(merchant_id))
        self._cache.put(merchant_id, value)
        return value

    def prefetch(self, merchant_ids: Collection[str]) -> None:
        answers: dict[str, Merchant | None] = {}
        wanted: list[str] = []
        for merchant_id in sorted(set(merchant_ids)):
            hit, value = self._cache.get(merchant_id)
            if hit:
                answers[merchant_id] = value
            else:
                wanted.append(merchant_id)
        failed: set[str] = set()
        for start in range(0, len(wanted), BULK_MAX_IDS):
            chunk = wanted[start : start + BULK_MAX_IDS]
            if failed:  # one failure is enough for this batch: do not wait on the service again
                failed.update(chunk)
                continue
            try:
                found, unknown = self._guarded(partial(self._fetch_many, chunk))
            except EnrichmentUnavailable as exc:
                log.info("enrichment of %d merchants unavailable: %s", len(chunk), exc)
                failed.update(chunk)
                continue
            for merchant in found:
                answers[merchant.id] = merchant
                self._cache.put(merchant.id, merchant)
            for merchant_id in unknown:
                answers[merchant_id] = None
                self._cache.put(merchant_id, None)
            failed.update(set(chunk) - set(answers))  # ids the service left out: not cached, unavailable
        self._answers, self._failed = answers, frozenset(failed)

    # -- internals ------------------------------------------------------------------------------
    def _guarded(self, call: Callable[[], T]) -> T:
        """One request through the breaker: fail fast while it is open; transport errors and bad answers count."""
        try:
            self._breaker.check()
        except CircuitOpen as exc:
            raise EnrichmentUnavailable(str(exc)) from None
        try:
            result = call()
        except (httpx.HTTPError, BadAnswer) as exc:
            self._breaker.record_failure(f"{type(exc).__name__}: {exc}")
            raise EnrichmentUnavailable(f"enrichment service: {type(exc).__name__}: {exc}") from exc
        self._breaker.record_success()
        return result

    def _fetch_one(self, merchant_id: str) -> Merchant | None:
        response = self._http.get(f"/merchants/{quote(merchant_id, safe='')}")
        if response.status_code == 404:
            body = _json(response)
            # A bare 404 (wrong base URL, proxy) must not be cached as "unknown merchant".
            if not (isinstance(body, dict) and body.get("error") == "unknown_merchant"):
                raise BadAnswer(f"HTTP 404 without an unknown_merchant body: {body!r:.200}")
            return None
        if response.status_code != 200:
            raise BadAnswer(f"HTTP {response.status_code}")
        return _merchant(_json(response))

    def _fetch_many(self, merchant_ids: list[str]) -> tuple[list[Merchant], list[str]]:
        response = self._http.post("/merchants/lookup", json={"ids": merchant_ids})
        if response.status_code != 200:
            raise BadAnswer(f"HTTP {response.status_code}")
        body = _json(response)
        if not isinstance(body, dict) or not isinstance(body.get("merchants"), list):
            raise BadAnswer(f"lookup answer without a merchants list: {body!r:.200}")
        unknown = body.get("unknown", [])
        if not isinstance(unknown, list) or not all(isinstance(m, str) for m in unknown):
            raise BadAnswer(f"lookup answer with a malformed unknown list: {unknown!r:.200}")
        asked = set(merchant_ids)
        found = [m for m in map(_merchant, body["merchants"]) if m.id in asked]
        return found, [m for m in unknown if m in asked]
