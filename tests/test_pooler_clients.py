"""Real clients through the pooler against real PostgreSQL.

Every test starts the real engine with each frontend in turn on a thread
(:mod:`_pooler`) in front of the ``pg15`` cluster (``pg18`` at the end) and drives it
with the clients people use: psql and pgbench from the PostgreSQL binaries, psycopg 3
(pipeline mode, COPY, binary parameters, cancel), asyncpg (statement cache, prepared
statements, concurrency), pg8000 (Parse, Describe and Bind in separate round trips)
and, for the traps no driver reliably produces, a raw client built from
:class:`pgsansio.protocol.Connection`.

What they pin down is what a transaction pooler must get right (see
``/work/shared/reference/protocol.md`` section 2): when a server may be handed to
another client, that session state never leaks from one client to the next, what
happens to a server whose client vanished, and the SQLSTATE of every error the pooler
makes up itself (53300, 08001, 57014, 25P03, 57P01, 28P01).

Waits poll with a deadline; the few fixed waits check that something does *not*
happen in that time (a timeout that must not fire, a client that must not get a server
early). Every socket has a timeout, so a pooler that hangs fails the test, not the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import pathlib
import re
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, TypeVar

import asyncpg
import pg8000.native
import psycopg
import psycopg.errors
import pytest
from _pooler import Pooler, make_config, running
from psycopg import pq

from pgsansio.config.model import Config, ServerAddress, ShardConfig
from pgsansio.protocol import (
    CLIENT,
    NEED_DATA,
    PROTOCOL_3_0,
    PROTOCOL_3_2,
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    BackendKeyData,
    Bind,
    BindComplete,
    CancelRequest,
    CommandComplete,
    Connection,
    ConnectionClosed,
    CopyData,
    CopyDone,
    CopyInResponse,
    DataRow,
    ErrorResponse,
    Event,
    Execute,
    Flush,
    NegotiateProtocolVersion,
    Parse,
    ParseComplete,
    PasswordMessage,
    Query,
    ReadyForQuery,
    SASLInitialResponse,
    SASLResponse,
    ScramClient,
    StartupMessage,
    Sync,
    md5_response,
)
from pgsansio.testing.cluster import TEST_DATABASE, TEST_USERS, Cluster

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.timeout(90),
    pytest.mark.usefixtures("pooler_frontend"),
]

TIMEOUT = 10.0
E = TypeVar("E", bound=Event)
T = TypeVar("T")

# What a fresh client must see for settings another client changed.
STATE_SQL = (
    "SELECT current_setting('application_name'), current_setting('TimeZone'), "
    "current_setting('search_path'), current_setting('statement_timeout'), pg_backend_pid()"
)


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leftover = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    for t in leftover:
        t.join(5)
    assert not [t for t in leftover if t.is_alive()], leftover


# --- helpers -------------------------------------------------------------------------


def wait_for(what: str, predicate: Callable[[], T], timeout: float = TIMEOUT) -> T:
    """Poll ``predicate`` until it returns something true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def password(user: str) -> str:
    return TEST_USERS.get(user, ("", None))[1] or ""


def connect(
    p: Pooler, user: str = "md5_user", *, autocommit: bool = True, **kwargs: Any
) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(p.dsn(user), autocommit=autocommit, connect_timeout=10, **kwargs)


def pq_call(
    conn: psycopg.Connection[tuple[Any, ...]], send: Callable[[pq.abc.PGconn], None]
) -> pq.abc.PGresult:
    """One libpq request at the protocol level, waiting in Python, not in libpq.

    libpq's blocking calls (PQprepare, PQdescribePrepared...) keep the GIL in psycopg's
    C implementation, which would freeze the pooler's thread in this process.
    """
    pgconn = conn.pgconn
    send(pgconn)
    while pgconn.flush():
        select.select([], [pgconn.socket], [], TIMEOUT)
    results = []
    while True:
        while pgconn.is_busy():
            readable, _, _ = select.select([pgconn.socket], [], [], TIMEOUT)
            assert readable, "no answer from the pooler"
            try:
                pgconn.consume_input()
            except psycopg.OperationalError:
                break
        res = pgconn.get_result()
        if res is None:
            break
        results.append(res)
    assert len(results) == 1, results
    return results[0]


def tx_status(conn: psycopg.Connection[tuple[Any, ...]]) -> pq.TransactionStatus:
    return conn.info.transaction_status


def direct(cluster: Cluster) -> psycopg.Connection[tuple[Any, ...]]:
    """A superuser connection straight to the cluster, bypassing the pooler."""
    return psycopg.connect(cluster.dsn(dbname=TEST_DATABASE), autocommit=True, connect_timeout=10)


def scratch_table(cluster: Cluster, columns: str = "x int") -> str:
    """A new table every test role may use, created directly on the cluster."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    cluster.execute(
        f"CREATE TABLE {name} ({columns}); GRANT ALL ON {name} TO PUBLIC;", dbname=TEST_DATABASE
    )
    return name


def running_queries(cluster: Cluster, marker: str) -> int:
    """Backends on the cluster running a query that contains ``marker``."""
    with direct(cluster) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE state = 'active' AND query LIKE %s AND pid <> pg_backend_pid()",
            (f"%{marker}%",),
        ).fetchone()
    assert row is not None
    return int(row[0])


def client_env(user: str | None = None) -> dict[str, str]:
    """The environment for psql/pgbench: no inherited PG* settings, no pgpass file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C", PGCONNECT_TIMEOUT="10", PGPASSFILE="/nonexistent/pgpass")
    if user is not None and password(user):
        env["PGPASSWORD"] = password(user)
    return env


