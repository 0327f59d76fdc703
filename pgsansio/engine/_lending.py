"""Lending servers to clients: checkout, waiting, the check before use, bans that move
the waiting clients, and PAUSE.

The ``Lending`` part of the engine: between :class:`~._routing.Routes` (which pool a
client should use) and :class:`~._pooling.Pools` (the connections of each pool).
PgCat's semantics:

- **Checkout.** An idle connection of the chosen pool is handed out (FIFO with
  ``server_round_robin``, else LIFO); one past ``server_lifetime`` is closed instead.
  With none idle the client queues FIFO on the pool, which opens a connection if it has
  room, and gives up after ``connect_timeout`` with 53300 (one sweep timer for all the
  waiting clients, not a timer each).
- **Health check before use** (PgCat): a connection idle longer than
  ``healthcheck_delay`` gets ``;`` first; no answer within ``healthcheck_timeout``, or
  an error, bans its address and the client is served from another one. The client
  waits at the head of the queue meanwhile, so a good answer simply hands it over.
- **Bans that move clients**: when an address is banned (:meth:`Lending.ban`; the
  bookkeeping is :class:`~._health.Health`'s), the clients queued on it are routed
  again, to another address when there is one.
- **A lost server**: a connection that fails while being set up, under a client, or
  in its check bans its address when the shard has another one, and the clients that
  waited for it try another address at once.
- **PAUSE** parks the clients that would check out (and the ones queued) until RESUME;
  clients waiting for a primary to be found are routed again after each probe answer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pgsansio.protocol import (
    Bind,
    Close,
    Describe,
    ErrorResponse,
    Event,
    Execute,
    FunctionCall,
    Parse,
    ProtocolError,
    Query,
    ReadyForQuery,
    Sync,
)

from ._errors import fatal
from ._health import BANNED, NOT_BANNED, Health, key_of
from ._objects import Client, Entry, Pool, PoolGroup, ServerConn
from ._pinning import pinned_in
from ._pooling import Pools
from ._routing import WAIT_FOR_PRIMARY, WAIT_FOR_REPLAY, Routes
from ._shards import Refusal
from ._states import C_CLOSED, S_CLOSED, S_LOGIN, ClientState, ServerInput, ServerState, server_to

__all__ = ["Lending"]

_EXTENDED = (Parse, Bind, Describe, Execute, Close)

if TYPE_CHECKING:
    from pgsansio.config.model import ServerAddress

    from ._context import Context
    from ._health import Health, Key
    from ._pooling import Pools
    from ._routing import Routes
    from ._shards import Shards


class Lending:
    """Owns the waiting clients; see the module docstring."""

    def __init__(
        self,
        ctx: Context,
        *,
        pools: Pools,
        health: Health,
        shards: Shards,
        router: Routes,
        fast_lane: bool = True,
    ) -> None:
        self.ctx = ctx
        self.fast_lane = fast_lane  # False: ready_server finds none (Engine(fast_lane=))
        self.pools = pools
        self.health = health
        self.shards = shards
        self.router = router
        # clients waiting for a server under connect_timeout (see _wait_until)
        self._waiting: dict[Client, None] = {}
        self._wait_sweep_at: float | None = None
        self._role_waiters: list[Client] = []  # waiting for a probe to find a primary
        self._held: list[Client] = []  # clients waiting because their database is paused
        self._health_checks: dict[int, Entry] = {}  # server id -> its ``;`` in flight

    def _route(self, c: Client, *, retry: bool = False) -> Pool | None:
        """Routes.route, and what its answer means for ``c``: None when ``c`` has been
        answered (no server can serve it) or waits for a probe to find a primary."""
        pool = self.router.route(c, retry=retry)
        if isinstance(pool, Pool):
            return pool
        if isinstance(pool, Refusal):
            self._no_server(c, pool.message, pool.sqlstate)
        elif pool == WAIT_FOR_PRIMARY:
            gen = self._wait_for_probe(c)
            assert c.user is not None
            self.ctx.at(
                self.ctx.now + c.user.connect_timeout / 1000, lambda: self._role_timeout(c, gen)
            )
        elif pool == WAIT_FOR_REPLAY:
            # Read-your-writes: each probe retries it (retry_role_waiters); at the
            # bound Routes sends it to the primary.
            gen = self._wait_for_probe(c)
            assert c.ryw_wait_until is not None
            self.ctx.at(c.ryw_wait_until, lambda: self._replay_timeout(c, gen))
        else:
            self._no_server(c, pool)
        return None

    def checkout(self, c: Client) -> None:
        if self.ctx.life.pausing and self.hold(c):
            return  # PAUSE: it waits for RESUME
        group = c.group
        assert group is not None
        if group.removed:
            # A reload changed or removed this pool: move to its new incarnation.
            new = self.pools.find_group(group.name, group.user.username)
            if new is None:
                self.ctx.drop_client(
                    c,
                    fatal(
                        "08P01",
                        f'the pool "{group.name}" for user "{group.user.username}" '
                        "was removed from the configuration",
                    ),
                )
                return
            if new.server_params is None and not new.login_waiters:
                # Not while clients wait in its login_waiters: they are welcomed when
                # the new pool's first server logs in, which only sets the parameters
                # (and welcomes them) if they are unset.
                new.server_params = group.server_params
            c.group = group = new
            c.user = new.user
        pool = self._route(c)
        if pool is None:
            return  # answered with an error, or waiting for a primary to be found
        c.pool = pool
        idle = pool.idle
        while idle:
            s = idle.popleft() if self.ctx.config.general.server_round_robin else idle.pop()
            if group.user.server_lifetime and self.pools.expired(s):
                self.pools.close_server(s)
                continue
            self.hand_out(c, s)
            return
        c.waiting_since = self.ctx.now
        c.wait_gen += 1
        pool.waiters.append(c)
        if not self.pools.grow(pool) and group.cfg.reserve_pool_size:
            self._reserve_at(pool)
        wait = self.ctx.config.general.query_wait_timeout or group.user.connect_timeout
        self._wait_until(c, self.ctx.now + wait / 1000)

    def _reserve_at(self, pool: Pool, *, again: bool = False) -> None:
        """Look at ``pool`` again when its first waiter may take a reserve connection
        (``again``: one more reserve_pool_timeout from now, after one was taken or
        while one is being opened, so at most one is opened per timeout)."""
        timeout = self.ctx.config.general.reserve_pool_timeout / 1000
        first = pool.waiters[0].waiting_since if pool.waiters else None
        if not timeout or first is None or (pool.reserve_at is not None and not again):
            return  # off, nobody waits, or already armed (one timer per pool)
        due = self.ctx.now + timeout if again else max(first + timeout, self.ctx.now)
        pool.reserve_at = due
        self.ctx.at(due, lambda: self._reserve(pool))

    def _reserve(self, pool: Pool) -> None:
        pool.reserve_at = None
        if not pool.waiters or pool.group.removed:
            return
        if self.ctx.life.pausing and pool.group.name in self.ctx.life.paused:
            return
        if not pool.opening:
            self.pools.grow(pool)
        self._reserve_at(pool, again=True)

    def _wait_until(self, c: Client, deadline: float) -> None:
        """``c`` now waits in ``c.pool.waiters`` until ``deadline`` (connect_timeout).

        Not a timer per wait: with more clients than servers nearly every transaction
        waits a little, and a timer each (a closure, a heap push, a no-op firing later
        and a new wake-up for the frontend each time the heap's head moved) cost more
        than the rest of the checkout. One sweep timer, armed at the earliest deadline,
        looks at the waiting clients instead; most have been served by then."""
        c.wait_deadline = deadline
        self._waiting[c] = None
        at = self._wait_sweep_at
        if at is None or deadline < at:
            self._wait_sweep_at = deadline
            self.ctx.at(deadline, self._wait_sweep)

    def _wait_sweep(self) -> None:
        """Time out the waiters whose connect_timeout has passed; re-arm for the rest."""
        at = self._wait_sweep_at
        if at is None or at > self.ctx.now:
            return  # superseded by an earlier sweep, which re-armed for later
        now = self.ctx.now
        first: float | None = None
        expired: list[Client] = []
        for c in list(self._waiting):
            deadline = c.wait_deadline
            pool = c.pool
            if (
                c.state is ClientState.CLOSED
                or c.waiting_since is None
                or deadline is None
                or pool is None
                or c not in pool.waiters
            ):
                del self._waiting[c]  # served, gone, held by PAUSE or waiting for a role
            elif deadline <= now:
                del self._waiting[c]
                expired.append(c)
            elif first is None or deadline < first:
                first = deadline
        self._wait_sweep_at = first
        if first is not None:
            self.ctx.at(first, self._wait_sweep)
        for c in expired:
            if (
                c.state is not ClientState.CLOSED
                and c.waiting_since is not None
                and c.pool is not None
            ):
                self._checkout_timeout(c)

    def _checkout_timeout(self, c: Client) -> None:
        assert c.pool is not None and c.user is not None
        pinned = pinned_in(c.pool)
        c.wait_deadline = None
        c.pool.waiters.remove(c)
        c.waiting_since = None
        pending, c.pending = c.pending, []
        if self.ctx.config.general.query_wait_timeout:
            # PgBouncer's rule and words: the client is let go.
            self.ctx.log(
                logging.WARNING,
                f'client {c.cid} ("{c.username}" to "{c.database}") waited more than '
                "query_wait_timeout for a server connection; closing it",
            )
            self.ctx.drop_client(c, fatal("08P01", "query_wait_timeout"))
            return
        self.ctx.log(
            logging.WARNING,
            f'client {c.cid} ("{c.username}" to "{c.database}") waited more than '
            f"connect_timeout ({c.user.connect_timeout} ms) for a server connection"
            + (f" ({pinned} of the pool's servers are pinned by clients)" if pinned else ""),
        )
        error = ErrorResponse.build(
            "53300",
            "no server connection became free within connect_timeout "
            f"({c.user.connect_timeout} ms); all {c.user.pool_size} are busy"
            + (
                f", {pinned} of them pinned to clients that hold session state (temporary "
                "tables, SQL PREPARE, advisory locks, LISTEN, WITH HOLD cursors, SET; see "
                "SHOW CLIENTS)"
                if pinned
                else ""
            ),
        )
        c.checkout_failures += 1
        limit = c.group.cfg.checkout_failure_limit if c.group is not None else None
        if limit and c.checkout_failures >= limit:
            # PgCat's checkout_failure_limit: a client that keeps failing is let go.
            self.ctx.drop_client(
                c,
                fatal(
                    "53300",
                    f"no server connection within connect_timeout {c.checkout_failures} "
                    f"times (checkout_failure_limit {limit}); disconnecting",
                ),
            )
            return
        self.fail_requests(c, pending, error)

    def fail_requests(
        self, c: Client, pending: list[tuple[bytes, list[Event], list[int]]], error: ErrorResponse
    ) -> None:
        """Answer requests no server will see with ``error``, as a server would.

        A client still sending a long message in pieces (see _buffers) cannot be
        answered before its end: it is let go with the error instead."""
        c.held_begin = None  # its transaction ends with them
        if c.conn.streaming:
            self.ctx.drop_client(c, fatal(error.sqlstate or "53300", error.message or ""))
            return
        failed = False
        try:
            for _, events, _ in pending:
                for e in events:
                    t = type(e)
                    if t is Query or t is FunctionCall:
                        self.ctx.send_client(c, error)
                        self.ctx.send_client(c, ReadyForQuery("I"))
                    elif t is Sync:
                        if not failed:
                            self.ctx.send_client(c, error)
                        self.ctx.send_client(c, ReadyForQuery("I"))
                        failed = False
                    elif not failed and t in _EXTENDED:
                        self.ctx.send_client(c, error)
                        failed = True
        except ProtocolError:
            self.ctx.drop_client(c, fatal(error.sqlstate or "08P01", error.message or ""))

    def hand_out(self, c: Client, s: ServerConn) -> None:
        """Give idle ``s`` to ``c``, after a ``;`` if it has been idle too long."""
        delay = self.ctx.config.general.healthcheck_delay / 1000
        if self.ctx.now - s.last_used <= delay:
            self.ctx.link(c, s)
            return
        pool = s.pool
        assert pool is not None and c.user is not None
        pool.waiters.appendleft(c)
        c.pool = pool
        if c.waiting_since is None:
            c.waiting_since = self.ctx.now
            c.wait_gen += 1
            self._wait_until(c, self.ctx.now + c.user.connect_timeout / 1000)
        server_to(s, ServerInput.QUERIED)
        self.pools.send_internal(s, ";", "healthcheck")
        entry = s.queue[-1]
        self._health_checks[s.sid] = entry
        timeout = self.ctx.config.general.healthcheck_timeout / 1000
        self.ctx.at(self.ctx.now + timeout, lambda: self.health_timeout(s, entry))

    def health_timeout(self, s: ServerConn, entry: Entry) -> None:
        if s.state is not S_CLOSED and entry in s.queue:
            timeout = self.ctx.config.general.healthcheck_timeout
            self._health_failed(s, f"failed health check (no answer within {timeout} ms)")

    def health_done(self, s: ServerConn, entry: Entry) -> bool:
        """Our ``;`` answered; True if it failed (and was dealt with)."""
        self._health_checks.pop(s.sid, None)
        if entry.error is None:
            return False
        message = entry.error.message if isinstance(entry.error, ErrorResponse) else "?"
        self._health_failed(s, f"failed health check ({message})")
        return True

    def _health_failed(self, s: ServerConn, reason: str) -> None:
        self._health_checks.pop(s.sid, None)
        pool = s.pool
        assert pool is not None
        self.ctx.log(logging.WARNING, f"server {self.ctx.where(s)}: {reason}; closing it")
        self.pools.close_server(s)
        if not self.ban(pool, None, reason):
            self.pools.refill(pool)  # the primary: its waiters wait for a new connection
        elif pool.waiters:  # banned but a single-address shard: nowhere else to go
            self.pools.refill(pool)

    def server_lost(self, s: ServerConn, was: ServerState, linked: bool) -> None:
        """A pool connection failed: ban its address if that is PgCat's rule, and
        send the clients that were waiting for it somewhere else when possible."""
        pool = s.pool
        assert pool is not None
        checking = self._health_checks.pop(s.sid, None) is not None
        if len(pool.group.pools[pool.shard]) < 2:
            return  # nowhere else to go: the pool's own fail-fast rules apply
        if checking:
            reason = "failed health check (the connection was lost)"
        elif was in (ServerState.CONNECTING, ServerState.LOGIN):
            reason = "failed checkout (could not connect or log in)"
        elif was is ServerState.ACTIVE and linked:
            reason = "the server connection was lost under a client"
        else:
            return
        self.ban(pool, None, reason)
        if checking or was in (ServerState.CONNECTING, S_LOGIN):
            # The waiters expected this connection: try another address now (the
            # primary is never banned, so its waiters are moved here, not by ban).
            for c in list(pool.waiters):
                pool.waiters.remove(c)
                self.reroute(c, pool)
            group = pool.group
            first_login = group.server_params is None and group.login_waiters
            if first_login and not any(p.opening for p in group.all_pools()):
                other = self.router.choose_pool(group.login_waiters[0])
                if other is not pool and not self.health.banned(other.address):
                    self.pools.open_server(other)

    def _route_waiters_away(self, key: Key) -> None:
        """Clients queued on a freshly banned address go to another one."""
        for group in self.pools.groups.values():
            for pool in group.all_pools():
                if (pool.address.host, pool.address.port) == key and pool.waiters:
                    for c in list(pool.waiters):
                        pool.waiters.remove(c)
                        self.reroute(c, pool)

    def ban(self, target: Pool | ServerAddress | Key, seconds: float | None, reason: str) -> bool:
        """Ban an address (see :meth:`Health.ban`) and move the clients waiting on it to
        another address; False for a primary, which is never banned. Also the admin
        console's ``BAN`` (reason ``"admin ban"``)."""
        key = key_of(target)
        done = self.health.ban(key, seconds, reason)
        if done == BANNED:
            self._route_waiters_away(key)
        return done != NOT_BANNED

    def retry_role_waiters(self) -> None:
        """A probe answered: clients waiting for a primary to be found try again."""
        waiters, self._role_waiters = self._role_waiters, []
        for c in waiters:
            if (
                c.state is not ClientState.CLOSED
                and c.waiting_since is not None
                and c.server is None
            ):
                c.waiting_since = None
                self.checkout(c)

    def park(self, c: Client) -> None:
        """PAUSE: ``c`` waits for RESUME (its connect_timeout no longer runs)."""
        self._held.append(c)

    def unpark(self) -> None:
        """RESUME: the parked clients whose database is no longer paused go on."""
        held, self._held = self._held, []
        for c in held:
            if c.state is ClientState.CLOSED or c.server is not None:
                continue
            if c.group is not None and c.group.name in self.ctx.life.paused:
                self._held.append(c)
                continue
            self.checkout(c)

    def hold(self, c: Client) -> bool:
        """Called by checkout: keep ``c`` waiting if its database is paused."""
        group = c.group
        if group is None or group.name not in self.ctx.life.paused:
            return False
        if c.waiting_since is None:
            c.waiting_since = self.ctx.now
        c.pool = None
        if len(self._held) > 64 and len(self._held) > 2 * len(self.ctx.clients):
            self._held = [x for x in self._held if x.state is not C_CLOSED]
        self._held.append(c)
        return True

    def reroute(self, c: Client, failed: Pool) -> None:
        """``c`` waited on ``failed``, which cannot serve it: try another address (the
        connect_timeout it waits under keeps running)."""
        if c.state is ClientState.CLOSED or c.server is not None:
            return
        tried = c.tried if c.tried is not None else set()
        tried.add(key_of(failed))
        c.tried = tried
        pool = self._route(c, retry=True)
        if pool is None:
            return
        c.pool = pool
        while pool.idle:
            s = pool.idle.pop()
            if self.pools.expired(s):
                self.pools.close_server(s)
                continue
            self.hand_out(c, s)
            return
        pool.waiters.append(c)
        if c.waiting_since is None:
            c.waiting_since = self.ctx.now
            c.wait_deadline = None  # as before: no connect_timeout for this wait
        assert c.user is not None
        if len(pool.servers) < c.user.pool_size:
            self.pools.grow(pool)

    def _no_server(self, c: Client, message: str, sqlstate: str = "57P03") -> None:
        """No server can take ``c``'s requests: answer them as a server would."""
        self.ctx.log(logging.WARNING, f"client {c.cid}: {message}")
        c.waiting_since = None
        c.pool = None
        pending, c.pending = c.pending, []
        self.fail_requests(c, pending, ErrorResponse.build(sqlstate, message))

    def _wait_for_probe(self, c: Client) -> int:
        """Park ``c`` until the next probe answers (retry_role_waiters); its wait_gen."""
        c.waiting_since = self.ctx.now
        c.pool = None
        self._role_waiters.append(c)
        gen = c.wait_gen = c.wait_gen + 1
        return gen

    def _replay_timeout(self, c: Client, gen: int) -> None:
        if c in self._role_waiters and c.wait_gen == gen:
            self._role_waiters.remove(c)
            if c.state is not C_CLOSED and c.server is None:
                c.waiting_since = None
                self.checkout(c)  # past its bound: the primary serves it

    def _role_timeout(self, c: Client, gen: int) -> None:
        if c in self._role_waiters and c.wait_gen == gen:
            self._role_waiters.remove(c)
            if c.state is C_CLOSED:
                return
            assert c.group is not None
            self._no_server(
                c,
                f'no primary server is available in pool "{c.group.name}" for writes'
                + self.router.why_no_primary(
                    c.group.pools[min(c.checkout_shard, len(c.group.pools) - 1)]
                ),
            )

    def ready_server(self, c: Client, group: PoolGroup) -> ServerConn | None:
        """The idle server checkout would give ``c`` at once and link without a word
        to it first (no health check, no SET to sync), or None."""
        if not self.fast_lane or self.ctx.life.pausing or group.removed:
            return None
        index = self.shards.fixed_shard(c)
        if index is None:
            return None  # the request decides (a comment, a random default): checkout
        shard = group.pools[index]
        if len(shard) != 1:
            return None
        pool = shard[0]
        idle = pool.idle
        if not idle or pool.waiters:
            return None
        general = self.ctx.config.general
        s = idle[0] if general.server_round_robin else idle[-1]
        key = c.sync_key
        if (
            key is None
            or s.sync_key != key
            or s.blocked
            or self.ctx.now - s.last_used > general.healthcheck_delay / 1000
            or (group.user.server_lifetime and self.pools.expired(s))
        ):
            return None
        return s

    def take(self, c: Client, s: ServerConn) -> None:
        """Take the server ready_server found out of its pool for ``c`` (what checkout
        and hand_out do in that case); the caller links the two (Sessions.attach)."""
        pool = s.pool
        assert pool is not None
        if pool.idle[0] is s:
            pool.idle.popleft()
        else:
            pool.idle.pop()
        c.tried = None
        c.pool = pool
