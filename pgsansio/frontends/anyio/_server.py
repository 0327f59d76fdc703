"""The anyio adapter: one code path for asyncio (``--frontend anyio``) and trio.

Each connection has a reader task that hands each ``receive()`` to the engine, and a
writer task that sends what the engine wrote into the connection's
:class:`~pgsansio.frontends._driver.Outbox`, in a task group of their own that ends
when either does. anyio's ``send()`` returns only when the bytes are gone, so
``write`` only buffers and wakes the writer: a batch that writes to one peer several
times costs one send and one task switch, not one per write. The outbox also counts
what waits, since anyio does not say when a socket's buffer is full, and reports the
peer (not) writable at the water marks asyncio uses.

Everything else (ids, the batch, the timer's meaning, signals, reload, shutdown) is
:mod:`pgsansio.frontends._driver`'s. What is anyio's own:

* TLS (``StartTls``): the reader is paused at once (it is never inside a receive then:
  StartTls only answers bytes it has just handed over); the writer sends what came
  before (the ``S``), does the handshake (``TLSStream.wrap``), puts the encrypted stream
  in place and switches reading back on before the engine hears that TLS is up;
* the timer is one task sleeping until the deadline or until a new one replaces it,
  for the difference from ``time.monotonic()`` (trio's clock starts at a random offset);
* ``abort`` cancels a connection's two tasks; the stream is then closed forcefully when
  the exit is forced.
"""

from __future__ import annotations

import functools
import math
import time
from typing import TYPE_CHECKING, Literal, cast

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSStream

from pgsansio.frontends import EngineAPI, FrontendError, Ready, missing, peer_text
from pgsansio.frontends import tune_socket as _tune
from pgsansio.frontends._driver import OPERATOR_SIGNALS, Driver, Outbox, log

if TYPE_CHECKING:
    from pgsansio.config_model import Config

__all__ = ["AnyioFrontend", "run", "serve"]

_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
"""What a read or write raises when the peer went away or the stream was closed."""


class _Conn:
    """One connection, client or server, and the state its two tasks share."""

    __slots__ = (
        "closing", "fe", "host", "key", "out", "pair", "reading", "resumed", "server",
        "stream", "upgrade", "upgrading", "wake",
    )  # fmt: skip

    def __init__(self, fe: AnyioFrontend, stream: anyio.abc.ByteStream, host: str = "") -> None:
        self.fe = fe
        self.stream = stream
        self.server = bool(host)
        self.host = host  # a server's name, which a verified certificate must carry
        self.key = 0
        self.out = Outbox()
        self.wake = anyio.Event()  # set when the writer has something to do
        self.reading = True
        self.resumed = anyio.Event()  # set when reading is switched back on
        self.closing = False  # closed by the engine (or aborted): read no more
        self.upgrade: str | None = None  # StartTls asked for ("client"/"server")
        self.upgrading = False  # the handshake is under way
        self.pair: anyio.CancelScope | None = None  # cancels the reader and the writer

    def write(self, data: bytes) -> None:
        if self.out.put(data):
            self.fe._writable(self.server, self.key, False)
        self.wake.set()

    def close(self) -> None:
        """Flush, then close; a TLS handshake is cut short."""
        self.closing = True
        self.wake.set()
        if self.upgrading and self.pair is not None:
            self.pair.cancel()

    def abort(self) -> None:
        self.closing = True
        if self.pair is not None:
            self.pair.cancel()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        if not self.reading:
            self.reading = True
            self.resumed.set()
            self.resumed = anyio.Event()


