"""The frontend driver: what every runtime does alike, written once.

A frontend is this :class:`Driver` plus a small adapter for one runtime (hypercorn's
``asyncio/tcp_server.py`` and ``trio/tcp_server.py`` are the model: one shape, a few
runtime calls). The driver owns:

* **the id tables.** ``clients`` / ``servers`` map an id to its connection (an object
  with ``write``, ``close``, ``abort``, ``pause_reading`` and ``resume_reading``: an
  asyncio transport as it is, or an adapter's own class). An id is in its table while
  the connection is open and the engine still knows it; a close the engine asked for
  removes it first, which is how a connection that ends later knows not to report it.
  Client (and scraper) ids come from one counter here; server ids from ``OpenServer``.
* **feeding the engine and applying a batch.** :meth:`Driver.call` stamps an input
  with ``time.monotonic()`` (every frontend's clock, whatever its runtime's is: trio's
  starts at a random offset, uvloop's counts whole milliseconds) and carries out the
  effects in order. An input that arrives while a batch is being applied (a write that
  fills a buffer reports the peer not writable at once, in asyncio) is queued and fed
  after the batch, so the engine is never re-entered. So is the console's ``Reload``:
  the file is read after the batch that asked for it.
* **the timer.** ``Wakeup(at)`` replaces the deadline; the adapter arms one timer and
  calls :meth:`Driver.timer_fired`, which waits out a timer that fired early by our
  clock rather than call ``tick`` before the deadline.
* **signals.** A signal's name goes to ``engine.signal`` (the engine decides what it
  means); ``Exit(code, at_once=True)`` is the forced exit a second SIGINT asks for.
* **reload, shutdown, exit codes.** :meth:`Driver._reloaded` re-reads the file and
  hands it (or why it did not load) to the engine; ``Exit`` ends :meth:`serve`, which
  closes everything and gives the last bytes :data:`DRAIN_SECONDS` to leave (none
  after a forced exit). An exception inside the engine is a bug: its state is unknown
  afterwards, so the frontend logs it and exits with :data:`EX_SOFTWARE`.

The adapter API
---------------

An adapter is a subclass. It implements ``serve`` (listen, accept, run until ``_stop``;
on itself it uses ``_check_thread``, ``_ports``, ``_started``, ``_close_everything``
and ``_drain``), a connection class (:class:`Conn`), and the hooks only the driver
calls, on itself: ``_open_server`` / ``_cancel_open``, ``_start_tls``, ``_arm`` (one
timer), ``_stop`` (wake ``serve``) and ``_plain_socket`` (a server's OS socket, for what
it left unread when it went away; the default, None, reads nothing). The adapter and
its connection objects may call on the driver these names, and no underscored one:

* ``call(method, *args)``: feed ``engine.method`` one input and apply the effects (the
  per-message path is ``call(engine.client_data, cid, data)``, nothing in between);
* ``client_made``, ``server_made``, ``server_failed``, ``peer_gone``, ``writable``,
  ``tls_done``, ``timer_fired``: what happened to a connection or the timer;
* ``connection_made()`` / ``connection_lost()``: the runtime holds one more connection
  / has finished closing one (``serve`` drains until none is left);
* ``engine``, ``clients``, ``servers``, ``config``, ``tls``: read only (the driver
  owns the tables).

Tests and embedders also use ``signal``, ``signal_threadsafe`` (each adapter's),
``address``, ``wakeup_at`` and ``opening``. The runtimes whose connections are tasks (anyio
on trio, curio) share those in :mod:`._tasks`, which leaves them the runtime calls only.
"""

from __future__ import annotations

import contextlib
import grp
import itertools
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, KeysView
from typing import TYPE_CHECKING, Any, Final, Protocol

