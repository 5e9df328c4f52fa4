"""`python -m cluster.deploy up|down`: the Ray driver of `eventpipe run`, as a short-lived child process. `up` starts
the pipeline's actors and the Serve app on the Ray at EVENTPIPE_RAY_ADDRESS and prints one JSON line; `down` drains
and removes them.

A driver lives and dies with its GCS (it exits after ~60 s without one), so the supervisor never is one; this child
holds no state the supervisor needs once it has exited. It never starts Ray itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from cluster.observability.logs import setup_logging
from cluster.ray_config import APP_NAME, SERVE_ENV, start_serve
from cluster.settings import Settings


def connect(settings: Settings) -> None:
    import ray

    ray.init(address=settings.ray_address, namespace=settings.ray_namespace, log_to_driver=False)


def start_serve_routes_first(settings: Settings) -> None:
    """Serve with the app's route known before its ingress takes requests.

    `serve.start` waits until the HAProxy ingress serves, with no route yet; the app deployed after it leaves ~1 s
    in which every request is answered `404 Path '/events' not found`. After a Ray restart, clients retrying an
    unanswered request then take the 404 as final although the event may be in the log (measured in
    tests/chaos/test_run_supervisor.py). So: create the controller, deploy the app, and only then wait for the
    ingress, through Serve's own start-up helper (private: with the public API as the fallback).
    """
    import ray
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve._private.client import ServeControllerClient

    from serve_app.app import build_app

    create = getattr(serve_api, "_create_controller_and_proxy_refs", None)
    coerce = getattr(serve_api, "_coerce_controller_options", None)
    if create is None or coerce is None or _serve_running():
        start_serve(settings)
        return
    app = build_app(settings)
    http = {"host": settings.http_host, "port": settings.http_port}
    controller, proxies_ready = create(http, None, None, None, coerce(None))
    serve_api._set_global_client(ServeControllerClient(controller))
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    ray.get(proxies_ready, timeout=120)


def _serve_running() -> bool:
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True


def up(settings: Settings) -> dict[str, object]:
    from actors.lifecycle import metrics_url, start_pipeline

    connect(settings)
    start_pipeline(settings)
    hub = metrics_url()
    start_serve_routes_first(settings)
    return {"metrics_url": hub, "owners": len(settings.owned_topics()) * settings.partitions}


def down(settings: Settings) -> dict[str, object]:
    """Stop the API first (nothing new is acknowledged), then drain the owners and release every actor."""
    import ray
    from ray import serve

    from actors.lifecycle import get_leader, stop_pipeline

    connect(settings)
    serve.delete(APP_NAME)
    try:
        leader = get_leader()
    except ValueError:
        return {"drained": False}
    stop_pipeline(leader)
    ray.shutdown()
    return {"drained": True}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.deploy")
    parser.add_argument("action", choices=("up", "down"))
    args = parser.parse_args(argv)
    settings = Settings()
    if not settings.ray_address:
        raise SystemExit("EVENTPIPE_RAY_ADDRESS is not set: this command joins a running Ray, it never starts one")
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)
    setup_logging(settings, "cli")
    result = up(settings) if args.action == "up" else down(settings)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