class AnyioFrontend(Driver):
    """The driver under anyio, on asyncio or on trio."""

    def __init__(self, engine: EngineAPI, config: Config, *, config_path: str | None) -> None:
        super().__init__(engine, config, config_path=config_path)
        self._tg: anyio.abc.TaskGroup | None = None
        self._timer_changed = anyio.Event()
        self._done = anyio.Event()
        self._token: anyio.lowlevel.EventLoopToken | None = None

    async def serve(self, ready: Ready | None = None, *, handle_signals: bool = True) -> int:
        """Listen, run until the engine says Exit, return the exit code.

        Raises:
            FrontendError: an address cannot be bound, or signals were asked for
                outside the main thread.
        """
        self._check_thread(handle_signals)
        self._token = anyio.lowlevel.current_token()
        bound: list[tuple[anyio.abc.SocketListener, bool]] = []
        try:
            for port, metrics in self._ports():
                bound += [(listener, metrics) for listener in await self._listen(port)]
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for listener, metrics in bound:
                    tg.start_soon(self._accept, listener, metrics)
                tg.start_soon(self._run_timer)
                if handle_signals:
                    await tg.start(self._handle_signals)
                address = bound[0][0].extra(SocketAttribute.local_address)
                self._started(ready, address, f"anyio frontend, {_backend_name()} backend")
                await self._done.wait()
                for listener, _ in bound:
                    await listener.aclose()
                self._close_everything()
                await self._drain(anyio.sleep)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                for listener, _ in bound:
                    await listener.aclose()
        return self._code if self._code is not None else 0

    async def _listen(self, port: int) -> list[anyio.abc.SocketListener]:
        """Listeners on every address the host resolves to, as asyncio's create_server."""
        host = self.config.general.host
        try:
            multi = await anyio.create_tcp_listener(local_host=host, local_port=port)
        except OSError as exc:
            raise FrontendError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        return [cast(anyio.abc.SocketListener, listener) for listener in multi.listeners]

    async def _handle_signals(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(*OPERATOR_SIGNALS) as signals:
            task_status.started()
            async for signum in signals:
                self.signal(signum)

    def signal_threadsafe(self, signum: int) -> None:
        """:meth:`signal` from another thread (tests, embedders), once serving."""
        anyio.from_thread.run_sync(self.signal, signum, token=self._token)

    async def _accept(self, listener: anyio.abc.SocketListener, metrics: bool) -> None:
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
            conn = _Conn(self, stream)
            _tune(stream.extra(SocketAttribute.raw_socket, None), self.config.general)
            peer = peer_text(stream.extra(SocketAttribute.remote_address, None))
            conn.key = self._client_made(conn, peer, metrics=metrics)
            self._tg.start_soon(self._connection, conn)

    async def _connect(self, sid: int, host: str, port: int, scope: anyio.CancelScope) -> None:
        stream: anyio.abc.SocketStream | None = None
        with scope:
            try:
                stream = await anyio.connect_tcp(host, port)
            except Exception as exc:  # OSError mostly; anything else still fails only this sid
                self._server_failed(sid, exc)
                return
        if stream is None:
            return  # cancelled: the engine closed this id while it was connecting
        _tune(stream.extra(SocketAttribute.raw_socket, None), self.config.general)
        conn = _Conn(self, stream, host)
        conn.key = sid
        if self._server_made(sid, conn):
            await self._connection(conn)
        else:
            await stream.aclose()

    async def _connection(self, conn: _Conn) -> None:
        """Run one connection's reader and writer until either ends, then clean up."""
        self._live += 1
        try:
            async with anyio.create_task_group() as pair:
                conn.pair = pair.cancel_scope
                pair.start_soon(self._writer, conn)
                pair.start_soon(self._reader, conn)
            self._lost(conn.server, conn.key, conn)
        finally:
            self._live -= 1
            with anyio.CancelScope(shield=True):
                if self._forced:
                    await anyio.aclose_forcefully(conn.stream)
                else:
                    try:
                        await conn.stream.aclose()
                    except _GONE:
                        pass

    async def _reader(self, conn: _Conn) -> None:
        engine = self._engine
        data_in = engine.server_data if conn.server else engine.client_data
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
                self._call(data_in, conn.key, data)
        except _GONE:
            pass
        if not conn.closing and conn.pair is not None:
            conn.pair.cancel()  # the peer left: the writer has nothing more to do

    async def _writer(self, conn: _Conn) -> None:
        out = conn.out
        try:
            while True:
                if out:
                    data = out.take()
                    await conn.stream.send(data)
                    if out.sent(len(data)) and not conn.closing:
                        self._writable(conn.server, conn.key, True)
                elif conn.upgrade is not None and not conn.closing:
                    if not await self._handshake(conn, conn.upgrade):
                        break
                elif conn.closing:
                    break
                else:
                    conn.wake = anyio.Event()
                    await conn.wake.wait()
        except _GONE:
            pass
        if conn.pair is not None:
            conn.pair.cancel()

    async def _handshake(self, conn: _Conn, kind: str) -> bool:
        """Upgrade to TLS (after the S went out) and report it; whether it succeeded."""
        conn.upgrade = None
        conn.upgrading = True
        try:
            conn.stream = await TLSStream.wrap(
                conn.stream,
                server_side=not conn.server,
                hostname=conn.host or None,
                ssl_context=self.tls.context(kind),
                standard_compatible=False,  # PostgreSQL peers close without close_notify
            )
        except Exception as exc:  # ssl.SSLError, a broken stream: this connection only
            return self._tls_done(kind, conn.key, conn, None, exc)
        finally:
            conn.upgrading = False
        conn.resume_reading()
        return self._tls_done(kind, conn.key, conn, conn, None)

    # ------------------------------------------------------------ the driver's hooks

    def _stop(self) -> None:
        self._done.set()

    def _open_server(self, sid: int, host: str, port: int) -> anyio.CancelScope:
        # The scope exists before the task runs, so a CloseServer in the same batch
        # cancels the attempt before it starts.
        scope = anyio.CancelScope()
        assert self._tg is not None
        self._tg.start_soon(self._connect, sid, host, port, scope)
        return scope

    def _cancel_open(self, handle: anyio.CancelScope) -> None:
        handle.cancel()

    def _start_tls(self, kind: str, key: int, conn: _Conn) -> None:  # type: ignore[override]
        conn.upgrade = kind
        conn.wake.set()

    def _arm(self, at: float | None) -> None:
        self._timer_changed.set()

    async def _run_timer(self) -> None:
        while True:
            changed = self._timer_changed = anyio.Event()
            at = self._wakeup_at
            with anyio.move_on_after(math.inf if at is None else at - time.monotonic()):
                await changed.wait()
                continue  # a new deadline (or none)
            self._timer_fired()


def _backend_name() -> str:
    import sniffio  # noqa: PLC0415 - anyio depends on it

    return sniffio.current_async_library()


serve = AnyioFrontend.serve_config
"""Run the pooler in the running anyio event loop until it exits (see ``Driver.serve_config``)."""


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
