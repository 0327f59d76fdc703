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

import hashlib
import heapq
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from pgsansio.protocol import NEED_DATA as _NEED_DATA
from pgsansio.protocol import PAUSED as _PAUSED
from pgsansio.protocol import (
    PROTOCOL_3_0,
    AuthenticationCleartextPassword,
    AuthenticationFailed,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    BackendKeyData,
    CancelRequest,
    ConnectionClosed,
    ErrorResponse,
    Event,
    GSSENCRequest,
    GSSENCResponse,
    NegotiateProtocolVersion,
    NoticeResponse,
    ParameterStatus,
    PasswordMessage,
    ProtocolError,
    Query,
    ReadyForQuery,
    SASLInitialResponse,
    SASLResponse,
    ScramClient,
    ScramServer,
    Span,
    SSLRequest,
    SSLResponse,
    StartupMessage,
    Terminate,
    md5_response,
    md5_verify,
)

from ._effects import (
    CloseClient,
    CloseServer,
    Exit,
    Log,
    OpenServer,
    SendClient,
    SendServer,
    Wakeup,
)
from ._objects import (
    C_AUTH,
    C_CLOSED,
    C_READY,
    C_WELCOME,
    K_QUERY,
    P_CANCEL,
    P_POOL,
    S_ACTIVE,
    S_CLOSED,
    S_CONNECTING,
    S_IDLE,
    S_INTERNAL,
    S_LOGIN,
    SKIP,
    Client,
    Entry,
    Pool,
    PoolGroup,
    Prepared,
    ServerConn,
)
from ._params import TRACKED, parse_options, quote_literal, sync_sql, valid_name
from ._relay import ClientFatal, Relay

if TYPE_CHECKING:
    from pgsansio.config_model import Config

    from ._effects import Effect

__all__ = ["Engine"]

ADMIN_DATABASES = ("pgcat", "pgbouncer")
CLIENT_LOGIN_TIMEOUT = 60.0
_EXTENDED_NAMES = frozenset({"Parse", "Bind", "Describe", "Execute", "Close"})
_TRACKED_LOWER = {name.lower(): name for name in TRACKED}


