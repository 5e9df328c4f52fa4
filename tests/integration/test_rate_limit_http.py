"""The cluster-wide rate limit through the real API: two Serve replicas, the real limiter actor, the real broker and
PostgreSQL. Clients hammer one key; what both replicas admit together stays within the key's bound, every refusal is
a 429 with Retry-After and the RateLimit-* headers, and nothing of a refused batch is stored.

The bound is the bucket's for any window w: burst + limit x w / 60 (at w = 60 s: limit x 1.05). A 30 s run checks the
same invariant as a 60 s one at half the cost; the per-key limit is small (120/min: burst 6, 2 per second) so the
replicas refill their leases many times within it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import pytest
import ray
from ray import serve

from actors import names
from pipelines.api_keys import parse_key
from pipelines.rate_limit import Measure, request_quota
from serve_app.app import ApiGateway
from tests.pipeline import Pipeline, auth_headers, create_api_key, unique_prefix, wait_until

pytestmark = pytest.mark.integration

LIMIT_PER_MINUTE = 120
REPLICAS = 2
RUN_S = 30.0
CLIENTS = 4
PAUSE_S = 0.03  # between one client's requests: ~130 requests/s offered in all, 60 times the limit
BATCH = 3
APP_NAME = "ratelimit-test"
ROUTE = "/ratelimit-test"


@dataclass(frozen=True)
class LimitedApi:
    base_url: str
    namespace: str  # its own Ray namespace: its own limiter actor
    key: str  # an API key limited to LIMIT_PER_MINUTE

    @property
    def key_id(self) -> str:
        presented = parse_key(self.key)
        assert presented is not None
        return presented.key_id


@dataclass
class Tally:
    admitted: list[list[str]] = field(default_factory=list)  # event ids of each batch answered 202
    refused: list[list[str]] = field(default_factory=list)  # event ids of each batch answered 429
    refusals: list[httpx.Response] = field(default_factory=list)
    admitted_headers: list[httpx.Headers] = field(default_factory=list)
    other: list[tuple[int, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture(scope="module")
def limited_api(pipeline: Pipeline) -> Iterator[LimitedApi]:
    """A second Serve app of the pipeline's API with 2 replicas and a 120/min key limit; its own Ray namespace gives
    it its own limiter actor, and a key limited to 120/min."""
    namespace = unique_prefix("ratelimit")
    settings = pipeline.settings.model_copy(
        update={
            "ingest_replicas": REPLICAS,
            "rate_limit_requests_per_minute": LIMIT_PER_MINUTE,
            "rate_limit_fetch_timeout_s": 2.0,  # a shared 2-core box: a slow limiter must not look like a dead one
            "ray_namespace": namespace,
        }
    )
    # build_app's deployment with its CPU reservation lowered: the session's Ray has 2 CPUs and its own API holds one
    app = ApiGateway.options(num_replicas=REPLICAS, ray_actor_options={"num_cpus": 0.01}).bind(settings)
    serve.run(app, name=APP_NAME, route_prefix=ROUTE, blocking=False)  # returns once the app is running
    try:
        wait_until(_running, 60, "the rate-limited app's 2 replicas running", interval_s=0.5)
        base_url = f"{pipeline.base_url}{ROUTE}"
        key = create_api_key(pipeline.db_url, unique_prefix("rl-key"), requests_per_minute=LIMIT_PER_MINUTE)
        # each replica reloads its keys every auth_refresh_s once its first request started the timer
        wait_until(lambda: _authenticated(base_url, key), 30, "the limited key loaded by the replicas", interval_s=1.0)
        yield LimitedApi(base_url, namespace, key)
    finally:
        serve.delete(APP_NAME)
        try:
            ray.kill(ray.get_actor(names.RATE_LIMITER, namespace=namespace), no_restart=True)
        except ValueError:
            pass


def _running() -> bool:
    app = serve.status().applications.get(APP_NAME)
    if app is None or app.status != "RUNNING":
        return False
    return all(d.replica_states.get("RUNNING", 0) == REPLICAS for d in app.deployments.values())


def _batch(prefix: str) -> list[dict[str, object]]:
    now = datetime.now(UTC).isoformat()
    return [
        {"id": f"{prefix}-{uuid.uuid4().hex}", "type": "user_action", "timestamp": now, "user_id": f"{prefix}-u",
         "action": "click", "target": "t"}
        for _ in range(BATCH)
    ]  # fmt: skip


def _authenticated(base_url: str, key: str) -> bool:
    """Both limited replicas know the key (a few requests of its limit; their refill covers them within the run)."""
    with httpx.Client(base_url=base_url, headers=auth_headers(key), timeout=10) as client:
        return all(client.get("/schemas").status_code == 200 for _ in range(2 * REPLICAS))


def _hammer(api: LimitedApi, prefix: str, until: float, tally: Tally) -> None:
    with httpx.Client(base_url=api.base_url, headers=auth_headers(api.key), timeout=30) as client:
        while time.monotonic() < until:
            events = _batch(prefix)
            ids = [str(e["id"]) for e in events]
            r = client.post("/events/batch", json=events)
            with tally.lock:
                if r.status_code == 202:
                    tally.admitted.append(ids)
                    tally.admitted_headers.append(r.headers)
                elif r.status_code == 429:
                    tally.refused.append(ids)
                    tally.refusals.append(r)
                else:
                    tally.other.append((r.status_code, r.text))
            time.sleep(PAUSE_S)


def test_two_replicas_together_admit_no_more_than_the_keys_bound(pipeline: Pipeline, limited_api: LimitedApi) -> None:
    api, namespace = limited_api, limited_api.namespace
    prefix = unique_prefix("rl")
    quota = request_quota(LIMIT_PER_MINUTE)
    tally = Tally()
    # when clients hammer one key through both replicas for RUN_S
    started = time.monotonic()
    clients = [threading.Thread(target=_hammer, args=(api, prefix, started + RUN_S, tally)) for _ in range(CLIENTS)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    elapsed = time.monotonic() - started  # every decision fell within [started, started + elapsed]

    # then both replicas asked the one limiter, and together they admitted no more than the bucket's bound
    key = api.key_id
    limiter = ray.get_actor(names.RATE_LIMITER, namespace=namespace)
    assert ray.get(limiter.sharing.remote(key, Measure.REQUESTS), timeout=30) == REPLICAS
    assert not tally.other, tally.other[:3]
    bound = quota.burst + quota.rate * elapsed
    ratio = len(tally.admitted) / (quota.rate * elapsed)
    admitted, refused = len(tally.admitted), len(tally.refused)
    print(f"\nadmitted {admitted}, refused {refused} in {elapsed:.1f}s; bound {bound:.1f}; {ratio=:.3f}")
    assert len(tally.admitted) <= bound, (len(tally.admitted), bound, elapsed)
    assert len(tally.admitted) >= 0.9 * quota.rate * elapsed  # the key gets its limit, it is not starved
    assert len(tally.refused) > 10 * len(tally.admitted)  # the load really was far above the limit

    # and every refusal is a 429 with the headers and the house error body
    for r in tally.refusals:
        assert r.json()["error"] == "rate_limited"
        assert int(r.headers["Retry-After"]) >= 1
        assert r.headers["RateLimit-Limit"] == str(LIMIT_PER_MINUTE)
        assert int(r.headers["RateLimit-Remaining"]) >= 0
        assert int(r.headers["RateLimit-Reset"]) >= 0
    assert all(h["RateLimit-Limit"] == str(LIMIT_PER_MINUTE) for h in tally.admitted_headers)

    # and the admitted batches are stored whole, the refused ones not at all
    admitted_ids = [i for ids in tally.admitted for i in ids]
    refused_ids = [i for ids in tally.refused for i in ids]
    wait_until(
        lambda: pipeline.scalar("SELECT count(*) FROM events WHERE id = ANY(%s)", admitted_ids) == len(admitted_ids),
        60,
        "the admitted events stored",
    )
    assert pipeline.scalar("SELECT count(*) FROM events WHERE id = ANY(%s)", refused_ids) == 0


def test_a_limiter_restart_mid_run_costs_at_most_a_few_bursts_and_no_error(
    pipeline: Pipeline, limited_api: LimitedApi
) -> None:
    # given clients hammering the key, when the limiter actor dies mid-run (Ray restarts it, knowing nothing)
    api, namespace = limited_api, limited_api.namespace
    quota = request_quota(LIMIT_PER_MINUTE)
    ttl_s = pipeline.settings.rate_limit_lease_ttl_s
    tally = Tally()
    run_s = 20.0
    started = time.monotonic()
    clients = [
        threading.Thread(target=_hammer, args=(api, unique_prefix("rl-restart"), started + run_s, tally))
        for _ in range(CLIENTS)
    ]
    for c in clients:
        c.start()
    time.sleep(run_s / 4)
    ray.kill(ray.get_actor(names.RATE_LIMITER, namespace=namespace), no_restart=False)
    for c in clients:
        c.join()
    elapsed = time.monotonic() - started

    # then every answer was a 202 or a 429 (the replicas decided alone while it was away)
    assert not tally.other, tally.other[:3]
    # and together they admitted at most: the old leases (a burst), the replicas' fallback buckets (a burst and their
    # shares of the rate, for a lease lifetime at most overlapping the new limiter's), the new limiter's full bucket
    bound = 3 * quota.burst + quota.rate * (elapsed + ttl_s)
    admitted = len(tally.admitted)
    print(f"\nadmitted {admitted} in {elapsed:.1f}s across a limiter restart; bound {bound:.1f}")
    assert admitted <= bound, (admitted, bound)
    assert admitted >= 0.8 * quota.rate * elapsed  # the key kept getting its limit through the restart
    # and the restarted limiter serves both replicas again
    key = api.key_id
    limiter = ray.get_actor(names.RATE_LIMITER, namespace=namespace)
    wait_until(
        lambda: ray.get(limiter.sharing.remote(key, Measure.REQUESTS), timeout=30) >= 1,
        30,
        "a replica leasing from the restarted limiter",
    )