def psql(
    cluster: Cluster,
    p: Pooler,
    user: str,
    *args: str,
    password_override: str | None = None,
    dbname: str = TEST_DATABASE,
) -> subprocess.CompletedProcess[str]:
    env = client_env(user)
    if password_override is not None:
        env["PGPASSWORD"] = password_override
    argv = [str(cluster.bindir / "psql"), "-XAtqw", "-v", "ON_ERROR_STOP=1"]
    argv += ["-h", "127.0.0.1", "-p", str(p.port), "-U", user, "-d", dbname, *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def pgbench(
    cluster: Cluster, port: int, user: str, *args: str
) -> subprocess.CompletedProcess[str]:
    argv = [str(cluster.bindir / "pgbench"), "-h", "127.0.0.1", "-p", str(port), "-U", user]
    argv += [*args, TEST_DATABASE]
    return subprocess.run(
        argv, env=client_env(user), capture_output=True, text=True, timeout=120, check=False
    )


def replace_servers(config: Config, host: str, port: int) -> Config:
    """The config with its one pool pointing at ``host:port``."""
    pools = {}
    for name, pool in config.pools.items():
        shards = tuple(
            ShardConfig(s.index, s.database, (ServerAddress(host, port, "primary"),))
            for s in pool.shards
        )
        pools[name] = replace(pool, shards=shards)
    return replace(config, pools=pools)


def only(events: list[Event], kind: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


def error_of(events: list[Event]) -> ErrorResponse:
    errors = only(events, ErrorResponse)
    assert errors, f"expected an ErrorResponse in {events}"
    return errors[0]


class Raw:
    """A socket plus a client-role :class:`Connection`: for traps drivers hide."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.conn = Connection(CLIENT)
        self.scram: ScramClient | None = None

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, *events: Event) -> None:
        self.sock.sendall(b"".join(self.conn.send(e) for e in events))

    def next(self) -> Event:
        while True:
            event = self.conn.next_event()
            if isinstance(event, Event):
                return event
            assert event is NEED_DATA, event
            self.conn.receive_data(self.sock.recv(65536))

    def until(self, *kinds: type[Event]) -> list[Event]:
        """Events up to and including the first of ``kinds``; EOF first fails."""
        events: list[Event] = []
        while True:
            event = self.next()
            events.append(event)
            if isinstance(event, kinds):
                return events
            if isinstance(event, ConnectionClosed):
                raise AssertionError(f"EOF while waiting for {kinds}: {events}")

    def query(self, sql: str) -> list[Event]:
        self.send(Query(sql))
        return self.until(ReadyForQuery)

    def login(
        self,
        user: str,
        secret: str | None = None,
        *,
        database: str = TEST_DATABASE,
        version: int = PROTOCOL_3_0,
    ) -> list[Event]:
        """Answer whatever authentication is asked for; stop at Z, an error or EOF."""
        if secret is None:
            secret = password(user)
        startup = StartupMessage({"user": user, "database": database}, protocol_version=version)
        self.send(startup)
        events: list[Event] = []
        while not (
            events and isinstance(events[-1], (ReadyForQuery, ErrorResponse, ConnectionClosed))
        ):
            event = self.next()
            events.append(event)
            if isinstance(event, AuthenticationCleartextPassword):
                self.send(PasswordMessage(secret))
            elif isinstance(event, AuthenticationMD5Password):
                self.send(PasswordMessage(md5_response(user, secret, event.salt)))
            elif isinstance(event, AuthenticationSASL):
                self.scram = ScramClient(secret)
                self.send(SASLInitialResponse("SCRAM-SHA-256", self.scram.client_first()))
            elif isinstance(event, AuthenticationSASLContinue):
                assert self.scram is not None
                self.send(SASLResponse(self.scram.client_final(event.data)))
            elif isinstance(event, AuthenticationSASLFinal):
                assert self.scram is not None
                self.scram.verify_server_final(event.data)
        return events

    def ready(self, user: str = "md5_user") -> Raw:
        events = self.login(user)
        assert isinstance(events[-1], ReadyForQuery), events
        return self

    def abort(self) -> None:
        """Close with a TCP reset, no Terminate: a client that crashed."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def backend_pid(events: list[Event]) -> int:
    rows = only(events, DataRow)
    assert rows, events
    value = rows[0].values[0]
    assert value is not None
    return int(value)


# --- psql ----------------------------------------------------------------------------

AUTH_CASES = [
    pytest.param("md5", "md5_user", id="md5-md5_user"),
    pytest.param("md5", "password_user", id="md5-password_user"),
    pytest.param("scram-sha-256", "scram_user", id="scram-scram_user"),
    pytest.param("scram-sha-256", "md5_user", id="scram-md5_user"),
    pytest.param("md5", "trust_user", id="trust-trust_user"),
]


@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
@pytest.mark.parametrize(("auth_type", "user"), AUTH_CASES)
def test_psql_command_each_auth_method(
    pg15: Cluster, pool_mode: str, auth_type: str, user: str
) -> None:
    config = make_config(pg15, pool_mode=pool_mode, pool_size=2, auth_type=auth_type)
    with running(config) as p:
        result = psql(pg15, p, user, "-c", "SELECT current_user, 6 * 7")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{user}|42"
        if password(user):  # the pooler really checks the password
            bad = psql(pg15, p, user, "-c", "SELECT 1", password_override="wrong")
            assert bad.returncode != 0
            assert f'password authentication failed for user "{user}"' in bad.stderr


@pytest.mark.parametrize("auth_type", ["md5", "scram-sha-256"])
def test_auth_request_is_the_configured_method(pg15: Cluster, auth_type: str) -> None:
    expected = AuthenticationMD5Password if auth_type == "md5" else AuthenticationSASL
    with running(make_config(pg15, auth_type=auth_type)) as p, Raw(p.port) as raw:
        events = raw.login("scram_user")
        assert isinstance(events[0], expected), events
        assert isinstance(events[-1], ReadyForQuery), events
        assert only(events, AuthenticationOk)


@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_psql_script(pg15: Cluster, pool_mode: str, tmp_path: pathlib.Path) -> None:
    table = f"psql_{uuid.uuid4().hex[:10]}"
    script = tmp_path / "script.sql"
    script.write_text(
        f"CREATE TABLE {table} (x int, y text);\n"
        "BEGIN;\n"
        f"INSERT INTO {table} SELECT g, 'row ' || g FROM generate_series(1, 100) g;\n"
        f"UPDATE {table} SET y = upper(y) WHERE x % 2 = 0;\n"
        "COMMIT;\n"
        f"COPY {table} FROM STDIN;\n"
        "101\tcopied\n"
        "102\tcopied too\n"
        "\\.\n"
        f"SELECT count(*), sum(x) FROM {table};\n"
        f"SELECT y FROM {table} WHERE x IN (2, 102) ORDER BY x;\n"
        "SELECT 'a' || 'b'; SELECT 1 + 1;\n"
        f"DROP TABLE {table};\n"
    )
    with running(make_config(pg15, pool_mode=pool_mode, pool_size=1)) as p:
        result = psql(pg15, p, "scram_user", "-f", str(script))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["102|5253", "ROW 2", "copied too", "ab", "2"]


def _login_failure(p: Pooler, user: str, secret: str, database: str = TEST_DATABASE) -> str:
    with Raw(p.port) as raw:
        events = raw.login(user, secret, database=database)
    error = error_of(events)
    assert error.sqlstate == "28P01", events
    assert error.severity == "FATAL"
    assert not only(events, AuthenticationOk)
    message = error.message
    assert message is not None
    return message


@pytest.mark.parametrize("auth_type", ["md5", "scram-sha-256"])
def test_wrong_password_unknown_user_and_database_fail_alike(
    pg15: Cluster, auth_type: str
) -> None:
    with running(make_config(pg15, auth_type=auth_type)) as p:
        wrong = _login_failure(p, "md5_user", "not-the-password")
        assert wrong == 'password authentication failed for user "md5_user"'
        assert _login_failure(p, "md5_user", "nope", database="no_such_db") == wrong
        unknown_user = _login_failure(p, "no_such_user", "md5-secret")
        assert unknown_user == wrong.replace("md5_user", "no_such_user")
        # The right password for a real user, but a database the pooler does not know.
        unknown_db = _login_failure(p, "md5_user", "md5-secret", database="no_such_db")
        assert unknown_db == wrong
        # psql shows the same text
        result = psql(pg15, p, "nobody", "-c", "SELECT 1", password_override="x")
        assert result.returncode != 0
        assert 'password authentication failed for user "nobody"' in result.stderr


# --- pgbench -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pgbench_tables(pg15: Cluster) -> str:
    """pgbench's tables at scale 1, owned by md5_user, made directly on the cluster."""
    result = pgbench(pg15, pg15.port, "md5_user", "-i", "-q", "-s", "1")
    assert result.returncode == 0, result.stderr
    return "md5_user"


def _check_pgbench(result: subprocess.CompletedProcess[str], expected: int) -> None:
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    processed = re.search(r"number of transactions actually processed: (\d+)/(\d+)", out)
    assert processed is not None, out
    assert int(processed.group(1)) == int(processed.group(2)) == expected, out
    failed = re.search(r"number of failed transactions: (\d+)", out)
    assert failed is not None and int(failed.group(1)) == 0, out
    assert "error" not in result.stderr.lower(), result.stderr


@pytest.mark.parametrize("script", ["tpcb", "select-only"])
@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_transaction_mode(
    pg15: Cluster, pgbench_tables: str, mode: str, script: str
) -> None:
    clients, per_client = 8, 200 if script == "tpcb" else 500
    pool_size = 2 if mode == "prepared" else 3
    with running(make_config(pg15, pool_size=pool_size)) as p:
        extra = ["-S"] if script == "select-only" else []
        result = pgbench(
            pg15, p.port, pgbench_tables, "-n", "-M", mode, "-c", str(clients), "-j",
            str(clients), "-t", str(per_client), *extra,
        )  # fmt: skip
        _check_pgbench(result, clients * per_client)
        assert p.engine is not None
        # Never more server connections than the pool allows.
        assert len(p.engine.servers) <= pool_size


def test_pgbench_prepared_with_a_tiny_statement_cache(pg15: Cluster, pgbench_tables: str) -> None:
    """TPC-B has seven statements; a cache of two per server means constant re-Parse."""
    config = make_config(pg15, pool_size=2, pool={"prepared_statements_cache_size": 2})
    with running(config) as p:
        result = pgbench(
            pg15, p.port, pgbench_tables, "-n", "-M", "prepared", "-c", "8", "-j", "8",
            "-t", "100",
        )  # fmt: skip
        _check_pgbench(result, 800)


def test_pgbench_session_mode(pg15: Cluster, pgbench_tables: str) -> None:
    with running(make_config(pg15, pool_mode="session", pool_size=4)) as p:
        result = pgbench(
            pg15, p.port, pgbench_tables, "-n", "-M", "prepared", "-c", "4", "-j", "4",
            "-t", "200",
        )  # fmt: skip
        _check_pgbench(result, 800)


# --- psycopg 3 -----------------------------------------------------------------------


@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_psycopg_pipeline_with_error_then_recovery(pg15: Cluster, pool_mode: str) -> None:
    table = scratch_table(pg15)
    with running(make_config(pg15, pool_mode=pool_mode, pool_size=1)) as p, connect(p) as conn:
        # psycopg raises the error when it reads it: at a Sync, or in a later execute()
        # if the answer is already there; either way it leaves the pipeline block.
        with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline() as pipe:
            c1 = conn.execute(f"INSERT INTO {table} VALUES (%s) RETURNING x", (1,))
            c2 = conn.execute("SELECT %s::text || %s::text", ("a", "b"))
            pipe.sync()
            conn.execute(f"INSERT INTO {table} VALUES (%s)", (2,))
            conn.execute("SELECT 1 / %s", (0,))
            conn.execute(f"INSERT INTO {table} VALUES (%s)", (3,))
        assert c1.fetchone() == (1,)
        assert c2.fetchone() == ("ab",)
        # After the failed batch the connection and the pipeline work again.
        with conn.pipeline():
            rows = [conn.execute("SELECT %s::int * 2", (i,)) for i in range(20)]
        assert [r.fetchone() for r in rows] == [(i * 2,) for i in range(20)]
        # Only the batch before the error committed (autocommit: each Sync commits).
        got = conn.execute(f"SELECT array_agg(x ORDER BY x) FROM {table}").fetchone()
        assert got == ([1],)


@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_psycopg_copy_text_and_binary(pg15: Cluster, pool_mode: str) -> None:
    table = scratch_table(pg15, "id int, name text, v float8")
    rows = [(i, f"name {i}\twith tab", i / 3) for i in range(2000)]
    with running(make_config(pg15, pool_mode=pool_mode, pool_size=1)) as p, connect(p) as conn:
        cur = conn.cursor()
        with cur.copy(f"COPY {table} FROM STDIN") as copy:
            for row in rows[:1000]:
                copy.write_row(row)
        with cur.copy(f"COPY {table} FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text", "float8"])
            for row in rows[1000:]:
                copy.write_row(row)
        assert cur.rowcount == 1000
        text_out: list[tuple[Any, ...]] = []
        with cur.copy(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT") as copy:
            copy.set_types(["int4", "text", "float8"])
            text_out.extend(copy.rows())
        binary_out: list[tuple[Any, ...]] = []
        query = f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT (FORMAT BINARY)"
        with cur.copy(query) as copy:
            copy.set_types(["int4", "text", "float8"])
            binary_out.extend(copy.rows())
        assert text_out == rows
        assert binary_out == rows
        # and the connection is in a clean state afterwards
        assert conn.execute("SELECT count(*) FROM " + table).fetchone() == (2000,)
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE


def test_psycopg_binary_parameters_and_results(pg15: Cluster) -> None:
    with running(make_config(pg15, pool_size=2)) as p, connect(p) as conn:
        cur = conn.cursor(binary=True)
        blob = bytes(range(256)) * 40
        for i in range(30):
            cur.execute(
                "SELECT %b::int8 + 1, %b::bytea, %b::text, %b::float8[]",
                (i, blob, f"ü{i}", [1.5, float(i)]),
            )
            assert cur.fetchone() == (i + 1, blob, f"ü{i}", [1.5, float(i)])
        cur.execute("SELECT %b::int", (7,), prepare=True)
        assert cur.fetchone() == (7,)
        cur.execute("SELECT %b::int", (8,), prepare=True)
        assert cur.fetchone() == (8,)


def test_psycopg_large_values(pg15: Cluster) -> None:
    blob = os.urandom(16 * 1024 * 1024)
    with running(make_config(pg15, pool_size=1)) as p, connect(p) as conn:
        cur = conn.cursor(binary=True)
        query = "SELECT %b::bytea, md5(%b::bytea), length(repeat('x', 20000000))"
        cur.execute(query, (blob, blob))
        row = cur.fetchone()
        assert row is not None
        assert row[0] == blob
        assert row[1] == hashlib.md5(blob).hexdigest()
        assert row[2] == 20_000_000
        text = conn.execute("SELECT repeat('ab', 5000000)").fetchone()
        assert text == ("ab" * 5_000_000,)


def test_psycopg_cancel_safe_running_query(pg15: Cluster) -> None:
    marker = f"cancel_{uuid.uuid4().hex[:10]}"
    with running(make_config(pg15, pool_size=1)) as p, connect(p) as conn:
        outcome: list[BaseException | None] = []

        def sleeper() -> None:
            try:
                conn.execute(f"SELECT pg_sleep(10) /* {marker} */")
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=sleeper)
        started = time.monotonic()
        thread.start()
        wait_for("the query to run", lambda: running_queries(pg15, marker) == 1)
        conn.cancel_safe(timeout=5)
        thread.join(5)
        assert not thread.is_alive(), "the query was not cancelled"
        assert time.monotonic() - started < 5
        assert len(outcome) == 1 and isinstance(outcome[0], psycopg.errors.QueryCanceled)
        assert conn.execute("SELECT 'still usable'").fetchone() == ("still usable",)
        assert running_queries(pg15, marker) == 0


# psycopg's conn.cancel() calls libpq's blocking PQcancel() without releasing the GIL,
# which would freeze the pooler's thread in this process: it runs in a child process.
CANCEL_CHILD = """
import json, sys, threading, time
import psycopg

conn = psycopg.connect(sys.argv[1], autocommit=True, connect_timeout=10)
result = {}

def run():
    started = time.monotonic()
    try:
        conn.execute(sys.argv[2])
        result["error"] = None
    except psycopg.Error as exc:
        result["error"] = type(exc).__name__
        result["sqlstate"] = exc.sqlstate
    result["elapsed"] = time.monotonic() - started

thread = threading.Thread(target=run)
thread.start()
print("running", flush=True)
sys.stdin.readline()  # the parent saw the query on the server
conn.cancel()
thread.join(10)
result["after"] = conn.execute("SELECT 'still usable'").fetchone()[0]
print(json.dumps(result), flush=True)
"""


def test_psycopg_cancel_running_query(pg15: Cluster) -> None:
    marker = f"cancel_{uuid.uuid4().hex[:10]}"
    with running(make_config(pg15, pool_size=1)) as p:
        child = subprocess.Popen(
            [sys.executable, "-c", CANCEL_CHILD, p.dsn("md5_user"),
             f"SELECT pg_sleep(10) /* {marker} */"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert child.stdin is not None and child.stdout is not None
            assert child.stdout.readline().strip() == "running"
            wait_for("the query to run", lambda: running_queries(pg15, marker) == 1)
            child.stdin.write("go\n")
            child.stdin.flush()
            out, _ = child.communicate(timeout=TIMEOUT)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        result = json.loads(out)
        assert result["error"] == "QueryCanceled" and result["sqlstate"] == "57014", result
        assert result["elapsed"] < 5, result
        assert result["after"] == "still usable"
        assert running_queries(pg15, marker) == 0


def test_cancel_with_a_stale_key_spares_the_next_clients_query(pg15: Cluster) -> None:
    """A's cancel arrives when A runs nothing; B's query on that same server goes on."""
    marker = f"spared_{uuid.uuid4().hex[:10]}"
    with running(make_config(pg15, pool_size=1)) as p, Raw(p.port) as a, connect(p) as b:
        keys = only(a.login("md5_user"), BackendKeyData)
        assert len(keys) == 1
        assert only(a.query("SELECT 1"), DataRow)
        outcome: list[object] = []

        def query_b() -> None:
            try:
                query = f"SELECT 'b' FROM pg_sleep(0.5) /* {marker} */"
                outcome.append(b.execute(query).fetchone())
            except psycopg.Error as exc:
                outcome.append(exc)

        thread = threading.Thread(target=query_b)
        thread.start()
        wait_for("B's query to run", lambda: running_queries(pg15, marker) == 1)
        for key in (keys[0], BackendKeyData(keys[0].process_id, b"\0\0\0\0")):
            with socket.create_connection(("127.0.0.1", p.port), timeout=TIMEOUT) as sock:
                sock.sendall(bytes(CancelRequest(key.process_id, key.secret_key)))
                assert sock.recv(100) == b""  # answered by closing, like PostgreSQL
        thread.join(TIMEOUT)
        assert outcome == [("b",)]


def test_cancel_of_a_client_still_waiting_for_a_server(pg15: Cluster) -> None:
    config = make_config(pg15, pool_size=1, user={"connect_timeout": 5000})
    with running(config) as p, connect(p, autocommit=False) as a, connect(p) as b:
        a.execute("SELECT 1")  # A holds the only server
        outcome: list[object] = []

        def query_b() -> None:
            try:
                outcome.append(b.execute("SELECT 'b'").fetchone())
            except psycopg.Error as exc:
                outcome.append(exc)

        thread = threading.Thread(target=query_b)
        thread.start()
        assert p.engine is not None
        engine = p.engine
        wait_for(
            "B to wait for a server",
            lambda: any(c.waiting_since is not None for c in list(engine.clients.values())),
        )
        started = time.monotonic()
        b.cancel_safe(timeout=5)
        thread.join(TIMEOUT)
        assert time.monotonic() - started < 2
        assert len(outcome) == 1 and isinstance(outcome[0], psycopg.errors.QueryCanceled)
        a.commit()
        assert b.execute("SELECT 'b again'").fetchone() == ("b again",)


def test_psycopg_notices_reach_the_client(pg15: Cluster) -> None:
    with running(make_config(pg15, pool_size=1)) as p, connect(p) as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'first'; RAISE WARNING 'second'; END $$")
        conn.execute("SELECT 1")
        assert notices == ["first", "second"]


def test_many_threads_each_get_their_own_answers(pg15: Cluster) -> None:
    """32 psycopg clients on 3 servers; every answer must be the asker's own."""
    table = scratch_table(pg15, "id int PRIMARY KEY, n int")
    pg15.execute(
        f"INSERT INTO {table} SELECT g, 0 FROM generate_series(0, 31) g", dbname=TEST_DATABASE
    )
    failures: list[BaseException] = []

    def worker(port: int, i: int) -> None:
        try:
            with psycopg.connect(
                f"host=127.0.0.1 port={port} user=md5_user password=md5-secret "
                f"dbname={TEST_DATABASE}",
                autocommit=True,
                connect_timeout=10,
            ) as conn:
                for j in range(20):
                    token = f"{i}:{j}"
                    assert conn.execute("SELECT %s::text", (token,)).fetchone() == (token,)
                    with conn.transaction():
                        conn.execute(f"UPDATE {table} SET n = n + 1 WHERE id = %s", (i,))
                        row = conn.execute(f"SELECT n FROM {table} WHERE id = %s", (i,))
                        assert row.fetchone() == (j + 1,)
        except BaseException as exc:
            failures.append(exc)

    config = make_config(pg15, pool_size=3, user={"connect_timeout": 10000})
    with running(config) as p:
        threads = [threading.Thread(target=worker, args=(p.port, i)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not failures, failures[:3]
    with direct(pg15) as conn:
        got = conn.execute(f"SELECT array_agg(DISTINCT n) FROM {table}").fetchone()
        assert got == ([20],)


def test_psycopg_autocommit_and_explicit_transactions(pg15: Cluster) -> None:
    table = scratch_table(pg15)
    with running(make_config(pg15, pool_size=2)) as p:
        with connect(p, autocommit=False) as conn:
            conn.execute(f"INSERT INTO {table} VALUES (1)")
            assert conn.info.transaction_status == pq.TransactionStatus.INTRANS
            conn.rollback()
            with conn.transaction():
                conn.execute(f"INSERT INTO {table} VALUES (2)")
                with conn.transaction():  # a savepoint
                    conn.execute(f"INSERT INTO {table} VALUES (3)")
                with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
                    conn.execute(f"INSERT INTO {table} VALUES (4)")
                    conn.execute("SELECT 1 / 0")
            conn.commit()
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1 / 0")
            assert tx_status(conn) == pq.TransactionStatus.INERROR
            conn.rollback()
        with connect(p, autocommit=True) as conn:
            conn.execute(f"INSERT INTO {table} VALUES (5)")
            assert conn.info.transaction_status == pq.TransactionStatus.IDLE
            got = conn.execute(f"SELECT array_agg(x ORDER BY x) FROM {table}").fetchone()
            assert got == ([2, 3, 5],)


# --- asyncpg -------------------------------------------------------------------------


@pytest.mark.parametrize("cache_size", [500, 3])
def test_asyncpg_statement_cache_prepare_and_concurrency(pg15: Cluster, cache_size: int) -> None:
    """Twelve asyncpg connections on two servers; with a cache of 3 statements per server
    the pooler evicts and re-prepares all the time."""
    table = scratch_table(pg15, "client int, n int")
    pool_size, clients = 2, 12

    async def work(conn: asyncpg.Connection, i: int) -> None:
        for j in range(120):
            # repeated: served from asyncpg's statement cache (named statements)
            assert await conn.fetchval("SELECT $1::int * 1000 + $2::int", i, j) == i * 1000 + j
            # distinct texts, more than asyncpg's cache of 100: it closes the oldest
            assert await conn.fetchval(f"SELECT {j} + $1::int AS c{i}_{j}", i) == i + j
        stmt = await conn.prepare("SELECT $1::text || '-' || $2::int")
        for j in range(10):
            assert await stmt.fetchval(f"c{i}", j) == f"c{i}-{j}"
        async with conn.transaction():
            await conn.executemany(
                f"INSERT INTO {table} VALUES ($1, $2)", [(i, n) for n in range(10)]
            )
            assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE client = $1", i) == 10
            # a cursor: a named portal fetched in pieces (Execute with a row limit)
            seen = [
                r["g"] async for r in conn.cursor("SELECT generate_series(1, 250) g", prefetch=40)
            ]
            assert seen == list(range(1, 251))
        with contextlib.suppress(RuntimeError):
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {table} VALUES ($1, -1)", i)
                raise RuntimeError("roll back")
        rows = await conn.fetch(f"SELECT n FROM {table} WHERE client = $1 ORDER BY n", i)
        assert [r["n"] for r in rows] == list(range(10))

    async def main(port: int) -> None:
        conns = [
            await asyncpg.connect(
                host="127.0.0.1",
                port=port,
                user="scram_user",
                password="scram-secret",
                database=TEST_DATABASE,
                timeout=TIMEOUT,
            )
            for _ in range(clients)
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*(work(c, i) for i, c in enumerate(conns))), 60)
        finally:
            for c in conns:
                await c.close()

    config = make_config(
        pg15,
        pool_size=pool_size,
        auth_type="scram-sha-256",
        pool={"prepared_statements_cache_size": cache_size},
        # Ten clients queue for two servers: on a loaded machine a wait can pass the
        # default second, and 53300 is not what this test is about.
        user={"connect_timeout": 10000},
    )
    with running(config) as p:
        asyncio.run(main(p.port))
        assert p.engine is not None
        assert len(p.engine.servers) <= pool_size
        with connect(p) as conn:
            for _ in range(pool_size):
                row = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
                assert row is not None and row[0] <= cache_size


def test_asyncpg_error_in_prepared_statement(pg15: Cluster) -> None:
    async def main(port: int) -> list[str]:
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=port,
            user="md5_user",
            password="md5-secret",
            database=TEST_DATABASE,
            timeout=TIMEOUT,
        )
        messages = []
        try:
            stmt = await conn.prepare("SELECT 10 / $1::int")
            assert await stmt.fetchval(2) == 5
            with pytest.raises(asyncpg.exceptions.DivisionByZeroError) as info:
                await stmt.fetchval(0)
            messages.append(str(info.value))
            async with conn.transaction():
                with pytest.raises(asyncpg.exceptions.DivisionByZeroError) as info:
                    await conn.fetchval("SELECT 10 / $1::int", 0)
                messages.append(str(info.value))
            with pytest.raises(asyncpg.exceptions.UndefinedTableError) as undefined:
                await conn.prepare("SELECT * FROM no_such_table_here WHERE x = $1")
            messages.append(str(undefined.value))
            assert await stmt.fetchval(5) == 2  # the statement survives its errors
        finally:
            await conn.close()
        return messages

    with running(make_config(pg15, pool_size=1)) as p:
        messages = asyncio.run(main(p.port))
    assert messages[0] == "division by zero"
    assert "no_such_table_here" in messages[2]
    assert not any("PGSANSIO_" in m for m in messages)


def test_prepared_statement_error_names_the_clients_statement(pg15: Cluster) -> None:
    with running(make_config(pg15, pool_size=1)) as p, connect(p) as conn:
        res = pq_call(conn, lambda c: c.send_prepare(b"my_adder", b"SELECT $1::int + $2::int"))
        assert res.status == pq.ExecStatus.COMMAND_OK, res.error_message
        res = pq_call(conn, lambda c: c.send_query_prepared(b"my_adder", [b"1", b"2"]))
        assert res.get_value(0, 0) == b"3"
        # One parameter short: PostgreSQL names the statement in its message.
        res = pq_call(conn, lambda c: c.send_query_prepared(b"my_adder", [b"1"]))
        assert res.status == pq.ExecStatus.FATAL_ERROR
        assert res.error_field(pq.DiagnosticField.SQLSTATE) == b"08P01"
        message = (res.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"").decode()
        assert '"my_adder"' in message
        assert "PGSANSIO_" not in res.error_message.decode()
        res = pq_call(conn, lambda c: c.send_query_prepared(b"my_adder", [b"20", b"22"]))
        assert res.get_value(0, 0) == b"42"


# --- pg8000 --------------------------------------------------------------------------


def test_pg8000_unnamed_statements_sharing_one_server(pg15: Cluster) -> None:
    """pg8000 sends P S, then D S B, then E S: the server must stay with it throughout."""
    failures: list[BaseException] = []
    results: dict[int, list[int]] = {}

    def worker(port: int, i: int) -> None:
        try:
            con = pg8000.native.Connection(
                "md5_user",
                host="127.0.0.1",
                port=port,
                password="md5-secret",
                database=TEST_DATABASE,
                timeout=TIMEOUT,
            )
            try:
                got = []
                for j in range(40):
                    rows = con.run("SELECT :a::int * 1000 + :b::int, :c::text", a=i, b=j, c="x")
                    assert rows == [[i * 1000 + j, "x"]]
                    got.append(rows[0][0])
                results[i] = got
            finally:
                con.close()
        except BaseException as exc:
            failures.append(exc)

    with running(make_config(pg15, pool_size=1)) as p:
        threads = [threading.Thread(target=worker, args=(p.port, i)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert p.engine is not None
        assert len(p.engine.servers) == 1
    assert not failures, failures
    assert results == {i: [i * 1000 + j for j in range(40)] for i in range(4)}


def test_pg8000_copy_over_the_extended_protocol(pg15: Cluster) -> None:
    """pg8000 runs COPY as P S, D S B, E S: the server eats the Sync sent before the data."""
    table = scratch_table(pg15, "client int, n int")
    failures: list[BaseException] = []

    def worker(port: int, i: int) -> None:
        try:
            con = pg8000.native.Connection(
                "md5_user",
                host="127.0.0.1",
                port=port,
                password="md5-secret",
                database=TEST_DATABASE,
                timeout=TIMEOUT,
            )
            try:
                for round_ in range(5):
                    data = "".join(f"{i}\t{round_ * 100 + n}\n" for n in range(100))
                    con.run(f"COPY {table} FROM STDIN", stream=io.StringIO(data))
                    out = io.StringIO()
                    query = f"COPY (SELECT n FROM {table} WHERE client = {i} ORDER BY n) TO STDOUT"
                    con.run(query, stream=out)
                    expected = [str(n) for n in range((round_ + 1) * 100)]
                    assert out.getvalue().splitlines() == expected
                    assert con.run("SELECT :x::int", x=round_) == [[round_]]
            finally:
                con.close()
        except BaseException as exc:
            failures.append(exc)

    with running(make_config(pg15, pool_size=1)) as p:
        threads = [threading.Thread(target=worker, args=(p.port, i)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not failures, failures
    with direct(pg15) as conn:
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (1500,)


# --- session state -------------------------------------------------------------------


def _defaults(cluster: Cluster, user: str = "md5_user") -> tuple[Any, ...]:
    with psycopg.connect(cluster.dsn(user, TEST_DATABASE, password(user))) as conn:
        row = conn.execute(STATE_SQL).fetchone()
    assert row is not None
    return tuple(row[:4])


def interleave(
    a: psycopg.Connection[tuple[Any, ...]],
    other: psycopg.Connection[tuple[Any, ...]],
    expect_a: tuple[Any, ...],
    expect_other: tuple[Any, ...],
    rounds: int = 6,
) -> set[int]:
    """A's view while ``other`` holds a server in a transaction; the server pids A used.

    Idle servers are handed out in turn (``server_round_robin``), so with a pool of two
    A lands on the server ``other`` held in the round before: it alternates.
    """
    pids = set()
    for i in range(rounds):
        row = other.execute(STATE_SQL).fetchone()
        assert row is not None and tuple(row[:4]) == expect_other, (i, row)
        row = a.execute(STATE_SQL).fetchone()
        assert row is not None and tuple(row[:4]) == expect_a, (i, row)
        pids.add(row[4])
        other.commit()
    return pids


def test_session_state_follows_the_client_and_never_leaks(pg15: Cluster) -> None:
    defaults = _defaults(pg15)
    mine = ("client_a", "Pacific/Chatham", defaults[2], "4321ms")
    assert defaults != mine
    with running(make_config(pg15, pool_size=2)) as p:
        with connect(p) as a, connect(p, autocommit=False) as other:
            a.execute("SET application_name = 'client_a'")  # reported
            a.execute("SET TimeZone = 'Pacific/Chatham'")  # reported
            a.execute("SET statement_timeout = 4321")  # not reported
            # A's settings follow it to both servers; the other client never sees them.
            assert len(interleave(a, other, mine, defaults)) == 2
            assert a.info.parameter_status("application_name") == "client_a"
            assert a.info.parameter_status("TimeZone") == "Pacific/Chatham"
        with connect(p) as b:
            for _ in range(4):
                row = b.execute(STATE_SQL).fetchone()
                assert row is not None and tuple(row[:4]) == defaults


@pytest.mark.parametrize("version", [15, 18])
def test_search_path_follows_the_client_and_never_leaks(
    request: pytest.FixtureRequest, version: int
) -> None:
    """search_path is reported (GUC_REPORT) only since PostgreSQL 18."""
    cluster: Cluster = request.getfixturevalue(f"pg{version}")
    defaults = _defaults(cluster)
    mine = (defaults[0], defaults[1], "a_schema, public", defaults[3])
    with running(make_config(cluster, pool_size=2)) as p:
        with connect(p) as a, connect(p, autocommit=False) as other:
            a.execute("SET search_path = a_schema, public")
            assert len(interleave(a, other, mine, defaults)) == 2
        with connect(p) as b:
            row = b.execute(STATE_SQL).fetchone()
            assert row is not None and tuple(row[:4]) == defaults


# Ways to change a session setting that a pooler cannot see as a plain ``SET x = v``.
UNFOLLOWABLE = {
    "set-in-transaction": ["BEGIN", "SET lock_timeout = 1111", "COMMIT"],
    "multi-statement": ["SET lock_timeout = 1111; SELECT 1"],
    "set_config": ["SELECT set_config('lock_timeout', '1111', false)"],
    "do-block": ["DO $$ BEGIN PERFORM set_config('lock_timeout', '1111', false); END $$"],
    "comment-first": ["/* hint */ SET lock_timeout = 1111"],
    "characteristics": ["SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"],
}


@pytest.mark.parametrize("how", list(UNFOLLOWABLE))
def test_settings_the_pooler_cannot_follow_never_leak(pg15: Cluster, how: str) -> None:
    """Whatever the pooler does for their author, the next client must not see them.

    With pin_session_state (the default) the author keeps its server, and its setting,
    until it leaves; without it (PgBouncer's way) the setting is lost at once."""
    sql = "SELECT current_setting('lock_timeout'), current_setting('transaction_read_only')"
    with direct(pg15) as conn:
        defaults = conn.execute(sql).fetchone()
    with running(make_config(pg15, pool_size=1)) as p, connect(p) as b:
        with connect(p) as a:
            for statement in UNFOLLOWABLE[how]:
                a.execute(statement)
            assert a.execute(sql).fetchone() != defaults
        for _ in range(2):
            assert b.execute(sql).fetchone() == defaults
    cfg = make_config(pg15, pool_size=1, pool={"pin_session_state": False})
    with running(cfg) as p, connect(p) as a, connect(p) as b:
        for statement in UNFOLLOWABLE[how]:
            a.execute(statement)
        for _ in range(2):
            assert b.execute(sql).fetchone() == defaults


def test_extended_protocol_set_never_leaks(pg15: Cluster) -> None:
    with running(make_config(pg15, pool_size=1)) as p, connect(p) as b:
        with connect(p) as a:  # Parse/Bind/Execute/Sync: not followed, so pinned
            a.execute("SET lock_timeout = 1111", prepare=True)
            assert a.execute("SHOW lock_timeout").fetchone() == ("1111ms",)
        assert b.execute("SHOW lock_timeout").fetchone() == ("0",)
    cfg = make_config(pg15, pool_size=1, pool={"pin_session_state": False})
    with running(cfg) as p, connect(p) as a, connect(p) as b:
        a.execute("SET lock_timeout = 1111", prepare=True)
        assert b.execute("SHOW lock_timeout").fetchone() == ("0",)


def test_reported_parameter_set_by_one_client_is_reset_for_the_next(pg15: Cluster) -> None:
    with running(make_config(pg15, pool_size=1)) as p, connect(p) as a, connect(p) as b:
        default = b.info.parameter_status("DateStyle")
        a.execute("SET DateStyle = 'SQL, DMY'")
        assert a.info.parameter_status("DateStyle") == "SQL, DMY"
        assert b.execute("SHOW DateStyle").fetchone() == (default,)
        assert b.info.parameter_status("DateStyle") == default
        assert a.execute("SHOW DateStyle").fetchone() == ("SQL, DMY",)


def test_reset_and_reported_parameters_follow_the_client(pg15: Cluster) -> None:
    defaults = _defaults(pg15)
    with running(make_config(pg15, pool_size=2)) as p, connect(p) as a:
        a.execute("SET statement_timeout = 999")
        a.execute("SET application_name = 'temporary'")
        a.execute("RESET statement_timeout")
        a.execute("RESET application_name")
        with connect(p, autocommit=False) as other:
            assert len(interleave(a, other, defaults, defaults, rounds=4)) == 2
        # psycopg follows ParameterStatus: the pooler keeps it truthful
        assert a.info.parameter_status("application_name") == ""


def test_named_prepared_statements_are_private(pg15: Cluster) -> None:
    with running(make_config(pg15, pool_size=2)) as p, connect(p) as a, connect(p) as b:
        res = pq_call(a, lambda c: c.send_prepare(b"a_stmt", b"SELECT 42"))

        def run_a_stmt() -> bytes | None:
            return pq_call(a, lambda c: c.send_query_prepared(b"a_stmt", [])).get_value(0, 0)

        assert res.status == pq.ExecStatus.COMMAND_OK
        for _ in range(4):
            names = b.execute("SELECT array_agg(name) FROM pg_prepared_statements")
            row = names.fetchone()
            assert row is not None and "a_stmt" not in (row[0] or [])
            with pytest.raises(psycopg.errors.InvalidSqlStatementName):
                b.execute("EXECUTE a_stmt")
            assert run_a_stmt() == b"42"
        # B asking for A's statement by name at the protocol level fails too.
        res = pq_call(b, lambda c: c.send_describe_prepared(b"a_stmt"))
        assert res.status == pq.ExecStatus.FATAL_ERROR
        assert res.error_field(pq.DiagnosticField.SQLSTATE) == b"26000"
        assert b"a_stmt" in (res.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"")
        # and A still has it
        assert run_a_stmt() == b"42"


def test_named_statement_lifecycle(pg15: Cluster) -> None:
    """Close, re-Parse under the same name, duplicate names, DEALLOCATE ALL: as PostgreSQL."""

    def prepare(conn: psycopg.Connection[tuple[Any, ...]], name: bytes, sql: bytes) -> bytes:
        res = pq_call(conn, lambda c: c.send_prepare(name, sql))
        if res.status == pq.ExecStatus.COMMAND_OK:
            return b"ok"
        return res.error_field(pq.DiagnosticField.SQLSTATE) or b"?"

    def run(conn: psycopg.Connection[tuple[Any, ...]], name: bytes) -> bytes | None:
        res = pq_call(conn, lambda c: c.send_query_prepared(name, []))
        if res.status == pq.ExecStatus.TUPLES_OK:
            return res.get_value(0, 0)
        return res.error_field(pq.DiagnosticField.SQLSTATE)

    def close(conn: psycopg.Connection[tuple[Any, ...]], name: bytes) -> int:
        return pq_call(conn, lambda c: c.send_close_prepared(name)).status

    with running(make_config(pg15, pool_size=2)) as p, connect(p) as a, connect(p) as b:
        assert prepare(a, b"s1", b"SELECT 1") == b"ok"
        assert prepare(b, b"s1", b"SELECT 'b'") == b"ok"
        assert run(a, b"s1") == b"1"
        # a second Parse of a name in use fails like PostgreSQL, and A goes on
        assert prepare(a, b"s1", b"SELECT 2") == b"42P05"
        assert run(a, b"s1") == b"1"
        assert close(a, b"s1") == pq.ExecStatus.COMMAND_OK
        assert close(a, b"never_prepared") == pq.ExecStatus.COMMAND_OK
        assert prepare(a, b"s1", b"SELECT 2") == b"ok"
        assert run(a, b"s1") == b"2"
        assert run(b, b"s1") == b"b"  # B's s1 is B's
        a.execute("DEALLOCATE ALL")
        assert run(a, b"s1") == b"26000"
        assert a.execute("SELECT 'usable'").fetchone() == ("usable",)
        assert prepare(a, b"s1", b"SELECT 3") == b"ok"
        assert run(a, b"s1") == b"3"
        assert run(b, b"s1") == b"b"


def test_client_encoding_follows_the_client(pg15: Cluster) -> None:
    with (
        running(make_config(pg15, pool_size=1)) as p,
        connect(p, client_encoding="LATIN1") as a,
        connect(p) as b,
    ):
        for _ in range(3):
            assert a.execute("SELECT 'é' || %s", ("ü",)).fetchone() == ("éü",)
            assert a.execute("SHOW client_encoding").fetchone() == ("LATIN1",)
            assert b.execute("SHOW client_encoding").fetchone() == ("UTF8",)
            assert b.execute("SELECT 'é' || %s", ("€",)).fetchone() == ("é€",)


def test_session_mode_temp_tables_and_settings_end_with_the_client(pg15: Cluster) -> None:
    defaults = _defaults(pg15)
    with running(make_config(pg15, pool_mode="session", pool_size=1)) as p:
        with connect(p) as a:
            a.execute("CREATE TEMP TABLE session_tmp (x int)")
            a.execute("INSERT INTO session_tmp VALUES (1)")
            a.execute("SET statement_timeout = 777")
            a.execute("SET application_name = 'leaver'")
            a.execute("PREPARE sql_level AS SELECT 1")
            a_pid = a.info.backend_pid
            assert a.execute("SELECT count(*) FROM session_tmp").fetchone() == (1,)
            server_pid = a.execute("SELECT pg_backend_pid()").fetchone()
        with connect(p) as b:
            assert b.execute("SELECT pg_backend_pid()").fetchone() == server_pid
            assert b.execute("SELECT to_regclass('session_tmp')").fetchone() == (None,)
            row = b.execute(STATE_SQL).fetchone()
            assert row is not None and tuple(row[:4]) == defaults
            with pytest.raises(psycopg.errors.InvalidSqlStatementName):
                b.execute("EXECUTE sql_level")
            assert b.info.backend_pid != a_pid  # each client has its own cancel key


def test_startup_options_and_application_name_are_honoured(pg15: Cluster) -> None:
    defaults = _defaults(pg15)
    mine = ("startup_app", defaults[1], defaults[2], "1234ms")
    with running(make_config(pg15, pool_size=2)) as p:
        with (
            connect(p, options="-c statement_timeout=1234", application_name="startup_app") as a,
            connect(p, autocommit=False) as other,
        ):
            assert a.info.parameter_status("application_name") == "startup_app"
            assert len(interleave(a, other, mine, defaults)) == 2
        with connect(p) as b:
            row = b.execute(STATE_SQL).fetchone()
            assert row is not None and tuple(row[:4]) == defaults


def test_session_mode_listen_notify(pg15: Cluster) -> None:
    with running(make_config(pg15, pool_mode="session", pool_size=2)) as p:
        with connect(p) as listener, connect(p) as sender:
            listener.execute("LISTEN pooled_channel")
            sender.execute("NOTIFY pooled_channel, 'hello'")
            sender.execute("SELECT pg_notify('pooled_channel', 'again')")
            got = [n.payload for n in listener.notifies(timeout=5, stop_after=2)]
            assert got == ["hello", "again"]
        with connect(p) as late:  # the next client on that server gets no stray message
            late.execute("NOTIFY pooled_channel, 'nobody listens'")
            assert list(late.notifies(timeout=0.2)) == []


def test_session_mode_client_waits_for_a_server_to_be_released(pg15: Cluster) -> None:
    config = make_config(pg15, pool_mode="session", pool_size=1, user={"connect_timeout": 5000})
    with running(config) as p:
        assert p.engine is not None
        engine = p.engine
        a = connect(p)
        server_pid = a.execute("SELECT pg_backend_pid()").fetchone()
        outcome: list[object] = []

        def query_b() -> None:
            try:
                with connect(p) as b:
                    outcome.append(b.execute("SELECT pg_backend_pid()").fetchone())
            except psycopg.Error as exc:
                outcome.append(exc)

        thread = threading.Thread(target=query_b)
        thread.start()
        wait_for(
            "B to wait for a server",
            lambda: any(c.waiting_since is not None for c in list(engine.clients.values())),
        )
        a.close()
        thread.join(TIMEOUT)
        assert outcome == [server_pid]


# --- servers that vanish -------------------------------------------------------------


def _terminate_backends(cluster: Cluster, user: str) -> int:
    with direct(cluster) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = %s",
            (user,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_idle_servers_terminated_by_postgres_are_replaced(pg15: Cluster) -> None:
    with running(make_config(pg15, pool_size=2)) as p:
        assert p.engine is not None
        engine = p.engine
        with connect(p) as a, connect(p, autocommit=False) as b:
            b.execute("SELECT 1")
            a.execute("SELECT 1")  # two servers now
            b.commit()
            assert _terminate_backends(pg15, "md5_user") == 2
            wait_for("the pooler to notice", lambda: not engine.servers)
            for _ in range(4):
                assert a.execute("SELECT 'fresh'").fetchone() == ("fresh",)
                assert b.execute("SELECT 'fresh'").fetchone() == ("fresh",)
                b.commit()


def test_server_terminated_mid_transaction(pg15: Cluster) -> None:
    with running(make_config(pg15, pool_size=1)) as p:
        with connect(p, autocommit=False) as a:
            a.execute("SELECT 1")
            assert _terminate_backends(pg15, "md5_user") == 1
            with pytest.raises(psycopg.OperationalError) as info:
                a.execute("SELECT 2")
            assert info.value.sqlstate in (None, "57P01", "08006"), info.value
        with connect(p) as b:
            assert b.execute("SELECT 'next'").fetchone() == ("next",)


# --- clients that vanish -------------------------------------------------------------


def _leave_in_transaction(raw: Raw, table: str) -> None:
    events = raw.query(f"BEGIN; INSERT INTO {table} VALUES (1)")
    assert only(events, ReadyForQuery)[-1].status == "T", events


def _leave_in_failed_transaction(raw: Raw, table: str) -> None:
    events = raw.query(f"BEGIN; INSERT INTO {table} VALUES (1); SELECT 1 / 0")
    assert only(events, ReadyForQuery)[-1].status == "E", events


def _leave_in_copy(raw: Raw, table: str) -> None:
    raw.send(Query(f"COPY {table} FROM STDIN"))
    raw.until(CopyInResponse)
    raw.send(*(CopyData(f"{i}\n".encode()) for i in range(100)))


def _leave_before_sync(raw: Raw, table: str) -> None:
    """Answered extended messages, but no Sync: an implicit transaction stays open."""
    raw.send(
        Parse("", f"INSERT INTO {table} VALUES (1)"),
        Bind("", "", (), (), ()),
        Execute("", 0),
        Flush(),
    )
    events = raw.until(CommandComplete)
    assert [type(e) for e in events] == [ParseComplete, BindComplete, CommandComplete]


def _leave_after_error_before_sync(raw: Raw, table: str) -> None:
    """An error with no Sync yet: the server ignores everything until a Sync comes."""
    raw.send(Parse("", f"INSERT INTO {table} VALUES ('not a number')"), Flush())
    assert error_of(raw.until(ErrorResponse)).sqlstate == "22P02"


LEAVING = {
    "in-transaction": _leave_in_transaction,
    "in-failed-transaction": _leave_in_failed_transaction,
    "in-copy": _leave_in_copy,
    "before-sync": _leave_before_sync,
    "error-before-sync": _leave_after_error_before_sync,
}


@pytest.mark.parametrize("how", list(LEAVING))
def test_client_vanishing_mid_transaction_leaves_nothing_behind(pg15: Cluster, how: str) -> None:
    """A client crashes holding a server: the next one (pool_size 1) starts clean."""
    table = scratch_table(pg15)
    # statement_timeout: a server left ignoring messages fails the test, not hangs it
    with running(make_config(pg15, pool_size=1, user={"statement_timeout": 3000})) as p:
        with Raw(p.port) as raw:
            raw.ready()
            LEAVING[how](raw, table)
            raw.abort()
        with connect(p) as b:
            for _ in range(2):
                row = b.execute(
                    f"SELECT count(*), pg_current_xact_id_if_assigned() FROM {table}"
                ).fetchone()
                assert row == (0, None), row
                assert b.info.transaction_status == pq.TransactionStatus.IDLE
    with direct(pg15) as conn:
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)


def test_idle_in_transaction_server_is_rolled_back_and_reused(pg15: Cluster) -> None:
    with running(make_config(pg15, pool_size=1)) as p:
        with Raw(p.port) as raw:
            raw.ready()
            pid = backend_pid(raw.query("BEGIN; SELECT pg_backend_pid()"))
            raw.abort()
        with connect(p) as b:
            assert b.execute("SELECT pg_backend_pid()").fetchone() == (pid,)


def test_client_disconnect_with_query_running_stops_it(pg15: Cluster) -> None:
    marker = f"vanish_{uuid.uuid4().hex[:10]}"
    with running(make_config(pg15, pool_size=1)) as p:
        raw = Raw(p.port).ready()
        raw.send(Query(f"SELECT pg_sleep(30) /* {marker} */"))
        wait_for("the query to start", lambda: running_queries(pg15, marker) == 1)
        left = time.monotonic()
        raw.abort()
        wait_for("the backend to stop", lambda: running_queries(pg15, marker) == 0, 5)
        assert time.monotonic() - left < 5
        with connect(p) as b:
            assert b.execute("SELECT 'next client'").fetchone() == ("next client",)


def test_copy_error_while_client_keeps_sending(pg15: Cluster) -> None:
    """The server answers a bad row with E and Z(I) while the client still sends CopyData.

    The server must stay with that client until its CopyDone: the next client (here a
    COPY of its own, so leaked rows would land in its table) must not get it earlier.
    """
    first, second = scratch_table(pg15), scratch_table(pg15)
    with running(make_config(pg15, pool_size=1)) as p:
        a = Raw(p.port).ready()
        a.send(Query(f"COPY {first} FROM STDIN"))
        assert isinstance(a.until(CopyInResponse)[-1], CopyInResponse)
        a.sock.sendall(bytes(CopyData(b"1\n")) + bytes(CopyData(b"not a number\n")))
        events = a.until(ReadyForQuery)
        assert error_of(events).sqlstate == "22P02", events

        b_started = threading.Event()
        b_result: list[object] = []

        def second_client() -> None:
            try:
                with connect(p) as b, b.cursor() as cur:
                    with cur.copy(f"COPY {second} FROM STDIN") as copy:
                        b_started.set()
                        for i in range(10):
                            copy.write_row((i,))
                    b_result.append(cur.rowcount)
            except BaseException as exc:
                b_result.append(exc)

        thread = threading.Thread(target=second_client)
        thread.start()
        # A correct pooler keeps B waiting; give a broken one the chance to show itself.
        assert not b_started.wait(0.3), "the next client got the server before CopyDone"
        trailing = b"".join(bytes(CopyData(f"{i}\n".encode())) for i in range(5000))
        a.sock.sendall(trailing + bytes(CopyDone()))
        thread.join(TIMEOUT)
        assert b_result == [10]
        # A is still a working client afterwards.
        assert only(a.query("SELECT 1"), DataRow)[0].values == (b"1",)
        a.sock.close()
    with direct(pg15) as conn:
        assert conn.execute(f"SELECT count(*) FROM {first}").fetchone() == (0,)
        assert conn.execute(f"SELECT count(*) FROM {second}").fetchone() == (10,)


def test_simple_query_pipelined_with_extended_messages(pg15: Cluster) -> None:
    """PgJDBC sends Query("BEGIN") and P/B/E/S in one write."""
    table = scratch_table(pg15)
    with running(make_config(pg15, pool_size=1)) as p, Raw(p.port) as raw:
        raw.ready()
        raw.send(  # one write
            Query("BEGIN"),
            Parse("", f"INSERT INTO {table} VALUES ($1::int) RETURNING x + 1"),
            Bind("", "", (), (b"41",), ()),
            Execute("", 0),
            Sync(),
        )
        begin = raw.until(ReadyForQuery)
        assert [type(e) for e in begin] == [CommandComplete, ReadyForQuery], begin
        assert only(begin, ReadyForQuery)[0].status == "T"
        extended = raw.until(ReadyForQuery)
        assert [type(e) for e in extended] == [
            ParseComplete,
            BindComplete,
            DataRow,
            CommandComplete,
            ReadyForQuery,
        ], extended
        assert only(extended, DataRow)[0].values == (b"42",)
        assert only(extended, ReadyForQuery)[0].status == "T"
        commit = raw.query("COMMIT")
        assert only(commit, ReadyForQuery)[0].status == "I"
    with direct(pg15) as conn:
        assert conn.execute(f"SELECT array_agg(x) FROM {table}").fetchone() == ([41],)


def test_simple_query_then_extended_batch_stay_on_one_server(pg15: Cluster) -> None:
    """Query + P/B/E/S in one write: the first Z(I) must not release the server."""
    stop = threading.Event()

    def noise(port: int) -> None:
        with psycopg.connect(
            f"host=127.0.0.1 port={port} user=md5_user password=md5-secret dbname={TEST_DATABASE}",
            autocommit=True,
        ) as conn:
            while not stop.is_set():
                conn.execute("SELECT 1")

    with running(make_config(pg15, pool_size=2)) as p, Raw(p.port) as raw:
        raw.ready()
        noisy = [threading.Thread(target=noise, args=(p.port,)) for _ in range(2)]
        for t in noisy:
            t.start()
        try:
            for _ in range(30):
                batch = (
                    Query("SELECT pg_backend_pid()"),
                    Parse("", "SELECT pg_backend_pid()"),
                    Bind("", "", (), (), ()),
                    Execute("", 0),
                    Sync(),
                )
                raw.send(*batch)
                simple = raw.until(ReadyForQuery)
                extended = raw.until(ReadyForQuery)
                assert backend_pid(simple) == backend_pid(extended)
        finally:
            stop.set()
            for t in noisy:
                t.join(TIMEOUT)


# --- errors the pooler makes ---------------------------------------------------------


def test_pool_exhaustion_gives_53300_and_the_client_can_retry(pg15: Cluster) -> None:
    config = make_config(pg15, pool_size=1, user={"connect_timeout": 300})
    with running(config) as p, connect(p, autocommit=False) as a, connect(p) as b:
        a.execute("SELECT 1")  # A holds the only server in its transaction
        started = time.monotonic()
        with pytest.raises(psycopg.errors.TooManyConnections) as info:
            b.execute("SELECT 'b'")
        waited = time.monotonic() - started
        assert 0.25 <= waited < 3, waited
        assert info.value.sqlstate == "53300"
        assert "connect_timeout" in str(info.value)
        assert b.info.transaction_status == pq.TransactionStatus.IDLE
        a.commit()
        assert b.execute("SELECT 'b'").fetchone() == ("b",)


def test_max_client_conn(pg15: Cluster) -> None:
    with running(make_config(pg15, general={"max_client_conn": 2})) as p:
        with connect(p) as a, connect(p) as b:
            with Raw(p.port) as raw:
                events = raw.login("md5_user")
            error = error_of(events)
            assert (error.sqlstate, error.severity) == ("53300", "FATAL"), events
            assert a.execute("SELECT 1").fetchone() == b.execute("SELECT 1").fetchone()
        # Room again once the pooler has read a's and b's goodbyes: on the task-based
        # runtimes the new client's accept may be served before those reads, so it is
        # refused (53300) until then; a bounded wait, not a fixed sleep.
        deadline = time.monotonic() + 5
        while True:
            try:
                c = connect(p)
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        with c:
            assert c.execute("SELECT 'c'").fetchone() == ("c",)


def test_server_unreachable_gives_08001_quickly(pg15: Cluster) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = closed.getsockname()[1]
        config = replace_servers(make_config(pg15), "127.0.0.1", port)
        with running(config) as p:
            started = time.monotonic()
            with Raw(p.port) as raw:
                events = raw.login("md5_user")
            assert time.monotonic() - started < 3
            assert error_of(events).sqlstate == "08001", events
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError, match="could not connect"):
                connect(p)
            assert time.monotonic() - started < 3


def test_server_refuses_login_gives_its_own_error(pg15: Cluster) -> None:
    config = make_config(pg15, user={"server_password": "wrong-for-the-server"})
    with running(config) as p:
        started = time.monotonic()
        with Raw(p.port) as raw:
            events = raw.login("md5_user")
        assert time.monotonic() - started < 3
        error = error_of(events)
        assert error.sqlstate == "28P01", events
        assert error.message == 'password authentication failed for user "md5_user"'
        # trust_user's server does not ask for a password, so it is unaffected
        with connect(p, "trust_user") as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("trust_user",)


def test_statement_timeout_gives_57014(pg15: Cluster) -> None:
    marker = f"stmt_timeout_{uuid.uuid4().hex[:10]}"
    with running(make_config(pg15, pool_size=1, user={"statement_timeout": 300})) as p:
        with connect(p, autocommit=False) as conn:
            assert conn.execute("SELECT 1 FROM pg_sleep(0.05)").fetchone() == (1,)
            # time spent idle in a transaction is not a running statement
            time.sleep(0.4)
            assert conn.execute("SELECT 2").fetchone() == (2,)
            conn.commit()
            started = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled) as info:
                conn.execute(f"SELECT pg_sleep(5) /* {marker} */")
            # cut short well before pg_sleep(5) would end (room for a loaded machine)
            assert 0.25 < time.monotonic() - started < 4.5
            assert info.value.sqlstate == "57014"
        wait_for("the query to stop", lambda: running_queries(pg15, marker) == 0, 5)
        with connect(p) as conn:
            assert conn.execute("SELECT 'after'").fetchone() == ("after",)


def test_idle_in_transaction_timeout_gives_25P03(pg15: Cluster) -> None:
    config = make_config(pg15, general={"idle_client_in_transaction_timeout": 300})
    with running(config) as p, Raw(p.port) as raw:
        raw.ready()
        assert only(raw.query("SELECT 1"), DataRow)  # outside a transaction: no timeout
        events = raw.query("BEGIN")
        assert only(events, ReadyForQuery)[-1].status == "T"
        started = time.monotonic()
        events = raw.until(ErrorResponse)
        assert 0.25 < time.monotonic() - started < 3
        error = error_of(events)
        assert (error.sqlstate, error.severity) == ("25P03", "FATAL")
        assert isinstance(raw.next(), ConnectionClosed)
        with connect(p) as conn:  # the server was rolled back and works
            assert conn.info.transaction_status == pq.TransactionStatus.IDLE
            assert conn.execute("SELECT 1").fetchone() == (1,)


def _refused_with(port: int) -> ErrorResponse | None:
    """What a new client gets after its StartupMessage; None if TCP refuses it."""
    try:
        raw = Raw(port)
    except ConnectionRefusedError:
        return None
    with raw:
        events = raw.login("md5_user")
    assert not only(events, AuthenticationOk), events
    return error_of(events)


def test_shutdown_lets_open_transactions_finish(pg15: Cluster) -> None:
    table = scratch_table(pg15)
    p = Pooler(make_config(pg15, pool_size=2))
    p.start()
    stopper = threading.Thread(target=p.stop)
    try:
        with connect(p, autocommit=False) as conn, connect(p) as idle:
            conn.execute(f"INSERT INTO {table} VALUES (1)")
            stopper.start()
            # An idle client is sent away; a new one is refused.
            with pytest.raises(psycopg.OperationalError):
                wait_for("the idle client to be dropped", lambda: idle.execute("SELECT 1") and 0)
            refused = _refused_with(p.port)
            assert refused is not None and refused.sqlstate == "57P01", refused
            # The open transaction finishes.
            conn.execute(f"INSERT INTO {table} VALUES (2)")
            conn.commit()
        closed = time.monotonic()
        stopper.join(TIMEOUT)
        assert not stopper.is_alive()
        assert time.monotonic() - closed < 3
        assert p.exit_code == 0
    finally:
        if not stopper.is_alive():
            p.stop()
    with direct(pg15) as conn:
        assert conn.execute(f"SELECT array_agg(x ORDER BY x) FROM {table}").fetchone() == ([1, 2],)


# --- PostgreSQL 18 -------------------------------------------------------------------


def test_pg18_psql_and_psycopg(pg18: Cluster, pg15: Cluster) -> None:
    with running(make_config(pg18, pool_size=2)) as p:
        result = psql(pg15, p, "scram_user", "-c", "SHOW server_version_num")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().startswith("18")
        for version in ("3.0", "latest"):
            with connect(p, "md5_user", max_protocol_version=version) as conn:
                assert conn.info.server_version // 10000 == 18
                assert conn.pgconn.full_protocol_version == 30000
                cur = conn.cursor(binary=True)
                cur.execute("SELECT %s::int + 1, current_setting('search_path')", (41,))
                assert cur.fetchone() == (42, '"$user", public')
        with Raw(p.port) as raw:
            events = raw.login("md5_user", version=PROTOCOL_3_2)
            assert isinstance(events[-1], ReadyForQuery), events
            negotiated = only(events, NegotiateProtocolVersion)
            assert negotiated and negotiated[0].newest_version == PROTOCOL_3_0
