"""Which tenant a raw ingest record belongs to (its `tenant` header), and the owner's cached set of known tenants.

Pure: the set is loaded through a callable the owner gives (the `tenants` table) and time comes from an injected
clock. It never lets a flood of unknown names reach the loader faster than `min_refresh_s`, and never answers a
lookup with I/O: the owner refreshes before processing a batch, the engine only looks up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from pipelines.access import DEFAULT_TENANT, valid_tenant
from pipelines.batch import SourceRecord

TENANT_HEADER = "tenant"  # the Kafka record header naming a raw record's tenant (UTF-8); absent: DEFAULT_TENANT


def header_tenant(record: SourceRecord) -> bytes | None:
    """The raw value of the record's `tenant` header (the last one, as Kafka clients read headers), or None."""
    value: bytes | None = None
    for name, raw in record.headers or ():
        if name == TENANT_HEADER:
            value = raw
    return value


def claimed_tenant(record: SourceRecord) -> str:
    """The tenant a raw record claims, as text (not yet checked against the known ones): DEFAULT_TENANT without the
    header; undecodable bytes keep their escapes, so a dead letter's reason can name them."""
    raw = header_tenant(record)
    if raw is None:
        return DEFAULT_TENANT
    return raw.decode("utf-8", "backslashreplace")


def claimed_tenants(records: Sequence[SourceRecord], ingest_topic: str) -> set[str]:
    """The tenants a batch's raw ingest records claim (API records carry theirs in the envelope)."""
    return {claimed_tenant(r) for r in records if r.topic == ingest_topic and r.headers}


class TenantsUnavailable(Exception):
    """The known tenants could not be loaded and a record names one the cache does not hold: retry the batch later,
    never dead-letter it for a failure of ours."""


class KnownTenants:
    """The tenants table, cached: reloaded when older than `max_age_s`, and when a batch names one it does not hold.
    Each kind of reload happens at most once every `min_refresh_s`: a flood of bad headers costs one query per
    interval, and a periodic reload never delays the reload a new tenant's first record asks for.

    A tenant created less than `min_refresh_s` after a reload caused by another unknown name may still be judged
    unknown for that long: its records in that window are dead-lettered (create a tenant before producing for it).
    """

    def __init__(
        self,
        load: Callable[[], Iterable[str]],
        clock: Callable[[], float],
        *,
        max_age_s: float = 5.0,
        min_refresh_s: float = 1.0,
    ) -> None:
        self._load = load
        self._clock = clock
        self._max_age_s = max_age_s
        self._min_refresh_s = min_refresh_s
        self._names: frozenset[str] = frozenset({DEFAULT_TENANT})
        self._loaded_at: float | None = None
        self._miss_reload_at: float | None = None  # when a missing name last caused a reload (tried)
        self._miss_reload_failed = False  # that reload failed: a missing name cannot be judged until one succeeds
        self._age_reload_at: float | None = None  # when the age of the set last caused one (tried)
        self.loads = 0  # how many times the loader ran (status, tests)

    def __contains__(self, name: object) -> bool:
        """A lookup in what was last loaded: no I/O."""
        return name in self._names

    def prepare(self, names: Iterable[str]) -> None:
        """Make the cache fit to judge `names`: reload when one is missing, or when the set is stale (each at most
        once per `min_refresh_s`). Raises TenantsUnavailable when a missing name cannot be judged because the
        tenants were never loaded or their reload failed."""
        names = [n for n in names if n != DEFAULT_TENANT]  # always known: nothing to load for it
        if not names:
            return  # a batch without tenant headers (or of an API topic) never costs a query
        now = self._clock()
        if any(n not in self._names and valid_tenant(n) for n in names):
            if self._miss_reload_at is not None and now - self._miss_reload_at < self._min_refresh_s:
                if self._loaded_at is None or self._miss_reload_failed:
                    # never judged by a set that a failure of ours kept stale: the batch waits (the owner retries)
                    raise TenantsUnavailable("the known tenants could not be reloaded for a name they lack")
                return  # rate-bounded: judged by the set we have
            self._miss_reload_at = now
            self._reload(now, missing=True)
        elif self._loaded_at is None or now - self._loaded_at >= self._max_age_s:
            if self._age_reload_at is not None and now - self._age_reload_at < self._min_refresh_s:
                return  # a database that fails is not asked again at once
            self._age_reload_at = now
            self._reload(now, missing=False)

    def _reload(self, now: float, *, missing: bool) -> None:
        try:
            self.loads += 1
            self._names = frozenset(self._load()) | {DEFAULT_TENANT}
            self._loaded_at = now
            self._miss_reload_failed = False
        except Exception as exc:
            if missing:
                self._miss_reload_failed = True
                raise TenantsUnavailable(f"the known tenants could not be loaded: {type(exc).__name__}: {exc}") from exc
            # Every name of the batch is known: the stale set judges it; a later batch tries again.
