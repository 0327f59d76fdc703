"""The examples must keep working: each runs as a subprocess against real peers.

``examples/client.py`` logs in to PostgreSQL 15 with every password method;
``examples/server.py`` is visited by psql, psycopg (libpq) and the example client.
The examples are documentation, so a change in the library that breaks them
should fail here rather than in a reader's terminal.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator

import psycopg
import pytest

import pgsansio as pg
from pgsansio.testing.cluster import TEST_DATABASE, TEST_USERS, Cluster

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 30
PSQL = shutil.which("psql")
UNSUPPORTED = "extended query protocol not supported by this example"
needs_psql = pytest.mark.skipif(PSQL is None, reason="psql is not installed")


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's PG* variables and ~/.pgpass must not change what we test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSFILE="/nonexistent/pgpass", PGCONNECT_TIMEOUT="10", **extra)
    return env


def run_client(
    port: int, user: str, password: str | None, sql: str, dbname: str = "x"
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(EXAMPLES / "client.py"), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--user", user, "--dbname", dbname, sql]
    if password is not None:
        argv += ["--password", password]
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=TIMEOUT)


# --- examples/client.py against PostgreSQL --------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("user", list(TEST_USERS))
def test_client_logs_in_with_every_method(pg15: Cluster, user: str) -> None:
    password = TEST_USERS[user][1]
    sql = "select 1, null::text, 'a b'; select current_user"
    result = run_client(pg15.port, user, password, sql, TEST_DATABASE)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"1\t\\N\ta b\nSELECT 1\n{user}\nSELECT 1\n"
    assert result.stderr == ""


@pytest.mark.postgres
@pytest.mark.parametrize("user", ["password_user", "md5_user", "scram_user"])
def test_client_wrong_password(pg15: Cluster, user: str) -> None:
    result = run_client(pg15.port, user, "wrong", "select 1", TEST_DATABASE)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("FATAL 28P01: password authentication failed")


@pytest.mark.postgres
def test_client_query_error(pg15: Cluster) -> None:
    result = run_client(pg15.port, "trust_user", None, "select 1; select 1/0", TEST_DATABASE)
    assert result.returncode == 1
    assert result.stdout == "1\nSELECT 1\n"
    assert result.stderr == "ERROR 22012: division by zero\n"


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A PostgreSQL 15 with TLS on, so the client's sslmode=prefer path really runs."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate")
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "server.crt", tmp / "server.key"
    openssl = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subprocess.run(
        [*openssl, "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    cluster = Cluster(version=15)  # trust for everyone, the superuser included
    try:
        cluster.init(ssl_cert=str(cert), ssl_key=str(key))
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.mark.postgres
def test_client_tls(tls_cluster: Cluster) -> None:
    sql = "select ssl from pg_stat_ssl where pid = pg_backend_pid()"
    result = run_client(tls_cluster.port, "postgres", None, sql, "postgres")
    assert (result.returncode, result.stdout, result.stderr) == (0, "t\nSELECT 1\n", "")


# --- examples/server.py visited by psql, psycopg and the example client ----------


@pytest.fixture(scope="module")
def start_server() -> Iterator[Callable[..., int]]:
    """Start example servers on free ports; they are killed when the module ends."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> int:
        argv = [sys.executable, str(EXAMPLES / "server.py"), "--port", "0", *args]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "listening on HOST:PORT" once it accepts
        assert line.startswith("listening on "), line
        return int(line.rsplit(":", 1)[1])

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(TIMEOUT)


@pytest.fixture(scope="module")
def server(start_server: Callable[..., int]) -> int:
    return start_server()


@pytest.fixture(scope="module")
def scram_server(start_server: Callable[..., int]) -> int:
    return start_server("--password", "s3cret")


def psql(port: int, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    assert PSQL is not None
    argv = [PSQL, "-X", "-w", "-A", "-t", "-h", "127.0.0.1", "-p", str(port), "-U", "x"]
    argv += ["-d", "x", *args]
    env = clean_env(**({} if password is None else {"PGPASSWORD": password}))
    return subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=TIMEOUT, env=env
    )


@needs_psql
def test_psql_select(server: int) -> None:
    result = psql(server, "-c", "select 1")
    assert (result.returncode, result.stdout, result.stderr) == (0, "select 1\n", "")


@needs_psql
def test_psql_multiple_statements_empty_query_and_commands(server: int) -> None:
    # psql sends each -c string as one Query; the example answers it once.
    result = psql(server, "-c", "select 1; select 2", "-c", " ; ", "-c", "begin")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "select 1; select 2\nBEGIN\n"


@needs_psql
def test_psql_scram(scram_server: int) -> None:
    result = psql(scram_server, "-c", "select 1", password="s3cret")
    assert (result.returncode, result.stdout, result.stderr) == (0, "select 1\n", "")


