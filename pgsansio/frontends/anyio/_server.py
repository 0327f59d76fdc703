"""The anyio frontend: one code path for asyncio and trio, tasks and byte streams.

Each connection has two tasks in a task group of its own: a reader that hands each
``receive()`` to the engine, and a writer that sends what the engine put in the
connection's :class:`~pgsansio.frontends._common.Outbox`. anyio's ``send()`` returns
only when the bytes are gone, so the writer is what lets an effect be carried out
without waiting: ``SendClient`` appends to the outbox and wakes the writer. The outbox
is also where backpressure comes from: anyio does not say when a socket's buffer is
full, so the frontend counts what is still waiting and feeds
``client_writable``/``server_writable`` when that crosses the high or low water mark.

Every engine input goes through :meth:`AnyioFrontend._call` (the time, then the
effects, in order). Effects only change dictionaries, set events and start tasks, so
the engine is never re-entered. When either task of a connection ends (the peer left,
a send failed, the engine closed it), the pair is cancelled, and the connection is
reported closed unless the engine asked for the close.

TLS (``StartTls``): the reader is paused at once (it is never inside a receive then:
StartTls only answers bytes it has just handed over); the writer sends what came
before (the ``S``), does the handshake (``TLSStream.wrap``), puts the encrypted stream in
place and switches reading back on before it reports ``client_tls``/``server_tls``, so
no byte in clear is read after the ``S`` and none reaches the engine before it knows.

Ids: client ids come from a counter here; server ids from the engine's ``OpenServer``.
An id is in ``_clients`` / ``_servers`` while its connection is open and the engine
still knows it; a close the engine asked for removes the id first.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, cast

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSStream

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

__all__ = ["AnyioFrontend", "run", "serve"]

log = logging.getLogger("pgsansio.frontend")
engine_log = logging.getLogger("pgsansio")

_GONE = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,  # ssl.SSLError too
)
"""What a read or write raises when the peer went away or the stream was closed."""


class _Conn:
    """One open connection, client or server, and the state its two tasks share."""

    __slots__ = (
        "closing",
        "host",
        "out",
        "pair",
        "reading",
        "resumed",
        "stream",
        "upgrade",
        "upgrading",
        "wake",
    )

    def __init__(self, stream: anyio.abc.ByteStream, host: str | None = None) -> None:
        self.stream = stream
        self.host = host  # a server's host name, which a verified certificate must name
        self.out = Outbox()
        self.wake = anyio.Event()  # set when the writer has something to do
        self.reading = True
        self.resumed = anyio.Event()  # set when reading is switched back on
        self.closing = False  # the engine closed it: flush, then close; read no more
        self.upgrade: str | None = None  # StartTls asked for ("client"/"server")
        self.upgrading = False  # the handshake is under way
        self.pair: anyio.CancelScope | None = None  # cancels the reader and the writer

    def poke(self) -> None:
        self.wake.set()

    def close(self) -> None:
        """The engine closed it: flush and close; a TLS handshake is cut short."""
        self.closing = True
        self.poke()
        if self.upgrading and self.pair is not None:
            self.pair.cancel()


class AnyioFrontend:
    """Runs one engine under anyio, on asyncio or on trio.

    Most code wants :func:`serve` or :func:`run`; this class is public so that tests
    and embedders can reach :meth:`signal` and :attr:`address`.
    """

    def __init__(self, engine: EngineAPI, config: Config, *, config_path: str | None) -> None:
        self._engine = engine
        self._control = Control(engine, config, config_path)
        self._clients: dict[int, _Conn] = {}
        self._servers: dict[int, _Conn] = {}
        self._opening: dict[int, anyio.CancelScope] = {}
        self._cids = itertools.count(1)
        self._tg: anyio.abc.TaskGroup | None = None
        self._wakeup_at: float | None = None
        self._timer_changed = anyio.Event()
        self._done = anyio.Event()
        self._code = 0
        self._forced = False
        self._live = 0  # connection tasks that have not finished yet
        self._token: anyio.lowlevel.EventLoopToken | None = None
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
        self._token = anyio.lowlevel.current_token()
        # (listener, is it the Prometheus port), every address the host resolves to.
        bound = [(listener, False) for listener in await _listen(general.host, general.port)]
        try:
            if general.enable_prometheus_exporter:
                port = general.prometheus_exporter_port
                bound += [(listener, True) for listener in await _listen(general.host, port)]
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for listener, metrics in bound:
                    engine = self._engine
                    connected = engine.metrics_connected if metrics else engine.client_connected
                    tg.start_soon(self._accept, listener, connected)
                tg.start_soon(self._run_timer)
                if handle_signals:
                    await tg.start(self._handle_signals)
                address = bound[0][0].extra(SocketAttribute.local_address)
                host, port = cast(tuple[str, int], address)[:2]
                self.address = (host, port)
                self._call(self._engine.start)
                backend = _backend_name()
                log.info("listening on %s:%d (anyio frontend, %s backend)", host, port, backend)
                if ready is not None:
                    ready(self.address)
                await self._done.wait()
                for listener, _ in bound:
                    await listener.aclose()
                self._close_everything()
                if not self._forced:
                    with anyio.move_on_after(DRAIN_SECONDS):
                        while self._live:
                            await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                for listener, _ in bound:
                    await listener.aclose()
        return self._code

    async def _handle_signals(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(*OPERATOR_SIGNALS) as signals:
            task_status.started()
            async for signum in signals:
                self.signal(signum)

    def _finish(self, code: int) -> None:
        if not self._done.is_set():
            self._code = code
            self._done.set()

    def _close_everything(self) -> None:
        # The ids are dropped first, so nothing is reported to an engine that has
        # finished; each writer flushes and closes, or, after a forced exit, is cancelled
        # with the rest of the task group.
        self._wakeup_at = None
        for scope in self._opening.values():
            scope.cancel()
        self._opening.clear()
        conns = [*self._clients.values(), *self._servers.values()]
        self._clients.clear()
        self._servers.clear()
        for conn in conns:
            conn.close()

    # ---------------------------------------------------------------- operator actions

    def signal(self, signum: int) -> None:
        """Do what the operator's signal ``signum`` asks (see :mod:`pgsansio.frontends`)."""
        what = self._control.on_signal(signum)
        if isinstance(what, int):
            self._forced = True
            self._finish(what)
        elif what is not None:
            self._call(what)

    def signal_threadsafe(self, signum: int) -> None:
        """:meth:`signal` from another thread (tests, embedders), once serving."""
        anyio.from_thread.run_sync(self.signal, signum, token=self._token)

    # ------------------------------------------------------------ engine <-> sockets

    def _call(self, method: Callable[..., Iterable[Effect]], *args: Any) -> None:
        """Feed one input to the engine, stamped with the time, and apply its effects."""
        effects = feed(method, *args)
        if effects is None:
            self._finish(EX_SOFTWARE)
        else:
            self._apply(effects)

    def _apply(self, effects: Iterable[Effect]) -> None:
        """Carry out effects in order; one for an id that is already gone is dropped."""
        reload = False
        for effect in effects:
            match effect:
                case SendClient(cid, data):
                    conn = self._clients.get(cid)
                    if conn is not None:
                        if conn.out.put(data):
                            self._call(self._engine.client_writable, cid, False)
                        conn.poke()
                case SendServer(sid, data):
                    conn = self._servers.get(sid)
                    if conn is not None:
                        if conn.out.put(data):
                            self._call(self._engine.server_writable, sid, False)
                        conn.poke()
                case Wakeup(at):
                    self._arm_timer(at)
                case OpenServer(sid, host, port):
                    # The scope exists before the task runs, so a CloseServer in the
                    # same batch cancels the attempt before it starts.
                    scope = self._opening[sid] = anyio.CancelScope()
                    assert self._tg is not None
                    self._tg.start_soon(self._open_server, sid, host, port, scope)
                case CloseClient(cid):
                    conn = self._clients.pop(cid, None)
                    if conn is not None:
                        conn.close()
                case CloseServer(sid):
                    conn = self._servers.pop(sid, None)
                    if conn is not None:
                        conn.close()
                    attempt = self._opening.pop(sid, None)
                    if attempt is not None:
                        attempt.cancel()
                case ReadServer(sid, on):
                    conn = self._servers.get(sid)
                    if conn is not None:
                        _set_reading(conn, on)
                case ReadClient(cid, on):
                    conn = self._clients.get(cid)
                    if conn is not None:
                        _set_reading(conn, on)
                case StartTls(kind, key):
                    conn = (self._clients if kind == "client" else self._servers).get(key)
                    if conn is not None:
                        # The reader is not in receive(): StartTls only ever answers data
                        # it has just handed over. Paused, it reads nothing in clear.
                        _set_reading(conn, False)
                        conn.upgrade = kind
                        conn.poke()
                case Log(level, message):
                    engine_log.log(level, message)
                case Reload():
                    reload = True  # after the other effects: the admin console's RELOAD
                case Exit(code):
                    self._finish(code)
                    return
        if reload:
            what = self._control.reload(asked_by_engine=True)
            if what is not None:
                self._call(what)

    async def _accept(
        self, listener: anyio.abc.SocketListener, connected: Callable[..., Iterable[Effect]]
    ) -> None:
        assert self._tg is not None
        while True:
            try:
                stream = await listener.accept()
            except anyio.ClosedResourceError:
                return
            except OSError as exc:  # EMFILE and the like: log, breathe, go on
                log.warning("accept failed: %s", exc)
                await anyio.sleep(0.1)
                continue
            self._tg.start_soon(self._client, stream, connected)

    async def _client(
        self, stream: anyio.abc.SocketStream, connected: Callable[..., Iterable[Effect]]
    ) -> None:
        cid = next(self._cids)
        conn = _Conn(stream)
        tune_socket(stream.extra(SocketAttribute.raw_socket, None), self._control.config.general)
        peer = peer_text(stream.extra(SocketAttribute.remote_address, None))
        self._clients[cid] = conn
        engine = self._engine
        await self._connection(
            conn,
            cid,
            self._clients,
            connected=functools.partial(self._call, connected, cid, peer),
            data_in=engine.client_data,
            closed=engine.client_closed,
            writable=engine.client_writable,
        )

    async def _open_server(self, sid: int, host: str, port: int, scope: anyio.CancelScope) -> None:
        stream: anyio.abc.SocketStream | None = None
        with scope:
            try:
                stream = await anyio.connect_tcp(host, port)
            except Exception as exc:  # OSError mostly; anything else still fails only this sid
                if self._opening.pop(sid, None) is not None:
                    self._call(self._engine.server_failed, sid, error_text(exc))
                return
        if stream is None:
            return  # cancelled: the engine closed this id while it was connecting
        if self._opening.pop(sid, None) is None:
            await stream.aclose()
            return
        tune_socket(stream.extra(SocketAttribute.raw_socket, None), self._control.config.general)
        conn = _Conn(stream, host)
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
        connected: Callable[[], None],
        data_in: Callable[..., Iterable[Effect]],
        closed: Callable[..., Iterable[Effect]],
        writable: Callable[..., Iterable[Effect]],
    ) -> None:
        """Run one connection's reader and writer until either ends, then clean up."""
        self._live += 1
        try:
            async with anyio.create_task_group() as pair:
                conn.pair = pair.cancel_scope
                pair.start_soon(self._writer, conn, key, writable, pair.cancel_scope)
                connected()
                pair.start_soon(self._reader, conn, key, data_in, pair.cancel_scope)
            if table.get(key) is conn:
                del table[key]
                self._call(closed, key)
        finally:
            self._live -= 1
            with anyio.CancelScope(shield=True):
                await _close(conn.stream, abort=self._forced)

    async def _reader(
        self,
        conn: _Conn,
        key: int,
        data_in: Callable[..., Iterable[Effect]],
        pair: anyio.CancelScope,
    ) -> None:
        try:
            while not conn.closing:
                if not conn.reading:
                    await conn.resumed.wait()
                    continue
                data = await conn.stream.receive()
                # Paused while that receive was under way: hold the bytes until resumed.
                while not conn.reading and not conn.closing:
                    await conn.resumed.wait()
                if conn.closing:
                    break
                self._call(data_in, key, data)
        except _GONE:
            pass
        if not conn.closing:  # the peer left: the writer has nothing more to do
            pair.cancel()

    async def _writer(
        self,
        conn: _Conn,
        key: int,
        writable: Callable[..., Iterable[Effect]],
        pair: anyio.CancelScope,
    ) -> None:
        out = conn.out
        try:
            while True:
                if out:
                    data = out.take()
                    await conn.stream.send(data)
                    if out.sent(len(data)) and not conn.closing:
                        self._call(writable, key, True)
                elif conn.upgrade is not None and not conn.closing:
                    if not await self._start_tls(conn, key):
                        break
                elif conn.closing:
                    break
                else:
                    conn.wake = anyio.Event()
                    await conn.wake.wait()
        except _GONE:
            pass
        pair.cancel()

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
            conn.stream = await TLSStream.wrap(
                conn.stream,
                server_side=server_side,
                hostname=None if server_side else conn.host,
                ssl_context=self._control.tls.context(kind),
                standard_compatible=False,  # PostgreSQL peers close without close_notify
            )
        except Exception as exc:  # ssl.SSLError, a broken stream: this connection only
            if table.get(key) is conn:
                del table[key]
                self._call(report, key, error_text(exc))
            return False
        finally:
            conn.upgrading = False
        if table.get(key) is not conn:
            return False
        _set_reading(conn, True)
        self._call(report, key, None)
        return True

    def _arm_timer(self, at: float) -> None:
        if at == self._wakeup_at:
            return
        self._wakeup_at = at if math.isfinite(at) else None
        self._timer_changed.set()

    async def _run_timer(self) -> None:
        # One task, sleeping until the engine's deadline or until a new one replaces it.
        # Deadlines are time.monotonic() values; trio's clock is not, so the task sleeps
        # for the difference rather than until an absolute time.
        while True:
            changed = self._timer_changed = anyio.Event()
            at = self._wakeup_at
            delay = math.inf if at is None else at - time.monotonic()
            if delay > 0:
                with anyio.move_on_after(delay):
                    await changed.wait()
                continue  # a new deadline, or this one's time has come: look again
            self._wakeup_at = None
            self._call(self._engine.tick)


