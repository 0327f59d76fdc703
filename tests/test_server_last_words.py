"""A server's FATAL reaches its client even when our write to it fails first (issue 19.7).

``pg_terminate_backend`` makes the server send FATAL 57P01 and close. If the pooler's
next write to it (the client's next query) fails (EPIPE, ECONNRESET) before the FATAL
was read, the FATAL still sits in the kernel's receive buffer; the frontend driver
reads it and gives it to the engine before reporting the server gone, so the client
sees 57P01 and not the pooler's 08006.

The race is made to happen every time: a fake server (a raw socket in this test) holds
the client's transaction; the pooler, a process of its own, is stopped (SIGSTOP); the
client sends its query, then the fake server sends its FATAL and resets the connection
(SO_LINGER 0); then the pooler resumes. It finds the query first (it arrived first)
and the reset server under it, so its write fails with the FATAL unread. Every
frontend, several rounds each. Without the driver's read of what is left, the asyncio,
uvloop and anyio-on-asyncio frontends fail this every round (08006); on trio and curio
the server's reader task happens to run before the writer fails, so they pass either
way, and the test keeps them so.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass

import psycopg
import pytest
from _daemons import pgsansio
from _frontend_thread import frontend_params
from _pooler import make_config, running

from pgsansio.testing.cluster import TEST_DATABASE, Cluster

ROUNDS = 6
TIMEOUT = 10.0


@dataclass
class _Port:
    """What ``_daemons.pgsansio`` reads of a cluster: its port."""

    port: int


def message(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


def ready(status: bytes) -> bytes:
    return message(b"Z", status)


def complete(tag: str) -> bytes:
    return message(b"C", tag.encode() + b"\0")


def fatal_57p01() -> bytes:
    fields = [
        b"SFATAL",
        b"VFATAL",
        b"C57P01",
        b"Mterminating connection due to administrator command",
    ]
    return message(b"E", b"\0".join(fields) + b"\0\0")


def read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("peer closed")
        data += chunk
    return data


def read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    head = read_exact(sock, 5)
    (length,) = struct.unpack("!I", head[1:])
    return head[:1], read_exact(sock, length - 4)


class FakeServer:
    """A PostgreSQL that trusts everyone, answers every Query with its tag, and on
    ``kill()`` sends the FATAL of ``pg_terminate_backend`` on the connection that holds a
    transaction and resets it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.in_tx = threading.Event()  # set when a connection began a transaction
        self.kill_now = threading.Event()  # the test: end that transaction's server
        self.killed = threading.Event()
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            # As PostgreSQL does; and without it Nagle could hold the FATAL back (the
            # BEGIN's answer unacknowledged) until the reset throws it away.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            (length,) = struct.unpack("!I", read_exact(sock, 4))
            read_exact(sock, length - 4)  # the startup packet: anyone is welcome
            sock.sendall(
                message(b"R", struct.pack("!I", 0))
                + message(b"S", b"server_version\x0015.0\0")
                + message(b"S", b"client_encoding\0UTF8\0")
                + message(b"K", struct.pack("!II", 4242, 1234))
                + ready(b"I")
            )
            status = b"I"
            while True:
                kind, payload = read_message(sock)
                if kind == b"X":
                    return
                if kind == b"Q":
                    text = payload.rstrip(b"\0").decode().strip().upper()
                    if text.startswith("BEGIN"):
                        status = b"T"
                    elif text.startswith(("COMMIT", "ROLLBACK")):
                        status = b"I"
                    sock.sendall(complete(text.split()[0] if text else "EMPTY") + ready(status))
                    if status == b"T":
                        # Hold the transaction until the test says: FATAL and reset
                        # (here, so no recv of this thread keeps the socket open).
                        self.in_tx.set()
                        self.kill_now.wait()
                        self.kill_now.clear()
                        self._kill(sock)
                        self.killed.set()
                        return
        except (OSError, EOFError):
            return

    def kill(self) -> None:
        """End the server of the transaction (see _kill), and wait until it is done."""
        self.killed.clear()
        self.kill_now.set()
        assert self.killed.wait(TIMEOUT)

    def _kill(self, sock: socket.socket) -> None:
        """Send FATAL 57P01, then reset the connection (no FIN: RST at once)."""
        sock.sendall(fatal_57p01())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def close(self) -> None:
        self._stop = True
        self.listener.close()
        for sock in self.conns:
            sock.close()


