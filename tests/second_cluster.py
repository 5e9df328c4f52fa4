"""A second Ray cluster against the same broker and database, run as a subprocess, for split-brain tests.

`python -m tests.second_cluster` reads Settings as JSON on its first stdin line, starts a NEW local Ray cluster and
its leader (which may stay on standby), then answers one command per stdin line with one `@@ <json>` stdout line:
`leadership`, `owners`, `stop`. `SecondCluster` is the test-side client. It never touches the caller's Ray cluster.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from cluster.settings import Settings, secrets_in_environment

_MARK = "@@ "
_ROOT = Path(__file__).resolve().parent.parent


def _answer(payload: Any) -> None:
    print(_MARK + json.dumps(payload, default=str), flush=True)


def main() -> int:
    import ray

    from actors.lifecycle import get_leader, start_pipeline, stop_pipeline

    data = json.loads(sys.stdin.readline())
    settings = Settings(_env_file=None, **data)  # type: ignore[call-arg]
    with secrets_in_environment(settings):  # the new cluster's actors read DATABASE_URL from their environment
        ray.init(address="local", namespace=settings.ray_namespace, include_dashboard=False, log_to_driver=False)
    try:
        try:
            leader = start_pipeline(settings, ready_timeout_s=5.0)
        except TimeoutError:
            leader = get_leader()  # on standby: another cluster holds the leader lease
        _answer({"started": ray.get(leader.leadership.remote(), timeout=60)})
        for line in sys.stdin:
            command = line.strip()
            if command == "leadership":
                _answer(ray.get(leader.leadership.remote(), timeout=30))
            elif command == "owners":
                _answer(ray.get(leader.owner_statuses.remote(), timeout=30))
            elif command == "stop":
                stop_pipeline(leader, drain_timeout_s=15.0)
                _answer({"stopped": True})
                return 0
            else:
                _answer({"error": f"unknown command {command!r}"})
        return 0
    finally:
        ray.shutdown()


class SecondCluster:
    """Starts the driver with `settings` (a new Ray cluster, same broker and database) and talks to it."""

    def __init__(self, settings: Settings, log_path: Path, start_timeout_s: float = 120.0) -> None:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never join the caller's cluster
        self._log = log_path.open("w")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.second_cluster"],
            cwd=_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        data = settings.model_dump(mode="json")
        data["database_url"] = settings.database_url.get_secret_value()
        self._send(json.dumps(data))
        self.started: dict[str, Any] = self._receive(start_timeout_s)["started"]

    def leadership(self) -> dict[str, Any]:
        self._send("leadership")
        return dict(self._receive(30))

    def owners(self) -> list[dict[str, Any]]:
        self._send("owners")
        return list(self._receive(30))

    def stop(self, timeout_s: float = 120.0) -> None:
        """Graceful: drain and release the leader lease, shut its Ray cluster down; SIGKILL if it does not end."""
        try:
            if self._proc.poll() is None:
                self._send("stop")
                self._receive(timeout_s)
                self._proc.wait(timeout=60)
        finally:
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait(timeout=30)
            self._log.close()

    def _send(self, line: str) -> None:
        if self._proc.stdin is None:
            raise RuntimeError("no stdin")
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()

    def _read(self) -> None:
        if self._proc.stdout is None:
            return
        for line in self._proc.stdout:
            if line.startswith(_MARK):
                self._lines.put(line[len(_MARK) :])
        self._lines.put(None)

    def _receive(self, timeout_s: float) -> Any:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(
                f"the second cluster did not answer within {timeout_s}s (log: {self._log.name})"
            ) from None
        if line is None:
            raise RuntimeError(f"the second cluster exited with {self._proc.wait()} (log: {self._log.name})")
        return json.loads(line)


if __name__ == "__main__":
    sys.exit(main())