async def _listen(host: str, port: int) -> list[anyio.abc.SocketListener]:
    """Listening sockets on every address ``host`` resolves to, as asyncio's create_server."""
    try:
        multi = await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        raise FrontendError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return [cast(anyio.abc.SocketListener, listener) for listener in multi.listeners]


def _set_reading(conn: _Conn, on: bool) -> None:
    if on and not conn.reading:
        conn.resumed.set()
        conn.resumed = anyio.Event()
    conn.reading = on


async def _close(stream: anyio.abc.ByteStream, *, abort: bool) -> None:
    if abort:
        await anyio.aclose_forcefully(stream)
    else:
        try:
            await stream.aclose()
        except _GONE:
            pass


def _backend_name() -> str:
    import sniffio  # noqa: PLC0415 - anyio depends on it

    return sniffio.current_async_library()


async def serve(
    config: Config,
    *,
    config_path: str | None = None,
    ready: Ready | None = None,
    handle_signals: bool = True,
    engine: EngineAPI | None = None,
) -> int:
    """Run the pooler in the running anyio event loop until it exits; return the code.

    ``config.general.port`` 0 binds a free port; ``ready`` then learns which. Signals
    need the main thread: pass ``handle_signals=False`` elsewhere. ``engine`` replaces
    the real engine (tests).

    Raises:
        FrontendError: the pooler cannot start.
    """
    if engine is None:
        engine = real_engine(config)
    frontend = AnyioFrontend(engine, config, config_path=config_path)
    return await frontend.serve(ready, handle_signals=handle_signals)


def run(
    config: Config,
    *,
    config_path: str | None,
    backend: Literal["anyio", "trio"] | str = "anyio",
    ready: Ready | None = None,
) -> int:
    """Run the pooler with anyio on asyncio (``backend="anyio"``) or on trio until it exits.

    Returns the exit code. Raises :class:`FrontendError` if it cannot start, including
    when trio is asked for and not installed.
    """
    name = "trio" if backend == "trio" else "anyio"
    problem = missing(name)
    if problem is not None:
        raise FrontendError(problem)
    return anyio.run(
        functools.partial(serve, config, config_path=config_path, ready=ready),
        backend="trio" if name == "trio" else "asyncio",
    )
