"""Operating the pooler: pause, resume, disable, kill, reconnect, bans, shutdown modes.

The ``Control`` part of the engine. The admin console (:mod:`._admin`) and the
frontend's signals (SIGUSR1 pause, SIGUSR2 resume, SIGINT/SIGTERM shutdown) both end
up here. PgBouncer's semantics, written down:

- **PAUSE [db]**: no server is handed out any more; clients that ask for one wait
  (without ``connect_timeout``, as in PgBouncer and PgCat). Servers are closed as the
  pool mode releases them (end of transaction; the client leaving in session mode);
  idle ones at once. The console answers ``PAUSE`` only when the database has no
  server connection left, so an operator can restart PostgreSQL safely afterwards.
- **RESUME [db]** lets the waiting clients go on; it is an error if nothing was paused.
- **DISABLE db / ENABLE db**: new logins to ``db`` are refused (57P03); sessions stay.
- **RECONNECT [db]**: every server is closed when next released (idle ones now);
  new ones are opened as needed.
- **KILL [db]**: its clients are disconnected and its servers closed at once; the
  database then stays paused until RESUME. No argument: every database (1.25).
- **KILL_CLIENT id**: one client, by SHOW CLIENTS ``id``.
- **Bans** (``BAN host seconds`` / ``UNBAN host``) are kept by address ``(host,
  port)`` with an expiry and a reason. While banned, an address is skipped when a
  server is chosen, unless every candidate is banned (as PgCat, which then unbans
  all). A primary is never banned (PgCat's rule).
- **Shutdown**: ``shutdown(now)`` (SIGINT, SHUTDOWN WAIT_FOR_SERVERS) drains: new
  clients are refused, idle clients are let go, open transactions finish, and the
  pooler exits when no client is left or after ``shutdown_timeout``.
  ``shutdown(now, wait_for_clients=True)`` (SIGTERM, SHUTDOWN WAIT_FOR_CLIENTS,
  PgBouncer 1.23) only refuses new clients and exits when the last one leaves. In both,
  admin-console sessions may still log in and do not keep the pooler alive. The plain
  console ``SHUTDOWN`` exits at once, as PgBouncer's does.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pgsansio.protocol import CommandComplete, ErrorResponse, ReadyForQuery

from ._effects import CloseServer, Exit, Reload
from ._errors import TERMINATING, fatal
from ._objects import Client, PoolGroup
from ._states import C_CLOSED, S_CLOSED, S_IDLE, ClientState, ServerInput, server_to

if TYPE_CHECKING:
    from collections.abc import Callable

    from pgsansio.config.model import ServerAddress

    from ._context import Context
    from ._leaving import Leaving
    from ._lending import Lending
    from ._metrics import Metrics
    from ._pooling import Pools

__all__ = ["AdminError", "Control"]


class AdminError(Exception):
    """A console command failed: answered as an ErrorResponse, the session goes on."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


