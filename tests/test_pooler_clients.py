"""Real clients through the pooler against real PostgreSQL.

Every test starts the real engine with the asyncio frontend on a thread
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

Nothing here sleeps for a fixed time to let something happen: waits poll with a
deadline. Every socket has a timeout, so a pooler that hangs fails the test instead
of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import re
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

from pgsansio.config_model import Config, ServerAddress, ShardConfig
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
    Bind,
    BindComplete,
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

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(90)]

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
    clients, per_client = 8, 40 if script == "tpcb" else 100
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


def test_pgbench_session_mode(pg15: Cluster, pgbench_tables: str) -> None:
    with running(make_config(pg15, pool_mode="session", pool_size=4)) as p:
        result = pgbench(
            pg15, p.port, pgbench_tables, "-n", "-M", "prepared", "-c", "4", "-j", "4",
            "-t", "50",
        )  # fmt: skip
        _check_pgbench(result, 200)


# --- psycopg 3 -----------------------------------------------------------------------


@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_psycopg_pipeline_with_error_then_recovery(pg15: Cluster, pool_mode: str) -> None:
    table = scratch_table(pg15)
    with running(make_config(pg15, pool_mode=pool_mode, pool_size=1)) as p, connect(p) as conn:
        with conn.pipeline() as pipe:
            c1 = conn.execute(f"INSERT INTO {table} VALUES (%s) RETURNING x", (1,))
            c2 = conn.execute("SELECT %s::text || %s::text", ("a", "b"))
            pipe.sync()
            conn.execute(f"INSERT INTO {table} VALUES (%s)", (2,))
            conn.execute("SELECT 1 / %s", (0,))
            conn.execute(f"INSERT INTO {table} VALUES (%s)", (3,))
            with pytest.raises(psycopg.errors.DivisionByZero):
                pipe.sync()
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
            assert conn.info.transaction_status == pq.TransactionStatus.INERROR
            conn.rollback()
        with connect(p, autocommit=True) as conn:
            conn.execute(f"INSERT INTO {table} VALUES (5)")
            assert conn.info.transaction_status == pq.TransactionStatus.IDLE
            got = conn.execute(f"SELECT array_agg(x ORDER BY x) FROM {table}").fetchone()
            assert got == ([2, 3, 5],)


# --- asyncpg -------------------------------------------------------------------------


def test_asyncpg_statement_cache_prepare_and_concurrency(pg15: Cluster) -> None:
    table = scratch_table(pg15, "client int, n int")
    pool_size, clients = 2, 6

    async def work(conn: asyncpg.Connection, i: int) -> None:
        for j in range(25):
            # repeated: served from asyncpg's statement cache (named statements)
            assert await conn.fetchval("SELECT $1::int * 1000 + $2::int", i, j) == i * 1000 + j
            # distinct texts, so many different statements are prepared
            assert await conn.fetchval(f"SELECT {j} + $1::int AS c{i}_{j}", i) == i + j
        stmt = await conn.prepare("SELECT $1::text || '-' || $2::int")
        for j in range(10):
            assert await stmt.fetchval(f"c{i}", j) == f"c{i}-{j}"
        async with conn.transaction():
            await conn.executemany(
                f"INSERT INTO {table} VALUES ($1, $2)", [(i, n) for n in range(10)]
            )
            assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE client = $1", i) == 10
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

    with running(make_config(pg15, pool_size=pool_size, auth_type="scram-sha-256")) as p:
        asyncio.run(main(p.port))
        assert p.engine is not None
        assert len(p.engine.servers) <= pool_size


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
        pgconn = conn.pgconn
        res = pgconn.prepare(b"my_adder", b"SELECT $1::int + $2::int")
        assert res.status == pq.ExecStatus.COMMAND_OK, res.error_message
        res = pgconn.exec_prepared(b"my_adder", [b"1", b"2"])
        assert res.get_value(0, 0) == b"3"
        # One parameter short: PostgreSQL names the statement in its message.
        res = pgconn.exec_prepared(b"my_adder", [b"1"])
        assert res.status == pq.ExecStatus.FATAL_ERROR
        assert res.error_field(pq.DiagnosticField.SQLSTATE) == b"08P01"
        message = (res.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"").decode()
        assert '"my_adder"' in message
        assert "PGSANSIO_" not in res.error_message.decode()
        res = pgconn.exec_prepared(b"my_adder", [b"20", b"22"])
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
    mine = ("client_a", "Pacific/Chatham", "a_schema, public", "4321ms")
    assert defaults != mine
    with running(make_config(pg15, pool_size=2)) as p:
        with connect(p) as a, connect(p, autocommit=False) as other:
            a.execute("SET application_name = 'client_a'")
            a.execute("SET TimeZone = 'Pacific/Chatham'")
            a.execute("SET search_path = a_schema, public")
            a.execute("SET statement_timeout = 4321")
            # A's settings follow it to both servers; the other client never sees them.
            assert len(interleave(a, other, mine, defaults)) == 2
            assert a.info.parameter_status("application_name") == "client_a"
            assert a.info.parameter_status("TimeZone") == "Pacific/Chatham"
        with connect(p) as b:
            for _ in range(4):
                row = b.execute(STATE_SQL).fetchone()
                assert row is not None and tuple(row[:4]) == defaults


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
        res = a.pgconn.prepare(b"a_stmt", b"SELECT 42")
        assert res.status == pq.ExecStatus.COMMAND_OK
        for _ in range(4):
            names = b.execute("SELECT array_agg(name) FROM pg_prepared_statements")
            row = names.fetchone()
            assert row is not None and "a_stmt" not in (row[0] or [])
            with pytest.raises(psycopg.errors.InvalidSqlStatementName):
                b.execute("EXECUTE a_stmt")
            assert a.pgconn.exec_prepared(b"a_stmt", []).get_value(0, 0) == b"42"
        # B asking for A's statement by name at the protocol level fails too.
        res = b.pgconn.describe_prepared(b"a_stmt")
        assert res.status == pq.ExecStatus.FATAL_ERROR
        assert res.error_field(pq.DiagnosticField.SQLSTATE) == b"26000"
        assert b"a_stmt" in (res.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"")
        # and A still has it
        assert a.pgconn.exec_prepared(b"a_stmt", []).get_value(0, 0) == b"42"


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


# --- clients that vanish -------------------------------------------------------------


def test_client_disconnect_mid_transaction_rolls_back(pg15: Cluster) -> None:
    table = scratch_table(pg15)
    with running(make_config(pg15, pool_size=1)) as p:
        with Raw(p.port) as raw:
            raw.ready()
            events = raw.query(f"BEGIN; INSERT INTO {table} VALUES (1)")
            assert only(events, ReadyForQuery)[-1].status == "T", events
            pid = backend_pid(raw.query("SELECT pg_backend_pid()"))
            raw.abort()
        with connect(p, autocommit=True) as b:
            row = b.execute(
                f"SELECT count(*), pg_current_xact_id_if_assigned(), pg_backend_pid() FROM {table}"
            ).fetchone()
            assert row is not None
            assert row[:2] == (0, None), row
            assert b.info.transaction_status == pq.TransactionStatus.IDLE
            assert row[2] == pid  # rolled back and reused, not closed
    with direct(pg15) as conn:
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)


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
        with connect(p) as conn:
            assert conn.execute("SELECT 1 FROM pg_sleep(0.05)").fetchone() == (1,)
            started = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled) as info:
                conn.execute(f"SELECT pg_sleep(5) /* {marker} */")
            assert 0.25 < time.monotonic() - started < 2.5
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
    """What a new connection gets; None when it is refused at the TCP level."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    except ConnectionRefusedError:
        return None
    with sock:
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
    conn = Connection(CLIENT)
    conn.send(StartupMessage({"user": "md5_user", "database": TEST_DATABASE}))
    conn.receive_data(data)
    conn.receive_data(b"")
    event = conn.next_event()
    assert isinstance(event, ErrorResponse), (event, data)
    return event


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
