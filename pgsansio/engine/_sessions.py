"""A client's session on a server: linking the two, applying the client's settings,
our own queries' answers, releasing, and the timeouts that end a linked session.

The ``Sessions`` part of the engine. Decisions (PgBouncer's and PgCat's):

- **Linking** gives a server to a client and first makes the server's session look
  like the client's: the tracked parameters and ``SET`` values the client has (see
  :mod:`._params`) are applied with one internal query when they differ from what
  the server has (the common case, the same settings as the last client, costs
  nothing). Only then are the client's waiting requests sent (through the Relay).
- **Release.** Transaction mode hands a server back on ReadyForQuery ``I`` with
  nothing outstanding, no COPY open and no unnamed statement waiting for its Bind
  (pg8000 sends Parse, Describe and Bind in separate round trips, each with its own
  Sync). Session mode keeps it until the client leaves. A client idle in a
  transaction longer than ``idle_client_in_transaction_timeout`` is ended with 25P03.
- **Statement timeout** (PgCat's ``statement_timeout``): the server is not trusted
  again: its query is cancelled, the connection closed and its address banned, and
  the client gets 57014.
- A failed settings query ends the client (its session could not be reproduced); any
  other failed internal query closes that server.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pgsansio.protocol import ErrorResponse

from ._effects import ReadClient, ReadServer
from ._errors import TERMINATING, fatal
from ._objects import Client, Entry, ServerConn
from ._params import TRACKED, sync_sql
from ._states import C_CLOSED, S_CLOSED, SI_LINKED, SI_RELEASED, ServerState, server_to

__all__ = ["Sessions"]

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._context import Context
    from ._lending import Lending
    from ._pooling import Pools


class Sessions:
    """Owns no tables: a session's state is on its Client and ServerConn."""

    def __init__(
        self,
        ctx: Context,
        *,
        pools: Pools,
        lending: Lending,
        send_pending: Callable[[Client, ServerConn], None],
    ) -> None:
        self.ctx = ctx
        self.pools = pools
        self.lending = lending
        self._send_pending = send_pending

    def link(self, c: Client, s: ServerConn) -> None:
        if c.blocked:
            self.ctx.out.append(ReadServer(s.sid, False))
        if s.blocked:
            self.ctx.out.append(ReadClient(c.cid, False))
        self.attach(c, s)
        key = c.sync_key
        if key is None:
            key = c.sync_key = (
                tuple(c.params.get(name) for name in TRACKED),
                tuple(sorted(c.settings.items())),
            )
        if s.sync_key == key:
            sql = ""  # the common case: the last client here had the same settings
        else:
            want = {name: c.params[name] for name in TRACKED if name in c.params}
            sql = sync_sql(want, s.params, c.settings, s.applied)
            if not sql:
                s.sync_key = key
        if sql:
            s.syncing = True
            self.pools.send_internal(s, sql, "sync")
        else:
            self._send_pending(c, s)

    def attach(self, c: Client, s: ServerConn) -> None:
        """The bookkeeping of giving ``s`` to ``c`` (for link and the fast lane)."""
        c.server = s
        st = c.stats
        st.server_assignment_count += 1
        if c.waiting_since is not None:
            st.wait_time += self.ctx.now - c.waiting_since
            c.waiting_since = None
        s.client = c
        server_to(s, SI_LINKED)
        s.link_gen += 1
        s.last_used = self.ctx.now

    def unlink(self, c: Client, s: ServerConn) -> None:
        if c.blocked:
            self.ctx.out.append(ReadServer(s.sid, True))
        if s.blocked and c.state is not C_CLOSED:
            self.ctx.out.append(ReadClient(c.cid, True))
        c.server = None
        s.client = None
        server_to(s, SI_RELEASED)

    def release_if_done(self, s: ServerConn) -> None:
        c = s.client
        if c is None or c.user is None:
            return
        if s.queue or not s.conn.idle:
            return
        if s.conn.transaction_status != "I":
            timeout = self.ctx.config.general.idle_client_in_transaction_timeout
            if timeout:
                gen = s.query_gen
                self.ctx.at(self.ctx.now + timeout / 1000, lambda: self.idle_tx_timeout(c, s, gen))
            return
        if self.ctx.life.shutting_down and not self.ctx.life.wait_for_clients and not c.pending:
            self.ctx.drop_client(c, TERMINATING)  # its transaction is over: let it go
            return
        if c.user.pool_mode != "transaction" or c.unnamed_pending or c.pending:
            return
        self.unlink(c, s)
        self.pools.server_free(s)

    def after_client_data(self, c: Client, s: ServerConn) -> None:
        if c.state is C_CLOSED:
            return
        if s.queue:
            s.query_gen += 1
            timeout = c.user.statement_timeout if c.user is not None else 0
            if timeout:
                gen = s.query_gen
                self.ctx.at(self.ctx.now + timeout / 1000, lambda: self.statement_timeout(s, gen))
            timeout = self.ctx.config.general.query_timeout
            if timeout:
                gen = s.query_gen
                self.ctx.at(self.ctx.now + timeout / 1000, lambda: self.query_timeout(s, gen))
        elif s.client is c:
            self.release_if_done(s)

    def internal_done(self, s: ServerConn, entry: Entry) -> None:
        if s.state is S_CLOSED:
            return
        if entry.tag == "healthcheck" and self.lending.health_done(s, entry):
            return
        if entry.error is not None:
            if entry.tag == "sync" and s.client is not None:
                c = s.client
                s.syncing = False
                self.unlink(c, s)
                msg = entry.error.message if isinstance(entry.error, ErrorResponse) else ""
                self.ctx.drop_client(
                    c,
                    fatal(
                        entry.error.sqlstate or "22023"
                        if isinstance(entry.error, ErrorResponse)
                        else "22023",
                        f"could not apply the session's settings on a server connection: {msg}",
                    ),
                )
                s.applied.clear()
                s.sync_key = None
                self.pools.server_free(s)
                return
            self.ctx.log(
                logging.WARNING, f"server {self.ctx.where(s)}: {entry.tag} failed; closing it"
            )
            self.pools.close_server(s)
            return
        if entry.tag == "sync":
            s.syncing = False
            owner = s.client
            if owner is not None:
                s.applied = dict(owner.settings)
                s.sync_key = owner.sync_key
                self._send_pending(owner, s)
                return
        if s.client is None and not s.queue and s.state is ServerState.INTERNAL:
            self.pools.server_free(s)

    def idle_tx_timeout(self, c: Client, s: ServerConn, gen: int) -> None:
        if c.server is not s or s.query_gen != gen or s.queue:
            return
        if s.conn.transaction_status == "I":
            return
        self.ctx.drop_client(c, fatal("25P03", "idle transaction timeout"))

    def statement_timeout(self, s: ServerConn, gen: int) -> None:
        c = s.client
        if c is None or s.query_gen != gen or not s.queue or c.user is None:
            return
        self.ctx.log(logging.WARNING, f"client {c.cid}: statement timeout on {self.ctx.where(s)}")
        # As PgCat: the server is slow or hung, so it is not trusted again; cancel what
        # it runs and close it now (not after a drain that may never come).
        self.unlink(c, s)
        self.pools.cancel_server(s)
        self.pools.close_server(s)
        if s.pool is not None:
            self.lending.ban(s.pool, None, "statement timeout")
            self.pools.refill(s.pool)
        self.ctx.drop_client(
            c,
            fatal(
                "57014",
                f"pool statement timeout: the query ran longer than statement_timeout "
                f"({c.user.statement_timeout} ms)",
            ),
        )

    def query_timeout(self, s: ServerConn, gen: int) -> None:
        """PgBouncer's ``query_timeout``: the server is closed (a cancel stops what it
        runs) and the client let go with PgBouncer's words; unlike PgCat's
        statement_timeout nothing is banned, the query was slow, not the server. As in
        PgBouncer the time counts from the client's last request until the server is
        idle outside a transaction, so a client idle in a transaction is let go too
        (compared side by side with PgBouncer 1.18)."""
        c = s.client
        if c is None or s.query_gen != gen:
            return  # released, or another request came since
        if not s.queue and s.conn.transaction_status == "I":
            return  # answered and idle: PgBouncer's clock runs until the server is ready
        self.ctx.log(logging.WARNING, f"client {c.cid}: query_timeout on {self.ctx.where(s)}")
        self.unlink(c, s)
        self.pools.cancel_server(s)
        self.pools.close_server(s)
        if s.pool is not None:
            self.pools.refill(s.pool)
        self.ctx.drop_client(c, fatal("08P01", "query timeout"))  # PgBouncer's words

    def client_writable(self, c: Client, writable: bool) -> None:
        """Backpressure: a client that reads slowly stops its server being read."""
        c.blocked = not writable
        if c.server is not None:
            self.ctx.out.append(ReadServer(c.server.sid, writable))

    def server_writable(self, s: ServerConn, writable: bool) -> None:
        """Backpressure: a server that reads slowly (COPY IN) stops its client being read."""
        s.blocked = not writable
        if s.client is not None:
            self.ctx.out.append(ReadClient(s.client.cid, writable))