@needs_psql
def test_psql_scram_wrong_password(scram_server: int) -> None:
    result = psql(scram_server, "-c", "select 1", password="wrong")
    assert result.returncode == 2
    assert 'FATAL:  password authentication failed for user "x"' in result.stderr


@needs_psql
def test_psql_scram_without_password(scram_server: int) -> None:
    result = psql(scram_server, "-c", "select 1")
    assert result.returncode == 2
    assert "no password supplied" in result.stderr


def psycopg_connect(port: int, password: str | None = None) -> psycopg.Connection:
    # No sslmode=disable on purpose: libpq asks for TLS first and gets "N".
    return psycopg.connect(
        host="127.0.0.1",
        port=port,
        user="x",
        dbname="x",
        password=password,  # None leaves it out
        autocommit=True,
        connect_timeout=10,
    )


def test_psycopg_simple_query(server: int) -> None:
    with psycopg_connect(server) as conn:
        # Without parameters psycopg sends a simple Query (PQsendQuery).
        assert conn.execute("select 1").fetchall() == [("select 1",)]
        assert conn.pgconn.exec_(b"select 'raw'").get_value(0, 0) == b"select 'raw'"
        assert conn.info.server_version == 180000


def test_psycopg_extended_query_gets_a_clean_error(server: int) -> None:
    with psycopg_connect(server) as conn:
        # Parameters make psycopg use Parse/Bind/Describe/Execute/Sync.
        with pytest.raises(psycopg.errors.FeatureNotSupported) as info:
            conn.execute("select %s::int", (1,))
        assert info.value.sqlstate == "0A000"
        assert str(info.value) == UNSUPPORTED
        # The server waited for the Sync, so the session is still usable.
        assert conn.execute("select 2").fetchall() == [("select 2",)]


def test_psycopg_scram(scram_server: int) -> None:
    with psycopg_connect(scram_server, "s3cret") as conn:
        assert conn.execute("select 1").fetchall() == [("select 1",)]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg_connect(scram_server, "wrong")


def exchange(
    sock: socket.socket, conn: pg.Connection, *events: pg.Event, raw: bytes = b""
) -> list[pg.Event]:
    """Send events (or raw bytes), then read until the server has answered them all."""
    sock.sendall(b"".join(conn.send(e) for e in events) + raw)
    received: list[pg.Event] = []
    while not received or conn.state not in (pg.State.READY, pg.State.CLOSED):
        event = conn.next_event()
        if event is pg.NEED_DATA:
            conn.receive_data(sock.recv(65536))
        elif isinstance(event, pg.Event):
            received.append(event)
    return received


def test_server_refuses_each_extended_batch_once(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=TIMEOUT) as sock:
        conn = pg.Connection(pg.CLIENT)
        assert isinstance(
            exchange(sock, conn, pg.StartupMessage({"user": "x"}))[-1], pg.ReadyForQuery
        )
        batch = [pg.Parse("", "select 1"), pg.Bind("", ""), pg.Execute()]
        events = exchange(sock, conn, *batch, pg.Sync(), *batch, pg.Sync(), pg.Query("select 3"))
        error = pg.ErrorResponse.build("0A000", UNSUPPORTED)
        ready = pg.ReadyForQuery("I")
        assert events[:4] == [error, ready, error, ready]
        assert events[-2:] == [pg.CommandComplete("SELECT 1"), ready]
        assert exchange(sock, conn, pg.FunctionCall(1)) == [error, ready]
        assert exchange(sock, conn, pg.Query(" ;")) == [pg.EmptyQueryResponse(), ready]


def test_server_answers_garbage_with_fatal(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=TIMEOUT) as sock:
        conn = pg.Connection(pg.CLIENT)
        conn.send(pg.StartupMessage({"user": "x"}))  # what we claim to send ...
        # ... and what we send: a startup packet cannot be 2 bytes long.
        events = exchange(sock, conn, raw=b"\x00\x00\x00\x02junk")
        assert isinstance(events[0], pg.ErrorResponse)
        assert (events[0].severity, events[0].sqlstate) == ("FATAL", "08P01")
        assert conn.state is pg.State.CLOSED


def test_example_client_against_example_server(server: int, scram_server: int) -> None:
    result = run_client(server, "x", None, "select 42;")
    assert (result.returncode, result.stdout, result.stderr) == (0, "select 42;\nSELECT 1\n", "")
    result = run_client(scram_server, "x", "s3cret", "select 42")
    assert (result.returncode, result.stdout, result.stderr) == (0, "select 42\nSELECT 1\n", "")
    result = run_client(scram_server, "x", "wrong", "select 42")
    assert result.returncode == 1
    assert result.stderr == 'FATAL 28P01: password authentication failed for user "x"\n'
