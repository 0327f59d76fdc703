"""Raw-socket helpers for the reliability tests: a client that can misbehave on purpose.

libpq and psycopg always read what arrives and send whole messages; the reliability
tests need a client that stops reading, sends its startup packet a byte at a time or
half of a huge message, so they speak the wire protocol themselves here (the pooler's
own protocol package would hide exactly the framing under test).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator

_HEADER = struct.Struct("!ci")


def startup_packet(user: str, database: str) -> bytes:
    body = struct.pack("!i", 196608)
    for key, value in (("user", user), ("database", database)):
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def message(kind: bytes, body: bytes) -> bytes:
    return _HEADER.pack(kind, len(body) + 4) + body


def message_header(kind: bytes, length: int) -> bytes:
    """The header of a message of type ``kind`` whose length word is ``length``."""
    return _HEADER.pack(kind, length)


def query(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\0")


def read_messages(sock: socket.socket, until: bytes = b"Z", timeout: float = 30) -> list[bytes]:
    """Read whole messages (kind + body) up to and including the first of kind ``until``."""
    sock.settimeout(timeout)
    buf = bytearray()
    out: list[bytes] = []
    while True:
        while len(buf) >= 5:
            kind, length = _HEADER.unpack_from(buf)
            if len(buf) < 1 + length:
                break
            out.append(bytes(buf[: 1 + length]))
            del buf[: 1 + length]
            if kind == until:
                return out
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError(f"EOF after {[m[:1] for m in out]}")
        buf += chunk


def error_fields(msg: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse/NoticeResponse message (kind byte included)."""
    fields: dict[str, str] = {}
    for part in msg[5:].split(b"\0"):
        if part:
            fields[part[:1].decode()] = part[1:].decode()
    return fields


def login(port: int, user: str, database: str, *, rcvbuf: int = 0) -> socket.socket:
    """A logged-in raw client (a trust user); ``rcvbuf`` shrinks its receive buffer."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.sendall(startup_packet(user, database))
    msgs = read_messages(sock)
    assert msgs[-1][:1] == b"Z", msgs
    return sock


def drain_result(sock: socket.socket, timeout: float = 60) -> tuple[int, bytes]:
    """Read a result to its ReadyForQuery counting bytes; (bytes read, last 64 bytes)."""
    sock.settimeout(timeout)
    total = 0
    tail = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError(f"EOF after {total} bytes")
        total += len(chunk)
        tail = (tail + chunk)[-64:]
        if tail.endswith(b"Z\x00\x00\x00\x05I"):
            return total, tail
    raise TimeoutError(f"no ReadyForQuery after {total} bytes")


def own_sockets() -> Iterator[socket.socket]:
    """Every TCP socket this process holds, as duplicates (close them after use).

    The pooler runs in a thread of the test process, so its accepted and outgoing
    sockets are found here whatever frontend made them.
    """
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = os.dup(int(name))
        except OSError:
            continue
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            continue
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
            yield sock
        else:
            sock.close()


def socket_to(peer: tuple[str, int]) -> socket.socket | None:
    """This process's connected socket whose peer is ``peer`` (a duplicate), or None."""
    found = None
    for sock in own_sockets():
        try:
            match = found is None and sock.getpeername()[:2] == peer
        except OSError:
            match = False
        if match:
            found = sock
        else:
            sock.close()
    return found


def tcp_options(sock: socket.socket) -> dict[str, int]:
    opts = {"SO_KEEPALIVE": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)}
    for name in (
        "TCP_NODELAY",
        "TCP_KEEPIDLE",
        "TCP_KEEPINTVL",
        "TCP_KEEPCNT",
        "TCP_USER_TIMEOUT",
    ):
        opts[name] = sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, name))
    return opts


def send_partial_query(sock: socket.socket, length: int, sent: int, kind: bytes = b"Q") -> str:
    """Start a Query (or a Parse: ``kind``) of ``length`` bytes (a comment padding
    ``select 1``), send ``sent`` bytes of it. "sent"; "refused" if the pooler cut the
    connection meanwhile; "stalled" if the pooler stopped reading it for a second
    (backpressure: a client waiting for a server is not read)."""
    sql_head = b"select 1 -- " if kind == b"Q" else b"\0select 1 -- "
    header = _HEADER.pack(kind, length)
    chunk = b"x" * (1 << 20)
    sock.settimeout(1)
    try:
        sock.sendall(header + sql_head)
        left = sent - len(header) - len(sql_head)
        while left > 0:
            n = min(left, len(chunk))
            sock.sendall(chunk[:n])
            left -= n
    except TimeoutError:
        return "stalled"
    except OSError:
        return "refused"
    return "sent"


def finish_partial_query(sock: socket.socket, length: int, sent: int) -> list[bytes]:
    """Send the rest of the Query begun by :func:`send_partial_query`; its answer."""
    rest = length + 1 - sent  # the message is the kind byte plus ``length``
    sock.sendall(b"x" * (rest - 1) + b"\0")
    return read_messages(sock)


def answer_now(sock: socket.socket, wait: float = 0.5) -> bytes | None:
    """What the pooler has sent (b"" if it closed without a word), None if nothing yet."""
    sock.settimeout(wait)
    try:
        data = sock.recv(1 << 16)
    except TimeoutError:
        return None
    except OSError:
        return b""
    return data
