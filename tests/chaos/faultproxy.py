"""TCP fault proxy for the chaos suite: one listening port forwarding to one upstream, faults switched at runtime.

An asyncio loop on a background thread moves the bytes. It never alters what it forwards: it only delays, holds,
swallows or closes. stop() leaves no task, socket or thread behind.

Modes (each call takes effect before it returns; `heal()` goes back to pass):
  pass         forward both ways.
  delay(ms)    every chunk, both directions, is delivered `ms` after it was read (order kept).
  blackhole()  nothing is forwarded either way; live and new connections stay open. What was sent meanwhile is
               delivered on heal, as TCP retransmission would, unless a side gave up and closed first.
  reset()      every live connection gets a RST (SO_LINGER 0), so does every new one.
  drop()       live connections are closed with a FIN; the port stops listening, so new ones are refused.
  cut_after_commit(marker)  (postgres=True only) arms one cut: on the next connection whose client has sent a
               statement containing `marker`, a simple-query COMMIT is forwarded, the server's reply swallowed and
               both sides closed. The COMMIT happened; its acknowledgement is lost.
  hold_commit(marker)  (postgres=True only) arms one hold: on the next connection whose client has sent a statement
               containing `marker`, everything before its next simple-query COMMIT is forwarded and the COMMIT is
               held: the server waits inside the transaction, the client waits for the COMMIT's answer.
               `release_held(deliver=False)` resets such connections (the COMMIT never reaches the server: the
               transaction rolls back); `release_held(deliver=True)` forwards the COMMIT. heal() resets them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from tests.chaos.pgwire import PgFrontendScanner

LOCALHOST = "127.0.0.1"
_CHUNK = 64 * 1024
_QUEUE_CHUNKS = 64  # per direction; a held link stops reading past this, so TCP buffers fill as on a real network
_CONNECT_TIMEOUT_S = 5.0
_CUT_REPLY_WAIT_S = 5.0
_CALL_TIMEOUT_S = 10.0
_COUNTERS = ("connections", "bytes_up", "bytes_down", "resets", "upstream_failures", "cuts", "holds")


class Mode(enum.Enum):
    PASS = "pass"
    DELAY = "delay"
    BLACKHOLE = "blackhole"
    RESET = "reset"
    DROP = "drop"


@dataclass(frozen=True)
class ProxyStats:
    connections: int  # accepted since start
    active: int  # links open now
    bytes_up: int  # forwarded client -> upstream
    bytes_down: int  # forwarded upstream -> client
    resets: int  # connections closed with RST
    upstream_failures: int  # upstream connect refused or timed out
    cuts: int  # COMMITs forwarded whose acknowledgement was swallowed
    holds: int = 0  # COMMITs held (see hold_commit)


def _abort_with_rst(writer: asyncio.StreamWriter | None) -> None:
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One proxied connection: the client side, the upstream side, and the state of a commit cut."""

    def __init__(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, postgres: bool) -> None:
        self.client_r, self.client_w = client_r, client_w
        self.up_r: asyncio.StreamReader | None = None
        self.up_w: asyncio.StreamWriter | None = None
        self.scanner = PgFrontendScanner() if postgres else None
        self.cutting = False
        self.reply_swallowed = asyncio.Event()
        self.released = asyncio.Event()  # a held COMMIT may go (or the link be reset): see FaultProxy.release_held
        self.deliver_held = False
        self.closed = False

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client_w, self.up_w) if w is not None]

    def close(self) -> None:
        self.closed = True
        for w in self.writers():
            w.close()

    def reset(self) -> None:
        self.closed = True
        for w in self.writers():
            _abort_with_rst(w)


