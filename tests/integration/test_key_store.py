"""The key store and the development key on real PostgreSQL (a fresh database of the test's own; no Ray).

The dev key's file is created with mode 0600, reused while the database holds its key, and replaced when the database
no longer does (revoked, or a wiped database).
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.adapters.key_store import KeyNameTaken, KeyStore, UnknownKeyName
from cluster.dev_key import DEV_KEY_NAME, dev_key, key_file
from cluster.local import EmbeddedPostgres
from pipelines.access import DEFAULT_TENANT, Scope
from tests.databases import fresh_database, query

DEV_LIMIT = 1000  # the development key's requests per minute (the rate_limit_requests_per_minute default)

pytestmark = pytest.mark.integration


@pytest.fixture
def db(embedded_pg: EmbeddedPostgres) -> Iterator[str]:
    with fresh_database(embedded_pg, "keys") as url:
        yield url


@pytest.fixture
def store(db: str) -> Iterator[KeyStore]:
    store = KeyStore(db)
    yield store
    store.close()


def test_a_key_for_a_new_tenant_creates_the_tenant_and_stores_only_the_hash(store: KeyStore, db: str) -> None:
    issued, record = store.create("shop-eu", "shop-eu", frozenset({Scope.INGEST, Scope.READ}), 50, 500)
    assert (record.tenant, record.scopes, record.requests_per_minute, record.events_per_minute) == (
        "shop-eu",
        {Scope.INGEST, Scope.READ},
        50,
        500,
    )
    assert query(db, "SELECT name FROM tenants WHERE name = 'shop-eu'") == [("shop-eu",)]
    rows = query(db, "SELECT key_id, key_hash FROM api_keys")
    assert rows == [(issued.key_id, issued.key_hash)]
    assert issued.key.encode() not in repr(query(db, "SELECT * FROM api_keys")).encode()
    [active] = store.active()
    assert active.principal == record.principal() and active.key_hash == issued.key_hash


def test_names_are_unique_and_bad_names_or_tenants_are_refused(store: KeyStore) -> None:
    store.create("a", DEFAULT_TENANT, frozenset({Scope.READ}))
    with pytest.raises(KeyNameTaken):
        store.create("a", DEFAULT_TENANT, frozenset({Scope.READ}))
    with pytest.raises(ValueError, match="tenant"):
        store.create("b", "Not A Tenant", frozenset({Scope.READ}))
    with pytest.raises(ValueError, match="key name"):
        store.create("-b", DEFAULT_TENANT, frozenset({Scope.READ}))
    assert [r.name for r in store.list()] == ["a"]


def test_a_revoked_key_is_no_longer_active_and_keeps_its_first_revocation_time(store: KeyStore) -> None:
    issued, _ = store.create("gone", DEFAULT_TENANT, frozenset({Scope.READ}))
    assert store.is_active(issued.key)
    first = store.revoke("gone").revoked_at
    assert store.revoke("gone").revoked_at == first
    assert not store.is_active(issued.key) and store.active() == []
    with pytest.raises(UnknownKeyName):
        store.revoke("never")


def test_use_is_recorded_in_batches(store: KeyStore) -> None:
    issued, record = store.create("used", DEFAULT_TENANT, frozenset({Scope.READ}))
    assert record.last_used_at is None
    store.touch([issued.key_id, issued.key_id])
    [listed] = store.list()
    assert listed.last_used_at is not None


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_dev_key_is_made_once_with_mode_0600_and_reused(store: KeyStore, tmp_path: Path) -> None:
    key, made = dev_key(store, tmp_path, DEV_LIMIT)
    path = key_file(tmp_path)
    assert made and path.read_text().strip() == key and _mode(path) == 0o600
    assert dev_key(store, tmp_path, DEV_LIMIT) == (key, False)
    [record] = store.list()
    assert (record.name, record.tenant, record.scopes) == (DEV_KEY_NAME, DEFAULT_TENANT, frozenset(Scope))
    assert not list(tmp_path.glob(".api_key*"))  # no temporary file left


def test_a_dev_key_the_database_no_longer_holds_is_replaced(store: KeyStore, db: str, tmp_path: Path) -> None:
    first, _ = dev_key(store, tmp_path, DEV_LIMIT)
    store.revoke(DEV_KEY_NAME)
    second, made = dev_key(store, tmp_path, DEV_LIMIT)
    assert made and second != first and store.is_active(second) and not store.is_active(first)
    query(db, "DELETE FROM api_keys")  # a wiped database
    third, made = dev_key(store, tmp_path, DEV_LIMIT)
    assert made and third not in (first, second) and key_file(tmp_path).read_text().strip() == third
    assert _mode(key_file(tmp_path)) == 0o600


def test_a_dev_key_file_with_loose_rights_is_tightened(store: KeyStore, tmp_path: Path) -> None:
    key, _ = dev_key(store, tmp_path, DEV_LIMIT)
    key_file(tmp_path).chmod(0o644)
    assert dev_key(store, tmp_path, DEV_LIMIT) == (key, False)
    assert _mode(key_file(tmp_path)) == 0o600
