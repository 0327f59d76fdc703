"""Choosing the server for a client: read/write splitting, roles, load balancing.

The ``Routes`` part of the engine (DESIGN.md's Router). PgCat's semantics, decided
when a client with no server sends something (transaction mode) or logs in (session mode):

- **The role.** In transaction mode with ``query_parser_enabled`` and
  ``query_parser_read_write_splitting``, every Query text and Parse text waiting to be
  sent is classified (:mod:`pgsansio.routing`, cached by text); a Bind of a named
  statement is classified by the text it was prepared with. Any write sends the whole
  span to the primary, and the server then stays for the transaction (it is released
  only at ReadyForQuery ``I``), so reads after a write in a transaction stay on the
  primary. ``BEGIN`` goes to the primary (what follows is unknown), ``BEGIN READ
  ONLY`` may go to a replica. A ``/* pgsansio_role: replica */``-style hint (see
  :mod:`pgsansio.routing`) wins for its statement. Reads go to the replicas, or to
  replicas and primary with ``primary_reads_enabled``. What the parser cannot decide,
  and everything in session mode or without the parser, goes where ``default_role``
  says (``any``: every server).
- **Per-client overrides**, PgCat's custom commands (simple protocol, with the parser
  on), answered by the pooler itself: ``SET SERVER ROLE TO 'primary' | 'replica' |
  'any' | 'auto' | 'default'`` and ``SET PRIMARY READS TO on | off | default``, and
  their ``SHOW`` forms (one row).
- **Candidates.** Servers with that role, minus banned ones (:mod:`._health`), lagging
  replicas and, when a client is being moved after a failure, the addresses it already
  tried. If every replica is banned they are unbanned (PgCat); if no replica is left
  (all lagging, say) reads go to the primary. A write with no primary known fails
  at once with 57P03.
- **Load balancing** among the candidates: ``random`` (PgCat's default; weighted by
  the optional 4th item of a ``servers`` entry), ``loc`` (least outstanding
  connections: busy plus waiting, divided by the weight) and ``round_robin``
  (extension: each candidate in turn, as many turns as its weight). As in PgCat, the
  choice does not favour an address with an idle connection (that would send all the
  traffic to whichever replica warmed up first).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pgsansio.protocol import (
    Bind,
    Close,
    CommandComplete,
    DataRow,
    Describe,
    ErrorResponse,
    Event,
    Execute,
    Field,
    FunctionCall,
    Parse,
    ProtocolError,
    Query,
    ReadyForQuery,
    RowDescription,
    Span,
    Sync,
)

from ._errors import fatal
from ._health import BANNED, NOT_BANNED, key_of
from ._objects import Client, Entry, Pool, ServerConn
from ._states import C_CLOSED, S_CLOSED, S_LOGIN, ClientState, ServerInput, ServerState, server_to

if TYPE_CHECKING:
    from pgsansio.config_model import ServerAddress
    from pgsansio.routing import Router

    from ._context import Context
    from ._health import Health, Key
    from ._pooling import Pools

__all__ = ["Routes"]

_TEXT_OID = 25
_EXTENDED = (Parse, Bind, Describe, Execute, Close)
_ROLES = ("primary", "replica", "any", "auto", "default")


def _key(pool: Pool) -> Key:
    return (pool.address.host, pool.address.port)


class Routes:
    """Owns its state; see the module docstring."""

    def __init__(self, ctx: Context, *, pools: Pools, health: Health) -> None:
        self.ctx = ctx
        self.pools = pools
        self.health = health
        self._routers: dict[int, Router] = {}
        self._rr: dict[tuple[str, str, int, str], int] = {}
        self._parser_missing: str | None = None
        # clients waiting for a server under connect_timeout (see _wait_until)
        self._waiting: dict[Client, None] = {}
        self._wait_sweep_at: float | None = None
        self._role_waiters: list[Client] = []  # waiting for a probe to find a primary
        self._held: list[Client] = []  # clients waiting because their database is paused
        self._health_checks: dict[int, Entry] = {}  # server id -> its ``;`` in flight

    def _router(self, max_length: int | None) -> Router | None:
        """The classifier, or None when pglast is not installed (said once at start)."""
        size = max_length or 0
        router = self._routers.get(size)
        if router is None:
            if self._parser_missing is not None:
                return None
            try:
                # Imported on first use: pglast is an optional extra (GPL), and a pool
                # without the query parser must run without it.
                from pgsansio.routing import Router  # noqa: PLC0415
            except ImportError as exc:
                self._parser_missing = str(exc)
                return None
            router = self._routers[size] = Router(max_length=size)
        return router

    def check_parser(self) -> None:
        """At start and reload: say plainly if the query parser cannot run here."""
        pools = [p.name for p in self.ctx.config.pools.values() if p.query_parser_enabled]
        if pools and self._router(None) is None:
            self.ctx.log(
                logging.ERROR,
                f"query_parser_enabled is set (pool {', '.join(pools)}) but the SQL parser "
                f"cannot be loaded ({self._parser_missing}): install pgsansio[routing] "
                "(pglast); until then servers are chosen by default_role alone",
            )

    # === the role a client's pending requests need =================================

    def _wanted_role(self, c: Client) -> str:
        """``primary``, ``replica`` or ``any`` for what ``c`` is about to send."""
        group = c.group
        assert group is not None and c.user is not None
        cfg = group.cfg
        override = c.route_role
        if override in ("primary", "replica", "any"):
            role = override
        else:
            role = cfg.default_role
            parse = cfg.query_parser_enabled and (
                cfg.query_parser_read_write_splitting or override == "auto"
            )
            if parse and c.user.pool_mode == "transaction":
                write = self._classify_pending(c)
                if write is not None:
                    role = "primary" if write else "replica"
        if role == "replica" and self._primary_reads(c):
            role = "any"
        return role

    def _primary_reads(self, c: Client) -> bool:
        if c.primary_reads is not None:
            return c.primary_reads
        assert c.group is not None
        return c.group.cfg.primary_reads_enabled

    def _classify_pending(self, c: Client) -> bool | None:
        """True: a write among the pending statements; False: reads only; None: none
        the parser could look at."""
        assert c.group is not None
        router = self._router(c.group.cfg.query_parser_max_length)
        if router is None:
            return None
        found: bool | None = None
        for _, events, _ in c.pending:
            for e in events:
                t = type(e)
                if t is Query:
                    assert isinstance(e, Query)
                    sql = e.sql
                elif t is Parse:
                    assert isinstance(e, Parse)
                    sql = e.query
                elif t is Bind:
                    assert isinstance(e, Bind)
                    p = c.prepared.get(e.statement) if e.statement else None
                    if p is None:
                        continue
                    assert isinstance(p.parse, Parse)
                    sql = p.parse.query
                else:
                    continue
                d = router.classify(sql)
                if d.hint is not None:
                    write = d.hint == "primary"
                elif d.begin:
                    write = d.read_only is not True
                else:
                    write = d.write
                if write:
                    return True
                found = False
        return found

    # === choosing an address ========================================================

    def route(self, c: Client, *, retry: bool = False) -> Pool | None:
        """The pool ``c`` should take a server from; None when ``c`` has been answered
        (no server can serve it) or parked until a probe finds a primary."""
        group = c.group
        assert group is not None
        shard = group.pools[0]
        if not retry:
            c.tried = None
        if len(shard) == 1:
            return shard[0]
        want = self._wanted_role(c)
        candidates = self._candidates(c, shard, want)
        if (
            not candidates
            and want == "primary"
            and not retry
            and any(
                p.address.role == "auto"
                and (p.address.host, p.address.port) not in self.health.roles
                for p in shard
            )
        ):
            # Not probed yet (the pooler just started): wait for the first answers.
            c.waiting_since = self.ctx.now
            c.pool = None
            self._role_waiters.append(c)
            assert c.user is not None
            gen = c.wait_gen = c.wait_gen + 1
            self.ctx.at(
                self.ctx.now + c.user.connect_timeout / 1000, lambda: self._role_timeout(c, gen)
            )
            return None
        if not candidates:
            if want == "primary":
                message = (
                    f'no primary server is available in pool "{group.name}" for writes'
                    + self._why_no_primary(shard)
                )
            else:
                message = f'no server is available in pool "{group.name}": ' + self._why_no_server(
                    c, shard
                )
            self._no_server(c, message)
            return None
        if len(candidates) == 1:
            return candidates[0]
        return self._balance(c, candidates, want)

    def _why_no_primary(self, shard: list[Pool]) -> str:
        if any(p.address.role == "auto" for p in shard):
            return (
                " (none of its servers answered our probe as being out of recovery; "
                "retry once a replica has been promoted)"
            )
        return " (its primary could not be reached)"

    def _why_no_server(self, c: Client, shard: list[Pool]) -> str:
        """What keeps each address of ``shard`` from serving ``c``'s read, for the
        error the client gets and the log: an operator must see whether servers are
        down, banned, behind, or only not probed yet."""
        assert c.group is not None
        name = c.group.cfg.name
        tried = c.tried or ()
        parts = []
        for p in shard:
            k = _key(p)
            role = self.health.role(p.address)
            ban = self.health.bans.get(k)
            if k in tried:
                why = "failed for this request"
            elif ban is not None:
                why = f"banned ({ban.reason})"
            elif role is None:
                why = "down" if self.health.probe_down(k) else "role not known yet (not probed)"
            elif (name, k) in self.health.lagging:
                why = "lagging behind the primary"
            else:
                why = role  # pragma: no cover - a usable server: _candidates took it
            parts.append(f"{k[0]}:{k[1]} {why}")
        return "; ".join(parts)

    def _candidates(self, c: Client, shard: list[Pool], want: str) -> list[Pool]:
        tried = c.tried or ()
        primary: list[Pool] = []
        replicas: list[Pool] = []
        for p in shard:
            role = self.health.role(p.address)
            if role == "primary":
                if not tried or _key(p) not in tried:
                    primary.append(p)
            elif role == "replica":
                replicas.append(p)
        if want == "primary":
            return primary
        bans = self.health.bans
        if bans and not tried and replicas and all(_key(p) in bans for p in replicas):
            # PgCat: every replica banned is more likely a false alarm than a fact --
            # unless our own probe says it is down right now (or this client has just
            # found out for itself: it is being moved after a failure).
            for p in replicas:
                if not self.health.probe_down(_key(p)):
                    self.health.unban(_key(p), "unbanned: every replica was banned")
        if bans or tried or self.health.lagging:
            assert c.group is not None
            name = c.group.cfg.name
            lagging = self.health.lagging
            replicas = [
                p
                for p in replicas
                if (k := _key(p)) not in bans and k not in tried and (name, k) not in lagging
            ]
        if want == "any":
            return replicas + primary
        return replicas or primary  # no replica left: the primary serves the reads

    def _balance(self, c: Client, candidates: list[Pool], want: str) -> Pool:
        assert c.group is not None
        mode = c.group.cfg.load_balancing_mode
        if mode == "round_robin":
            total = sum(p.address.weight for p in candidates)
            key = (c.group.name, c.group.user.username, candidates[0].shard, want)
            turn = self._rr.get(key, 0)
            self._rr[key] = turn + 1
            point = turn % total
            for p in candidates:
                point -= p.address.weight
                if point < 0:
                    return p
        rng = self.ctx.rng
        if mode == "random" and all(p.address.weight == 1 for p in candidates):
            return candidates[rng.randrange(len(candidates))]  # the common case, cheaply
        # A weighted shuffle (Efraimidis-Spirakis): weight w sorts first w times as often.
        ordered = sorted(candidates, key=lambda p: -(rng.random() ** (1 / p.address.weight)))
        if mode == "loc":
            ordered.sort(key=lambda p: (p.busy + len(p.waiters)) / p.address.weight)
        return ordered[0]

    def choose_pool(self, c: Client) -> Pool:
        """Where a group's first login goes (for the server's parameters): any server
        that is up, whatever its role."""
        group = c.group
        assert group is not None
        shard = group.pools[0]
        for pool in shard:
            if not self.health.banned(pool.address) and self.health.role(pool.address) is not None:
                return pool
        return next((p for p in shard if not self.health.banned(p.address)), shard[0])

    # === moving and failing clients ================================================

    def reroute(self, c: Client, failed: Pool) -> None:
        """``c`` waited on ``failed``, which cannot serve it: try another address (the
        connect_timeout it waits under keeps running)."""
        if c.state is ClientState.CLOSED or c.server is not None:
            return
        tried = c.tried if c.tried is not None else set()
        tried.add(_key(failed))
        c.tried = tried
        pool = self.route(c, retry=True)
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
            self.pools.open_server(pool)

    def _no_server(self, c: Client, message: str) -> None:
        """No server can take ``c``'s requests: answer them as a server would."""
        self.ctx.log(logging.WARNING, f"client {c.cid}: {message}")
        c.waiting_since = None
        c.pool = None
        pending, c.pending = c.pending, []
        self.fail_requests(c, pending, ErrorResponse.build("57P03", message))

    def _role_timeout(self, c: Client, gen: int) -> None:
        if c in self._role_waiters and c.wait_gen == gen:
            self._role_waiters.remove(c)
            if c.state is C_CLOSED:
                return
            assert c.group is not None
            self._no_server(
                c,
                f'no primary server is available in pool "{c.group.name}" for writes'
                + self._why_no_primary(c.group.pools[0]),
            )

    # === PgCat's custom commands ===================================================

    def custom_command(self, c: Client, span: Span) -> bool:
        """Answer ``SET SERVER ROLE`` & co. ourselves; True if ``span`` was one."""
        events = span.events
        if len(events) != 1 or type(events[0]) is not Query:
            return False
        s = c.server
        if s is not None and (s.queue or not s.conn.idle or s.syncing):
            return False
        query = events[0]
        assert isinstance(query, Query) and c.group is not None
        router = self._router(c.group.cfg.query_parser_max_length)
        if router is None:
            return False
        command = router.classify(query.sql).command
        if command is None:
            return False
        name, value = command
        status = s.conn.transaction_status if s is not None else "I"
        if name == "set_server_role":
            role = (value or "").lower()
            if role not in _ROLES:
                self._command_error(c, f"unknown server role {value!r}", status)
                return True
            c.route_role = None if role == "default" else role
            self.ctx.send_client(c, CommandComplete("SET"))
        elif name == "set_primary_reads":
            flag = (value or "").lower()
            if flag not in ("on", "off", "default"):
                self._command_error(
                    c, f"PRIMARY READS must be on, off or default, not {value!r}", status
                )
                return True
            c.primary_reads = None if flag == "default" else flag == "on"
            self.ctx.send_client(c, CommandComplete("SET"))
        elif name == "show_server_role":
            role = c.route_role or (
                "auto"
                if c.group.cfg.query_parser_read_write_splitting
                else c.group.cfg.default_role
            )
            self._show(c, "server_role", role)
        elif name == "show_primary_reads":
            self._show(c, "primary_reads", "on" if self._primary_reads(c) else "off")
        else:
            self._command_error(c, value or "invalid command", status)
            return True
        self.ctx.send_client(c, ReadyForQuery(status))
        return True

    def _show(self, c: Client, column: str, value: str) -> None:
        self.ctx.send_client(c, RowDescription([Field(column, 0, 0, _TEXT_OID, -1, -1, 0)]))
        self.ctx.send_client(c, DataRow([value.encode()]))
        self.ctx.send_client(c, CommandComplete("SHOW"))

    def _command_error(self, c: Client, message: str, status: str) -> None:
        # The server's transaction is untouched by our error: its status stands.
        self.ctx.send_client(c, ErrorResponse.build("42601", message))
        self.ctx.send_client(c, ReadyForQuery(status))

    def checkout(self, c: Client) -> None:
        if self.ctx.life.pausing and self.hold(c):
            return  # PAUSE: it waits for RESUME
        group = c.group
        assert group is not None
        if group.removed:
            # A reload changed or removed this pool: move to its new incarnation.
            new = self.pools.groups.get((group.name, group.user.username))
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
        pool = self.route(c)
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
        if len(pool.servers) < group.user.pool_size:
            self.pools.open_server(pool)
        self._wait_until(c, self.ctx.now + group.user.connect_timeout / 1000)

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
            # primary is never banned, so its waiters are moved here, not by _ban).
            for c in list(pool.waiters):
                pool.waiters.remove(c)
                self.reroute(c, pool)
            group = pool.group
            first_login = group.server_params is None and group.login_waiters
            if first_login and not any(p.opening for p in group.all_pools()):
                other = self.choose_pool(group.login_waiters[0])
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
