"""Pools: taking a server for a client, giving it back, opening and closing them.

The ``Pools`` part of the engine. PgCat's semantics: one pool per (pool, user,
shard, address) of at most ``pool_size`` connections; waiting clients queue FIFO and
give up after ``connect_timeout``; ``server_round_robin`` picks FIFO (true) or LIFO
reuse; idle connections close after ``idle_timeout`` (down to ``min_pool_size``) and
any unlinked one after ``server_lifetime``. A failed connection or login fails the
waiting clients at once with the server's own error when nothing else could serve them.
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

from ._effects import CloseServer, OpenServer
from ._errors import fatal
from ._objects import (
    P_POOL,
    Client,
    Pool,
    PoolGroup,
    ServerConn,
)
from ._states import (
    C_CLOSED,
    S_CLOSED,
    S_IDLE,
    S_LOGIN,
    SI_IDLED,
    ClientState,
    ServerInput,
    ServerState,
    server_to,
)

if TYPE_CHECKING:
    from pgsansio.config_model import Config

    from ._context import Context
    from ._control import Control
    from ._health import Health
    from ._leaving import Leaving
    from ._login import Login
    from ._relay import Relay
    from ._routing import Routes

__all__ = ["Pools"]

# The extended-protocol requests whose failure the server reports once per batch.
_EXTENDED = (Parse, Bind, Describe, Execute, Close)


class Pools:
    """Owns its state; see the module docstring."""

    # The parts it calls, wired by the Engine.
    control: Control
    health: Health
    leaving: Leaving
    login: Login
    relay: Relay
    router: Routes

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.groups: dict[tuple[str, str], PoolGroup] = {}
        # clients waiting for a server under connect_timeout (see wait_until)
        self.waiting: dict[Client, None] = {}
        self.wait_sweep_at: float | None = None

    def checkout(self, c: Client) -> None:
        if self.ctx.life.pausing and self.control.hold(c):
            return  # PAUSE: it waits for RESUME
        group = c.group
        assert group is not None
        if group.removed:
            # A reload changed or removed this pool: move to its new incarnation.
            new = self.groups.get((group.name, group.user.username))
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
            if new.server_params is None:
                new.server_params = group.server_params
            c.group = group = new
            c.user = new.user
        pool = self.router.route(c)
        if pool is None:
            return  # answered with an error, or waiting for a primary to be found
        c.pool = pool
        idle = pool.idle
        while idle:
            s = idle.popleft() if self.ctx.config.general.server_round_robin else idle.pop()
            if group.user.server_lifetime and self.expired(s):
                self.close_server(s)
                continue
            self.hand_out(c, s)
            return
        c.waiting_since = self.ctx.now
        c.wait_gen += 1
        pool.waiters.append(c)
        if len(pool.servers) < group.user.pool_size:
            self.open_server(pool)
        self._wait_until(c, self.ctx.now + group.user.connect_timeout / 1000)

    def _wait_until(self, c: Client, deadline: float) -> None:
        """``c`` now waits in ``c.pool.waiters`` until ``deadline`` (connect_timeout).

        Not a timer per wait: with more clients than servers nearly every transaction
        waits a little, and a timer each (a closure, a heap push, a no-op firing later
        and a new wake-up for the frontend each time the heap's head moved) cost more
        than the rest of the checkout. One sweep timer, armed at the earliest deadline,
        looks at the waiting clients instead; most have been served by then."""
        c.wait_deadline = deadline
        self.waiting[c] = None
        at = self.wait_sweep_at
        if at is None or deadline < at:
            self.wait_sweep_at = deadline
            self.ctx.at(deadline, self._wait_sweep)

    def _wait_sweep(self) -> None:
        """Time out the waiters whose connect_timeout has passed; re-arm for the rest."""
        at = self.wait_sweep_at
        if at is None or at > self.ctx.now:
            return  # superseded by an earlier sweep, which re-armed for later
        now = self.ctx.now
        first: float | None = None
        expired: list[Client] = []
        for c in list(self.waiting):
            deadline = c.wait_deadline
            pool = c.pool
            if (
                c.state is ClientState.CLOSED
                or c.waiting_since is None
                or deadline is None
                or pool is None
                or c not in pool.waiters
            ):
                del self.waiting[c]  # served, gone, held by PAUSE or waiting for a role
            elif deadline <= now:
                del self.waiting[c]
                expired.append(c)
            elif first is None or deadline < first:
                first = deadline
        self.wait_sweep_at = first
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
        c.wait_deadline = None
        c.pool.waiters.remove(c)
        c.waiting_since = None
        pending, c.pending = c.pending, []
        self.ctx.log(
            logging.WARNING,
            f'client {c.cid} ("{c.username}" to "{c.database}") waited more than '
            f"connect_timeout ({c.user.connect_timeout} ms) for a server connection",
        )
        error = ErrorResponse.build(
            "53300",
            "no server connection became free within connect_timeout "
            f"({c.user.connect_timeout} ms); all {c.user.pool_size} are busy",
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
        """Answer requests no server will see with ``error``, as a server would."""
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

    def server_free(self, s: ServerConn) -> None:
        """``s`` has nothing outstanding and no client: clean it, reuse it or close it."""
        pool = s.pool
        assert pool is not None and s.group is not None
        if s.state in (S_IDLE, S_CLOSED) or s.client is not None:
            return  # already back in the pool (two of our queries ended in one read)
        if s.dirty:
            s.dirty = False
            self.relay.internal_query(s, "DISCARD ALL", "reset")
            return
        if (
            s.close_needed
            or (s.group.user.server_lifetime and self.expired(s))
            or s.group.removed
            or (self.ctx.life.pausing and s.group.name in self.ctx.life.paused)
        ):
            self.close_server(s)
            self.refill(pool)
            return
        s.last_used = self.ctx.now
        while pool.waiters:
            c = pool.waiters.popleft()
            if c.state is not C_CLOSED:
                self.ctx.link(c, s)
                return
        server_to(s, SI_IDLED)
        pool.idle.append(s)
        user = s.group.user
        if pool.reap_at is None or (
            user.idle_timeout
            and pool.reap_at > self.ctx.now + user.idle_timeout / 1000
            and len(pool.servers) > user.min_pool_size
        ):
            self._schedule_reap(pool)

    def _schedule_reap(self, pool: Pool) -> None:
        """One timer per pool, at its first idle server's deadline (not one per release:
        at thousands of transactions a second that would fill the timer heap)."""
        user = pool.group.user
        first: float | None = None
        # Servers kept for min_pool_size have no idle deadline (else we would wake up
        # for them again and again).
        idle_counts = len(pool.servers) > user.min_pool_size
        for s in pool.idle:
            at = None
            if user.idle_timeout and idle_counts:
                at = s.last_used + user.idle_timeout / 1000
            if user.server_lifetime:
                end = s.created + user.server_lifetime / 1000
                at = end if at is None else min(at, end)
            if at is not None and (first is None or at < first):
                first = at
        pool.reap_at = first
        if first is not None:
            self.ctx.at(max(first, self.ctx.now + 0.001), lambda: self._reap(pool, first))

    def open_server(self, pool: Pool) -> ServerConn:
        self.ctx.next_sid += 1
        s = ServerConn(self.ctx.next_sid, pool, pool.address, self.ctx.now)
        pool.servers.add(s)
        pool.opening += 1
        self.ctx.servers[s.sid] = s
        self.ctx.out.append(OpenServer(s.sid, pool.address.host, pool.address.port))
        timeout = pool.group.user.connect_timeout / 1000
        self.ctx.at(self.ctx.now + max(timeout, 1.0) * 5, lambda: self._login_deadline(s))
        return s

    def _login_deadline(self, s: ServerConn) -> None:
        if s.state in (ServerState.CONNECTING, S_LOGIN):
            self.ctx.server_gone(
                s, fatal("08001", f"timed out connecting to server {self.ctx.where(s)}")
            )

    def close_server(self, s: ServerConn, *, send: bool = True) -> None:
        if s.state is S_CLOSED:
            return
        if (
            s.state in (ServerState.CONNECTING, ServerState.LOGIN)
            and s.pool is not None
            and s.purpose == P_POOL
        ):
            s.pool.opening -= 1
        server_to(s, ServerInput.CLOSED)
        self.ctx.servers.pop(s.sid, None)
        if s.pool is not None:
            s.pool.servers.discard(s)
            try:
                s.pool.idle.remove(s)
            except ValueError:
                pass
        if s.client is not None:
            s.client.server = None
            s.client = None
        s.queue.clear()
        if send:
            self.ctx.out.append(CloseServer(s.sid))
        self.ctx.maybe_exit()

    def refill(self, pool: Pool) -> None:
        """Open a connection if clients wait and the pool has room."""
        if pool.group.removed or (
            self.ctx.life.pausing and pool.group.name in self.ctx.life.paused
        ):
            return
        if pool.waiters and len(pool.servers) < pool.group.user.pool_size:
            self.open_server(pool)
        elif not pool.group.removed:
            need = pool.group.user.min_pool_size - len(pool.servers)
            for _ in range(max(0, need)):
                self.open_server(pool)

    def expired(self, s: ServerConn) -> bool:
        assert s.group is not None
        lifetime = s.group.user.server_lifetime
        return bool(lifetime) and self.ctx.now - s.created >= lifetime / 1000

    def _reap(self, pool: Pool, at: float) -> None:
        """Close idle servers past ``idle_timeout`` (down to min_pool_size) or lifetime."""
        if pool.reap_at != at:
            return  # superseded
        user = pool.group.user
        closed = False
        for s in list(pool.idle):
            idle_too_long = (
                user.idle_timeout
                and self.ctx.now - s.last_used >= user.idle_timeout / 1000
                and len(pool.servers) > user.min_pool_size
            )
            if idle_too_long or self.expired(s):
                self.close_server(s)
                closed = True
        if closed:
            self.refill(pool)  # min_pool_size: fresh ones replace expired ones
        self._schedule_reap(pool)

    def prewarm(self, group: PoolGroup) -> None:
        if group.user.backend_password is None and group.scram_keys is None:
            return  # auth_query users: no credentials until a client logs in
        if self.ctx.life.pausing and group.name in self.ctx.life.paused:
            return
        for pool in group.all_pools():
            while len(pool.servers) < group.user.min_pool_size:
                self.open_server(pool)

    def build_groups(self, config: Config) -> None:
        self.groups = {}
        for pool_cfg in config.pools.values():
            for user in pool_cfg.users.values():
                self.groups[(pool_cfg.name, user.username)] = PoolGroup(pool_cfg, user)

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
        self.relay.send_internal(s, ";", "healthcheck")
        entry = s.queue[-1]
        self.health.health_checks[s.sid] = entry
        timeout = self.ctx.config.general.healthcheck_timeout / 1000
        self.ctx.at(self.ctx.now + timeout, lambda: self.health.health_timeout(s, entry))
