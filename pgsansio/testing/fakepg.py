"""A fake PostgreSQL server built from :mod:`pgsansio.protocol`, for testing poolers.

Sans-IO like the rest of pgsansio: a :class:`FakeServer` is one backend connection.
Feed it what a client (a pooler) sends with ``receive(data, now)`` and write back what
it returns; call ``tick(now)`` when ``deadline`` passes; stop when ``closed``. No
sockets, no clock, no threads, so a simulation can run thousands of them in one
process, deterministically from a seed.

All the backends of one simulated cluster share a :class:`Database`: its users, its
tables, the cancel-key registry (so a CancelRequest on a new connection reaches the
right backend, as in PostgreSQL) and the fault knobs. The SQL they understand is the
small dialect of :mod:`pgsansio.testing.fakesql`.

What is faithful, because a pooler depends on it:

* startup: SSL/GSS requests answered ``N``; trust, cleartext, MD5 and SCRAM-SHA-256
  logins with PostgreSQL's error codes; ParameterStatus for every ``GUC_REPORT``
  parameter; BackendKeyData (a 32-byte key under protocol 3.2); ReadyForQuery.
* transactions: ``I``/``T``/``E`` status, implicit transactions for multi-statement
  queries and for extended-protocol batches, writes visible at COMMIT only, SET rolled
  back with the transaction, ``SET LOCAL``; changed reported parameters are sent just
  before ReadyForQuery, as PostgreSQL 14 and later do.
* the extended protocol: named and unnamed statements and portals per connection,
  ``26000`` for an unknown statement, ``42P05`` for a duplicate, ``34000`` for an
  unknown portal, discard-until-Sync after an error, ``PortalSuspended``.
* ``pg_sleep`` takes simulated time (the answer comes from ``tick``), and a
  CancelRequest or ``statement_timeout`` interrupts it with ``57014``.

Ownership checking: statements may carry a client tag (a ``/* tag:X */`` comment, or
a first Bind parameter ``tag:X``). Between two ReadyForQuery ``I`` messages -- one
pooled transaction -- every tagged statement must carry the same tag; otherwise the
pooler handed one server to two clients at once, and a line is added to
:attr:`Database.violations`. A protocol violation by the pooler is recorded there too.
"""

from __future__ import annotations

import base64
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from pgsansio.protocol import (
    NEED_DATA,
    PAUSED,
    PROTOCOL_3_2,
    SERVER,
    AuthenticationCleartextPassword,
    AuthenticationFailed,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    BackendKeyData,
    CancelRequest,
    Connection,
    ConnectionClosed,
    ErrorResponse,
    Event,
    GSSENCRequest,
    GSSENCResponse,
    NegotiateProtocolVersion,
    ParameterStatus,
    PasswordMessage,
    ProtocolError,
    ReadyForQuery,
    SASLInitialResponse,
    SASLResponse,
    ScramServer,
    ScramVerifier,
    SSLRequest,
    SSLResponse,
    StartupMessage,
    md5_verify,
)

from . import fakesql
from ._fakequery import QueryMixin

__all__ = ["Database", "FakeServer", "FakeUser"]

_FATAL = "FATAL"


@dataclass
class FakeUser:
    """A role: its password and how ``pg_hba.conf`` says it must log in.

    ``auth`` is ``trust``, ``password`` (cleartext), ``md5`` or ``scram-sha-256``.
    """

    password: str | None
    auth: str = "md5"
    superuser: bool = False


