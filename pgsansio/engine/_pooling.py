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
from dataclasses import replace
from typing import TYPE_CHECKING

from pgsansio.protocol import (
    CancelRequest,
    Query,
)

from ._effects import CloseServer, OpenServer
from ._errors import fatal
from ._limits import capped, pool_limit, sharing
from ._objects import (
    K_QUERY,
    P_CANCEL,
    P_POOL,
    SKIP,
    Entry,
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
    ServerInput,
    ServerState,
    server_to,
)

if TYPE_CHECKING:
    from pgsansio.config.model import Config, PoolConfig

    from ._context import Context

__all__ = ["ANY_USER", "FALLBACK_POOL", "INTERNAL_QUERY_TIMEOUT", "Pools"]

FALLBACK_POOL = "*"  # PgBouncer's fallback database (see Pools.find_group)
ANY_USER = "*"  # any user, looked up with auth_query (see Pools.find_group)

SCRAM_PREFIX = "SCRAM-SHA-256$"  # a stored verifier: it logs in only by pass-through
INTERNAL_QUERY_TIMEOUT = 10.0  # seconds for our own SET / ROLLBACK / DISCARD ALL

# The extended-protocol requests whose failure the server reports once per batch.


def _same_pool(a: PoolConfig, b: PoolConfig) -> bool:
    """Whether two versions of a pool have the same settings, users aside."""
    return replace(a, users={}) == replace(b, users={})


