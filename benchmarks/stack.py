"""Finds the running stack on this machine: the `eventpipe run` process, the PostgreSQL server behind a URL, the
embedded PostgreSQL's URL and the development API key from a data directory.

Reads the process table and files only; never signals a process or writes anything.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from benchmarks.components import is_eventpipe_run
from cluster.adapters.key_store import KeyStore
from cluster.dev_key import dev_key, key_file
from cluster.local import LOCALHOST, PG_PORT_FILE
from cluster.run_record import LOCK_FILE, RUN_DIR, RunDir
from cluster.settings import Settings

EMBEDDED_DATABASE = "eventpipe"  # the database EmbeddedPostgres creates
LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}


class StackNotFound(RuntimeError):
    """No (or no single) running stack; the message says what to pass instead."""


def data_dir() -> Path:
    """The data directory `eventpipe run` uses with this environment ($EVENTPIPE_DATA_DIR, .env, else .data)."""
    return Settings().data_dir


BENCH_KEY_NAME = "benchmark"
BENCH_KEY_FILE = "benchmark_api_key"
BENCH_REQUESTS_PER_MINUTE = 1_000_000_000  # the driver measures the pipeline, not the limit (benchmarks.ratelimit does)


def api_key(directory: Path, database_url: str | None = None) -> str | None:
    """The API key to send: $EVENTPIPE_API_KEY; else, with the stack's database, a key of the driver's own, kept in
    the data dir like the development key but not limited to the development key's 1,000 requests/min (10,000
    events/s in batches of 500 is 1,200); else the development key `eventpipe run` keeps in the data dir."""
    if os.environ.get("EVENTPIPE_API_KEY"):
        return os.environ["EVENTPIPE_API_KEY"]
    if database_url:
        store = KeyStore(database_url)
        try:
            key, _ = dev_key(store, directory, BENCH_REQUESTS_PER_MINUTE, name=BENCH_KEY_NAME, file=BENCH_KEY_FILE)
            return key
        finally:
            store.close()
    path = key_file(directory)
    return path.read_text().strip() if path.is_file() else None


def embedded_database_url(directory: Path) -> str | None:
    """URL of the embedded PostgreSQL that `eventpipe run` started with this data directory, or None."""
    port_file = directory / PG_PORT_FILE
    if not port_file.is_file():
        return None
    port = port_file.read_text().strip()
    return f"postgresql://postgres@{LOCALHOST}:{port}/{EMBEDDED_DATABASE}" if port.isdigit() else None


def find_stack_root(pid: int | None = None) -> psutil.Process:
    """The `eventpipe run` process: `pid` if given, else the only one running (wrappers such as `timeout` skipped)."""
    if pid is not None:
        try:
            return psutil.Process(pid)
        except psutil.NoSuchProcess as exc:
            raise StackNotFound(f"no process {pid}") from exc
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if is_eventpipe_run(proc.info["cmdline"] or []):
            found.append(proc)
    outermost = [p for p in found if not any(_is_ancestor(other, p) for other in found if other != p)]
    if len(outermost) != 1:
        pids = ", ".join(str(p.pid) for p in outermost) or "none"
        raise StackNotFound(f"expected one running `eventpipe run`, found {pids}: pass --stack-pid")
    return outermost[0]


def _is_ancestor(candidate: psutil.Process, proc: psutil.Process) -> bool:
    try:
        return candidate in proc.parents()
    except psutil.NoSuchProcess:
        return False


def find_postgres(database_url: str) -> psutil.Process | None:
    """The local PostgreSQL server listening on the URL's port (its postmaster), or None if it is not on this host.

    An embedded postmaster is not a child of `eventpipe run` (pg_ctl detaches it), so it is found by its port.
    """
    parts = urlsplit(database_url)
    if (parts.hostname or "") not in LOCAL_HOSTS:
        return None
    port = parts.port or 5432
    try:
        listeners = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return None
    for conn in listeners:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            try:
                return psutil.Process(conn.pid)
            except psutil.NoSuchProcess:
                return None
    return None


def embedded_broker_bootstrap(root: psutil.Process) -> str | None:
    """The address the stack's embedded broker advertises (`--advertised-listener-url tcp://host:port` on its command
    line), or None when `root` started none."""
    try:
        tree = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for proc in tree:
        try:
            args = proc.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if args and Path(args[0]).name == "tansu" and "--advertised-listener-url" in args:
            url = args[args.index("--advertised-listener-url") + 1]
            return url.removeprefix("tcp://")
    return None


def run_data_dir(root: psutil.Process) -> Path | None:
    """The data directory of a running `eventpipe run`: the one whose run lock (`<data dir>/run/lock`) it holds open,
    wherever its setting came from (environment, `.env`, default). None when it holds none."""
    try:
        files = root.open_files()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    for opened in files:
        path = Path(opened.path)
        if path.name == LOCK_FILE and path.parent.name == RUN_DIR:
            return path.parent.parent
    return None


def ray_sessions(root: psutil.Process) -> list[int]:
    """The Ray sessions the run `root` started, from its run record; they are not its descendants (`ray start`
    detaches them). Empty for a run that joined a Ray cluster or keeps no record."""
    directory = run_data_dir(root)
    if directory is None:
        return []
    record = RunDir(directory).read()
    return record.ray_sessions if record.supervisor_pid == root.pid else []


def has_raylet_below(root: psutil.Process) -> bool:
    """Whether a raylet descends from `root` (a run that is itself the Ray driver of its head, as before issue 10)."""
    try:
        return any(child.name() == "raylet" for child in root.children(recursive=True))
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
