"""The anyio adapter: one code path for asyncio (``--frontend anyio``) and trio.

Each connection is a reader task, and a writer task while bytes wait
(:mod:`pgsansio.frontends._tasks`, which it shares with curio), each in a cancel scope
of its own in the pooler's task group; whichever ends the pair cancels the other's.
Plain connections are read and written on the OS socket (trio's ``wait_readable``, then
``recv``; ``send``); TLS ones on anyio's TLS stream. Everything else (ids, the batch,
the timer's meaning, signals, reload, shutdown) is :mod:`pgsansio.frontends._driver`'s.
What is anyio's own:

* TLS is ``TLSStream.wrap`` over the plain stream, done by the writer after the ``S``
  went out; the encrypted stream takes the plain one's place;
* the timer is one task waiting until the deadline (``move_on_after``) or until a new
  one replaces it, for the difference from ``time.monotonic()`` (trio's clock starts
  at a random offset);
* ``abort`` cancels the connection's scopes; the stream is then closed forcefully when
  the exit is forced;
* direct sends (``write`` offering the bytes to the socket instead of waking the
  writer): there ``send()`` returns once the kernel has every byte, and
  ``SocketAttribute.raw_socket`` is the socket itself.

**On asyncio, anyio's streams are not used.** There a stream is an asyncio transport
behind anyio's checkpoints: ``send()`` returns while the transport may still hold
bytes (a direct write would overtake them), the socket anyio exposes is asyncio's
``TransportSocket``, which cannot send, and anyio has no public non-blocking send, so
every write would cost a task switch through the writer (a quarter of PgBouncer's
``-S`` throughput, against two thirds for the asyncio adapter). :func:`make_frontend`
therefore gives, on the asyncio backend, the asyncio adapter itself
(:class:`AnyioOnAsyncio`): the same transports, still awaited from the caller's anyio
task (cancelling that task stops the pooler), and still named "anyio frontend" in the
log. The stream adapter below is what runs on trio.
"""

from __future__ import annotations

import contextlib
import functools
import socket
from typing import TYPE_CHECKING, Any, Literal, cast

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSStream

from pgsansio.frontends import (
    EngineAPI,
    FrontendError,
    Ready,
    listen_failed,
    missing,
    real_engine,
)
from pgsansio.frontends._driver import OPERATOR_SIGNALS, Driver, server_path
from pgsansio.frontends._tasks import TaskConn, TaskDriver
from pgsansio.frontends.asyncio import AsyncioFrontend

if TYPE_CHECKING:
    from pgsansio.config.model import Config

__all__ = ["AnyioFrontend", "AnyioOnAsyncio", "make_frontend", "run", "serve"]


