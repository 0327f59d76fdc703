"""The asyncio frontend, driven by a fake engine that records inputs and scripts effects.

The frontend holds no logic of its own, so these tests check plumbing only: that each
socket event reaches the right engine method, and that each effect does what it says,
on asyncio's own loop and on uvloop. What the pooler does is the engine's tests' job.
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
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

import pgsansio
from pgsansio.config_model import Config, General
from pgsansio.engine import (
    CloseClient,
    CloseServer,
    Exit,
    Log,
    OpenServer,
    SendClient,
    SendServer,
    Wakeup,
)
from pgsansio.frontends import EX_SOFTWARE, FrontendError, tune_socket
from pgsansio.frontends.asyncio import AsyncioFrontend
from pgsansio.logconfig import configure_logging

ROOT = pathlib.Path(__file__).resolve().parent.parent
FRONTENDS_DIR = pathlib.Path(pgsansio.__file__).parent / "frontends"

LOOPS: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
try:
    import uvloop

    LOOPS.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
except ImportError:  # pragma: no cover - uvloop is in the dev extra
    LOOPS.append(pytest.param(None, id="uvloop", marks=pytest.mark.skip("uvloop not installed")))

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
        "tick",
        "reload",
        "shutdown",
    }
)


class FakeEngine:
    """Records every call as (method, args without now); handlers script the effects."""

    def __init__(self, **handlers: Callable[..., list[Any]]) -> None:
        assert set(handlers) <= ENGINE_METHODS
        self.handlers = handlers
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.times: list[float] = []

    def __getattr__(self, name: str) -> Callable[..., list[Any]]:
        if name not in ENGINE_METHODS:
            raise AttributeError(name)

        def method(*args: Any) -> list[Any]:
            *rest, now = args
            assert isinstance(now, float)
            self.calls.append((name, tuple(rest)))
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


@pytest.fixture(params=LOOPS)
def run_async(request: pytest.FixtureRequest) -> Callable[[Awaitable[Any]], Any]:
    """Run a coroutine to completion on a fresh loop of each kind."""
    factory = request.param

    def runner(coro: Awaitable[Any]) -> Any:
        async def with_timeout() -> Any:
            return await asyncio.wait_for(coro, 20)

        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(with_timeout())

    return runner


class Running:
    """A frontend serving in a task, and its bound address."""

    def __init__(self, engine: FakeEngine, config_path: str | None = None) -> None:
        self.engine = engine
        self.frontend = AsyncioFrontend(engine, local_config(), config_path=config_path)
        self.task: asyncio.Task[int] | None = None
        self.address: tuple[str, int] = ("", 0)

    async def __aenter__(self) -> Running:
        ready: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(
            self.frontend.serve(ready.set_result, handle_signals=False)
        )
        done, _ = await asyncio.wait({ready, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if self.task in done:
            self.task.result()  # raises what serve raised
        self.address = ready.result()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        if not self.task.done():
            self.frontend._finish(0)
        await self.task

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(*self.address)

    async def exit_code(self) -> int:
        assert self.task is not None
        return await asyncio.wait_for(self.task, 10)


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


def test_echo_and_client_lifecycle(run_async: Callable[[Awaitable[Any]], Any]) -> None:
    engine = FakeEngine(client_data=lambda cid, data: [SendClient(cid, data.upper())])

    async def main() -> None:
        async with Running(engine) as running:
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


def test_client_ids_are_distinct(run_async: Callable[[Awaitable[Any]], Any]) -> None:
    engine = FakeEngine()

    async def main() -> None:
        async with Running(engine) as running:
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
    run_async: Callable[[Awaitable[Any]], Any],
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
        async with Running(engine) as running:
            reader, writer = await running.connect()
            writer.write(b"x")
            assert await reader.read() == b"bye"  # then EOF
            writer.close()
            await asyncio.sleep(0.05)
        assert "client_closed" not in engine.names()

    run_async(main())


def test_tcp_nodelay_and_keepalive_on_client_sockets(
    run_async: Callable[[Awaitable[Any]], Any],
) -> None:
    engine = FakeEngine()
    seen: list[tuple[int, int]] = []

    async def main() -> None:
        async with Running(engine) as running:
            _, writer = await running.connect()
            await until(lambda: bool(engine.args("client_connected")))
            (transport,) = running.frontend._clients.values()
            sock = transport.get_extra_info("socket")
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


def test_open_server_relays_both_ways(run_async: Callable[[Awaitable[Any]], Any]) -> None:
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
            async with Running(engine) as running:
                reader, writer = await running.connect()
                assert await reader.readexactly(4) == b"ping"
                await asyncio.sleep(0.05)
                writer.close()
                await until(lambda: "client_closed" in engine.names())
        assert engine.args("server_connected") == [(7,)]
        assert engine.args("server_data") == [(7, b"ping")]
        assert "server_closed" not in engine.names()  # the engine closed it itself
        assert not running.frontend._servers

    run_async(main())


def test_server_closed_by_peer_is_reported(run_async: Callable[[Awaitable[Any]], Any]) -> None:
    async def main() -> None:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()[:2]
        engine = FakeEngine(start=lambda: [OpenServer(3, host, port)])
        async with Running(engine):
            await until(lambda: "server_closed" in engine.names())
        server.close()
        assert engine.names() == ["start", "server_connected", "server_closed"]
        assert engine.args("server_closed") == [(3,)]

    run_async(main())


def test_server_failed(run_async: Callable[[Awaitable[Any]], Any]) -> None:
    port = closed_port()
    engine = FakeEngine(start=lambda: [OpenServer(5, "127.0.0.1", port)])

    async def main() -> None:
        async with Running(engine):
            await until(lambda: "server_failed" in engine.names())
        ((sid, error),) = engine.args("server_failed")
        assert sid == 5
        assert isinstance(error, str) and error

    run_async(main())


def test_close_server_while_connecting_reports_nothing(
    run_async: Callable[[Awaitable[Any]], Any],
) -> None:
    async def main() -> None:
        async with echo_server() as (host, port):
            engine = FakeEngine(start=lambda: [OpenServer(9, host, port), CloseServer(9)])
            async with Running(engine) as running:
                await asyncio.sleep(0.1)
                assert not running.frontend._servers
                assert not running.frontend._opening
        assert engine.names() == ["start"]

    run_async(main())


# ------------------------------------------------------------------------- timer, exit


def test_wakeup_fires_tick_once_and_replaces(run_async: Callable[[Awaitable[Any]], Any]) -> None:
    deadline: list[float] = []

    def start() -> list[Any]:
        now = time.monotonic()
        deadline.append(now + 0.05)
        # The second Wakeup replaces the first; the third repeats it (no-op).
        return [Wakeup(now + 30), Wakeup(deadline[0]), Wakeup(deadline[0])]

    engine = FakeEngine(start=start, tick=lambda: [Exit(3)])

    async def main() -> None:
        async with Running(engine) as running:
            assert await running.exit_code() == 3
        assert engine.names() == ["start", "tick"]
        assert engine.times[-1] >= deadline[0]

    run_async(main())


def test_wakeup_infinity_disarms(run_async: Callable[[Awaitable[Any]], Any]) -> None:
    engine = FakeEngine(start=lambda: [Wakeup(time.monotonic() + 0.02), Wakeup(float("inf"))])

    async def main() -> None:
        async with Running(engine) as running:
            await asyncio.sleep(0.1)
            assert running.frontend._timer is None
        assert engine.names() == ["start"]

    run_async(main())


def test_exit_stops_listening_and_closes_connections(
    run_async: Callable[[Awaitable[Any]], Any],
) -> None:
    engine = FakeEngine(client_data=lambda cid, data: [Exit(4), SendClient(cid, b"never")])

    async def main() -> None:
        async with Running(engine) as running:
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
    run_async: Callable[[Awaitable[Any]], Any],
) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB: more than one socket buffer
    engine = FakeEngine(
        client_data=lambda cid, data: [SendClient(cid, payload), CloseClient(cid), Exit(0)]
    )

    async def main() -> None:
        async with Running(engine) as running:
            reader, writer = await running.connect()
            writer.write(b"x")
            assert await reader.read() == payload
            assert await running.exit_code() == 0
            writer.close()

    run_async(main())


def test_log_effect(
    run_async: Callable[[Awaitable[Any]], Any], caplog: pytest.LogCaptureFixture
) -> None:
    engine = FakeEngine(start=lambda: [Log(logging.WARNING, "pool demo: server down"), Exit(0)])

    async def main() -> None:
        async with Running(engine) as running:
            assert await running.exit_code() == 0

    with caplog.at_level(logging.INFO):
        run_async(main())
    assert ("pgsansio", logging.WARNING, "pool demo: server down") in caplog.record_tuples


def test_engine_exception_exits_70(
    run_async: Callable[[Awaitable[Any]], Any], caplog: pytest.LogCaptureFixture
) -> None:
    def boom(cid: int, data: bytes) -> list[Any]:
        raise RuntimeError("engine bug")

    engine = FakeEngine(client_data=boom)

    async def main() -> None:
        async with Running(engine) as running:
            _, writer = await running.connect()
            writer.write(b"x")
            assert await running.exit_code() == EX_SOFTWARE
            writer.close()

    run_async(main())
    assert any("bug in pgsansio" in r.message and r.exc_info for r in caplog.records)


def test_listen_failure_is_a_frontend_error(run_async: Callable[[Awaitable[Any]], Any]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        frontend = AsyncioFrontend(FakeEngine(), local_config(port), config_path=None)
        with pytest.raises(FrontendError, match=rf"cannot listen on 127\.0\.0\.1:{port}"):
            run_async(frontend.serve(handle_signals=False))


# ------------------------------------------------------------------ operator actions


def test_shutdown_then_second_signal_exits_now(run_async: Callable[[Awaitable[Any]], Any]) -> None:
    engine = FakeEngine()

    async def main() -> None:
        async with Running(engine) as running:
            running.frontend.shutdown(signal.SIGTERM)
            assert engine.names() == ["start", "shutdown"]
            running.frontend.shutdown(signal.SIGTERM)
            assert await running.exit_code() == 128 + signal.SIGTERM
        assert engine.names() == ["start", "shutdown"]

    run_async(main())


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
    run_async: Callable[[Awaitable[Any]], Any],
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "pgcat.toml"
    path.write_text(VALID_TOML)
    engine = FakeEngine()

    async def main() -> None:
        async with Running(engine, config_path=str(path)) as running:
            running.frontend.reload()
            path.write_text("[general]\nport = 'not a port'\n")
            running.frontend.reload()  # logged, and the engine is not told

    run_async(main())
    ((config,),) = engine.args("reload")
    assert isinstance(config, Config)
    assert config.pools["db"].users["u"].pool_size == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "running configuration stays" in errors[0].getMessage()
    assert "port" in errors[0].getMessage()


def test_reload_without_a_file_is_a_warning(
    run_async: Callable[[Awaitable[Any]], Any], caplog: pytest.LogCaptureFixture
) -> None:
    engine = FakeEngine()

    async def main() -> None:
        async with Running(engine) as running:
            running.frontend.reload()

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
    from pgsansio.frontends.asyncio import _server

    class Engine:
        def __init__(self, config, seed=None):
            pass
        def __getattr__(self, name):
            def method(*args):
                print(name, flush=True)
                if name == "shutdown" and sys.argv[2] == "graceful":
                    return [Exit(0)]
                return []
            return method

    logging.basicConfig(level=logging.INFO)
    import pgsansio.engine  # serve() imports Engine from here when it is called
    pgsansio.engine.Engine = Engine
    path = sys.argv[1]
    code = _server.run(
        load_config(path),
        config_path=path,
        use_uvloop=sys.argv[3] == "uvloop",
        ready=lambda address: print("ready", address[1], flush=True),
    )
    print("exit", code, flush=True)
    sys.exit(code)
    """
)


