"""Clients leaving (on purpose or not), the timeouts that end them, and shutdown.

The ``Leaving`` part of the engine. The rule throughout: a server a client leaves
behind is never handed to anyone else dirty. Idle and clean, it goes back to the pool;
in a transaction it gets ``ROLLBACK`` (and ``server_reset_query`` in session mode);
with a query running it gets a CancelRequest and is closed once it has answered; in
COPY FROM STDIN it gets CopyFail; with extended-protocol messages awaiting their Sync
it is closed at once, with a Terminate (our own Sync would commit what the client
never committed, and without one PostgreSQL sends none of the answers a drain waits for).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pgsansio.protocol import CopyFail, ErrorResponse, ProtocolError, Terminate

from ._effects import CloseClient, SendClient
from ._eventlog import DISCONNECT, LOGIN_FAILED, SERVER_FAILED, age, client_tag, server_tag
from ._objects import (
    EXTENDED,
    FAKE,
    P_AUTH_QUERY,
    P_LISTEN,
    P_POOL,
    P_PROBE,
    SKIP,
    Client,
    ServerConn,
)
from ._states import S_CLOSED, S_LOGIN, ClientInput, ClientState, ServerState, client_to

if TYPE_CHECKING:
    from ._context import Context
    from ._lending import Lending
    from ._listen import Listen
    from ._login import Login
    from ._pooling import Pools
    from ._prepared import Statements
    from ._probes import Probes
    from ._sessions import Sessions

__all__ = ["Leaving"]

ABANDON_GRACE = 5.0  # seconds a cancelled, abandoned server may take to answer


class Leaving:
    """Owns no tables: what happens when a client leaves or a server connection fails."""

    def __init__(
        self,
        ctx: Context,
        *,
        pools: Pools,
        lending: Lending,
        probes: Probes,
        sessions: Sessions,
        statements: Statements,
        login: Login,
        listen: Listen,
    ) -> None:
        self.ctx = ctx
        self.pools = pools
        self.lending = lending
        self.probes = probes
        self.sessions = sessions
        self.statements = statements
        self.login = login
        self.listen = listen

    def drop_client(
        self, c: Client, error: ErrorResponse | None = None, *, closed: bool = False
    ) -> None:
        was = c.state
        if was is ClientState.CLOSED:
            return
        if error is not None and not closed:
            try:
                self.ctx.out.append(SendClient(c.cid, c.conn.send(error)))
            except ProtocolError:
                self.ctx.out.append(SendClient(c.cid, bytes(error)))
        client_to(c, ClientInput.CLOSED)
        self.ctx.clients.pop(c.cid, None)
        self.login.logging_in.pop(c, None)
        if self.login.cancel_keys.get(c.cancel_key) is c:
            del self.login.cancel_keys[c.cancel_key]
        if not closed:
            self.ctx.out.append(CloseClient(c.cid))
        if c.waiting_since is not None and c.pool is not None:
            try:
                c.pool.waiters.remove(c)
            except ValueError:
                pass
            c.waiting_since = None
        if c.group is not None and c in c.group.login_waiters:
            c.group.login_waiters.remove(c)
        for p in c.prepared.values():
            self.statements.unref(p)
        c.prepared.clear()
        if c.listens is not None or c.notes is not None:
            self.listen.client_gone(c)
        c.pending = []
        s = c.server
        if s is not None:
            self._abandon(c, s)
        self._log_leaving(c, was, error, closed=closed)
        self.ctx.maybe_exit()

    def _log_leaving(
        self, c: Client, was: ClientState, error: ErrorResponse | None, *, closed: bool
    ) -> None:
        """PgBouncer's "closing because" for a logged-in client; a login that ends in an
        error is a failed login (a wrong password was logged, with its cause, by Login).
        A client that closes before logging in (psql asking for a password, a load
        balancer's TCP check) is not worth a line."""
        general = self.ctx.config.general
        if was is ClientState.READY:
            if (
                general.log_disconnections or general.log_client_disconnections
            ) and self.ctx.admits(DISCONNECT):
                if error is not None:
                    reason = error.message or "error"
                else:
                    reason = "client close request" if closed else "closed by the pooler"
                self.ctx.log(
                    logging.INFO,
                    f"{client_tag(c)} closing because: {reason} {age(c.connected, self.ctx.now)}",
                )
        elif (
            was in (ClientState.STARTUP, ClientState.AUTH)
            and error is not None
            and error.sqlstate != "28P01"
            and general.log_pooler_errors
        ):
            # Later in a login (FETCH, WELCOME) only a server's failure ends it, and that
            # is logged once, as the server's line, not again for each client waiting.
            self.ctx.event(
                LOGIN_FAILED, logging.WARNING, f"{client_tag(c)} login failed: {error.message}"
            )

    def _abandon(self, c: Client, s: ServerConn) -> None:
        """The client left while holding ``s``: make it clean for the next one."""
        self.sessions.unlink(c, s)
        if s.state is S_CLOSED:
            return
        if s.conn.frontend_copy_open:
            # A backend waiting for COPY data ignores a cancel: end the COPY instead
            # (the rows sent so far are rolled back), then close once it has answered.
            s.close_needed = True
            self.ctx.send_server(s, s.conn.send(CopyFail("the client disconnected")))
            self.ctx.at(self.ctx.now + ABANDON_GRACE, lambda: self._close_abandoned(s))
            return
        if _unsynced(s):
            # Extended-protocol messages without their Sync: PostgreSQL answers none of
            # them until a Sync or Flush (waiting for those answers hung the server,
            # locks held, for ABANDON_GRACE), and a Sync of ours would commit the
            # implicit transaction the client never committed. Directly connected,
            # PostgreSQL would finish what it runs, read the client's Terminate and end
            # the session, rolling back. So we pass the Terminate on and close, as
            # PgBouncer closes an "unclean server" (plus a cancel, in case an Execute
            # still runs: the backend reads the Terminate only once it is done).
            if any(x.mode != SKIP for x in s.queue):
                self.pools.cancel_server(s)
            self._close_unclean(s)
            return
        if any(x.mode != SKIP for x in s.queue):
            # A query runs: cancel it, let the answer drain (nobody reads it), then
            # close this connection; never later than ABANDON_GRACE seconds.
            s.close_needed = True
            self.pools.cancel_server(s)
            self.ctx.at(self.ctx.now + ABANDON_GRACE, lambda: self._close_abandoned(s))
            return
        if s.queue:
            # Our own query (a SET) is running; Sessions.internal_done frees it. After
            # the client's own reset (a restore), its transaction may be open: close.
            s.close_needed = s.close_needed or any(x.tag == "restore" for x in s.queue)
            return
        if not s.conn.idle:
            # Extended-protocol messages without their Sync, all answered (the client
            # sent Flush): as above.
            self._close_unclean(s)
            return
        assert c.user is not None
        if s.conn.transaction_status != "I":
            self.pools.internal_query(s, "ROLLBACK", "rollback")
            if c.user.pool_mode == "session":
                self.pools.send_internal(s, self.ctx.config.general.server_reset_query, "reset")
        elif c.user.pool_mode == "session":
            self.pools.internal_query(s, self.ctx.config.general.server_reset_query, "reset")
        else:
            self.pools.server_free(s)

    def _close_unclean(self, s: ServerConn) -> None:
        """Close ``s`` with a Terminate, so that its backend ends (and releases its
        locks) as soon as it reads it, not when it notices the socket closed."""
        try:
            self.ctx.send_server(s, s.conn.send(Terminate()))
        except ProtocolError:
            pass  # the connection's state allows no Terminate: just close
        self.pools.close_server(s)
        if s.pool is not None:
            self.pools.refill(s.pool)

    def _close_abandoned(self, s: ServerConn) -> None:
        if s.state is not S_CLOSED and s.client is None:
            self.pools.close_server(s)
            if s.pool is not None:
                self.pools.refill(s.pool)

    def server_gone(
        self, s: ServerConn, error: ErrorResponse, *, closed: bool = False, detail: str = ""
    ) -> None:
        """``s`` failed or closed: tell whoever depended on it, then forget it.

        A server that could not be opened or logged in, or that broke the protocol
        (``detail`` then says how, for the log only), is logged with its address;
        clients are never told the address.
        """
        was = s.state
        c = s.client
        if (
            was in (ServerState.CONNECTING, S_LOGIN) or detail
        ) and self.ctx.config.general.log_pooler_errors:
            # Class 08 is ours (connect, timeout, protocol); anything else during the
            # login is PostgreSQL's own answer to the pooler's credentials or database.
            ours = (error.sqlstate or "08").startswith("08")
            why = error.message if ours else f"the server refused the login: {error.message}"
            self.ctx.event(
                SERVER_FAILED,
                logging.WARNING,
                f"{server_tag(s)} closing because: {why}{detail} {age(s.created, self.ctx.now)}",
            )
        self.pools.close_server(s, send=not closed)
        if s.purpose == P_AUTH_QUERY:
            self.login.auth_query_failed(s, error)
        elif s.purpose == P_PROBE:
            self.probes.probe_lost(s, error)
        elif s.purpose == P_LISTEN:
            self.listen.lost(s)
        if s.purpose != P_POOL:
            return
        pool = s.pool
        group = s.group
        assert pool is not None and group is not None
        if c is not None:
            # After the server's own FATAL reached the client, a second error of ours
            # would only be noise: just close.
            self.drop_client(c, None if s.fatal_forwarded else error)
        self.lending.server_lost(s, was, c is not None)  # bans, and moves waiters elsewhere
        if was in (ServerState.CONNECTING, S_LOGIN):
            # Fail fast, with the server's own error, the clients nothing else could
            # serve (PgBouncer's server_login_retry behaviour since 1.24).
            if not any(
                x.state not in (ServerState.CONNECTING, ServerState.LOGIN) for x in pool.servers
            ):
                for w in list(pool.waiters):
                    self.drop_client(w, error)
                pool.waiters.clear()
            if group.server_params is None and not any(p.opening for p in group.all_pools()):
                # A copy: drop_client removes each from the list (iterating the list
                # itself skipped every other waiter, who then hung until login timeout).
                waiters, group.login_waiters = group.login_waiters, []
                for w in waiters:
                    self.drop_client(w, error)
        elif pool.waiters:
            self.pools.refill(pool)


def _unsynced(s: ServerConn) -> bool:
    """Requests queued on ``s`` after its last Sync (or Query): answers that will never
    come, since PostgreSQL holds them back until a Sync or Flush."""
    for x in reversed(s.queue):
        if x.mode != FAKE:
            return x.kind in EXTENDED
    return False
