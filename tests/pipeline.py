"""Session fixture: the whole pipeline on real Ray, the real broker and real PostgreSQL, plus a kcat that speaks to it.

It starts everything once per test session and tears it down; tests isolate their data by unique id prefixes.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import confluent_kafka
import httpx
import psycopg
import pytest
import ray
from pydantic import SecretStr
from ray import serve

from actors.lifecycle import metrics_url, start_pipeline
from cluster.adapters.key_store import KeyStore
from cluster.adapters.migrations import migrate
from cluster.cli import start_ray
from cluster.local import free_port
from cluster.ray_config import start_serve
from cluster.settings import Settings
from pipelines.access import DEFAULT_TENANT, Scope
from tests.fakes.enrichment_service import FakeEnrichmentService

# The session key's limits: the suite's own load must never meet the rate limiter (its tests set their own keys).
TEST_KEY_REQUESTS_PER_MINUTE = 100_000_000


@dataclass(frozen=True)
class Pipeline:
    settings: Settings
    base_url: str
    leader: Any
    direct_db_url: str  # straight to the server, not through `pg_proxy`: checks work while the proxy is faulted
    api_key: str  # every scope, the default tenant (session_api_key)

    @property
    def headers(self) -> dict[str, str]:
        """What every request to the API carries: the session's API key."""
        return auth_headers(self.api_key)

    def client(self, **options: Any) -> httpx.Client:
        """An HTTP client on the API that sends the session's key with every request."""
        return httpx.Client(base_url=self.base_url, headers=self.headers, **options)

    @property
    def db_url(self) -> str:
        """The URL the pipeline itself uses (through `pg_proxy`)."""
        return self.settings.database_url.get_secret_value()

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.direct_db_url, autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(sql, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def scalar(self, sql: str, *params: Any) -> Any:
        return self.query(sql, *params)[0][0]

    def owner_statuses(self) -> list[dict[str, Any]]:
        return list(ray.get(self.leader.owner_statuses.remote()))

    @property
    def metrics_url(self) -> str:
        """Base URL of the metrics hub: `/metrics` (the one scrape target) and `/status`."""
        url = metrics_url()
        if url is None:
            raise AssertionError(f"the metrics hub has not bound port {self.settings.metrics_port}")
        return url


def auth_headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


def create_api_key(
    db_url: str, name: str, scopes: frozenset[Scope] = frozenset(Scope), tenant: str = DEFAULT_TENANT, **limits: Any
) -> str:
    """A new API key in the pipeline's database (the replicas load it within auth_refresh_s)."""
    store = KeyStore(db_url)
    try:
        limits.setdefault("requests_per_minute", TEST_KEY_REQUESTS_PER_MINUTE)
        issued, _ = store.create(name, tenant, scopes, **limits)
    finally:
        store.close()
    return issued.key


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    """Poll a condition with a deadline; fail with `what` if it never holds."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


def unique_prefix(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


# The session database's password. The embedded server trusts local connections and ignores it, but the pipeline's
# URL carries it, so tests can look for it where it must never be (tests/integration/test_secrets_in_ray.py).
SESSION_DB_PASSWORD = f"pw-{uuid.uuid4().hex}"


def with_password(url: str, password: str) -> str:
    """`url` with `password` set on its user (postgresql://user:password@host:port/db)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or ''}:{password}@{host}").geturl()


@pytest.fixture(scope="session")
def enrichment_service() -> Iterator[FakeEnrichmentService]:
    """The fake merchant service the pipeline's `enrichment_url` points at; tests switch it down/slow and back up."""
    with FakeEnrichmentService() as service:
        yield service


def isolate_serve_ports() -> None:
    """Serve's fixed ports, made this session's own: HAProxy's stats, metrics and fallback ports, the replicas' ports.

    Every Ray cluster on a host takes replica ports from the same range (30000-31000). When a replica dies, the
    HAProxy of its cluster keeps routing to its port for seconds; if another session's replica took that port
    meanwhile, our requests are answered 202 by another pipeline (the chaos suite saw acks at offsets our broker never
    had). A block of ports per session, below the ephemeral range, keeps concurrent sessions apart.
    """
    block = os.getpid() % 50
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", str(20_000 + block * 200))
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT", str(20_000 + block * 200 + 199))
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT", str(10_000 + block * 200))
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT", str(10_000 + block * 200 + 199))
    os.environ.setdefault("RAY_SERVE_HAPROXY_METRICS_PORT", str(free_port()))
    os.environ.setdefault("RAY_SERVE_HAPROXY_STATS_PORT", str(free_port()))
    # HAProxy sends requests to the fallback proxy while no replica is up: a fixed 8500 would be another session's
    os.environ.setdefault("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", str(free_port()))
    os.environ.setdefault("RAY_SERVE_FALLBACK_PROXY_GRPC_PORT", str(free_port()))


@pytest.fixture(scope="session")
def pipeline(infra_settings: Settings, pg_url: str, enrichment_service: FakeEnrichmentService) -> Iterator[Pipeline]:
    url = with_password(infra_settings.database_url.get_secret_value(), SESSION_DB_PASSWORD)
    settings = infra_settings.model_copy(
        update={
            "http_port": free_port(),
            "metrics_port": free_port(),
            "ray_namespace": unique_prefix("eventpipe-test"),
            # Faults heal within seconds in tests: probe dependencies sooner than production's 60 s.
            "breaker_reset_timeout_s": 2.0,
            "producer_message_timeout_ms": 3000,
            "leader_lease_ttl_s": 6.0,
            "enrichment_url": enrichment_service.url,
            "enrichment_cache_ttl_s": 1.0,  # a fixed set of merchants: a long TTL would hide the service's faults
            "log_events": True,  # per-event log lines, which tests/integration/test_logs.py checks
            # Trace every event (production default: 0.01): test_tracing.py, test_logs.py and the status page tests
            # read any event's spans and trace ids.
            "trace_sample_ratio": 1.0,
            "database_url": SecretStr(url),
            # A commit failing this long makes an owner `stalled` (production: 30 s): test_stuck_partition.py
            "owner_stalled_after_s": 3.0,
            # The development key's requests are not limited here: tests send thousands per minute through it. The
            # rate limit is tested by its own Serve app and limit (tests/integration/test_rate_limit_http.py).
            "rate_limit_requests_per_minute": TEST_KEY_REQUESTS_PER_MINUTE,
        }
    )
    migrate(settings.database_url.get_secret_value())
    api_key = create_api_key(pg_url, unique_prefix("tests"))  # before the API starts: its replicas load it at once
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")  # no load balancer to wait for
    isolate_serve_ports()
    start_ray(settings, dashboard=False)  # its processes inherit DATABASE_URL: actors read it there, not from Ray
    try:
        leader = start_pipeline(settings)
        start_serve(settings)
        base_url = f"http://127.0.0.1:{settings.http_port}"
        yield Pipeline(settings, base_url, leader, direct_db_url=pg_url, api_key=api_key)
        serve.shutdown()
        ray.get(leader.kill_all.remote(), timeout=60)
        ray.kill(leader, no_restart=True)
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def kcat(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Debian's kcat, run against the librdkafka that ships in the confluent-kafka wheel.

    Debian's own librdkafka (2.0.x) fails the ApiVersion handshake with the embedded broker ("Read underflow");
    the C ABI is stable, so kcat runs unchanged on the newer library.
    """
    binary = shutil.which("kcat")
    if binary is None:
        raise RuntimeError("kcat is not installed: run `make tools` (Debian package kcat)")
    libs = Path(confluent_kafka.__file__).resolve().parent.parent / "confluent_kafka.libs"
    candidates = sorted(libs.glob("librdkafka*.so*"))
    if not candidates:
        raise RuntimeError(f"no librdkafka in {libs}")
    shim = tmp_path_factory.mktemp("kcat-lib")
    (shim / "librdkafka.so.1").symlink_to(candidates[0])
    return ["env", f"LD_LIBRARY_PATH={shim}", binary]


@pytest.fixture(scope="session")
def api_headers(pipeline: Pipeline) -> dict[str, str]:
    """Headers every API request of a contract or hostile-input test carries: the session's key (every scope). A run
    without a key (expecting 401s) overrides this fixture with {}."""
    return pipeline.headers
