"""The curio adapter: tasks and non-blocking sockets on curio's kernel.

It mirrors the anyio adapter: each connection has a reader task that hands each
``recv()`` to the engine and a writer task that sends what the engine wrote into the
connection's :class:`~pgsansio.frontends._driver.Outbox`, in a task group that ends
when either does. One shortcut: when nothing is queued, ``write`` first offers the bytes
to the (plain) socket directly, as curio's ``sendall`` would, which saves a task switch
per write; what the socket does not take goes to the writer.

Everything else (ids, the batch, the timer's meaning, signals, reload, shutdown) is
:mod:`pgsansio.frontends._driver`'s. What is curio's own:

* setting an ``Event`` or cancelling a task is an ``await`` in curio, and the driver's
  batch is synchronous: the connection's methods note those wake-ups in ``_todo``, and
  every task that calls into the driver runs them (:meth:`CurioFrontend._kick`) right
  after. They are curio's non-blocking traps, so nothing else runs in between;
* curio 1.x has no signal API: the adapter installs do-nothing Python handlers and
  points :func:`signal.set_wakeup_fd` at a socket pair, as trio and asyncio do inside;
  a task reads the signal numbers there. Another thread uses the same pair;
* curio has no accessor for the OS socket under its ``Socket``; its public way to reach
  it is ``Socket.blocking()``, used once per connection (:func:`_raw`). The adapter
  needs it for socket options, the direct send and the TLS wrap (``ssl`` wrapping, then
  curio's ``do_handshake``).
"""

from __future__ import annotations

import contextlib
import functools
import signal
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import curio
import curio.io

from pgsansio.frontends import EngineAPI, FrontendError, Ready, missing, peer_text
from pgsansio.frontends import tune_socket as _tune
from pgsansio.frontends._driver import OPERATOR_SIGNALS, Driver, Outbox, log

if TYPE_CHECKING:
    from pgsansio.config_model import Config

__all__ = ["CurioFrontend", "run", "serve"]

_BACKLOG = 511  # what asyncio's create_server asks for (capped by somaxconn)


class _Conn:
    """One connection, client or server, and the state its two tasks share."""

    __slots__ = (
        "closing", "fe", "host", "key", "out", "poked", "raw", "reading", "resumed",
        "server", "sock", "upgrade", "upgrading", "wake", "writer",
    )  # fmt: skip

    def __init__(self, fe: CurioFrontend, sock: curio.io.Socket, host: str = "") -> None:
        self.fe = fe
        self.sock = sock
        self.raw = _raw(sock)
        self.server = bool(host)
        self.host = host  # a server's name, which a verified certificate must carry
        self.key = 0
        self.out = Outbox()
        self.wake = curio.Event()  # set when the writer has something to do
        self.poked = False  # a wake-up is noted in _todo already
        self.reading = True
        self.resumed = curio.Event()  # set when reading is switched back on
        self.closing = False  # closed by the engine (or aborted): read no more
        self.upgrade: str | None = None  # StartTls asked for ("client"/"server")
        self.upgrading = False  # the handshake is under way
        self.writer: Any = None  # the writer's curio Task

    def write(self, data: bytes) -> None:
        if not (self.out.pending or self.closing or self.upgrade or self.upgrading):
            data = _send_now(self.raw, data)
            if not data:
                return
        if self.out.put(data):
            self.fe._writable(self.server, self.key, False)
        self.poke()

    def poke(self) -> None:
        if not self.poked:
            self.poked = True
            self.fe._todo.append(self._wake_writer)

    async def _wake_writer(self) -> None:
        self.poked = False
        await self.wake.set()

    def close(self) -> None:
        """Flush, then close; a TLS handshake (in the writer) is cut short."""
        self.closing = True
        self.poke()
        if self.upgrading and self.writer is not None:  # the pair ends with its writer
            self.fe._todo.append(functools.partial(self.writer.cancel, blocking=False))

    def abort(self) -> None:
        """Close without flushing: the writer finds nothing to send and ends the pair."""
        self.closing = True
        self.out = Outbox()
        self.poke()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        if not self.reading:
            self.reading = True
            self.fe._todo.append(self.resumed.set)
            self.resumed = curio.Event()


