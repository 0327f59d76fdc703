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
- **Read-your-writes** (``read_your_writes``): a client's reads after its own write
  go only to replicas whose probed replay position has reached it, else to the
  primary at once, or, with ``read_your_writes_wait_ms``, after waiting up to that long
  for a probe round to find one (the client waits with the probe waiters in
  :mod:`._lending`; its deadline is kept on the client, from the Context's time).
- **The shard** is :class:`~._shards.Shards`' decision (PgCat's sharding: the
  automatic key, comments, ``SET SHARD``, ``default_shard``); Routes then picks the
  server within that shard.
- **Load balancing** among the candidates: ``random`` (PgCat's default; weighted by
  the optional 4th item of a ``servers`` entry), ``loc`` (least outstanding
  connections: busy plus waiting, divided by the weight) and ``round_robin``
  (extension: each candidate in turn, as many turns as its weight). As in PgCat, the
  choice does not favour an address with an idle connection (that would send all the
  traffic to whichever replica warmed up first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgsansio.protocol import (
    Bind,
    Close,
    CommandComplete,
    Describe,
    Execute,
    Parse,
    Query,
    ReadyForQuery,
    Span,
)

from ._answers import command_error, show_one
from ._objects import Client, Pool
from ._readonly import Begins, held_transaction_write, session_read_only
from ._shards import SHARD_LEAD, Refusal

if TYPE_CHECKING:
    from pgsansio.routing import Router

    from ._context import Context
    from ._health import Health, Key
    from ._shards import Shards

__all__ = ["WAIT_FOR_PRIMARY", "WAIT_FOR_REPLAY", "Refusal", "Routes"]  # Refusal: see ._shards

WAIT_FOR_PRIMARY = ""  # what route() says while no probe has answered yet
# ... and while a read waits for a probe to find a replica that has replayed the
# client's own write (read_your_writes_wait_ms); never a message for a client.
WAIT_FOR_REPLAY = "\0replay"

_TEXT_OID = 25
_EXTENDED = (Parse, Bind, Describe, Execute, Close)
_ROLES = ("primary", "replica", "any", "auto", "default")


def _key(pool: Pool) -> Key:
    return (pool.address.host, pool.address.port)


class Routes:
    """Owns its state; see the module docstring."""

    def __init__(self, ctx: Context, *, health: Health, shards: Shards) -> None:
        self.ctx = ctx
        self.health = health
        self.shards = shards
        self._routers: dict[int, Router] = {}
        self._rr: dict[tuple[str, str, int, str], int] = {}
        self._parser_missing: str | None = None
        self.begins = Begins(ctx)

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
                    if write and cfg.read_your_writes:
                        c.ryw_wrote = True  # learn its WAL position at the end (_sessions)
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
        ro_session = session_read_only(c)
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
                elif c.held_begin is not None:  # the first statement decides (_readonly)
                    return held_transaction_write(c.group.cfg.begin_routing, d, ro_session)
                elif d.begin:
                    write = d.read_only is False or (d.read_only is None and not ro_session)
                else:
                    write = d.write
                if write:
                    return True
                found = False
        return found

    # === choosing an address ========================================================

    def route(self, c: Client, *, retry: bool = False) -> Pool | str | Refusal:
        """The pool ``c`` should take a server from; else why no server can serve it
        (a message for the client, or a Refusal with its SQLSTATE), or WAIT_FOR_PRIMARY
        while the probes have not yet found which server is the primary."""
        group = c.group
        assert group is not None
        if retry:
            index = c.checkout_shard
        else:
            c.tried = None
            chosen = self.shards.choose(c)
            if isinstance(chosen, Refusal):
                return chosen
            index = c.checkout_shard = chosen
        if index >= len(group.pools):
            return Refusal("22023", self.shards.gone(c, index))
        shard = group.pools[index]
        if len(shard) == 1:
            return shard[0]
        want = self._wanted_role(c)
        candidates = self._candidates(c, shard, want)
        if candidates is None:
            return WAIT_FOR_REPLAY
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
            return WAIT_FOR_PRIMARY  # not probed yet (the pooler just started)
        if not candidates:
            if want == "primary":
                return f'no primary server is available in pool "{group.name}" for writes' + (
                    self.why_no_primary(shard)
                )
            return f'no server is available in pool "{group.name}": ' + self._why_no_server(
                c, shard
            )
        if len(candidates) == 1:
            return candidates[0]
        return self._balance(c, candidates, want)

    # === choosing a shard ==============================================================

    def why_no_primary(self, shard: list[Pool]) -> str:
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

    def _candidates(self, c: Client, shard: list[Pool], want: str) -> list[Pool] | None:
        """The pools that may serve ``c``; None: a read that waits for a replica to
        replay ``c``'s own write (read-your-writes with a wait bound)."""
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
        if c.ryw_lsn is not None and replicas:
            replicas = self._caught_up(c, replicas)
            if not replicas and want == "replica" and self._wait_for_replay(c):
                return None
        if want == "any":
            return replicas + primary
        return replicas or primary  # no replica left: the primary serves the reads

    def _caught_up(self, c: Client, replicas: list[Pool]) -> list[Pool]:
        """Read-your-writes: the replicas that have replayed ``c``'s last write (as
        last probed); once all have, the client is like any other again."""
        lsn = c.ryw_lsn
        assert lsn is not None
        ready = [p for p in replicas if (self.health.replayed(_key(p)) or -1) >= lsn]
        if len(ready) == len(replicas):
            c.ryw_lsn = None
        if ready:
            c.ryw_wait_until = None
        return ready

    def _wait_for_replay(self, c: Client) -> bool:
        """Whether ``c``'s read, which no replica has caught up for, waits for a probe
        rather than going to the primary now: only within ``read_your_writes_wait_ms``
        of when it started waiting. Past the bound it goes to the primary, and the next
        read that finds no replica waits afresh."""
        assert c.group is not None
        bound = c.group.cfg.read_your_writes_wait_ms
        if not bound:
            return False
        now = self.ctx.now
        if c.ryw_wait_until is None:
            c.ryw_wait_until = now + bound / 1000
            return True
        if now < c.ryw_wait_until:
            return True
        c.ryw_wait_until = None
        return False

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
        index = self.shards.fixed_shard(c)
        shard = group.pools[index if index is not None and index < len(group.pools) else 0]
        for pool in shard:
            if not self.health.banned(pool.address) and self.health.role(pool.address) is not None:
                return pool
        return next((p for p in shard if not self.health.banned(p.address)), shard[0])

    # === moving and failing clients ================================================

    # === PgCat's custom commands ===================================================

    def custom_command(self, c: Client, span: Span) -> bool:
        """Answer ``SET SERVER ROLE`` & co. ourselves; True if ``span`` was one."""
        events = span.events
        if len(events) != 1 or type(events[0]) is not Query:
            return False
        query = events[0]
        assert isinstance(query, Query) and c.group is not None
        s = c.server
        lead = SHARD_LEAD.match(query.sql)
        if lead is not None:
            if s is not None and (s.queue or s.syncing):
                return False  # earlier requests still running: the server answers in turn
            self.shards.command(c, query.sql, lead)
            return True
        if not c.group.cfg.query_parser_enabled:
            return False
        if s is not None and (s.queue or not s.conn.idle or s.syncing):
            return False
        router = self._router(c.group.cfg.query_parser_max_length)
        if router is None:
            return False
        decision = router.classify(query.sql)
        if self.begins.query(c, query.sql, decision):
            return True  # a plain BEGIN held until the first statement (see _readonly)
        command = decision.command
        if command is None:
            return False
        name, value = command
        if s is not None:
            status = s.conn.transaction_status
        else:
            status = "I" if c.held_begin is None else "T"  # a held BEGIN (_readonly)
        if name == "set_server_role":
            role = (value or "").lower()
            if role not in _ROLES:
                command_error(self.ctx, c, f"unknown server role {value!r}", status)
                return True
            c.route_role = None if role == "default" else role
            self.ctx.send_client(c, CommandComplete("SET"))
        elif name == "set_primary_reads":
            flag = (value or "").lower()
            if flag not in ("on", "off", "default"):
                command_error(
                    self.ctx, c, f"PRIMARY READS must be on, off or default, not {value!r}", status
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
            show_one(self.ctx, c, "server_role", role)
        elif name == "show_primary_reads":
            show_one(self.ctx, c, "primary_reads", "on" if self._primary_reads(c) else "off")
        else:
            command_error(self.ctx, c, value or "invalid command", status)
            return True
        self.ctx.send_client(c, ReadyForQuery(status))
        return True
