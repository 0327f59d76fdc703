"""The curio adapter: tasks and non-blocking sockets on curio's kernel.

Each connection is a reader task, and a writer task while bytes wait
(:mod:`pgsansio.frontends._tasks`, which it shares with anyio); the writer ends the
pair by cancelling the reader's task, the reader's task cancels the writer when the
peer leaves. Plain connections are read with curio's ``_read_wait`` trap (its
low-level wait for a file descriptor) and one ``recv``, and written with ``send``; TLS
ones through curio's ``Socket`` over the ``ssl`` module's socket. Everything else (ids,
the batch, the timer's meaning, signals, reload, shutdown) is
:mod:`pgsansio.frontends._driver`'s. What is curio's own:

* TLS is the ``ssl`` module's wrapping of the OS socket, then curio's
  ``do_handshake``, done by the writer after the ``S`` went out;
* setting an ``Event`` or cancelling a task is an ``await`` in curio, and the driver's
  batch is synchronous: ``set_event`` and ``cancel`` note those wake-ups in ``_todo``,
  which every task that calls into the driver runs right after (they are curio's
  non-blocking traps, so nothing else runs in between);
* curio 1.x has no signal API: the adapter installs do-nothing Python handlers and
  points :func:`signal.set_wakeup_fd` at a socket pair, as trio and asyncio do inside;
  a task reads the signal numbers there. Another thread uses the same pair;
* curio has no accessor for the OS socket under its ``Socket``; its public way to reach
  it is ``Socket.blocking()`` (:func:`_raw`). The adapter needs it for socket options,
  the direct send and the TLS wrap.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import socket
import ssl
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import curio
import curio.io
import curio.traps

from pgsansio.frontends import EngineAPI, FrontendError, Ready, listen_failed, missing
from pgsansio.frontends._driver import OPERATOR_SIGNALS, server_path
from pgsansio.frontends._tasks import TaskConn, TaskDriver

if TYPE_CHECKING:
    from pgsansio.config.model import Config

__all__ = ["CurioFrontend", "run", "serve"]


class CurioFrontend(TaskDriver):
    """The driver on curio's kernel."""

    Event = curio.Event
    GONE = (OSError,)

    def __init__(self, engine: EngineAPI, config: Config, *, config_path: str | None) -> None:
        super().__init__(engine, config, config_path=config_path)
        self._tg: Any = None  # curio.TaskGroup, untyped
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._wait_readable = curio.traps._read_wait

    async def serve(self, ready: Ready | None = None, *, handle_signals: bool = True) -> int:
        """See ``Driver.serve``."""
        self._check_thread(handle_signals)
        bound: list[tuple[socket.socket, bool]] = []
        try:
            for port, metrics in self._ports():
                bound += [(listener, metrics) for listener in self._listen(port)]
            bound += [(unix, False) for unix in self._unix_listeners(bound[0][0].getsockname()[1])]
            with _signals_to(self._wake_w) if handle_signals else contextlib.nullcontext():
                async with curio.TaskGroup() as tg:
                    self._tg = tg
                    accepting = [
                        await tg.spawn(self._accept, curio.io.Socket(listener), metrics)
                        for listener, metrics in bound
                    ]
                    await tg.spawn(self._run_timer)
                    await tg.spawn(self._run_poller)
                    await tg.spawn(self._handle_signals)
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
            self._unlink_unix()
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
            infos = [
                info
                for h in self._hosts()
                for info in socket.getaddrinfo(
                    h, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
                )
            ]
            for family, address in dict.fromkeys((i[0], i[4]) for i in infos):
                if bound:
                    port = bound[0].getsockname()[1]
                sock = socket.create_server(
                    (address[0], port),
                    family=family,
                    backlog=self.config.general.listen_backlog,
                    reuse_port=self.reuse_port,
                )
                sock.setblocking(False)
                bound.append(sock)
        except OSError as exc:
            for sock in bound:
                sock.close()
            raise listen_failed(host, port, exc) from None
        return bound

    async def _handle_signals(self) -> None:
        reader = curio.io.Socket(self._wake_r)  # serve() closes the socket itself
        while data := await reader.recv(64):
            for signum in data:
                self.signal(signum)
                await self._kick()

    def signal_threadsafe(self, signum: int) -> None:
        """:meth:`signal` from another thread (tests, embedders), once serving."""
        self._wake_w.send(bytes([signum]))

    # ------------------------------------------------------------ the driver's hooks

    async def _accept_one(self, listener: curio.io.Socket) -> tuple[Any, str] | None:
        client, addr = await listener.accept()
        return client, self.peer_of(_raw(client), addr)

    async def _open(self, host: str, port: int, handle: list[Any]) -> Any:
        try:
            path = server_path(host, port)
            if path is not None:
                return await curio.open_unix_connection(path)
            return await curio.open_connection(host, port)
        except curio.CancelledError:
            return None  # the engine closed this id while it was connecting

    def _open_server(self, sid: int, host: str, port: int) -> list[Any]:
        # The task is spawned after the batch (spawning is an await); the handle is a
        # list that will hold it, so a CloseServer in the same batch still finds it.
        handle: list[Any] = []

        async def spawn() -> None:
            if self._opening.get(sid) is handle:
                task = await self._tg.spawn(self._connect, sid, host, port, handle, daemon=True)
                handle.append(task)

        self._todo[spawn] = None
        return handle

    async def _spawn(self, conn: TaskConn) -> None:
        await self._tg.spawn(self._connection, conn, daemon=True)

    def cancel(self, handle: list[Any]) -> None:
        # The tasks are looked up when the wake-ups run: a connection's list changes.
        async def cancel() -> None:
            for task in list(handle):
                await task.cancel(blocking=False)

        self._todo[cancel] = None

    async def _pair(self, conn: TaskConn) -> None:
        # conn.pair lists the tasks to cancel: this one while it reads, and the writer
        # while it runs. Cancelling this task is how the writer ends the pair.
        me = await curio.current_task()
        conn.pair = [me]
        conn.group = self._tg
        self._paired(conn)
        try:
            await self._reader(conn)
        except curio.TaskCancelled:
            pass  # the writer ended the pair, an abort, or the pooler's exit
        finally:
            conn.group = None
            conn.pair.remove(me)
            for task in list(conn.pair):
                await task.cancel()

    def start_writer(self, conn: TaskConn) -> None:
        async def spawn() -> None:
            if conn.group is not None:  # the pair has not ended meanwhile
                conn.pair.append(await self._tg.spawn(self._beside, conn, daemon=True))

        self._todo[spawn] = None

    async def _beside(self, conn: TaskConn) -> None:
        """The writer; when it ends the pair, it cancels the reader's task."""
        ends = await self._writer(conn)
        with contextlib.suppress(ValueError):  # not listed yet if it never waited
            conn.pair.remove(await curio.current_task())
        if ends:
            for task in list(conn.pair):
                await task.cancel(blocking=False)

    async def _close_stream(self, conn: TaskConn) -> None:
        await conn.stream.close()

    async def _wrap_tls(self, conn: TaskConn, kind: str) -> None:
        # wrap_socket takes the descriptor over; the curio Socket is replaced first,
        # so whatever happens next, the adapter closes the TLS socket.
        raw = self.tls.context(kind).wrap_socket(
            _raw(conn.stream),
            server_side=not conn.server,
            server_hostname=conn.host or None,
            do_handshake_on_connect=False,
        )
        self._attach(conn, curio.io.Socket(raw))
        await conn.stream.do_handshake()

    def _attach(self, conn: TaskConn, stream: curio.io.Socket) -> None:
        conn.stream = stream
        conn.receive = functools.partial(stream.recv, 65536)
        conn.send = stream.sendall
        raw = _raw(stream)
        conn.direct = None if isinstance(raw, ssl.SSLSocket) else raw

    def raw_socket(self, stream: curio.io.Socket) -> socket.socket:
        return _raw(stream)

    def set_event(self, event: curio.Event) -> None:
        self._todo[event.set] = None

    async def _wait(self, event: curio.Event, timeout: float) -> None:
        await curio.ignore_after(timeout, event.wait)

    async def _sleep(self, seconds: float) -> None:
        await curio.sleep(seconds)


def _raw(sock: curio.io.Socket) -> socket.socket:
    """The OS socket under a curio Socket, by curio's public way (see the docstring)."""
    with sock.blocking() as raw:
        plain: socket.socket = raw
    return plain


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