class Control:
    """Owns who waits for a PAUSE or RELOAD and which console commands still run;
    the flags it sets are the Context's Lifecycle."""

    def __init__(
        self,
        ctx: Context,
        *,
        pools: Pools,
        lending: Lending,
        leaving: Leaving,
        metrics: Metrics,
        resume_console: Callable[[Client], None],
    ) -> None:
        self.ctx = ctx
        self.pools = pools
        self.lending = lending
        self.leaving = leaving
        self.metrics = metrics
        self._resume_console = resume_console
        # Who waits for a PAUSE to complete: (admin client or None for SIGUSR1, db).
        self._pause_waiters: list[tuple[Client | None, str | None]] = []
        self._reload_waiters: list[Client] = []
        self._cut_off = False  # the shutdown ended clients (timeout, SHUTDOWN): said so
        self._close_waiters: list[tuple[Client, str | None]] = []  # WAIT_CLOSE
        self.busy: set[int] = set()  # admin clients whose command is still running

    # === pause / resume ==============================================================

    def _db_groups(self, db: str | None) -> list[PoolGroup]:
        return [g for g in self.pools.groups.values() if db is None or g.name == db]

    def check_db(self, db: str) -> None:
        if db not in self.ctx.config.pools:
            raise AdminError("42704", f'no such database: "{db}"')

    def pause(self, db: str | None, who: Client | None, *, wait: bool = True) -> None:
        names = list(self.ctx.config.pools) if db is None else [db]
        self.ctx.life.paused.update(names)
        self.ctx.life.pausing = True
        for group in self._db_groups(db):
            for pool in group.all_pools():
                for w in pool.waiters:
                    w.wait_gen += 1  # its connect_timeout no longer applies
                    w.pool = None  # it waits on no pool now (a cancel finds nothing to do)
                    self.lending.park(w)
                pool.waiters.clear()
                for s in list(pool.idle):
                    self.pools.close_server(s)
        self.ctx.log(
            logging.INFO,
            f"pausing {'every database' if db is None else f'database {db}'}: "
            "servers close as their clients release them",
        )
        if wait:
            self._pause_waiters.append((who, db))
            self.pause_progress()

    def _servers_left(self, db: str | None) -> int:
        return sum(len(p.servers) for g in self._db_groups(db) for p in g.all_pools())

    def pause_progress(self) -> None:
        """Answer the PAUSEs whose databases have no server connection left."""
        done: list[tuple[Client | None, str | None]] = []
        waiting: list[tuple[Client | None, str | None]] = []
        for who, db in self._pause_waiters:
            (waiting if self._servers_left(db) else done).append((who, db))
        if not done:
            return
        self._pause_waiters = waiting  # before answering: an answer may run a new PAUSE
        for who, _ in done:
            if who is None:
                self.ctx.log(logging.INFO, "paused: no server connection is open")
            elif who.state is not C_CLOSED:
                self._admin_done(who, "PAUSE")
            else:
                self.busy.discard(who.cid)

    def wait_close(self, db: str | None, who: Client) -> None:
        """PgBouncer's WAIT_CLOSE: answer once no server of ``db`` (or of any database)
        is still waiting to close after a RECONNECT or RELOAD (``close_needed``)."""
        self._close_waiters.append((who, db))
        self.close_progress()

    def close_progress(self) -> None:
        """Answer the WAIT_CLOSEs whose servers to close are all closed."""
        # Taken first: an answer runs what its client sent next, maybe another WAIT_CLOSE.
        pending, self._close_waiters = self._close_waiters, []
        for who, db in pending:
            left = any(
                s.close_needed
                for g in self._db_groups(db)
                for p in g.all_pools()
                for s in p.servers
            )
            if left and who.state is not C_CLOSED:
                self._close_waiters.append((who, db))
            elif who.state is not C_CLOSED:
                self._admin_done(who, "WAIT_CLOSE")
            else:
                self.busy.discard(who.cid)

    def resume(self, db: str | None) -> None:
        if db is None:
            self.ctx.life.paused.clear()
        else:
            self.ctx.life.paused.discard(db)
        self.ctx.life.pausing = bool(self.ctx.life.paused)
        self._pause_waiters = [(w, d) for w, d in self._pause_waiters if d is not None]
        self._pause_waiters = [(w, d) for w, d in self._pause_waiters if d in self.ctx.life.paused]
        self.lending.unpark()
        for group in self._db_groups(db):
            self.pools.prewarm(group)

    # === disable, reconnect, kill ====================================================

    def reconnect(self, db: str | None) -> None:
        for group in self._db_groups(db):
            for pool in group.all_pools():
                for s in list(pool.servers):
                    s.close_needed = True
                    if s.state is S_IDLE:
                        self.pools.close_server(s)
                self.pools.refill(pool)

    def kill(self, db: str | None) -> None:
        self.pause(db, None, wait=False)  # KILL answers at once
        for c in list(self.ctx.clients.values()):
            if c.admin or (db is not None and (c.group is None or c.group.name != db)):
                continue
            self.leaving.drop_client(c, TERMINATING)
        for group in self._db_groups(db):
            for pool in group.all_pools():
                for s in list(pool.servers):
                    self.pools.close_server(s)

    def kill_client(self, cid: int) -> None:
        c = self.ctx.clients.get(cid)
        if c is None:
            raise AdminError("42704", f"no such client: {cid} (see SHOW CLIENTS, column id)")
        self.ctx.log(logging.INFO, f"client {cid} from {c.peer} killed by the admin console")
        self.leaving.drop_client(c, TERMINATING)

    def addresses(self, host: str) -> list[ServerAddress]:
        """Configured servers matching ``host`` or ``host:port``."""
        want_port: int | None = None
        if ":" in host and host.rsplit(":", 1)[1].isdigit():
            host, port_text = host.rsplit(":", 1)
            want_port = int(port_text)
        found: dict[tuple[str, int], ServerAddress] = {}
        for pool in self.ctx.config.pools.values():
            for shard in pool.shards:
                for a in shard.servers:
                    if a.host == host and want_port in (None, a.port):
                        found.setdefault((a.host, a.port), a)
        return list(found.values())

    # === shutdown ====================================================================

    def begin_shutdown(
        self, *, wait_for_clients: bool, reason: str = "SHUTDOWN from the admin console"
    ) -> None:
        if self.ctx.life.shutting_down and (
            wait_for_clients or not self.ctx.life.wait_for_clients
        ):
            return  # already in this mode, or in the stricter drain
        self.ctx.life.shutting_down = True
        self.ctx.life.stop_reason = reason
        self.ctx.life.wait_for_clients = wait_for_clients
        if wait_for_clients:
            self.ctx.log(
                logging.INFO,
                "shutting down: new clients are refused; exiting when the last one leaves",
            )
            self.maybe_exit()
            return
        self.ctx.log(logging.INFO, "shutting down: waiting for clients to finish")
        for c in list(self.ctx.clients.values()):
            if c.admin or c.state is ClientState.STARTUP:
                continue  # not logged in yet: refused after its startup packet (_login)
            s = c.server
            if s is None or (not s.queue and s.conn.idle and s.conn.transaction_status == "I"):
                self.leaving.drop_client(c, TERMINATING)
        timeout = self.ctx.config.general.shutdown_timeout / 1000
        self.ctx.at(self.ctx.now + timeout, self.shutdown_timeout)
        self.maybe_exit()

    def shutdown_now(self) -> None:
        self.ctx.life.shutting_down = True
        self.ctx.life.stop_reason = "SHUTDOWN from the admin console"
        self.ctx.log(logging.INFO, "SHUTDOWN from the admin console: exiting now")
        self.shutdown_timeout(at_once=True)

    def exit_leftovers(self) -> None:
        """The pooler is exiting: admin sessions and metrics requests are let go."""
        for c in list(self.ctx.clients.values()):
            self.leaving.drop_client(c, TERMINATING)
        self.metrics.close_http()

    # === answering the console =======================================================

    def reload(self, c: Client) -> None:
        self._reload_waiters.append(c)
        self.busy.add(c.cid)
        self.ctx.out.append(Reload())

    def reload_answer(self, error: str | None) -> None:
        waiters, self._reload_waiters = self._reload_waiters, []
        for c in waiters:
            if c.state is ClientState.CLOSED:
                continue
            if error is None:
                self._admin_done(c, "RELOAD")
            else:
                self.busy.discard(c.cid)
                self.ctx.send_client(
                    c,
                    ErrorResponse.build(
                        "F0000",
                        f"RELOAD failed; the running configuration stays in force: {error}",
                    ),
                )
                self.ctx.send_client(c, ReadyForQuery("I"))
                self._resume_console(c)

    def _admin_done(self, c: Client, tag: str) -> None:
        """Answer a command that had to wait, then run what the client sent meanwhile."""
        self.busy.discard(c.cid)
        self.ctx.send_client(c, CommandComplete(tag))
        self.ctx.send_client(c, ReadyForQuery("I"))
        self._resume_console(c)

    def maybe_exit(self, *, force: bool = False) -> None:
        if not self.ctx.life.shutting_down or self.ctx.life.exited:
            if self.ctx.life.pausing:
                self.pause_progress()  # something closed: a PAUSE may be complete
            if self._close_waiters:
                self.close_progress()  # ... or a WAIT_CLOSE
            return
        if not force and any(
            not c.admin and c.state is not ClientState.STARTUP for c in self.ctx.clients.values()
        ):
            return  # admin sessions (and clients yet to send a startup packet) do not
            # keep the pooler alive
        self.ctx.life.exited = True
        self.exit_leftovers()
        for s in list(self.ctx.servers.values()):
            if s.state is not S_CLOSED:
                server_to(s, ServerInput.CLOSED)
                self.ctx.servers.pop(s.sid, None)
                self.ctx.out.append(CloseServer(s.sid))
        self.ctx.timers.clear()
        life = self.ctx.life
        if force or self._cut_off:
            how = ""  # shutdown_timeout said why, or SHUTDOWN asked for it at once
        else:
            how = "; the last client left" if life.wait_for_clients else "; every client finished"
        self.ctx.log(logging.INFO, f"pgsansio stopped: {life.stop_reason or 'shutdown'}{how}")
        self.ctx.out.append(Exit(0))

    def shutdown_timeout(self, *, at_once: bool = False) -> None:
        self._cut_off = True
        cut = sum(1 for c in self.ctx.clients.values() if not c.admin)
        if cut and not at_once:
            ms = self.ctx.config.general.shutdown_timeout
            self.ctx.life.stop_reason += (
                f"; shutdown_timeout ({ms} ms) passed with {cut} client(s) still connected, "
                "who were disconnected"
            )
        for c in list(self.ctx.clients.values()):
            self.leaving.drop_client(
                c, fatal("57P01", "terminating connection due to administrator command")
            )
        for s in list(self.ctx.servers.values()):
            self.pools.close_server(s)
        self.maybe_exit(force=True)
