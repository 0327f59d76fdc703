"""The pooler: clients in, server connections out, one sans-IO object.

The Engine receives the inputs, sets ``now``, dispatches to the parts (see the package
docstring for the parts and the DAG they form) and hands back the effects they built,
with one Wakeup for the earliest timer. It decides nothing itself beyond which part an
input is for. The decisions the parts carry out, in one place (PgCat and PgBouncer
differ on some):

- **Release.** Transaction mode hands a server back on ReadyForQuery ``I`` with nothing
  outstanding, no COPY open and no unnamed statement waiting for its Bind (pg8000 sends
  Parse, Describe and Bind in separate round trips, each with its own Sync). Session
  mode keeps it until the client leaves, then runs ``server_reset_query`` (DISCARD ALL).
- **A client that leaves mid-transaction**: an idle-in-transaction server gets
  ``ROLLBACK`` and goes back to the pool; a server with a query running gets a
  CancelRequest and is closed (PostgreSQL would otherwise run the query to the end).
- **Session state** follows the client from server to server (see :mod:`._params`);
  what we cannot follow makes the server "dirty" and it gets ``DISCARD ALL`` before
  anyone else uses it.
- **Unknown users and databases** are challenged like real ones (MD5 salt or a mock
  SCRAM exchange) and fail with the same 28P01 message as a wrong password.
- **Errors we produce** carry a SQLSTATE a driver can act on: 53300 no server
  connection free in time, 08001 server unreachable, 57014 statement timeout, 25P03
  idle-in-transaction timeout, 57P01 shutting down, 28P01 authentication.
"""

from __future__ import annotations

import heapq
import logging
from typing import TYPE_CHECKING

from pgsansio.protocol import NEED_DATA as _NEED_DATA
from pgsansio.protocol import PAUSED as _PAUSED
from pgsansio.protocol import (
    ProtocolError,
    Span,
)

from ._admin import Admin
from ._buffers import SMALL, Buffers
from ._context import Context
from ._control import Control
from ._effects import Wakeup
from ._errors import INTERNAL, NOT_POSTGRES, ClientFatal, fatal, how
from ._fanout import FanOut
from ._health import Health
from ._idle import ClientIdle
from ._leaving import Leaving
from ._lending import Lending
from ._listen import Listen
from ._login import Login
from ._metrics import Metrics
from ._objects import (
    P_AUTH_QUERY,
    P_CANCEL,
    P_FORWARD,
    P_LISTEN,
    P_PEER,
    P_PROBE,
    Client,
    ServerConn,
)
from ._peers import Peers, WorkerInfo, split_config
from ._pinning import Pinning
from ._pooling import Pools
from ._prepared import Statements
from ._probes import Probes
from ._relay import Relay
from ._routing import Routes
from ._sessions import Sessions
from ._shards import Shards
from ._show import Show
from ._signals import Signals, listen_changes
from ._states import (
    C_CLOSED,
    C_READY,
    S_ACTIVE,
    S_CLOSED,
    S_LOGIN,
    ClientState,
    ServerInput,
    ServerState,
    server_to,
)
from ._stats import Stats
from ._tls import Tls
from ._warnings import config_warnings

if TYPE_CHECKING:
    from pgsansio.config.model import Config

    from ._effects import Effect
    from ._health import Ban

__all__ = ["Engine"]


