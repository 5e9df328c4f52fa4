"""API keys: format, checksum, hash, and the key ring's decisions (pipelines/api_keys.py)."""

from __future__ import annotations

import hashlib
import math
import secrets
import string

import pytest

from cluster.adapters.key_store import check_new_key
from pipelines.access import DEFAULT_TENANT, Principal, Scope
from pipelines.api_keys import (
    KEY_ID_CHARS,
    KEY_LENGTH,
    PREFIX,
    SECRET_CHARS,
    ActiveKey,
    Denial,
    Denied,
    KeyRing,
    _checksum,
    credential,
    issue_key,
    key_hash,
    parse_key,
    parse_scopes,
)


def _ring(*scopes: Scope) -> tuple[str, KeyRing, Principal]:
    issued = issue_key()
    principal = Principal(issued.key_id, "shop", DEFAULT_TENANT, frozenset(scopes), 1000)
    return issued.key, KeyRing([ActiveKey(issued.key_hash, principal)]), principal


def test_an_issued_key_has_the_prefix_and_at_least_256_random_bits() -> None:
    issued = issue_key()
    assert issued.key.startswith(PREFIX)
    assert len(issued.key) == KEY_LENGTH
    assert set(issued.key[len(PREFIX) :]) <= set(string.ascii_letters + string.digits + "_")
    assert SECRET_CHARS * math.log2(62) >= 256
    assert len({issue_key().key for _ in range(200)}) == 200


def test_the_stored_hash_is_sha256_of_the_whole_key() -> None:
    issued = issue_key()
    assert issued.key_hash == hashlib.sha256(issued.key.encode()).digest() == key_hash(issued.key)


def test_a_well_formed_key_parses_to_its_id_and_hash() -> None:
    issued = issue_key()
    parsed = parse_key(issued.key)
    assert parsed is not None
    assert (parsed.key_id, parsed.key_hash) == (issued.key_id, issued.key_hash)


def test_every_single_character_typo_is_refused_by_the_checksum() -> None:
    key = issue_key().key
    alphabet = string.ascii_letters + string.digits
    start = len(PREFIX)
    for i in range(start, len(key)):
        if key[i] == "_":
            continue
        for c in secrets.SystemRandom().sample(alphabet, 5):
            typo = key[:i] + c + key[i + 1 :]
            if typo != key:
                assert parse_key(typo) is None, f"typo at {i} accepted"


@pytest.mark.parametrize(
    "text",
    ["", "evp_", "Bearer", "ghp_" + "a" * 60, "x" * KEY_LENGTH, "evp_" + "a" * (KEY_LENGTH - 4), "é" * KEY_LENGTH],
)
def test_random_strings_are_refused_without_a_lookup(text: str) -> None:
    assert parse_key(text) is None


def test_a_parsed_key_and_an_issued_key_never_show_the_secret_in_their_repr() -> None:
    issued = issue_key()
    parsed = parse_key(issued.key)
    secret = issued.key[len(PREFIX) + KEY_ID_CHARS + 1 :]
    assert secret not in repr(issued) and secret not in repr(parsed)
    assert issued.key not in repr(issued) and issued.key not in str(parsed)


def test_the_ring_lets_a_key_through_with_its_scope_only() -> None:
    key, ring, principal = _ring(Scope.INGEST)
    assert ring.authenticate(key, Scope.INGEST) == principal
    assert ring.authenticate(key, Scope.READ) == Denied(Denial.INSUFFICIENT_SCOPE, Scope.READ)


def test_the_ring_refuses_missing_malformed_and_unknown_keys() -> None:
    key, ring, _ = _ring(*Scope)
    other = issue_key().key
    assert ring.authenticate(None, Scope.READ) == Denied(Denial.MISSING)
    assert ring.authenticate(key[:-1], Scope.READ) == Denied(Denial.INVALID)
    assert ring.authenticate(other, Scope.READ) == Denied(Denial.INVALID)


def test_a_key_with_a_known_id_but_another_secret_is_refused() -> None:
    key, ring, principal = _ring(*Scope)
    forged = issue_key()
    # the known public id with another valid-checksum secret: the hash comparison refuses it
    head = f"{PREFIX}{principal.key_id}_{forged.key[len(PREFIX) + KEY_ID_CHARS + 1 : -6]}"
    assert ring.authenticate(head + _checksum(head), Scope.READ) == Denied(Denial.INVALID)
    assert ring.authenticate(key, Scope.READ) == principal


@pytest.mark.parametrize(
    ("authorization", "x_api_key", "expected"),
    [
        ("Bearer abc", None, "abc"),
        ("bearer  abc ", None, "abc"),
        ("Basic abc", None, ""),
        ("abc", None, ""),
        ("Basic abc", "key", "key"),
        (None, " abc", "abc"),
        ("Bearer abc", "other", "abc"),
        (None, None, None),
    ],
)
def test_the_credential_comes_from_authorization_then_x_api_key(
    authorization: str | None, x_api_key: str | None, expected: str | None
) -> None:
    assert credential(authorization, x_api_key) == expected


def test_scopes_parse_from_a_comma_list_and_unknown_ones_are_named() -> None:
    assert parse_scopes("ingest, read") == {Scope.INGEST, Scope.READ}
    with pytest.raises(ValueError, match="unknown scope write"):
        parse_scopes("ingest,write")
    with pytest.raises(ValueError, match="no scope"):
        parse_scopes(" , ")


def test_a_key_name_with_a_trailing_newline_or_a_limit_of_zero_is_refused():
    with pytest.raises(ValueError):
        check_new_key("dev\n", "default", 1000, None)
    with pytest.raises(ValueError):
        check_new_key("dev", "default", 0, None)
    with pytest.raises(ValueError):
        check_new_key("dev", "acme\n", 1000, None)