@dataclass
class Database:
    """One simulated cluster: what its backends share.

    Attributes:
        users: roles by name (a plain string is an MD5 user's password).
        databases: the database names that exist; empty means any name.
        tables: committed rows per table.
        backends: live, logged-in backends by process ID (the cancel registry).
        violations: what the fake saw a pooler do wrong; a test asserts it is empty.
        stats: counters (``logins``, ``statements``, ``cancels``, ``cancels_wrong_key``,
            ``cancels_unknown_pid`` ...).
        on_wake: called with a backend that has something to say without having been
            sent anything (a cancelled sleep, a termination): call its ``tick`` soon.
        on_statement: called with each statement a backend is about to execute.
        on_message: called with every message a backend receives (``False``) or sends
            (``True``), for tracing.

    Fault knobs (read when a backend starts up, except ``stall_queries``):
        accepting: False makes the *simulator* fail TCP connects.
        refuse_logins: ``(sqlstate, message)`` answered as FATAL to every startup.
        max_connections: more logged-in backends than this get FATAL 53300.
        stall_logins: new connections never answer the startup packet.
        stall_queries: backends stop answering anything after login.

    Replication (for pooler tests of replicas and failover):
        in_recovery: a standby: ``pg_is_in_recovery()`` is true, writes fail with 25006
            as on a hot standby, ``pg_current_wal_lsn()`` fails with 55000.
        wal_lsn: the WAL position: ``pg_current_wal_lsn()`` on a primary (each row
            written moves it on by 100 bytes), ``pg_last_wal_replay_lsn()`` on a standby
            (set it to simulate replay progress).
    """

    users: Mapping[str, FakeUser | str] = field(default_factory=dict)
    databases: Iterable[str] = ()
    seed: int = 0
    name: str = "fakepg"
    server_version: str = "16.4"
    scram_iterations: int = 4096
    first_pid: int = 10000
    accepting: bool = True
    refuse_logins: tuple[str, str] | None = None
    max_connections: int | None = None
    stall_logins: bool = False
    stall_queries: bool = False
    in_recovery: bool = False
    wal_lsn: int = 0x1000000
    on_wake: Callable[[FakeServer], None] | None = None
    on_statement: Callable[[FakeServer, fakesql.Plan], None] | None = None
    on_message: Callable[[FakeServer, Event, bool], None] | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(f"{self.name}:{self.seed}")
        self.users = {
            name: FakeUser(u) if isinstance(u, str) else u for name, u in self.users.items()
        }
        self.databases = frozenset(self.databases)
        self.tables: dict[str, list[tuple[str | None, ...]]] = {}
        self.backends: dict[int, FakeServer] = {}
        self.violations: list[str] = []
        self.stats: Counter[str] = Counter()
        self._next_pid = self.first_pid
        self._verifiers: dict[str, ScramVerifier] = {}

    def connect(self, now: float = 0.0) -> FakeServer:
        """A new backend for a freshly accepted connection."""
        return FakeServer(self, now)

    def violation(self, message: str) -> None:
        self.violations.append(f"{self.name}: {message}")

    def crash_all(self) -> None:
        """The whole server dies (``pg_ctl stop -m immediate``): every backend drops its
        connection and new connections are refused until ``accepting`` is set again."""
        self.accepting = False
        for backend in list(self.backends.values()):
            backend.crash()

    def rows(self, table: str) -> list[tuple[str | None, ...]]:
        """The committed rows of ``table`` (empty if it never had any)."""
        return list(self.tables.get(table, ()))

    # --- used by the backends -----------------------------------------------------

    def _new_pid(self) -> int:
        self._next_pid += 1
        return self._next_pid

    def _verifier(self, user: str, password: str) -> ScramVerifier:
        # Derived once per user: PBKDF2 is the slow part of a SCRAM login.
        if user not in self._verifiers:
            salt = self.rng.randbytes(16)
            self._verifiers[user] = ScramVerifier.from_password(
                password, salt=salt, iterations=self.scram_iterations
            )
        return self._verifiers[user]

    def _nonce(self) -> str:
        return base64.b64encode(self.rng.randbytes(18)).decode("ascii")

    def signal(self, pid: int, kind: str, secret: bytes | None = None) -> bool:
        """Deliver a cancel or terminate to backend ``pid`` (checking ``secret`` if given)."""
        backend = self.backends.get(pid)
        if backend is None:
            self.stats[kind + "s_unknown_pid"] += 1
            return False
        if secret is not None and secret != backend.secret:
            self.stats[kind + "s_wrong_key"] += 1
            return False
        self.stats[kind + "s"] += 1
        backend._signal(kind)
        return True


