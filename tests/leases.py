"""A leader lease of a test's own, for store-level tests that claim partitions without going through a Leader.

Each call acquires a lease under a unique name, so it never competes with the session pipeline's leader.
"""

from __future__ import annotations

import uuid

from cluster.adapters.leases import LeaderLease, LeaseStore


def private_lease(db_url: str, ttl_s: float = 3600.0) -> LeaderLease:
    store = LeaseStore(db_url)
    try:
        lease = store.acquire(f"test-{uuid.uuid4().hex[:12]}", "store-test", ttl_s)
    finally:
        store.close()
    if lease is None:
        raise RuntimeError("a freshly named lease was already held")
    return lease