@pytest.mark.parametrize("flavour", ["asyncio", "uvloop"])
@pytest.mark.parametrize("mode", ["graceful", "forced"])
def test_signals_in_a_subprocess(tmp_path: pathlib.Path, flavour: str, mode: str) -> None:
    if flavour == "uvloop":
        pytest.importorskip("uvloop")
    path = tmp_path / "pgcat.toml"
    path.write_text(VALID_TOML)
    script = tmp_path / "serve.py"
    script.write_text(SIGNAL_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), mode, flavour],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "start"
        assert proc.stdout.readline().startswith("ready ")
        proc.send_signal(signal.SIGHUP)
        assert proc.stdout.readline().strip() == "reload"
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline().strip() == "shutdown"
        if mode == "forced":
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


def test_run_explains_a_missing_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    from pgsansio import frontends
    from pgsansio.frontends.asyncio import run

    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes `import uvloop` fail
    with pytest.raises(FrontendError, match=r"pip install 'pgsansio\[uvloop\]'"):
        run(local_config(), config_path=None, use_uvloop=True)
    monkeypatch.setattr(frontends, "uvloop_available", lambda: False)
    with pytest.raises(FrontendError, match=r"pip install 'pgsansio\[uvloop\]'"):
        frontends.run("uvloop", local_config(), config_path=None)
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
    )
    assert proc.returncode == 2
    assert "auto, asyncio, uvloop" in proc.stderr


