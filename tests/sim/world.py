"""The simulated world: a clock, a network, the engine and the fake servers.

Everything that happens is an event on one heap, ordered by (time, sequence number);
every random choice comes from one ``random.Random(seed)``. So a run is a pure
function of its seed, and a failing seed replays exactly (``SIM_SEED=n``).

The network is TCP as a pooler sees it: each direction of a connection is a
:class:`Pipe` that keeps bytes in order but delivers them after a random delay and in
random pieces (one write may arrive split, several writes may arrive merged), and an
EOF only after the bytes written before it.

The world plays the frontend for the engine: it carries out the effects exactly as
``pgsansio.engine``'s docstring asks (OpenServer -> server_connected/server_failed
after a connect delay, Wakeup -> one timer that the next Wakeup replaces, Close* ->
EOF to the peer after pending bytes, no ``*_closed`` call for a close the engine asked
for) and checks the invariants a frontend can see: pool sizes, and that the engine
never raises.
"""

from __future__ import annotations

import heapq
import logging
import random
import traceback
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pgsansio.config.model import Config
from pgsansio.engine import (
    CloseClient,
    CloseServer,
    Engine,
    Exit,
    Log,
    OpenServer,
    SendClient,
    SendServer,
    Wakeup,
)
from pgsansio.testing.fakepg import Database, FakeServer

if TYPE_CHECKING:
    from .client import SimClient


def brief(event: Any) -> str:
    """A short, readable form of a protocol event for traces."""
    name = type(event).__name__
    fields = getattr(event, "_fields", ())
    if name in {"ErrorResponse", "NoticeResponse"}:
        return f"{name[:-8]}({event.sqlstate} {event.message!r:.90})"
    if name == "DataRow":
        return f"Row{event.values!r:.60}"
    if name in ("RowDescription", "ParameterDescription"):
        return name
    if name == "ReadyForQuery":
        return f"Z{event.status}"
    values = ", ".join(f"{getattr(event, f)!r:.70}" for f in fields if f not in ("fields",))
    return f"{name}({values})"


def _kinds(data: bytes) -> str:
    """The message type letters in a run of whole messages (for verbose traces)."""
    out, pos = [], 0
    while pos + 5 <= len(data):
        code = data[pos : pos + 1]
        length = int.from_bytes(data[pos + 1 : pos + 5], "big")
        if code == b"\0":  # an untyped startup packet
            length = int.from_bytes(data[pos : pos + 4], "big") - 1
            code = b"startup"
        if code == b"Q":
            sql = data[pos + 5 : pos + 1 + length - 1].decode("utf-8", "replace")
            out.append(f"Q({sql[:60]!r})")
        else:
            out.append(code.decode("latin-1"))
        pos += 1 + length
    return f"{len(data)} bytes [{' '.join(out)}]"


class SimFailure(AssertionError):
    """An invariant broke; the message says which and the world adds the trace."""


@dataclass
class NetProfile:
    """How the simulated network behaves (seconds)."""

    min_delay: float = 0.0002
    max_delay: float = 0.002
    spike_chance: float = 0.02  # sometimes a packet is late ...
    spike_delay: float = 0.05  # ... by up to this much
    split_chance: float = 0.3  # a delivery carries only part of what is buffered
    connect_delay: float = 0.002