class FaultProxy:
    """Forwards 127.0.0.1:<port> to `upstream_host:upstream_port`; see the module docstring for the faults."""

    def __init__(
        self,
        upstream_port: int,
        upstream_host: str = LOCALHOST,
        *,
        listen_port: int = 0,
        name: str = "proxy",
        postgres: bool = False,
    ) -> None:
        self.upstream_host, self.upstream_port = upstream_host, upstream_port
        self.name = name
        self.postgres = postgres
        self._listen_port = listen_port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._mode = Mode.PASS
        self._delay_s = 0.0
        self._flowing: asyncio.Event | None = None
        self._cut_marker: bytes | None = None
        self._hold_marker: bytes | None = None
        self._holding: set[_Link] = set()
        self._counts = dict.fromkeys(_COUNTERS, 0)

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if not self._listen_port:
            raise RuntimeError(f"{self.name}: no port before start()")
        return self._listen_port

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    def start(self) -> Self:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=f"faultproxy-{self.name}", daemon=True)
        self._thread.start()
        try:
            self._call(self._start())
        except BaseException:
            self.stop()
            raise
        return self

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, LOCALHOST, self._listen_port, reuse_address=True)
        self._listen_port = int(self._server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=_CALL_TIMEOUT_S)
        loop.close()
        self._loop = self._thread = None

    async def _shutdown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self._links):
            link.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()  # after the links: from Python 3.12 it also waits for every connection
        await asyncio.sleep(0)  # let the transports' close callbacks run before the loop stops

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- faults (called from any thread) ---------------------------------------------------------
    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def cut_armed(self) -> bool:
        return self._cut_marker is not None

    def heal(self) -> None:
        self._call(self._set(Mode.PASS))

    def delay(self, ms: float) -> None:
        if ms < 0:
            raise ValueError("delay must be >= 0 ms")
        self._call(self._set(Mode.DELAY, delay_s=ms / 1000.0))

    def blackhole(self) -> None:
        self._call(self._set(Mode.BLACKHOLE))

    def reset(self) -> None:
        self._call(self._set(Mode.RESET))

    def drop(self) -> None:
        self._call(self._set(Mode.DROP))

    def cut_after_commit(self, marker: bytes) -> None:
        if not self.postgres:
            raise RuntimeError(f"{self.name}: cut_after_commit needs a proxy built with postgres=True")
        if not marker:
            raise ValueError("an empty marker would match every connection")
        self._cut_marker = bytes(marker)

    def hold_commit(self, marker: bytes) -> None:
        if not self.postgres:
            raise RuntimeError(f"{self.name}: hold_commit needs a proxy built with postgres=True")
        if not marker:
            raise ValueError("an empty marker would match every connection")
        self._hold_marker = bytes(marker)

    @property
    def held(self) -> int:
        """Connections whose COMMIT is held now."""
        return len(self._holding)

    def release_held(self, deliver: bool = False) -> int:
        """End every hold: forward the COMMITs (`deliver`), or reset their connections so that the COMMITs never
        reach the server. Returns how many were held."""
        return int(self._call(self._release(deliver)))

    async def _release(self, deliver: bool) -> int:
        held = list(self._holding)
        self._holding.clear()
        for link in held:
            link.deliver_held = deliver
            link.released.set()
        return len(held)

    def stats(self) -> ProxyStats:
        return ProxyStats(active=len(self._links), **self._counts)

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if self._loop is None:
            coro.close()
            raise RuntimeError(f"{self.name}: proxy is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_CALL_TIMEOUT_S)

    async def _set(self, mode: Mode, delay_s: float = 0.0) -> None:
        assert self._flowing is not None
        previous, self._mode, self._delay_s = self._mode, mode, delay_s
        if mode is Mode.PASS:
            self._cut_marker = self._hold_marker = None
            await self._release(deliver=False)
        if mode is Mode.BLACKHOLE:
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode is Mode.RESET:
            for link in list(self._links):
                link.reset()
                self._counts["resets"] += 1
        if mode is Mode.DROP:
            server, self._server = self._server, None
            if server is not None:
                server.close()  # stop listening: new connections are refused
            for link in list(self._links):
                link.close()
            if server is not None:
                await server.wait_closed()
        elif previous is Mode.DROP and self._server is None:
            await self._listen()

    # -- forwarding (on the loop) ----------------------------------------------------------------
    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None and self._flowing is not None
        self._tasks.add(task)
        link = _Link(client_r, client_w, self.postgres)
        self._links.add(link)
        self._counts["connections"] += 1
        try:
            if self._mode is Mode.RESET:
                link.reset()
                self._counts["resets"] += 1
                return
            if self._mode is Mode.DROP:  # accepted just before the listener closed
                return
            await self._flowing.wait()  # a blackhole holds new connections too
            if link.closed:
                return
            try:
                link.up_r, link.up_w = await asyncio.wait_for(
                    asyncio.open_connection(self.upstream_host, self.upstream_port), _CONNECT_TIMEOUT_S
                )
            except (OSError, TimeoutError):
                self._counts["upstream_failures"] += 1
                return
            if link.closed:  # reset or dropped while connecting: the new upstream side goes the same way
                if self._mode is Mode.RESET:
                    link.reset()
                else:
                    link.close()
                return
            await self._forward(link, link.up_r, link.up_w)
        except asyncio.CancelledError:
            # Only stop() cancels a connection task. Returning normally keeps asyncio's stream callback from
            # logging every cancelled connection as an error.
            pass
        finally:
            if not link.closed:
                link.close()
            self._links.discard(link)
            self._holding.discard(link)
            self._tasks.discard(task)

    async def _forward(self, link: _Link, up_r: asyncio.StreamReader, up_w: asyncio.StreamWriter) -> None:
        pumps = {
            asyncio.create_task(self._pipe(link, link.client_r, up_w, upstream=True)),
            asyncio.create_task(self._pipe(link, up_r, link.client_w, upstream=False)),
        }
        try:
            # Either side ending ends the link: the pump that ended has delivered everything it read first.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _pipe(self, link: _Link, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, upstream: bool) -> None:
        """One direction. In pass mode the reader writes straight through; otherwise (delay, blackhole, or while
        anything is still held) chunks go through a queue with their read time, so the order is kept."""
        loop = asyncio.get_running_loop()
        flowing = self._flowing
        assert flowing is not None
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(_QUEUE_CHUNKS)
        held = 0

        async def deliver(data: bytes) -> bool:
            """Forward one chunk; False once the link is cut."""
            if link.cutting:
                if not upstream:
                    link.reply_swallowed.set()
                return True  # nothing more crosses a cut link, either way
            if upstream and link.scanner is not None:
                rest = await self._intercept(link, data, dst)
                if rest is None:
                    return False
                data = rest
            dst.write(data)
            # Counted when handed over, before any await: once blackhole() returns, the counters stand still.
            self._counts["bytes_up" if upstream else "bytes_down"] += len(data)
            await dst.drain()
            return True

        async def read() -> bool:
            """True at end of stream (an end marker is queued), False when the link was cut."""
            nonlocal held
            while data := await src.read(_CHUNK):
                if held == 0 and flowing.is_set() and not self._delay_s:
                    if not await deliver(data):
                        return False
                    continue
                held += 1
                await queue.put((loop.time(), data))
            held += 1
            await queue.put(None)
            return True

        async def write() -> None:
            nonlocal held
            while (item := await queue.get()) is not None:
                read_at, data = item
                while True:  # a blackhole that began during the delay holds the chunk too
                    await flowing.wait()
                    if self._delay_s:
                        await asyncio.sleep(max(0.0, read_at + self._delay_s - loop.time()))
                    if flowing.is_set():
                        break
                delivered = await deliver(data)
                held -= 1
                if not delivered:
                    return

        reader, writer = asyncio.create_task(read()), asyncio.create_task(write())
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done and reader.exception() is None and reader.result():
                await writer  # end of stream: what is still held is delivered first
        except OSError:
            return
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)

    async def _intercept(self, link: _Link, data: bytes, dst: asyncio.StreamWriter) -> bytes | None:
        """Scan client bytes; on an armed COMMIT, cut or hold it. Returns what is left to forward (None: the link
        was closed)."""
        assert link.scanner is not None
        commits = link.scanner.feed_commits(data)
        if not commits:
            return data
        if self._hold_marker is not None and link.scanner.carried(self._hold_marker):
            return await self._hold(link, data, max(0, commits[0][0]), dst)
        if self._cut_marker is not None and link.scanner.carried(self._cut_marker):
            await self._cut(link, data, commits[0][1], dst)
            return None
        return data

    async def _hold(self, link: _Link, data: bytes, start: int, dst: asyncio.StreamWriter) -> bytes | None:
        """Forward what precedes the COMMIT, hold the COMMIT until released: then forward it, or reset the link."""
        self._hold_marker = None
        head = data[:start]
        dst.write(head)
        self._counts["bytes_up"] += len(head)
        await dst.drain()
        self._counts["holds"] += 1
        self._holding.add(link)
        await link.released.wait()
        if link.deliver_held:
            return data[start:]
        link.reset()
        self._counts["resets"] += 1
        return None

    async def _cut(self, link: _Link, data: bytes, end: int, dst: asyncio.StreamWriter) -> None:
        """Forward up to the end of the COMMIT, swallow the reply, close."""
        self._cut_marker = None
        link.cutting = True
        head = data[:end]
        dst.write(head)
        self._counts["bytes_up"] += len(head)
        await dst.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(link.reply_swallowed.wait(), _CUT_REPLY_WAIT_S)
        self._counts["cuts"] += 1
        link.close()