# ---------------------------------------------------------------------- shared helpers


def test_tune_socket_sets_keepalive_options() -> None:
    general = General(tcp_keepalives_idle=7, tcp_keepalives_interval=3, tcp_keepalives_count=4)
    with socket.socket() as sock:
        tune_socket(sock, general)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 10000
    if hasattr(socket, "AF_UNIX"):
        with socket.socket(socket.AF_UNIX) as unix:
            tune_socket(unix, general)  # not TCP: left alone, no error
    tune_socket(None, general)


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
    assert len(modules) >= 3, "no frontend modules found"
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in modules
        for line, name in imported_names(path)
        if name == "struct" or name.startswith(("struct.", "pgsansio.protocol"))
    ]
    assert not offenders, offenders


def test_the_import_check_sees_relative_imports(tmp_path: pathlib.Path) -> None:
    sample = FRONTENDS_DIR / "asyncio" / "_server.py"
    names = {name for _, name in imported_names(sample)}
    assert "pgsansio.engine.SendClient" in names
    assert "pgsansio.frontends.EngineAPI" in names
    init = FRONTENDS_DIR / "asyncio" / "__init__.py"
    assert "pgsansio.frontends.asyncio._server.serve" in {n for _, n in imported_names(init)}


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


@pytest.mark.parametrize("frontend", ["asyncio", "uvloop"])
def test_run_end_to_end(pg15: Any, tmp_path: pathlib.Path, frontend: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    if frontend == "uvloop":
        pytest.importorskip("uvloop")
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
    assert f"(asyncio frontend, {frontend} event loop)" in listening
    port = int(listening.split(" listening on ")[1].split()[0].rsplit(":", 1)[1])
    try:
        conninfo = (
            f"host=127.0.0.1 port={port} user=md5_user password=md5-secret "
            f"dbname={TEST_DATABASE} sslmode=disable"
        )
        with psycopg.connect(conninfo, autocommit=True) as conn:
            assert conn.execute("SELECT 1 + 1").fetchone() == (2,)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err


@pytest.mark.postgres
@pytest.mark.slow
def test_demo_runs_and_cleans_up(tmp_path: pathlib.Path) -> None:
    psycopg = pytest.importorskip("psycopg")
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
            if line.strip().startswith("PGPASSWORD="):
                break
        text = "".join(banner)
        command = banner[-1].split()
        assert command[:2] == ["PGPASSWORD=demo", "psql"], text
        port = int(command[command.index("-p") + 1])
        config_path = pathlib.Path(text.split("config   ", 1)[1].split()[0])
        assert config_path.is_file()
        conninfo = f"host=127.0.0.1 port={port} user=demo password=demo dbname=demo"
        with psycopg.connect(conninfo + " sslmode=disable", autocommit=True) as conn:
            conn.execute("CREATE TABLE demo_t (x int)")
            conn.execute("INSERT INTO demo_t VALUES (1)")
            # Reads go to the streaming replica, which may not have replayed the write
            # yet; the primary has it at once.
            count = "SELECT count(*) FROM demo_t"
            assert conn.execute("/* pgsansio_role: primary */ " + count).fetchone() == (1,)
            deadline = time.monotonic() + 10
            while True:
                try:
                    if conn.execute(count).fetchone() == (1,):
                        break
                except psycopg.errors.UndefinedTable:
                    pass
                assert time.monotonic() < deadline, "the replica never replayed the write"
                time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "deleting the demo's data" in out
    assert not config_path.parent.exists()