class Pools:
    """Owns the pool groups (pool, user) and every pool's server connections."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.groups: dict[tuple[str, str], PoolGroup] = {}

    def server_free(self, s: ServerConn) -> None:
        """``s`` has nothing outstanding and no client: clean it, reuse it or close it."""
        pool = s.pool
        assert pool is not None and s.group is not None
        if s.state in (S_IDLE, S_CLOSED) or s.client is not None:
            return  # already back in the pool (two of our queries ended in one read)
        if s.dirty:
            s.dirty = False
            self.internal_query(s, "DISCARD ALL", "reset")
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
        limited = s.group.cfg.max_db_connections or s.group.user.max_user_connections
        if limited and self._hand_over(s):
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

    def grow(self, pool: Pool) -> bool:
        """Open one more connection for ``pool``'s clients if its limits allow (see
        :mod:`._limits`), closing an idle one of another pool under the same cap to make
        room; whether it did."""
        limit = pool_limit(pool, self.ctx.now, self.ctx.config.general.reserve_pool_timeout)
        if len(pool.servers) >= limit:
            return False
        if capped(pool.group, self.groups.values()) is not None:
            victim = next(
                (
                    idle
                    for g in sharing(pool.group, self.groups.values())
                    for p in g.all_pools()
                    if p is not pool
                    for idle in p.idle
                ),
                None,
            )
            if victim is None:
                return False  # a release will hand its connection over (_hand_over)
            self.close_server(victim, wake=False)
            if capped(pool.group, self.groups.values()) is not None:
                return False
        if len(pool.servers) >= pool.group.user.pool_size:
            self.ctx.log(
                logging.INFO,
                f'taking connection from reserve_pool for "{pool.group.name}" '
                f'user "{pool.group.user.username}"',
            )
        self.open_server(pool)
        return True

    def _hand_over(self, s: ServerConn) -> bool:
        """``s`` was released with nobody waiting on its pool: if a pool under the same
        cap has clients waiting for room, close ``s`` and open one for them."""
        assert s.group is not None
        for g in sharing(s.group, self.groups.values()):
            for p in g.all_pools():
                if p is s.pool or not p.waiters or g.removed:
                    continue
                if len(p.servers) < pool_limit(
                    p, self.ctx.now, self.ctx.config.general.reserve_pool_timeout
                ):
                    self.close_server(s, wake=False)
                    self.open_server(p)
                    return True
        return False

    def _wake_capped(self, group: PoolGroup) -> None:
        """A connection under a cap closed: pools waiting for room may open one."""
        for g in sharing(group, self.groups.values()):
            for p in g.all_pools():
                if p.waiters and not p.opening:
                    self.refill(p)

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
            self.ctx.server_gone(s, fatal("08001", "timed out connecting to the server"))

    def close_server(self, s: ServerConn, *, send: bool = True, wake: bool = True) -> None:
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
        if wake and s.group is not None and s.purpose == P_POOL:
            self._wake_capped(s.group)
        self.ctx.maybe_exit()

    def refill(self, pool: Pool) -> None:
        """Open a connection if clients wait and the pool has room."""
        if pool.group.removed or (
            self.ctx.life.pausing and pool.group.name in self.ctx.life.paused
        ):
            return
        if pool.waiters and len(pool.servers) < pool.group.user.pool_size:
            self.grow(pool)
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
        password = group.user.backend_password
        if (password is None or password.startswith(SCRAM_PREFIX)) and group.scram_keys is None:
            return  # auth_query / stored SCRAM: no credentials until a client logs in
        if self.ctx.life.pausing and group.name in self.ctx.life.paused:
            return
        for pool in group.all_pools():
            while len(pool.servers) < group.user.min_pool_size:
                self.open_server(pool)

    def reload(self, config: Config) -> None:
        """Pools whose settings changed are rebuilt lazily: their servers close as soon
        as they are not in use (PgBouncer's ``close_needed``); unchanged ones keep
        their connections. Then every pool is warmed up to ``min_pool_size``."""
        old = self.groups
        self.build_groups(config)
        for key, group in old.items():
            new = self.groups.get(key)
            if new is not None and new.user == group.user and _same_pool(new.cfg, group.cfg):
                # Unchanged (another user of the same pool may have changed): keep it,
                # and its connections.
                group.cfg = new.cfg
                self.groups[key] = group
                continue
            group.removed = True
            for pool in group.all_pools():
                for s in list(pool.servers):
                    s.close_needed = True
                    if s.state is S_IDLE:
                        self.close_server(s)
        for group in self.groups.values():
            self.prewarm(group)

    def find_group(self, database: str, username: str) -> PoolGroup | None:
        """The group for (database, user), made on first use from PgBouncer's fallbacks.

        A pool named ``*`` serves every database name that has no pool of its own (each
        as its own pool, on the server database of that name); a user named ``*`` in a
        pool with ``auth_query`` stands for every user not listed, whose secret
        auth_query looks up (PgBouncer's ``auth_user``). Made groups are kept; a reload
        rebuilds them lazily."""
        group = self.groups.get((database, username))
        if group is not None or database in ("pgcat", "pgbouncer") or username == ANY_USER:
            return group
        pools = self.ctx.config.pools
        cfg = pools.get(database)
        if cfg is None:
            cfg = pools.get(FALLBACK_POOL)
            if cfg is None:
                return None
            shards = tuple(replace(shard, database=database) for shard in cfg.shards)
            cfg = replace(cfg, name=database, shards=shards)
        user = cfg.users.get(username)
        if user is None:
            template = cfg.users.get(ANY_USER) if cfg.auth_query else None
            if template is None:
                return None
            user = replace(template, username=username)
        group = self.groups[(database, username)] = PoolGroup(cfg, user)
        return group

    def build_groups(self, config: Config) -> None:
        self.groups = {}
        for pool_cfg in config.pools.values():
            for user in pool_cfg.users.values():
                if user.username != ANY_USER:  # a template (see find_group)
                    self.groups[(pool_cfg.name, user.username)] = PoolGroup(pool_cfg, user)

    def internal_query(self, s: ServerConn, sql: str, tag: str) -> None:
        server_to(s, ServerInput.QUERIED)
        self.send_internal(s, sql, tag)

    def send_internal(self, s: ServerConn, sql: str, tag: str) -> None:
        entry = Entry(K_QUERY, SKIP, tag=tag)
        s.queue.append(entry)
        self.ctx.send_server(s, s.conn.send(Query(sql)))
        # Our own queries answer in milliseconds; a server that does not is hung.
        self.ctx.at(
            self.ctx.now + INTERNAL_QUERY_TIMEOUT, lambda: self._internal_timeout(s, entry)
        )

    def _internal_timeout(self, s: ServerConn, entry: Entry) -> None:
        if s.state is not S_CLOSED and entry in s.queue:
            self.ctx.log(
                logging.WARNING,
                f"server {self.ctx.where(s)} did not answer our {entry.tag} query within "
                f"{INTERNAL_QUERY_TIMEOUT:g} s; closing it",
            )
            self.ctx.server_gone(
                s, fatal("08006", f"server {self.ctx.where(s)} stopped answering")
            )

    def cancel_server(self, target: ServerConn) -> None:
        """Cancel what ``target`` runs now, over a new connection, if it still runs it."""
        if target.backend_key is None:
            return
        self.ctx.next_sid += 1
        s = ServerConn(self.ctx.next_sid, None, target.address, self.ctx.now, purpose=P_CANCEL)
        s.login = (target, target.link_gen)
        self.ctx.servers[s.sid] = s
        self.ctx.out.append(OpenServer(s.sid, target.address.host, target.address.port))

    def send_cancel(self, s: ServerConn) -> None:
        login = s.login
        assert isinstance(login, tuple)
        target: ServerConn = login[0]
        link_gen: int = login[1]
        # A late cancel must not hit the next client's query on that server: only while
        # the same client still holds it and something runs (as PostgreSQL, a cancel
        # then stops whatever that client runs at the time).
        still = target.state is ServerState.CLOSED or (
            target.link_gen == link_gen and target.queue
        )
        if still and target.backend_key is not None:
            pid, secret = target.backend_key
            self.ctx.send_server(s, bytes(CancelRequest(pid, secret)))
        self.close_server(s)
