"""The pooler: clients in, server connections out, one sans-IO object.

Decisions written down here (PgCat and PgBouncer differ on some):

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
import random
import traceback
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from pgsansio.protocol import NEED_DATA as _NEED_DATA
from pgsansio.protocol import PAUSED as _PAUSED
from pgsansio.protocol import (
    CancelRequest,
    ConnectionClosed,
    ErrorResponse,
    Event,
    GSSENCRequest,
    GSSENCResponse,
    ProtocolError,
    Query,
    Span,
    SSLRequest,
    StartupMessage,
    Terminate,
)

from ._admin import Admin
from ._effects import (
    Log,
    ReadClient,
    ReadServer,
    SendClient,
    SendServer,
    Wakeup,
)
from ._health import Health
from ._leaving import TERMINATING, Leaving
from ._login import Login, fatal
from ._metrics import Metrics
from ._objects import (
    C_AUTH,
    C_CLOSED,
    C_READY,
    K_QUERY,
    P_AUTH_QUERY,
    P_CANCEL,
    P_PROBE,
    S_ACTIVE,
    S_CLOSED,
    S_CONNECTING,
    S_IDLE,
    S_INTERNAL,
    S_LOGIN,
    SKIP,
    Client,
    Entry,
    PoolGroup,
    Prepared,
    ServerConn,
)
from ._params import TRACKED, sync_sql
from ._pooling import Pooling
from ._relay import ClientFatal, Relay
from ._routing import Routing
from ._signals import Signals, listen_changes
from ._stats import Stats
from ._tls import Tls

if TYPE_CHECKING:
    from pgsansio.config_model import Config, PoolConfig

    from ._effects import Effect

__all__ = ["Engine"]


def _same_pool(a: PoolConfig, b: PoolConfig) -> bool:
    """Whether two versions of a pool have the same settings, users aside."""
    return replace(a, users={}) == replace(b, users={})


CLIENT_LOGIN_TIMEOUT = 60.0
_INTERNAL = ErrorResponse.build(
    "XX000", "internal error in the pooler; the connection is closed", "FATAL"
)
INTERNAL_QUERY_TIMEOUT = 10.0  # seconds for our own SET / ROLLBACK / DISCARD ALL
_TRACKED_LOWER = {name.lower(): name for name in TRACKED}


class Engine(Relay, Login, Routing, Health, Pooling, Leaving, Admin, Metrics, Stats, Tls):
    """See the package docstring for the inputs and effects."""

    def __init__(self, config: Config, *, seed: int | None = None) -> None:
        self.config = config
        self.rng = random.Random(seed)
        self._mock_seed = self.rng.randbytes(16)
        self._out: list[Effect] = []
        self.clients: dict[int, Client] = {}
        self.servers: dict[int, ServerConn] = {}
        self.groups: dict[tuple[str, str], PoolGroup] = {}
        self._cancel_keys: dict[tuple[int, bytes], Client] = {}
        self._statements: dict[tuple[str, tuple[int, ...]], Prepared] = {}
        self._statement_counter = 0
        self._next_sid = 0
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = 0
        self._announced: float | None = None
        self._waiting = {}
        self._welcomes = {}
        self._wait_sweep_at = None
        self._logging_in = {}
        self._login_sweep_at = None
        self._now = 0.0
        self._shutting_down = False
        self._exited = False
        self._scram_secrets: dict[tuple[str, str], str] = {}
        self.stats = {}
        self._stats_rolled = 0.0
        self._http = {}
        self._signals = Signals()
        self._init_control()
        self._init_routing()
        self._init_health()
        self._build_groups(config)

    # === inputs ======================================================================

    def start(self, now: float) -> list[Effect]:
        self._now = now
        self._stats_start(now)
        self._warn_unimplemented(self.config)
        for group in self.groups.values():
            self._prewarm(group)
        self._start_probes()
        return self._flush()

    def _warn_unimplemented(self, config: Config) -> None:
        """Say which configured PgCat features this version does not act on yet."""
        for pool in config.pools.values():
            if len(pool.shards) > 1:
                self._log(
                    logging.WARNING,
                    f'pool "{pool.name}" has {len(pool.shards)} shards: sharding is not '
                    "implemented yet, every query goes to the first shard",
                )
        self._check_parser()
        general = config.general
        if general.autoreload:
            self._log(
                logging.WARNING,
                "autoreload is not implemented yet: send SIGHUP to reload the configuration",
            )

    def client_connected(self, cid: int, peer: str, now: float) -> list[Effect]:
        self._now = now
        c = Client(cid, peer, now)
        self.clients[cid] = c
        limit = self.config.general.max_client_conn
        if limit and len(self.clients) > limit:
            self._drop_client(c, fatal("53300", "no more connections allowed (max_client_conn)"))
        else:
            c.login_deadline = now + CLIENT_LOGIN_TIMEOUT
            self._logging_in[c] = None
            if self._login_sweep_at is None:
                self._login_sweep_at = c.login_deadline
                self._at(c.login_deadline, self._login_sweep)
        return self._flush()

    def client_data(self, cid: int, data: bytes, now: float) -> list[Effect]:
        self._now = now
        c = self.clients.get(cid)
        if c is None and cid in self._http:
            self._http_data(cid, data)
        elif c is not None and c.state != C_CLOSED:
            try:
                if not self._fast_query(c, data):
                    c.conn.receive_data(data)
                    self._read_client(c)
            except ProtocolError as exc:
                self._drop_client(c, fatal(exc.sqlstate, f"protocol error: {exc}"))
            except ClientFatal as exc:
                self._drop_client(c, exc.error)
            except Exception:  # a bug of ours: it costs this client, never the others
                self._internal_error(f"client {cid}")
                if c.server is not None:
                    self._close_server(c.server)
                self._drop_client(c, _INTERNAL)
        return self._flush()

    def client_closed(self, cid: int, now: float) -> list[Effect]:
        self._now = now
        c = self.clients.get(cid)
        if c is not None:
            self._drop_client(c, None, closed=True)
        else:
            self._http.pop(cid, None)
        return self._flush()

    def server_connected(self, sid: int, now: float) -> list[Effect]:
        self._now = now
        s = self.servers.get(sid)
        if s is not None and s.state == S_CONNECTING:
            if s.purpose == P_CANCEL:
                self._send_cancel(s)
            else:
                s.state = S_LOGIN
                if not self._server_ssl_request(s):
                    self._send_startup(s)
        return self._flush()

    def _send_startup(self, s: ServerConn) -> None:
        group = s.group
        assert group is not None
        if s.purpose == P_AUTH_QUERY:
            user_name = group.cfg.auth_query_user or ""
            database = group.cfg.shards[0].database
        else:
            assert s.pool is not None
            user_name = group.user.backend_username
            database = group.cfg.shards[s.pool.shard].database
        startup = StartupMessage({"user": user_name, "database": database})
        self._send_server(s, s.conn.send(startup))

    def server_failed(self, sid: int, error: str, now: float) -> list[Effect]:
        self._now = now
        s = self.servers.get(sid)
        if s is not None:
            where = f"{s.address.host}:{s.address.port}"
            self._server_gone(
                s,
                fatal("08001", f"could not connect to server {where}: {error}"),
                closed=True,
            )
        return self._flush()

    def server_data(self, sid: int, data: bytes, now: float) -> list[Effect]:
        self._now = now
        s = self.servers.get(sid)
        if s is not None and s.state != S_CLOSED:
            try:
                if s.state != S_ACTIVE or not self._fast_answer(s, data):
                    self._server_bytes(s, data)
            except ProtocolError as exc:
                self._log(logging.WARNING, f"server {self._where(s)}: protocol error: {exc}")
                self._server_gone(s, fatal("08P01", f"server protocol error: {exc}"))
            except ClientFatal as exc:  # a client we were answering turned out broken
                if s.client is not None:
                    self._drop_client(s.client, exc.error)
            except Exception:  # a bug of ours: it costs this connection, not the others
                self._internal_error(f"server {self._where(s)}")
                client = s.client
                self._close_server(s)
                if client is not None:
                    self._drop_client(client, _INTERNAL)
        return self._flush()

    def _server_bytes(self, s: ServerConn, data: bytes) -> None:
        s.conn.receive_data(data)
        if s.state == S_LOGIN:
            self._read_login(s)
            if s.purpose == P_AUTH_QUERY and s.state == S_INTERNAL:
                self._read_auth_query(s)
        elif s.purpose == P_AUTH_QUERY:
            self._read_auth_query(s)
        elif s.purpose == P_PROBE:
            self._read_probe(s)
        else:
            self._read_server(s)

    def server_closed(self, sid: int, now: float) -> list[Effect]:
        self._now = now
        s = self.servers.get(sid)
        if s is not None:
            self._server_gone(
                s, fatal("08006", "the server closed the connection unexpectedly"), closed=True
            )
        return self._flush()

    def client_writable(self, cid: int, writable: bool, now: float) -> list[Effect]:
        """Backpressure: a client that reads slowly stops its server being read."""
        self._now = now
        c = self.clients.get(cid)
        if c is not None:
            c.blocked = not writable
            if c.server is not None:
                self._out.append(ReadServer(c.server.sid, writable))
        return self._flush()

    def server_writable(self, sid: int, writable: bool, now: float) -> list[Effect]:
        """Backpressure: a server that reads slowly (COPY IN) stops its client being read."""
        self._now = now
        s = self.servers.get(sid)
        if s is not None:
            s.blocked = not writable
            if s.client is not None:
                self._out.append(ReadClient(s.client.cid, writable))
        return self._flush()

    def client_tls(self, cid: int, error: str | None, now: float) -> list[Effect]:
        """The frontend's answer to StartTls("client", cid): None, or why it failed."""
        self._now = now
        c = self.clients.get(cid)
        if c is not None and c.state != C_CLOSED:
            self._client_tls_done(c, error)
        return self._flush()

    def server_tls(self, sid: int, error: str | None, now: float) -> list[Effect]:
        """The frontend's answer to StartTls("server", sid): None, or why it failed."""
        self._now = now
        s = self.servers.get(sid)
        if s is not None:
            self._server_tls_done(s, error)
        return self._flush()

    def tick(self, now: float) -> list[Effect]:
        self._now = now
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, fn = heapq.heappop(timers)
            fn()
        self._announced = None
        return self._flush()

    def reload(self, config: Config, now: float) -> list[Effect]:
        """Take a new configuration; pools whose settings changed are rebuilt lazily.

        Their servers are closed as soon as they are not in use (PgBouncer's
        ``close_needed``); clients keep their connections.
        """
        self._now = now
        for warning in listen_changes(self.config.general, config.general):
            self._log(logging.WARNING, warning)
        old = self.groups
        self.config = config
        self._scram_secrets.clear()
        self._build_groups(config)
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
                    if s.state == S_IDLE:
                        self._close_server(s)
        for group in self.groups.values():
            self._prewarm(group)
        self._start_probes()
        self._warn_unimplemented(config)
        self._log(logging.INFO, f"configuration reloaded from {config.path}")
        self._reload_answer(None)
        return self._flush()

    def shutdown(self, now: float, *, wait_for_clients: bool = False) -> list[Effect]:
        """Drain and Exit (SIGINT); or, ``wait_for_clients`` (SIGTERM), refuse new
        clients and Exit when the last one leaves. See :mod:`._control`."""
        self._now = now
        self._begin_shutdown(wait_for_clients=wait_for_clients)
        return self._flush()

    def signal(self, name: str, now: float) -> list[Effect]:
        """The operator's signal ``name`` ("SIGHUP", ...); its meaning is in :mod:`._signals`."""
        return self._signals.handle(self, name, now)

    def next_deadline(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    # === effects and timers ==========================================================

    def _flush(self) -> list[Effect]:
        out = self._out
        if self._timers:
            at = self._timers[0][0]
            if at != self._announced:
                self._announced = at
                out.append(Wakeup(at))
        self._out = []
        return out

    def _at(self, when: float, fn: Callable[[], None]) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, fn))

    def _internal_error(self, where: str) -> None:
        detail = "".join(traceback.format_exc(limit=8))
        self._log(logging.ERROR, f"internal error on {where} (a pgsansio bug):\n{detail}")

    def _log(self, level: int, message: str) -> None:
        self._out.append(Log(level, message))

    def _send_server(self, s: ServerConn, data: bytes) -> None:
        if data:
            self._out.append(SendServer(s.sid, data))

    def _send_client(self, c: Client, event: Event) -> None:
        self._out.append(SendClient(c.cid, c.conn.send(event)))

    # === configuration ===============================================================

    def _build_groups(self, config: Config) -> None:
        self.groups = {}
        for pool_cfg in config.pools.values():
            for user in pool_cfg.users.values():
                self.groups[(pool_cfg.name, user.username)] = PoolGroup(pool_cfg, user)

    def _prewarm(self, group: PoolGroup) -> None:
        if group.user.backend_password is None and group.scram_keys is None:
            return  # auth_query users: no credentials until a client logs in
        if self._pausing and group.name in self.paused:
            return
        for pool in group.all_pools():
            while len(pool.servers) < group.user.min_pool_size:
                self._open_server(pool)

    def _cache_size(self, c: Client) -> int:
        if c.group is None or c.user is None or c.user.pool_mode != "transaction":
            return 0
        return c.group.cfg.prepared_statements_cache_size

    # === clients: startup and authentication =========================================

    def _read_client(self, c: Client) -> None:
        conn = c.conn
        while c.state != C_CLOSED:
            if c.state == C_READY:
                span = conn.next_span()
                if span is _NEED_DATA or span is _PAUSED:
                    return
                if isinstance(span, Span):
                    self._client_span(c, span)
                else:
                    self._drop_client(c, None, closed=True)  # ConnectionClosed (EOF)
                return  # a span holds every whole message received (see _read_server)
            event = conn.next_event()
            if event is _NEED_DATA or event is _PAUSED:
                return
            t = type(event)
            if t is ConnectionClosed:
                self._drop_client(c, None, closed=True)
            elif t is SSLRequest:
                if self._client_ssl_request(c):
                    return  # nothing more is read until the frontend reports client_tls
            elif t is GSSENCRequest:
                self._send_client(c, GSSENCResponse(False))
            elif t is CancelRequest:
                assert isinstance(event, CancelRequest)
                self._cancel_request(c, event)
            elif t is StartupMessage:
                assert isinstance(event, StartupMessage)
                self._check_client_tls(c)
                self._startup(c, event)
            elif c.state == C_AUTH and isinstance(event, Event):
                self._auth_response(c, event)
            else:  # pragma: no cover - the protocol state machine refuses anything else
                raise ClientFatal("08P01", f"unexpected {t.__name__} during login")

    # === clients: queries ============================================================

    def _client_span(self, c: Client, span: Span) -> None:
        if c.admin:
            self._admin_span(c, span)
            return
        group = c.group
        if group is not None and group.cfg.query_parser_enabled and self._custom_command(c, span):
            return
        s = c.server
        events = span.events
        leaving = bool(events) and type(events[-1]) is Terminate
        if s is not None and not s.syncing:
            self._to_server(c, s, span)
            if leaving:
                self._drop_client(c)  # PostgreSQL closes after Terminate; so do we
            else:
                self._after_client_data(c, s)
            return
        if leaving:
            # Nothing of it reached a server yet: what came before Terminate is dropped.
            self._drop_client(c)
            return
        if (
            s is None
            and group is not None
            and not c.pending
            and not c.blocked
            and c.waiting_since is None
        ):
            ready = self._ready_server(c, group)
            if ready is not None:  # what _checkout would do, without the pending list
                self._take(c, ready)
                self._to_server(c, ready, span)
                self._after_client_data(c, ready)
                return
        c.pending.append((span.data, events, span.offsets))
        if s is None and c.waiting_since is None:
            self._checkout(c)

    def _after_client_data(self, c: Client, s: ServerConn) -> None:
        if c.state == C_CLOSED:
            return
        if s.queue:
            s.query_gen += 1
            timeout = c.user.statement_timeout if c.user is not None else 0
            if timeout:
                gen = s.query_gen
                self._at(self._now + timeout / 1000, lambda: self._statement_timeout(s, gen))
        elif s.client is c:
            self._release_if_done(s)

    # === linking clients and servers =================================================

    def _link(self, c: Client, s: ServerConn) -> None:
        if c.blocked:
            self._out.append(ReadServer(s.sid, False))
        if s.blocked:
            self._out.append(ReadClient(c.cid, False))
        self._attach(c, s)
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
            self._send_internal(s, sql, "sync")
        else:
            self._flush_pending(c, s)

    def _attach(self, c: Client, s: ServerConn) -> None:
        """The bookkeeping of giving ``s`` to ``c`` (for _link and the fast lane)."""
        c.server = s
        st = c.stats
        st.server_assignment_count += 1
        if c.waiting_since is not None:
            st.wait_time += self._now - c.waiting_since
            c.waiting_since = None
        s.client = c
        s.state = S_ACTIVE
        s.link_gen += 1
        s.last_used = self._now

    def _flush_pending(self, c: Client, s: ServerConn) -> None:
        pending, c.pending = c.pending, []
        if len(pending) == 1:
            data, events, _ = pending[0]
            first = events[0] if len(events) == 1 else None
            if isinstance(first, Query) and c.state != C_CLOSED and c.server is s:
                # One Query (the fast lane's waiting client): _to_server's work, for less.
                self._send_query(c, s, data, first.sql)
                self._after_client_data(c, s)
                return
        for data, events, offsets in pending:
            if c.state == C_CLOSED or c.server is not s:
                return
            self._to_server(c, s, Span(data, events, offsets))
        if pending and c.state != C_CLOSED and c.server is s:
            self._after_client_data(c, s)

    def _release_if_done(self, s: ServerConn) -> None:
        c = s.client
        if c is None or c.user is None:
            return
        if s.queue or not s.conn.idle:
            return
        if s.conn.transaction_status != "I":
            timeout = self.config.general.idle_client_in_transaction_timeout
            if timeout:
                gen = s.query_gen
                self._at(self._now + timeout / 1000, lambda: self._idle_tx_timeout(c, s, gen))
            return
        if self._shutting_down and not self._wait_for_clients and not c.pending:
            self._drop_client(c, TERMINATING)  # its transaction is over: let it go
            return
        if c.user.pool_mode != "transaction" or c.unnamed_pending or c.pending:
            return
        self._unlink(c, s)
        self._server_free(s)

    def _unlink(self, c: Client, s: ServerConn) -> None:
        if c.blocked:
            self._out.append(ReadServer(s.sid, True))
        if s.blocked and c.state != C_CLOSED:
            self._out.append(ReadClient(c.cid, True))
        c.server = None
        s.client = None
        s.state = S_INTERNAL

    def _internal_query(self, s: ServerConn, sql: str, tag: str) -> None:
        s.state = S_INTERNAL
        self._send_internal(s, sql, tag)

    def _send_internal(self, s: ServerConn, sql: str, tag: str) -> None:
        entry = Entry(K_QUERY, SKIP, tag=tag)
        s.queue.append(entry)
        self._send_server(s, s.conn.send(Query(sql)))
        # Our own queries answer in milliseconds; a server that does not is hung.
        self._at(self._now + INTERNAL_QUERY_TIMEOUT, lambda: self._internal_timeout(s, entry))

    def _internal_timeout(self, s: ServerConn, entry: Entry) -> None:
        if s.state != S_CLOSED and entry in s.queue:
            self._log(
                logging.WARNING,
                f"server {self._where(s)} did not answer our {entry.tag} query within "
                f"{INTERNAL_QUERY_TIMEOUT:g} s; closing it",
            )
            self._server_gone(s, fatal("08006", f"server {self._where(s)} stopped answering"))

    def _internal_done(self, s: ServerConn, entry: Entry) -> None:
        if s.state == S_CLOSED:
            return
        if entry.tag == "healthcheck" and self._health_done(s, entry):
            return
        if entry.error is not None:
            if entry.tag == "sync" and s.client is not None:
                c = s.client
                s.syncing = False
                self._unlink(c, s)
                msg = entry.error.message if isinstance(entry.error, ErrorResponse) else ""
                self._drop_client(
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
                self._server_free(s)
                return
            self._log(logging.WARNING, f"server {self._where(s)}: {entry.tag} failed; closing it")
            self._close_server(s)
            return
        if entry.tag == "sync":
            s.syncing = False
            owner = s.client
            if owner is not None:
                s.applied = dict(owner.settings)
                s.sync_key = owner.sync_key
                self._flush_pending(owner, s)
                return
        if s.client is None and not s.queue and s.state == S_INTERNAL:
            self._server_free(s)

    # === servers: login ==============================================================

    # === servers: data and failure ===================================================

    def _read_server(self, s: ServerConn) -> None:
        conn = s.conn
        while s.state != S_CLOSED:
            span = conn.next_span()
            if span is _NEED_DATA or span is _PAUSED:
                return
            if not isinstance(span, Span):
                self._server_gone(
                    s,
                    fatal("08006", "the server closed the connection unexpectedly"),
                    closed=True,
                )
                return
            self._to_client(s, span)
            # In the query phase a span holds every whole message received; what is
            # left is part of a message, so asking again would only say NEED_DATA.
            return

    def _where(self, s: ServerConn) -> str:
        return f"{s.address.host}:{s.address.port}"

    # === cancel ======================================================================

    # === timeouts ====================================================================

    # === clients: leaving ============================================================