def client_login(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), TIMEOUT)
    params = b"user\0trust_user\0database\0" + TEST_DATABASE.encode() + b"\0\0"
    body = struct.pack("!I", 196608) + params
    sock.sendall(struct.pack("!I", len(body) + 4) + body)
    while True:
        kind, payload = read_message(sock)
        assert kind != b"E", payload
        if kind == b"Z":
            return sock


def until_error(sock: socket.socket) -> dict[str, str]:
    """The fields of the next ErrorResponse (fails on EOF before one)."""
    while True:
        kind, payload = read_message(sock)
        if kind == b"E":
            return {f[:1].decode(): f[1:].decode() for f in payload.split(b"\0") if f}


@pytest.mark.parametrize("frontend", frontend_params())
def test_fatal_unread_when_a_write_fails_still_reaches_the_client(
    frontend: str, tmp_path: pathlib.Path
) -> None:
    fake = FakeServer()
    try:
        with pgsansio(_Port(fake.port), tmp_path, frontend=frontend, pool_size=2) as pooler:  # type: ignore[arg-type]
            for round_ in range(ROUNDS):
                client = client_login(pooler.port)
                with client:
                    fake.in_tx.clear()
                    client.sendall(message(b"Q", b"BEGIN\0"))
                    kind, _ = read_message(client)
                    assert kind == b"C"
                    assert read_message(client) == (b"Z", b"T")
                    assert fake.in_tx.wait(TIMEOUT)
                    os.kill(pooler.pid, signal.SIGSTOP)
                    try:
                        client.sendall(message(b"Q", b"SELECT 1\0"))
                        time.sleep(0.02)  # the query first, then the FATAL and the reset
                        fake.kill()
                        time.sleep(0.05)
                    finally:
                        os.kill(pooler.pid, signal.SIGCONT)
                    error = until_error(client)
                    assert (error["C"], error["S"]) == ("57P01", "FATAL"), (round_, error)
                    assert "administrator command" in error["M"]
    finally:
        fake.close()


LOADED = 6


@pytest.mark.usefixtures("pooler_frontend")
def test_pg_terminate_backend_under_load_is_57p01_for_every_client(pg15: Cluster) -> None:
    """Real PostgreSQL: clients run statements back to back through the pooler (session
    mode) while every one of their backends is terminated at once; each client's
    statement fails with the server's own 57P01, never the pooler's 08006.

    What a direct connection shows is the bar: there too, a client whose next statement
    reaches the backend after it exited may have its FATAL thrown away by the reset
    (PostgreSQL closes with the statement unread) and libpq then reports the connection
    lost with no SQLSTATE ("lost" here). So "lost" is allowed, a made-up 08006 is not."""
    config = make_config(pg15, pool_mode="session", pool_size=LOADED)
    with running(config) as pooler:
        dsn = pooler.dsn("md5_user") + " connect_timeout=10"
        pids: list[int] = []
        outcomes: list[str] = []
        started = threading.Barrier(LOADED + 1, timeout=TIMEOUT)

        def client() -> None:
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    row = conn.execute("SELECT pg_backend_pid()").fetchone()
                    assert row is not None
                    pids.append(row[0])
                    started.wait()
                    deadline = time.monotonic() + TIMEOUT
                    while time.monotonic() < deadline:
                        conn.execute("SELECT 1").fetchone()
                    outcomes.append("never ended")
            except psycopg.Error as exc:
                # No SQLSTATE: libpq saw the connection end without a message.
                outcomes.append(exc.sqlstate or "lost")

        threads = [threading.Thread(target=client) for _ in range(LOADED)]
        for t in threads:
            t.start()
        started.wait()
        time.sleep(0.05)  # let them run
        with psycopg.connect(pg15.dsn(dbname=TEST_DATABASE), autocommit=True) as admin:
            ended = admin.execute(
                "SELECT count(*) FROM unnest(%s::int[]) AS p WHERE pg_terminate_backend(p)",
                (pids,),
            ).fetchone()
        for t in threads:
            t.join(TIMEOUT + 5)
        assert ended == (LOADED,)
        assert len(outcomes) == LOADED, outcomes
        assert set(outcomes) <= {"57P01", "lost"}, outcomes
        assert "57P01" in outcomes, outcomes
