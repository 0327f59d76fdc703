"""The curio frontend: tasks and non-blocking sockets on curio's kernel.

It mirrors the anyio frontend: each connection has a reader task that hands each
``recv()`` to the engine and a writer task that sends what the engine put in the
connection's :class:`~pgsansio.frontends._common.Outbox`, in a task group that ends
when either does. One shortcut: when nothing is queued, an effect's bytes are first
offered to the (plain) socket directly, as curio's ``sendall`` would. curio's
``sendall`` returns only when the bytes are gone, so the outbox is also where
backpressure comes from: the frontend counts what is waiting and
feeds ``client_writable``/``server_writable`` when that crosses the water marks.

One difference from the other frontends: in curio even setting an ``Event`` or
cancelling a task is an ``await``, so :meth:`CurioFrontend._call` and ``_apply`` are
coroutines. Those awaits are curio's non-blocking traps, which return to the same task
without letting another run, so the engine is still fed one input at a time and never
re-entered.

Signals: curio 1.x has no signal API. The frontend installs do-nothing Python handlers
and points :func:`signal.set_wakeup_fd` at a socket pair, as trio and asyncio do
inside; the C-level handler writes the signal number there and a task reads it. The
same socket pair lets another thread deliver a signal (:meth:`signal_threadsafe`).

TLS (``StartTls``): the reader is paused at once (it is never inside a receive then:
StartTls only answers bytes it has just handed over); the writer sends what came
before (the ``S``), does the handshake (``ssl`` wrapping and ``do_handshake``), puts
the encrypted socket in place and switches reading back on before it reports
``client_tls``/``server_tls``, so no byte in clear is read after the ``S`` and none
reaches the engine before it knows.

Ids: client ids come from a counter here; server ids from the engine's ``OpenServer``.
An id is in ``_clients`` / ``_servers`` while its connection is open and the engine
still knows it; a close the engine asked for removes the id first.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import signal
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import curio
import curio.io

from pgsansio.engine import (
    CloseClient,
    CloseServer,
    Exit,
    Log,
    OpenServer,
    ReadClient,
    ReadServer,
    Reload,
    SendClient,
    SendServer,
    StartTls,
    Wakeup,
)
from pgsansio.frontends import (
    EX_SOFTWARE,
    EngineAPI,
    FrontendError,
    Ready,
    missing,
    peer_text,
    real_engine,
    tune_socket,
)
from pgsansio.frontends._common import (
    DRAIN_SECONDS,
    OPERATOR_SIGNALS,
    Control,
    Outbox,
    error_text,
    feed,
)

if TYPE_CHECKING:
    from pgsansio.config_model import Config
    from pgsansio.engine import Effect

__all__ = ["CurioFrontend", "run", "serve"]

log = logging.getLogger("pgsansio.frontend")
engine_log = logging.getLogger("pgsansio")

_BACKLOG = 511  # what asyncio's create_server asks for (capped by somaxconn)


class _Conn:
    """One open connection, client or server, and the state its two tasks share."""

    __slots__ = (
        "closing",
        "host",
        "out",
        "reading",
        "resumed",
        "sock",
        "upgrade",
        "upgrading",
        "wake",
        "writer",
    )

    def __init__(self, sock: curio.io.Socket, host: str | None = None) -> None:
        self.sock = sock
        self.host = host  # a server's host name, which a verified certificate must name
        self.out = Outbox()
        self.wake = curio.Event()  # set when the writer has something to do
        self.reading = True
        self.resumed = curio.Event()  # set when reading is switched back on
        self.closing = False  # the engine closed it: flush, then close; read no more
        self.upgrade: str | None = None  # StartTls asked for ("client"/"server")
        self.upgrading = False  # the handshake is under way
        self.writer: Any = None  # the writer's curio Task

    async def close(self) -> None:
        """The engine closed it: flush and close; a TLS handshake is cut short."""
        self.closing = True
        await self.wake.set()
        if self.upgrading and self.writer is not None:
            await self.writer.cancel(blocking=False)


class CurioFrontend:
    """Runs one engine on curio's kernel.

    Most code wants :func:`serve` or :func:`run`; this class is public so that tests
    and embedders can reach :meth:`signal_threadsafe` and :attr:`address`.
    """

    def __init__(self, engine: EngineAPI, config: Config, *, config_path: str | None) -> None:
        self._engine = engine
        self._control = Control(engine, config, config_path)
        self._clients: dict[int, _Conn] = {}
        self._servers: dict[int, _Conn] = {}
        self._opening: dict[int, Any] = {}  # sid -> the curio Task connecting it
        self._cids = itertools.count(1)
        self._tg: Any = None  # curio.TaskGroup, untyped
        self._wakeup_at: float | None = None
        self._timer_changed = curio.Event()
        self._done = curio.Event()
        self._code = 0
        self._forced = False
        self._live = 0  # connection tasks that have not finished yet
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self.address: tuple[str, int] | None = None
        """The bound (host, port) once :meth:`serve` listens (port 0 is resolved)."""

    # ------------------------------------------------------------------ lifecycle

    async def serve(self, ready: Ready | None = None, *, handle_signals: bool = True) -> int:
        """Listen, run until the engine says Exit (or a second signal), return the code.

        Raises:
            FrontendError: the listening address cannot be bound, or signals were asked
                for outside the main thread.
        """
        general = self._control.config.general
        if handle_signals and threading.current_thread() is not threading.main_thread():
            raise FrontendError(
                "signals can only be handled in the main thread; "
                "serve(handle_signals=False) in other threads"
            )
        # (listener, is it the Prometheus port), every address the host resolves to.
        bound = [(listener, False) for listener in _listen(general.host, general.port)]
        try:
            if general.enable_prometheus_exporter:
                port = general.prometheus_exporter_port
                bound += [(listener, True) for listener in _listen(general.host, port)]
            with _signals_to(self._wake_w) if handle_signals else contextlib.nullcontext():
                async with curio.TaskGroup() as tg:
                    self._tg = tg
                    accepting = []
                    for listener, metrics in bound:
                        engine = self._engine
                        connected = (
                            engine.metrics_connected if metrics else engine.client_connected
                        )
                        accepting.append(await tg.spawn(self._accept, listener, connected))
                    await tg.spawn(self._run_timer)
                    await tg.spawn(self._read_signals)
                    host, port = bound[0][0].getsockname()[:2]
                    self.address = (host, port)
                    await self._call(self._engine.start)
                    log.info("listening on %s:%d (curio frontend)", host, port)
                    if ready is not None:
                        ready(self.address)
                    await self._done.wait()
                    # Cancelled before their sockets close: curio must not be left
                    # waiting on a file descriptor that no longer exists.
                    for task in accepting:
                        await task.cancel()
                    for listener, _ in bound:
                        listener.close()
                    await self._close_everything()
                    if not self._forced:
                        await curio.ignore_after(DRAIN_SECONDS, self._drained)
                    await tg.cancel_remaining()  # the connections go when the group ends
        finally:
            for listener, _ in bound:
                listener.close()
            self._wake_r.close()
            self._wake_w.close()
        return self._code

    async def _drained(self) -> None:
        while self._live:
            await curio.sleep(0.01)

    async def _read_signals(self) -> None:
        reader = curio.io.Socket(self._wake_r)
        try:
            while data := await reader.recv(64):
                for signum in data:
                    await self.signal(signum)
        finally:
            reader._socket = None  # the frontend closes the socket itself

    async def _finish(self, code: int) -> None:
        if not self._done.is_set():
            self._code = code
            await self._done.set()

    async def _close_everything(self) -> None:
        # The ids are dropped first, so nothing is reported to an engine that has
        # finished; each writer flushes and closes, or, after a forced exit, is cancelled.
        self._wakeup_at = None
        for task in self._opening.values():
            await task.cancel(blocking=False)
        self._opening.clear()
        conns = [*self._clients.values(), *self._servers.values()]
        self._clients.clear()
        self._servers.clear()
        for conn in conns:
            await conn.close()

    # ---------------------------------------------------------------- operator actions

    async def signal(self, signum: int) -> None:
        """Do what the operator's signal ``signum`` asks (see :mod:`pgsansio.frontends`)."""
        what = self._control.on_signal(signum)
        if isinstance(what, int):
            self._forced = True
            await self._finish(what)
        elif what is not None:
            await self._call(what)

    def signal_threadsafe(self, signum: int) -> None:
        """:meth:`signal` from another thread (tests, embedders), once serving."""
        self._wake_w.send(bytes([signum]))

    # ------------------------------------------------------------ engine <-> sockets

    async def _call(self, method: Callable[..., Iterable[Effect]], *args: Any) -> None:
        """Feed one input to the engine, stamped with the time, and apply its effects."""
        effects = feed(method, *args)
        if effects is None:
            await self._finish(EX_SOFTWARE)
        else:
            await self._apply(effects)

    async def _apply(self, effects: Iterable[Effect]) -> None:
        """Carry out effects in order; one for an id that is already gone is dropped."""
        reload = False
        for effect in effects:
            match effect:
                case SendClient(cid, data):
                    conn = self._clients.get(cid)
                    if conn is not None and (data := _send_now(conn, data)):
                        if conn.out.put(data):
                            await self._call(self._engine.client_writable, cid, False)
                        await conn.wake.set()
                case SendServer(sid, data):
                    conn = self._servers.get(sid)
                    if conn is not None and (data := _send_now(conn, data)):
                        if conn.out.put(data):
                            await self._call(self._engine.server_writable, sid, False)
                        await conn.wake.set()
                case Wakeup(at):
                    if at != self._wakeup_at:
                        self._wakeup_at = at if math.isfinite(at) else None
                        await self._timer_changed.set()
                case OpenServer(sid, host, port):
                    self._opening[sid] = await self._tg.spawn(
                        self._open_server, sid, host, port, daemon=True
                    )
                case CloseClient(cid):
                    conn = self._clients.pop(cid, None)
                    if conn is not None:
                        await conn.close()
                case CloseServer(sid):
                    conn = self._servers.pop(sid, None)
                    if conn is not None:
                        await conn.close()
                    task = self._opening.pop(sid, None)
                    if task is not None:
                        await task.cancel(blocking=False)
                case ReadServer(sid, on):
                    conn = self._servers.get(sid)
                    if conn is not None:
                        await _set_reading(conn, on)
                case ReadClient(cid, on):
                    conn = self._clients.get(cid)
                    if conn is not None:
                        await _set_reading(conn, on)
                case StartTls(kind, key):
                    conn = (self._clients if kind == "client" else self._servers).get(key)
                    if conn is not None:
                        # The reader is not in recv(): StartTls only ever answers data it
                        # has just handed over. Paused, it reads nothing in clear.
                        await _set_reading(conn, False)
                        conn.upgrade = kind
                        await conn.wake.set()
                case Log(level, message):
                    engine_log.log(level, message)
                case Reload():
                    reload = True  # after the other effects: the admin console's RELOAD
                case Exit(code):
                    await self._finish(code)
                    return
        if reload:
            what = self._control.reload(asked_by_engine=True)
            if what is not None:
                await self._call(what)

    async def _accept(
        self, listener: socket.socket, connected: Callable[..., Iterable[Effect]]
    ) -> None:
        sock = curio.io.Socket(listener)
        try:
            while True:
                try:
                    client, addr = await sock.accept()
                except OSError as exc:  # EMFILE and the like: log, breathe, go on
                    log.warning("accept failed: %s", exc)
                    await curio.sleep(0.1)
                    continue
                await self._tg.spawn(self._client, client, addr, connected, daemon=True)
        finally:
            sock._socket = None  # serve() closes the listening socket itself

    async def _client(
        self, sock: curio.io.Socket, addr: Any, connected: Callable[..., Iterable[Effect]]
    ) -> None:
        cid = next(self._cids)
        conn = _Conn(sock)
        tune_socket(sock._socket, self._control.config.general)
        self._clients[cid] = conn
        engine = self._engine
        await self._connection(
            conn,
            cid,
            self._clients,
            connected=functools.partial(self._call, connected, cid, peer_text(addr)),
            data_in=engine.client_data,
            closed=engine.client_closed,
            writable=engine.client_writable,
        )

    async def _open_server(self, sid: int, host: str, port: int) -> None:
        try:
            sock = await curio.open_connection(host, port)
        except curio.CancelledError:
            return  # the engine closed this id while it was connecting
        except Exception as exc:  # OSError mostly; anything else still fails only this sid
            if self._opening.pop(sid, None) is not None:
                await self._call(self._engine.server_failed, sid, error_text(exc))
            return
        if self._opening.pop(sid, None) is None:
            await sock.close()
            return
        tune_socket(sock._socket, self._control.config.general)
        conn = _Conn(sock, host)
        self._servers[sid] = conn
        engine = self._engine
        await self._connection(
            conn,
            sid,
            self._servers,
            connected=functools.partial(self._call, engine.server_connected, sid),
            data_in=engine.server_data,
            closed=engine.server_closed,
            writable=engine.server_writable,
        )

    async def _connection(
        self,
        conn: _Conn,
        key: int,
        table: dict[int, _Conn],
        *,
        connected: Callable[[], Awaitable[None]],
        data_in: Callable[..., Iterable[Effect]],
        closed: Callable[..., Iterable[Effect]],
        writable: Callable[..., Iterable[Effect]],
    ) -> None:
        """Run one connection's reader and writer until either ends, then clean up."""
        self._live += 1
        try:
            async with curio.TaskGroup(wait=any) as pair:
                conn.writer = await pair.spawn(self._writer, conn, key, writable)
                await connected()
                await pair.spawn(self._reader, conn, key, data_in)
            if table.get(key) is conn:
                del table[key]
                await self._call(closed, key)
        finally:
            self._live -= 1
            await conn.sock.close()

    async def _reader(
        self, conn: _Conn, key: int, data_in: Callable[..., Iterable[Effect]]
    ) -> None:
        try:
            while not conn.closing:
                if not conn.reading:
                    await conn.resumed.wait()
                    continue
                data = await conn.sock.recv(65536)
                if not data:
                    return  # the peer closed its end
                # Paused while that recv was under way: hold the bytes until resumed.
                while not conn.reading and not conn.closing:
                    await conn.resumed.wait()
                if conn.closing:
                    return
                await self._call(data_in, key, data)
        except OSError:
            return

    async def _writer(
        self, conn: _Conn, key: int, writable: Callable[..., Iterable[Effect]]
    ) -> None:
        out = conn.out
        try:
            while True:
                if out:
                    data = out.take()
                    await conn.sock.sendall(data)
                    if out.sent(len(data)) and not conn.closing:
                        await self._call(writable, key, True)
                elif conn.upgrade is not None and not conn.closing:
                    if not await self._start_tls(conn, key):
                        return
                elif conn.closing:
                    return
                else:
                    conn.wake.clear()
                    await conn.wake.wait()
        except OSError:
            return

    async def _start_tls(self, conn: _Conn, key: int) -> bool:
        """Upgrade to TLS (after the S went out) and report it; whether it succeeded."""
        kind = conn.upgrade
        assert kind is not None
        conn.upgrade = None
        server_side = kind == "client"
        table = self._clients if server_side else self._servers
        report = self._engine.client_tls if server_side else self._engine.server_tls
        conn.upgrading = True
        try:
            ctx = self._control.tls.context(kind)
            raw = conn.sock._socket
            # wrap_socket takes the descriptor over; the curio Socket is replaced first,
            # so whatever happens next, the frontend closes the TLS socket.
            conn.sock = curio.io.Socket(
                ctx.wrap_socket(
                    raw,
                    server_side=server_side,
                    server_hostname=None if server_side else conn.host,
                    do_handshake_on_connect=False,
                )
            )
            await conn.sock.do_handshake()
        except Exception as exc:  # ssl.SSLError, a reset: this connection only
            if table.get(key) is conn:
                del table[key]
                await self._call(report, key, error_text(exc))
            return False
        finally:
            conn.upgrading = False
        if table.get(key) is not conn:
            return False
        await _set_reading(conn, True)
        await self._call(report, key, None)
        return True

    async def _run_timer(self) -> None:
        # One task, sleeping until the engine's deadline or until a new one replaces it.
        while True:
            changed = self._timer_changed = curio.Event()
            at = self._wakeup_at
            if at is None:
                await changed.wait()
                continue
            delay = at - time.monotonic()
            if delay > 0:
                await curio.ignore_after(delay, changed.wait)
                continue  # a new deadline, or this one's time has come: look again
            self._wakeup_at = None
            await self._call(self._engine.tick)


