"""Specification of the TCP fault proxy: every mode, against a local echo server (no Ray, no broker, no database).

It must stay fast: each test waits at most a few hundred milliseconds for what must not arrive.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from tests.chaos.faultproxy import FaultProxy, Mode
from tests.chaos.pgwire import PgFrontendScanner

QUIET_S = 0.4  # how long "nothing arrives" is watched for
QUIT = b"<quit>"  # the echo server closes the connection on this


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.received = bytearray()
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: _EchoServer = self.server  # type: ignore[assignment]
        with contextlib.suppress(ConnectionError):  # the reset test resets this side too
            while (data := self.request.recv(65536)) and data != QUIT:
                with server.lock:
                    server.received += data
                self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[_EchoServer]:
    server = _EchoServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo: _EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy(echo.port, name="echo", postgres=True) as running:
        yield running


def _connect(proxy: FaultProxy, timeout_s: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout_s)
    sock.settimeout(timeout_s)
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def _nothing_arrives(sock: socket.socket) -> bool:
    sock.settimeout(QUIET_S)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(5.0)
    return False


def _round_trip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    return _recv_exactly(sock, len(payload))


def _wait(condition, what: str, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# -- PostgreSQL frontend framing -----------------------------------------------------------------
def _startup() -> bytes:
    body = struct.pack("!i", 196608) + b"user\0postgres\0\0"
    return struct.pack("!i", len(body) + 4) + body


def _ssl_request() -> bytes:
    return struct.pack("!ii", 8, 80877103)


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _query(text: bytes) -> bytes:
    return _message(b"Q", text + b"\0")


def _parse(name: bytes, text: bytes) -> bytes:
    return _message(b"P", name + b"\0" + text + b"\0" + struct.pack("!h", 0))


# -- pass and counters ---------------------------------------------------------------------------
def test_pass_forwards_both_ways_and_counts(proxy: FaultProxy) -> None:
    with _connect(proxy) as sock:
        assert _round_trip(sock, b"hello" * 1000) == b"hello" * 1000
        _wait(lambda: proxy.stats().bytes_down == 5000, "the echo to be counted")
        stats = proxy.stats()
        assert (stats.connections, stats.active, stats.bytes_up) == (1, 1, 5000)
    _wait(lambda: proxy.stats().active == 0, "the link to close after the client left")


def test_dead_upstream_closes_the_client_connection(echo: _EchoServer) -> None:
    # given a proxy whose upstream port has nothing listening
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        dead_port = placeholder.getsockname()[1]
    with FaultProxy(dead_port, name="dead") as proxy, _connect(proxy) as sock:
        # then the client's connection is closed, not left hanging
        assert sock.recv(1) == b""
        assert proxy.stats().upstream_failures == 1
        _wait(lambda: proxy.stats().active == 0, "the link to go")


def test_upstream_closing_closes_the_client_side(proxy: FaultProxy) -> None:
    with _connect(proxy) as sock:
        assert _round_trip(sock, b"x") == b"x"
        # when the upstream server ends the connection
        sock.sendall(QUIT)
        # then the client sees the close too, and the link is gone
        assert sock.recv(1) == b""
    _wait(lambda: proxy.stats().active == 0, "the link to go")


# -- delay ---------------------------------------------------------------------------------------
def test_delay_holds_every_chunk_in_both_directions_and_keeps_order(proxy: FaultProxy) -> None:
    with _connect(proxy) as sock:
        proxy.delay(150)
        assert proxy.mode is Mode.DELAY
        started = time.monotonic()
        for n in range(5):
            sock.sendall(f"<{n}>".encode())
        assert _recv_exactly(sock, 15) == b"<0><1><2><3><4>"
        # 150 ms up plus 150 ms down; the five chunks overlap, so it is not five times that
        assert 0.3 <= time.monotonic() - started < 1.5
        proxy.heal()
        started = time.monotonic()
        assert _round_trip(sock, b"fast") == b"fast"
        assert time.monotonic() - started < 0.3


# -- blackhole -----------------------------------------------------------------------------------
def test_blackhole_forwards_nothing_keeps_connections_open_and_delivers_on_heal(proxy: FaultProxy) -> None:
    with _connect(proxy) as live:
        assert _round_trip(live, b"before") == b"before"
        proxy.blackhole()
        live.sendall(b"during")
        with _connect(proxy) as new:  # new connections are accepted ...
            new.sendall(b"new")
            assert _nothing_arrives(live)  # ... and neither gets anything
            assert _nothing_arrives(new)
            assert proxy.stats().bytes_up == len(b"before")
            proxy.heal()
            # what was sent meanwhile arrives, as TCP would retransmit it after a partition heals
            assert _recv_exactly(live, 6) == b"during"
            assert _recv_exactly(new, 3) == b"new"


# -- reset ---------------------------------------------------------------------------------------
def test_reset_sends_rst_to_live_and_new_connections(proxy: FaultProxy) -> None:
    with _connect(proxy) as live:
        assert _round_trip(live, b"ping") == b"ping"
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            live.sendall(b"x")
            live.recv(1)
        with pytest.raises(ConnectionResetError), _connect(proxy) as new:  # the RST may beat connect() returning
            new.recv(1)
        assert proxy.stats().resets == 2
    proxy.heal()
    with _connect(proxy) as after:
        assert _round_trip(after, b"back") == b"back"


# -- drop ----------------------------------------------------------------------------------------
def test_drop_closes_live_connections_with_fin_and_refuses_new_ones(proxy: FaultProxy) -> None:
    port = proxy.port
    with _connect(proxy) as live:
        assert _round_trip(live, b"ping") == b"ping"
        proxy.drop()
        assert live.recv(1) == b""  # an orderly close, not a reset
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2.0)
    proxy.heal()
    assert proxy.port == port
    with _connect(proxy) as after:
        assert _round_trip(after, b"back") == b"back"


# -- cut after commit ----------------------------------------------------------------------------
def test_cut_after_commit_forwards_the_commit_swallows_its_reply_and_closes(
    proxy: FaultProxy, echo: _EchoServer
) -> None:
    marker = b"advanced AS"
    commit = _query(b"COMMIT")
    with _connect(proxy) as writer, _connect(proxy) as bystander:
        # given a connection that prepared the marked statement before the cut was armed, and one that did not
        prepared = _ssl_request() + _startup() + _parse(b"_pg3_0", b"WITH doc AS (...), advanced AS (UPDATE ...)")
        assert _round_trip(writer, prepared) == prepared
        plain = _startup() + _query(b"BEGIN")
        assert _round_trip(bystander, plain) == plain
        proxy.cut_after_commit(marker)
        assert proxy.cut_armed
        # when the unmarked connection commits, nothing happens to it
        assert _round_trip(bystander, commit) == commit
        # when the marked one commits
        writer.sendall(_query(b"BEGIN") + commit)
        # then the server got the COMMIT, the client gets no reply, only the close
        _wait(lambda: echo.received.endswith(commit + _query(b"BEGIN") + commit), "the COMMIT at the server")
        received = bytearray()
        while chunk := writer.recv(65536):
            received += chunk
        assert bytes(received) in (b"", _query(b"BEGIN"))  # at most the earlier reply, never the COMMIT's
        assert proxy.stats().cuts == 1
        assert not proxy.cut_armed
        # and the cut is one-shot: the bystander still works
        assert _round_trip(bystander, commit) == commit


def test_cut_waits_for_a_connection_that_carried_the_marker(proxy: FaultProxy, echo: _EchoServer) -> None:
    proxy.cut_after_commit(b"advanced AS")
    with _connect(proxy) as sock:
        hello = _startup() + _query(b"commit;")
        assert _round_trip(sock, hello) == hello  # lower case, but this connection never carried the marker
        sock.sendall(_parse(b"", b"SELECT 1 FROM advanced AS a"))
        sock.sendall(_query(b"commit"))
        _wait(lambda: proxy.stats().cuts == 1, "the cut")
    assert echo.received.endswith(_query(b"commit"))


def test_hold_keeps_the_commit_from_the_server_until_released(proxy: FaultProxy, echo: _EchoServer) -> None:
    marker, commit = b"advanced AS", _query(b"COMMIT")
    with _connect(proxy) as writer, _connect(proxy) as bystander:
        # given a connection that carried the marked statement, and one that did not
        prepared = _ssl_request() + _startup() + _parse(b"_pg3_0", b"WITH doc AS (...), advanced AS (UPDATE ...)")
        assert _round_trip(writer, prepared) == prepared
        assert _round_trip(bystander, _startup()) == _startup()
        proxy.hold_commit(marker)
        # when both commit (the marked one in the same chunk as the statement before it)
        assert _round_trip(bystander, commit) == commit
        writer.sendall(_query(b"UPDATE x") + commit)
        # then what preceded the COMMIT reached the server, the COMMIT itself did not, and the client waits
        _wait(lambda: proxy.held == 1, "the COMMIT to be held")
        _wait(lambda: echo.received.endswith(_query(b"UPDATE x")), "the statement before the COMMIT")
        assert _recv_exactly(writer, len(_query(b"UPDATE x"))) == _query(b"UPDATE x")
        assert _nothing_arrives(writer)
        assert not echo.received.endswith(commit) and proxy.stats().holds == 1
        # and released without delivery, its connection is reset: the COMMIT never reaches the server
        assert proxy.release_held() == 1
        with pytest.raises(ConnectionError):
            while writer.recv(65536):
                pass
        assert echo.received.endswith(_query(b"UPDATE x"))
        # the hold is one-shot: the bystander still commits
        assert _round_trip(bystander, commit) == commit


def test_a_held_commit_released_with_delivery_reaches_the_server(proxy: FaultProxy, echo: _EchoServer) -> None:
    with _connect(proxy) as writer:
        writer.sendall(_startup() + _parse(b"", b"... advanced AS ..."))
        proxy.hold_commit(b"advanced AS")
        writer.sendall(_query(b"COMMIT"))
        _wait(lambda: proxy.held == 1, "the COMMIT to be held")
        assert proxy.release_held(deliver=True) == 1
        _wait(lambda: echo.received.endswith(_query(b"COMMIT")), "the COMMIT at the server")
        assert proxy.held == 0


def test_heal_resets_a_held_commit(proxy: FaultProxy, echo: _EchoServer) -> None:
    with _connect(proxy) as writer:
        writer.sendall(_startup() + _parse(b"", b"... advanced AS ..."))
        proxy.hold_commit(b"advanced AS")
        writer.sendall(_query(b"COMMIT"))
        _wait(lambda: proxy.held == 1, "the COMMIT to be held")
        proxy.heal()
        assert proxy.held == 0
        with pytest.raises(ConnectionError):
            while writer.recv(65536):
                pass
    assert not echo.received.endswith(_query(b"COMMIT"))


def test_cut_needs_a_postgres_proxy(echo: _EchoServer) -> None:
    with FaultProxy(echo.port, name="raw") as raw, pytest.raises(RuntimeError, match="postgres=True"):
        raw.cut_after_commit(b"x")


def test_scanner_finds_commits_across_arbitrary_chunking() -> None:
    stream = (
        _ssl_request()
        + _startup()
        + _parse(b"s1", b"INSERT ... advanced AS ...")
        + _message(b"B", b"\0" * 70_000)
        + _query(b"COMMIT")
        + _query(b"SELECT 'COMMIT'")
        + _query(b" Commit ")
    )
    scanner = PgFrontendScanner()
    ends = [i + 1 for i in range(len(stream)) for _ in scanner.feed(stream[i : i + 1])]
    assert len(ends) == 2
    assert stream[: ends[0]].endswith(_query(b"COMMIT"))
    assert ends[1] == len(stream)
    # the (start, end) of each COMMIT message, whatever the chunking
    spans = PgFrontendScanner().feed_commits(stream)
    assert [stream[a:b] for a, b in spans] == [_query(b"COMMIT"), _query(b" Commit ")]
    assert scanner.carried(b"advanced AS") and not scanner.carried(b"nowhere")


def test_stop_closes_connections_and_ends_the_thread(echo: _EchoServer) -> None:
    proxy = FaultProxy(echo.port, name="stopping").start()
    sock = _connect(proxy)
    try:
        assert _round_trip(sock, b"x") == b"x"
        proxy.blackhole()
        proxy.stop()
        assert sock.recv(1) == b""
        assert not any(t.name == "faultproxy-stopping" for t in threading.enumerate())
    finally:
        sock.close()
