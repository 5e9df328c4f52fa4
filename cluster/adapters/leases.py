"""Cluster-wide leases in PostgreSQL (`cluster_leases`): which Ray cluster's leader may assign partitions.

A lease is a row (name, holder, epoch, expires_at) judged by the database's clock only. Acquiring succeeds when the
row is free, expired or already ours; a different holder taking it bumps the epoch. It never touches partitions:
`CheckpointStore.claim` calls `verify_held` inside its own transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg_pool import ConnectionPool

LEADER = "leader"


def leader_lease_name(topic_prefix: str) -> str:
    """One leader lease per set of topics: pipelines with different topic prefixes own disjoint partitions."""
    return LEADER if topic_prefix == "events" else f"{LEADER}:{topic_prefix}"


@dataclass(frozen=True)
class LeaderLease:
    """A lease as its holder knows it; `claim` compares holder and epoch with the row, under a row lock."""

    name: str
    holder: str
    epoch: int
    ttl_s: float


@dataclass(frozen=True)
class LeaseInfo:
    """The row as it is now, for status and for telling a standby leader who holds the lease."""

    name: str
    holder: str
    epoch: int
    expires_in_s: float  # negative once expired

    @property
    def expired(self) -> bool:
        return self.expires_in_s <= 0


class LeaseNotHeld(Exception):
    """The caller's lease is not the live one (expired, or another holder or a newer epoch has it): claim nothing."""

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __reduce__(self) -> tuple[type[LeaseNotHeld], tuple[str]]:
        return (LeaseNotHeld, (str(self),))


# Free (no row), expired, or ours: take it. The epoch moves only when the holder changes, so a restarted leader of the
# same cluster keeps its epoch and a zombie of another cluster never matches again.
_ACQUIRE = """
INSERT INTO cluster_leases AS l (name, holder, epoch, expires_at)
VALUES (%(name)s, %(holder)s, 1, clock_timestamp() + make_interval(secs => %(ttl)s))
ON CONFLICT (name) DO UPDATE
   SET holder = excluded.holder,
       epoch = CASE WHEN l.holder = excluded.holder THEN l.epoch ELSE l.epoch + 1 END,
       acquired_at = CASE WHEN l.holder = excluded.holder THEN l.acquired_at ELSE clock_timestamp() END,
       expires_at = excluded.expires_at,
       renewed_at = clock_timestamp()
 WHERE l.holder = excluded.holder OR l.expires_at <= clock_timestamp()
RETURNING l.epoch
"""
# Renewing needs the same holder AND epoch. It may revive our own expired lease: nobody took it meanwhile, or the
# epoch would have moved, so no claim was made by anyone else in between.
_RENEW = """
UPDATE cluster_leases
   SET expires_at = clock_timestamp() + make_interval(secs => %(ttl)s), renewed_at = clock_timestamp()
 WHERE name = %(name)s AND holder = %(holder)s AND epoch = %(epoch)s
RETURNING epoch
"""
# Released leases expire now rather than vanish, so epochs only ever grow.
_RELEASE = """
UPDATE cluster_leases SET expires_at = clock_timestamp(), renewed_at = clock_timestamp()
 WHERE name = %(name)s AND holder = %(holder)s AND epoch = %(epoch)s AND expires_at > clock_timestamp()
"""
_READ = """
SELECT holder, epoch, extract(epoch FROM expires_at - clock_timestamp())::float8 FROM cluster_leases
 WHERE name = %(name)s
"""
# Inside a claim's transaction: a shared row lock, so a takeover (an UPDATE of the row) waits for the claim to end.
_VERIFY = _READ.rstrip() + " FOR SHARE"


def verify_held(conn: psycopg.Connection, lease: LeaderLease) -> None:
    """Raise LeaseNotHeld unless `lease` is the live lease; call it inside the transaction that relies on it."""
    row = conn.execute(_VERIFY, {"name": lease.name}).fetchone()
    if row is None:
        raise LeaseNotHeld(f"no '{lease.name}' lease exists; {lease.holder} must acquire it before claiming")
    holder, epoch, expires_in = str(row[0]), int(row[1]), float(row[2])
    if holder != lease.holder or epoch != lease.epoch:
        raise LeaseNotHeld(
            f"the '{lease.name}' lease is held by {holder} at epoch {epoch}, not by {lease.holder} at epoch "
            f"{lease.epoch}: this cluster may not claim partitions"
        )
    if expires_in <= 0:
        raise LeaseNotHeld(
            f"the '{lease.name}' lease of {holder} at epoch {epoch} expired {-expires_in:.1f}s ago: renew it first"
        )


class LeaseStore:
    """Acquire, renew and release leases; every statement is a constant and times out instead of hanging."""

    def __init__(self, database_url: str, statement_timeout_ms: int = 5000) -> None:
        self._pool = ConnectionPool(
            database_url,
            min_size=1,
            max_size=2,
            open=True,
            timeout=5.0,
            reconnect_timeout=3.0,  # see CheckpointStore: a caller starts a fresh attempt instead of a late retry
            kwargs={
                "autocommit": True,
                "connect_timeout": 5,
                "options": f"-c statement_timeout={int(statement_timeout_ms)}",
            },
        )

    def close(self) -> None:
        self._pool.close()

    def acquire(self, name: str, holder: str, ttl_s: float) -> LeaderLease | None:
        """The lease when it was free, expired or ours; None while another holder's lease is unexpired."""
        with self._pool.connection() as conn:
            row = conn.execute(_ACQUIRE, {"name": name, "holder": holder, "ttl": ttl_s}).fetchone()
        return LeaderLease(name, holder, int(row[0]), ttl_s) if row else None

    def renew(self, lease: LeaderLease) -> LeaderLease | None:
        """Push the expiry ttl_s ahead; None when the lease is no longer ours (another holder took it)."""
        params = {"name": lease.name, "holder": lease.holder, "epoch": lease.epoch, "ttl": lease.ttl_s}
        with self._pool.connection() as conn:
            row = conn.execute(_RENEW, params).fetchone()
        return lease if row else None

    def release(self, lease: LeaderLease) -> bool:
        """Let the lease expire now, so another cluster may take over at once; False when it was not ours."""
        params = {"name": lease.name, "holder": lease.holder, "epoch": lease.epoch}
        with self._pool.connection() as conn:
            return conn.execute(_RELEASE, params).rowcount == 1

    def current(self, name: str) -> LeaseInfo | None:
        with self._pool.connection() as conn:
            row = conn.execute(_READ, {"name": name}).fetchone()
        return LeaseInfo(name, str(row[0]), int(row[1]), float(row[2])) if row else None
