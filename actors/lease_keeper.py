"""LeaseKeeper: holds the leader lease for the leader actor: acquires it, renews it every ttl/3, notices its loss.

It decides the leader's role only (standby, active, unconfirmed); it never creates, claims or stops anything itself.
Time for local decisions is the keeper's own monotonic clock, read BEFORE each database call, so its idea of when
the lease runs out is never later than the database's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from cluster.adapters.leases import LeaderLease, LeaseInfo

log = logging.getLogger(__name__)


class Role(StrEnum):
    STANDBY = "standby"  # holds no lease: another holder has it, or it could not be acquired yet
    ACTIVE = "active"  # holds the lease and PostgreSQL confirmed it within the TTL: may claim partitions
    UNCONFIRMED = "unconfirmed"  # held it, but no renewal was confirmed within the TTL: no claims, owners kept


class LeaseBackend(Protocol):
    def acquire(self, name: str, holder: str, ttl_s: float) -> LeaderLease | None: ...
    def renew(self, lease: LeaderLease) -> LeaderLease | None: ...
    def release(self, lease: LeaderLease) -> bool: ...
    def current(self, name: str) -> LeaseInfo | None: ...


@dataclass(frozen=True)
class KeeperStatus:
    name: str
    holder: str
    role: Role
    term: int  # how many times this keeper acquired the lease afresh
    epoch: int | None  # lease epoch while held
    held_by: str | None  # the other holder, while on standby because of it
    last_error: str | None


class LeaseKeeper:
    """Role changes are reported through `on_change` (called without the keeper's lock held)."""

    def __init__(
        self,
        backend: LeaseBackend,
        name: str,
        holder: str,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[Role], None] | None = None,
    ) -> None:
        self._backend = backend
        self._name = name
        self._holder = holder
        self._ttl_s = ttl_s
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._role = Role.STANDBY
        self._lease: LeaderLease | None = None
        self._valid_until = 0.0
        self._term = 0
        self._held_by: str | None = None
        self._last_error: str | None = None
        self._closed = threading.Event()
        self._nudge = threading.Event()

    @property
    def holder(self) -> str:
        return self._holder

    @property
    def renew_every_s(self) -> float:
        return self._ttl_s / 3

    # -- reading -----------------------------------------------------------------------------------
    def held(self) -> tuple[LeaderLease, int] | None:
        """(lease, term) while active and inside the TTL measured locally; None otherwise: claim nothing."""
        with self._lock:
            if self._role is Role.ACTIVE and self._lease is not None and self._clock() < self._valid_until:
                return self._lease, self._term
            return None

    @property
    def role(self) -> Role:
        with self._lock:
            return self._role

    def status(self) -> KeeperStatus:
        with self._lock:
            epoch = self._lease.epoch if self._lease else None
            return KeeperStatus(
                self._name, self._holder, self._role, self._term, epoch, self._held_by, self._last_error
            )

    # -- driving -----------------------------------------------------------------------------------
    def run(self) -> None:
        """Tick until the keeper is closed (the body of the leader's lease thread)."""
        while not self._closed.is_set():
            try:
                wait = self.tick()
            except Exception:  # noqa: BLE001 - the lease thread must outlive any one failure
                log.exception("lease tick failed")
                wait = self._retry_s()
            self._nudge.wait(wait)
            self._nudge.clear()

    def tick(self) -> float:
        """One step: acquire when standing by, renew when holding. Returns the seconds until the next step."""
        if self._closed.is_set():
            return self.renew_every_s
        with self._lock:
            lease = self._lease
        if lease is None:
            return self._try_acquire()
        return self._try_renew(lease)

    def recheck(self, reason: str) -> None:
        """The database refused a claim under our lease: claim nothing more until a renewal confirms it, now."""
        with self._lock:
            if self._lease is None:
                return
            self._valid_until = 0.0
            self._last_error = reason
        log.warning("lease %r of %s needs confirming: %s", self._name, self._holder, reason)
        self._set_role(Role.UNCONFIRMED)
        self._nudge.set()

    def close(self) -> None:
        """Stop ticking and release the lease, so another cluster's leader may take over at once."""
        self._closed.set()
        self._nudge.set()
        with self._lock:
            lease, self._lease = self._lease, None
        if lease is not None:
            try:
                self._backend.release(lease)
                log.info("lease %r released by %s at epoch %d", self._name, self._holder, lease.epoch)
            except Exception as exc:  # noqa: BLE001 - it will expire on its own within the TTL
                log.warning("could not release lease %s (%s); it expires within %.0fs", self._name, exc, self._ttl_s)
        self._set_role(Role.STANDBY)

    # -- internals ---------------------------------------------------------------------------------
    def _retry_s(self) -> float:
        return max(0.1, self._ttl_s / 6)

    def _try_acquire(self) -> float:
        started = self._clock()
        try:
            lease = self._backend.acquire(self._name, self._holder, self._ttl_s)
            other = None if lease is not None else self._backend.current(self._name)
        except Exception as exc:  # noqa: BLE001 - PostgreSQL unreachable: stay on standby, try again soon
            self._note_error(f"acquire: {type(exc).__name__}: {exc}")
            return self._retry_s()
        if lease is None:
            with self._lock:
                changed = self._held_by != (other.holder if other else None)
                self._held_by = other.holder if other else None
                self._last_error = None
            if changed and other is not None:
                log.info(
                    "lease %r is held by %s (epoch %d, expires in %.1fs): %s stands by",
                    self._name,
                    other.holder,
                    other.epoch,
                    other.expires_in_s,
                    self._holder,
                )
            # Come back right after the other holder's lease would run out, but not later than a renewal period.
            wait = self.renew_every_s if other is None else max(0.1, other.expires_in_s + 0.05)
            return min(self.renew_every_s, wait)
        with self._lock:
            if self._closed.is_set():
                return self.renew_every_s
            self._lease = lease
            self._valid_until = started + self._ttl_s
            self._term += 1
            self._held_by = None
            self._last_error = None
            term = self._term
        log.info("lease %r acquired by %s at epoch %d (term %d)", self._name, self._holder, lease.epoch, term)
        self._set_role(Role.ACTIVE)
        return self.renew_every_s

    def _try_renew(self, lease: LeaderLease) -> float:
        started = self._clock()
        try:
            renewed = self._backend.renew(lease)
        except Exception as exc:  # noqa: BLE001 - PostgreSQL unreachable: keep the role until the TTL runs out
            self._note_error(f"renew: {type(exc).__name__}: {exc}")
            with self._lock:
                past_ttl = self._lease is lease and started >= self._valid_until
            if past_ttl:
                self._set_role(Role.UNCONFIRMED)
            return self._retry_s()
        with self._lock:
            if self._lease is not lease:  # lost() or close() meanwhile
                return self.renew_every_s
            if renewed is not None:
                self._valid_until = started + self._ttl_s
                self._last_error = None
        if renewed is None:
            self._lose(lease, "another holder took the lease (its epoch moved on)")
            return 0.0  # look at once who holds it now
        self._set_role(Role.ACTIVE)
        return self.renew_every_s

    def _lose(self, lease: LeaderLease, reason: str) -> None:
        with self._lock:
            if self._lease is not lease:
                return
            self._lease = None
            self._last_error = reason
        log.warning("lease %r lost by %s at epoch %d: %s", self._name, self._holder, lease.epoch, reason)
        self._set_role(Role.STANDBY)

    def _note_error(self, error: str) -> None:
        with self._lock:
            first = self._last_error != error
            self._last_error = error
        if first:
            log.warning("lease %r: %s", self._name, error)

    def _set_role(self, role: Role) -> None:
        with self._lock:
            old, self._role = self._role, role
        if old is not role:
            log.info("leader %s: %s -> %s", self._holder, old.value, role.value)
            if self._on_change is not None:
                self._on_change(role)
