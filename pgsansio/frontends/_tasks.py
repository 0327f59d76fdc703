"""Connections served by tasks: what the curio and anyio-on-trio adapters share.

curio and trio offer "send this and wait until it is gone" rather than asyncio's
buffering transports. So a connection (a :class:`TaskConn`) is a task of its own that
owns its life (reporting the peer gone, closing), and, only while the engine's bytes wait
to be sent, a writer task beside it that sends what waits in the connection's
:class:`~pgsansio.frontends._driver.Outbox`; the pair ends when either ends it.

* **Reads.** A plain connection's task does not read: it parks, and one task for the
  whole driver, the poller, reads every plain socket (:meth:`TaskDriver._run_poller`).
  The runtime waits for the driver's own epoll object to be readable, then each ready
  socket is read with one ``recv_into`` of up to :data:`READ_SIZE` and fed to the
  engine, as an event loop does: one wake-up of the runtime's scheduler per batch of
  ready sockets instead of a task switch per socket, and no re-arming of each socket
  in the runtime's epoll (trio's ``EPOLLONESHOT`` costs an ``epoll_ctl`` per wait). When
  the peer leaves, the poller hands the connection back to its task. Under TLS (from
  ``StartTls`` on) the connection's task reads the runtime's TLS stream itself. Where
  there is no epoll (not Linux), each connection's task waits for its own socket with
  the runtime's wait and reads it the same way.
* **Writes.** On a plain socket (the OS socket itself, holding no bytes of ours in user
  space) ``write`` offers the bytes to the socket at once when nothing is queued: most
  writes cost one ``send`` and no task switch. What the kernel does not take goes to
  the Outbox and starts a writer, which sends it and, with nothing left, ends (writes
  go direct again). Under TLS the bytes go through the runtime's TLS stream: there the
  writer stays and every write wakes it (TLS keeps the stream path).
* **Idle memory.** An idle plain connection is its one parked task (no writer), not
  three: what 2,000 idle clients cost is measured with ``scripts/idle_clients_rss.py``.

:class:`TaskDriver` is the driver with those loops written once: the reader, the
writer (which also does a TLS upgrade after the ``S`` went out, and flushes on close),
one connection's life, the accept loop, connecting, the timer. An adapter supplies the
runtime calls, in the same order in both adapters: ``serve``, ``_listen``,
``_handle_signals``, ``signal_threadsafe``, then ``_accept_one``, ``_open``,
``_open_server``, ``_spawn``, ``cancel``, ``_pair``, ``start_writer``,
``_close_stream``, ``_wrap_tls``, ``_attach``, ``raw_socket``, ``set_event``,
``_wait``, ``_sleep``, the attribute ``_wait_readable`` (and starting
``_run_poller`` beside ``_run_timer``), and the class attributes
:attr:`TaskDriver.Event` and :attr:`TaskDriver.GONE`. The underscored ones only the
driver calls, on itself. A :class:`TaskConn` calls ``cancel``, ``start_writer``,
``poll_interest``, ``set_event`` and ``Event`` on its driver (and the driver's
``writable``), which are public for that (see the adapter API in :mod:`._driver`);
``raw_socket`` is public for tests.

Waking a task is an ``await`` in curio and the driver's batch is synchronous, so
``set_event`` (and ``start_writer``, ``cancel``) may note the wake-up in ``_todo``
instead; every task that calls into the driver runs those (:meth:`TaskDriver._kick`)
right after. anyio's are direct and its ``_todo`` stays empty.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from pgsansio.frontends import tune_socket
from pgsansio.frontends._driver import Driver, Outbox, log

if TYPE_CHECKING:
    from pgsansio.config.model import Config
    from pgsansio.frontends import EngineAPI

__all__ = ["READ_SIZE", "TaskConn", "TaskDriver", "send_now"]

READ_SIZE = 256 * 1024
"""The most one read takes from a plain socket (asyncio's selector transports' size), so
a large result arrives in few reads. The reads go into one buffer per driver and what
came is copied out: ``recv(READ_SIZE)`` would make glibc map and unmap 256 KiB on every
read (three system calls more per read, as counted with strace)."""


class TaskConn:
    """One connection, client or server, and the state its reader and writer share."""

    __slots__ = (
        "closing", "direct", "fe", "group", "held", "host", "key", "out", "pair", "parked",
        "polled", "reading", "receive", "resumed", "send", "server", "stream", "upgrade",
        "upgrading", "wake", "writing",
    )  # fmt: skip

    def __init__(self, fe: TaskDriver, host: str = "") -> None:
        self.fe = fe
        self.server = bool(host)
        self.host = host  # a server's name, which a verified certificate must carry
        self.key = 0
        self.out = Outbox()
        # The events are made when first needed: an idle connection holds none.
        self.wake: Any = None  # set when a waiting writer has something to do
        self.writing = False  # a writer task runs (or is about to start)
        self.reading = True
        self.resumed: Any = None  # set when reading is switched back on
        self.closing = False  # closed by the engine (or aborted): read no more
        self.upgrade: str | None = None  # StartTls asked for ("client"/"server")
        self.upgrading = False  # the handshake is under way
        self.pair: Any = None  # the adapter's handle on the connection's tasks, for cancel
        self.group: Any = None  # the adapter's handle for starting the writer beside it
        # The stream and its calls: the adapter's _attach sets them (and again on TLS).
        self.stream: Any = None
        self.receive: Callable[[], Awaitable[bytes]]
        self.send: Callable[[bytes], Awaitable[Any]]
        self.direct: socket.socket | None = None  # takes bytes at once (see the module)
        self.held = b""  # received while reading was paused, not yet handed over
        self.polled = -1  # the descriptor the driver's poller reads for it (-1: none)
        self.parked: Any = None  # set when the poller hands the connection back

    def write(self, data: bytes) -> None:
        out = self.out
        if self.direct is not None and not (out.pending or self.closing):
            data = send_now(self.direct, data)
            if not data:
                return
        if out.put(data):
            self.fe.writable(self.server, self.key, False)
        self.to_writer()

    def to_writer(self) -> None:
        """Give the writer something to do: wake it, or start one if none runs."""
        if not self.writing:
            self.writing = True
            if self.group is not None:  # else the pair starts it (TaskDriver._paired)
                self.fe.start_writer(self)
        elif self.wake is not None:
            self.fe.set_event(self.wake)

    def close(self) -> None:
        """Flush, then close; a TLS handshake (in the writer) is cut short."""
        self.closing = True
        self.to_writer()
        if self.upgrading:
            self.fe.cancel(self.pair)

    def abort(self) -> None:
        """Close without flushing: the pair is cancelled, what waits is dropped."""
        self.closing = True
        self.out.drop()
        if self.pair is not None:
            self.fe.cancel(self.pair)

    def pause_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.resumed = self.fe.Event()
            if self.polled >= 0:
                self.fe.poll_interest(self)

    def resume_reading(self) -> None:
        if not self.reading:
            self.reading = True
            self.fe.set_event(self.resumed)
            if self.polled >= 0:
                self.fe.poll_interest(self)


class TaskDriver(Driver):
    """The driver for a runtime whose connections are a reader task (and a writer task
    while bytes wait)."""

    Event: ClassVar[type[Any]]
    """The runtime's event class (``await event.wait()``; set through ``set_event``)."""

    GONE: ClassVar[tuple[type[BaseException], ...]]
    """What a read or write raises when the peer went away or the stream was closed."""

    def __init__(self, engine: EngineAPI, config: Config, *, config_path: str | None) -> None:
        super().__init__(engine, config, config_path=config_path)
        self._todo: dict[Callable[[], Awaitable[Any]], None] = {}  # wake-ups to await
        self._timer_changed = self.Event()
        # Every plain read lands here first (see READ_SIZE); the bytes are copied out
        # before the reader awaits anything, so one buffer serves every connection.
        self._read_view = memoryview(bytearray(READ_SIZE))
        # Plain connections are read by one task, the poller, through an epoll object of
        # the driver's own (see _run_poller); fd -> the connection.
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._polled: dict[int, TaskConn] = {}
        self._timer_until: float | None = 0.0  # what the timer task waits for (None: ever)
        self._done = self.Event()

    # ------------------------------------------------------------ the adapter's part

    async def _accept_one(self, listener: Any) -> tuple[Any, str] | None:
        """The next client's stream and peer; None once the listener is closed."""
        raise NotImplementedError

    async def _open(self, host: str, port: int, handle: Any) -> Any:
        """Connect to a server; its stream, or None if ``handle`` was cancelled."""
        raise NotImplementedError

    async def _spawn(self, conn: TaskConn) -> None:
        """Run ``_connection(conn)`` in a task of the pooler's task group."""
        raise NotImplementedError

    def cancel(self, handle: Any) -> None:
        """Cancel a connection attempt or a connection's pair of tasks."""
        raise NotImplementedError

    async def _pair(self, conn: TaskConn) -> None:
        """Run ``_reader`` in this task, in a scope ``conn.pair`` cancels, beside which
        ``start_writer`` runs ``_writer``; the pair ends when the reader returns or the
        writer returns True (the other is cancelled). Calls ``_paired`` once
        ``conn.pair`` and ``conn.group`` are set."""
        raise NotImplementedError

    def start_writer(self, conn: TaskConn) -> None:
        """Run ``_writer(conn)`` in a task beside the reader (see ``_pair``)."""
        raise NotImplementedError

    async def _close_stream(self, conn: TaskConn) -> None:
        """Close the stream (forcefully after a forced exit), whatever state it is in."""
        raise NotImplementedError

    async def _wrap_tls(self, conn: TaskConn, kind: str) -> None:
        """Put a TLS stream in place (``_attach``) and do the handshake."""
        raise NotImplementedError

    def _attach(self, conn: TaskConn, stream: Any) -> None:
        """Make ``stream`` the connection's: ``stream``, ``receive``, ``send``, ``direct``."""
        raise NotImplementedError

    def raw_socket(self, stream: Any) -> Any:
        """The OS socket under a stream, for its options."""
        raise NotImplementedError

    def set_event(self, event: Any) -> None:
        """Set ``event`` now, or note it in ``_todo`` where that is an await."""
        raise NotImplementedError

    async def _wait(self, event: Any, timeout: float) -> None:
        """Wait until ``event`` is set or ``timeout`` seconds have passed."""
        raise NotImplementedError

    async def _sleep(self, seconds: float) -> None:
        raise NotImplementedError

    _wait_readable: Callable[[Any], Awaitable[Any]]
    """The runtime's own wait until a file descriptor (the poller's epoll object) is
    readable, set in the adapter's ``__init__``: the function itself, not a method
    around it, so each wake-up resumes one coroutine frame fewer."""

    # ------------------------------------------------------------- written once here

    async def _kick(self) -> None:
        """Run the wake-ups the last batch noted (non-blocking; nothing else runs)."""
        todo = self._todo
        while todo:
            wake = next(iter(todo))
            del todo[wake]
            await wake()

    def _stop(self) -> None:
        self.set_event(self._done)

    def _cancel_open(self, handle: Any) -> None:
        self.cancel(handle)

    def _start_tls(self, kind: str, key: int, conn: TaskConn) -> None:  # type: ignore[override]
        conn.upgrade = kind
        conn.direct = None  # not one byte in clear from now on
        if conn.polled >= 0:  # the connection's own task reads the TLS stream
            self._poll_remove(conn)
            self.set_event(conn.parked)
        conn.to_writer()

    def _paired(self, conn: TaskConn) -> None:
        """The pair's scope exists: start the writer a write or close asked for before."""
        if conn.writing or conn.closing:
            conn.writing = True
            self.start_writer(conn)

    def _arm(self, at: float | None) -> None:
        """Wake the timer task only for a deadline earlier than the one it waits for: one
        that moved later (or went) it finds when it wakes, and waits again; no task
        switch for a deadline that moves with every transaction."""
        until = self._timer_until
        if at is not None and (until is None or at < until):
            self.set_event(self._timer_changed)

    def _unread(self, conn: TaskConn) -> Iterator[bytes]:  # type: ignore[override]
        """The bytes the reader held while paused, then what the socket still holds."""
        if conn.held:
            yield conn.held
            conn.held = b""
        yield from super()._unread(conn)

    def _plain_socket(self, conn: TaskConn) -> Any:  # type: ignore[override]
        return conn.direct  # a plain OS socket; None under TLS (or where it cannot send)

    async def _run_poller(self) -> None:
        """Read every plain connection that has bytes: one task wake-up per batch.

        The runtime waits for the driver's epoll object to be readable (an epoll
        descriptor is itself pollable), then every ready socket is read and fed to the
        engine in turn, as an event loop does. So a transaction costs the runtime's
        scheduler one wake-up per batch of ready sockets, not one task switch per socket.
        The interest follows ``reading``; a connection closing or leaving is unregistered,
        and a peer that left (EOF, an error) hands the connection back to its own task.
        """
        ep = self._epoll
        if ep is None:
            return  # no epoll here: each connection's task reads its own socket
        polled = self._polled
        view = self._read_view
        engine = self.engine
        wait_readable = self._wait_readable
        try:
            while True:
                await wait_readable(ep)
                for fd, _ in ep.poll(0):
                    conn = polled.get(fd)
                    if conn is None or not conn.reading:
                        continue
                    if conn.closing:  # read no more; the writer flushes, then ends it
                        self._poll_remove(conn)
                        continue
                    try:
                        n = conn.direct.recv_into(view)  # type: ignore[union-attr]
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:  # a reset: gone, as EOF
                        n = 0
                    if not n:
                        self._poll_remove(conn)
                        self.set_event(conn.parked)
                        continue
                    data_in = engine.server_data if conn.server else engine.client_data
                    self.call(data_in, conn.key, view[:n].tobytes())
                if self._todo:
                    await self._kick()
        finally:
            ep.close()

    def poll_interest(self, conn: TaskConn) -> None:
        """Reading was switched on or off: the poller's interest in the socket follows."""
        if self._epoll is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.modify(conn.polled, select.EPOLLIN if conn.reading else 0)

    def _poll_add(self, conn: TaskConn, raw: socket.socket) -> None:
        assert self._epoll is not None
        fd = raw.fileno()
        self._epoll.register(fd, select.EPOLLIN if conn.reading else 0)
        conn.polled = fd
        self._polled[fd] = conn

    def _poll_remove(self, conn: TaskConn) -> None:
        fd = conn.polled
        if fd >= 0:
            conn.polled = -1
            if self._polled.get(fd) is conn:
                del self._polled[fd]
            with contextlib.suppress(OSError, ValueError, AttributeError):  # closed at exit
                self._epoll.unregister(fd)  # type: ignore[union-attr]

    async def _run_timer(self) -> None:
        while True:
            changed = self._timer_changed = self.Event()
            at = self._timer_until = self.wakeup_at
            if at is None:
                await changed.wait()
            elif at > time.monotonic():
                await self._wait(changed, at - time.monotonic())
            else:
                self._timer_until = 0.0  # running: it looks at the deadline again next
                self.timer_fired()
                if self._todo:
                    await self._kick()

    def _conn(self, stream: Any, host: str | None = None) -> TaskConn:
        """A client's connection, or (``host`` given) a server's."""
        conn = TaskConn(self, host or "")
        self._attach(conn, stream)
        tune_socket(self.raw_socket(stream), self.config.general, server=host is not None)
        return conn

    async def _accept(self, listener: Any, metrics: bool) -> None:
        """Accept clients (or scrapers, ``metrics``) until the listener closes."""
        while True:
            try:
                accepted = await self._accept_one(listener)
            except OSError as exc:  # EMFILE and the like: log, breathe, go on
                log.warning("accept failed: %s", exc)
                await self._sleep(0.1)
                continue
            if accepted is None:
                return
            stream, peer = accepted
            conn = self._conn(stream)
            conn.key = self.client_made(conn, peer, metrics=metrics)
            if self._todo:
                await self._kick()
            await self._spawn(conn)

    async def _connect(self, sid: int, host: str, port: int, handle: Any) -> None:
        try:
            stream = await self._open(host, port, handle)
        except Exception as exc:  # OSError mostly; anything else still fails only this sid
            self.server_failed(sid, exc)
            stream = None
        if stream is not None:
            conn = self._conn(stream, host)
            conn.key = sid
            if self.server_made(sid, conn):
                await self._kick()
                await self._connection(conn)
                return
            await self._close_stream(conn)  # the engine closed this id meanwhile
        await self._kick()

    async def _connection(self, conn: TaskConn) -> None:
        """Run one connection's reader and writer until either ends, then clean up."""
        self.connection_made()
        try:
            await self._pair(conn)
            self.peer_gone(conn.server, conn.key, conn)
            if self._todo:
                await self._kick()
        finally:
            self.connection_lost()
            await self._close_stream(conn)

    async def _reader(self, conn: TaskConn) -> None:
        """Hand what arrives to the engine; returns when the peer left (ending the pair)."""
        engine = self.engine
        data_in = engine.server_data if conn.server else engine.client_data
        try:
            while not conn.closing:
                if not conn.reading:
                    await conn.resumed.wait()
                    continue
                raw = conn.direct
                if raw is not None and self._epoll is None:  # no poller: read it here
                    await self._wait_readable(raw)
                    try:
                        data = self._read_view[: raw.recv_into(self._read_view)].tobytes()
                    except (BlockingIOError, InterruptedError):
                        continue  # a spurious wake-up
                elif raw is not None:  # the poller reads it until the peer leaves or TLS
                    conn.parked = self.Event()
                    self._poll_add(conn, raw)
                    try:
                        await conn.parked.wait()
                    finally:
                        self._poll_remove(conn)
                    if conn.direct is None:
                        continue  # TLS from now on: the stream, read here
                    break  # the peer left
                else:
                    data = await conn.receive()
                if not data:
                    break  # the peer closed its end
                # Paused while that receive was under way: hold the bytes until resumed
                # (where peer_gone finds them if the writer fails meanwhile).
                if not conn.reading:
                    conn.held = data
                    while not conn.reading and not conn.closing:
                        await conn.resumed.wait()
                    conn.held = b""
                if conn.closing:
                    break
                self.call(data_in, conn.key, data)
                if self._todo:
                    await self._kick()
        except self.GONE:
            pass
        if conn.closing and conn.writing:  # closed by us: the writer flushes, then ends it
            await self.Event().wait()

    async def _writer(self, conn: TaskConn) -> bool:
        """Send what waits, do a TLS upgrade, flush on close; True ends the pair.

        On a plain socket the writer returns False (and the connection goes on) once it
        has nothing left to do: writes go to the socket directly again, and the next one
        the socket does not take starts another writer. So an idle connection is one
        task. On a stream (TLS) it waits for the next write instead.
        """
        out = conn.out
        try:
            while True:
                if out:
                    data = out.take()
                    await conn.send(data)
                    if out.sent(len(data)) and not conn.closing:
                        self.writable(conn.server, conn.key, True)
                        if self._todo:
                            await self._kick()
                elif conn.upgrade is not None and not conn.closing:
                    if not await self._handshake(conn, conn.upgrade):
                        return True
                elif conn.closing:
                    return True
                elif conn.direct is not None:
                    conn.writing = False
                    conn.wake = None
                    return False
                else:
                    conn.wake = self.Event()
                    await conn.wake.wait()
        except self.GONE:
            return True

    async def _handshake(self, conn: TaskConn, kind: str) -> bool:
        """Upgrade to TLS (after the S went out) and report it; whether it succeeded."""
        conn.upgrade = None
        conn.upgrading = True
        try:
            await self._wrap_tls(conn, kind)
        except Exception as exc:  # ssl.SSLError, a broken stream: this connection only
            error: Exception | None = exc
        else:
            error = None
            conn.resume_reading()
        finally:
            conn.upgrading = False
        ok = self.tls_done(kind, conn.key, conn, None if error else conn, error)
        if self._todo:
            await self._kick()
        return ok


def send_now(raw: socket.socket, data: bytes) -> bytes:
    """Write what a plain non-blocking socket takes at once; the rest, for the writer.

    A runtime's own send starts the same way; an error is left for the writer to meet.
    """
    try:
        sent = raw.send(data)
    except OSError:  # would block, or a broken connection
        return data
    return data[sent:]
