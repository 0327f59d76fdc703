"""Logging clients in (startup packet, authentication, the welcome) and servers in.

The ``Login`` part of the engine. Client authentication is ours (trust, MD5,
SCRAM-SHA-256 against the configured password or a stored verifier); server
authentication answers what the server asks (cleartext, MD5, SCRAM) with the user's
``server_password``/``password``, or with what auth_query pass-through recovered.
Cancel requests arrive as startup packets and are handled here too.

Refusals a client can read (PgBouncer's order): a client refused before it has sent
its startup packet (over ``max_client_conn``) is not answered at once. Its SSLRequest
is answered as for anyone (``N``, or TLS), its GSSENCRequest with ``N``, and the error
goes out after its startup packet, where libpq expects one. Writing it on accept, as
PgCat does, lands in the middle of libpq's SSL negotiation (``sslmode=prefer``, its
default), which then reports "server sent an error response during SSL exchange"
instead of the reason. The refused client is still bound by ``client_login_timeout``.
Other refusals (shutting down, a disabled database, an unknown user) come after the
startup packet already.

``client_login_timeout`` (ms, PgBouncer's key; 60 s by default, 0 = none) bounds the
whole login, from accept to the welcome, so that a client sending its startup packet a
byte at a time cannot hold a connection slot longer.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

from pgsansio import __version__
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
    DataRow,
    ErrorResponse,
    Event,
    GSSENCRequest,
    GSSENCResponse,
    NegotiateProtocolVersion,
    NoticeResponse,
    ParameterStatus,
    PasswordMessage,
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
    md5_response,
    md5_verify,
    scram_verifier,
)

from ._buffers import STREAM_MIN
from ._effects import OpenServer, SendClient
from ._encodings import canonical_encoding
from ._errors import ClientFatal, as_fatal, fatal
from ._eventlog import LOGIN, LOGIN_FAILED, client_tag
from ._objects import (
    P_AUTH_QUERY,
    P_LISTEN,
    P_PROBE,
    Client,
    PoolGroup,
    ServerConn,
)
from ._params import TRACKED, param_sql, parse_options, quote_literal, valid_name
from ._states import (
    C_CLOSED,
    C_READY,
    ClientInput,
    ClientState,
    ServerInput,
    ServerState,
    client_to,
    server_to,
)

if TYPE_CHECKING:
    from pgsansio.config.model import UserConfig

    from ._context import Context
    from ._lending import Lending
    from ._listen import Listen
    from ._peers import Peers
    from ._pooling import Pools
    from ._probes import Probes
    from ._routing import Routes
    from ._stats import Stats
    from ._tls import Tls

__all__ = ["ADMIN_DATABASES", "UNIX_OWNER_PEER", "Login", "fatal"]

UNIX_OWNER_PEER = "unix socket (same OS user)"
"""The peer a frontend reports for a Unix-socket client running as the pooler's own OS
user (SO_PEERCRED). PgBouncer lets such a client into the console without a password
as user ``pgbouncer``, and as anyone when no ``admin_users`` are set; so do we."""

ADMIN_DATABASES = ("pgcat", "pgbouncer")
_CANCELED = ErrorResponse.build("57014", "canceling statement due to user request")
_TRACKED_LOWER = {name.lower(): name for name in TRACKED}
_WELCOMES_KEPT = 64  # distinct ParameterStatus sets kept encoded (see _welcome)


def _client_encoding(value: str) -> str:
    """The name PostgreSQL reports for the encoding a client asked for (the welcome
    shows it before any server has seen the setting); an unknown one is refused."""
    name = canonical_encoding(value)
    if name is None:
        raise ClientFatal("22023", f'invalid value for parameter "client_encoding": "{value}"')
    return name


def _auth_failed(c: Client) -> ErrorResponse:
    """What a client whose login failed is told, whatever the cause (see _refuse)."""
    return fatal("28P01", f'password authentication failed for user "{c.username}"')


def _links_at_login(group: PoolGroup) -> bool:
    """Session mode, and only one server address the client could get: it is linked
    before it is welcomed. With replicas or shards the first query may choose the
    server (PgCat's routing), so those clients are welcomed first, as before."""
    return group.user.pool_mode == "session" and len(group.pools) == 1 and len(group.pools[0]) == 1


class Login:
    """Owns the clients logging in, the cancel keys, the SCRAM secrets and the
    encoded welcome messages."""

    def __init__(
        self,
        ctx: Context,
        *,
        stats: Stats,
        pools: Pools,
        router: Routes,
        lending: Lending,
        probes: Probes,
        tls: Tls,
        listen: Listen,
        peers: Peers,
    ) -> None:
        self.ctx = ctx
        self.peers = peers
        self.stats = stats
        self.pools = pools
        self.router = router
        self.lending = lending
        self.probes = probes
        self.tls = tls
        self.listen = listen
        self.mock_seed = ctx.rng.randbytes(16)
        self.cancel_keys: dict[tuple[int, bytes], Client] = {}
        # a login's ParameterStatus messages, encoded, by (name, value) pairs
        self.welcomes: dict[tuple[tuple[str, str], ...], Span] = {}
        # clients between connecting and logging in, oldest first (see login_sweep)
        self.logging_in: dict[Client, None] = {}
        self.login_sweep_at: float | None = None
        self.scram_secrets: dict[tuple[str, str], str] = {}

    def startup(self, c: Client, msg: StartupMessage) -> None:
        params = msg.params
        c.username = params.get("user", "")
        c.database = params.get("database") or c.username
        if self.ctx.life.shutting_down and c.database not in ADMIN_DATABASES:
            raise ClientFatal("57P01", "pgsansio is shutting down: no new connections accepted")
        if not c.username:
            raise ClientFatal("28000", "no PostgreSQL user name specified in startup packet")
        unknown_options = [k for k in params if k.startswith("_pq_.")]
        if msg.protocol_version != PROTOCOL_3_0 or unknown_options:
            self.ctx.send_client(c, NegotiateProtocolVersion(PROTOCOL_3_0, unknown_options))
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
                if canonical == "client_encoding":
                    tracked[canonical] = _client_encoding(val)
                elif canonical is not None:
                    tracked[canonical] = val
                else:
                    settings[key.lower()] = quote_literal(val)
        if self.ctx.config.general.application_name_add_host:
            # PgBouncer's application_name_add_host: where the client connects from
            name = tracked.get("application_name", "")
            tracked["application_name"] = f"{name} - {c.peer}"
        c.params = tracked
        c.settings = settings
        group = self.pools.find_group(c.database, c.username)
        if c.database in ADMIN_DATABASES and group is None:
            c.admin = True  # the console (see _admin), after the same password check
        c.group = group
        c.user = group.user if group is not None else None
        if group is not None and group.user.password is None and group.cfg.auth_query:
            self._fetch_secret(c, group)
            return
        self._challenge(c)

    def _challenge(self, c: Client) -> None:
        method = self._auth_method(c)
        client_to(c, ClientInput.CHALLENGED)
        if method == "trust":
            self._authenticated(c)
        elif method == "scram-sha-256":
            secret = self._scram_secret(c)
            nonce = self.ctx.rng.randbytes(18).hex()
            if secret is None:
                server = ScramServer.for_unknown_user(
                    c.username, mock_seed=self.mock_seed, nonce=nonce
                )
            else:
                server = ScramServer(secret, nonce=nonce)
            c.auth = ("scram", server)
            self.ctx.send_client(c, AuthenticationSASL(["SCRAM-SHA-256"]))
        else:
            salt = self.ctx.rng.randbytes(4)
            c.auth = ("md5", salt)
            self.ctx.send_client(c, AuthenticationMD5Password(salt))

    def _auth_method(self, c: Client) -> str:
        if c.user is not None and not c.admin:
            if c.user.password is None and c.group is not None and c.group.cfg.auth_query:
                # auth_query pass-through: the stored secret decides, as in PgBouncer
                # ("md5" uses SCRAM when the secret is a SCRAM verifier).
                secret = c.group.auth_secret or ""
                if secret.startswith("SCRAM-SHA-256$"):
                    return "scram-sha-256"
                return "trust" if c.user.auth_type == "trust" and secret else "md5"
            return c.user.auth_type
        if c.admin:
            if self._peer_admin(c):
                return "trust"
            console = self._console_user(c)
            if console is not None:
                return console.auth_type
            method: str = self.ctx.config.general.admin_auth_type
            return method
        # Unknown user or database: the method most users here have, so that the
        # challenge itself says nothing about who exists.
        methods = [u.auth_type for p in self.ctx.config.pools.values() for u in p.users.values()]
        if methods and methods.count("scram-sha-256") > len(methods) // 2:
            return "scram-sha-256"
        return "md5"

    def _password(self, c: Client) -> str | None:
        if c.admin:
            general = self.ctx.config.general
            if c.username != general.admin_username:
                console = self._console_user(c)
                return console.password if console is not None else None
            return general.admin_password or None
        if c.user is None:
            return None
        if c.user.password is None and c.group is not None and c.group.cfg.auth_query:
            return c.group.auth_secret
        return c.user.password

    def _scram_secret(self, c: Client) -> str | None:
        password = self._password(c)
        if password is None:
            return None
        if password.startswith("SCRAM-SHA-256$"):
            return password
        key = (c.database, c.username)
        secret = self.scram_secrets.get(key)
        if secret is None:
            # Derived once per user (PBKDF2 is slow on purpose) with a salt that is
            # stable for this process, as a stored verifier would be.
            salt = hashlib.sha256(self.mock_seed + c.username.encode()).digest()[:16]
            secret = scram_verifier(password, salt=salt)
            self.scram_secrets[key] = secret
        return secret

    def auth_response(self, c: Client, event: Event) -> None:
        assert c.auth is not None
        kind, state = c.auth
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
                self._refuse(c, _auth_failed(c))
                return
            self._authenticated(c)
            return
        assert isinstance(state, ScramServer)
        try:
            if isinstance(event, SASLInitialResponse):
                if event.mechanism != "SCRAM-SHA-256" or event.data is None:
                    raise ClientFatal("28000", "unsupported SASL mechanism")
                self.ctx.send_client(c, AuthenticationSASLContinue(state.server_first(event.data)))
            elif isinstance(event, SASLResponse):
                final = state.server_final(event.data)
                self.ctx.send_client(c, AuthenticationSASLFinal(final))
                group = c.group
                if (
                    group is not None
                    and c.user is not None
                    and (c.user.password is None or c.user.password.startswith("SCRAM-SHA-256$"))
                    and state.client_key is not None
                ):
                    # Pass-through: the proof gave us ClientKey, which logs us in to
                    # servers that hold the same verifier.
                    group.scram_keys = (state.client_key, state.verifier.server_key)
                self._authenticated(c)
            else:
                raise ClientFatal("08P01", "expected a SASL response")
        except AuthenticationFailed:
            self._refuse(c, _auth_failed(c))

    def _authenticated(self, c: Client) -> None:
        if c.admin:
            self.admin_welcome(c)
            return
        if c.database in self.ctx.life.disabled:
            raise ClientFatal("57P03", f'database "{c.database}" is disabled (DISABLE); try later')
        group = c.group
        if group is not None and group.removed:
            # A reload while this client was logging in: take the pool's new version.
            group = self.pools.find_group(group.name, group.user.username)
            if group is not None:
                c.group, c.user = group, group.user
        if group is None or group.removed:
            self._refuse(c, _auth_failed(c))
            return
        self.ctx.send_client(c, AuthenticationOk())
        if _links_at_login(group):
            # Session mode: the server comes first, so that the welcome carries its own
            # process ID and parameters (welcome_linked), as a direct connection would.
            client_to(c, ClientInput.AUTHENTICATED)
            c.stats = self.stats.stats_for(group.name)  # its wait and assignment count
            self.lending.checkout(c)
            return
        if group.server_params is None:
            client_to(c, ClientInput.AUTHENTICATED)
            group.login_waiters.append(c)
            if not any(p.opening or p.servers for p in group.all_pools()):
                pool = self.router.choose_pool(c)
                if len(pool.servers) < group.user.pool_size:
                    self.pools.grow(pool)
            return
        self._welcome(c)

    def welcome_linked(self, c: Client, s: ServerConn) -> None:
        """Welcome a session-mode client whose server is linked and set up: what that
        server reports, and its real process ID (pg_backend_pid(), the pid in a
        NotificationResponse and pg_terminate_backend all agree with the client's).
        The secret key stays ours, so cancel requests still come to us and are checked."""
        self._welcome(c, s)

    def _welcome(self, c: Client, s: ServerConn | None = None) -> None:
        group = c.group
        assert group is not None and group.server_params is not None
        if not group.cfg.query_parser_enabled and len(group.cfg.shards) == 1:
            c.conn.stream_min = STREAM_MIN  # long messages pass in pieces (_buffers)
        shown = dict(group.server_params)
        if s is not None:  # the names a server reports at login, with its values now
            shown = {name: s.params.get(name, value) for name, value in shown.items()}
        sent: dict[str, str] = {}  # what the startup packet set: RESET goes back to it
        for name in TRACKED:
            if name not in shown:
                # Not reported by this server version (search_path before 18): keep
                # it as a plain setting, re-applied like any other.
                value = c.params.pop(name, None)
                if value is not None:
                    c.settings[name.lower()] = param_sql(name, value)
                continue
            if name in c.params:
                sent[name] = c.params[name]
            if name in c.params and s is None:
                shown[name] = c.params[name]
            else:  # a linked server reports the client's settings in its own spelling
                c.params[name] = shown[name]
        c.startup = (sent, dict(c.settings))
        # One write for the whole welcome (and the AuthenticationOk just before it), not
        # one per message: a frontend writes each effect with its own system call, and
        # a client that connects per transaction (pgbench -C) pays them all each time.
        conn = c.conn
        key = tuple(shown.items())
        cached = self.welcomes.get(key)
        if cached is None:
            # Clients of a pool mostly see the same parameters: encode them once.
            if len(self.welcomes) >= _WELCOMES_KEPT:
                self.welcomes.clear()
            events: list[Event] = [ParameterStatus(name, value) for name, value in key]
            encoded = [bytes(e) for e in events]
            offsets, at = [], 0
            for b in encoded:
                offsets.append(at)
                at += len(b)
            cached = self.welcomes[key] = Span(b"".join(encoded), events, offsets)
        parts = [conn.send_span(cached)]  # checked and fed to the client's state as sent
        pid = self.ctx.rng.randrange(1, 2**31)
        if s is not None and s.backend_key is not None:
            pid = s.backend_key[0]
        secret = self.peers.secret()
        c.cancel_key = (pid, secret)
        self.cancel_keys[c.cancel_key] = c
        parts.append(conn.send(BackendKeyData(pid, secret)))
        parts.append(conn.send(ReadyForQuery("I")))
        out = self.ctx.out
        last = out[-1] if out else None
        if type(last) is SendClient and last.cid == c.cid:
            parts.insert(0, last.data)
            out[-1] = SendClient(c.cid, b"".join(parts))
        else:
            out.append(SendClient(c.cid, b"".join(parts)))
        client_to(c, ClientInput.LOGGED_IN)
        self.logging_in.pop(c, None)
        c.stats = self.stats.stats_for(group.name)
        c.stats.client_login_count += 1
        self._log_login(c, "")

    def _log_login(self, c: Client, what: str) -> None:
        general = self.ctx.config.general
        if (general.log_connections or general.log_client_connections) and self.ctx.admits(LOGIN):
            self.ctx.log(
                logging.INFO,
                f"{client_tag(c)} login attempt: db={c.database} user={c.username} "
                f"tls={'yes' if c.tls else 'no'}{what}",
            )

    def _refuse(self, c: Client, error: ErrorResponse) -> None:
        """End a login that failed, after logging its real cause (the client is told
        only "password authentication failed", whatever it was, so that the answer
        does not tell a stranger which databases and users exist)."""
        if self.ctx.config.general.log_pooler_errors:
            self.ctx.event(
                LOGIN_FAILED,
                logging.WARNING,
                f"{client_tag(c)} login failed: {self._why_refused(c)} (the client is told "
                '"password authentication failed", whatever the cause)',
            )
        self.ctx.drop_client(c, error)

    def _why_refused(self, c: Client) -> str:
        config = self.ctx.config
        if c.admin:
            general = config.general
            if c.username != general.admin_username and c.username not in (
                general.admin_users + general.stats_users
            ):
                return (
                    f'user "{c.username}" may not use the admin console (not admin_username,'
                    " admin_users or stats_users)"
                )
            return "wrong password for the admin console"
        group = c.group
        if group is None:
            if c.database not in config.pools:
                return f'no such database: "{c.database}" (no [pools.{c.database}] section)'
            return f'no such user: "{c.username}" is not a user of pool "{c.database}"'
        if group.removed:
            return f'pool "{c.database}" was removed by a reload while the client logged in'
        if self._password(c) is None:
            return "no password is known for this user (auth_query found none)"
        return "wrong password"

    def read(self, c: Client) -> None:
        """Read what ``c`` sent while logging in: until it is logged in or gone, more
        bytes are needed, or the frontend must first do the TLS handshake."""
        conn = c.conn
        while c.state is not C_CLOSED and c.state is not C_READY:
            event = conn.next_event()
            if event is _NEED_DATA or event is _PAUSED:
                return
            t = type(event)
            if t is ConnectionClosed:
                self.ctx.drop_client(c, None, closed=True)
            elif t is SSLRequest:
                if self.tls.client_ssl_request(c):
                    return  # nothing more is read until the frontend reports client_tls
            elif t is GSSENCRequest:
                self.ctx.send_client(c, GSSENCResponse(False))
            elif t is CancelRequest:
                assert isinstance(event, CancelRequest)
                self.cancel_request(c, event)
            elif t is StartupMessage:
                assert isinstance(event, StartupMessage)
                if c.refusal is not None:
                    self.ctx.drop_client(c, c.refusal)  # now libpq can read it
                    return
                self.tls.check_client_tls(c)
                self.startup(c, event)
            elif c.state is ClientState.AUTH and isinstance(event, Event):
                self.auth_response(c, event)
            else:  # pragma: no cover - the protocol state machine refuses anything else
                raise ClientFatal("08P01", f"unexpected {t.__name__} during login")

    def connected(self, c: Client) -> None:
        """A new client: given ``client_login_timeout`` to log in, and refused after
        its startup packet when over ``max_client_conn`` (see the module)."""
        self.ctx.clients[c.cid] = c
        general = self.ctx.config.general
        limit = general.max_client_conn
        if limit and len(self.ctx.clients) > limit:
            c.refusal = fatal("53300", "no more connections allowed (max_client_conn)")
        if not general.client_login_timeout:
            return
        c.login_deadline = self.ctx.now + general.client_login_timeout / 1000
        self.logging_in[c] = None
        if self.login_sweep_at is None:
            self.login_sweep_at = c.login_deadline
            self.ctx.at(c.login_deadline, self.login_sweep)

    def login_sweep(self) -> None:
        """Drop the clients still logging in after ``client_login_timeout``.

        One timer for all of them, not one per connection: a client that logs in (or
        leaves) is taken out of ``_logging_in`` at once, while a timer of its own would
        stay in the heap for the whole timeout -- at thousands of connections a second,
        a heap of stale entries. The timeout is the same for everyone and ``now`` never
        goes back, so ``_logging_in`` (a dict, in insertion order) is in deadline order
        and the sweep looks at no more than the expired clients and the next one. (A
        reload that shortens the timeout reaches new clients no later than the old
        timeout would have.)"""
        self.login_sweep_at = None
        waiting = self.logging_in
        while waiting:
            c = next(iter(waiting))
            if c.login_deadline > self.ctx.now:
                self.login_sweep_at = c.login_deadline
                self.ctx.at(c.login_deadline, self.login_sweep)
                return
            del waiting[c]
            self.ctx.drop_client(c, fatal("08006", "client login timeout"))

    def read_login(self, s: ServerConn) -> None:
        group = s.group
        assert group is not None
        user = group.user
        login_user = user.backend_username
        password = user.backend_password
        if s.purpose == P_AUTH_QUERY:
            login_user = group.cfg.auth_query_user or ""
            password = group.cfg.auth_query_password
        while s.state is ServerState.LOGIN:
            event = s.conn.next_event()
            if event is _NEED_DATA or event is _PAUSED:
                return
            if isinstance(event, AuthenticationMD5Password):
                secret = password if password is not None else group.auth_secret
                if secret is None:
                    self.ctx.server_gone(s, self._no_password(s))
                    return
                response = md5_response(login_user, secret, event.salt)
                self.ctx.send_server(s, s.conn.send(PasswordMessage(response)))
            elif isinstance(event, AuthenticationSASL):
                if "SCRAM-SHA-256" not in event.mechanisms:
                    self.ctx.server_gone(
                        s, fatal("28000", "the server offers no SASL mechanism we support")
                    )
                    return
                if password is not None and not password.startswith("SCRAM-SHA-256$"):
                    client = ScramClient(password)
                elif group.scram_keys is not None and s.purpose != P_AUTH_QUERY:
                    client = ScramClient(
                        client_key=group.scram_keys[0], server_key=group.scram_keys[1]
                    )
                else:
                    self.ctx.server_gone(s, self._no_password(s))
                    return
                s.login = client
                first = SASLInitialResponse("SCRAM-SHA-256", client.client_first())
                self.ctx.send_server(s, s.conn.send(first))
            elif isinstance(event, AuthenticationSASLContinue):
                assert isinstance(s.login, ScramClient)
                self.ctx.send_server(
                    s, s.conn.send(SASLResponse(s.login.client_final(event.data)))
                )
            elif isinstance(event, AuthenticationSASLFinal):
                assert isinstance(s.login, ScramClient)
                s.login.verify_server_final(event.data)
            elif isinstance(event, AuthenticationCleartextPassword):
                if password is None:
                    self.ctx.server_gone(s, self._no_password(s))
                    return
                self.ctx.send_server(s, s.conn.send(PasswordMessage(password)))
            elif isinstance(event, ParameterStatus):
                s.params[event.name] = event.value
            elif isinstance(event, BackendKeyData):
                s.backend_key = (event.process_id, event.secret_key)
            elif isinstance(event, ErrorResponse):
                self.ctx.log(
                    logging.WARNING,
                    f"server {self.ctx.where(s)} refused the login of "
                    f'"{user.backend_username}": {event.message}',
                )
                self.ctx.server_gone(s, as_fatal(event))
                return
            elif isinstance(event, ReadyForQuery):
                if s.purpose == P_PROBE:
                    self.probes.probe_ready(s)
                    return
                if s.purpose == P_LISTEN:
                    self.listen.ready(s)
                    return
                if s.purpose == P_AUTH_QUERY:
                    server_to(s, ServerInput.LOGGED_IN)
                    self.ctx.send_server(s, s.conn.send(Query(self._auth_query_sql(s))))
                    return
                self._server_ready(s)
                return
            elif isinstance(event, SSLResponse):  # our SSLRequest's answer (server_tls)
                self.tls.server_ssl_answer(s, event.accepted)
                return  # in TLS, nothing more is read until the frontend's server_tls
            elif isinstance(event, (AuthenticationOk, NoticeResponse, NegotiateProtocolVersion)):
                pass
            elif isinstance(event, ConnectionClosed):
                self.ctx.server_gone(
                    s, fatal("08006", f"server {self.ctx.where(s)} closed the connection")
                )
                return
            else:
                self.ctx.server_gone(
                    s, fatal("08P01", f"unexpected {type(event).__name__} during server login")
                )
                return

    def _no_password(self, s: ServerConn) -> ErrorResponse:
        assert s.group is not None
        return fatal(
            "28P01",
            f'no password configured to log in to the server as "{s.group.user.backend_username}"',
        )

    def _server_ready(self, s: ServerConn) -> None:
        group = s.group
        pool = s.pool
        assert group is not None and pool is not None
        pool.opening -= 1
        server_to(s, ServerInput.LOGGED_IN)
        s.login = None
        # server_lifetime counts from here: a login slower than a short lifetime must
        # not make every new connection expire before anyone could use it.
        s.created = self.ctx.now
        if group.server_params is None:
            group.server_params = {
                k: v for k, v in s.params.items() if k not in ("is_superuser",)
            } | {"is_superuser": s.params.get("is_superuser", "off")}
            waiters, group.login_waiters = group.login_waiters, []
            for c in waiters:
                if c.state is ClientState.WELCOME:
                    self._welcome(c)
        self.pools.server_free(s)

    def cancel_request(self, c: Client, req: CancelRequest) -> None:
        # PostgreSQL answers a cancel request with nothing but closing the connection.
        self.ctx.drop_client(c, None)
        if self.peers.forward(req.secret_key, bytes(req)):
            return  # another worker's client (see _peers)
        target = self.cancel_keys.get((req.process_id, req.secret_key))
        if target is not None:
            self._cancel(target)

    def _cancel(self, target: Client) -> None:
        if target.server is None and target.fanout is not None:
            # A cross-shard query (see _fanout): cancel each shard's part.
            for leg in list(target.fanout.legs):
                if leg.state is not C_CLOSED:
                    self._cancel(leg)
            return
        if target.server is None:
            if target.waiting_since is not None and target.pool is not None:
                # Still queued for a server: cancel it here, as if it had started.
                target.pool.waiters.remove(target)
                target.waiting_since = None
                pending, target.pending = target.pending, []
                self.lending.fail_requests(target, pending, _CANCELED)
            return  # an idle client: nothing runs, nothing to cancel
        s = target.server
        if s.queue:
            self.pools.cancel_server(s)

    # --- auth_query pass-through ---------------------------------------------------

    def _fetch_secret(self, c: Client, group: PoolGroup) -> None:
        """Ask the server for the user's secret (PgCat's and PgBouncer's auth_query)."""
        client_to(c, ClientInput.FETCHING)
        group.fetch_waiters.append(c)
        if len(group.fetch_waiters) > 1:
            return  # a fetch is already running; its answer serves everyone
        shard = group.cfg.shards[0]
        address = next((a for a in shard.servers if a.role == "primary"), shard.servers[0])
        self.ctx.next_sid += 1
        s = ServerConn(self.ctx.next_sid, None, address, self.ctx.now, purpose=P_AUTH_QUERY)
        s.group = group
        self.ctx.servers[s.sid] = s
        self.ctx.out.append(OpenServer(s.sid, address.host, address.port))

    def _auth_query_sql(self, s: ServerConn) -> str:
        assert s.group is not None
        query = s.group.cfg.auth_query or ""
        return query.replace("'$1'", "$1").replace("$1", quote_literal(s.group.user.username))

    def read_auth_query(self, s: ServerConn) -> None:
        group = s.group
        assert group is not None
        while s.state is not ServerState.CLOSED:
            event = s.conn.next_event()
            if event is _NEED_DATA or event is _PAUSED:
                return
            if isinstance(event, DataRow):
                values = event.values
                if len(values) >= 2 and values[1] is not None:
                    s.login = values[1].decode("utf-8", "replace")
                elif len(values) == 1 and values[0] is not None:
                    s.login = values[0].decode("utf-8", "replace")
            elif isinstance(event, ErrorResponse):
                self.ctx.log(
                    logging.WARNING,
                    f'auth_query for "{group.user.username}" failed: {event.message}',
                )
                s.login = None
            elif isinstance(event, ReadyForQuery):
                secret = s.login if isinstance(s.login, str) and s.login else None
                self.pools.close_server(s)
                group.auth_secret = secret
                waiters, group.fetch_waiters = group.fetch_waiters, []
                for c in waiters:
                    if c.state is ClientState.FETCH:
                        self._challenge(c)
                return
            elif isinstance(event, ConnectionClosed):
                self.ctx.server_gone(s, fatal("08006", "the auth_query connection was closed"))
                return

    def auth_query_failed(self, s: ServerConn, error: ErrorResponse) -> None:
        group = s.group
        if group is None:
            return
        waiters, group.fetch_waiters = group.fetch_waiters, []
        for c in waiters:
            self.ctx.drop_client(c, error)

    def _console_user(self, c: Client) -> UserConfig | None:
        """A user of ``admin_users``/``stats_users`` (other than admin_username), with
        the secret and method it has in the pools, as PgBouncer takes them from its
        auth_file."""
        general = self.ctx.config.general
        if c.username == general.admin_username or (
            c.username not in general.admin_users and c.username not in general.stats_users
        ):
            return None
        for pool in self.ctx.config.pools.values():
            user = pool.users.get(c.username)
            if user is not None:
                return user
        return None

    def _peer_admin(self, c: Client) -> bool:
        return c.peer == UNIX_OWNER_PEER and (
            c.username == "pgbouncer" or not self.ctx.config.general.admin_username
        )

    def admin_welcome(self, c: Client) -> None:
        general = self.ctx.config.general
        named = c.username in general.admin_users or c.username in general.stats_users
        allowed = (general.admin_username and c.username == general.admin_username) or named
        if not allowed and not self._peer_admin(c):
            self._refuse(c, _auth_failed(c))
            return
        c.stats_only = (
            c.username in general.stats_users
            and c.username not in general.admin_users
            and c.username != general.admin_username
            and not self._peer_admin(c)
        )
        self.ctx.send_client(c, AuthenticationOk())
        for name, value in (
            ("server_version", f"pgsansio {__version__}"),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("TimeZone", "UTC"),
            ("standard_conforming_strings", "on"),
            ("integer_datetimes", "on"),
            ("is_superuser", "on"),
            ("application_name", c.params.get("application_name", "")),
        ):
            self.ctx.send_client(c, ParameterStatus(name, value))
        self.ctx.send_client(
            c, BackendKeyData(self.ctx.rng.randrange(1, 2**31), self.ctx.rng.randbytes(4))
        )
        self.ctx.send_client(c, ReadyForQuery("I"))
        client_to(c, ClientInput.LOGGED_IN)
        self.logging_in.pop(c, None)
        self._log_login(c, " (admin console)")