from pgsansio.engine import (
    UNIX_OWNER_PEER,
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
from pgsansio.frontends import EX_SOFTWARE, FrontendError, Ready, peer_text, real_engine
from pgsansio.frontends._peers import current_worker
from pgsansio.frontends._tls import tls_contexts

if TYPE_CHECKING:
    from pgsansio.config.model import Config, General
    from pgsansio.engine import Effect
    from pgsansio.frontends import EngineAPI

__all__ = [
    "DRAIN_SECONDS",
    "HIGH_WATER",
    "LEFTOVER_LIMIT",
    "LOW_WATER",
    "OPERATOR_SIGNALS",
    "UNIX_OWNER_PEER",
    "Conn",
    "Driver",
    "Outbox",
    "error_text",
    "listen_unix",
    "read_left",
    "server_path",
    "unix_socket_path",
]

log = logging.getLogger("pgsansio.frontend")
engine_log = logging.getLogger("pgsansio")

DRAIN_SECONDS: Final = 2.0
"""How long an exit waits for the last bytes to reach clients and servers."""

HIGH_WATER: Final = 64 * 1024
"""Bytes waiting to be sent to one peer at which it counts as not writable (asyncio's)."""

LOW_WATER: Final = HIGH_WATER // 4
"""Bytes waiting at or below which a peer that was not writable is writable again."""

OPERATOR_SIGNALS: Final = (
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
"""The signals a frontend catches and hands to the engine."""


def unix_socket_path(directory: str, port: int) -> str:
    """The socket file libpq and PgBouncer use for ``port`` in ``directory``."""
    return os.path.join(directory, f".s.PGSQL.{port}")


def server_path(host: str, port: int) -> str | None:
    """The socket file to reach a server whose host is a directory (as in libpq: a
    host starting with ``/``), or None for a TCP host."""
    return unix_socket_path(host, port) if host.startswith("/") else None


class Conn(Protocol):
    """One connection as the driver uses it (an asyncio transport is one as it is).

    ``write`` never blocks and never calls the engine itself; ``close`` flushes first,
    ``abort`` does not. Neither is reported back as a close.
    """

    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


def error_text(exc: BaseException) -> str:
    """Why a connection attempt or a handshake failed, for the engine and the client.

    anyio reports a refused connection as "All connection attempts failed" with the
    real errors in its cause; the first of those says what happened, as asyncio does.
    Words, not errno numbers or socket addresses: the text reaches clients, and the
    engine's log line names the server ("[Errno 111] Connect call failed ('10.0.0.5',
    5432)" becomes "connection refused").
    """
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        return error_text(cause.exceptions[0])
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, socket.gaierror) and exc.strerror:
        return f"cannot resolve the host name ({_lower_first(exc.strerror)})"
    if isinstance(exc, OSError) and exc.errno and not isinstance(exc, ssl.SSLError):
        return _lower_first(os.strerror(exc.errno))
    return str(exc) or type(exc).__name__


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


LEFTOVER_LIMIT: Final = 16 * 1024 * 1024
"""The most :func:`read_left` reads from a server that went away.

What it reads is already in the kernel's receive buffer (which Linux caps at
``net.ipv4.tcp_rmem``'s maximum, 6 MiB by default), so it never waits; the cap only
keeps a misconfigured kernel from making it unbounded."""


def read_left(sock: Any) -> Iterator[bytes]:
    """Read, without waiting, what a closed peer left in a socket's receive buffer.

    Linux keeps the bytes a peer sent before its FIN or RST readable after the RST, and
    a failed write does not drop them; they end with EOF, a reset or "would block". The
    socket is read through a duplicate of its descriptor with ``MSG_DONTWAIT``, so this
    works on whatever socket object a runtime hands out (asyncio's ``TransportSocket``
    cannot ``recv``) and never blocks, nor changes the runtime's own socket.
    """
    if sock is None:
        return
    try:
        fd = sock.fileno()
        if fd < 0:  # the runtime closed it already
            return
        dup = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    with dup:
        total = 0
        while total < LEFTOVER_LIMIT:
            try:
                data = dup.recv(256 * 1024, socket.MSG_DONTWAIT)
            except OSError:  # nothing more for now, or the reset after the last byte
                return
            if not data:
                return
            total += len(data)
            yield data


def listen_unix(general: General, port: int) -> tuple[socket.socket, str] | None:
    """PgBouncer's Unix socket, ``<unix_socket_dir>/.s.PGSQL.<port>``, bound and
    listening (non-blocking), and its path; None when ``unix_socket_dir`` is not set.

    A socket file left by a pooler that died is replaced; one that still answers
    belongs to a running pooler and is an error, as in PostgreSQL.

    Raises:
        FrontendError: the socket cannot be made (its message names the path).
    """
    if not general.unix_socket_dir:
        return None
    path = unix_socket_path(general.unix_socket_dir, port)
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: nobody listens there any more
        else:
            raise FrontendError(f"cannot listen on {path}: another server is running there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False
    try:
        sock.bind(path)
        bound = True
        os.chmod(path, general.unix_socket_mode)
        if general.unix_socket_group:
            os.chown(path, -1, grp.getgrnam(general.unix_socket_group).gr_gid)
        sock.listen(general.listen_backlog)
    except (OSError, KeyError) as exc:
        sock.close()
        if bound:  # not left behind for the next start to find
            with contextlib.suppress(OSError):
                os.unlink(path)
        reason = f"no group {general.unix_socket_group!r}" if isinstance(exc, KeyError) else exc
        raise FrontendError(f"cannot listen on {path}: {reason}") from None
    sock.setblocking(False)
    log.info("listening on %s (Unix socket)", path)
    return sock, path


class Outbox:
    """Bytes for one peer that a runtime without write buffers has not taken yet.

    anyio and curio offer "send this and wait until it is gone" rather than asyncio's
    buffering transports, so their adapters keep this buffer and count what waits:
    ``put`` and ``sent`` return ``True`` exactly when the count crosses asyncio's water
    marks, which is when the adapter reports the peer (not) writable. So backpressure
    starts at the same point in every frontend.
    """

    __slots__ = ("_buf", "blocked", "pending")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.pending = 0
        """Bytes put and not yet reported sent (the buffer and the send in progress)."""
        self.blocked = False

    def put(self, data: bytes) -> bool:
        self._buf += data
        self.pending += len(data)
        if not self.blocked and self.pending > HIGH_WATER:
            self.blocked = True
            return True
        return False

    def take(self) -> bytes:
        """Everything buffered, as one piece to send."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def drop(self) -> None:
        """Forget what is buffered (an abort); what is counted stays counted."""
        self._buf.clear()

    def sent(self, n: int) -> bool:
        self.pending -= n
        if self.blocked and self.pending <= LOW_WATER:
            self.blocked = False
            return True
        return False

    def __bool__(self) -> bool:
        return bool(self._buf)


class Driver:
    """The part of a frontend every runtime shares; an adapter subclasses it.

    Its public names are the adapter API (see the module) and, for tests and
    embedders, :meth:`signal` (what an operator's signal does), ``signal_threadsafe``
    (each adapter's), :attr:`address`, :attr:`wakeup_at` and :attr:`opening`.
    """

    def __init__(self, engine: EngineAPI, config: Config, *, config_path: str | None) -> None:
        """Raises :class:`FrontendError` if a TLS file does not load."""
        self.engine = engine
        self.config = config
        self.config_path = config_path
        self.tls = tls_contexts(config.general)
        self.clients: dict[int, Conn] = {}
        self.servers: dict[int, Conn] = {}
        self._opening: dict[int, Any] = {}  # sid -> the adapter's handle on the attempt
        self._cids = itertools.count(1)
        self._wakeup_at: float | None = None
        self._later: deque[tuple[Callable[..., Iterable[Effect]], tuple[Any, ...]]] = deque()
        self._busy = False  # a batch is being applied: inputs wait in _later
        self._code: int | None = None
        self._forced = False
        self._live = 0  # connections the runtime has not finished closing
        self.address: tuple[str, int] | None = None
        """The bound (host, port) once ``serve`` listens (port 0 is resolved)."""
        self._unix_path: str | None = None  # our Unix socket's file, removed at exit
        self.worker = current_worker()
        """This process's place among the worker processes (``general.workers`` > 1),
        else None; see :mod:`._peers`."""
        self.reuse_port = self.worker is not None
        """Whether TCP listeners set SO_REUSEPORT: the workers share one port."""

    @classmethod
    async def serve_config(
        cls,
        config: Config,
        *,
        config_path: str | None = None,
        ready: Ready | None = None,
        handle_signals: bool = True,
        engine: EngineAPI | None = None,
    ) -> int:
        """Run the pooler in the running loop of this runtime until it exits; the code.

        ``config.general.port`` 0 binds a free port; ``ready`` then learns which.
        Signals need the main thread: pass ``handle_signals=False`` elsewhere.
        ``engine`` replaces the real engine (tests). Each runtime module offers this
        as its ``serve``.

        Raises:
            FrontendError: the pooler cannot start.
        """
        frontend = cls(engine or real_engine(config), config, config_path=config_path)
        return await frontend.serve(ready, handle_signals=handle_signals)

    async def serve(self, ready: Ready | None = None, *, handle_signals: bool = True) -> int:
        """Listen, run until the engine says Exit, return the exit code (the adapter's).

        Raises:
            FrontendError: an address cannot be bound, or signals were asked for
                outside the main thread.
        """
        raise NotImplementedError

    # ------------------------------------------------------------- the adapter's part

    def _open_server(self, sid: int, host: str, port: int) -> Any:
        """Start connecting; report with server_made / server_failed; return a handle."""
        raise NotImplementedError

    def _cancel_open(self, handle: Any) -> None:
        raise NotImplementedError

    def _start_tls(self, kind: str, key: int, conn: Conn) -> None:
        """Start the handshake (reading is paused already); report with tls_done."""
        raise NotImplementedError

    def _arm(self, at: float | None) -> None:
        """Call timer_fired at monotonic time ``at`` (None: never), replacing the last."""
        raise NotImplementedError

    def _stop(self) -> None:
        """Wake ``serve``: the exit code is set."""
        raise NotImplementedError

    # ---------------------------------------------------------------- engine, effects

    def call(self, method: Callable[..., Iterable[Effect]], *args: Any) -> None:
        """Feed one input to the engine, stamped with the time, and apply its effects.

        Inputs that arrive while a batch is applied are fed after it, in order.
        """
        if self._busy:
            self._later.append((method, args))
            return
        self._busy = True
        later = self._later
        try:
            while True:
                try:
                    effects = method(*args, time.monotonic())
                except Exception:
                    log.critical(
                        "the engine raised an exception, which is a bug in pgsansio; exiting",
                        exc_info=True,
                    )
                    later.clear()
                    self._finish(EX_SOFTWARE)
                    return
                self._apply(effects)
                if not later:
                    return
                method, args = later.popleft()
        finally:
            self._busy = False

    def _apply(self, effects: Iterable[Effect]) -> None:
        """Carry out a batch in order; an effect for an id that is already gone is dropped.

        Consecutive sends to one connection become one write (one system call, and on
        the task runtimes one direct send instead of a send and a queued rest): the
        bytes are held until a send to another connection, another effect, or the end
        of the batch, so the order of everything a peer sees is unchanged.
        """
        clients = self.clients
        servers = self.servers
        held: Conn | None = None  # the connection the held bytes are for
        first: bytes = b""
        more: list[bytes] | None = None  # the held bytes after the first piece
        for effect in effects:
            # The two effects of nearly every batch first: a type test each, no match.
            kind = type(effect)
            if kind is SendClient:
                conn = clients.get(effect.cid)  # type: ignore[union-attr]
            elif kind is SendServer:
                conn = servers.get(effect.sid)  # type: ignore[union-attr]
            else:
                if held is not None:
                    held.write(first if more is None else b"".join((first, *more)))
                    held = None
                if self._apply_other(effect):
                    self._later.clear()
                    return
                continue
            if conn is None:
                continue
            if conn is held:
                if more is None:
                    more = [effect.data]  # type: ignore[union-attr]
                else:
                    more.append(effect.data)  # type: ignore[union-attr]
                continue
            if held is not None:
                held.write(first if more is None else b"".join((first, *more)))
            held = conn
            first = effect.data  # type: ignore[union-attr]
            more = None
        if held is not None:
            held.write(first if more is None else b"".join((first, *more)))

    def _apply_other(self, effect: Effect) -> bool:
        """One effect other than a send; True for Exit (the batch stops there)."""
        match effect:
            case Wakeup(at):
                self._wakeup_at = at
                self._arm(at)
            case OpenServer(sid, host, port):
                self._opening[sid] = self._open_server(sid, host, port)
            case CloseClient(cid):
                conn = self.clients.pop(cid, None)
                if conn is not None:
                    conn.close()
            case CloseServer(sid):
                conn = self.servers.pop(sid, None)
                if conn is not None:
                    conn.close()
                attempt = self._opening.pop(sid, None)
                if attempt is not None:
                    self._cancel_open(attempt)
            case ReadClient(key, on) | ReadServer(key, on):
                conn = (self.clients if type(effect) is ReadClient else self.servers).get(key)
                if conn is not None:
                    conn.resume_reading() if on else conn.pause_reading()
            case StartTls(kind, key):
                conn = (self.clients if kind == "client" else self.servers).get(key)
                if conn is not None:
                    conn.pause_reading()  # not one byte in clear after the S
                    self._start_tls(kind, key, conn)
            case Log(level, message):
                engine_log.log(level, message)
            case Reload():
                self._later.append((self._reloaded, ()))
            case Exit(code, at_once):
                self._forced = self._forced or at_once
                self._finish(code)
                return True
        return False

    def _finish(self, code: int) -> None:
        if self._code is None:
            self._code = code
            self._stop()

    # ------------------------------------------------------ what adapters report

    def connection_made(self) -> None:
        """The runtime holds one more connection (``serve`` drains until none is left)."""
        self._live += 1

    def connection_lost(self) -> None:
        """The runtime has finished closing a connection: once per ``connection_made``."""
        self._live -= 1

    def client_made(self, conn: Conn, peer: str, *, metrics: bool = False) -> int:
        """A client (or a scraper, ``metrics``) connected; its id."""
        cid = next(self._cids)
        self.clients[cid] = conn
        engine = self.engine
        self.call(engine.metrics_connected if metrics else engine.client_connected, cid, peer)
        return cid

    def server_made(self, sid: int, conn: Conn) -> bool:
        """Server ``sid`` connected; False if the engine closed it meanwhile (close it)."""
        if self._opening.pop(sid, None) is None:
            return False
        self.servers[sid] = conn
        self.call(self.engine.server_connected, sid)
        return True

    def server_failed(self, sid: int, exc: BaseException) -> None:
        if self._opening.pop(sid, None) is not None:
            self.call(self.engine.server_failed, sid, error_text(exc))

    def peer_gone(self, server: bool, key: int, conn: Conn | None = None) -> None:
        """The peer went away (or a read or write failed); reported unless closed by us.

        ``conn`` None: whatever connection the id has (asyncio's protocol outlives the
        transport a TLS upgrade replaces).

        A server's last words come first: a write that fails because the server
        already closed (its FATAL sent, then EPIPE or ECONNRESET on our next write)
        ends the connection before the FATAL, still in the kernel's receive buffer, was
        read. The engine gets those bytes (:meth:`_unread`) before it hears the server
        is gone, so the client sees the server's own error (57P01 for
        ``pg_terminate_backend``) and not our 08006. If the engine closes the server on
        what it read, there is nothing more to report.
        """
        table = self.servers if server else self.clients
        current = table.get(key)
        if current is None or (conn is not None and current is not conn):
            return
        engine = self.engine
        if server:
            for data in self._unread(current):
                self.call(engine.server_data, key, data)
            if table.get(key) is not current:
                return
        del table[key]
        self.call(engine.server_closed if server else engine.client_closed, key)

    def _unread(self, conn: Conn) -> Iterator[bytes]:
        """What a server that went away sent and nobody has read yet (see peer_gone)."""
        return read_left(self._plain_socket(conn))

    def _plain_socket(self, conn: Conn) -> Any:
        """The OS socket under a server connection; None under TLS (the bytes in the
        kernel are encrypted, for the TLS layer only)."""
        return None

    def writable(self, server: bool, key: int, on: bool) -> None:
        if key in (self.servers if server else self.clients):
            engine = self.engine
            self.call(engine.server_writable if server else engine.client_writable, key, on)

    def tls_done(
        self, kind: str, key: int, conn: Conn, upgraded: Conn | None, exc: BaseException | None
    ) -> bool:
        """A handshake ended (``exc`` None: it succeeded); whether the id is still wanted.

        On failure the connection is aborted and the engine hears of it once, as the
        handshake's error. On success ``upgraded`` takes the id (an adapter whose
        connection object survives the upgrade passes it again).
        """
        table = self.clients if kind == "client" else self.servers
        report = self.engine.client_tls if kind == "client" else self.engine.server_tls
        if table.get(key) is not conn:
            return False  # the engine closed it during the handshake
        if exc is not None or upgraded is None:
            del table[key]
            conn.abort()
            self.call(report, key, error_text(exc) if exc is not None else "TLS failed")
            return False
        table[key] = upgraded
        self.call(report, key, None)
        return True

    def timer_fired(self) -> None:
        at = self._wakeup_at
        if at is None:
            return
        if at > time.monotonic():  # a runtime's clock is not ours: wait out the rest
            self._arm(at)
            return
        self._wakeup_at = None
        self.call(self.engine.tick)

    @property
    def wakeup_at(self) -> float | None:
        """The engine's deadline (its last ``Wakeup``), None once it has ticked."""
        return self._wakeup_at

    @property
    def opening(self) -> KeysView[int]:
        """The server ids being connected (``OpenServer`` seen, not made or failed yet)."""
        return self._opening.keys()

    # ----------------------------------------------------------- operator, lifecycle

    def signal(self, signum: int) -> None:
        """Hand the operator's signal ``signum`` to the engine, which decides."""
        self.call(self.engine.signal, signal.Signals(signum).name)

    def _reloaded(self, now: float) -> Iterable[Effect]:
        """Re-read the configuration file (the engine's ``Reload``); the engine's answer.

        A file that does not load is logged and handed to ``reload_failed``; the running
        configuration (and TLS contexts) stay, so a typo never takes a pooler down.
        """
        path = self.config_path
        if path is None:
            log.warning("reload asked for, but the pooler was not started from a file")
            error = "the pooler was not started from a configuration file"
            return self.engine.reload_failed(error, now)
        from pgsansio.config import ConfigError, load_config  # noqa: PLC0415 - lazy

        log.info("reloading the configuration from %s", path)
        try:
            new = load_config(path)
            tls = tls_contexts(new.general)
        except (ConfigError, FrontendError) as exc:
            log.error("reload failed; the running configuration stays in force:\n%s", exc)
            return self.engine.reload_failed(str(exc), now)
        self.config = new
        self.tls = tls
        return self.engine.reload(new, now)

    def _check_thread(self, handle_signals: bool) -> None:
        if handle_signals and threading.current_thread() is not threading.main_thread():
            raise FrontendError(
                "signals can only be handled in the main thread; "
                "serve(handle_signals=False) in other threads"
            )

    def _ports(self) -> list[tuple[int, bool]]:
        """(port, is it the Prometheus exporter's) for every port to listen on."""
        general = self.config.general
        ports = [(general.port, False)]
        if general.enable_prometheus_exporter:
            ports.append((general.prometheus_exporter_port, True))
        return ports

    def _hosts(self) -> list[str | None]:
        """The addresses to listen on: ``host`` may list several, comma-separated, and
        ``*`` means every interface, IPv4 and IPv6 (PgBouncer's ``listen_addr``)."""
        hosts = [h.strip() for h in self.config.general.host.split(",") if h.strip()]
        return [None if h == "*" else h for h in hosts] or [None]

    def _unix_listeners(self, port: int) -> list[socket.socket]:
        """The Unix sockets to accept clients on, bound and listening (non-blocking).

        PgBouncer's ``<unix_socket_dir>/.s.PGSQL.<port>`` when ``unix_socket_dir`` is
        set (see :func:`listen_unix`; ``port`` is the TCP port really bound, as
        PgBouncer names its socket after ``listen_port``). In a worker process (see
        :mod:`._peers`) that one is the supervisor's, shared by every worker, and the
        worker's own socket, which other workers forward cancel requests to, is added.
        """
        worker = self.worker
        if worker is not None:
            sock, self._unix_path = worker.peer_listener(self.config.general.listen_backlog)
            return [*worker.inherited, sock]
        bound = listen_unix(self.config.general, port)
        if bound is None:
            return []
        sock, self._unix_path = bound
        return [sock]

    def _unlink_unix(self) -> None:
        """Remove our socket file at exit, as PgBouncer and PostgreSQL do."""
        if self._unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._unix_path)
            self._unix_path = None

    def peer_of(self, sock: Any, peername: object) -> str:
        """A client's peer for the engine: ``host:port``, or for a Unix socket
        :data:`UNIX_OWNER_PEER` when the client runs as our own OS user (found with
        SO_PEERCRED; the engine decides what that allows) and ``unix socket`` otherwise."""
        family = getattr(sock, "family", None)
        if family != socket.AF_UNIX:
            return peer_text(peername)
        creds = getattr(socket, "SO_PEERCRED", None)
        if creds is not None:
            try:
                raw = sock.getsockopt(socket.SOL_SOCKET, creds, 12)  # struct ucred: 3 ints
                uid = int.from_bytes(raw[4:8], sys.byteorder)
            except (OSError, ValueError):
                uid = -1
            if uid == os.getuid():
                return UNIX_OWNER_PEER
        return "unix socket"

    def _started(self, ready: Ready | None, address: Any, what: str) -> None:
        """Listening at ``address``: start the engine, say so, call ``ready``."""
        host, port = address[:2]
        self.address = (host, port)
        self.call(self.engine.start)
        log.info("listening on %s:%d (%s)", host, port, what)
        if ready is not None:
            ready(self.address)

    def _close_everything(self) -> None:
        """The ids go first, so nothing is reported to an engine that has finished."""
        self._wakeup_at = None
        self._arm(None)
        for attempt in self._opening.values():
            self._cancel_open(attempt)
        self._opening.clear()
        conns = [*self.clients.values(), *self.servers.values()]
        self.clients.clear()
        self.servers.clear()
        for conn in conns:
            conn.abort() if self._forced else conn.close()

    async def _drain(self, sleep: Callable[[float], Awaitable[Any]]) -> None:
        """Give the engine's last words (in write buffers) a moment, unless forced."""
        deadline = time.monotonic() + DRAIN_SECONDS
        while self._live and not self._forced and time.monotonic() < deadline:
            await sleep(0.01)
