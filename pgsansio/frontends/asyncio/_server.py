"""The asyncio frontend: asyncio.Protocol callbacks in, engine effects out.

Protocols rather than streams (as asyncpg does): ``data_received`` hands each
``recv()`` straight to the engine, with no reader task, buffer or await per chunk.
Every callback does the same two things: call one engine method with
``time.monotonic()`` (in :meth:`AsyncioFrontend._call`, the only place that reads the
clock) and pass the effects to :meth:`AsyncioFrontend._apply`, which carries them out in
order. Nothing in an effect runs engine code synchronously (``write`` and ``close``
schedule their callbacks), so the engine is never re-entered.

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
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, cast

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
    Wakeup,
)
from pgsansio.frontends import (
    EX_SOFTWARE,
    UVLOOP_MISSING,
    EngineAPI,
    FrontendError,
    Ready,
    peer_text,
    tune_socket,
)

if TYPE_CHECKING:
    from pgsansio.config_model import Config
    from pgsansio.engine import Effect

__all__ = ["AsyncioFrontend", "run", "serve"]

log = logging.getLogger("pgsansio.frontend")
engine_log = logging.getLogger("pgsansio")

_DRAIN_SECONDS: Final = 2.0
"""How long an exit waits for the last bytes to reach clients and servers."""


class _ClientProtocol(asyncio.Protocol):
    __slots__ = ("_cid", "_fe")

    def __init__(self, fe: AsyncioFrontend) -> None:
        self._fe = fe
        self._cid = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._fe._live += 1
        # A stream transport (uvloop's do not subclass asyncio.Transport).
        self._cid = self._fe._client_made(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        fe = self._fe
        if self._cid in fe._clients:
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
        fe._live -= 1
        if fe._clients.pop(self._cid, None) is not None:
            fe._call(fe._engine.client_closed, self._cid)


class _ServerProtocol(asyncio.Protocol):
    __slots__ = ("_fe", "_sid")

    def __init__(self, fe: AsyncioFrontend, sid: int) -> None:
        self._fe = fe
        self._sid = sid

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Reported from here, not after create_connection returns: the server's first
        # bytes could otherwise reach data_received before the engine knows the
        # connection is up.
        self._fe._live += 1
        self._fe._server_made(self._sid, cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        fe = self._fe
        if self._sid in fe._servers:
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
        fe._live -= 1
        if fe._servers.pop(self._sid, None) is not None:
            fe._call(fe._engine.server_closed, self._sid)


class AsyncioFrontend:
    """Runs one engine on the running asyncio (or uvloop) event loop.

    Most code wants :func:`serve` or :func:`run`; this class is public so that tests
    and embedders can reach :meth:`reload` and :meth:`shutdown` (what SIGHUP and
    SIGINT/SIGTERM do) and :attr:`address`.
    """

    def __init__(self, engine: EngineAPI, config: Config, *, config_path: str | None) -> None:
        self._engine = engine
        self._config = config
        self._config_path = config_path
        self._clients: dict[int, asyncio.Transport] = {}
        self._servers: dict[int, asyncio.Transport] = {}
        self._opening: dict[int, asyncio.Task[None]] = {}
        self._cids = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._wakeup_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Future[int] | None = None
        self._shutting_down = False
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
        general = self._config.general
        if handle_signals and threading.current_thread() is not threading.main_thread():
            raise FrontendError(
                "signals can only be handled in the main thread; "
                "serve(handle_signals=False) in other threads"
            )
        try:
            listener = await loop.create_server(
                lambda: _ClientProtocol(self), general.host, general.port, reuse_address=True
            )
        except OSError as exc:
            raise FrontendError(
                f"cannot listen on {general.host}:{general.port}: {exc.strerror or exc}"
            ) from None
        host, port = listener.sockets[0].getsockname()[:2]
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
            listener.close()
            self._close_everything()
            await self._drain()

    async def _drain(self) -> None:
        # The engine's last words (an ErrorResponse before CloseClient, say) may still be
        # in write buffers; the loop ends when serve() returns and would drop them. Wait
        # a moment for every connection to finish closing, but not after a forced exit.
        deadline = time.monotonic() + _DRAIN_SECONDS
        while self._live and not self._forced and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        # One table of signal -> action. SIGUSR1/SIGUSR2 get their entry here when the
        # engine has an input for them (the admin console's statistics and reconnect).
        actions: dict[signal.Signals, Callable[[], None]] = {
            signal.SIGHUP: self.reload,
            signal.SIGINT: lambda: self.shutdown(signal.SIGINT),
            signal.SIGTERM: lambda: self.shutdown(signal.SIGTERM),
        }
        installed: list[int] = []
        for signum, action in actions.items():
            loop.add_signal_handler(signum, action)
            installed.append(signum)
        return installed

    def _finish(self, code: int) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(code)

    def _close_everything(self) -> None:
        # The ids are dropped before the transports close, so connection_lost reports
        # nothing to an engine that has already finished. A forced exit does not flush.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in self._opening.values():
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

    def reload(self, *, asked_by_engine: bool = False) -> None:
        """Re-read the configuration file and hand it to the engine (SIGHUP, RELOAD).

        A file that does not load is logged and the running configuration stays, so a
        typo in an edit never takes a running pooler down; when the admin console asked
        (the engine's ``Reload`` effect), the engine is told why, to answer the console.
        """
        path = self._config_path
        if path is None:
            log.warning("reload asked for, but the pooler was not started from a file")
            if asked_by_engine:
                self._call(
                    self._engine.reload_failed,
                    "the pooler was not started from a configuration file",
                )
            return
        from pgsansio.config import ConfigError, load_config  # noqa: PLC0415 - lazy

        log.info("reloading the configuration from %s", path)
        try:
            new = load_config(path)
        except ConfigError as exc:
            log.error("reload failed; the running configuration stays in force:\n%s", exc)
            if asked_by_engine:
                self._call(self._engine.reload_failed, str(exc))
            return
        for warning in new.warnings:
            log.warning("%s", warning)
        old = self._config.general
        if (new.general.host, new.general.port) != (old.host, old.port):
            log.warning(
                "host/port changed to %s:%d, but the pooler keeps listening on %s:%d "
                "until it is restarted",
                new.general.host,
                new.general.port,
                old.host,
                old.port,
            )
        self._config = new
        self._call(self._engine.reload, new)

    def shutdown(self, signum: int = signal.SIGTERM) -> None:
        """Start a graceful shutdown (SIGINT/SIGTERM); a second call exits at once."""
        name = signal.Signals(signum).name
        if not self._shutting_down:
            self._shutting_down = True
            log.info("%s: shutting down gracefully; send it again to exit at once", name)
            self._call(self._engine.shutdown)
        else:
            log.warning("%s during shutdown: exiting now, closing every connection", name)
            self._forced = True
            self._finish(128 + signum)

    # ------------------------------------------------------------ engine <-> sockets

    def _call(self, method: Callable[..., Iterable[Effect]], *args: Any) -> None:
        """Feed one input to the engine, stamped with the time, and apply its effects."""
        try:
            effects = method(*args, time.monotonic())
        except Exception:
            log.critical(
                "the engine raised an exception, which is a bug in pgsansio; exiting",
                exc_info=True,
            )
            self._finish(EX_SOFTWARE)
            return
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
                case Log(level, message):
                    engine_log.log(level, message)
                case Reload():
                    # Later, not inside this engine call: the engine is never re-entered.
                    assert self._loop is not None
                    self._loop.call_soon(lambda: self.reload(asked_by_engine=True))
                case Exit(code):
                    self._finish(code)
                    return

    def _client_made(self, transport: asyncio.Transport) -> int:
        cid = next(self._cids)
        tune_socket(transport.get_extra_info("socket"), self._config.general)
        self._clients[cid] = transport
        self._call(self._engine.client_connected, cid, peer_text(transport))
        return cid

    def _server_made(self, sid: int, transport: asyncio.Transport) -> None:
        if self._opening.pop(sid, None) is None:
            transport.close()  # the engine closed this id while it was connecting
            return
        tune_socket(transport.get_extra_info("socket"), self._config.general)
        self._servers[sid] = transport
        self._call(self._engine.server_connected, sid)

    async def _open_server(self, sid: int, host: str, port: int) -> None:
        assert self._loop is not None
        try:
            await self._loop.create_connection(lambda: _ServerProtocol(self, sid), host, port)
        except Exception as exc:  # OSError mostly; anything else still fails only this sid
            if self._opening.pop(sid, None) is not None:
                self._call(self._engine.server_failed, sid, str(exc) or type(exc).__name__)

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
    (SIGHUP reload, SIGINT/SIGTERM shutdown) need the main thread: pass
    ``handle_signals=False`` elsewhere. ``engine`` replaces the real engine (tests).

    Raises:
        FrontendError: the pooler cannot start.
    """
    if engine is None:
        from pgsansio.engine import Engine  # noqa: PLC0415 - only the real run needs it

        engine = Engine(config, seed=None)
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
            raise FrontendError(UVLOOP_MISSING) from None
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(serve(config, config_path=config_path, ready=ready))
