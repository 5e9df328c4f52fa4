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

import confluent_kafka
import psycopg
import pytest
import ray
from ray import serve

from actors.lifecycle import start_pipeline
from cluster.adapters.migrations import migrate
from cluster.cli import start_ray, start_serve
from cluster.local import free_port
from cluster.settings import Settings


@dataclass(frozen=True)
class Pipeline:
    settings: Settings
    base_url: str
    leader: Any

    @property
    def db_url(self) -> str:
        return self.settings.database_url.get_secret_value()

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            cur = conn.execute(sql, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def scalar(self, sql: str, *params: Any) -> Any:
        return self.query(sql, *params)[0][0]

    def owner_statuses(self) -> list[dict[str, Any]]:
        return list(ray.get(self.leader.owner_statuses.remote()))


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


@pytest.fixture(scope="session")
def pipeline(infra_settings: Settings) -> Iterator[Pipeline]:
    settings = infra_settings.model_copy(
        update={
            "http_port": free_port(),
            "ray_namespace": unique_prefix("eventpipe-test"),
            # Faults heal within seconds in tests: probe dependencies sooner than production's 60 s.
            "breaker_reset_timeout_s": 2.0,
            "producer_message_timeout_ms": 3000,
            "leader_lease_ttl_s": 6.0,
        }
    )
    migrate(settings.database_url.get_secret_value())
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")  # no load balancer to wait for
    start_ray(settings, dashboard=False)
    try:
        leader = start_pipeline(settings)
        start_serve(settings)
        yield Pipeline(settings, f"http://127.0.0.1:{settings.http_port}", leader)
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