class CurioFrontend(Driver):
    """The driver on curio's kernel."""

    def __init__(self, engine: EngineAPI, config: Config, *, config_path: str | None) -> None:
        super().__init__(engine, config, config_path=config_path)
        self._todo: list[Callable[[], Awaitable[Any]]] = []  # wake-ups a batch asked for
        self._tg: Any = None  # curio.TaskGroup, untyped
        self._timer_changed = curio.Event()
        self._done = curio.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)

    async def serve(self, ready: Ready | None = None, *, handle_signals: bool = True) -> int:
        """Listen, run until the engine says Exit, return the exit code.

        Raises:
            FrontendError: an address cannot be bound, or signals were asked for
                outside the main thread.
        """
        self._check_thread(handle_signals)
        bound: list[tuple[socket.socket, bool]] = []
        try:
            for port, metrics in self._ports():
                bound += [(listener, metrics) for listener in self._listen(port)]
            with _signals_to(self._wake_w) if handle_signals else contextlib.nullcontext():
                async with curio.TaskGroup() as tg:
                    self._tg = tg
                    accepting = [
                        await tg.spawn(self._accept, listener, metrics)
                        for listener, metrics in bound
                    ]
                    await tg.spawn(self._run_timer)
                    await tg.spawn(self._read_signals)
                    self._started(ready, bound[0][0].getsockname(), "curio frontend")
                    await self._kick()
                    await self._done.wait()
                    # Cancelled before their sockets close: curio must not be left
                    # waiting on a file descriptor that no longer exists.
                    for task in accepting:
                        await task.cancel()
                    for listener, _ in bound:
                        listener.close()
                    self._close_everything()
                    await self._kick()
                    await self._drain(curio.sleep)
                    await tg.cancel_remaining()  # the connections go when the group ends
        finally:
            for listener, _ in bound:
                listener.close()
            self._wake_r.close()
            self._wake_w.close()
        return self._code if self._code is not None else 0

    def _listen(self, port: int) -> list[socket.socket]:
        """Listening sockets on every address the host resolves to, as asyncio's.

        Port 0 is resolved on the first address and used for the others.
        """
        host = self.config.general.host
        bound: list[socket.socket] = []
        try:
            infos = socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            for family, address in dict.fromkeys((i[0], i[4]) for i in infos):
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

    async def _read_signals(self) -> None:
        reader = curio.io.Socket(self._wake_r)  # serve() closes the socket itself
        while data := await reader.recv(64):
            for signum in data:
                self.signal(signum)
                await self._kick()

    def signal_threadsafe(self, signum: int) -> None:
        """:meth:`signal` from another thread (tests, embedders), once serving."""
        self._wake_w.send(bytes([signum]))

    async def _kick(self) -> None:
        """Run the wake-ups the last batch noted (curio's traps; nothing else runs)."""
        todo = self._todo
        while todo:
            await todo.pop(0)()

    async def _accept(self, listener: socket.socket, metrics: bool) -> None:
        sock = curio.io.Socket(listener)  # serve() closes the listening socket itself
        while True:
            try:
                client, addr = await sock.accept()
            except OSError as exc:  # EMFILE and the like: log, breathe, go on
                log.warning("accept failed: %s", exc)
                await curio.sleep(0.1)
                continue
            conn = _Conn(self, client)
            _tune(conn.raw, self.config.general)
            conn.key = self._client_made(conn, peer_text(addr), metrics=metrics)
            await self._kick()
            await self._tg.spawn(self._connection, conn, daemon=True)

    async def _connect(self, sid: int, host: str, port: int) -> None:
        try:
            sock = await curio.open_connection(host, port)
        except curio.CancelledError:
            return  # the engine closed this id while it was connecting
        except Exception as exc:  # OSError mostly; anything else still fails only this sid
            self._server_failed(sid, exc)
            await self._kick()
            return
        conn = _Conn(self, sock, host)
        _tune(conn.raw, self.config.general)
        conn.key = sid
        made = self._server_made(sid, conn)
        await self._kick()
        if made:
            await self._connection(conn)
        else:
            await sock.close()

    async def _connection(self, conn: _Conn) -> None:
        """Run one connection's reader and writer until either ends, then clean up."""
        self._live += 1
        try:
            async with curio.TaskGroup(wait=any) as pair:
                conn.writer = await pair.spawn(self._writer, conn)
                await pair.spawn(self._reader, conn)
            self._lost(conn.server, conn.key, conn)
            await self._kick()
        finally:
            self._live -= 1
            await conn.sock.close()

    async def _reader(self, conn: _Conn) -> None:
        engine = self._engine
        data_in = engine.server_data if conn.server else engine.client_data
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
                self._call(data_in, conn.key, data)
                await self._kick()
        except OSError:
            return

    async def _writer(self, conn: _Conn) -> None:
        out = conn.out
        try:
            while True:
                if out:
                    data = out.take()
                    await conn.sock.sendall(data)
                    if out.sent(len(data)) and not conn.closing:
                        self._writable(conn.server, conn.key, True)
                        await self._kick()
                elif conn.upgrade is not None and not conn.closing:
                    if not await self._handshake(conn, conn.upgrade):
                        return
                elif conn.closing:
                    return
                else:
                    conn.wake.clear()
                    await conn.wake.wait()
        except OSError:
            return

    async def _handshake(self, conn: _Conn, kind: str) -> bool:
        """Upgrade to TLS (after the S went out) and report it; whether it succeeded."""
        conn.upgrade = None
        conn.upgrading = True
        try:
            # wrap_socket takes the descriptor over; the curio Socket is replaced first,
            # so whatever happens next, the adapter closes the TLS socket.
            conn.raw = self.tls.context(kind).wrap_socket(
                conn.raw,
                server_side=not conn.server,
                server_hostname=conn.host or None,
                do_handshake_on_connect=False,
            )
            conn.sock = curio.io.Socket(conn.raw)
            await conn.sock.do_handshake()
        except Exception as exc:  # ssl.SSLError, a reset: this connection only
            error: Exception | None = exc
        else:
            error = None
            conn.resume_reading()
        finally:
            conn.upgrading = False
        ok = self._tls_done(kind, conn.key, conn, None if error else conn, error)
        await self._kick()
        return ok

    # ------------------------------------------------------------ the driver's hooks

    def _stop(self) -> None:
        self._todo.append(self._done.set)

    def _open_server(self, sid: int, host: str, port: int) -> list[Any]:
        # The task is spawned after the batch (spawning is an await); the handle is a
        # list that will hold it, so a CloseServer in the same batch still finds it.
        handle: list[Any] = []

        async def spawn() -> None:
            if self._opening.get(sid) is handle:
                handle.append(await self._tg.spawn(self._connect, sid, host, port, daemon=True))

        self._todo.append(spawn)
        return handle

    def _cancel_open(self, handle: list[Any]) -> None:
        for task in handle:
            self._todo.append(functools.partial(task.cancel, blocking=False))

    def _start_tls(self, kind: str, key: int, conn: _Conn) -> None:  # type: ignore[override]
        conn.upgrade = kind
        conn.poke()

    def _arm(self, at: float | None) -> None:
        self._todo.append(self._timer_changed.set)

    async def _run_timer(self) -> None:
        while True:
            changed = self._timer_changed = curio.Event()
            at = self._wakeup_at
            if at is None:
                await changed.wait()
            elif at > time.monotonic():
                await curio.ignore_after(at - time.monotonic(), changed.wait)
            else:
                self._timer_fired()
                await self._kick()


def _raw(sock: curio.io.Socket) -> socket.socket:
    """The OS socket under a curio Socket, by curio's public way (see the docstring)."""
    with sock.blocking() as raw:
        plain: socket.socket = raw
    return plain


def _send_now(raw: socket.socket, data: bytes) -> bytes:
    """Write what a plain socket takes at once; return the rest, for the writer task.

    curio's own ``sendall`` starts the same way. A TLS socket always goes through the
    writer, and an error is left for the writer to meet.
    """
    if isinstance(raw, ssl.SSLSocket):
        return data
    try:
        sent = raw.send(data)
    except OSError:  # would block, or a broken connection
        return data
    return data[sent:]


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


serve = CurioFrontend.serve_config
"""Run the pooler in the running curio kernel until it exits (see ``Driver.serve_config``)."""


def run(config: Config, *, config_path: str | None, ready: Ready | None = None) -> int:
    """Run the pooler in a new curio kernel until it exits; return the exit code.

    Raises :class:`FrontendError` if it cannot start.
    """
    problem = missing("curio")
    if problem is not None:
        raise FrontendError(problem)
    code: int = curio.run(serve(config, config_path=config_path, ready=ready))
    return code
