"""`eventpipe run`: one run per data dir (a lock), leftovers of a run that died stopped first, the embedded broker,
PostgreSQL and a Ray head started and recorded, the pipeline deployed, then the supervisor's watch until Ctrl-C or
SIGTERM, then everything stopped in order and checked gone.

The terminal gets the friendly lines and the URLs; JSON logs go to files. It never leaves a process it started.
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
import signal
import time
from contextlib import closing
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.text import Text

from cluster.adapters.key_store import KeyStore
from cluster.adapters.migrations import migrate
from cluster.dev_key import dev_key, key_file
from cluster.local import EmbeddedBroker, EmbeddedPostgres, EmbeddedStartError, LocalStack
from cluster.observability.lag import HighWatermarks, watermark_consumer_config
from cluster.observability.redact import mask_credentials
from cluster.ray_config import (
    RAY_CORE_ENV,
    SERVE_ENV,
    haproxy_env,
    haproxy_wrapper_env,
    loopback_env,
    ray_temp_dir,
    serve_ingress_env,
)
from cluster.ray_head import JoinedRay, RayHead, RayStartError, auth_env
from cluster.run_record import (
    AlreadyRunning,
    ProcTable,
    RecordedProcess,
    Role,
    RunDir,
    RunRecord,
    describe,
    is_running,
    observe,
    still_ours,
    stop_processes,
)
from cluster.settings import SECRET_FIELDS, Settings
from cluster.supervisor import (
    Deployer,
    DeployError,
    Supervisor,
    Unrecoverable,
    read_checkpoints,
    read_log_ends,
    report_loss,
)

log = logging.getLogger(__name__)

# An earlier run's pipeline found still running is drained before it is stopped: the owners' drain deadline (30 s), then
# stopping and releasing the actors.
LEFTOVER_DRAIN_S = 90.0
EXIT_ALREADY_RUNNING = 3
EXIT_UNRECOVERABLE = 4
EXIT_START_FAILED = 5
EXIT_LEFTOVERS_SURVIVE = 6


class Terminal:
    """The lines a user reads: `✓ <component> <address>  <note>`, credentials masked."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def item(self, component: str, address: str, note: str = "", ok: bool = True) -> None:
        mark = Text("✓", style="green") if ok else Text("✗", style="red")
        line = Text.assemble(mark, " ", component.ljust(11), " ", mask_credentials(address))
        if note:
            line.append(f"  {mask_credentials(note)}")
        self.console.print(line, soft_wrap=True)  # a URL cut in two cannot be clicked

    def event(self, text: str, good: bool) -> None:
        """A line from the supervisor while running, with the time: `03:12:09 ✗ Ray died (…)`."""
        mark = Text("✓", style="green") if good else Text("✗", style="bold red")
        stamp = time.strftime("%H:%M:%S")
        body = Text(mask_credentials(text), style="" if good else "bold")
        self.console.print(Text.assemble(stamp, " ", mark, " ", body), soft_wrap=True)


class StopSignals:
    """SIGINT/SIGTERM: while starting, raise KeyboardInterrupt (the start unwinds and stops what it started); while
    watching, only set a flag the loop reads (a handler that takes locks can deadlock the thread it interrupts)."""

    def __init__(self) -> None:
        self.requested = False
        self.interrupting = True
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if self.interrupting:
            self.interrupting = False  # once: the unwinding itself must not be interrupted
            raise KeyboardInterrupt


