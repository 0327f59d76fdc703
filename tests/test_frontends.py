"""Every frontend, driven by a fake engine that records inputs and scripts effects.

A frontend holds no logic of its own, so these tests check plumbing only: that each
socket event reaches the right engine method, and that each effect does what it says.
Each test runs against every frontend (asyncio, uvloop, anyio on asyncio, anyio on trio,
curio), each serving on a thread of its own (:mod:`_frontend_thread`) while the test
talks to it from an asyncio loop in the main thread. What the pooler does is the
engine's tests' job.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import io
import json
import logging
import os
import pathlib
import re
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from _frontend_thread import FRONTEND_NAMES, FrontendThread, frontend_params

from pgsansio.config.model import Config, General
from pgsansio.engine import (
    CloseClient,
    CloseServer,
    Exit,
    Log,
    OpenServer,
    ReadClient,
    SendClient,
    SendServer,
    StartTls,
    Wakeup,
)
from pgsansio.engine._signals import Signals
from pgsansio.frontends import EX_SOFTWARE, FRONTENDS, FrontendError, tune_socket
from pgsansio.frontends._driver import HIGH_WATER, LOW_WATER, Driver, Outbox
from pgsansio.logconfig import configure_logging

ROOT = pathlib.Path(__file__).resolve().parent.parent
FRONTENDS_DIR = ROOT / "pgsansio" / "frontends"  # the source (make test may import a build)

ENGINE_METHODS = frozenset(
    {
        "start",
        "client_connected",
        "client_data",
        "client_closed",
        "server_connected",
        "server_failed",
        "server_data",
        "server_closed",
        "client_writable",
        "server_writable",
        "tick",
        "reload",
        "reload_failed",
        "shutdown",
        "pause",
        "resume",
        "metrics_connected",
        "client_tls",
        "server_tls",
    }
)


class FakeEngine:
    """Records every call as (method, args without now); handlers script the effects.

    Keyword arguments (``shutdown(now, wait_for_clients=True)``) are recorded in
    ``keywords``. ``stopping`` makes the next ``resume`` (SIGUSR2) answer Exit(0)
    unrecorded: that is how a test ends a frontend on another thread. ``signal`` is not
    recorded: it runs the engine's real policy, which calls the inputs a signal means.
    """

    def __init__(self, **handlers: Callable[..., list[Any]]) -> None:
        assert set(handlers) <= ENGINE_METHODS
        self.handlers = handlers
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.keywords: list[tuple[str, dict[str, Any]]] = []
        self.times: list[float] = []
        self.stopping = False
        self.policy = Signals()

    def signal(self, name: str, now: float) -> list[Any]:
        return self.policy.handle(self, name, now)

    def __getattr__(self, name: str) -> Callable[..., list[Any]]:
        if name not in ENGINE_METHODS:
            raise AttributeError(name)

        def method(*args: Any, **kwargs: Any) -> list[Any]:
            *rest, now = args
            assert isinstance(now, float)
            if self.stopping and name == "resume":
                return [Exit(0)]
            self.calls.append((name, tuple(rest)))
            self.keywords.append((name, kwargs))
            self.times.append(now)
            handler = self.handlers.get(name)
            return list(handler(*rest)) if handler is not None else []

        return method

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def args(self, name: str) -> list[tuple[Any, ...]]:
        return [args for n, args in self.calls if n == name]


def local_config(port: int = 0) -> Config:
    return Config(general=General(host="127.0.0.1", port=port), pools={})


@pytest.fixture(params=frontend_params())
def frontend(request: pytest.FixtureRequest) -> str:
    """The name of each frontend in turn."""
    name: str = request.param
    return name


def run_async(coro: Awaitable[Any]) -> Any:
    """Run the test's side (clients, fake servers) on an asyncio loop of its own."""

    async def with_timeout() -> Any:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(with_timeout())


class Running:
    """A frontend serving on its own thread, and its bound address."""

    def __init__(
        self,
        engine: FakeEngine,
        frontend: str,
        config_path: str | None = None,
        config: Config | None = None,
    ) -> None:
        self.engine = engine
        self.thread = FrontendThread(
            frontend, engine, config or local_config(), config_path=config_path
        )
        self.address: tuple[str, int] = ("", 0)

    @property
    def frontend(self) -> Any:
        return self.thread.frontend

    async def __aenter__(self) -> Running:
        await asyncio.to_thread(self.thread.start)
        self.address = self.thread.address
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.engine.stopping = True
            self.thread.signal(signal.SIGUSR2)
        await asyncio.to_thread(self.thread.join, 10)
        assert not self.thread.is_alive(), "the frontend did not stop"

    def signal(self, signum: int) -> None:
        self.thread.signal(signum)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(*self.address)

    async def exit_code(self) -> int | None:
        return await asyncio.to_thread(self.thread.join, 10)