class AnyioFrontend(TaskDriver):
    """The driver under anyio, on asyncio or on trio."""

    Event = anyio.Event
    GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)

    def __init__(self, engine: EngineAPI, config: Config, *, config_path: str | None) -> None:
        super().__init__(engine, config, config_path=config_path)
        self._tg: anyio.abc.TaskGroup | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._direct = _backend_name() == "trio"  # see the module's docstring
        # trio's own wait where it runs: anyio's looks the backend up on every call.
        self._wait_readable = anyio.wait_readable
        if self._direct:
            import trio.lowlevel  # noqa: PLC0415 - present whenever trio runs

            self._wait_readable = trio.lowlevel.wait_readable

    async def serve(self, ready: Ready | None = None, *, handle_signals: bool = True) -> int:
        """See ``Driver.serve``."""
        self._check_thread(handle_signals)
        self._token = anyio.lowlevel.current_token()
        bound: list[tuple[anyio.abc.SocketListener, bool]] = []
        try:
            for port, metrics in self._ports():
                bound += [(listener, metrics) for listener in await self._listen(port)]
            local = bound[0][0].extra(SocketAttribute.local_address)
            for unix in self._unix_listeners(int(local[1])):
                bound.append((await anyio.abc.SocketListener.from_socket(unix), False))
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for listener, metrics in bound:
                    tg.start_soon(self._accept, listener, metrics)
                tg.start_soon(self._run_timer)
                tg.start_soon(self._run_poller)
                if handle_signals:
                    await tg.start(self._handle_signals)
                self._started(ready, local, f"anyio frontend, {_backend_name()} backend")
                await self._done.wait()
                for listener, _ in bound:
                    await listener.aclose()
                self._close_everything()
                await self._drain(anyio.sleep)
                tg.cancel_scope.cancel()
        finally:
            self._unlink_unix()
            with anyio.CancelScope(shield=True):
                for listener, _ in bound:
                    await listener.aclose()
        return self._code if self._code is not None else 0

    async def _listen(self, port: int) -> list[anyio.abc.SocketListener]:
        """Listeners on every address the host resolves to, as asyncio's create_server."""
        bound: list[anyio.abc.SocketListener] = []
        for host in self._hosts():
            if bound and not port:  # port 0: the one the first address got, for all
                port = int(bound[0].extra(SocketAttribute.local_port))
            try:
                multi = await anyio.create_tcp_listener(
                    local_host=host,
                    local_port=port,
                    backlog=self.config.general.listen_backlog,
                    reuse_port=self.reuse_port,
                )
            except OSError as exc:
                for listener in bound:
                    await listener.aclose()
                raise listen_failed(host or "*", port, exc) from None
            bound += [cast(anyio.abc.SocketListener, listener) for listener in multi.listeners]
        return bound

    async def _handle_signals(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(*OPERATOR_SIGNALS) as signals:
            task_status.started()
            async for signum in signals:
                self.signal(signum)

    def signal_threadsafe(self, signum: int) -> None:
        """:meth:`signal` from another thread (tests, embedders), once serving."""
        anyio.from_thread.run_sync(self.signal, signum, token=self._token)

    # ------------------------------------------------------------ the driver's hooks

    async def _accept_one(self, listener: anyio.abc.SocketListener) -> tuple[Any, str] | None:
        try:
            stream = await listener.accept()
        except anyio.ClosedResourceError:
            return None
        remote = stream.extra(SocketAttribute.remote_address, None)
        return stream, self.peer_of(stream.extra(SocketAttribute.raw_socket, None), remote)

    async def _open(self, host: str, port: int, handle: anyio.CancelScope) -> Any:
        with handle:
            path = server_path(host, port)
            if path is not None:
                return await anyio.connect_unix(path)
            return await anyio.connect_tcp(host, port)
        return None  # cancelled: the engine closed this id while it was connecting

    def _open_server(self, sid: int, host: str, port: int) -> anyio.CancelScope:
        # The scope exists before the task runs, so a CloseServer in the same batch
        # cancels the attempt before it starts.
        scope = anyio.CancelScope()
        assert self._tg is not None
        self._tg.start_soon(self._connect, sid, host, port, scope)
        return scope

    async def _spawn(self, conn: TaskConn) -> None:
        assert self._tg is not None
        self._tg.start_soon(self._connection, conn)

    def cancel(self, handle: anyio.CancelScope | list[anyio.CancelScope]) -> None:
        for scope in handle if isinstance(handle, list) else (handle,):
            scope.cancel()

    async def _pair(self, conn: TaskConn) -> None:
        # conn.pair lists the cancel scopes of the connection's tasks: this one's while
        # it reads, the writer's while it runs (in the pooler's task group: no task group
        # of its own per connection, which an idle client would pay for).
        with anyio.CancelScope() as scope:
            conn.pair = [scope]
            conn.group = self._tg
            self._paired(conn)
            try:
                await self._reader(conn)
            finally:
                conn.group = None  # the pair is ending: no writer starts now
                conn.pair.remove(scope)
                self.cancel(conn.pair)

    def start_writer(self, conn: TaskConn) -> None:
        scope = anyio.CancelScope()
        conn.pair.append(scope)
        assert self._tg is not None
        self._tg.start_soon(self._beside, conn, scope)

    async def _beside(self, conn: TaskConn, scope: anyio.CancelScope) -> None:
        """The writer; when it ends the pair, it cancels the reader's scope."""
        ends = False
        with scope:
            ends = await self._writer(conn)
        with contextlib.suppress(ValueError):
            conn.pair.remove(scope)
        if ends:
            self.cancel(conn.pair)

    async def _close_stream(self, conn: TaskConn) -> None:
        with anyio.CancelScope(shield=True):
            if self._forced:
                await anyio.aclose_forcefully(conn.stream)
                return
            try:
                await conn.stream.aclose()
            except self.GONE:
                pass

    async def _wrap_tls(self, conn: TaskConn, kind: str) -> None:
        stream = await TLSStream.wrap(
            conn.stream,
            server_side=not conn.server,
            hostname=conn.host or None,
            ssl_context=self.tls.context(kind),
            standard_compatible=False,  # PostgreSQL peers close without close_notify
        )
        self._attach(conn, stream)

    def _attach(self, conn: TaskConn, stream: anyio.abc.ByteStream) -> None:
        conn.stream = stream
        conn.receive = stream.receive
        conn.send = stream.send
        raw = self.raw_socket(stream)
        plain = isinstance(raw, socket.socket) and not isinstance(stream, TLSStream)
        conn.direct = raw if plain and self._direct else None

    def raw_socket(self, stream: anyio.abc.ByteStream) -> Any:
        return stream.extra(SocketAttribute.raw_socket, None)

    def set_event(self, event: anyio.Event) -> None:
        event.set()

    async def _wait(self, event: anyio.Event, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await event.wait()

    async def _sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


def _backend_name() -> str:
    import sniffio  # noqa: PLC0415 - anyio depends on it

    return sniffio.current_async_library()


class AnyioOnAsyncio(AsyncioFrontend):
    """The anyio frontend on anyio's asyncio backend: the asyncio adapter (see the
    module's docstring for why), under the anyio frontend's name."""

    WHAT = "anyio frontend, asyncio backend"


def make_frontend(engine: EngineAPI, config: Config, *, config_path: str | None) -> Driver:
    """The anyio frontend for the running backend: streams on trio, transports on asyncio."""
    if _backend_name() == "asyncio":
        return AnyioOnAsyncio(engine, config, config_path=config_path)
    return AnyioFrontend(engine, config, config_path=config_path)


async def serve(
    config: Config,
    *,
    config_path: str | None = None,
    ready: Ready | None = None,
    handle_signals: bool = True,
    engine: EngineAPI | None = None,
) -> int:
    """Run the pooler in the running anyio event loop until it exits; the exit code.

    As ``Driver.serve_config``, with the adapter :func:`make_frontend` picks.

    Raises:
        FrontendError: the pooler cannot start.
    """
    frontend = make_frontend(engine or real_engine(config), config, config_path=config_path)
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