class Scheduler:
    """A discrete-event clock: callbacks run in (time, insertion) order."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.events = 0

    def at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (max(when, self.now), self._seq, fn, args))

    def after(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        self.at(self.now + delay, fn, *args)

    def run(self, until: float, stop: Callable[[], bool] = lambda: False) -> None:
        heap = self._heap
        while heap and heap[0][0] <= until and not stop():
            when, _, fn, args = heapq.heappop(heap)
            self.now = when
            self.events += 1
            fn(*args)

    @property
    def idle(self) -> bool:
        return not self._heap


class Pipe:
    """One direction of a TCP connection: ordered bytes, random delays and pieces."""

    def __init__(self, world: World, sink: Callable[[bytes], None], name: str) -> None:
        self.world = world
        self.sink = sink
        self.name = name
        self.buf = bytearray()
        self.eof = False  # the writer closed; EOF follows the buffered bytes
        self.dead = False  # the reader is gone: drop everything
        self._scheduled = False

    def write(self, data: bytes) -> None:
        if self.dead or self.eof or not data:
            return
        self.buf += data
        self._schedule()

    def close(self) -> None:
        if not self.dead and not self.eof:
            self.eof = True
            self._schedule()

    def kill(self) -> None:
        self.dead = True
        self.buf.clear()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.world.sched.after(self.world.delay(), self._deliver)

    def _deliver(self) -> None:
        self._scheduled = False
        if self.dead:
            return
        rng = self.world.rng
        if self.buf:
            n = len(self.buf)
            if n > 1 and rng.random() < self.world.net.split_chance:
                n = rng.randint(1, n - 1)
            chunk = bytes(self.buf[:n])
            del self.buf[:n]
            if self.buf or self.eof:
                self._schedule()
            self.sink(chunk)
        elif self.eof:
            self.dead = True
            self.sink(b"")


@dataclass
class ServerLink:
    """One engine-side server connection and the fake backend behind it."""

    sid: int
    host: str
    port: int
    db: Database | None = None
    server: FakeServer | None = None
    to_server: Pipe | None = None
    to_engine: Pipe | None = None
    engine_closed: bool = False  # the engine said CloseServer (or was told it closed)
    close_requested: bool = False
    pool_key: tuple[str, int, str, str] | None = None  # counted against a pool's size


@dataclass
class ClientLink:
    cid: int
    client: SimClient | object
    to_engine: Pipe
    to_client: Pipe
    engine_closed: bool = False


@dataclass
class World:
    """The engine, its clients, its servers and the network between them."""

    seed: int
    config: Config
    clusters: dict[tuple[str, int], Database]
    net: NetProfile = field(default_factory=NetProfile)
    trace_size: int = 600
    engine_factory: Callable[..., Any] = Engine
    check_pools: bool = True
    verbose: bool = False  # trace every protocol message (for replaying a failure)
    stop_on_failure: bool = True  # stop the run at the first failure the world sees

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.sched = Scheduler()
        self.engine = self.engine_factory(self.config, seed=self.seed)
        self.trace: deque[str] = deque(maxlen=self.trace_size)
        self.failures: list[str] = []
        self.clients: dict[int, ClientLink] = {}
        self.servers: dict[int, ServerLink] = {}
        self._links_by_server: dict[int, ServerLink] = {}
        self._next_cid = 0
        self._timer_gen = 0
        self.exited: int | None = None
        self.exited_at: float | None = None
        self.shutdown_requested: float | None = None
        self.stats: Counter[str] = Counter()
        self.open_per_pool: Counter[tuple[str, int, str, str]] = Counter()
        self.max_open_per_pool: Counter[tuple[str, int, str, str]] = Counter()
        self.pool_limits = self._pool_limits()
        for db in self.clusters.values():
            db.on_wake = self._server_woken
            if self.verbose:
                db.on_message = self._trace_server_message

    # --- helpers -----------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.sched.now

    def delay(self) -> float:
        net, rng = self.net, self.rng
        d = rng.uniform(net.min_delay, net.max_delay)
        if rng.random() < net.spike_chance:
            d += rng.uniform(0, net.spike_delay)
        return d

    def log(self, text: str) -> None:
        self.trace.append(f"{self.now:10.6f} {text}")

    def fail(self, message: str) -> None:
        self.log(f"FAILURE {message}")
        self.failures.append(f"t={self.now:.6f} {message}")

    def _pool_limits(self) -> Counter[tuple[str, int, str, str]]:
        limits: Counter[tuple[str, int, str, str]] = Counter()
        for pool in self.config.pools.values():
            for user in pool.users.values():
                for shard in pool.shards:
                    for addr in shard.servers:
                        key = (addr.host, addr.port, user.backend_username, shard.database)
                        limits[key] += user.pool_size
        # The engine's probes (see pgsansio.engine._health): one more connection per
        # address, logged in as the first user of the first pool listing it.
        pools = list(self.config.pools.values())
        probing = self.config.general.healthcheck_interval or any(
            a.role == "auto" or p.replica_max_lag_ms or p.replica_max_lag_bytes
            for p in pools
            for s in p.shards
            for a in s.servers
        )
        if probing and pools:
            seen: set[tuple[str, int]] = set()
            for pool in pools:
                for user in pool.users.values():
                    if user.backend_password is None:
                        continue
                    for shard in pool.shards:
                        for addr in shard.servers:
                            if (addr.host, addr.port) not in seen:
                                seen.add((addr.host, addr.port))
                                limits[
                                    addr.host, addr.port, user.backend_username, shard.database
                                ] += 1
        return limits

    # --- calling the engine -----------------------------------------------------------

    def call(self, what: str, fn: Callable[..., list[Any]], *args: Any) -> None:
        """Call an engine input and carry out its effects; an exception is a failure."""
        try:
            effects = fn(*args, self.now)
        except Exception as exc:
            self.log(f"engine.{what}{args!r:.80} raised {exc!r}")
            self.fail(
                f"engine.{what} raised {type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            )
            raise SimFailure(self.failures[-1]) from exc
        self.apply(effects)

    def apply(self, effects: list[Any]) -> None:
        for effect in effects:
            kind = type(effect)
            if kind is SendClient:
                link = self.clients.get(effect.cid)
                if link is None:
                    self.fail(f"SendClient to unknown client {effect.cid}")
                elif link.engine_closed:
                    self.fail(f"SendClient to client {effect.cid} after CloseClient")
                else:
                    link.to_client.write(effect.data)
            elif kind is SendServer:
                self._send_server(effect.sid, effect.data)
            elif kind is OpenServer:
                self._open_server(effect)
            elif kind is CloseClient:
                self._close_client(effect.cid)
            elif kind is CloseServer:
                self._close_server(effect.sid)
            elif kind is Wakeup:
                self._timer_gen += 1
                self.sched.at(effect.at, self._engine_tick, self._timer_gen)
            elif kind is Log:
                self.log(f"engine log {logging.getLevelName(effect.level)}: {effect.message}")
                self.stats[f"log_{logging.getLevelName(effect.level)}"] += 1
            elif kind is Exit:
                self.log(f"engine Exit({effect.code})")
                if self.exited is not None:
                    self.fail("Exit twice")
                self.exited, self.exited_at = effect.code, self.now
            else:
                self.fail(f"unknown effect {effect!r}")

    def _engine_tick(self, gen: int) -> None:
        if gen == self._timer_gen:
            self.call("tick", self.engine.tick)

    # --- clients -----------------------------------------------------------------------

    def connect_client(self, client: SimClient, sink: Callable[[bytes], None]) -> int:
        """Open a client connection to the engine; ``sink`` gets what the engine sends."""
        self._next_cid += 1
        cid = self._next_cid
        if self.exited is not None:
            # The frontend stopped listening: the connection is refused.
            self.log(f"client {cid} ({getattr(client, 'name', '?')}) refused: pooler exited")
            self.sched.after(self.delay(), sink, b"")
            return cid
        link = ClientLink(
            cid,
            client,
            Pipe(self, lambda data: self._client_to_engine(cid, data), f"c{cid}>e"),
            Pipe(self, sink, f"e>c{cid}"),
        )
        self.clients[cid] = link
        self.log(f"client {cid} ({client.name}) connects")
        self.stats["client_connections"] += 1
        self.call("client_connected", self.engine.client_connected, cid, f"10.0.0.1:{cid}")
        return cid

    def client_send(self, cid: int, data: bytes) -> None:
        link = self.clients.get(cid)
        if link is not None:
            link.to_engine.write(data)

    def client_close(self, cid: int) -> None:
        """The client closes its socket: EOF reaches the engine after pending bytes."""
        link = self.clients.get(cid)
        if link is None:
            return
        link.to_engine.close()
        link.to_client.kill()

    def _client_to_engine(self, cid: int, data: bytes) -> None:
        link = self.clients[cid]
        if link.engine_closed:
            return
        if data:
            self.call("client_data", self.engine.client_data, cid, data)
        else:
            self.log(f"client {cid} EOF -> engine")
            link.engine_closed = True
            self.call("client_closed", self.engine.client_closed, cid)

    def _close_client(self, cid: int) -> None:
        link = self.clients.get(cid)
        if link is None:
            self.fail(f"CloseClient of unknown client {cid}")
            return
        self.log(f"engine closes client {cid}")
        link.engine_closed = True
        link.to_client.close()
        link.to_engine.kill()

    # --- servers ------------------------------------------------------------------------

    def _open_server(self, effect: OpenServer) -> None:
        if effect.sid in self.servers:
            self.fail(f"OpenServer reuses sid {effect.sid}")
            return
        link = ServerLink(effect.sid, effect.host, effect.port)
        self.servers[effect.sid] = link
        self.stats["server_opens"] += 1
        self.log(f"engine opens server {effect.sid} to {effect.host}:{effect.port}")
        self.sched.after(self.net.connect_delay * (0.5 + self.rng.random()), self._connected, link)

    def _connected(self, link: ServerLink) -> None:
        if link.engine_closed:
            return  # the engine gave up on the connect: the frontend drops it
        db = self.clusters.get((link.host, link.port))
        if db is None or not db.accepting:
            self.log(f"server {link.sid}: connection refused")
            link.engine_closed = True
            self.call("server_failed", self.engine.server_failed, link.sid, "connection refused")
            return
        server = db.connect(self.now)
        link.db, link.server = db, server
        self._links_by_server[id(server)] = link
        link.to_server = Pipe(self, lambda data: self._to_fake(link, data), f"e>s{link.sid}")
        link.to_engine = Pipe(self, lambda data: self._to_engine(link, data), f"s{link.sid}>e")
        self.log(f"server {link.sid} connected")
        self.call("server_connected", self.engine.server_connected, link.sid)

    def _send_server(self, sid: int, data: bytes) -> None:
        link = self.servers.get(sid)
        if link is None:
            self.fail(f"SendServer to unknown server {sid}")
        elif link.engine_closed:
            self.fail(f"SendServer to server {sid} after it was closed")
        elif link.to_server is None:
            self.fail(f"SendServer to server {sid} before server_connected")
        else:
            if self.verbose:
                self.log(f"engine -> s{sid}: {_kinds(data)}")
            link.to_server.write(data)

    def _close_server(self, sid: int) -> None:
        link = self.servers.get(sid)
        if link is None:
            self.fail(f"CloseServer of unknown server {sid}")
            return
        if link.close_requested:
            self.fail(f"CloseServer of server {sid} twice")
        link.close_requested = True
        self.log(f"engine closes server {sid}")
        self._engine_lost(link)
        if link.to_server is not None:
            link.to_server.close()
        if link.to_engine is not None:
            link.to_engine.kill()

    def _engine_lost(self, link: ServerLink) -> None:
        link.engine_closed = True
        if link.pool_key is not None:
            self.open_per_pool[link.pool_key] -= 1
            link.pool_key = None

    def _to_fake(self, link: ServerLink, data: bytes) -> None:
        server = link.server
        assert server is not None
        out = server.receive(data, self.now)
        if link.pool_key is None and server.user and not link.engine_closed:
            self._count_pool_connection(link, server)
        self._after_fake(link, out)

    def _count_pool_connection(self, link: ServerLink, server: FakeServer) -> None:
        key = (link.host, link.port, server.user, server.database)
        link.pool_key = key
        self.open_per_pool[key] += 1
        count = self.open_per_pool[key]
        self.max_open_per_pool[key] = max(self.max_open_per_pool[key], count)
        limit = self.pool_limits.get(key, 0)
        if count > limit and self.check_pools:
            self.fail(f"pool {key} has {count} server connections open, pool_size is {limit}")

    def _after_fake(self, link: ServerLink, out: bytes) -> None:
        server = link.server
        assert server is not None and link.to_engine is not None
        if out:
            link.to_engine.write(out)
        if server.closed:
            link.to_engine.close()
        elif server.deadline is not None:
            self.sched.at(server.deadline, self._server_tick, link)

    def _server_tick(self, link: ServerLink) -> None:
        server = link.server
        assert server is not None
        if server.closed or server.deadline is None or server.deadline > self.now:
            return
        self._after_fake(link, server.tick(self.now))

    def _trace_server_message(self, server: FakeServer, event: Any, outgoing: bool) -> None:
        link = self._links_by_server.get(id(server))
        sid = link.sid if link is not None else "?"
        arrow = "->" if outgoing else "<-"
        self.log(f"  s{sid}/pid{server.pid} {arrow} {brief(event)}")

    def _server_woken(self, server: FakeServer) -> None:
        link = self._links_by_server.get(id(server))
        if link is not None:
            self.sched.after(0.0, self._server_tick, link)

    def kill_server(self, link: ServerLink, *, fatal: bool) -> None:
        """A fault: the backend dies (FATAL 57P01 first, or without a word)."""
        server = link.server
        if server is None or server.closed:
            return
        self.log(
            f"FAULT: server {link.sid} (pid {server.pid}) dies {'FATAL' if fatal else 'silently'}"
        )
        self.stats["server_kills"] += 1
        if fatal:
            self._after_fake(link, server.terminate())
        else:
            server.crash()
            self._after_fake(link, b"")

    def _to_engine(self, link: ServerLink, data: bytes) -> None:
        if link.engine_closed:
            return
        if data:
            self.call("server_data", self.engine.server_data, link.sid, data)
        else:
            self.log(f"server {link.sid} EOF -> engine")
            self._engine_lost(link)
            self.call("server_closed", self.engine.server_closed, link.sid)

    # --- running -------------------------------------------------------------------------

    def start(self) -> None:
        self.call("start", self.engine.start)

    def run(self, until: float) -> None:
        if self.stop_on_failure:
            self.sched.run(until, stop=lambda: bool(self.failures))
        else:
            self.sched.run(until)

    def violations(self) -> list[str]:
        found = list(self.failures)
        for db in self.clusters.values():
            found.extend(db.violations)
        return found

    def report(self, tail: int = 80) -> str:
        lines = [f"SIM_SEED={self.seed}  t={self.now:.6f}  events={self.sched.events}"]
        lines += [f"stats: {dict(self.stats)}"]
        lines += ["--- trace tail ---", *list(self.trace)[-tail:]]
        return "\n".join(lines)