def raw_socket(frontend: Any, conn: Any) -> socket.socket:
    """The OS socket under one of a frontend's connections, whatever the runtime."""
    if hasattr(conn, "get_extra_info"):  # an asyncio transport
        sock: socket.socket = conn.get_extra_info("socket")
    else:  # anyio, curio: a TaskConn, and the adapter's way to reach its socket
        sock = frontend.raw_socket(conn.stream)
    return sock


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the engine call"
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def echo_server() -> Any:
    """A plain TCP echo server standing in for PostgreSQL."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[:2]
    finally:
        server.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# ----------------------------------------------------------------------------- clients


def test_echo_and_client_lifecycle(frontend: str) -> None:
    engine = FakeEngine(client_data=lambda cid, data: [SendClient(cid, data.upper())])

    async def main() -> None:
        async with Running(engine, frontend) as running:
            reader, writer = await running.connect()
            writer.write(b"hello")
            assert await reader.readexactly(5) == b"HELLO"
            local = writer.get_extra_info("sockname")
            writer.close()
            await until(lambda: "client_closed" in engine.names())
        assert engine.names() == ["start", "client_connected", "client_data", "client_closed"]
        ((cid, peer),) = engine.args("client_connected")
        assert peer == f"{local[0]}:{local[1]}"
        assert engine.args("client_data") == [(cid, b"hello")]
        assert engine.args("client_closed") == [(cid,)]
        assert engine.times == sorted(engine.times)

    run_async(main())


def test_client_ids_are_distinct(frontend: str) -> None:
    engine = FakeEngine()

    async def main() -> None:
        async with Running(engine, frontend) as running:
            conns = [await running.connect() for _ in range(3)]
            await until(lambda: len(engine.args("client_connected")) == 3)
            for _, writer in conns:
                writer.close()
            await until(lambda: len(engine.args("client_closed")) == 3)
        cids = [args[0] for args in engine.args("client_connected")]
        assert len(set(cids)) == 3
        assert sorted(args[0] for args in engine.args("client_closed")) == sorted(cids)

    run_async(main())


def test_close_client_flushes_and_is_not_reported(
    frontend: str,
) -> None:
    engine = FakeEngine(
        client_data=lambda cid, data: [
            SendClient(cid, b"bye"),
            CloseClient(cid),
            SendClient(cid, b"dropped"),  # an id that is gone: ignored
            CloseClient(cid),
        ]
    )

    async def main() -> None:
        async with Running(engine, frontend) as running:
            reader, writer = await running.connect()
            writer.write(b"x")
            assert await reader.read() == b"bye"  # then EOF
            writer.close()
            await asyncio.sleep(0.05)
        assert "client_closed" not in engine.names()

    run_async(main())


def test_tcp_nodelay_and_keepalive_on_client_sockets(
    frontend: str,
) -> None:
    engine = FakeEngine()
    seen: list[tuple[int, int]] = []

    async def main() -> None:
        async with Running(engine, frontend) as running:
            _, writer = await running.connect()
            await until(lambda: bool(engine.args("client_connected")))
            (conn,) = running.frontend.clients.values()
            sock = raw_socket(running.frontend, conn)
            seen.append(
                (
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                )
            )
            writer.close()

    run_async(main())
    assert seen == [(1, 1)]


# ----------------------------------------------------------------------------- servers


def test_open_server_relays_both_ways(frontend: str) -> None:
    clients: list[int] = []

    async def main() -> None:
        async with echo_server() as (host, port):
            engine = FakeEngine(
                client_connected=lambda cid, peer: (
                    clients.append(cid) or [OpenServer(7, host, port)]
                ),
                server_connected=lambda sid: [SendServer(sid, b"ping")],
                server_data=lambda sid, data: [SendClient(clients[0], data), CloseServer(sid)],
            )
            async with Running(engine, frontend) as running:
                reader, writer = await running.connect()
                assert await reader.readexactly(4) == b"ping"
                await asyncio.sleep(0.05)
                writer.close()
                await until(lambda: "client_closed" in engine.names())
        assert engine.args("server_connected") == [(7,)]
        assert engine.args("server_data") == [(7, b"ping")]
        assert "server_closed" not in engine.names()  # the engine closed it itself
        assert not running.frontend.servers

    run_async(main())


def test_server_closed_by_peer_is_reported(frontend: str) -> None:
    async def main() -> None:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()[:2]
        engine = FakeEngine(start=lambda: [OpenServer(3, host, port)])
        async with Running(engine, frontend):
            await until(lambda: "server_closed" in engine.names())
        server.close()
        assert engine.names() == ["start", "server_connected", "server_closed"]
        assert engine.args("server_closed") == [(3,)]

    run_async(main())


def test_server_failed(frontend: str) -> None:
    port = closed_port()
    engine = FakeEngine(start=lambda: [OpenServer(5, "127.0.0.1", port)])

    async def main() -> None:
        async with Running(engine, frontend):
            await until(lambda: "server_failed" in engine.names())
        ((sid, error),) = engine.args("server_failed")
        assert sid == 5
        assert isinstance(error, str) and error

    run_async(main())


def test_close_server_while_connecting_reports_nothing(
    frontend: str,
) -> None:
    async def main() -> None:
        async with echo_server() as (host, port):
            engine = FakeEngine(start=lambda: [OpenServer(9, host, port), CloseServer(9)])
            async with Running(engine, frontend) as running:
                await asyncio.sleep(0.1)
                assert not running.frontend.servers
                assert not running.frontend.opening
        assert engine.names() == ["start"]

    run_async(main())


# ------------------------------------------------------------------------- timer, exit


def test_wakeup_fires_tick_once_and_replaces(frontend: str) -> None:
    deadline: list[float] = []

    def start() -> list[Any]:
        now = time.monotonic()
        deadline.append(now + 0.05)
        # The second Wakeup replaces the first; the third repeats it (no-op).
        return [Wakeup(now + 30), Wakeup(deadline[0]), Wakeup(deadline[0])]

    engine = FakeEngine(start=start, tick=lambda: [Exit(3)])

    async def main() -> None:
        async with Running(engine, frontend) as running:
            assert await running.exit_code() == 3
        assert engine.names() == ["start", "tick"]
        assert engine.times[-1] >= deadline[0]

    run_async(main())


def test_a_later_wakeup_replaces_an_earlier_one(frontend: str) -> None:
    later: list[float] = []

    def start() -> list[Any]:
        later.append(time.monotonic() + 30)
        return [Wakeup(time.monotonic() + 0.02), Wakeup(later[0])]

    engine = FakeEngine(start=start)

    async def main() -> None:
        async with Running(engine, frontend) as running:
            await asyncio.sleep(0.1)
            assert running.frontend.wakeup_at == later[0]
        assert engine.names() == ["start"]

    run_async(main())


@pytest.mark.parametrize("step", [-29.9, 0.2], ids=["earlier", "later"])
def test_a_wakeup_from_a_later_batch_moves_the_waiting_timer(frontend: str, step: float) -> None:
    """The timer already waits for the first deadline when a later input moves it: earlier
    (the timer must wake sooner) or later (it must not tick at the first one)."""
    first = 30.0 if step < 0 else 0.05
    moved: list[float] = []

    def connected(cid: int, peer: str) -> list[Any]:
        moved.append(time.monotonic() + first + step)
        return [Wakeup(moved[0])]

    engine = FakeEngine(
        start=lambda: [Wakeup(time.monotonic() + first)],
        client_connected=connected,
        tick=lambda: [Exit(3)],
    )

    async def main() -> None:
        async with Running(engine, frontend) as running:
            await asyncio.sleep(0.02)  # the timer task waits for the first deadline
            _, writer = await running.connect()
            assert await running.exit_code() == 3
            writer.close()
        assert engine.names() == ["start", "client_connected", "tick"]
        assert engine.times[-1] >= moved[0]

    run_async(main())


def test_exit_stops_listening_and_closes_connections(
    frontend: str,
) -> None:
    engine = FakeEngine(client_data=lambda cid, data: [Exit(4), SendClient(cid, b"never")])

    async def main() -> None:
        async with Running(engine, frontend) as running:
            reader, writer = await running.connect()
            writer.write(b"stop")
            assert await running.exit_code() == 4
            assert await reader.read() == b""
            with pytest.raises(OSError):
                await running.connect()
            writer.close()
        assert "client_closed" not in engine.names()

    run_async(main())


def test_exit_flushes_what_was_sent_before_it(
    frontend: str,
) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB: more than one socket buffer
    engine = FakeEngine(
        client_data=lambda cid, data: [SendClient(cid, payload), CloseClient(cid), Exit(0)]
    )

    async def main() -> None:
        async with Running(engine, frontend) as running:
            reader, writer = await running.connect()
            writer.write(b"x")
            assert await reader.read() == payload
            assert await running.exit_code() == 0
            writer.close()

    run_async(main())


def test_log_effect(frontend: str, caplog: pytest.LogCaptureFixture) -> None:
    engine = FakeEngine(start=lambda: [Log(logging.WARNING, "pool demo: server down"), Exit(0)])

    async def main() -> None:
        async with Running(engine, frontend) as running:
            assert await running.exit_code() == 0

    with caplog.at_level(logging.INFO):
        run_async(main())
    assert ("pgsansio", logging.WARNING, "pool demo: server down") in caplog.record_tuples


def test_engine_exception_exits_70(frontend: str, caplog: pytest.LogCaptureFixture) -> None:
    def boom(cid: int, data: bytes) -> list[Any]:
        raise RuntimeError("engine bug")

    engine = FakeEngine(client_data=boom)

    async def main() -> None:
        async with Running(engine, frontend) as running:
            _, writer = await running.connect()
            writer.write(b"x")
            assert await running.exit_code() == EX_SOFTWARE
            writer.close()

    run_async(main())
    assert any("bug in pgsansio" in r.message and r.exc_info for r in caplog.records)


def test_listen_failure_is_a_frontend_error(frontend: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        thread = FrontendThread(frontend, FakeEngine(), local_config(port))
        with pytest.raises(FrontendError) as info:
            thread.start()
    # Said once, in words, whatever the runtime wrapped the errno in.
    assert str(info.value) == (
        f"cannot listen on 127.0.0.1:{port}: address already in use (another program, "
        "perhaps a PostgreSQL, already listens there)"
    )


# ------------------------------------------------------------------ operator actions


def test_shutdown_then_second_signal_exits_now(frontend: str) -> None:
    engine = FakeEngine()

    async def main() -> None:
        async with Running(engine, frontend) as running:
            running.signal(signal.SIGTERM)
            await until(lambda: engine.names() == ["start", "shutdown"])
            running.signal(signal.SIGTERM)
            assert await running.exit_code() == 128 + signal.SIGTERM
        assert engine.names() == ["start", "shutdown"]
        assert engine.keywords[-1] == (
            "shutdown",
            {"wait_for_clients": True, "reason": "SIGTERM"},
        )

    run_async(main())


def test_sigint_then_second_signal_exits_now(frontend: str) -> None:
    engine = FakeEngine()

    async def main() -> None:
        async with Running(engine, frontend) as running:
            running.signal(signal.SIGINT)
            await until(lambda: engine.names() == ["start", "shutdown"])
            running.signal(signal.SIGINT)
            assert await running.exit_code() == 128 + signal.SIGINT
        # SIGINT does not wait for clients
        assert engine.keywords[-1] == ("shutdown", {"reason": "SIGINT"})

    run_async(main())


def test_pause_and_resume_signals(frontend: str) -> None:
    engine = FakeEngine()

    async def main() -> None:
        async with Running(engine, frontend) as running:
            running.signal(signal.SIGUSR1)
            await until(lambda: "pause" in engine.names())
            running.signal(signal.SIGUSR2)
            await until(lambda: "resume" in engine.names())
        assert engine.names() == ["start", "pause", "resume"]

    run_async(main())


def test_prometheus_listener_reports_scrapers(frontend: str) -> None:
    """Scrapers arrive through metrics_connected and are then clients like any other."""
    port = closed_port()
    config = Config(
        general=General(
            host="127.0.0.1",
            port=0,
            enable_prometheus_exporter=True,
            prometheus_exporter_port=port,
        ),
        pools={},
    )
    engine = FakeEngine(
        client_data=lambda cid, data: [SendClient(cid, b"metrics:" + data), CloseClient(cid)]
    )

    async def main() -> None:
        async with Running(engine, frontend, config=config) as running:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics")
            assert await reader.read() == b"metrics:GET /metrics"
            writer.close()
            _, client = await running.connect()
            await until(lambda: bool(engine.args("client_connected")))
            client.close()
            await until(lambda: bool(engine.args("client_closed")))
        ((scraper, peer),) = engine.args("metrics_connected")
        assert peer.startswith("127.0.0.1:")
        ((cid, _),) = engine.args("client_connected")
        assert cid != scraper  # one id space for clients and scrapers
        assert engine.args("client_closed") == [(cid,)]  # the engine closed the scraper

    run_async(main())


def test_metrics_port_in_use_is_a_frontend_error(frontend: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = Config(
            general=General(
                host="127.0.0.1",
                port=0,
                enable_prometheus_exporter=True,
                prometheus_exporter_port=port,
            ),
            pools={},
        )
        thread = FrontendThread(frontend, FakeEngine(), config)
        with pytest.raises(FrontendError, match=rf"cannot listen on 127\.0\.0\.1:{port}"):
            thread.start()


def test_slow_client_is_reported_not_writable_then_writable(frontend: str) -> None:
    """A client that does not read makes the frontend feed client_writable False/True."""
    chunk = b"x" * (1 << 20)
    count = 16  # more than the kernel's buffers on both ends can hold
    engine = FakeEngine(client_data=lambda cid, data: [SendClient(cid, chunk)] * count)

    async def main() -> None:
        async with Running(engine, frontend) as running:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.connect(running.address)
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(b"go")
            await until(lambda: (1, False) in engine.args("client_writable"))
            total = 0
            while total < count * len(chunk):
                total += len(await reader.read(1 << 20))
            await until(lambda: (1, True) in engine.args("client_writable"))
            writer.close()
        assert engine.args("client_writable") == [(1, False), (1, True)]

    run_async(main())


@pytest.mark.parametrize("frontend", ["trio", "curio"])
def test_a_writer_task_runs_only_while_bytes_wait(frontend: str) -> None:
    """On the task runtimes an idle plain connection is one task: writes go straight to
    the socket, and a writer task runs only while the kernel would not take them all."""
    chunk = b"x" * (1 << 20)
    count = 8  # more than the kernel's buffers on both ends can hold

    def answer(cid: int, data: bytes) -> list[Any]:
        return [SendClient(cid, chunk)] * count if data == b"go" else [SendClient(cid, data)]

    engine = FakeEngine(client_data=answer)

    async def main() -> None:
        async with Running(engine, frontend) as running:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.connect(running.address)
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(b"hi")
            assert await reader.readexactly(2) == b"hi"
            conn = running.frontend.clients[1]
            assert not conn.writing  # the echo went to the socket at once
            writer.write(b"go")
            await until(lambda: conn.writing)  # the kernel took part: a writer sends the rest
            assert await reader.readexactly(count * len(chunk)) == chunk * count
            await until(lambda: not conn.writing)  # drained: the writer ended
            writer.write(b"hi")
            assert await reader.readexactly(2) == b"hi"
            assert not conn.writing
            writer.close()

    run_async(main())


def test_read_client_off_holds_data_until_on(frontend: str) -> None:
    """After ReadClient(cid, False) no data reaches the engine until reading is on again."""
    engine = FakeEngine(
        client_data=lambda cid, data: [ReadClient(cid, False)] if data == b"stop" else []
    )

    async def main() -> None:
        async with Running(engine, frontend) as running:
            _, writer = await running.connect()
            writer.write(b"stop")
            await until(lambda: len(engine.args("client_data")) == 1)
            writer.write(b"more")
            await asyncio.sleep(0.3)  # what must not happen: data while paused
            assert len(engine.args("client_data")) == 1
            engine.handlers["resume"] = lambda: [ReadClient(1, True)]
            running.signal(signal.SIGUSR2)  # a way to get an effect in: resume -> ReadClient
            await until(lambda: len(engine.args("client_data")) == 2)
            assert engine.args("client_data")[1] == (1, b"more")
            writer.close()

    run_async(main())


def test_outbox_water_marks() -> None:
    box = Outbox()
    assert not box.put(b"a" * HIGH_WATER)  # at the mark: still writable
    assert box.put(b"b")  # past it: not writable, said once
    assert not box.put(b"c")
    data = box.take()
    assert len(data) == HIGH_WATER + 2 and not box
    assert not box.sent(len(data) - LOW_WATER - 1)  # still above the low mark
    assert box.sent(1)  # at the low mark: writable again, said once
    assert not box.sent(LOW_WATER)


class _Recorder:
    """A connection that records what the driver does to it (a unit test of the batch)."""

    def __init__(self, name: str, log: list[tuple[str, Any]]) -> None:
        self.name = name
        self.log = log

    def write(self, data: bytes) -> None:
        self.log.append((self.name, bytes(data)))

    def close(self) -> None:
        self.log.append((self.name, "close"))

    def abort(self) -> None:
        self.log.append((self.name, "abort"))

    def pause_reading(self) -> None:
        self.log.append((self.name, "pause"))

    def resume_reading(self) -> None:
        self.log.append((self.name, "resume"))


def test_a_batch_joins_consecutive_sends_to_one_connection() -> None:
    """One write per run of sends to the same peer; order and other effects unchanged."""
    log: list[tuple[str, Any]] = []
    driver = Driver(FakeEngine(), local_config(), config_path=None)
    driver.clients.update({1: _Recorder("c1", log), 2: _Recorder("c2", log)})
    driver.servers[7] = _Recorder("s7", log)
    driver._apply(  # the batch itself, without a runtime
        [
            SendClient(1, b"a"),
            SendClient(1, memoryview(b"b")),
            SendClient(1, b"c"),
            SendServer(7, b"q"),
            SendClient(9, b"gone"),  # an id that is gone: dropped, the run goes on
            SendServer(7, b"r"),
            ReadClient(2, on=False),
            SendClient(2, b"x"),
            SendClient(1, b"d"),
            SendClient(1, b"e"),
            CloseClient(1),
            SendClient(2, b"y"),
        ]
    )
    assert log == [
        ("c1", b"abc"),
        ("s7", b"qr"),
        ("c2", "pause"),
        ("c2", b"x"),
        ("c1", b"de"),
        ("c1", "close"),
        ("c2", b"y"),
    ]


def test_frontend_names_match_the_cli() -> None:
    assert set(FRONTENDS) == {"auto", *FRONTEND_NAMES}


# ----------------------------------------------------------------------------------- TLS

SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"  # what libpq sends before the handshake


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CA, a certificate for localhost and 127.0.0.1 signed by it, and files for both."""
    trustme = pytest.importorskip("trustme", reason="trustme is a dev dependency (pgsansio[dev])")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    where = tmp_path_factory.mktemp("pki")
    files = {"ca": where / "ca.pem", "cert": where / "cert.pem", "key": where / "key.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    leaf.cert_chain_pems[0].write_to_path(str(files["cert"]))
    leaf.private_key_pem.write_to_path(str(files["key"]))
    return {"ca": ca, "leaf": leaf, **{k: str(v) for k, v in files.items()}}


def tls_config(pki: dict[str, Any], **general: Any) -> Config:
    return Config(
        general=General(
            host="127.0.0.1",
            port=0,
            tls_certificate=pki["cert"],
            tls_private_key=pki["key"],
            **general,
        ),
        pools={},
    )


def test_start_tls_for_a_client(frontend: str, pki: dict[str, Any]) -> None:
    """S goes out in clear, the handshake follows, then bytes flow decrypted both ways."""
    engine = FakeEngine(
        client_data=lambda cid, data: (
            [SendClient(cid, b"S"), StartTls("client", cid)]
            if data == SSL_REQUEST
            else [SendClient(cid, data.upper())]
        )
    )
    context = ssl.create_default_context(cafile=pki["ca"])

    async def main() -> None:
        async with Running(engine, frontend, config=tls_config(pki)) as running:
            reader, writer = await running.connect()
            writer.write(SSL_REQUEST)
            assert await reader.readexactly(1) == b"S"
            await writer.start_tls(context, server_hostname="localhost")
            writer.write(b"secret")
            assert await reader.readexactly(6) == b"SECRET"
            writer.close()
            await until(lambda: "client_closed" in engine.names())
        ((cid, error),) = engine.args("client_tls")
        assert error is None
        assert engine.args("client_data") == [(cid, SSL_REQUEST), (cid, b"secret")]
        # The engine learns that TLS is up before it sees the first encrypted bytes
        # (they may arrive with the end of the handshake).
        names = engine.names()
        assert names.index("client_tls") < len(names) - 1 - names[::-1].index("client_data")

    run_async(main())


def test_a_failed_client_handshake_is_reported_once(frontend: str, pki: dict[str, Any]) -> None:
    engine = FakeEngine(
        client_data=lambda cid, data: [SendClient(cid, b"S"), StartTls("client", cid)]
    )

    async def main() -> None:
        async with Running(engine, frontend, config=tls_config(pki)) as running:
            reader, writer = await running.connect()
            writer.write(SSL_REQUEST)
            assert await reader.readexactly(1) == b"S"
            writer.write(b"this is not a TLS ClientHello at all\r\n" * 4)
            await until(lambda: bool(engine.args("client_tls")))
            # The frontend closed it: EOF, or a reset when our junk was still unread.
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read() == b""
            writer.close()
            await asyncio.sleep(0.1)
        ((_, error),) = engine.args("client_tls")
        assert isinstance(error, str) and error
        assert "client_closed" not in engine.names()  # reported once, as a TLS failure

    run_async(main())


@contextlib.asynccontextmanager
async def tls_echo_server(pki: dict[str, Any]) -> Any:
    """A server that answers an SSLRequest with S, then echoes over TLS, like PostgreSQL."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki["leaf"].configure_cert(context)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await reader.readexactly(8) == SSL_REQUEST:
            writer.write(b"S")
            await writer.drain()
            try:
                await writer.start_tls(context)
            except (ssl.SSLError, OSError):
                writer.close()
                return
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@pytest.mark.parametrize("verify", [False, True])
def test_start_tls_towards_a_server(frontend: str, pki: dict[str, Any], verify: bool) -> None:
    got: list[bytes] = []

    def server_data(sid: int, data: bytes) -> list[Any]:
        if data == b"S":
            return [StartTls("server", sid)]
        got.append(data)
        return [CloseServer(sid)]

    async def main() -> None:
        async with tls_echo_server(pki) as port:
            engine = FakeEngine(
                start=lambda: [OpenServer(4, "localhost", port)],
                server_connected=lambda sid: [SendServer(sid, SSL_REQUEST)],
                server_data=server_data,
                server_tls=lambda sid, error: [SendServer(sid, b"over tls")],
            )
            config = tls_config(
                pki,
                server_tls=True,
                verify_server_certificate=verify,
                server_tls_ca_file=pki["ca"],
            )
            async with Running(engine, frontend, config=config):
                await until(lambda: bool(got))
        assert engine.args("server_tls") == [(4, None)]
        assert got == [b"over tls"]

    run_async(main())


def test_an_unverifiable_server_certificate_fails_the_handshake(
    frontend: str, pki: dict[str, Any], tmp_path: pathlib.Path
) -> None:
    trustme = pytest.importorskip("trustme", reason="trustme is a dev dependency (pgsansio[dev])")
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))

    async def main() -> None:
        async with tls_echo_server(pki) as port:
            engine = FakeEngine(
                start=lambda: [OpenServer(4, "localhost", port)],
                server_connected=lambda sid: [SendServer(sid, SSL_REQUEST)],
                server_data=lambda sid, data: [StartTls("server", sid)],
            )
            config = tls_config(
                pki,
                server_tls=True,
                verify_server_certificate=True,
                server_tls_ca_file=str(other_ca),
            )
            async with Running(engine, frontend, config=config):
                await until(lambda: bool(engine.args("server_tls")))
                await asyncio.sleep(0.1)
        ((sid, error),) = engine.args("server_tls")
        assert sid == 4 and "certificate verify failed" in error
        assert "server_closed" not in engine.names()

    run_async(main())


def test_a_certificate_that_does_not_load_stops_the_start(
    frontend: str, tmp_path: pathlib.Path
) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    config = Config(
        general=General(
            host="127.0.0.1", port=0, tls_certificate=str(bad), tls_private_key=str(bad)
        ),
        pools={},
    )
    with pytest.raises(FrontendError, match=r"general\.tls_certificate / tls_private_key"):
        FrontendThread(frontend, FakeEngine(), config).start()


VALID_TOML = """\
[general]
host = "127.0.0.1"
port = 0
admin_username = "admin"
admin_password = "admin"

[pools.db.users.0]
username = "u"
password = "p"
pool_size = 2

[pools.db.shards.0]
database = "db"
servers = [["127.0.0.1", 5999, "primary"]]
"""


def test_reload_hands_the_new_config_to_the_engine(
    frontend: str,
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "pgcat.toml"
    path.write_text(VALID_TOML)
    engine = FakeEngine()

    async def main() -> None:
        async with Running(engine, frontend, config_path=str(path)) as running:
            running.signal(signal.SIGHUP)
            await until(lambda: "reload" in engine.names())
            path.write_text("[general]\nport = 'not a port'\n")
            running.signal(signal.SIGHUP)  # logged, and the engine is not told
            await until(lambda: any(r.levelno == logging.ERROR for r in caplog.records))

    run_async(main())
    ((config,),) = engine.args("reload")
    assert isinstance(config, Config)
    assert config.pools["db"].users["u"].pool_size == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "running configuration stays" in errors[0].getMessage()
    assert "port" in errors[0].getMessage()


def test_reload_without_a_file_is_a_warning(
    frontend: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = FakeEngine()

    async def main() -> None:
        async with Running(engine, frontend) as running:
            running.signal(signal.SIGHUP)
            await until(lambda: any("not started" in r.getMessage() for r in caplog.records))

    run_async(main())
    assert "reload" not in engine.names()
    assert any("not started from a file" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ real signals, run()

SIGNAL_SCRIPT = textwrap.dedent(
    """
    import logging
    import sys
    from pgsansio.config import load_config
    from pgsansio.engine import Exit
    from pgsansio.engine._signals import Signals
    from pgsansio import frontends

    class Engine:
        def __init__(self, config, seed=None):
            self.policy = Signals()
        def signal(self, name, now):  # the real policy, over this fake's inputs
            return self.policy.handle(self, name, now)
        def __getattr__(self, name):
            def method(*args, **kwargs):
                print(name, *sorted(kwargs), flush=True)
                if name == "shutdown" and sys.argv[2] == "graceful":
                    return [Exit(0)]
                return []
            return method

    logging.basicConfig(level=logging.INFO)
    import pgsansio.engine  # the frontend imports Engine from here when it runs
    pgsansio.engine.Engine = Engine
    path = sys.argv[1]
    code = frontends.run(
        sys.argv[3],
        load_config(path),
        config_path=path,
        ready=lambda address: print("ready", address[1], flush=True),
    )
    print("exit", code, flush=True)
    sys.exit(code)
    """
)


@pytest.mark.parametrize("mode", ["graceful", "forced"])
def test_signals_in_a_subprocess(tmp_path: pathlib.Path, frontend: str, mode: str) -> None:
    """Real signals: SIGHUP reloads, SIGUSR1/2 pause and resume, then a shutdown.

    graceful: SIGINT, and the engine answers Exit(0). forced: SIGTERM (which asks the
    engine to wait for clients), then SIGINT, which exits at once with 128 + SIGINT.
    """
    path = tmp_path / "pgcat.toml"
    path.write_text(VALID_TOML)
    script = tmp_path / "serve.py"
    script.write_text(SIGNAL_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), mode, frontend],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "start"
        assert proc.stdout.readline().startswith("ready ")
        for signum, seen in (
            (signal.SIGHUP, "reload"),
            (signal.SIGUSR1, "pause"),
            (signal.SIGUSR2, "resume"),
        ):
            proc.send_signal(signum)
            assert proc.stdout.readline().strip() == seen
        if mode == "graceful":
            proc.send_signal(signal.SIGINT)
            assert proc.stdout.readline().strip() == "shutdown reason"
        else:
            proc.send_signal(signal.SIGTERM)
            assert proc.stdout.readline().strip() == "shutdown reason wait_for_clients"
            proc.send_signal(signal.SIGINT)
        # Not communicate(): after readline() the text wrapper may already hold the
        # next line, which communicate(timeout=...) would never see.
        proc.wait(timeout=10)
        out = proc.stdout.read()
        assert proc.stderr is not None
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    expected = 0 if mode == "graceful" else 128 + signal.SIGINT
    assert proc.returncode == expected, err
    assert out.strip() == f"exit {expected}"
    assert "reloading the configuration" in err


@pytest.mark.parametrize(
    ("name", "package"),
    [("uvloop", "uvloop"), ("anyio", "anyio"), ("trio", "trio"), ("curio", "curio")],
)
def test_run_explains_a_missing_package(
    monkeypatch: pytest.MonkeyPatch, name: str, package: str
) -> None:
    from pgsansio import frontends

    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed
    extra = re.escape(f"(pgsansio's '{name}' extra)")
    with pytest.raises(
        FrontendError, match=rf"'{package}' package is not installed.*pip install .*{extra}"
    ):
        frontends.run(name, local_config(), config_path=None)
    if name == "uvloop":
        from pgsansio.frontends.asyncio import run

        with pytest.raises(FrontendError, match=extra):
            run(local_config(), config_path=None, use_uvloop=True)
    with pytest.raises(ValueError, match="unknown frontend"):
        frontends.run("tokio", local_config(), config_path=None)


def test_run_bad_config_exits_78(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[general]\nport = 'x'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pgsansio", "run", str(bad)],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 78
    assert "bad.toml" in proc.stderr
    assert "Traceback" not in proc.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "pgsansio", "run"],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "CONFIG_FILE": str(tmp_path / "nowhere.toml")},
    )
    assert missing.returncode == 78
    assert "nowhere.toml" in missing.stderr


def test_run_rejects_an_unknown_frontend(tmp_path: pathlib.Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pgsansio", "run", "x.toml", "--frontend", "tokio"],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},  # the error box must not wrap the list
    )
    assert proc.returncode == 2
    assert "auto, asyncio, uvloop, anyio, trio, curio" in proc.stderr


# ---------------------------------------------------------------------- shared helpers


def test_tune_socket_sets_keepalive_options() -> None:
    general = General(
        tcp_keepalives_idle=7,
        tcp_keepalives_interval=3,
        tcp_keepalives_count=4,
        client_tcp_keepalives_idle=70,
        client_tcp_keepalives_interval=30,
        client_tcp_keepalives_count=8,
        client_tcp_user_timeout=0,
    )
    for server, idle, interval, count, user_timeout in (
        (True, 7, 3, 4, 10000),
        (False, 70, 30, 8, 0),
    ):
        with socket.socket() as sock:
            tune_socket(sock, general, server=server)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            if hasattr(socket, "TCP_KEEPIDLE"):
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == idle
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == interval
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == count
            if hasattr(socket, "TCP_USER_TIMEOUT"):
                got = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
                assert got == user_timeout
    if hasattr(socket, "AF_UNIX"):
        with socket.socket(socket.AF_UNIX) as unix:
            tune_socket(unix, general, server=False)  # not TCP: left alone, no error
    tune_socket(None, general, server=True)


def imported_names(path: pathlib.Path) -> Iterator[tuple[int, str]]:
    """Every module (and ``from`` name) a file imports, relative imports made absolute."""
    # The package a module is in (for __init__.py, the package itself).
    package = list(path.relative_to(ROOT).with_suffix("").parts)[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            parts = package[: len(package) - node.level + 1] if node.level else []
            base = ".".join([*parts, *([node.module] if node.module else [])])
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def test_frontends_do_not_touch_the_protocol() -> None:
    """A frontend moves bytes; parsing them belongs to the engine (DESIGN.md)."""
    modules = sorted(FRONTENDS_DIR.rglob("*.py"))
    seen = {str(path.relative_to(FRONTENDS_DIR)) for path in modules}
    for name in ("asyncio", "anyio", "curio"):
        assert {f"{name}/__init__.py", f"{name}/_server.py"} <= seen, name
    assert {"__init__.py", "_driver.py"} <= seen
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in modules
        for line, name in imported_names(path)
        if name == "struct" or name.startswith(("struct.", "pgsansio.protocol"))
    ]
    assert not offenders, offenders


@pytest.mark.parametrize("package", ["asyncio", "anyio", "curio"])
def test_the_import_check_sees_relative_imports(package: str) -> None:
    sample = FRONTENDS_DIR / package / "_server.py"
    names = {name for _, name in imported_names(sample)}
    assert "pgsansio.frontends.EngineAPI" in names
    assert "pgsansio.frontends._driver.OPERATOR_SIGNALS" in names
    init = FRONTENDS_DIR / package / "__init__.py"
    assert f"pgsansio.frontends.{package}._server.serve" in {n for _, n in imported_names(init)}


# ------------------------------------------------------------------------------ logging


def emit(fmt: str, level: str = "info") -> list[str]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging(level, fmt, stream=stream)
        logging.getLogger("pgsansio").info("pool %s ready", "demo")
        logging.getLogger("pgsansio.frontend").debug("hidden unless debug")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("pgsansio").exception("failed")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    return stream.getvalue().splitlines()


def test_text_log_lines() -> None:
    lines = emit("text")
    assert lines[0].endswith("Z INFO pgsansio: pool demo ready")
    stamp = lines[0].split(" ")[0]
    assert len(stamp) == len("2026-11-25T01:02:03.456Z")
    assert stamp[10] == "T"
    assert lines[1].endswith("Z ERROR pgsansio: failed")
    assert "ValueError: boom" in lines[-1]
    assert not any("hidden" in line for line in lines)
    assert any("hidden" in line for line in emit("text", "debug"))


def test_json_log_lines() -> None:
    records = [json.loads(line) for line in emit("json")]
    assert len(records) == 2  # the traceback stays inside its record
    assert records[0]["level"] == "INFO"
    assert records[0]["message"] == "pool demo ready"
    assert records[0]["ts"].endswith("Z")
    assert "ValueError: boom" in records[1]["exc"]


def test_configure_logging_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_logging("loud")
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml")


# ------------------------------------------------- end to end, against real PostgreSQL


def start_pooler(argv: list[str], cwd: pathlib.Path) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m pgsansio ...``; return it and its "listening on" log line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgsansio", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if " listening on " in line:
            return proc, line
    proc.kill()
    proc.wait()
    raise AssertionError("the pooler did not start:\n" + "".join(seen))


LISTENING = {
    "asyncio": "(asyncio frontend, asyncio event loop)",
    "uvloop": "(asyncio frontend, uvloop event loop)",
    "anyio": "(anyio frontend, asyncio backend)",
    "trio": "(anyio frontend, trio backend)",
    "curio": "(curio frontend)",
}


def test_run_end_to_end(pg15: Any, tmp_path: pathlib.Path, frontend: str) -> None:
    psycopg = pytest.importorskip("psycopg", reason="psycopg is a dev dependency (pgsansio[dev])")
    from pgsansio.testing.cluster import TEST_DATABASE

    config = tmp_path / "pgcat.toml"
    config.write_text(
        VALID_TOML.replace('"u"', '"md5_user"')
        .replace('"p"', '"md5-secret"')
        .replace('"db"', f'"{TEST_DATABASE}"')
        .replace("[pools.db", f"[pools.{TEST_DATABASE}")
        .replace("5999", str(pg15.port))
    )
    proc, listening = start_pooler(["run", str(config), "--frontend", frontend], tmp_path)
    assert LISTENING[frontend] in listening
    port = int(listening.split(" listening on ")[1].split()[0].rsplit(":", 1)[1])
    try:
        conninfo = (
            f"host=127.0.0.1 port={port} user=md5_user password=md5-secret "
            f"dbname={TEST_DATABASE} sslmode=disable"
        )
        with psycopg.connect(conninfo, autocommit=True) as conn:
            assert conn.execute("SELECT 1 + 1").fetchone() == (2,)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err


@pytest.mark.postgres
@pytest.mark.slow
def test_demo_runs_and_cleans_up(tmp_path: pathlib.Path) -> None:
    psycopg = pytest.importorskip("psycopg", reason="psycopg is a dev dependency (pgsansio[dev])")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgsansio", "demo", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        banner = []
        for line in proc.stdout:
            banner.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        text = "".join(banner)
        command = next(x for x in banner if x.strip().startswith("PGPASSWORD=")).split()
        assert command[:2] == ["PGPASSWORD=demo", "psql"], text
        port = int(command[command.index("-p") + 1])
        config_path = pathlib.Path(text.split("config   ", 1)[1].split()[0])
        assert config_path.is_file()
        conninfo = f"host=127.0.0.1 port={port} user=demo password=demo dbname=demo"
        with psycopg.connect(conninfo + " sslmode=disable", autocommit=True) as conn:
            conn.execute("CREATE TABLE demo_t (x int)")
            conn.execute("INSERT INTO demo_t VALUES (1)")
            # read_your_writes (on in the demo): this client's reads see its own writes
            # at once, though the replica replays them a moment later.
            for n in range(2, 12):
                conn.execute(f"INSERT INTO demo_t VALUES ({n})")
                assert conn.execute("SELECT count(*) FROM demo_t").fetchone() == (n,)
        # A session that never wrote reads from the replica, which catches up.
        with psycopg.connect(conninfo + " sslmode=disable", autocommit=True) as conn:
            count = "SELECT count(*) FROM demo_t"
            deadline = time.monotonic() + 10
            while True:
                try:
                    if conn.execute(count).fetchone() == (11,):
                        break
                except psycopg.errors.UndefinedTable:
                    pass  # the replica has not replayed the CREATE TABLE yet
                assert time.monotonic() < deadline, "the replica never replayed the writes"
                time.sleep(0.1)
        # The banner's admin console and /metrics work as it says.
        admin = f"host=127.0.0.1 port={port} user=admin password=admin dbname=pgbouncer"
        with psycopg.connect(admin + " sslmode=disable", autocommit=True) as conn:
            assert any(row[0] == "demo" for row in conn.execute("SHOW POOLS").fetchall())
        url = text.split("curl ", 1)[1].split()[0]
        with urllib.request.urlopen(url, timeout=10) as response:
            assert b"# HELP" in response.read()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "deleting the demo's data" in out
    assert not config_path.parent.exists()