def ray_env(settings: Settings, token_path: Path | None) -> dict[str, str]:
    """The environment of the Ray head (every worker inherits it) and of the deploy child: secrets included, so
    actors and replicas read them from their own environment, never through Ray. `token_path`: our own head's auth
    token; None for a joined cluster, whose token comes from the caller's environment."""
    env = {**RAY_CORE_ENV, **serve_ingress_env(), **SERVE_ENV, **haproxy_env(settings.data_dir)}
    if token_path is not None:
        env.update(auth_env(token_path))
        env.update(loopback_env(settings))  # our own head only: a joined cluster's node IPs are its own
        env.update(haproxy_wrapper_env(settings))
    for name, variable in SECRET_FIELDS.items():
        value = getattr(settings, name).get_secret_value()
        if value:
            env[variable] = value
    env["EVENTPIPE_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    env["EVENTPIPE_DATA_DIR"] = str(settings.data_dir.resolve())
    return env


def run(settings: Settings, console: Console) -> int:
    out = Terminal(console)
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    run_dir = RunDir(data_dir)
    try:
        run_dir.lock()
    except AlreadyRunning as exc:
        who = f"pid {exc.pid}" if exc.pid else "another process"
        out.item("eventpipe", f"is already running in {data_dir} ({who})", "stop that one first", ok=False)
        return EXIT_ALREADY_RUNNING
    try:
        return _run_locked(settings, run_dir, out)
    finally:
        run_dir.unlock()


def _stop_leftovers(run_dir: RunDir, table: ProcTable, out: Terminal, settings: Settings) -> bool:
    """Stop what the record of an earlier run still names; False (the record kept, survivors named) when some of it
    would not stop: starting next to them would fight over ports and data.

    In order: its pipeline drained while its Ray still answers (its API stopped first, then its owners commit what
    its broker holds, as a Ctrl-C does); its Ray stopped (its API kept acknowledging events into its broker after the
    run died; once Ray is gone nothing more is acknowledged or committed); then what its memory-only broker still
    holds uncommitted counted and said; then the broker and PostgreSQL."""
    previous = run_dir.read()
    leftovers = still_ours(previous, table, run_dir.path.parent)
    if not leftovers:
        return True
    if previous.ray_address and any(p.role == Role.RAY for p in leftovers):
        _drain_leftover_pipeline(previous.ray_address, settings, out)
        # draining reloads Serve's HAProxy (a new process of the same session): look again
        leftovers = still_ours(previous, table, run_dir.path.parent)
    stop_processes([p for p in leftovers if p.role == Role.RAY], table)
    broker = next((p for p in leftovers if p.role == Role.BROKER and is_running(p, table)), None)
    if broker is not None:
        _report_leftover_loss(broker, settings, out)
    stop_processes([p for p in leftovers if p.role != Role.RAY], table)
    survivors = [p for p in leftovers if is_running(p, table)]
    if survivors:
        out.item(
            "Leftovers",
            f"{len(survivors)} processes of an earlier run (pid {previous.supervisor_pid}) survived SIGKILL;"
            " stop them, then start again",
            ok=False,
        )
        for p in survivors:
            out.console.print(f"  {p.role} pid {p.pid}: {shlex.join(p.cmdline)}", soft_wrap=True, markup=False)
        return False
    out.item(
        "Leftovers",
        f"stopped {len(leftovers)} processes of an earlier run (pid {previous.supervisor_pid}) that did not stop them",
        f"({describe(leftovers)})",
    )
    return True


def _drain_leftover_pipeline(address: str, settings: Settings, out: Terminal) -> None:
    """`deploy down` against an earlier run's Ray: its API stops acknowledging, its owners commit what its broker
    holds (up to the drain deadline). A Ray that no longer answers is said and left to be stopped."""
    token_path = settings.data_dir.resolve() / "ray" / "auth_token"
    env = ray_env(settings, token_path) | {"EVENTPIPE_RAY_ADDRESS": address}
    try:
        Deployer(env, settings.data_dir.resolve() / "logs" / "deploy.log").run("down", timeout_s=LEFTOVER_DRAIN_S)
    except DeployError as exc:
        out.event(f"the earlier run's pipeline could not be drained ({exc}); stopping it", False)
        return
    out.event("the earlier run's pipeline drained: its API stopped, its owners committed what they had", True)


def _report_leftover_loss(broker: RecordedProcess, settings: Settings, out: Terminal) -> None:
    """The `LOST:` line for an earlier run's embedded broker about to be stopped: its log ends against the committed
    checkpoints (its Ray is stopped: both are final)."""
    bootstrap = EmbeddedBroker.bootstrap_of(broker.cmdline)
    db_url = settings.database_url.get_secret_value() or EmbeddedPostgres(settings.data_dir).live_url()
    checkpoints = read_checkpoints(db_url) if db_url else None
    if bootstrap is None or checkpoints is None:
        out.event("LOST: unknown — the earlier run's broker or checkpoints could not be read; stopping it", False)
        return
    committed = {tp: offset for tp, (offset, _) in checkpoints.items()}
    watermarks = HighWatermarks(watermark_consumer_config(bootstrap) | {"logger": log})
    try:
        highs = read_log_ends(watermarks, settings, committed, timeout_s=10.0)
    finally:
        watermarks.close()
    report_loss(
        out.event,
        highs,
        committed,
        log_ends="the earlier run's broker's log ends",
        unknown="the earlier run's broker did not answer; stopping it",
    )


def _record_started(run_dir: RunDir, record: RunRecord, table: ProcTable, role: str, pid: int) -> None:
    """Record a process the moment it exists: a SIGKILL of this run right after must leave nothing unknown."""
    stop_signal = signal.SIGINT if role == Role.POSTGRES else signal.SIGTERM
    record.processes = [p for p in record.processes if p.role != role] + [observe(role, pid, table, stop_signal)]
    run_dir.write(record)


def _record_sessions(run_dir: RunDir, record: RunRecord, sessions: list[int]) -> None:
    record.ray_sessions = sessions
    run_dir.write(record)


def _run_locked(settings: Settings, run_dir: RunDir, out: Terminal) -> int:
    table = ProcTable()
    signals = StopSignals()
    if not _stop_leftovers(run_dir, table, out, settings):
        return EXIT_LEFTOVERS_SURVIVE
    record = RunRecord(supervisor_pid=os.getpid())
    run_dir.write(record)
    out.console.print(f"[bold]eventpipe[/] starting in {settings.data_dir} …")
    stack = LocalStack(settings, functools.partial(_record_started, run_dir, record, table))
    supervisor: Supervisor | None = None
    code = 0
    try:
        resolved = stack.__enter__()
        url = resolved.database_url.get_secret_value()
        applied = migrate(url)
        out.item("PostgreSQL", url, f"({len(applied)} migrations applied now)" if applied else "(schema up to date)")
        out.item("Kafka", resolved.kafka_bootstrap)
        api_key = _api_key(resolved, url)
        token_path = resolved.data_dir.resolve() / "ray" / "auth_token"
        env = ray_env(resolved, None if resolved.ray_address else token_path)
        head: RayHead | JoinedRay = (
            JoinedRay(resolved.ray_address)
            if resolved.ray_address
            else RayHead(
                resolved.data_dir,
                env,
                resolved.dashboard_port,
                table,
                ray_temp_dir(resolved.data_dir),
                functools.partial(_record_sessions, run_dir, record),
            )
        )
        deployer = Deployer(env, resolved.data_dir.resolve() / "logs" / "deploy.log")
        supervisor = Supervisor(
            resolved,
            run_dir,
            record,
            table,
            head,
            deployer,
            out.event,
            broker=stack.broker,
            postgres=next((p for p in record.processes if p.role == Role.POSTGRES), None),
            restart_postgres=(lambda dead: _restart_postgres(stack, table, dead)) if stack.postgres else None,
        )
        with out.console.status("starting Ray, then the leader, checkpoint writers, partition owners and the API…"):
            supervisor.start_ray_and_pipeline()
        _banner(resolved, head, token_path, supervisor, out, api_key)
        signals.interrupting = False
        if signals.requested:
            return 0
        supervisor.watch(lambda: signals.requested)
    except KeyboardInterrupt:
        out.console.print("stopping: interrupted while starting")
    except (DeployError, EmbeddedStartError, RayStartError) as exc:
        out.event(f"could not start: {exc}", False)
        code = EXIT_START_FAILED
    except Unrecoverable as exc:
        out.event(f"giving up: {exc}; stopping everything", False)
        code = EXIT_UNRECOVERABLE
    finally:
        signals.interrupting = False
        _stop_all(stack, supervisor, run_dir, record, table, out)
    return code


def _api_key(settings: Settings, database_url: str) -> str | None:
    """The development key (made on the first start, or when the database no longer holds the file's key); None
    with a WARNING when API keys are off."""
    if not settings.auth_enabled:
        log.warning("API keys are off (auth_enabled=false): anyone who reaches the API writes and reads everything")
        return None
    with closing(KeyStore(database_url)) as store:
        key, made = dev_key(
            store, settings.data_dir, settings.rate_limit_requests_per_minute, settings.rate_limit_events_per_minute
        )
    if made:
        log.info("made the development API key 'dev' (file %s)", key_file(settings.data_dir))
    return key


def _banner(
    settings: Settings,
    head: RayHead | JoinedRay,
    token_path: Path,
    supervisor: Supervisor,
    out: Terminal,
    api_key: str | None,
) -> None:
    deployed = supervisor.deployed
    owners = deployed.owners if deployed else 0
    out.item("Processing", f"{owners} partition owners, {settings.checkpoint_writers} checkpoint writers")
    base = f"http://{settings.http_host}:{settings.http_port}"
    out.item("HTTP API", base, "(docs: /docs, schemas: /schemas)")
    if api_key is None:
        out.item("API key", "none needed: auth_enabled is false, anyone who reaches the API may use it", ok=False)
    else:
        where = _shown(key_file(settings.data_dir))
        out.console.print(f"API key: {api_key}", markup=False, soft_wrap=True)
        out.console.print(
            f'  (in {where}, mode 0600: curl -H "Authorization: Bearer $(cat {where})" {base}/schemas)',
            markup=False,
            soft_wrap=True,
        )
    hub = deployed.metrics_url if deployed else None
    if hub is None:
        out.item("Metrics", f"port {settings.metrics_port} is taken: no /metrics, no status page", ok=False)
    else:
        out.item("Status page", f"{hub}/status", "(Prometheus: /metrics)")
    if isinstance(head, JoinedRay):
        out.item("Ray", head.address, "(joined; its dashboard and logs are where that cluster runs)")
    else:
        dashboard = f"http://127.0.0.1:{settings.dashboard_port}"
        shown = _shown(token_path)
        out.item(
            "Dashboard",
            dashboard,
            f"(Ray asks for its token: cat {shown}, or RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={shown} "
            "ray get-auth-token)",
        )
    out.item("Logs", f"{_shown(settings.data_dir / 'logs')}/", "(JSON lines; --verbose shows them here)")
    if head.log_dir:
        out.item("Ray logs", f"{head.log_dir}/")
    out.console.print("[bold]eventpipe is running.[/] Ctrl-C stops it (API first, then drain, then the rest).")


def _shown(path: Path) -> str:
    """A path relative to the working directory when it is below it (shorter on screen)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path.resolve())


def _stop_all(
    stack: LocalStack,
    supervisor: Supervisor | None,
    run_dir: RunDir,
    record: RunRecord,
    table: ProcTable,
    out: Terminal,
) -> None:
    # Each step runs even when the one before it failed: the final sweep by the record must always run.
    t0 = time.monotonic()
    try:
        with out.console.status("stopping: API, then draining partition owners, then Ray…"):
            if supervisor is not None:
                try:
                    supervisor.stop_ray(drain=True)
                finally:
                    supervisor.close()
    finally:
        t1 = time.monotonic()
        try:
            with out.console.status("stopping the broker and PostgreSQL…"):
                stack.__exit__(None, None, None)
        finally:
            t2 = time.monotonic()
            _sweep(
                run_dir,
                record,
                table,
                out,
                f"pipeline and Ray in {t1 - t0:.1f}s, broker and PostgreSQL in {t2 - t1:.1f}s",
            )


def _sweep(run_dir: RunDir, record: RunRecord, table: ProcTable, out: Terminal, took: str) -> None:
    """Stop whatever the record still names (what an earlier step failed to stop); the record is kept if any stays."""
    left = still_ours(record, table, run_dir.path.parent)
    if left:
        stop_processes(left, table, grace_s=5.0)
        left = [p for p in left if is_running(p, table)]
    if left:
        out.item("Stopped", f"but {len(left)} processes would not stop: {describe(left)}", ok=False)
        run_dir.write(record)
        return
    run_dir.record_path.unlink(missing_ok=True)
    out.item("Stopped", took, "(nothing left running)")
    out.console.print(f"  data kept in {_shown(run_dir.path.parent)}")


def _restart_postgres(stack: LocalStack, table: ProcTable, dead: RecordedProcess) -> RecordedProcess:
    if stack.postgres is None:
        raise RuntimeError("no embedded PostgreSQL to restart")
    stack.postgres.forget_dead_postmaster(dead.pid)
    stack.postgres.start()
    return observe(Role.POSTGRES, stack.postgres.pid, table, signal.SIGINT)
