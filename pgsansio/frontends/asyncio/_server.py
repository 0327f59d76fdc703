"""The asyncio adapter (and uvloop's, the same code on a faster loop).

Protocols rather than streams (as asyncpg does): ``data_received`` hands each
``recv()`` straight to the engine, with no reader task, buffer or await per chunk. The
transports are the driver's connections as they are (``write``, ``close``, ``abort``,
``pause_reading``/``resume_reading``), so applying a ``SendClient`` is one dictionary
look-up and one ``transport.write``. Backpressure is the transports' own:
``pause_writing`` and ``resume_writing`` report the peer (not) writable; asyncio calls
``pause_writing`` from inside ``write``, so the driver queues that report until the
batch is applied.

Everything else (ids, the batch, the timer's meaning, signals, reload, shutdown) is
:mod:`pgsansio.frontends._driver`'s. What is asyncio's own:

* a server connection is reported from ``connection_made``, not after
  ``create_connection`` returns: the server's first bytes could otherwise reach
  ``data_received`` before the engine knows the connection is up;
* TLS is ``loop.start_tls``. The peer may send its first encrypted message with the
  end of the handshake, and asyncio hands it to ``data_received`` before ``start_tls``
  returns; the protocol holds it until the engine has heard that TLS is up;
* reads (asyncio's loop, plain or TLS) go into one buffer per driver, through
  :class:`asyncio.BufferedProtocol`, and what came is copied out at once (as
  :mod:`._tasks` does): asyncio's ``data_received`` path reads with ``recv(256 KiB)``
  (``SSLObject.read(256 KiB)`` under TLS), and glibc serves each such allocation
  with ``mmap``, then ``mremap`` to shrink it and ``munmap`` to free it, unless an
  earlier large free happened to raise its mmap threshold: three system calls more per
  read, which nearly doubled the pooler's CPU per transaction in whichever build's
  allocation history left the threshold low (compiled in one run, pure Python in
  another). uvloop keeps ``data_received``:
  it reads into a buffer of its own and copies the bytes out in C already; a
  ``get_buffer``/``buffer_updated`` pair per read measured no better there (same
  system calls, same CPU per transaction within noise) and adds Python per read;
* the loop's clock is not ``time.monotonic()`` under uvloop (whole milliseconds), so a
  timer may fire a hair early by our clock; the driver then re-arms it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from pgsansio.frontends import EngineAPI, FrontendError, Ready, listen_failed, missing
from pgsansio.frontends import tune_socket as _tune
from pgsansio.frontends._driver import OPERATOR_SIGNALS, Driver, server_path
from pgsansio.frontends._tasks import READ_SIZE

if TYPE_CHECKING:
    from pgsansio.config.model import Config

__all__ = ["AsyncioFrontend", "run", "serve"]


class _Protocol(asyncio.Protocol):
    """One connection: a client, a Prometheus scraper or a server (``sid`` given)."""

    __slots__ = ("_fe", "_lost", "held", "host", "key", "metrics", "server")

    def __init__(
        self, fe: AsyncioFrontend, *, metrics: bool = False, sid: int = 0, host: str = ""
    ) -> None:
        self._fe = fe
        self.metrics = metrics
        self.server = bool(sid)
        self.key = sid
        self.host = host  # a server's name, which a verified certificate must carry
        self._lost = False
        self.held: list[bytes] | None = None  # bytes that came during a TLS handshake

    def forget(self) -> None:
        """Count the connection as gone, once (connection_lost, or a failed TLS upgrade)."""
        if not self._lost:
            self._lost = True
            self._fe.connection_lost()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        fe = self._fe
        fe.connection_made()
        stream = cast(asyncio.Transport, transport)  # uvloop's do not subclass Transport
        sock = transport.get_extra_info("socket")
        fe.tune(sock, server=self.server)
        if not self.server:
            peer = fe.peer_of(sock, transport.get_extra_info("peername"))
            self.key = fe.client_made(stream, peer, metrics=self.metrics)
        elif not fe.server_made(self.key, stream):
            transport.close()  # the engine closed this id while it was connecting

    def data_received(self, data: bytes) -> None:
        fe = self._fe
        if self.held is not None:
            self.held.append(data)
        elif self.server:
            if self.key in fe.servers:
                fe.call(fe.engine.server_data, self.key, data)
        elif self.key in fe.clients:
            fe.call(fe.engine.client_data, self.key, data)

    def pause_writing(self) -> None:
        self._fe.writable(self.server, self.key, False)

    def resume_writing(self) -> None:
        self._fe.writable(self.server, self.key, True)

    def eof_received(self) -> bool:
        # A peer that half-closes is gone as far as PostgreSQL is concerned: returning
        # False lets the transport close, and connection_lost reports it.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.forget()
        self._fe.peer_gone(self.server, self.key)


class _BufferedProtocol(_Protocol, asyncio.BufferedProtocol):
    """A connection on asyncio's own loop: reads land in the driver's one buffer.

    The transport (or asyncio's TLS layer) calls ``get_buffer``, reads into it and calls
    ``buffer_updated`` with no other callback in between, and the bytes are copied out
    before anything else runs, so every connection can share the buffer.
    """

    __slots__ = ()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._fe.read_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._fe.read_view[:nbytes].tobytes())


class AsyncioFrontend(Driver):
    """The driver on the running asyncio (or uvloop) event loop."""

    #: What the "listening on" line calls this runtime (the anyio frontend on asyncio
    #: runs this adapter under its own name; see pgsansio.frontends.anyio).
    WHAT: str | None = None

    def __init__(self, engine: EngineAPI, config: Config, *, config_path: str | None) -> None:
        super().__init__(engine, config, config_path=config_path)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._done: asyncio.Future[None] | None = None
        self._upgrading: set[asyncio.Task[None]] = set()  # TLS handshakes under way
        self._uvloop = False  # the running loop is uvloop's (see tune)
        # What every connection's reads land in first (see _BufferedProtocol), and the
        # protocol class for this loop (set in serve).
        self.read_view = memoryview(bytearray(READ_SIZE))
        self._protocol: type[_Protocol] = _BufferedProtocol

    async def serve(self, ready: Ready | None = None, *, handle_signals: bool = True) -> int:
        """See ``Driver.serve``."""
        self._check_thread(handle_signals)
        loop = self._loop = asyncio.get_running_loop()
        self._uvloop = type(loop).__module__.startswith("uvloop")
        self._protocol = _Protocol if self._uvloop else _BufferedProtocol
        self._done = loop.create_future()
        listeners: list[asyncio.Server] = []
        try:
            for port, metrics in self._ports():
                listeners.append(await self._listen(port, metrics))
            for unix in self._unix_listeners(listeners[0].sockets[0].getsockname()[1]):
                listeners.append(
                    await loop.create_unix_server(lambda: self._protocol(self), sock=unix)
                )
            if handle_signals:
                for signum in OPERATOR_SIGNALS:
                    loop.add_signal_handler(signum, self.signal, signum)
            flavour = "uvloop" if self._uvloop else "asyncio"
            address = listeners[0].sockets[0].getsockname()
            self._started(ready, address, self.WHAT or f"asyncio frontend, {flavour} event loop")
            await self._done
        finally:
            if handle_signals:
                for signum in OPERATOR_SIGNALS:
                    loop.remove_signal_handler(signum)
            for listener in listeners:
                listener.close()
            self._unlink_unix()
            self._close_everything()
            for task in self._upgrading:
                task.cancel()
            await self._drain(asyncio.sleep)
        return self._code if self._code is not None else 0

    async def _listen(self, port: int, metrics: bool) -> asyncio.Server:
        host = self.config.general.host
        hosts = self._hosts()
        listen: list[str] | None = None if None in hosts else [h for h in hosts if h]
        try:
            return await asyncio.get_running_loop().create_server(
                lambda: self._protocol(self, metrics=metrics),
                listen,
                port,
                reuse_address=True,
                reuse_port=self.reuse_port,
                backlog=self.config.general.listen_backlog,
            )
        except OSError as exc:
            raise listen_failed(host, port, exc) from None

    def tune(self, sock: Any, *, server: bool) -> None:
        """tune_socket, without what the loop does already: TCP_NODELAY is set on every
        TCP transport by asyncio and uvloop alike. Under uvloop, through one socket
        object for all the options, since its transport's socket makes a new one (and
        a getsockname call) for every setsockopt: at a login per transaction
        (pgbench -C) those system calls add up."""
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        general = self.config.general
        if not self._uvloop:
            _tune(sock, general, server=server, nodelay=False)
            return
        own = socket.socket(sock.family, socket.SOCK_STREAM, 0, sock.fileno())
        try:
            _tune(own, general, server=server, nodelay=False)
        finally:
            own.detach()  # the descriptor stays the transport's

    def signal_threadsafe(self, signum: int) -> None:
        """:meth:`signal` from another thread (tests, embedders), once serving."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.signal, signum)

    # ------------------------------------------------------------ the driver's hooks

    def _stop(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _open_server(self, sid: int, host: str, port: int) -> asyncio.Task[None]:
        return asyncio.ensure_future(self._connect(sid, host, port))

    def _cancel_open(self, handle: asyncio.Task[None]) -> None:
        handle.cancel()

    async def _connect(self, sid: int, host: str, port: int) -> None:
        try:
            loop = asyncio.get_running_loop()
            path = server_path(host, port)
            if path is not None:
                await loop.create_unix_connection(lambda: self._protocol(self, sid=sid), path)
            else:
                await loop.create_connection(
                    lambda: self._protocol(self, sid=sid, host=host), host, port
                )
        except Exception as exc:  # OSError mostly; anything else still fails only this sid
            self.server_failed(sid, exc)

    def _plain_socket(self, conn: asyncio.Transport) -> Any:  # type: ignore[override]
        # connection_lost comes before the transport closes its socket (asyncio's and
        # uvloop's), so what the server left is still there to read.
        if conn.get_extra_info("ssl_object") is not None:
            return None
        return conn.get_extra_info("socket")

    def _start_tls(self, kind: str, key: int, conn: asyncio.Transport) -> None:  # type: ignore[override]
        task = asyncio.ensure_future(self._handshake(kind, key, conn))
        self._upgrading.add(task)
        task.add_done_callback(self._upgrading.discard)

    async def _handshake(self, kind: str, key: int, transport: asyncio.Transport) -> None:
        server_side = kind == "client"
        protocol = cast(_Protocol, transport.get_protocol())
        protocol.held = []
        try:
            upgraded = await asyncio.get_running_loop().start_tls(
                transport,
                protocol,
                self.tls.context(kind),
                server_side=server_side,
                server_hostname=None if server_side else protocol.host,
            )
        except Exception as exc:  # ssl.SSLError, OSError, a timeout: this connection only
            protocol.forget()  # its connection_lost may never come once start_tls failed
            self.tls_done(kind, key, transport, None, exc)
            return
        if upgraded is None:
            return
        held, protocol.held = protocol.held, None
        if not self.tls_done(kind, key, transport, upgraded, None):
            upgraded.abort()  # closed by the engine during the handshake
            return
        engine = self.engine
        data_in = engine.client_data if server_side else engine.server_data
        table = self.clients if server_side else self.servers
        for data in held or ():
            if table.get(key) is upgraded:
                self.call(data_in, key, data)

    def _arm(self, at: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if at is not None:
            delay = max(0.0, at - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self.timer_fired)


serve = AsyncioFrontend.serve_config
"""Run the pooler on the running event loop until it exits (see ``Driver.serve_config``)."""


def run(
    config: Config, *, config_path: str | None, use_uvloop: bool, ready: Ready | None = None
) -> int:
    """Run the pooler in a new event loop (uvloop's if asked) until it exits.

    Returns the exit code. Raises :class:`FrontendError` if it cannot start, including
    when uvloop is asked for and not installed.
    """
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if use_uvloop:
        try:
            import uvloop  # noqa: PLC0415 - optional dependency
        except ImportError:
            raise FrontendError(missing("uvloop") or "uvloop cannot be imported") from None
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(serve(config, config_path=config_path, ready=ready))
