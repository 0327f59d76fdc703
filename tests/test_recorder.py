"""The recording relay (pgsansio.conformance.recorder) and the ``pgsansio record`` command."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pgsansio.cli import parse_host_port
from pgsansio.conformance.recorder import RecordingRelay
from pgsansio.conformance.trace import Chunk, read_trace
from pgsansio.testing.cluster import TEST_DATABASE, Cluster

pytestmark = pytest.mark.timeout(60)

Handler = Callable[[socket.socket], None]


class TcpServer:
    """A threaded TCP server running ``handler`` once per connection."""

    def __init__(self, handler: Handler) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.errors: list[BaseException] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(20)
                self.handler(conn)
        except BaseException as e:  # reported by the test
            self.errors.append(e)

    def close(self) -> None:
        self.sock.close()


def echo_upper(conn: socket.socket) -> None:
    """Echo every chunk upper-cased; on EOF, say "bye" and close the sending half."""
    while data := conn.recv(65536):
        conn.sendall(data.upper())
    with contextlib.suppress(OSError):  # the relay may have reset the connection
        conn.sendall(b"bye")
        conn.shutdown(socket.SHUT_WR)


@pytest.fixture
def echo() -> Iterator[TcpServer]:
    server = TcpServer(echo_upper)
    yield server
    server.close()
    assert not server.errors


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        data = sock.recv(n - len(out))
        assert data, "connection closed early"
        out += data
    return out


def recv_all(sock: socket.socket) -> bytes:
    out = b""
    while data := sock.recv(65536):
        out += data
    return out


def test_chunks_and_half_close_are_recorded(tmp_path: Path, echo: TcpServer) -> None:
    relay = RecordingRelay("127.0.0.1", 0, "127.0.0.1", echo.port, tmp_path, meta={"s": "x"})
    with relay, socket.create_connection(("127.0.0.1", relay.port), timeout=20) as c:
        for piece in (b"first", b"\x00\xffsecond", b"third"):
            c.sendall(piece)
            assert recv_exactly(c, len(piece)) == piece.upper()
        # Half-close: the server still answers after our EOF, through the relay.
        c.shutdown(socket.SHUT_WR)
        assert recv_all(c) == b"bye"
    (record,) = relay.records
    assert record.connection == 1 and record.closed and record.error is None
    assert record.client_bytes == 18 and record.server_bytes == 21
    assert record.path == tmp_path / "c1.jsonl"
    trace = read_trace(tmp_path / "c1.jsonl")
    assert trace.header == {"format": "pgsansio-trace", "version": 1, "connection": 1, "s": "x"}
    assert trace.chunks_of("F") == [b"first", b"\x00\xffsecond", b"third"]
    assert trace.stream("B") == b"FIRST\x00\xffSECONDTHIRDbye"
    directions = [(c.direction, c.eof) for c in trace.chunks]
    assert directions[:6] == [("F", False), ("B", False)] * 3
    # The client's EOF comes first, the server's "bye" after it, then the server's EOF.
    assert directions[6] == ("F", True)
    assert directions[-1] == ("B", True)
    assert trace.stream("F") == b"first\x00\xffsecondthird"


def test_server_closing_first(tmp_path: Path) -> None:
    def greet_and_close(conn: socket.socket) -> None:
        conn.sendall(b"FATAL")

    server = TcpServer(greet_and_close)
    relay = RecordingRelay("127.0.0.1", 0, "127.0.0.1", server.port, tmp_path)
    with relay, socket.create_connection(("127.0.0.1", relay.port), timeout=20) as c:
        assert recv_all(c) == b"FATAL"
        c.sendall(b"too late")  # a client may still write into the closed connection
    server.close()
    trace = read_trace(tmp_path / "c1.jsonl")
    assert trace.chunks[0] == Chunk("B", trace.chunks[0].t_us, b"FATAL")
    assert trace.chunks[1].direction == "B" and trace.chunks[1].eof
    assert trace.eof("F")


def test_connection_ids_follow_accept_order(tmp_path: Path, echo: TcpServer) -> None:
    with RecordingRelay("127.0.0.1", 0, "127.0.0.1", echo.port, tmp_path) as relay:
        first = socket.create_connection(("127.0.0.1", relay.port), timeout=20)
        first.sendall(b"one")
        recv_exactly(first, 3)
        second = socket.create_connection(("127.0.0.1", relay.port), timeout=20)
        second.sendall(b"two")
        recv_exactly(second, 3)
        for s in (second, first):
            s.shutdown(socket.SHUT_WR)
            recv_all(s)
            s.close()
    assert [r.connection for r in relay.records] == [1, 2]
    assert read_trace(tmp_path / "c1.jsonl").stream("F") == b"one"
    assert read_trace(tmp_path / "c2.jsonl").stream("F") == b"two"


def test_big_traces_are_compressed(tmp_path: Path, echo: TcpServer) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    with (
        RecordingRelay(
            "127.0.0.1", 0, "127.0.0.1", echo.port, tmp_path, compress_above=64 * 1024
        ) as relay,
        socket.create_connection(("127.0.0.1", relay.port), timeout=20) as c,
    ):

        def send() -> None:
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        got = recv_all(c)
        sender.join()
    assert got == payload.upper() + b"bye"
    assert not (tmp_path / "c1.jsonl").exists()
    trace = read_trace(tmp_path / "c1.jsonl.gz")
    assert trace.stream("F") == payload
    assert trace.stream("B") == payload.upper() + b"bye"
    assert relay.records[0].path == tmp_path / "c1.jsonl.gz"


def test_unreachable_target(tmp_path: Path) -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    dead_port = probe.getsockname()[1]
    probe.close()
    relay = RecordingRelay("127.0.0.1", 0, "127.0.0.1", dead_port, tmp_path)
    with relay, socket.create_connection(("127.0.0.1", relay.port), timeout=20) as c:
        assert recv_all(c) == b""
    (record,) = relay.records
    assert record.path is None and "cannot connect" in (record.error or "")
    assert list(tmp_path.iterdir()) == []


def test_stop_closes_lingering_connections(tmp_path: Path, echo: TcpServer) -> None:
    relay = RecordingRelay("127.0.0.1", 0, "127.0.0.1", echo.port, tmp_path)
    relay.start()
    c = socket.create_connection(("127.0.0.1", relay.port), timeout=20)
    c.sendall(b"idle")
    recv_exactly(c, 4)
    started = time.monotonic()
    relay.stop(timeout=0.2)
    assert time.monotonic() - started < 10
    (record,) = relay.records
    assert record.forced_close and record.closed
    trace = read_trace(tmp_path / "c1.jsonl")  # complete: both directions end with eof
    assert trace.stream("F") == b"idle" and trace.eof("F") and trace.eof("B")
    c.close()


def test_start_fails_when_the_port_is_taken(tmp_path: Path) -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        relay = RecordingRelay("127.0.0.1", taken.getsockname()[1], "127.0.0.1", 1, tmp_path)
        with pytest.raises(OSError):
            relay.start()
    finally:
        taken.close()


def _startup(user: str, dbname: str) -> bytes:
    body = struct.pack("!i", 3 << 16) + b"user\0" + user.encode() + b"\0database\0"
    body += dbname.encode() + b"\0\0"
    return struct.pack("!i", len(body) + 4) + body


def test_real_postgres_conversation(tmp_path: Path, pg15: Cluster) -> None:
    with (
        RecordingRelay("127.0.0.1", 0, pg15.host, pg15.port, tmp_path) as relay,
        socket.create_connection(("127.0.0.1", relay.port), timeout=20) as c,
    ):
        c.sendall(_startup("trust_user", TEST_DATABASE))
        received = b""
        while not received.endswith(b"Z\x00\x00\x00\x05I"):
            received += c.recv(65536)
        c.sendall(b"X\x00\x00\x00\x04")
        received += recv_all(c)
    trace = read_trace(tmp_path / "c1.jsonl")
    assert trace.stream("F") == _startup("trust_user", TEST_DATABASE) + b"X\x00\x00\x00\x04"
    assert trace.stream("B") == received
    assert trace.stream("B").startswith(b"R\x00\x00\x00\x08\x00\x00\x00\x00")
    assert trace.eof("F") and trace.eof("B")


# ---------------------------------------------------------------------------------------
# pgsansio record


def test_parse_host_port() -> None:
    assert parse_host_port("db.example:5433") == ("db.example", 5433)
    assert parse_host_port("[::1]:6432") == ("::1", 6432)
    assert parse_host_port(":7000") == ("127.0.0.1", 7000)
    assert parse_host_port("6543") == ("127.0.0.1", 6543)
    for bad in ("localhost", "host:port", "host:70000"):
        with pytest.raises(ValueError):
            parse_host_port(bad)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pgsansio", *args]


def test_record_command(tmp_path: Path, echo: TcpServer) -> None:
    out = tmp_path / "traces"
    proc = subprocess.Popen(
        _cli(
            "record",
            "--listen",
            "127.0.0.1:0",
            "--target",
            f"127.0.0.1:{echo.port}",
            "--out",
            str(out),
            "--meta",
            "who=test",
        ),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        port = None
        while port is None:
            line = proc.stderr.readline()
            assert line, "pgsansio record exited early"
            if m := re.search(r"connect clients to 127\.0\.0\.1:(\d+)", line):
                port = int(m.group(1))
        with socket.create_connection(("127.0.0.1", port), timeout=20) as c:
            c.sendall(b"ping")
            recv_exactly(c, 4)
            c.shutdown(socket.SHUT_WR)
            recv_all(c)
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=20) == 0, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert re.search(r"c1 closed after [\d.]+s: client sent 4 bytes, server sent 7 bytes", rest)
    assert "wrote 1 trace(s)" in rest
    trace = read_trace(out / "c1.jsonl")
    assert trace.header["who"] == "test" and trace.header["recorder"] == "pgsansio-relay-1"
    assert trace.stream("F") == b"ping"


def test_record_refuses_a_directory_with_traces(tmp_path: Path) -> None:
    (tmp_path / "c1.jsonl").write_text("old")
    proc = subprocess.run(
        _cli("record", "--target", "127.0.0.1:1", "--out", str(tmp_path), "--listen", ":0"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1
    assert "already holds traces" in proc.stderr and "--overwrite" in proc.stderr


def test_record_rejects_bad_addresses() -> None:
    proc = subprocess.run(
        _cli("record", "--target", "nowhere", "--out", "x"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2 and "HOST:PORT" in proc.stderr


def test_cli_without_typer() -> None:
    code = "import sys; sys.modules['typer'] = None; from pgsansio.cli import main; main([])"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0
    assert "pip install typer (pgsansio's 'cli' extra)" in proc.stderr
