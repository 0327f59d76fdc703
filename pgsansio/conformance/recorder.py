"""A recording TCP relay: sits between a PostgreSQL client and server and writes traces.

This is an I/O tool, not part of the sans-IO core. It listens on a port, opens one
connection to the target for every client it accepts, passes bytes through unchanged in
both directions, and records each connection as a trace (:mod:`pgsansio.conformance.trace`).

Why a relay rather than packet capture: it needs no root, sees exactly the chunks that
``recv()`` returned on each side (which is what a proxy's parser is fed, so the
conformance tests replay those boundaries), and records end of stream and half-close
precisely. It uses :class:`asyncio.Protocol` callbacks rather than streams because
``data_received`` is called once per ``recv()``; a stream reader would merge reads.

Behaviour worth knowing:

* Connection ids are 1, 2, 3 ... in accept order; connection N is written to
  ``<out_dir>/c<N>.jsonl`` (compressed to ``c<N>.jsonl.gz`` on close when its payload
  exceeds ``compress_above`` bytes, 256 KiB by default).
* ``t_us`` counts microseconds since the relay started, so the traces of one recording
  session share a clock and can be put in one timeline.
* When one side shuts down its sending half, the relay records ``eof`` for that
  direction and shuts down the same half towards the other side (``write_eof``), so a
  client that half-closes sees the server's remaining answer. A connection is finished
  when both directions reached EOF (or one side vanished with an error, which closes
  the other side as well).
* Reading from one side pauses while the other side's write buffer is full, so a slow
  client does not make the relay buffer a whole result set in memory.
* If the target cannot be reached, the client's connection is closed, the failure is
  logged, and no trace is written for that id.

:class:`RecordingRelay` runs the event loop in a background thread for synchronous
scripts and tests; :class:`AsyncRecordingRelay` is the same relay for code that already
runs an asyncio loop (the ``pgsansio record`` command).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pathlib
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final

from pgsansio.conformance.trace import BACKEND, FRONTEND, TraceWriter, trace_filename

__all__ = [
    "COMPRESS_ABOVE",
    "RECORDER_ID",
    "AsyncRecordingRelay",
    "ConnectionRecord",
    "RecordingRelay",
]

log = logging.getLogger("pgsansio.recorder")

RECORDER_ID: Final = "pgsansio-relay-1"
"""Names this recorder and its behaviour in corpus metadata; bump it if what it records
changes (chunking, EOF handling), so old and new recordings can be told apart."""

COMPRESS_ABOVE: Final = 256 * 1024
"""Default payload size above which a trace is gzip-compressed when it is closed."""


@dataclasses.dataclass(slots=True)
class ConnectionRecord:
    """What the relay knows about one accepted connection (live while it runs)."""

    connection: int
    peer: str
    opened_t_us: int
    client_bytes: int = 0
    """Bytes the client sent (direction F)."""
    server_bytes: int = 0
    """Bytes the server sent (direction B)."""
    closed_t_us: int | None = None
    path: pathlib.Path | None = None
    """The trace file, final name once the connection is closed; None if none was written."""
    error: str | None = None
    """Why the connection ended abnormally (target unreachable, reset ...), if it did."""
    forced_close: bool = False
    """The relay closed it on stop() because it was still open after the grace period."""

    @property
    def closed(self) -> bool:
        return self.closed_t_us is not None


class _Side(asyncio.Protocol):
    """One TCP leg of a relayed connection: the client's or the server's."""

    def __init__(self, conn: _Relayed, direction: str) -> None:
        self.conn = conn
        # The direction of the bytes this leg *receives*: F on the client leg.
        self.direction = direction
        self.transport: asyncio.Transport | None = None
        self.got_eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn.leg_made(self)

    def data_received(self, data: bytes) -> None:
        self.conn.received(self, data)

    def eof_received(self) -> bool:
        self.conn.eof(self)
        return True  # keep our sending half open: the peer may still be answering

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.conn.lost(self, exc)

    # Flow control: our transport's send buffer is full -> stop reading the other leg.
    def pause_writing(self) -> None:
        other = self.conn.other(self)
        if other.transport is not None and not other.transport.is_closing():
            other.transport.pause_reading()

    def resume_writing(self) -> None:
        other = self.conn.other(self)
        if other.transport is not None and not other.transport.is_closing():
            other.transport.resume_reading()


class _Relayed:
    """One client connection, its upstream connection and its trace."""

    def __init__(self, relay: AsyncRecordingRelay, cid: int) -> None:
        self.relay = relay
        self.cid = cid
        self.client = _Side(self, FRONTEND)
        self.server = _Side(self, BACKEND)
        self.record: ConnectionRecord | None = None
        self.writer: TraceWriter | None = None
        self.done = asyncio.get_running_loop().create_future()
        self._connect_task: asyncio.Task[None] | None = None
        self._finished = False

    def other(self, side: _Side) -> _Side:
        return self.server if side is self.client else self.client

    def leg_made(self, side: _Side) -> None:
        assert side.transport is not None
        if side is self.server:
            # Upstream is connected. The trace is opened here rather than after
            # create_connection() returns, because this runs before any byte can arrive.
            if self.client.lost:
                side.transport.abort()
                return
            assert self.record is not None and self.client.transport is not None
            path = self.relay.out_dir / trace_filename(self.cid)
            self.writer = TraceWriter(
                path, self.cid, self.relay.meta, compress_above=self.relay.compress_above
            )
            self.record.path = path
            self.client.transport.resume_reading()
            return
        peer = side.transport.get_extra_info("peername")
        peer_s = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.record = ConnectionRecord(self.cid, peer_s, self.relay.now_us())
        self.relay.records.append(self.record)
        log.info("c%d opened from %s", self.cid, peer_s)
        # Nothing may be read from the client before the upstream leg exists to take it.
        side.transport.pause_reading()
        self._connect_task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(
                lambda: self.server, self.relay.target_host, self.relay.target_port
            )
        except OSError as e:
            target = f"{self.relay.target_host}:{self.relay.target_port}"
            self._fail(f"cannot connect to target {target}: {e.strerror or e}")
            return
        except asyncio.CancelledError:
            self._fail("cancelled while connecting to the target")
            raise
        if self.client.lost:
            self._fail("client closed before the target connection was up")

    def _fail(self, why: str) -> None:
        if self.record is not None and self.record.error is None:
            self.record.error = why
        for side in (self.client, self.server):
            if side.transport is not None:
                side.transport.abort()
        self._finish()

    def received(self, side: _Side, data: bytes) -> None:
        assert self.writer is not None and self.record is not None
        self.writer.chunk(side.direction, data, self.relay.now_us())
        if side is self.client:
            self.record.client_bytes += len(data)
        else:
            self.record.server_bytes += len(data)
        other = self.other(side)
        if other.transport is not None and not other.transport.is_closing():
            other.transport.write(data)

    def eof(self, side: _Side) -> None:
        side.got_eof = True
        if self.writer is not None:
            self.writer.eof(side.direction, self.relay.now_us())
        other = self.other(side)
        if other.transport is not None and not other.transport.is_closing():
            if other.transport.can_write_eof():
                other.transport.write_eof()
            else:
                other.transport.close()
        if self.client.got_eof and self.server.got_eof:
            # Both halves are shut: close both legs (buffered data is still flushed).
            for s in (self.client, self.server):
                if s.transport is not None:
                    s.transport.close()

    def lost(self, side: _Side, exc: Exception | None) -> None:
        other = self.other(side)
        if not side.got_eof:
            # The leg vanished without an orderly shutdown (reset, or the relay closing
            # it): its direction has ended all the same, so record that.
            side.got_eof = True
            if self.writer is not None and not self.writer.closed:
                self.writer.eof(side.direction, self.relay.now_us())
        if exc is not None and self.record is not None and self.record.error is None:
            self.record.error = f"{'client' if side is self.client else 'server'}: {exc}"
        if other.transport is not None and not other.transport.is_closing():
            if exc is not None or other.got_eof:
                # After an error nobody is left to answer, and once both directions
                # ended there is nothing left to relay: close the other leg too.
                other.transport.close()
            elif other.transport.can_write_eof():
                other.transport.write_eof()
        # While still connecting upstream, _connect() finishes once it sees client.lost.
        connecting = self._connect_task is not None and not self._connect_task.done()
        server_gone = self.server.lost or self.server.transport is None
        if self.client.lost and server_gone and not connecting:
            self._finish()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        record = self.record
        if self.writer is not None:
            self.writer.close()
            if record is not None:
                record.path = self.writer.path
        if record is not None:
            record.closed_t_us = self.relay.now_us()
            secs = (record.closed_t_us - record.opened_t_us) / 1e6
            where = f" -> {record.path}" if record.path is not None else ""
            err = f" ({record.error})" if record.error else ""
            log.info(
                "c%d closed after %.3fs: client sent %d bytes, server sent %d bytes%s%s",
                self.cid,
                secs,
                record.client_bytes,
                record.server_bytes,
                where,
                err,
            )
        self.relay.active.discard(self)
        if not self.done.done():
            self.done.set_result(None)

    def abort(self) -> None:
        """Tear the connection down now (used when stopping after the grace period)."""
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        for side in (self.client, self.server):
            if side.transport is not None:
                side.transport.abort()


class AsyncRecordingRelay:
    """The recording relay for code that already runs inside an asyncio event loop.

    ``await start()`` binds and starts accepting; ``await stop(timeout)`` stops
    accepting, waits up to ``timeout`` seconds for open connections to end by
    themselves, aborts the rest, and returns once every trace file is closed.
    """

    def __init__(
        self,
        listen_host: str,
        listen_port: int,
        target_host: str,
        target_port: int,
        out_dir: str | os.PathLike[str],
        *,
        meta: Mapping[str, Any] | None = None,
        compress_above: int | None = COMPRESS_ABOVE,
    ) -> None:
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.target_host = target_host
        self.target_port = target_port
        self.out_dir = pathlib.Path(out_dir)
        self.meta: dict[str, Any] = dict(meta or {})
        self.compress_above = compress_above
        self.records: list[ConnectionRecord] = []
        """Every accepted connection, in accept order."""
        self.active: set[_Relayed] = set()
        self._server: asyncio.Server | None = None
        self._next_id = 1
        self._t0_ns = time.monotonic_ns()

    def now_us(self) -> int:
        """Microseconds since the relay started: the clock of every trace it writes."""
        return (time.monotonic_ns() - self._t0_ns) // 1000

    @property
    def port(self) -> int:
        """The bound port (useful when ``listen_port`` was 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the relay is not listening")
        port = self._server.sockets[0].getsockname()[1]
        assert isinstance(port, int)
        return port

    def _accept(self) -> _Side:
        conn = _Relayed(self, self._next_id)
        self._next_id += 1
        self.active.add(conn)
        return conn.client

    async def start(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._t0_ns = time.monotonic_ns()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, self.listen_host, self.listen_port)
        log.info(
            "recording %s:%d -> %s:%d into %s",
            self.listen_host,
            self.port,
            self.target_host,
            self.target_port,
            self.out_dir,
        )

    async def stop(self, timeout: float = 10.0) -> None:
        if self._server is not None:
            # Let accepts already queued in the kernel's backlog reach us first, so a
            # client that connected just before stop() still gets a complete trace.
            for _ in range(3):
                await asyncio.sleep(0.01)
            self._server.close()
        waiting = [c.done for c in list(self.active)]
        if waiting:
            _, pending = await asyncio.wait(waiting, timeout=timeout)
            if pending:
                log.warning(
                    "%d connection(s) still open after %.1fs; closing them", len(pending), timeout
                )
                for c in list(self.active):
                    if c.record is not None:
                        c.record.forced_close = True
                    c.abort()
                if self.active:
                    await asyncio.wait([c.done for c in list(self.active)], timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        # Whatever is left (a hung connect) is closed without a trace.
        for c in list(self.active):
            c._fail("relay stopped")


class RecordingRelay:
    """The recording relay for synchronous code: runs its event loop in a thread.

    >>> with RecordingRelay("127.0.0.1", 0, "127.0.0.1", 5432, "out") as relay:
    ...     run_client(port=relay.port)          # doctest: +SKIP

    :meth:`start` returns once the relay is listening (:attr:`port` is then valid);
    :meth:`stop` returns once every accepted connection has ended (or was closed after
    ``timeout`` seconds) and its trace file is complete on disk.

    The relay thread needs the GIL to move bytes. A client in the same process that
    blocks inside C code *without releasing the GIL* (psycopg's blocking ``pgconn``
    methods, such as ``describe_prepared``, do) deadlocks against it; run such a client,
    or the relay, in another process (``scripts/make_corpus.py`` does the latter).
    """

    def __init__(
        self,
        listen_host: str,
        listen_port: int,
        target_host: str,
        target_port: int,
        out_dir: str | os.PathLike[str],
        *,
        meta: Mapping[str, Any] | None = None,
        compress_above: int | None = COMPRESS_ABOVE,
    ) -> None:
        self._relay = AsyncRecordingRelay(
            listen_host,
            listen_port,
            target_host,
            target_port,
            out_dir,
            meta=meta,
            compress_above=compress_above,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._stop_timeout = 10.0

    @property
    def port(self) -> int:
        return self._relay.port

    @property
    def host(self) -> str:
        return self._relay.listen_host

    @property
    def out_dir(self) -> pathlib.Path:
        return self._relay.out_dir

    @property
    def records(self) -> list[ConnectionRecord]:
        """Accepted connections in accept order (complete once :meth:`stop` returned)."""
        return self._relay.records

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the relay was already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            self._stopped = asyncio.Event()
            try:
                await self._relay.start()
            except BaseException as e:
                failure.append(e)
                ready.set()
                return
            ready.set()
            await self._stopped.wait()
            await self._relay.stop(self._stop_timeout)

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(main())
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="pgsansio-recorder", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            raise failure[0]

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, wait up to ``timeout`` s for connections to end, flush traces."""
        if self._thread is None or self._loop is None or self._stopped is None:
            return
        self._stop_timeout = timeout
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join()

    def __enter__(self) -> RecordingRelay:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