def _send_now(conn: _Conn, data: bytes) -> bytes:
    """Write what the socket takes at once; return the rest, for the writer task.

    curio's own ``sendall`` starts the same way (a plain non-blocking send); doing it
    here saves a task switch per write when nothing is queued. Only for a plain socket
    with nothing waiting before it, so the order of bytes never changes; a TLS socket
    always goes through the writer.
    """
    if conn.out.pending or conn.upgrade is not None or conn.upgrading or conn.closing:
        return data
    raw = conn.sock._socket
    if raw is None or isinstance(raw, ssl.SSLSocket):
        return data
    try:
        sent: int = raw.send(data)
    except OSError:  # would block, or a broken connection the writer will meet
        return data
    return data[sent:]


async def _set_reading(conn: _Conn, on: bool) -> None:
    if on and not conn.reading:
        await conn.resumed.set()
        conn.resumed = curio.Event()
    conn.reading = on


def _listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address ``host`` resolves to, as asyncio's create_server.

    Port 0 is resolved on the first address and used for the others, so every socket
    has the same port.
    """
    bound: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        seen: set[tuple[int, object]] = set()
        for family, _, _, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            if bound:
                port = bound[0].getsockname()[1]
            sock = socket.create_server((address[0], port), family=family, backlog=_BACKLOG)
            sock.setblocking(False)
            bound.append(sock)
    except OSError as exc:
        for sock in bound:
            sock.close()
        raise FrontendError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return bound


@contextlib.contextmanager
def _signals_to(wake: socket.socket) -> Iterator[None]:
    """Route the operator's signals to ``wake`` (one byte each) while the block runs."""
    saved = {signum: signal.signal(signum, _ignore) for signum in OPERATOR_SIGNALS}
    old_fd = signal.set_wakeup_fd(wake.fileno(), warn_on_full_buffer=False)
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_fd)
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def _ignore(signum: int, frame: object) -> None:
    """The Python-level handler: the wakeup fd already carried the signal to a task."""


async def serve(
    config: Config,
    *,
    config_path: str | None = None,
    ready: Ready | None = None,
    handle_signals: bool = True,
    engine: EngineAPI | None = None,
) -> int:
    """Run the pooler in the running curio kernel until it exits; return the exit code.

    ``config.general.port`` 0 binds a free port; ``ready`` then learns which. Signals
    need the main thread: pass ``handle_signals=False`` elsewhere. ``engine`` replaces
    the real engine (tests).

    Raises:
        FrontendError: the pooler cannot start.
    """
    if engine is None:
        engine = real_engine(config)
    frontend = CurioFrontend(engine, config, config_path=config_path)
    return await frontend.serve(ready, handle_signals=handle_signals)


def run(config: Config, *, config_path: str | None, ready: Ready | None = None) -> int:
    """Run the pooler in a new curio kernel until it exits; return the exit code.

    Raises :class:`FrontendError` if it cannot start.
    """
    problem = missing("curio")
    if problem is not None:
        raise FrontendError(problem)
    code: int = curio.run(serve(config, config_path=config_path, ready=ready))
    return code