class Engine:
    """See the package docstring for the inputs and effects."""

    def __init__(
        self,
        config: Config,
        *,
        seed: int | None = None,
        worker: WorkerInfo | None = None,
        fast_lane: bool = True,
    ) -> None:
        """``worker``: which of the worker processes this engine runs in (see ._peers);
        its limits are its share of ``config``'s, at start and at every reload.
        ``fast_lane=False`` sends every byte the general way (tests/test_fastlane.py
        compares the two): an argument, not a patched method, since the compiled
        build's parts cannot be patched. ``fast_taken`` counts the inputs the lane took."""
        self.fast_lane = fast_lane
        self.fast_taken = 0
        self._worker = worker
        if worker is not None:
            config = split_config(config, worker)
        self.ctx = ctx = Context(config, seed)
        self._announced: float | None = None
        # The parts, each given the parts below it that it calls (the DAG drawn in the
        # package docstring).
        self.stats = Stats(ctx)
        self.client_idle = ClientIdle(ctx)
        self.buffers = Buffers(ctx)
        self.pools = Pools(ctx)
        self.health = Health(ctx)
        self.shards = Shards(ctx, health=self.health)
        self.router = Routes(ctx, health=self.health, shards=self.shards)
        self.lending = Lending(
            ctx,
            pools=self.pools,
            health=self.health,
            shards=self.shards,
            router=self.router,
            fast_lane=fast_lane,
        )
        self.probes = Probes(ctx, pools=self.pools, health=self.health, lending=self.lending)
        self.listen = Listen(ctx, pools=self.pools, health=self.health, lending=self.lending)
        self.pinning = Pinning(ctx, listen=self.listen)
        self.sessions = Sessions(
            ctx,
            pools=self.pools,
            lending=self.lending,
            pinning=self.pinning,
            send_pending=self._send_pending,
        )
        self.statements = Statements(ctx)
        self.fanout = FanOut(
            ctx,
            lending=self.lending,
            shards=self.shards,
            resume=lambda c, span: self.relay.client_span(c, span),  # noqa: PLW0108 (relay: below)
        )
        self.relay = Relay(
            ctx,
            stats=self.stats,
            pools=self.pools,
            router=self.router,
            lending=self.lending,
            sessions=self.sessions,
            statements=self.statements,
            pinning=self.pinning,
            listen=self.listen,
            shards=self.shards,
            fanout=self.fanout,
        )
        self.relay.fast_lane = fast_lane  # a waiting client's batch (Relay's half)
        self.tls = Tls(ctx)
        self.peers = Peers(ctx, worker, pools=self.pools)
        self.login = Login(
            ctx,
            peers=self.peers,
            stats=self.stats,
            pools=self.pools,
            router=self.router,
            lending=self.lending,
            probes=self.probes,
            tls=self.tls,
            listen=self.listen,
        )
        self.leaving = Leaving(
            ctx,
            pools=self.pools,
            lending=self.lending,
            probes=self.probes,
            sessions=self.sessions,
            statements=self.statements,
            login=self.login,
            listen=self.listen,
        )
        self.show = Show(ctx, stats=self.stats, pools=self.pools, health=self.health)
        self.metrics = Metrics(
            ctx,
            stats=self.stats,
            pools=self.pools,
            health=self.health,
            show=self.show,
            listen=self.listen,
            peers=self.peers,
        )
        self.control = Control(
            ctx,
            pools=self.pools,
            lending=self.lending,
            leaving=self.leaving,
            metrics=self.metrics,
            resume_console=self._resume_console,
        )
        self.admin = Admin(
            ctx,
            pools=self.pools,
            health=self.health,
            lending=self.lending,
            leaving=self.leaving,
            show=self.show,
            control=self.control,
            peers=self.peers,
            metrics=self.metrics,
            reconfigure=self._reconfigure,
        )
        self._signals = Signals()
        ctx.drop_client = self.leaving.drop_client
        ctx.server_gone = self.leaving.server_gone
        ctx.maybe_exit = self.control.maybe_exit
        ctx.link = self.sessions.link
        self.pools.build_groups(config)

    def _send_pending(self, c: Client, s: ServerConn) -> None:
        """Sessions' one call upward: ``s`` is ready for ``c`` (linked, its settings
        applied); the Relay sends the requests ``c`` queued while it waited. A
        session-mode client linked while logging in is welcomed first."""
        if c.state is ClientState.WELCOME:
            self.login.welcome_linked(c, s)
        self.relay.flush_pending(c, s)

    def _resume_console(self, c: Client) -> None:
        """Control's one call upward: a console command that had to wait (PAUSE,
        RELOAD) is answered; the console goes on with what the client sent meanwhile."""
        self.admin.admin_resume(c)

    @property
    def config(self) -> Config:
        return self.ctx.config

    @property
    def clients(self) -> dict[int, Client]:
        return self.ctx.clients

    @property
    def servers(self) -> dict[int, ServerConn]:
        return self.ctx.servers

    @property
    def bans(self) -> dict[tuple[str, int], Ban]:
        return self.health.bans

    @property
    def roles(self) -> dict[tuple[str, int], str | None]:
        return self.health.roles

    @property
    def paused(self) -> set[str]:
        return self.ctx.life.paused

    # === inputs ======================================================================

    def start(self, now: float) -> list[Effect]:
        self.ctx.now = now
        self.stats.stats_start(now)
        self._warn_unimplemented(self.ctx.config)
        for group in self.pools.groups.values():
            self.pools.prewarm(group)
        self.probes.start_probes()
        return self.flush()

    def _warn_unimplemented(self, config: Config) -> None:
        """Say what in the configuration this pooler will not do (as ``check`` does)."""
        for warning in config_warnings(config):
            self.ctx.log(logging.WARNING, warning)

    def client_connected(self, cid: int, peer: str, now: float) -> list[Effect]:
        self.ctx.now = now
        c = Client(cid, peer, now)
        self.buffers.client_connected(c)
        self.login.connected(c)
        self.client_idle.arm()
        return self.flush()

    def client_data(self, cid: int, data: bytes, now: float) -> list[Effect]:
        self.ctx.now = now
        c = self.ctx.clients.get(cid)
        if c is not None:
            c.active_at = now
        if c is None and self.metrics.serves(cid):
            self.metrics.http_data(cid, data)
        elif c is not None and c.state is not C_CLOSED:
            try:
                if self.fast_lane and self.relay.fast_query(c, data):
                    self.fast_taken += 1
                else:
                    conn = c.conn
                    conn.receive_data(data)
                    self.read_client(c)
                    if (conn.buffered >= SMALL or c.pending) and c.state is not C_CLOSED:
                        error = self.buffers.check_client(c)
                        if error is not None:
                            self.leaving.drop_client(c, error)
            except ProtocolError as exc:
                if exc.reply:
                    error = self.buffers.too_large(c, exc)
                    if error is None:
                        error = fatal(exc.sqlstate, f"protocol error: {exc}")
                    self.leaving.drop_client(c, error)
                else:  # what PostgreSQL only logs (e.g. a Terminate as startup packet)
                    self.ctx.log(logging.INFO, f"client {cid} from {c.peer}: {exc}; closed")
                    self.leaving.drop_client(c)
            except ClientFatal as fatal_exc:  # not ``exc``: compiled, one name has one type
                self.leaving.drop_client(c, fatal_exc.error)
            except Exception:  # a bug of ours: it costs this client, never the others
                self.ctx.internal_error(f"client {cid}")
                if c.server is not None:
                    self.pools.close_server(c.server)
                self.leaving.drop_client(c, INTERNAL)
        return self.flush()

    def client_closed(self, cid: int, now: float) -> list[Effect]:
        self.ctx.now = now
        c = self.ctx.clients.get(cid)
        if c is not None:
            self.leaving.drop_client(c, None, closed=True)
        else:
            self.metrics.disconnected(cid)
        return self.flush()

    def server_connected(self, sid: int, now: float) -> list[Effect]:
        self.ctx.now = now
        s = self.ctx.servers.get(sid)
        if s is not None and s.state is ServerState.CONNECTING:
            if s.purpose == P_CANCEL:
                self.pools.send_cancel(s)
            elif s.purpose >= P_FORWARD:
                self.peers.connected(s)
            else:
                server_to(s, ServerInput.CONNECTED)
                if not self.tls.server_ssl_request(s):
                    self.tls.send_startup(s)
        return self.flush()

    def server_failed(self, sid: int, error: str, now: float) -> list[Effect]:
        self.ctx.now = now
        s = self.ctx.servers.get(sid)
        if s is not None and not (s.purpose >= P_FORWARD and self.peers.gone(s, error)):
            # No address for the client: it is in the pooler's log line (Leaving).
            self.leaving.server_gone(
                s, fatal("08001", f"could not connect to the server: {error}"), closed=True
            )
        return self.flush()

    def server_data(self, sid: int, data: bytes, now: float) -> list[Effect]:
        self.ctx.now = now
        s = self.ctx.servers.get(sid)
        if s is not None and s.state is not S_CLOSED:
            try:
                if s.state is S_ACTIVE and self.fast_lane and self.relay.fast_answer(s, data):
                    self.fast_taken += 1
                else:
                    self._server_bytes(s, data)
                    if s.conn.buffered >= SMALL and s.state is not S_CLOSED:
                        error = self.buffers.check_server(s)
                        if error is not None:
                            self.leaving.server_gone(s, error)
            except ProtocolError as exc:
                self.leaving.server_gone(s, fatal("08P01", NOT_POSTGRES), detail=how(exc))
            except ClientFatal as fatal_exc:  # a client we were answering turned out broken
                if s.client is not None:
                    self.leaving.drop_client(s.client, fatal_exc.error)
            except Exception:  # a bug of ours: it costs this connection, not the others
                self.ctx.internal_error(f"server {self.ctx.where(s)}")
                client = s.client
                self.pools.close_server(s)
                if client is not None:
                    self.leaving.drop_client(client, INTERNAL)
        return self.flush()

    def _server_bytes(self, s: ServerConn, data: bytes) -> None:
        s.conn.receive_data(data)
        if s.state is S_LOGIN:
            self.login.read_login(s)
            if s.purpose == P_AUTH_QUERY and s.state is ServerState.INTERNAL:
                self.login.read_auth_query(s)
        elif s.purpose == P_AUTH_QUERY:
            self.login.read_auth_query(s)
        elif s.purpose == P_PROBE:
            self.probes.read_probe(s)
        elif s.purpose == P_LISTEN:
            self.listen.read(s)
        elif s.purpose == P_PEER:
            self.peers.read(s)
        else:
            self.relay.read_server(s)

    def server_closed(self, sid: int, now: float) -> list[Effect]:
        self.ctx.now = now
        s = self.ctx.servers.get(sid)
        if s is not None and not (
            s.purpose >= P_FORWARD and self.peers.gone(s, "the worker closed the connection")
        ):
            self.leaving.server_gone(
                s, fatal("08006", "the server closed the connection unexpectedly"), closed=True
            )
        return self.flush()

    def client_writable(self, cid: int, writable: bool, now: float) -> list[Effect]:
        """Backpressure: a client that reads slowly stops its server being read."""
        self.ctx.now = now
        c = self.ctx.clients.get(cid)
        if c is not None:
            self.sessions.client_writable(c, writable)
            if c.fanout is not None and writable:
                self.fanout.client_writable(c)
        return self.flush()

    def server_writable(self, sid: int, writable: bool, now: float) -> list[Effect]:
        """Backpressure: a server that reads slowly (COPY IN) stops its client being read."""
        self.ctx.now = now
        s = self.ctx.servers.get(sid)
        if s is not None:
            self.sessions.server_writable(s, writable)
            if s.client is not None and s.client.cid < 0:  # a leg of a split COPY
                self.fanout.leg_writable(s.client)
        return self.flush()

    def client_tls(self, cid: int, error: str | None, now: float) -> list[Effect]:
        """The frontend's answer to StartTls("client", cid): None, or why it failed."""
        self.ctx.now = now
        c = self.ctx.clients.get(cid)
        if c is not None and c.state is not C_CLOSED and self.tls.client_tls_done(c, error):
            self.read_client(c)
        return self.flush()

    def server_tls(self, sid: int, error: str | None, now: float) -> list[Effect]:
        """The frontend's answer to StartTls("server", sid): None, or why it failed."""
        self.ctx.now = now
        s = self.ctx.servers.get(sid)
        if s is not None:
            self.tls.server_tls_done(s, error)
        return self.flush()

    def tick(self, now: float) -> list[Effect]:
        self.ctx.now = now
        timers = self.ctx.timers
        while timers and timers[0][0] <= now:
            _, _, fn = heapq.heappop(timers)
            fn()
        self._announced = None
        return self.flush()

    def reload(self, config: Config, now: float) -> list[Effect]:
        """Take a new configuration; pools whose settings changed are rebuilt lazily.

        Their servers are closed as soon as they are not in use (PgBouncer's
        ``close_needed``); clients keep their connections.
        """
        self.ctx.now = now
        if self._worker is not None:
            config = split_config(config, self._worker)
        self._reconfigure(config)
        self.ctx.log(logging.INFO, f"configuration reloaded from {config.path}")
        self.control.reload_answer(None)
        return self.flush()

    def _reconfigure(self, config: Config) -> None:
        """Run on ``config`` from now on (a RELOAD, or the console's SET)."""
        for warning in listen_changes(self.ctx.config.general, config.general):
            self.ctx.log(logging.WARNING, warning)
        self.ctx.config = config
        self.login.scram_secrets.clear()
        self.pools.reload(config)
        self.listen.follow()
        self.probes.start_probes()
        self._warn_unimplemented(config)

    def shutdown(
        self, now: float, *, wait_for_clients: bool = False, reason: str = "shutdown requested"
    ) -> list[Effect]:
        """Drain and Exit (SIGINT); or, ``wait_for_clients`` (SIGTERM), refuse new
        clients and Exit when the last one leaves. See :mod:`._control`. ``reason`` is
        for the pooler's last log line ("pgsansio stopped: ...")."""
        self.ctx.now = now
        self.control.begin_shutdown(wait_for_clients=wait_for_clients, reason=reason)
        return self.flush()

    def pause(self, now: float) -> list[Effect]:
        """SIGUSR1: PAUSE every database; logged when done."""
        self.ctx.now = now
        self.control.pause(None, None)
        return self.flush()

    def resume(self, now: float) -> list[Effect]:
        """SIGUSR2: RESUME every database (ignored while shutting down, as PgBouncer)."""
        self.ctx.now = now
        if self.ctx.life.paused and not self.ctx.life.shutting_down:
            self.control.resume(None)
            self.ctx.log(logging.INFO, "resumed: every database serves queries again")
        return self.flush()

    def reload_failed(self, error: str, now: float) -> list[Effect]:
        """The frontend could not load the file a console RELOAD asked for."""
        self.ctx.now = now
        self.ctx.log(logging.ERROR, f"RELOAD failed; the running configuration stays: {error}")
        self.control.reload_answer(error)
        return self.flush()

    def metrics_connected(self, cid: int, peer: str, now: float) -> list[Effect]:
        """A connection to the Prometheus port (its data comes as ``client_data``)."""
        self.ctx.now = now
        self.metrics.connected(cid)
        return self.flush()

    def signal(self, name: str, now: float) -> list[Effect]:
        """The operator's signal ``name`` ("SIGHUP", ...); its meaning is in :mod:`._signals`."""
        return self._signals.handle(self, name, now)

    # === effects and timers ==========================================================

    def flush(self) -> list[Effect]:
        out = self.ctx.out
        if self.ctx.timers:
            at = self.ctx.timers[0][0]
            if at != self._announced:
                self._announced = at
                out.append(Wakeup(at))
        self.ctx.out = []
        return out

    # === configuration ===============================================================

    # === clients: startup and authentication =========================================

    def read_client(self, c: Client) -> None:
        if c.state is not C_READY:
            self.login.read(c)
            if c.state is not C_READY:
                return
        span = c.conn.next_span()
        if span is _NEED_DATA or span is _PAUSED:
            return
        if isinstance(span, Span):
            if c.admin:
                self.admin.admin_span(c, span)
            else:
                self.relay.client_span(c, span)
        else:
            self.leaving.drop_client(c, None, closed=True)  # ConnectionClosed (EOF)
        # A span holds every whole message received: what is left is part of one.
