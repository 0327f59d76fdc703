"""Client load for the reliability suite: connect storms and crowds of idle clients.

Plain sockets and asyncio streams speaking just enough of the protocol (a trust
login), so the load generator costs the same whatever pooler it points at.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import time
from dataclasses import dataclass

from _wire import startup_packet

from pgsansio.testing.cluster import TEST_DATABASE

USER = "trust_user"


def raise_fd_limit(want: int) -> None:
    """Let this process (and the daemons it starts) hold ``want`` descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


@dataclass
class Timings:
    total: float
    latencies: list[float]
    failures: int

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")

    def text(self) -> str:
        worst = max(self.latencies, default=0.0)
        return (
            f"total {self.total:.2f} s, p50 {self.pct(0.5) * 1000:.1f} ms, "
            f"p99 {self.pct(0.99) * 1000:.1f} ms, max {worst * 1000:.1f} ms, "
            f"failures {self.failures}"
        )


def serial_connects(port: int, n: int) -> Timings:
    """``n`` TCP connect-and-close, one after the other."""
    latencies = []
    failures = 0
    started = time.monotonic()
    for _ in range(n):
        t0 = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10):
                pass
        except OSError:
            failures += 1
        latencies.append(time.monotonic() - t0)
    return Timings(time.monotonic() - started, latencies, failures)


async def _login(port: int, packet: bytes, go: asyncio.Event) -> tuple[float, object]:
    await go.wait()
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(packet)
        buf = b""
        while not buf.endswith(b"Z\x00\x00\x00\x05I"):
            chunk = await reader.read(4096)
            if not chunk:
                return time.monotonic() - t0, None
            buf = (buf + chunk)[-64:]
        return time.monotonic() - t0, writer
    except OSError:
        return time.monotonic() - t0, None


async def _logins(port: int, n: int, timeout: float) -> Timings:
    packet = startup_packet(USER, TEST_DATABASE)
    go = asyncio.Event()
    tasks = [asyncio.ensure_future(_login(port, packet, go)) for _ in range(n)]
    await asyncio.sleep(0)
    started = time.monotonic()
    go.set()
    done = await asyncio.wait_for(asyncio.gather(*tasks), timeout)
    total = time.monotonic() - started
    failures = sum(1 for _, w in done if w is None)
    for _, w in done:
        if isinstance(w, asyncio.StreamWriter):
            w.close()
    return Timings(total, [t for t, w in done if w is not None], failures)


def simultaneous_logins(port: int, n: int, timeout: float = 120) -> Timings:
    """``n`` clients connect and log in at once (then all leave); each one's time."""
    raise_fd_limit(n + 1000)
    return asyncio.run(_logins(port, n, timeout))
