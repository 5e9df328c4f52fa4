"""API keys: their format (`evp_<key id>_<secret><checksum>`), their stored hash, and the ring of active keys a replica
decides requests with. Pure: no I/O; randomness comes from `secrets` (or an injected source in tests).

It never puts a key's text in a return value other than the one IssuedKey, nor in an exception or a repr: a parsed key
keeps only its public id and its hash.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from pipelines.access import Principal, Scope

DEFAULT_REQUESTS_PER_MINUTE = 1000  # the issue's limit per key; migration 010's column default
PREFIX = "evp_"  # recognisable by secret scanners (as GitHub's `ghp_`)
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_ID_CHARS = 12  # public, random: ~71 bits, unique by the table's primary key
SECRET_BYTES = 32  # 256 bits from `secrets`
SECRET_CHARS = 43  # 62**43 > 2**256: every 32-byte secret fits, fixed width
CHECKSUM_CHARS = 6  # CRC32 in base62 (62**6 > 2**32)
_KEY = re.compile(
    rf"^{PREFIX}(?P<key_id>[0-9A-Za-z]{{{KEY_ID_CHARS}}})_(?P<body>[0-9A-Za-z]{{{SECRET_CHARS}}})"
    rf"(?P<checksum>[0-9A-Za-z]{{{CHECKSUM_CHARS}}})$"
)
KEY_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")  # cluster/migrations/010_api_keys.sql checks it too
KEY_LENGTH = len(PREFIX) + KEY_ID_CHARS + 1 + SECRET_CHARS + CHECKSUM_CHARS


def _base62(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        chars.append(_ALPHABET[digit])
    if value:
        raise ValueError(f"the value does not fit {width} base62 digits")
    return "".join(reversed(chars))


def _checksum(head: str) -> str:
    return _base62(zlib.crc32(head.encode("ascii")), CHECKSUM_CHARS)


def key_hash(key: str) -> bytes:
    """SHA-256 of the whole key: what the database stores and what a presented key is compared with.

    A plain, unsalted hash is enough here (a password would need a slow KDF): the secret is 256 random bits, so
    nothing can be guessed faster than the hash can be brute-forced, and a stolen table reveals no key. A fast hash
    also keeps authentication at a few µs per request.
    """
    return hashlib.sha256(key.encode("ascii")).digest()


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key just made: the only value that holds its text. Shown once to its owner, then dropped."""

    key_id: str
    key: str = field(repr=False)
    key_hash: bytes = field(repr=False)


def issue_key(token_bytes: Callable[[int], bytes] = secrets.token_bytes) -> IssuedKey:
    """A new key: a random public id, 256 secret bits, and a CRC32 checksum over both."""
    key_id = _base62(int.from_bytes(token_bytes(9), "big") % 62**KEY_ID_CHARS, KEY_ID_CHARS)
    secret = _base62(int.from_bytes(token_bytes(SECRET_BYTES), "big"), SECRET_CHARS)
    head = f"{PREFIX}{key_id}_{secret}"
    key = head + _checksum(head)
    return IssuedKey(key_id, key, key_hash(key))


@dataclass(frozen=True, slots=True)
class PresentedKey:
    """A well-formed key from a request: its public id and its hash; the text itself is not kept."""

    key_id: str
    key_hash: bytes = field(repr=False)


def parse_key(text: str) -> PresentedKey | None:
    """The key's id and hash when `text` has the key's shape and checksum; None otherwise (a typo, a random string,
    another service's token), decided without a lookup. Never raises, never echoes the text."""
    if len(text) != KEY_LENGTH:
        return None
    match = _KEY.fullmatch(text)
    if match is None or not hmac.compare_digest(_checksum(text[:-CHECKSUM_CHARS]), match["checksum"]):
        return None
    return PresentedKey(match["key_id"], key_hash(text))


class Denial(StrEnum):
    """Why a request was not let through (the error code of its answer)."""

    MISSING = "missing_api_key"  # 401, no credentials
    INVALID = "invalid_api_key"  # 401: malformed, unknown, revoked
    INSUFFICIENT_SCOPE = "insufficient_scope"  # 403


@dataclass(frozen=True, slots=True)
class Denied:
    reason: Denial
    scope: Scope | None = None  # the scope a 403 lacked


@dataclass(frozen=True, slots=True)
class ActiveKey:
    """An active key as a replica holds it: its stored hash and the principal it stands for."""

    key_hash: bytes = field(repr=False)
    principal: Principal


class KeyRing:
    """The active keys by id, replaced whole on every reload; a lookup is one dict access and one constant-time
    comparison."""

    def __init__(self, keys: Iterable[ActiveKey] = ()) -> None:
        self._keys: Mapping[str, ActiveKey] = {k.principal.key_id: k for k in keys}

    def __len__(self) -> int:
        return len(self._keys)

    def authenticate(self, credential: str | None, scope: Scope) -> Principal | Denied:
        """The principal of `credential` when it is an active key holding `scope`, else why not."""
        if credential is None:
            return Denied(Denial.MISSING)
        presented = parse_key(credential)
        active = self._keys.get(presented.key_id) if presented is not None else None
        if presented is None or active is None or not hmac.compare_digest(active.key_hash, presented.key_hash):
            return Denied(Denial.INVALID)
        if not active.principal.allows(scope):
            return Denied(Denial.INSUFFICIENT_SCOPE, scope)
        return active.principal


def credential(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a request presents: `Authorization: Bearer <key>` (scheme case-insensitive), else `X-API-Key`.
    An Authorization of another scheme (Basic, or a bare key) with no X-API-Key is a credential given that is never
    valid (""): refused as invalid, not as missing."""
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            return token.strip()
    if x_api_key is not None:
        return x_api_key.strip()
    return "" if authorization is not None else None


def parse_scopes(text: str) -> frozenset[Scope]:
    """`ingest,read` -> the scopes; raises ValueError naming the allowed ones for an unknown or empty list."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    allowed = ", ".join(s.value for s in Scope)
    if not names:
        raise ValueError(f"no scope given; choose from {allowed}")
    unknown = [n for n in names if n not in {s.value for s in Scope}]
    if unknown:
        raise ValueError(f"unknown scope {', '.join(unknown)}; choose from {allowed}")
    return frozenset(Scope(n) for n in names)
