"""The replica's authentication gate (serve_app/auth.py) with an in-memory key store: answers from the headers, a
revoke picked up at the next reload, last-used times written in batches, the last keys kept when a reload fails."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from pipelines.access import DEFAULT_TENANT, Principal, Scope
from pipelines.api_keys import ActiveKey, IssuedKey, issue_key
from serve_app.auth import UNAUTHENTICATED, Authenticator
from serve_app.incidents import Incidents
from serve_app.replies import Reply


class MemoryKeys:
    """The part of KeyStore the gate uses, in memory."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[IssuedKey, Principal]] = {}
        self.touched: list[set[str]] = []
        self.down = False

    def add(self, *scopes: Scope) -> str:
        issued = issue_key()
        self.keys[issued.key_id] = (
            issued,
            Principal(issued.key_id, issued.key_id, DEFAULT_TENANT, frozenset(scopes), 9),
        )
        return issued.key

    def active(self) -> list[ActiveKey]:
        if self.down:
            raise ConnectionError("database down")
        return [ActiveKey(i.key_hash, p) for i, p in self.keys.values()]

    def touch(self, key_ids: Iterable[str]) -> None:
        if self.down:
            raise ConnectionError("database down")
        self.touched.append(set(key_ids))

    def close(self) -> None:
        pass


def _gate(store: MemoryKeys) -> Authenticator:
    gate = Authenticator(store, 60.0, Incidents(logging.getLogger("test")))  # type: ignore[arg-type]
    gate.load()
    return gate


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_answers_come_from_the_headers_with_the_house_body_and_challenge() -> None:
    async def scenario() -> None:
        store = MemoryKeys()
        reader = store.add(Scope.READ)
        gate = _gate(store)
        ok = gate.decide(_bearer(reader), Scope.READ)
        assert isinstance(ok, Principal) and ok.allows(Scope.READ)
        missing = gate.decide({}, Scope.READ)
        assert isinstance(missing, Reply) and missing.status == 401
        assert missing.headers == {"WWW-Authenticate": 'Bearer realm="eventpipe"'}
        assert set(missing.body) == {"error", "reason"}
        wrong = gate.decide({"x-api-key": reader + "x"}, Scope.READ)
        assert isinstance(wrong, Reply) and wrong.status == 401
        assert wrong.headers == {"WWW-Authenticate": 'Bearer realm="eventpipe", error="invalid_token"'}
        assert reader not in str(wrong.body)
        scope = gate.decide(_bearer(reader), Scope.INGEST)
        assert isinstance(scope, Reply) and (scope.status, scope.body["error"], scope.body["scope"]) == (
            403,
            "insufficient_scope",
            "ingest",
        )
        await gate.close()

    asyncio.run(scenario())


def test_a_revoke_is_picked_up_at_the_next_reload_and_use_is_written_in_batches() -> None:
    async def scenario() -> None:
        store = MemoryKeys()
        key = store.add(Scope.INGEST)
        gate = _gate(store)
        assert isinstance(gate.decide(_bearer(key), Scope.INGEST), Principal)
        assert isinstance(gate.decide(_bearer(key), Scope.INGEST), Principal)
        store.keys.clear()  # revoked
        await gate.refresh()
        assert store.touched == [{key[4:16]}]
        refused = gate.decide(_bearer(key), Scope.INGEST)
        assert isinstance(refused, Reply) and refused.status == 401
        await gate.close()

    asyncio.run(scenario())


def test_a_failed_reload_keeps_the_last_keys_and_the_uses_for_the_next_round() -> None:
    async def scenario() -> None:
        store = MemoryKeys()
        key = store.add(Scope.READ)
        gate = _gate(store)
        assert isinstance(gate.decide(_bearer(key), Scope.READ), Principal)
        store.down = True
        await gate.refresh()
        assert isinstance(gate.decide(_bearer(key), Scope.READ), Principal)
        store.down = False
        await gate.refresh()
        assert store.touched == [{key[4:16]}]
        await gate.close()

    asyncio.run(scenario())


def test_before_any_load_requests_get_503_and_with_auth_off_everyone_is_the_default_tenant() -> None:
    async def scenario() -> None:
        store = MemoryKeys()
        store.down = True
        gate = _gate(store)
        answer = gate.decide(_bearer(store.add(Scope.READ)), Scope.READ)
        assert isinstance(answer, Reply) and answer.status == 503
        await gate.close()
        off = Authenticator(None, 1.0, Incidents(logging.getLogger("test")))
        assert off.decide({}, Scope.ADMIN) is UNAUTHENTICATED
        assert UNAUTHENTICATED.tenant == DEFAULT_TENANT and UNAUTHENTICATED.scopes == frozenset(Scope)

    asyncio.run(scenario())