@dataclass
class _Sleep:
    until: float
    reason: str | None  # "statement timeout" when the timeout comes first
    done: Callable[[fakesql.SqlError | None], None]


class FakeServer(QueryMixin):
    """One backend connection of a :class:`Database`.

    Attributes:
        closed: the backend closed the connection (after the bytes last returned).
        stalled: read but never answer (a hung server); settable at any time.
        pid, secret: the cancel key, once logged in.
        user, database: from the startup packet.
        history: the last statements run, ``(now, tag, text)``, for failure reports.
    """

    def __init__(self, db: Database, now: float = 0.0) -> None:
        super().__init__()
        self.db = db
        self.now = now
        self.conn = Connection(SERVER)
        self.closed = False
        self.stalled = False
        self.pid = 0
        self.secret = b""
        self.user = ""
        self.database = ""
        self.logged_in = False
        self.history: deque[tuple[float, str | None, str]] = deque(maxlen=30)
        self._out: list[bytes] = []
        self._auth: FakeUser | None = None
        self._salt = b""
        self._scram: ScramServer | None = None
        self._sleep: _Sleep | None = None
        self._pending_signal: str | None = None

    def __repr__(self) -> str:
        return f"<FakeServer {self.db.name} pid={self.pid} user={self.user!r}>"

    # --- the sans-IO interface ----------------------------------------------------

    @property
    def deadline(self) -> float | None:
        """When ``tick`` has something to do: a sleep ends, or a signal is pending."""
        if self.closed:
            return None
        if self._pending_signal is not None:
            return self.now
        return None if self._sleep is None else self._sleep.until

    def receive(self, data: bytes, now: float) -> bytes:
        """Take bytes from the client (``b""`` for EOF); return the bytes to send back."""
        if self.closed:
            return b""
        self.now = max(self.now, now)
        self.conn.receive_data(data)
        if not data and (self.stalled or self._sleep is not None):
            # A busy or hung backend notices the EOF only later; we close at once.
            self._close()
        else:
            self._run()
        return self._flush()

    def tick(self, now: float) -> bytes:
        """Advance the clock: finish a sleep, act on a cancel; return bytes to send."""
        if self.closed:
            return b""
        self.now = max(self.now, now)
        signal, self._pending_signal = self._pending_signal, None
        if signal == "terminate":
            self._fatal("57P01", "terminating connection due to administrator command")
            return self._flush()
        sleep = self._sleep
        if sleep is not None and (signal == "cancel" or self.now >= sleep.until):
            self._sleep = None
            err = None
            if signal == "cancel":
                err = fakesql.SqlError("57014", "canceling statement due to user request")
            elif sleep.reason is not None:
                err = fakesql.SqlError("57014", f"canceling statement due to {sleep.reason}")
            sleep.done(err)
            self._run()
        return self._flush()

    def crash(self) -> None:
        """Die without a word (a killed process, a lost network): the peer sees EOF."""
        if not self.closed:
            self.db.stats["crashes"] += 1
            self._close()

    def terminate(self) -> bytes:
        """``pg_terminate_backend`` from outside: FATAL 57P01, then close."""
        if self.closed:
            return b""
        self._fatal("57P01", "terminating connection due to administrator command")
        return self._flush()

    # --- plumbing -------------------------------------------------------------------

    def _send(self, event: Event) -> None:
        self._out.append(self.conn.send(event))
        if self.db.on_message is not None:
            self.db.on_message(self, event, True)

    def _flush(self) -> bytes:
        data = b"".join(self._out)
        self._out.clear()
        return data

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._sleep = None
        self._rollback_all()
        if self.db.backends.get(self.pid) is self:
            del self.db.backends[self.pid]

    def _fatal(self, sqlstate: str, message: str) -> None:
        self._send(ErrorResponse.build(sqlstate, message, _FATAL))
        self._close()

    def _signal(self, kind: str) -> None:
        if kind == "cancel" and self._sleep is None:
            return  # PostgreSQL ignores a cancel that arrives between queries
        self._pending_signal = kind
        if self.db.on_wake is not None:
            self.db.on_wake(self)

    def _run(self) -> None:
        while not self.closed and self._sleep is None and not self.stalled:
            try:
                event = self.conn.next_event()
            except ProtocolError as exc:
                self.db.violation(f"backend {self.pid}: protocol error from the client: {exc}")
                self._out.append(bytes(ErrorResponse.build(exc.sqlstate, str(exc), _FATAL)))
                self._close()
                return
            if event is NEED_DATA or event is PAUSED:
                return
            assert isinstance(event, Event)
            if self.db.on_message is not None:
                self.db.on_message(self, event, False)
            if type(event) is ConnectionClosed:
                self._close()
                return
            if self.logged_in:
                self._dispatch(event)
            else:
                self._startup(event)

    def _start_sleep(
        self, seconds: float, done: Callable[[fakesql.SqlError | None], None]
    ) -> None:
        until, reason = self.now + seconds, None
        timeout = fakesql.timeout_ms(self.gucs["statement_timeout"])
        if timeout and seconds * 1000 > timeout:
            until, reason = self.now + timeout / 1000, "statement timeout"
        self._sleep = _Sleep(until, reason, done)

    # --- startup and authentication -------------------------------------------------

    def _startup(self, event: Event) -> None:
        if isinstance(event, SSLRequest):
            self._send(SSLResponse(False))
        elif isinstance(event, GSSENCRequest):
            self._send(GSSENCResponse(False))
        elif isinstance(event, CancelRequest):
            self.db.signal(event.process_id, "cancel", event.secret_key)
            self._close()
        elif isinstance(event, StartupMessage):
            self._startup_message(event)
        elif isinstance(event, PasswordMessage):
            self._password(event.password)
        elif isinstance(event, SASLInitialResponse):
            self._sasl_first(event)
        elif isinstance(event, SASLResponse):
            self._sasl_final(event.data)
        else:  # pragma: no cover - the protocol state machine allows nothing else
            self._fatal("08P01", f"unexpected {type(event).__name__} during startup")

    def _startup_message(self, msg: StartupMessage) -> None:
        db = self.db
        db.stats["startups"] += 1
        if db.stall_logins:
            self.stalled = True
            return
        if msg.protocol_version > PROTOCOL_3_2 or any(
            k.startswith("_pq_.") for k, _ in msg.parameters
        ):
            options = [k for k, _ in msg.parameters if k.startswith("_pq_.")]
            self._send(NegotiateProtocolVersion(min(msg.protocol_version, PROTOCOL_3_2), options))
        if db.refuse_logins is not None:
            self._fatal(*db.refuse_logins)
            return
        user = msg.get("user")
        if not user:
            self._fatal("28000", "no PostgreSQL user name specified in startup packet")
            return
        self.user = user
        self.database = msg.get("database") or user
        if db.max_connections is not None and len(db.backends) >= db.max_connections:
            self._fatal("53300", "sorry, too many clients already")
            return
        role = db.users.get(user)
        if not isinstance(role, FakeUser):
            self._fatal("28000", f'role "{user}" does not exist')
            return
        if db.databases and self.database not in db.databases:
            self._fatal("3D000", f'database "{self.database}" does not exist')
            return
        if msg.get("replication") not in (None, "false", "0", "off", "no"):
            self._fatal("0A000", "the fake server does not do replication")
            return
        try:
            self._init_session(msg, role)
        except fakesql.SqlError as exc:
            self._fatal(exc.sqlstate, exc.message)
            return
        self._auth = role
        if role.auth == "trust":
            self._login_ok()
        elif role.auth == "password":
            self._send(AuthenticationCleartextPassword())
        elif role.auth == "md5":
            self._salt = db.rng.randbytes(4)
            self._send(AuthenticationMD5Password(self._salt))
        elif role.auth == "scram-sha-256":
            self._send(AuthenticationSASL(["SCRAM-SHA-256"]))
        else:
            self._fatal("28000", f"unknown authentication method {role.auth!r}")

    def _auth_failed(self) -> None:
        kind = "password" if self._auth is None else self._auth.auth
        if kind == "scram-sha-256":
            kind = "password"
        self._fatal("28P01", f'{kind} authentication failed for user "{self.user}"')

    def _password(self, password: str) -> None:
        role = self._auth
        assert role is not None
        if role.password is None:
            self._auth_failed()
        elif role.auth == "password":
            if password == role.password:
                self._login_ok()
            else:
                self._auth_failed()
        elif md5_verify(self.user, role.password, self._salt, password):
            self._login_ok()
        else:
            self._auth_failed()

    def _sasl_first(self, msg: SASLInitialResponse) -> None:
        role = self._auth
        assert role is not None
        if msg.mechanism != "SCRAM-SHA-256" or msg.data is None:
            self._fatal("08P01", "invalid SASL initial response")
            return
        if role.password is None:
            self._auth_failed()
            return
        self._scram = ScramServer(
            self.db._verifier(self.user, role.password), nonce=self.db._nonce()
        )
        try:
            self._send(AuthenticationSASLContinue(self._scram.server_first(msg.data)))
        except ProtocolError as exc:
            self._fatal(exc.sqlstate, str(exc))

    def _sasl_final(self, data: bytes) -> None:
        assert self._scram is not None
        try:
            final = self._scram.server_final(data)
        except AuthenticationFailed:
            self._auth_failed()
            return
        except ProtocolError as exc:
            self._fatal(exc.sqlstate, str(exc))
            return
        self._send(AuthenticationSASLFinal(final))
        self._login_ok()

    def _login_ok(self) -> None:
        db = self.db
        self._send(AuthenticationOk())
        self.pid = db._new_pid()
        size = 32 if self.conn.protocol_version >= PROTOCOL_3_2 else 4
        self.secret = db.rng.randbytes(size)
        for name in fakesql.REPORTED:
            self._send(ParameterStatus(name, self.gucs[name]))
        self._reported = {name: self.gucs[name] for name in fakesql.REPORTED}
        self._send(BackendKeyData(self.pid, self.secret))
        self._send(ReadyForQuery("I"))
        self.logged_in = True
        db.backends[self.pid] = self
        db.stats["logins"] += 1
        if db.stall_queries:
            self.stalled = True

    def _init_session(self, msg: StartupMessage, role: FakeUser) -> None:
        gucs = dict(fakesql.GUC_DEFAULTS)
        gucs["server_version"] = self.db.server_version
        gucs["session_authorization"] = self.user
        gucs["is_superuser"] = "on" if role.superuser else "off"
        settings = [
            (k, v) for k, v in msg.parameters if k not in _NOT_GUCS and not k.startswith("_pq_.")
        ]
        options = (msg.get("options") or "").split()
        for i, word in enumerate(options):
            # libpq's options="-c name=value"; "--name=value" works as well.
            text = options[i + 1] if word == "-c" and i + 1 < len(options) else ""
            text = word[2:] if word.startswith("--") else text
            if "=" in text:
                name, _, value = text.partition("=")
                settings.append((name.replace("-", "_"), value))
        for name, value in settings:
            canonical = fakesql.canonical_guc(name)
            if canonical is None:
                raise fakesql.SqlError("42704", f'unrecognized configuration parameter "{name}"')
            if canonical in fakesql.READ_ONLY:
                raise fakesql.SqlError("55P02", f'parameter "{canonical}" cannot be changed')
            gucs[canonical] = fakesql.normalize_guc(canonical, value, gucs.get(canonical, ""))
        self.gucs = gucs
        self.session_defaults = dict(gucs)


_NOT_GUCS = frozenset({"user", "database", "options", "replication"})