class Engine(Relay):
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
        self._now = 0.0
        self._shutting_down = False
        self._exited = False
        self._scram_secrets: dict[tuple[str, str], str] = {}
        self._build_groups(config)

    # === inputs ======================================================================

    def start(self, now: float) -> list[Effect]:
        self._now = now
        for group in self.groups.values():
            self._prewarm(group)
        return self._flush()

    def client_connected(self, cid: int, peer: str, now: float) -> list[Effect]:
        self._now = now
        c = Client(cid, peer, now)
        self.clients[cid] = c
        limit = self.config.general.max_client_conn
        if self._shutting_down:
            self._drop_client(
                c, _fatal("57P01", "pgsansio is shutting down: no new connections accepted")
            )
        elif limit and len(self.clients) > limit:
            self._drop_client(c, _fatal("53300", "no more connections allowed (max_client_conn)"))
        else:
            c.login_deadline = now + CLIENT_LOGIN_TIMEOUT
            self._at(c.login_deadline, lambda: self._login_timeout(c))
        return self._flush()

    def client_data(self, cid: int, data: bytes, now: float) -> list[Effect]:
        self._now = now
        c = self.clients.get(cid)
        if c is not None and c.state != C_CLOSED:
            try:
                c.conn.receive_data(data)
                self._read_client(c)
            except ProtocolError as exc:
                self._drop_client(c, _fatal(exc.sqlstate, f"protocol error: {exc}"))
            except ClientFatal as exc:
                self._drop_client(c, exc.error)
        return self._flush()

    def client_closed(self, cid: int, now: float) -> list[Effect]:
        self._now = now
        c = self.clients.get(cid)
        if c is not None:
            self._drop_client(c, None, closed=True)
        return self._flush()

    def server_connected(self, sid: int, now: float) -> list[Effect]:
        self._now = now
        s = self.servers.get(sid)
        if s is not None and s.state == S_CONNECTING:
            if s.purpose == P_CANCEL:
                self._send_cancel(s)
            else:
                s.state = S_LOGIN
                assert s.group is not None and s.pool is not None
                user = s.group.user
                shard = s.group.cfg.shards[s.pool.shard]
                startup = StartupMessage(
                    {"user": user.backend_username, "database": shard.database}
                )
                self._send_server(s, s.conn.send(startup))
        return self._flush()

    def server_failed(self, sid: int, error: str, now: float) -> list[Effect]:
        self._now = now
        s = self.servers.get(sid)
        if s is not None:
            where = f"{s.address.host}:{s.address.port}"
            self._server_gone(
                s,
                _fatal("08001", f"could not connect to server {where}: {error}"),
                closed=True,
            )
        return self._flush()

    def server_data(self, sid: int, data: bytes, now: float) -> list[Effect]:
        self._now = now
        s = self.servers.get(sid)
        if s is not None and s.state != S_CLOSED:
            try:
                s.conn.receive_data(data)
                if s.state == S_LOGIN:
                    self._read_login(s)
                else:
                    self._read_server(s)
            except ProtocolError as exc:
                self._log(logging.WARNING, f"server {self._where(s)}: protocol error: {exc}")
                self._server_gone(s, _fatal("08P01", f"server protocol error: {exc}"))
            except ClientFatal as exc:  # a client we were answering turned out broken
                if s.client is not None:
                    self._drop_client(s.client, exc.error)
        return self._flush()

    def server_closed(self, sid: int, now: float) -> list[Effect]:
        self._now = now
        s = self.servers.get(sid)
        if s is not None:
            self._server_gone(
                s, _fatal("08006", "the server closed the connection unexpectedly"), closed=True
            )
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
        old = self.groups
        self.config = config
        self._scram_secrets.clear()
        self._build_groups(config)
        for key, group in old.items():
            new = self.groups.get(key)
            if new is not None and new.cfg == group.cfg and new.user == group.user:
                self.groups[key] = group  # unchanged: keep it, and its connections
                continue
            group.removed = True
            for pool in group.all_pools():
                for s in list(pool.servers):
                    s.close_needed = True
                    if s.state == S_IDLE:
                        self._close_server(s)
        for group in self.groups.values():
            self._prewarm(group)
        self._log(logging.INFO, f"configuration reloaded from {config.path}")
        return self._flush()

    def shutdown(self, now: float) -> list[Effect]:
        """Drain: refuse new clients, let open transactions finish, then Exit."""
        self._now = now
        if not self._shutting_down:
            self._shutting_down = True
            self._log(logging.INFO, "shutting down: waiting for clients to finish")
            for c in list(self.clients.values()):
                if c.server is None:
                    self._drop_client(
                        c, _fatal("57P01", "terminating connection due to administrator command")
                    )
            timeout = self.config.general.shutdown_timeout / 1000
            self._at(now + timeout, self._shutdown_timeout)
            self._maybe_exit()
        return self._flush()

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
                    return
                continue
            event = conn.next_event()
            if event is _NEED_DATA or event is _PAUSED:
                return
            t = type(event)
            if t is ConnectionClosed:
                self._drop_client(c, None, closed=True)
            elif t is SSLRequest:
                # TLS comes with the operations issue; libpq then goes on in clear.
                self._send_client(c, SSLResponse(False))
            elif t is GSSENCRequest:
                self._send_client(c, GSSENCResponse(False))
            elif t is CancelRequest:
                assert isinstance(event, CancelRequest)
                self._cancel_request(c, event)
            elif t is StartupMessage:
                assert isinstance(event, StartupMessage)
                self._startup(c, event)
            elif c.state == C_AUTH and isinstance(event, Event):
                self._auth_response(c, event)
            else:  # pragma: no cover - the protocol state machine refuses anything else
                raise ClientFatal("08P01", f"unexpected {t.__name__} during login")

    def _startup(self, c: Client, msg: StartupMessage) -> None:
        params = msg.params
        c.username = params.get("user", "")
        c.database = params.get("database") or c.username
        if not c.username:
            raise ClientFatal("28000", "no PostgreSQL user name specified in startup packet")
        unknown_options = [k for k in params if k.startswith("_pq_.")]
        if msg.protocol_version != PROTOCOL_3_0 or unknown_options:
            self._send_client(c, NegotiateProtocolVersion(PROTOCOL_3_0, unknown_options))
        if params.get("replication", "false").lower() not in ("false", "off", "no", "0"):
            raise ClientFatal(
                "0A000", "replication connections are not supported through the pooler"
            )
        settings: dict[str, str] = {}
        tracked: dict[str, str] = {}
        for name, value in params.items():
            if name in ("user", "database", "replication") or name.startswith("_pq_."):
                continue
            if name == "options":
                try:
                    pairs = parse_options(value)
                except ValueError as exc:
                    raise ClientFatal("08P01", str(exc)) from None
            else:
                if not valid_name(name):
                    raise ClientFatal("08P01", f"unsupported startup parameter {name!r}")
                pairs = {name: value}
            for key, val in pairs.items():
                canonical = _TRACKED_LOWER.get(key.lower())
                if canonical is not None:
                    tracked[canonical] = val
                else:
                    settings[key.lower()] = quote_literal(val)
        c.params = tracked
        c.settings = settings
        group = self.groups.get((c.database, c.username))
        if c.database in ADMIN_DATABASES and group is None:
            # The admin console comes with the operations issue; until then say so
            # plainly, after a password check so that it reveals nothing.
            c.admin = True
        c.group = group
        c.user = group.user if group is not None else None
        self._challenge(c)

    def _challenge(self, c: Client) -> None:
        user = c.user
        method = self._auth_method(c)
        c.state = C_AUTH
        if method == "trust":
            self._authenticated(c)
        elif method == "scram-sha-256":
            secret = self._scram_secret(c)
            nonce = self.rng.randbytes(18).hex()
            if secret is None:
                server = ScramServer.for_unknown_user(
                    c.username, mock_seed=self._mock_seed, nonce=nonce
                )
            else:
                server = ScramServer(secret, nonce=nonce)
            c.auth = ("scram", server)
            self._send_client(c, AuthenticationSASL(["SCRAM-SHA-256"]))
        else:
            salt = self.rng.randbytes(4)
            c.auth = ("md5", salt)
            self._send_client(c, AuthenticationMD5Password(salt))
        del user

    def _auth_method(self, c: Client) -> str:
        if c.user is not None and not c.admin:
            return c.user.auth_type
        if c.admin:
            return self.config.general.admin_auth_type
        # Unknown user or database: the method most users here have, so that the
        # challenge itself says nothing about who exists.
        methods = [u.auth_type for p in self.config.pools.values() for u in p.users.values()]
        if methods and methods.count("scram-sha-256") > len(methods) // 2:
            return "scram-sha-256"
        return "md5"

    def _password(self, c: Client) -> str | None:
        if c.admin:
            return self.config.general.admin_password or None
        return c.user.password if c.user is not None else None

    def _scram_secret(self, c: Client) -> str | None:
        password = self._password(c)
        if password is None:
            return None
        if password.startswith("SCRAM-SHA-256$"):
            return password
        key = (c.database, c.username)
        secret = self._scram_secrets.get(key)
        if secret is None:
            # Derived once per user (PBKDF2 is slow on purpose) with a salt that is
            # stable for this process, as a stored verifier would be.
            from pgsansio.protocol._auth import scram_verifier  # noqa: PLC0415

            salt = hashlib.sha256(self._mock_seed + c.username.encode()).digest()[:16]
            secret = scram_verifier(password, salt=salt)
            self._scram_secrets[key] = secret
        return secret

    def _auth_response(self, c: Client, event: Event) -> None:
        assert c.auth is not None
        kind, state = c.auth
        failed = _fatal("28P01", f'password authentication failed for user "{c.username}"')
        if kind == "md5":
            if not isinstance(event, PasswordMessage):
                raise ClientFatal("08P01", "expected a password message")
            password = self._password(c)
            assert isinstance(state, bytes)
            ok = (
                password is not None
                and not password.startswith("SCRAM-SHA-256$")
                and md5_verify(c.username, password, state, event.password)
            )
            if not ok:
                self._drop_client(c, failed)
                return
            self._authenticated(c)
            return
        assert isinstance(state, ScramServer)
        try:
            if isinstance(event, SASLInitialResponse):
                if event.mechanism != "SCRAM-SHA-256" or event.data is None:
                    raise ClientFatal("28000", "unsupported SASL mechanism")
                self._send_client(c, AuthenticationSASLContinue(state.server_first(event.data)))
            elif isinstance(event, SASLResponse):
                final = state.server_final(event.data)
                self._send_client(c, AuthenticationSASLFinal(final))
                self._authenticated(c)
            else:
                raise ClientFatal("08P01", "expected a SASL response")
        except AuthenticationFailed:
            self._drop_client(c, failed)

    def _authenticated(self, c: Client) -> None:
        if c.admin:
            raise ClientFatal(
                "0A000",
                "the admin console is not available in this version of pgsansio "
                f'(database "{c.database}")',
            )
        group = c.group
        if group is None or group.removed:
            self._drop_client(
                c, _fatal("28P01", f'password authentication failed for user "{c.username}"')
            )
            return
        self._send_client(c, AuthenticationOk())
        if group.server_params is None:
            c.state = C_WELCOME
            group.login_waiters.append(c)
            if not any(p.opening or p.servers for p in group.all_pools()):
                pool = self._choose_pool(c)
                if len(pool.servers) < group.user.pool_size:
                    self._open_server(pool)
            return
        self._welcome(c)

    def _welcome(self, c: Client) -> None:
        group = c.group
        assert group is not None and group.server_params is not None
        shown = dict(group.server_params)
        for name in TRACKED:
            if name in c.params:
                shown[name] = c.params[name]
            elif name in shown:
                c.params[name] = shown[name]
        for name, value in shown.items():
            self._send_client(c, ParameterStatus(name, value))
        pid = self.rng.randrange(1, 2**31)
        secret = self.rng.randbytes(4)
        c.cancel_key = (pid, secret)
        self._cancel_keys[c.cancel_key] = c
        self._send_client(c, BackendKeyData(pid, secret))
        self._send_client(c, ReadyForQuery("I"))
        c.state = C_READY
        if self.config.general.log_client_connections:
            self._log(
                logging.INFO,
                f'client {c.cid} from {c.peer} logged in as "{c.username}" to "{c.database}"',
            )

    def _login_timeout(self, c: Client) -> None:
        if c.state not in (C_READY, C_CLOSED):
            self._drop_client(c, _fatal("08006", "client login timeout"))

    # === clients: queries ============================================================

    def _client_span(self, c: Client, span: Span) -> None:
        s = c.server
        events = span.events
        leaving = bool(events) and type(events[-1]) is Terminate
        if s is not None and not s.syncing:
            self._to_server(c, s, span)
            if leaving:
                self._drop_client(c, None, closed=True)
            else:
                self._after_client_data(c, s)
            return
        if leaving and s is None:
            self._drop_client(c, None, closed=True)
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

    def _checkout(self, c: Client) -> None:
        group = c.group
        assert group is not None
        pool = self._choose_pool(c)
        c.pool = pool
        while pool.idle:
            s = pool.idle.popleft() if group.cfg is not None and self._fifo() else pool.idle.pop()
            if self._expired(s):
                self._close_server(s)
                continue
            self._link(c, s)
            return
        c.waiting_since = self._now
        c.wait_gen += 1
        gen = c.wait_gen
        pool.waiters.append(c)
        if len(pool.servers) < group.user.pool_size:
            self._open_server(pool)
        timeout = group.user.connect_timeout / 1000
        self._at(self._now + timeout, lambda: self._checkout_timeout(c, gen))

    def _fifo(self) -> bool:
        return self.config.general.server_round_robin

    def _choose_pool(self, c: Client) -> Pool:
        """The address to take a server from: shard 0, by role and load balancing.

        The replicas issue adds query-based routing; here ``default_role`` decides.
        """
        group = c.group
        assert group is not None
        shard = group.pools[0]
        cfg = group.cfg
        if cfg.default_role == "primary":
            candidates = [p for p in shard if p.address.role == "primary"]
        elif cfg.default_role == "replica":
            candidates = [
                p for p in shard if p.address.role != "primary" or cfg.primary_reads_enabled
            ]
        else:
            candidates = list(shard)
        if not candidates:
            candidates = list(shard)
        if len(candidates) == 1:
            return candidates[0]
        self.rng.shuffle(candidates)
        if cfg.load_balancing_mode == "loc":
            candidates.sort(key=lambda p: p.busy + len(p.waiters))
        for pool in candidates:
            if pool.idle:
                return pool
        return candidates[0]

    def _checkout_timeout(self, c: Client, gen: int) -> None:
        if c.state == C_CLOSED or c.waiting_since is None or c.wait_gen != gen:
            return
        assert c.pool is not None and c.user is not None
        c.pool.waiters.remove(c)
        c.waiting_since = None
        pending, c.pending = c.pending, []
        self._log(
            logging.WARNING,
            f'client {c.cid} ("{c.username}" to "{c.database}") waited more than '
            f"connect_timeout ({c.user.connect_timeout} ms) for a server connection",
        )
        error = ErrorResponse.build(
            "53300",
            "no server connection became free within connect_timeout "
            f"({c.user.connect_timeout} ms); all {c.user.pool_size} are busy",
        )
        self._fail_requests(c, pending, error)

    def _fail_requests(
        self, c: Client, pending: list[tuple[bytes, list[Event], list[int]]], error: ErrorResponse
    ) -> None:
        """Answer requests no server will see with ``error``, as a server would."""
        from pgsansio.protocol import FunctionCall, Sync  # noqa: PLC0415

        failed = False
        try:
            for _, events, _ in pending:
                for e in events:
                    t = type(e)
                    if t is Query or t is FunctionCall:
                        self._send_client(c, error)
                        self._send_client(c, ReadyForQuery("I"))
                    elif t is Sync:
                        if not failed:
                            self._send_client(c, error)
                        self._send_client(c, ReadyForQuery("I"))
                        failed = False
                    elif not failed and t.__name__ in _EXTENDED_NAMES:
                        self._send_client(c, error)
                        failed = True
        except ProtocolError:
            self._drop_client(c, _fatal(error.sqlstate or "08P01", error.message or ""))

    # === linking clients and servers =================================================

    def _link(self, c: Client, s: ServerConn) -> None:
        c.server = s
        c.waiting_since = None
        s.client = c
        s.state = S_ACTIVE
        s.link_gen += 1
        s.last_used = self._now
        want = {name: c.params[name] for name in TRACKED if name in c.params}
        sql = sync_sql(want, s.params, c.settings, s.applied)
        if sql:
            s.syncing = True
            s.queue.append(Entry(K_QUERY, SKIP, tag="sync"))
            self._send_server(s, s.conn.send(Query(sql)))
        else:
            self._flush_pending(c, s)

    def _flush_pending(self, c: Client, s: ServerConn) -> None:
        pending, c.pending = c.pending, []
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
        status = s.conn.transaction_status
        timeout = self.config.general.idle_client_in_transaction_timeout
        if status != "I":
            if timeout:
                gen = s.query_gen
                self._at(self._now + timeout / 1000, lambda: self._idle_tx_timeout(c, s, gen))
            return
        if c.user.pool_mode != "transaction" or c.unnamed_pending or c.pending:
            return
        self._unlink(c, s)
        self._server_free(s)

    def _unlink(self, c: Client, s: ServerConn) -> None:
        c.server = None
        s.client = None
        s.state = S_INTERNAL

    def _server_free(self, s: ServerConn) -> None:
        """``s`` has nothing outstanding and no client: clean it, reuse it or close it."""
        pool = s.pool
        assert pool is not None and s.group is not None
        if s.dirty:
            s.dirty = False
            self._internal_query(s, "DISCARD ALL", "reset")
            return
        if s.close_needed or self._expired(s) or s.group.removed:
            self._close_server(s)
            self._refill(pool)
            return
        s.last_used = self._now
        while pool.waiters:
            c = pool.waiters.popleft()
            if c.state != C_CLOSED:
                self._link(c, s)
                return
        s.state = S_IDLE
        pool.idle.append(s)
        idle = s.group.user.idle_timeout / 1000
        if idle:
            used = s.last_used
            self._at(self._now + idle, lambda: self._idle_check(s, used))

    def _internal_query(self, s: ServerConn, sql: str, tag: str) -> None:
        s.state = S_INTERNAL
        s.queue.append(Entry(K_QUERY, SKIP, tag=tag))
        self._send_server(s, s.conn.send(Query(sql)))

    def _internal_done(self, s: ServerConn, entry: Entry) -> None:
        if s.state == S_CLOSED:
            return
        if entry.error is not None:
            if entry.tag == "sync" and s.client is not None:
                c = s.client
                s.syncing = False
                self._unlink(c, s)
                msg = entry.error.message if isinstance(entry.error, ErrorResponse) else ""
                self._drop_client(
                    c,
                    _fatal(
                        entry.error.sqlstate or "22023"
                        if isinstance(entry.error, ErrorResponse)
                        else "22023",
                        f"could not apply the session's settings on a server connection: {msg}",
                    ),
                )
                s.applied.clear()
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
                self._flush_pending(owner, s)
            return
        if s.client is None and not s.queue:
            self._server_free(s)

    # === servers: login ==============================================================

    def _open_server(self, pool: Pool) -> ServerConn:
        self._next_sid += 1
        s = ServerConn(self._next_sid, pool, pool.address, self._now)
        pool.servers.add(s)
        pool.opening += 1
        self.servers[s.sid] = s
        self._out.append(OpenServer(s.sid, pool.address.host, pool.address.port))
        timeout = pool.group.user.connect_timeout / 1000
        self._at(self._now + max(timeout, 1.0) * 5, lambda: self._login_deadline(s))
        return s

    def _login_deadline(self, s: ServerConn) -> None:
        if s.state in (S_CONNECTING, S_LOGIN):
            self._server_gone(
                s, _fatal("08001", f"timed out connecting to server {self._where(s)}")
            )

    def _read_login(self, s: ServerConn) -> None:
        group = s.group
        assert group is not None
        user = group.user
        while s.state == S_LOGIN:
            event = s.conn.next_event()
            if event is _NEED_DATA or event is _PAUSED:
                return
            password = user.backend_password
            if isinstance(event, AuthenticationMD5Password):
                secret = password if password is not None else group.auth_secret
                if secret is None:
                    self._server_gone(s, self._no_password(s))
                    return
                response = md5_response(user.backend_username, secret, event.salt)
                self._send_server(s, s.conn.send(PasswordMessage(response)))
            elif isinstance(event, AuthenticationSASL):
                if "SCRAM-SHA-256" not in event.mechanisms:
                    self._server_gone(
                        s, _fatal("28000", "the server offers no SASL mechanism we support")
                    )
                    return
                if password is not None:
                    client = ScramClient(password)
                elif group.scram_keys is not None:
                    client = ScramClient(
                        client_key=group.scram_keys[0], server_key=group.scram_keys[1]
                    )
                else:
                    self._server_gone(s, self._no_password(s))
                    return
                s.login = client
                first = SASLInitialResponse("SCRAM-SHA-256", client.client_first())
                self._send_server(s, s.conn.send(first))
            elif isinstance(event, AuthenticationSASLContinue):
                assert isinstance(s.login, ScramClient)
                self._send_server(s, s.conn.send(SASLResponse(s.login.client_final(event.data))))
            elif isinstance(event, AuthenticationSASLFinal):
                assert isinstance(s.login, ScramClient)
                s.login.verify_server_final(event.data)
            elif isinstance(event, AuthenticationCleartextPassword):
                if password is None:
                    self._server_gone(s, self._no_password(s))
                    return
                self._send_server(s, s.conn.send(PasswordMessage(password)))
            elif isinstance(event, ParameterStatus):
                s.params[event.name] = event.value
            elif isinstance(event, BackendKeyData):
                s.backend_key = (event.process_id, event.secret_key)
            elif isinstance(event, ErrorResponse):
                self._log(
                    logging.WARNING,
                    f"server {self._where(s)} refused the login of "
                    f'"{user.backend_username}": {event.message}',
                )
                self._server_gone(s, _as_fatal(event))
                return
            elif isinstance(event, ReadyForQuery):
                self._server_ready(s)
                return
            elif isinstance(event, (AuthenticationOk, NoticeResponse, NegotiateProtocolVersion)):
                pass
            elif isinstance(event, ConnectionClosed):
                self._server_gone(
                    s, _fatal("08006", f"server {self._where(s)} closed the connection")
                )
                return
            else:
                self._server_gone(
                    s, _fatal("08P01", f"unexpected {type(event).__name__} during server login")
                )
                return

    def _no_password(self, s: ServerConn) -> ErrorResponse:
        assert s.group is not None
        return _fatal(
            "28P01",
            f'no password configured to log in to the server as "{s.group.user.backend_username}"',
        )

    def _server_ready(self, s: ServerConn) -> None:
        group = s.group
        pool = s.pool
        assert group is not None and pool is not None
        pool.opening -= 1
        s.state = S_INTERNAL
        s.login = None
        if group.server_params is None:
            group.server_params = {
                k: v for k, v in s.params.items() if k not in ("is_superuser",)
            } | {"is_superuser": s.params.get("is_superuser", "off")}
            waiters, group.login_waiters = group.login_waiters, []
            for c in waiters:
                if c.state == C_WELCOME:
                    self._welcome(c)
        self._server_free(s)

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
                    _fatal("08006", "the server closed the connection unexpectedly"),
                    closed=True,
                )
                return
            self._to_client(s, span)

    def _server_gone(self, s: ServerConn, error: ErrorResponse, *, closed: bool = False) -> None:
        """``s`` failed or closed: tell whoever depended on it, then forget it."""
        was = s.state
        c = s.client
        self._close_server(s, send=not closed)
        if s.purpose != P_POOL:
            return
        pool = s.pool
        group = s.group
        assert pool is not None and group is not None
        if c is not None:
            self._drop_client(c, error)
        if was in (S_CONNECTING, S_LOGIN):
            login_failed = True
            if not any(x.state not in (S_CONNECTING, S_LOGIN) for x in pool.servers):
                for w in list(pool.waiters):
                    self._drop_client(w, error)
                pool.waiters.clear()
            if group.server_params is None and not any(p.opening for p in group.all_pools()):
                for w in group.login_waiters:
                    self._drop_client(w, error)
                group.login_waiters = []
            del login_failed
        elif pool.waiters:
            self._refill(pool)

    def _close_server(self, s: ServerConn, *, send: bool = True) -> None:
        if s.state == S_CLOSED:
            return
        if s.state in (S_CONNECTING, S_LOGIN) and s.pool is not None:
            s.pool.opening -= 1
        s.state = S_CLOSED
        self.servers.pop(s.sid, None)
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
            self._out.append(CloseServer(s.sid))
        self._maybe_exit()

    def _refill(self, pool: Pool) -> None:
        """Open a connection if clients wait and the pool has room."""
        if pool.waiters and len(pool.servers) < pool.group.user.pool_size:
            self._open_server(pool)
        elif not pool.group.removed:
            need = pool.group.user.min_pool_size - len(pool.servers)
            for _ in range(max(0, need)):
                self._open_server(pool)

    def _expired(self, s: ServerConn) -> bool:
        assert s.group is not None
        lifetime = s.group.user.server_lifetime / 1000
        return bool(lifetime) and self._now - s.created >= lifetime

    def _idle_check(self, s: ServerConn, used: float) -> None:
        if s.state != S_IDLE or s.last_used != used or s.pool is None:
            return
        if len(s.pool.servers) > s.pool.group.user.min_pool_size:
            self._close_server(s)

    def _where(self, s: ServerConn) -> str:
        return f"{s.address.host}:{s.address.port}"

    # === cancel ======================================================================

    def _cancel_request(self, c: Client, req: CancelRequest) -> None:
        # PostgreSQL answers a cancel request with nothing but closing the connection.
        target = self._cancel_keys.get((req.process_id, req.secret_key))
        self._drop_client(c, None)
        if target is None or target.server is None:
            return  # unknown key, or an idle client: nothing runs, nothing to cancel
        s = target.server
        if s.queue:
            self._cancel_server(s)

    def _cancel_server(self, target: ServerConn) -> None:
        """Cancel what ``target`` runs now, over a new connection, if it still runs it."""
        if target.backend_key is None:
            return
        self._next_sid += 1
        s = ServerConn(self._next_sid, None, target.address, self._now, purpose=P_CANCEL)
        s.login = (target, target.link_gen, target.query_gen)
        self.servers[s.sid] = s
        self._out.append(OpenServer(s.sid, target.address.host, target.address.port))

    def _send_cancel(self, s: ServerConn) -> None:
        login = s.login
        assert isinstance(login, tuple)
        target: ServerConn = login[0]
        link_gen: int = login[1]
        query_gen: int = login[2]
        # A late cancel must not hit the next client's query on that server.
        still = target.state == S_CLOSED or (
            target.link_gen == link_gen and target.query_gen == query_gen and target.queue
        )
        if still and target.backend_key is not None:
            pid, secret = target.backend_key
            self._send_server(s, bytes(CancelRequest(pid, secret)))
        self._close_server(s)

    # === timeouts ====================================================================

    def _statement_timeout(self, s: ServerConn, gen: int) -> None:
        c = s.client
        if c is None or s.query_gen != gen or not s.queue or c.user is None:
            return
        self._log(logging.WARNING, f"client {c.cid}: statement timeout on {self._where(s)}")
        self._drop_client(
            c,
            _fatal(
                "57014",
                f"pool statement timeout: the query ran longer than statement_timeout "
                f"({c.user.statement_timeout} ms)",
            ),
        )

    def _idle_tx_timeout(self, c: Client, s: ServerConn, gen: int) -> None:
        if c.server is not s or s.query_gen != gen or s.queue:
            return
        if s.conn.transaction_status == "I":
            return
        self._drop_client(c, _fatal("25P03", "idle transaction timeout"))

    def _shutdown_timeout(self) -> None:
        for c in list(self.clients.values()):
            self._drop_client(
                c, _fatal("57P01", "terminating connection due to administrator command")
            )
        for s in list(self.servers.values()):
            self._close_server(s)
        self._maybe_exit(force=True)

    def _maybe_exit(self, *, force: bool = False) -> None:
        if not self._shutting_down or self._exited:
            return
        if self.clients and not force:
            return
        for s in list(self.servers.values()):
            if s.state != S_CLOSED:
                s.state = S_CLOSED
                self.servers.pop(s.sid, None)
                self._out.append(CloseServer(s.sid))
        self._exited = True
        self._timers.clear()
        self._out.append(Exit(0))

    # === clients: leaving ============================================================

    def _drop_client(
        self, c: Client, error: ErrorResponse | None = None, *, closed: bool = False
    ) -> None:
        if c.state == C_CLOSED:
            return
        if error is not None and not closed:
            try:
                self._out.append(SendClient(c.cid, c.conn.send(error)))
            except ProtocolError:
                self._out.append(SendClient(c.cid, bytes(error)))
        c.state = C_CLOSED
        self.clients.pop(c.cid, None)
        if self._cancel_keys.get(c.cancel_key) is c:
            del self._cancel_keys[c.cancel_key]
        if not closed:
            self._out.append(CloseClient(c.cid))
        if c.waiting_since is not None and c.pool is not None:
            try:
                c.pool.waiters.remove(c)
            except ValueError:
                pass
            c.waiting_since = None
        if c.group is not None and c in c.group.login_waiters:
            c.group.login_waiters.remove(c)
        for p in c.prepared.values():
            self._unref(p)
        c.prepared.clear()
        c.pending = []
        s = c.server
        if s is not None:
            self._abandon(c, s)
        if self.config.general.log_client_disconnections and c.group is not None:
            self._log(logging.INFO, f"client {c.cid} from {c.peer} disconnected")
        self._maybe_exit()

    def _abandon(self, c: Client, s: ServerConn) -> None:
        """The client left while holding ``s``: make it clean for the next one."""
        self._unlink(c, s)
        if s.state == S_CLOSED:
            return
        busy = any(x.mode != SKIP for x in s.queue) or s.conn.frontend_copy_open
        if busy:
            # A query runs: stop it, and do not wait for it.
            self._cancel_server(s)
            self._close_server(s)
            if s.pool is not None:
                self._refill(s.pool)
            return
        if s.queue:
            return  # our own query (a SET) is running; _internal_done frees it
        assert c.user is not None
        if s.conn.transaction_status != "I":
            self._internal_query(s, "ROLLBACK", "rollback")
        elif c.user.pool_mode == "session":
            self._internal_query(s, self.config.general.server_reset_query, "reset")
        else:
            self._server_free(s)


def _fatal(sqlstate: str, message: str) -> ErrorResponse:
    return ErrorResponse.build(sqlstate, message, "FATAL")


def _as_fatal(error: ErrorResponse) -> ErrorResponse:
    if error.severity in ("FATAL", "PANIC"):
        return error
    return ErrorResponse([(k, "FATAL" if k in "SV" else v) for k, v in error.fields])
