"""The asyncio frontend: asyncio.Protocol callbacks in, engine effects out.

Protocols rather than streams (as asyncpg does): ``data_received`` hands each
``recv()`` straight to the engine, with no reader task, buffer or await per chunk.
Every callback does the same two things: call one engine method with
``time.monotonic()`` (through :meth:`AsyncioFrontend._call`) and pass the effects to
:meth:`AsyncioFrontend._apply`, which carries them out in order. Nothing in an effect
runs engine code synchronously (``write`` and ``close`` schedule their callbacks), so
the engine is never re-entered. Backpressure is the transports' own: ``pause_writing``
and ``resume_writing`` feed ``client_writable``/``server_writable``.

Ids: client ids come from a counter here; server ids come from the engine's
``OpenServer``. An id is in ``_clients`` / ``_servers`` while its transport is open and
the engine still knows it; a close the engine asked for removes the id first, which is
how ``connection_lost`` knows not to report it back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

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
    error_text,
    feed,
)

if TYPE_CHECKING:
    from pgsansio.config_model import Config
    from pgsansio.engine import Effect

__all__ = ["AsyncioFrontend", "run", "serve"]

log = logging.getLogger("pgsansio.frontend")
engine_log = logging.getLogger("pgsansio")


class _ClientProtocol(asyncio.Protocol):
    """A client, or a Prometheus scraper (``metrics``): the engine tells them apart."""

    __slots__ = ("_cid", "_fe", "_lost", "_metrics", "held")

    def __init__(self, fe: AsyncioFrontend, metrics: bool = False) -> None:
        self._fe = fe
        self._cid = 0
        self._metrics = metrics
        self._lost = False
        self.held: list[bytes] | None = None  # see AsyncioFrontend._start_tls

    def forget(self) -> None:
        """Count the connection as gone, once (connection_lost, or a failed TLS upgrade)."""
        if not self._lost:
            self._lost = True
            self._fe._live -= 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._fe._live += 1
        # A stream transport (uvloop's do not subclass asyncio.Transport).
        self._cid = self._fe._client_made(cast(asyncio.Transport, transport), self._metrics)

    def data_received(self, data: bytes) -> None:
        fe = self._fe
        if self.held is not None:
            self.held.append(data)
        elif self._cid in fe._clients:
            fe._call(fe._engine.client_data, self._cid, data)

    def pause_writing(self) -> None:
        fe = self._fe
        if self._cid in fe._clients:
            fe._call(fe._engine.client_writable, self._cid, False)

    def resume_writing(self) -> None:
        fe = self._fe
        if self._cid in fe._clients:
            fe._call(fe._engine.client_writable, self._cid, True)

    def eof_received(self) -> bool:
        # A client that half-closes is gone as far as PostgreSQL is concerned: returning
        # False lets the transport close, and connection_lost reports it.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        fe = self._fe
        self.forget()
        if fe._clients.pop(self._cid, None) is not None:
            fe._call(fe._engine.client_closed, self._cid)


class _ServerProtocol(asyncio.Protocol):
    __slots__ = ("_fe", "_lost", "_sid", "held", "host")

    def __init__(self, fe: AsyncioFrontend, sid: int, host: str) -> None:
        self._fe = fe
        self._sid = sid
        self.host = host  # what a verified server certificate must name
        self._lost = False
        self.held: list[bytes] | None = None  # see AsyncioFrontend._start_tls

    def forget(self) -> None:
        """Count the connection as gone, once (connection_lost, or a failed TLS upgrade)."""
        if not self._lost:
            self._lost = True
            self._fe._live -= 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Reported from here, not after create_connection returns: the server's first
        # bytes could otherwise reach data_received before the engine knows the
        # connection is up.
        self._fe._live += 1
        self._fe._server_made(self._sid, cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        fe = self._fe
        if self.held is not None:
            self.held.append(data)
        elif self._sid in fe._servers:
            fe._call(fe._engine.server_data, self._sid, data)

    def pause_writing(self) -> None:
        fe = self._fe
        if self._sid in fe._servers:
            fe._call(fe._engine.server_writable, self._sid, False)

    def resume_writing(self) -> None:
        fe = self._fe
        if self._sid in fe._servers:
            fe._call(fe._engine.server_writable, self._sid, True)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        fe = self._fe
        self.forget()
        if fe._servers.pop(self._sid, None) is not None:
            fe._call(fe._engine.server_closed, self._sid)


class AsyncioFrontend:
    """Runs one engine on the running asyncio (or uvloop) event loop.

    Most code wants :func:`serve` or :func:`run`; this class is public so that tests
    and embedders can reach :meth:`signal` (what the operator's signals do) and
    :attr:`address`.
    """

    def __init__(self, engine: EngineAPI, config: Config, *, config_path: str | None) -> None:
        self._engine = engine
        self._control = Control(engine, config, config_path)
        self._clients: dict[int, asyncio.Transport] = {}
        self._servers: dict[int, asyncio.Transport] = {}
        self._opening: dict[int, asyncio.Task[None]] = {}
        self._upgrading: set[asyncio.Task[None]] = set()  # TLS handshakes under way
        self._cids = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._wakeup_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Future[int] | None = None
        self._forced = False
        self._live = 0  # transports whose connection_lost has not run yet
        self.address: tuple[str, int] | None = None
        """The bound (host, port) once :meth:`serve` listens (port 0 is resolved)."""

    # ------------------------------------------------------------------ lifecycle

    async def serve(self, ready: Ready | None = None, *, handle_signals: bool = True) -> int:
        """Listen, run until the engine says Exit (or a second signal), return the code.

        Raises:
            FrontendError: the listening address cannot be bound, or signals were asked
                for outside the main thread.
        """
        loop = self._loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        general = self._control.config.general
        if handle_signals and threading.current_thread() is not threading.main_thread():
            raise FrontendError(
                "signals can only be handled in the main thread; "
                "serve(handle_signals=False) in other threads"
            )
        listeners = [await self._listen(general.host, general.port, metrics=False)]
        if general.enable_prometheus_exporter:
            try:
                port = general.prometheus_exporter_port
                listeners.append(await self._listen(general.host, port, metrics=True))
            except FrontendError:
                listeners[0].close()
                raise
        host, port = listeners[0].sockets[0].getsockname()[:2]
        self.address = (host, port)
        signals = self._install_signals(loop) if handle_signals else []
        try:
            self._call(self._engine.start)
            flavour = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
            log.info("listening on %s:%d (asyncio frontend, %s event loop)", host, port, flavour)
            if ready is not None:
                ready(self.address)
            return await self._done
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
            for listener in listeners:
                listener.close()
            self._close_everything()
            await self._drain()

    async def _listen(self, host: str, port: int, *, metrics: bool) -> asyncio.Server:
        assert self._loop is not None
        try:
            return await self._loop.create_server(
                lambda: _ClientProtocol(self, metrics), host, port, reuse_address=True
            )
        except OSError as exc:
            raise FrontendError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

    async def _drain(self) -> None:
        # The engine's last words (an ErrorResponse before CloseClient, say) may still be
        # in write buffers; the loop ends when serve() returns and would drop them. Wait
        # a moment for every connection to finish closing, but not after a forced exit.
        deadline = time.monotonic() + DRAIN_SECONDS
        while self._live and not self._forced and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        for signum in OPERATOR_SIGNALS:
            loop.add_signal_handler(signum, self.signal, signum)
        return list(OPERATOR_SIGNALS)

    def _finish(self, code: int) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(code)

    def _close_everything(self) -> None:
        # The ids are dropped before the transports close, so connection_lost reports
        # nothing to an engine that has already finished. A forced exit does not flush.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in [*self._opening.values(), *self._upgrading]:
            task.cancel()
        self._opening.clear()
        transports = [*self._clients.values(), *self._servers.values()]
        self._clients.clear()
        self._servers.clear()
        for transport in transports:
            if self._forced:
                transport.abort()
            else:
                transport.close()

    # ---------------------------------------------------------------- operator actions

    def signal(self, signum: int) -> None:
        """Do what the operator's signal ``signum`` asks (see :mod:`pgsansio.frontends`)."""
        what = self._control.on_signal(signum)
        if isinstance(what, int):
            self._forced = True
            self._finish(what)
        elif what is not None:
            self._call(what)

    def _console_reload(self) -> None:
        """The admin console's RELOAD (the engine's ``Reload`` effect)."""
        what = self._control.reload(asked_by_engine=True)
        if what is not None:
            self._call(what)

    def signal_threadsafe(self, signum: int) -> None:
        """:meth:`signal` from another thread (tests, embedders), once serving."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.signal, signum)

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
        for effect in effects:
            # The two effects of nearly every call, before the class patterns (each
            # case tried costs an isinstance and attribute reads).
            if type(effect) is SendClient:
                transport = self._clients.get(effect.cid)
                if transport is not None:
                    transport.write(effect.data)
                continue
            if type(effect) is SendServer:
                transport = self._servers.get(effect.sid)
                if transport is not None:
                    transport.write(effect.data)
                continue
            match effect:
                case SendClient(cid, data):
                    transport = self._clients.get(cid)
                    if transport is not None:
                        transport.write(data)
                case SendServer(sid, data):
                    transport = self._servers.get(sid)
                    if transport is not None:
                        transport.write(data)
                case Wakeup(at):
                    self._arm_timer(at)
                case OpenServer(sid, host, port):
                    self._opening[sid] = asyncio.ensure_future(self._open_server(sid, host, port))
                case CloseClient(cid):
                    transport = self._clients.pop(cid, None)
                    if transport is not None:
                        transport.close()
                case CloseServer(sid):
                    transport = self._servers.pop(sid, None)
                    if transport is not None:
                        transport.close()
                    task = self._opening.pop(sid, None)
                    if task is not None:
                        task.cancel()
                case ReadServer(sid, on):
                    transport = self._servers.get(sid)
                    if transport is not None:
                        transport.resume_reading() if on else transport.pause_reading()
                case ReadClient(cid, on):
                    transport = self._clients.get(cid)
                    if transport is not None:
                        transport.resume_reading() if on else transport.pause_reading()
                case StartTls(kind, key):
                    table = self._clients if kind == "client" else self._servers
                    transport = table.get(key)
                    if transport is not None:
                        transport.pause_reading()  # not one byte in clear after the S
                        task = asyncio.ensure_future(self._start_tls(kind, key, transport))
                        self._upgrading.add(task)
                        task.add_done_callback(self._upgrading.discard)
                case Log(level, message):
                    engine_log.log(level, message)
                case Reload():
                    # Later, not inside this engine call: the engine is never re-entered.
                    assert self._loop is not None
                    self._loop.call_soon(self._console_reload)
                case Exit(code):
                    self._finish(code)
                    return

    def _client_made(self, transport: asyncio.Transport, metrics: bool) -> int:
        cid = next(self._cids)
        tune_socket(transport.get_extra_info("socket"), self._control.config.general)
        self._clients[cid] = transport
        connected = self._engine.metrics_connected if metrics else self._engine.client_connected
        self._call(connected, cid, peer_text(transport.get_extra_info("peername")))
        return cid

    def _server_made(self, sid: int, transport: asyncio.Transport) -> None:
        if self._opening.pop(sid, None) is None:
            transport.close()  # the engine closed this id while it was connecting
            return
        tune_socket(transport.get_extra_info("socket"), self._control.config.general)
        self._servers[sid] = transport
        self._call(self._engine.server_connected, sid)

    async def _open_server(self, sid: int, host: str, port: int) -> None:
        assert self._loop is not None
        try:
            await self._loop.create_connection(
                lambda: _ServerProtocol(self, sid, host), host, port
            )
        except Exception as exc:  # OSError mostly; anything else still fails only this sid
            if self._opening.pop(sid, None) is not None:
                self._call(self._engine.server_failed, sid, str(exc) or type(exc).__name__)

    async def _start_tls(self, kind: str, key: int, transport: asyncio.Transport) -> None:
        """Upgrade a connection to TLS (the engine's StartTls) and report how it went.

        The peer may send its first encrypted message together with the end of the
        handshake, and asyncio hands that to ``data_received`` before ``start_tls``
        returns here; the protocol holds such data until the engine has heard that TLS
        is up, so the engine never answers on the old, unencrypted transport.
        """
        assert self._loop is not None
        server_side = kind == "client"
        table = self._clients if server_side else self._servers
        report = self._engine.client_tls if server_side else self._engine.server_tls
        data_in = self._engine.client_data if server_side else self._engine.server_data
        protocol = cast(_ClientProtocol | _ServerProtocol, transport.get_protocol())
        hostname = None if server_side else cast(_ServerProtocol, protocol).host
        protocol.held = []
        try:
            upgraded = await self._loop.start_tls(
                transport,
                protocol,
                self._control.tls.context(kind),
                server_side=server_side,
                server_hostname=hostname,
            )
        except Exception as exc:  # ssl.SSLError, OSError, a timeout: this connection only
            protocol.forget()  # its connection_lost may never come once start_tls failed
            if table.get(key) is transport:
                del table[key]
                transport.abort()
                self._call(report, key, error_text(exc))
            return
        if upgraded is None or table.get(key) is not transport:
            if upgraded is not None:
                upgraded.abort()  # closed by the engine during the handshake
            return
        table[key] = upgraded
        held, protocol.held = protocol.held, None
        self._call(report, key, None)
        for data in held or ():
            if table.get(key) is upgraded:
                self._call(data_in, key, data)

    def _arm_timer(self, at: float) -> None:
        if at == self._wakeup_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wakeup_at = None
        if math.isfinite(at):
            assert self._loop is not None
            self._wakeup_at = at
            self._timer = self._loop.call_later(max(0.0, at - time.monotonic()), self._fire)

    def _fire(self) -> None:
        # The loop's clock is not time.monotonic() under uvloop (it counts whole
        # milliseconds), so a timer may fire a hair early by our clock: wait out the rest
        # rather than call tick() before the deadline.
        assert self._loop is not None and self._wakeup_at is not None
        remaining = self._wakeup_at - time.monotonic()
        if remaining > 0:
            self._timer = self._loop.call_later(remaining, self._fire)
            return
        self._timer = None
        self._wakeup_at = None
        self._call(self._engine.tick)


async def serve(
    config: Config,
    *,
    config_path: str | None = None,
    ready: Ready | None = None,
    handle_signals: bool = True,
    engine: EngineAPI | None = None,
) -> int:
    """Run the pooler on the running event loop until it exits; return the exit code.

    ``config.general.port`` 0 binds a free port; ``ready`` then learns which. Signals
    need the main thread: pass ``handle_signals=False`` elsewhere. ``engine`` replaces
    the real engine (tests).

    Raises:
        FrontendError: the pooler cannot start.
    """
    if engine is None:
        engine = real_engine(config)
    frontend = AsyncioFrontend(engine, config, config_path=config_path)
    return await frontend.serve(ready, handle_signals=handle_signals)


def run(
    config: Config,
    *,
    config_path: str | None,
    use_uvloop: bool,
    ready: Ready | None = None,
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
