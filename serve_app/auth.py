"""Authentication at the API: each replica holds the active API keys in memory (a KeyRing), reloads them every
auth_refresh_s and writes the keys' last-used times on the same timer; a request is decided from its headers alone.

It never queries the database per request, never reads a body, and never puts a presented key in an answer, a log
line or a span: answers say what was wrong (missing, invalid, which scope), not what was sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from cluster.adapters.key_store import KeyStore
from pipelines.access import DEFAULT_TENANT, Principal, Scope
from pipelines.api_keys import DEFAULT_REQUESTS_PER_MINUTE, Denial, Denied, KeyRing, credential
from serve_app.incidents import Incidents
from serve_app.replies import Reply

log = logging.getLogger(__name__)

REALM = 'Bearer realm="eventpipe"'
# Every request when auth is off (auth_enabled false): the default tenant, every scope.
UNAUTHENTICATED = Principal(
    "auth-disabled", "auth-disabled", DEFAULT_TENANT, frozenset(Scope), DEFAULT_REQUESTS_PER_MINUTE
)
_REASONS = {
    Denial.MISSING: "an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
    Denial.INVALID: "the API key is not valid (malformed, unknown or revoked)",
}


def denied(denial: Denied) -> Reply:
    """401 with WWW-Authenticate (RFC 6750: `error="invalid_token"` once a key was given), or 403 naming the scope."""
    if denial.reason is Denial.INSUFFICIENT_SCOPE:
        scope = denial.scope.value if denial.scope is not None else ""
        body = {"error": denial.reason.value, "reason": f"this API key lacks the {scope!r} scope", "scope": scope}
        challenge = f'{REALM}, error="insufficient_scope", scope="{scope}"'
        return Reply(403, body, {"WWW-Authenticate": challenge})
    challenge = REALM if denial.reason is Denial.MISSING else f'{REALM}, error="invalid_token"'
    return Reply(
        401, {"error": denial.reason.value, "reason": _REASONS[denial.reason]}, {"WWW-Authenticate": challenge}
    )


def keys_not_loaded(error_id: str) -> Reply:
    """503: this replica could not load the API keys yet (the database did not answer since it started)."""
    reason = "this replica has not loaded the API keys yet; nothing was taken, retry shortly"
    return Reply(503, {"error": "starting", "reason": reason, "error_id": error_id}, {"Retry-After": "2"})


class Authenticator:
    """The replica's gate: `decide(headers, scope)` from memory; `run()` reloads the keys and writes last-used times
    every `refresh_s`. A failed reload keeps the keys last loaded (a revoke waits for the database to answer)."""

    def __init__(
        self,
        store: KeyStore | None,
        refresh_s: float,
        incidents: Incidents,
        anonymous: Principal = UNAUTHENTICATED,
    ) -> None:
        self._store = store  # None: auth is off, and every request is `anonymous`
        self._anonymous = anonymous
        self._refresh_s = refresh_s
        self._incidents = incidents
        self._ring: KeyRing | None = None
        self._used: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self._store is not None

    def load(self) -> bool:
        """Reload the keys now (blocking); False when the database did not answer (the last keys are kept)."""
        if self._store is None:
            return True
        try:
            self._ring = KeyRing(self._store.active())
        except Exception as exc:  # noqa: BLE001 - any failure keeps the last keys; the cause is logged
            self._incidents.report("auth: the API keys could not be reloaded; the last keys loaded stay in use", exc)
            return False
        return True

    def decide(self, headers: Mapping[str, str], scope: Scope) -> Principal | Reply:
        """The request's principal, or the 401/403 (503 before the first load) to answer instead."""
        if self._store is None:
            return self._anonymous
        self._ensure_running()
        ring = self._ring
        if ring is None:
            return keys_not_loaded(self._incidents.report("auth: no API keys loaded yet", cause="keys_not_loaded"))
        outcome = ring.authenticate(credential(headers.get("authorization"), headers.get("x-api-key")), scope)
        if isinstance(outcome, Denied):
            return denied(outcome)
        self._used.add(outcome.key_id)
        return outcome

    def _ensure_running(self) -> None:
        """The refresh timer runs on the loop that serves requests: started by the first request (a constructor's
        loop may not be the one requests run on), started again if it ended or its loop is not this one."""
        loop = asyncio.get_running_loop()
        task = self._task
        if self._store is not None and (task is None or task.done() or task.get_loop() is not loop):
            self._task = loop.create_task(self.run(), name="api-key-refresh")

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._refresh_s)

    async def refresh(self) -> None:
        """Write the last-used times gathered since the last round, then reload the keys (in a thread: the store's
        client is synchronous)."""
        used, self._used = self._used, set()
        if used and self._store is not None:
            try:
                await asyncio.to_thread(self._store.touch, used)
            except Exception as exc:  # noqa: BLE001 - a lost last-used time is not worth failing requests for
                self._used |= used  # kept for the next round
                self._incidents.report("auth: the keys' last-used times could not be written", exc)
        await asyncio.to_thread(self.load)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._store is not None:
            self._store.close()
