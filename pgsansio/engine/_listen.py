"""LISTEN/NOTIFY in transaction mode without pinning: one listener per (pool, user).

The ``Listen`` part of the engine (the Context, Pools and Health only). A client in
transaction mode that runs ``LISTEN`` would need its server for as long as it listens
(PgBouncer and PgCat lose its notifications; pinning, :mod:`._pinning`, keeps a server
per listening client). With ``listen_fanout`` (a pool key, on by default) we do what
PgDog does instead:

- One **listener connection** per (pool, user), to the primary of the first shard (a
  NOTIFY runs on the primary; a standby cannot run one; with ``role = "auto"`` the one
  the probes found, and none while no primary is known), logged in as that user, opened
  when the first client listens. It follows the configuration: a reload that changes
  the pool (its addresses, database, credentials) moves it to the new primary at once,
  and a lost listener connects to whichever server is the primary then. It LISTENs on
  the union of the channels its clients listen on; ``UNLISTEN name``, ``UNLISTEN *``
  and clients leaving shrink the union (the listener sends the matching ``UNLISTEN``).
  It is not part of the pool and does not count against ``pool_size``.
- A lone simple-query ``LISTEN x`` / ``UNLISTEN x|*`` from a client with no server is
  answered here, a ``LISTEN`` only once the listener has answered its own ``LISTEN x``
  (PostgreSQL's promise: what is committed after LISTEN returned is delivered); the
  client's later requests wait behind it, and after ``connect_timeout`` it fails with
  08006. Any other form (extended protocol, inside a transaction, among other
  statements) runs on the client's server as usual and is registered as it is sent
  (it may return a moment before the listener listens); that server is reset with
  ``DISCARD ALL`` before the next client gets it, and notifications it receives are
  dropped, as the listener delivers them.
- Each **NotificationResponse** the listener receives goes to every client listening
  on its channel, in the order received: at once when the client is idle (no request
  outstanding, not inside a transaction), else right after its next ReadyForQuery
  that leaves it idle -- when PostgreSQL itself would deliver it. At most
  :data:`MAX_QUEUED` wait per client; beyond that the oldest are dropped, and the log
  says so.
- The **listener is lost** (killed, the server restarted): it is opened again, after
  :data:`RECONNECT_DELAY` seconds, and LISTENs again on every channel; the log says
  that notifications sent meanwhile may have been missed (PostgreSQL keeps none for a
  session that was not listening).
- ``NOTIFY`` and ``pg_notify()`` go through the normal path (they are writes).

Departures from PostgreSQL: a notification sent by a client's own transaction reaches
it after that transaction's ReadyForQuery rather than just before it; the
``process_id`` in each NotificationResponse is the sending backend's, as PostgreSQL
gives it (not a pooler id).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from pgsansio.protocol import NEED_DATA as _NEED_DATA
from pgsansio.protocol import PAUSED as _PAUSED
from pgsansio.protocol import (
    CommandComplete,
    ErrorResponse,
    Event,
    NotificationResponse,
    ProtocolError,
    Query,
    ReadyForQuery,
    Span,
)

from ._effects import OpenServer
from ._objects import P_LISTEN, Client, Pool, PoolGroup, ServerConn
from ._states import C_CLOSED, C_READY, S_CLOSED, ServerInput, ServerState, server_to

if TYPE_CHECKING:
    from ._context import Context
    from ._health import Health
    from ._lending import Lending
    from ._pooling import Pools

__all__ = ["MAX_QUEUED", "RECONNECT_DELAY", "Listen"]

MAX_QUEUED = 10_000  # notifications waiting for one busy client
RECONNECT_DELAY = 0.5  # seconds before a lost listener connects again


_LISTEN_ONLY = re.compile(
    r'^\s*(UN)?LISTEN\s+("(?:[^"]|"")+"|[A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*|\*)\s*;?\s*$',
    re.IGNORECASE,
)


def _unquote(raw: str) -> str:
    """A channel name as PostgreSQL folds it."""
    if raw.startswith('"'):
        return raw[1:-1].replace('""', '"')
    return raw.lower()


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Listener:
    """The listener connection of one (pool, user) and the channels it serves."""

    __slots__ = (
        "busy",
        "channels",
        "confirmed",
        "conn",
        "delivered",
        "failed",
        "key",
        "lost",
        "pool",
        "server_has",
        "waiting",
    )

    def __init__(self, key: tuple[str, str], pool: Pool) -> None:
        self.key = key  # (pool name, user): where a reload finds its pool again
        self.pool = pool
        self.conn: ServerConn | None = None
        self.channels: dict[str, dict[Client, None]] = {}  # channel -> clients, in order
        self.server_has: set[str] = set()  # what the connection LISTENs on (as sent)
        self.busy = False  # a LISTEN/UNLISTEN query is outstanding
        self.lost = False  # it was lost: say so once it is back
        self.delivered = 0  # notifications handed to clients
        self.confirmed: set[str] = set()  # what the server has answered LISTEN for
        self.failed = False  # the last LISTEN/UNLISTEN query failed
        self.waiting: list[tuple[Client, str]] = []  # LISTENs answered once confirmed


class Listen:
    """Owns the listener connections and who listens on what; see the module docstring."""

    def __init__(self, ctx: Context, *, pools: Pools, health: Health, lending: Lending) -> None:
        self.ctx = ctx
        self.pools = pools
        self.health = health
        self.lending = lending
        self._listeners: dict[tuple[str, str], Listener] = {}

    def fans_out(self, c: Client) -> bool:
        """Whether ``c``'s LISTEN is served by a listener (else it pins)."""
        group = c.group
        return (
            group is not None
            and c.user is not None
            and c.user.pool_mode == "transaction"
            and group.cfg.listen_fanout
        )

    # --- clients --------------------------------------------------------------------

    def listen(self, c: Client, channel: str) -> None:
        listener = self._listener(c)
        clients = listener.channels.setdefault(channel, {})
        clients[c] = None
        if c.listens is None:
            c.listens = set()
        c.listens.add(channel)
        self._sync(listener)

    def unlisten(self, c: Client, channel: str | None) -> None:
        """``channel`` None: every channel (``UNLISTEN *``)."""
        if not c.listens or c.group is None:
            return
        listener = self._listeners.get((c.group.name, c.group.user.username))
        names = list(c.listens) if channel is None else [channel]
        for name in names:
            c.listens.discard(name)
            if listener is not None:
                clients = listener.channels.get(name)
                if clients is not None:
                    clients.pop(c, None)
                    if not clients:
                        del listener.channels[name]
        if listener is not None:
            self._sync(listener)

    def client_query(self, c: Client, span: Span) -> bool:
        """A lone simple-query ``LISTEN x`` / ``UNLISTEN x|*`` from a client with no
        server: answered here, a LISTEN only once the listener listens on ``x`` (so a
        notification committed after the client's LISTEN returned always reaches it,
        as PostgreSQL promises). True if so."""
        events = span.events
        if (
            len(events) != 1
            or type(events[0]) is not Query
            or c.pending
            or c.waiting_since is not None
            or c.held_begin is not None
            or not self.fans_out(c)
        ):
            return False
        query = events[0]
        assert isinstance(query, Query)
        m = _LISTEN_ONLY.match(query.sql)
        if m is None:
            return False
        raw = m.group(2)
        if m.group(1) is not None:
            self.unlisten(c, None if raw == "*" else _unquote(raw))
            self._answer(c, CommandComplete("UNLISTEN"))
            return True
        if raw == "*":
            return False  # LISTEN * is a syntax error: the server says so
        channel = _unquote(raw)
        self.listen(c, channel)
        listener = self._listener(c)
        if channel in listener.confirmed:
            self._answer(c, CommandComplete("LISTEN"))
            return True
        # Wait for the listener (its new requests queue behind, as for a server).
        c.waiting_since = self.ctx.now
        listener.waiting.append((c, channel))
        assert c.user is not None
        gen = c.wait_gen = c.wait_gen + 1
        self.ctx.at(
            self.ctx.now + c.user.connect_timeout / 1000,
            lambda: self._wait_timeout(listener, c, gen),
        )
        return True

    def _answer(self, c: Client, event: Event) -> None:
        self.ctx.send_client(c, event)
        self.ctx.send_client(c, ReadyForQuery("I"))

    def _resume(self, c: Client) -> None:
        """``c`` waited for the listener: its later requests go on."""
        c.waiting_since = None
        if c.pending and c.state is C_READY:
            self.lending.checkout(c)
        elif c.notes:
            self.deliver(c)

    def _wait_timeout(self, listener: Listener, c: Client, gen: int) -> None:
        if c.wait_gen != gen or c.state is C_CLOSED:
            return
        waits = [(x, ch) for x, ch in listener.waiting if x is c]
        if not waits:
            return
        listener.waiting = [(x, ch) for x, ch in listener.waiting if x is not c]
        for _, channel in waits:
            self.unlisten(c, channel)
        self.ctx.log(
            logging.WARNING,
            f"client {c.cid}: LISTEN not confirmed by the pool's listener connection "
            "within connect_timeout",
        )
        self._answer(
            c,
            ErrorResponse.build(
                "08006",
                "LISTEN failed: the pooler's listener connection to the primary is not "
                "available (see the pooler's log); retry",
            ),
        )
        self._resume(c)

    def client_gone(self, c: Client) -> None:
        self.unlisten(c, None)
        c.notes = None

    def deliver(self, c: Client) -> None:
        """Send ``c`` the notifications waiting for it, if it is idle now."""
        notes = c.notes
        if notes and self._idle(c):
            c.notes = None
            for note in notes:
                self._send(c, note)

    @staticmethod
    def _idle(c: Client) -> bool:
        if c.state is not C_READY or c.pending or c.waiting_since is not None:
            return False
        s = c.server
        if s is None:
            return c.held_begin is None
        return not s.queue and s.conn.idle and s.conn.transaction_status == "I"

    def _send(self, c: Client, note: NotificationResponse) -> None:
        try:
            self.ctx.send_client(c, note)
        except ProtocolError:
            return
        if c.group is not None:
            listener = self._listeners.get((c.group.name, c.group.user.username))
            if listener is not None:
                listener.delivered += 1

    def counts(self) -> dict[tuple[str, str], tuple[int, int]]:
        """Per (pool, user): (1 if the listener is up, notifications delivered)."""
        down = (ServerState.CONNECTING, ServerState.LOGIN, ServerState.CLOSED)
        return {
            key: (int(x.conn is not None and x.conn.state not in down), x.delivered)
            for key, x in self._listeners.items()
        }

    # --- the listener connection -------------------------------------------------------

    def _listener(self, c: Client) -> Listener:
        group = c.group
        assert group is not None
        key = (group.name, group.user.username)
        listener = self._listeners.get(key)
        if listener is None:
            pool = self._primary(group) or group.pools[0][0]  # _connect looks again
            listener = self._listeners[key] = Listener(key, pool)
        return listener

    def _primary(self, group: PoolGroup) -> Pool | None:
        """The pool of the first shard's primary (a NOTIFY can only run there): as
        configured, or as probed for ``role = "auto"`` (None while no probe has found
        one). A shard with no primary at all (replicas only) listens on its first."""
        shard = group.pools[0]
        for pool in shard:
            if self.health.role(pool.address) == "primary":
                return pool
        if any(pool.address.role == "auto" for pool in shard):
            return None
        return shard[0]

    def _target(self, listener: Listener) -> Pool | None:
        """Where the listener should be connected now (None: nowhere yet)."""
        group = self.pools.find_group(*listener.key)
        return None if group is None else self._primary(group)

    def follow(self) -> None:
        """After a reload (or a change of primary): a listener whose pool changed or is
        no longer the primary's moves to the one that is, LISTENing on every channel
        again."""
        for listener in self._listeners.values():
            target = self._target(listener)
            s = listener.conn
            if target is None or target is listener.pool or s is None:
                continue
            self.ctx.log(
                logging.WARNING,
                f"listener for {self.ctx.where(s)} moves to {target.address.host}:"
                f"{target.address.port} (the configuration or the primary changed)",
            )
            self.pools.close_server(s)
            self.lost(s)
            self._sync(listener)  # at once: nothing is wrong with the new server

    def _sync(self, listener: Listener) -> None:
        """Make the connection LISTEN on exactly the channels wanted (one query at a time)."""
        if self.ctx.life.shutting_down:
            return
        s = listener.conn
        if s is None or s.state is S_CLOSED:
            if listener.channels and s is None:
                self._connect(listener)
            return
        if listener.busy or s.state is not ServerState.IDLE:
            return
        want = set(listener.channels)
        adds = sorted(want - listener.server_has)
        drops = sorted(listener.server_has - want)
        if not adds and not drops:
            return
        sql = ";".join(
            [f"LISTEN {_ident(n)}" for n in adds] + [f"UNLISTEN {_ident(n)}" for n in drops]
        )
        listener.server_has = want
        listener.busy = True
        server_to(s, ServerInput.QUERIED)
        self.ctx.send_server(s, s.conn.send(Query(sql)))

    def _connect(self, listener: Listener) -> None:
        pool = self._target(listener)
        if pool is None:
            # No primary known yet (probes, or the pool was removed): try again soon.
            self.ctx.at(self.ctx.now + RECONNECT_DELAY, lambda: self._sync(listener))
            return
        listener.pool = pool
        self.ctx.next_sid += 1
        s = ServerConn(self.ctx.next_sid, pool, pool.address, self.ctx.now, P_LISTEN)
        listener.conn = s
        listener.server_has = set()
        listener.confirmed = set()
        listener.busy = False
        self.ctx.servers[s.sid] = s
        self.ctx.out.append(OpenServer(s.sid, s.address.host, s.address.port))

    def _of(self, s: ServerConn) -> Listener | None:
        for listener in self._listeners.values():
            if listener.conn is s:
                return listener
        return None

    def ready(self, s: ServerConn) -> None:
        """The listener connection has logged in."""
        s.login = None
        server_to(s, ServerInput.IDLED)
        listener = self._of(s)
        if listener is None:
            self.pools.close_server(s)
            return
        if listener.lost:
            listener.lost = False
            self.ctx.log(
                logging.WARNING,
                f"listener for {self.ctx.where(s)} is back and LISTENs again on "
                f"{len(listener.channels)} channel(s); notifications sent while it was "
                "away may have been missed",
            )
        self._sync(listener)

    def read(self, s: ServerConn) -> None:
        listener = self._of(s)
        while s.state is not S_CLOSED:
            event = s.conn.next_event()
            if event is _NEED_DATA or event is _PAUSED:
                return
            if listener is None:
                continue
            if isinstance(event, NotificationResponse):
                self._fan_out(listener, event)
            elif isinstance(event, ErrorResponse):
                self.ctx.log(
                    logging.WARNING,
                    f"listener {self.ctx.where(s)}: {event.message}; trying again in "
                    f"{RECONNECT_DELAY:g} s",
                )
                listener.server_has = set()  # not sure what ran: send everything again
                listener.confirmed = set()
                listener.failed = True
            elif isinstance(event, ReadyForQuery):
                server_to(s, ServerInput.IDLED)
                listener.busy = False
                if listener.failed:
                    # Not at once: a LISTEN that fails would fail again, in a loop.
                    listener.failed = False
                    listener.busy = True
                    self.ctx.at(self.ctx.now + RECONNECT_DELAY, lambda: self._retry(listener))
                    continue
                listener.confirmed = set(listener.server_has)
                self._answer_waiting(listener)
                self._sync(listener)

    def _retry(self, listener: Listener) -> None:
        listener.busy = False
        self._sync(listener)

    def _answer_waiting(self, listener: Listener) -> None:
        """The LISTENs that were waiting for the listener to listen: answered now."""
        if not listener.waiting:
            return
        still: list[tuple[Client, str]] = []
        ready: list[Client] = []
        for c, channel in listener.waiting:
            if c.state is C_CLOSED:
                continue
            if channel in listener.confirmed:
                self._answer(c, CommandComplete("LISTEN"))
                ready.append(c)
            else:
                still.append((c, channel))
        listener.waiting = still
        for c in ready:
            if not any(x is c for x, _ in still):
                self._resume(c)

    def _fan_out(self, listener: Listener, note: NotificationResponse) -> None:
        for c in list(listener.channels.get(note.channel, ())):
            if c.state is C_CLOSED:
                continue
            if c.notes is None and self._idle(c):
                self._send(c, note)
                continue
            if c.notes is None:
                c.notes = []
            c.notes.append(note)
            if len(c.notes) > MAX_QUEUED:
                del c.notes[0]
                if len(c.notes) == MAX_QUEUED:
                    self.ctx.log(
                        logging.WARNING,
                        f"client {c.cid}: more than {MAX_QUEUED} notifications wait for it "
                        "to become idle; the oldest are dropped",
                    )

    def lost(self, s: ServerConn) -> None:
        """The listener connection failed or closed: open it again shortly."""
        listener = self._of(s)
        if listener is None:
            return
        listener.conn = None
        listener.server_has = set()
        listener.confirmed = set()
        listener.busy = False
        if not listener.channels or self.ctx.life.shutting_down:
            return
        listener.lost = True
        self.ctx.log(
            logging.WARNING,
            f"listener connection to {s.address.host}:{s.address.port} lost; reconnecting "
            f"in {RECONNECT_DELAY:g} s: notifications sent meanwhile may be missed",
        )
        self.ctx.at(self.ctx.now + RECONNECT_DELAY, lambda: self._sync(listener))
