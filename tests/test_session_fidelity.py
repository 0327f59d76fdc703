"""What real drivers see through the pooler, compared with PostgreSQL itself.

Each test runs the same driver program with the same assertions three ways: directly
against PostgreSQL 15, through pgsansio in session mode and through pgsansio in
transaction mode (``target``). A session pooler should be invisible; where transaction
mode must differ, the test says so and why (see ``docs/session-mode.md``).

Behaviour that lives in the engine alone runs on the asyncio frontend (two poolers for
the module, one per mode); behaviour where the frontend takes part (closing a socket
after Terminate, a server's FATAL reaching a client) runs on every frontend.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pg8000.native
import psycopg
import pytest
from _pooler import Pooler, make_config, running
from hypothesis import given, settings
from hypothesis import strategies as st

from pgsansio.protocol import (
    CLIENT,
    NEED_DATA,
    Bind,
    Close,
    Connection,
    ConnectionClosed,
    DataRow,
    Describe,
    ErrorResponse,
    Event,
    Execute,
    NoticeResponse,
    ParameterStatus,
    Parse,
    Query,
    ReadyForQuery,
    StartupMessage,
    Sync,
)
from pgsansio.testing.cluster import TEST_DATABASE, Cluster

TIMEOUT = 20.0
USER, PASSWORD = "md5_user", "md5-secret"
MODES = ("session", "transaction")


@pytest.fixture(scope="module")
def poolers(pg15: Cluster) -> Iterator[dict[str, Pooler]]:
    """One pooler per pool mode on the asyncio frontend, shared by the module's tests."""
    started: dict[str, Pooler] = {}
    try:
        for mode in MODES:
            p = Pooler(make_config(pg15, pool_mode=mode, pool_size=2), frontend="asyncio")
            p.start()
            started[mode] = p
        yield started
    finally:
        for p in started.values():
            p.stop()


@pytest.fixture(params=("direct", *MODES))
def target(request: pytest.FixtureRequest, pg15: Cluster, poolers: dict[str, Pooler]) -> str:
    """``direct`` (PostgreSQL itself), ``session`` or ``transaction`` (through pgsansio)."""
    name: str = request.param
    return name


def port_of(target: str, pg15: Cluster, poolers: dict[str, Pooler]) -> int:
    return pg15.port if target == "direct" else poolers[target].port


def pg8000_connect(port: int, **kwargs: Any) -> pg8000.native.Connection:
    return pg8000.native.Connection(
        USER,
        host="127.0.0.1",
        port=port,
        password=PASSWORD,
        database=TEST_DATABASE,
        timeout=TIMEOUT,
        **kwargs,
    )


# --- item 2: up to 65,535 parameters ----------------------------------------------------


@pytest.mark.parametrize("n", [40_000, 60_000, 65_535])
def test_pg8000_many_parameters(
    target: str, pg15: Cluster, poolers: dict[str, Pooler], n: int
) -> None:
    """PostgreSQL reads the Int16 counts of Parse, Bind and ParameterDescription as
    unsigned: 65,535 parameters work, and through the pooler too."""
    con = pg8000_connect(port_of(target, pg15, poolers))
    try:
        # pg8000's own Parse/Bind/Execute/Sync (native.run's name mapping is quadratic
        # in the number of parameters: 15 s for 65,535 before a byte is sent).
        sql = (
            "SELECT cardinality(ARRAY[" + ",".join(f"${i}" for i in range(1, n + 1)) + "]::int[])"
        )
        context = con.execute_unnamed(sql, vals=[str(i) for i in range(n)], oids=[23] * n)
        assert context.rows == [[n]]
        # and the connection is still good for the next statement
        assert con.run("SELECT :a::int + 1", a=41) == [[42]]
    finally:
        con.close()


# --- items 3 and 4: Terminate closes silently, whatever comes with it -------------------


def eof_without_a_byte(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes (PostgreSQL sends nothing)."""
    sock.settimeout(TIMEOUT)
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


def logged_in(port: int) -> tuple[socket.socket, Connection]:
    """A raw socket logged in as trust_user (no password asked), after ReadyForQuery,
    and the client-role Connection that read the login."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    conn = Connection(CLIENT)
    sock.sendall(conn.send(StartupMessage({"user": "trust_user", "database": TEST_DATABASE})))
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            conn.receive_data(sock.recv(65536))
            continue
        assert isinstance(event, Event) and not isinstance(event, ConnectionClosed), event
        if isinstance(event, ReadyForQuery):
            return sock, conn


TERMINATE = b"X\0\0\0\x04"
# A Parse, a Sync and a Query: more messages in the same write as the Terminate.
AFTER = bytes(Parse("s", "SELECT 1")) + bytes(Sync()) + bytes(Query("SELECT 1"))


def each_target(pg15: Cluster, config: Any) -> Iterator[tuple[str, int]]:
    """PostgreSQL itself, then pgsansio (the test's frontend) in each pool mode."""
    yield "direct", pg15.port
    for mode in MODES:
        with running(make_config(pg15, pool_mode=mode, **{"pool_size": 2, **config})) as p:
            yield mode, p.port


@pytest.mark.usefixtures("pooler_frontend")
def test_terminate_before_the_startup_packet_closes_silently(pg15: Cluster) -> None:
    """PostgreSQL reads ``X\\0\\0\\0\\x04`` as a startup packet of absurd length,
    logs it and closes without a word (a COMMERROR); PgBouncer does the same."""
    for where, port in each_target(pg15, {}):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(TERMINATE)
            assert eof_without_a_byte(sock) == b"", where
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(TERMINATE + AFTER)
            assert eof_without_a_byte(sock) == b"", where


@pytest.mark.usefixtures("pooler_frontend")
def test_bytes_after_terminate_are_not_answered(pg15: Cluster) -> None:
    """A client's Terminate and more messages in one read: PostgreSQL stops reading at
    the Terminate and closes; nothing is answered."""
    for where, port in each_target(pg15, {}):
        sock, _ = logged_in(port)
        with sock:
            sock.sendall(TERMINATE + AFTER)
            assert eof_without_a_byte(sock) == b"", where


NODE_END_WHILE_CONNECTING = """
// end() called while connect() is still in progress: node-postgres writes its
// Terminate before the startup packet. Prints what the client saw, as JSON, at exit.
const { Client } = require('pg');
const events = [];
process.on('exit', () => console.log(JSON.stringify(events)));
process.on('uncaughtException', (e) => events.push('uncaught: ' + e.message));
const c = new Client({host: '127.0.0.1', port: Number(process.argv[2]),
                      user: 'trust_user', database: process.argv[3]});
c.on('error', (e) => events.push('error: ' + e.message));
c.on('end', () => events.push('end'));
c.connect().then(() => events.push('connected'),
                 (e) => events.push('connect failed: ' + e.message));
c.end().then(() => events.push('ended'), (e) => events.push('end failed: ' + e.message));
"""


@pytest.fixture(scope="module")
def node_pg() -> Iterator[pathlib.Path]:
    """A temporary directory with node-postgres installed by npm, and the script."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are not installed: node-postgres cannot run")
    with tempfile.TemporaryDirectory(prefix="pgsansio-node-") as tmp:
        npm = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent", "pg@8"],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            env={**os.environ, "NO_UPDATE_NOTIFIER": "1"},
        )
        if npm.returncode != 0:
            pytest.skip(f"npm could not install node-postgres: {npm.stderr.strip()[-300:]}")
        script = pathlib.Path(tmp, "end_while_connecting.js")
        script.write_text(NODE_END_WHILE_CONNECTING)
        yield script


def test_node_postgres_end_while_connecting(
    target: str, pg15: Cluster, poolers: dict[str, Pooler], node_pg: pathlib.Path
) -> None:
    """node-postgres ending a client before its startup packet went out: PostgreSQL
    closes silently, so the client only sees its own end; an error reply used to
    fail its connect() with "invalid startup packet length"."""
    run = subprocess.run(
        ["node", str(node_pg), str(port_of(target, pg15, poolers)), TEST_DATABASE],
        cwd=node_pg.parent,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == ["end", "ended"]


# --- item 1: the client's statement names, exactly as PostgreSQL keeps them -------------


class Raw:
    """A raw client (trust_user) that sends batches of messages, each ending in Sync,
    and notes each answer as (message type, SQLSTATE, message): what a driver sees."""

    def __init__(self, port: int) -> None:
        self.sock, self.conn = logged_in(port)

    def close(self) -> None:
        self.sock.close()

    def batch(self, *events: Event) -> list[tuple[str, ...]]:
        self.sock.sendall(b"".join(self.conn.send(e) for e in (*events, Sync())))
        seen: list[tuple[str, ...]] = []
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                self.conn.receive_data(self.sock.recv(65536))
                continue
            assert isinstance(event, Event) and not isinstance(event, ConnectionClosed), seen
            if isinstance(event, ErrorResponse):
                seen.append(("ErrorResponse", event.sqlstate or "", event.message or ""))
            elif isinstance(event, DataRow):
                seen.append(("DataRow", *(v.decode() if v else "" for v in event.values)))
            elif not isinstance(event, (ParameterStatus, NoticeResponse)):
                seen.append((type(event).__name__,))
            if isinstance(event, ReadyForQuery):
                return seen


def run_script(port: int, script: list[list[Event]]) -> list[list[tuple[str, ...]]]:
    raw = Raw(port)
    try:
        return [raw.batch(*batch) for batch in script]
    finally:
        raw.close()


def use(name: str, *args: str) -> list[Event]:
    """Bind and Execute statement ``name`` (an unnamed portal), as drivers do."""
    return [Bind("", name, (), [a.encode() for a in args]), Execute("", 0)]


BAD = "SELEC 1"  # a syntax error: its Parse fails
SCRIPTS: dict[str, list[list[Event]]] = {
    # The case: after a failed Parse the name is free again.
    "reprepare-after-failed-parse": [
        [Parse("s", BAD)],
        [Parse("s", "SELECT 1"), *use("s")],
        [*use("s")],
    ],
    # ... also when the Parse is the one a server already has (shared, answered by us).
    "failed-then-shared-text": [
        [Parse("t", "SELECT 2")],
        [Parse("s", BAD)],
        [Parse("s", "SELECT 2"), *use("s")],
    ],
    # An error earlier in the pipeline: the Parse after it is skipped, never prepared.
    "parse-skipped-after-error": [
        [Parse("a", BAD), Parse("b", "SELECT 3")],
        [*use("b")],
        [Parse("b", "SELECT 3"), *use("b")],
    ],
    # ... a shared one too (answered by us unless skipped).
    "shared-parse-skipped-after-error": [
        [Parse("t", "SELECT 4")],
        [Parse("a", BAD), Parse("b", "SELECT 4")],
        [*use("b")],
    ],
    # A Close skipped after an error leaves the statement prepared.
    "close-skipped-after-error": [
        [Parse("s", "SELECT 5")],
        [Parse("a", BAD), Close("S", "s")],
        [*use("s")],
    ],
    # Close then Parse again under the same name, skipped together: still the old one.
    "close-and-reparse-skipped": [
        [Parse("s", "SELECT 6")],
        [*use("s", "x"), Close("S", "s"), Parse("s", "SELECT 7"), *use("s")],
        [*use("s")],
    ],
    # pg8000's close, then the same name prepared again (it reuses freed names).
    "close-then-reprepare": [
        [Parse("s", "SELECT 8")],
        [Close("S", "s")],
        [Parse("s", "SELECT 9"), *use("s")],
        [Parse("s", "SELECT 9")],
    ],
    "close-unknown-then-use": [[Close("S", "nope")], [*use("nope")]],
    # A duplicate name: 42P05, and the first statement stays.
    "duplicate-name": [
        [Parse("s", "SELECT 10")],
        [Parse("s", "SELECT 11")],
        [*use("s")],
    ],
    "deallocate-all": [
        [Parse("s", "SELECT 12")],
        [Query("DEALLOCATE ALL")],
        [*use("s")],
        [Parse("s", "SELECT 13"), *use("s")],
    ],
}


@pytest.mark.parametrize("name", SCRIPTS)
def test_statement_names_as_postgresql_keeps_them(
    name: str, pg15: Cluster, poolers: dict[str, Pooler]
) -> None:
    """Each script gets the same answers through pgsansio (both modes) as directly."""
    script = SCRIPTS[name]
    direct = run_script(pg15.port, script)
    for mode in MODES:
        assert run_script(poolers[mode].port, script) == direct, mode


_NAMES = st.sampled_from(["a", "b"])
_TEXTS = st.sampled_from(["SELECT 1", "SELECT 2", BAD])
_MESSAGE = st.one_of(
    st.builds(lambda n, q: [Parse(n, q)], _NAMES, _TEXTS),
    st.builds(lambda n: [Close("S", n)], _NAMES),
    st.builds(use, _NAMES),
    st.builds(lambda n: [Describe("S", n)], _NAMES),
)
_BATCH = st.one_of(
    st.lists(_MESSAGE, min_size=1, max_size=4).map(lambda ms: [m for x in ms for m in x]),
    st.just([Query("DEALLOCATE ALL")]),
)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(script=st.lists(_BATCH, min_size=1, max_size=5))
def test_any_sequence_of_parse_close_and_errors(
    pg15: Cluster, poolers: dict[str, Pooler], script: list[list[Event]]
) -> None:
    """Property: any sequence of Parse (good or failing), Close, Bind/Execute and
    Describe of two names, in pipelines with errors, is answered through pgsansio
    exactly as PostgreSQL answers it (derandomized: the same 12 sequences each run)."""
    direct = run_script(pg15.port, script)
    for mode in MODES:
        assert run_script(poolers[mode].port, script) == direct, mode


def test_pg8000_prepare_fail_close_reprepare(
    target: str, pg15: Cluster, poolers: dict[str, Pooler]
) -> None:
    """pg8000 reuses a closed statement's name for its next prepare: no 42P05; and a
    prepare that failed leaves the connection usable."""
    con = pg8000_connect(port_of(target, pg15, poolers))
    try:
        with pytest.raises(pg8000.native.DatabaseError) as failed:
            con.prepare("SELEC :v")
        assert failed.value.args[0]["C"] == "42601"
        for round_ in range(3):
            ps = con.prepare("SELECT :v::int + :n::int")
            assert ps.run(v=1, n=round_) == [[1 + round_]]
            ps.close()
            other = con.prepare(f"SELECT :v::int * {round_ + 2}")
            assert other.run(v=5) == [[5 * (round_ + 2)]]
            other.close()
    finally:
        con.close()


# --- item 6: client_encoding as PostgreSQL spells it ------------------------------------


def psycopg_dsn(port: int) -> str:
    return (
        f"host=127.0.0.1 port={port} user={USER} password={PASSWORD} dbname={TEST_DATABASE}"
        " connect_timeout=10"
    )


@pytest.mark.parametrize(
    ("asked", "reported"),
    [("euc-jp", "EUC_JP"), ("utf8", "UTF8"), ("Unicode", "UTF8"), ("iso-8859-1", "LATIN1")],
)
def test_client_encoding_is_reported_as_postgresql_spells_it(
    target: str, pg15: Cluster, poolers: dict[str, Pooler], asked: str, reported: str
) -> None:
    """psycopg maps the reported name to a codec: it must be the server's name."""
    dsn = psycopg_dsn(port_of(target, pg15, poolers))
    with psycopg.connect(dsn, client_encoding=asked, autocommit=True) as conn:
        assert conn.info.parameter_status("client_encoding") == reported
        assert conn.execute("SHOW client_encoding").fetchone() == (reported,)
        assert conn.info.parameter_status("client_encoding") == reported


def test_unknown_client_encoding_is_refused_alike(
    target: str, pg15: Cluster, poolers: dict[str, Pooler]
) -> None:
    dsn = psycopg_dsn(port_of(target, pg15, poolers))
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(dsn, client_encoding="no-such-encoding")
    assert 'invalid value for parameter "client_encoding": "no-such-encoding"' in str(
        refused.value
    )


def test_encoding_names_fold_as_postgresql_folds_them() -> None:
    from pgsansio.engine._encodings import canonical_encoding

    assert canonical_encoding("EUC_JP") == canonical_encoding("euc-jp") == "EUC_JP"
    assert canonical_encoding("UTF-8") == canonical_encoding("unicode") == "UTF8"
    assert canonical_encoding("Windows-1252") == "WIN1252"
    assert canonical_encoding("Shift_JIS") == "SJIS"
    assert canonical_encoding("ISO-8859-15") == "LATIN9"
    assert canonical_encoding("klingon") is None


# --- item 5: session mode hands out the server's own process ID --------------------------


@pytest.fixture(params=("direct", "session"))
def session_target(
    request: pytest.FixtureRequest, pg15: Cluster, poolers: dict[str, Pooler]
) -> int:
    """PostgreSQL itself, or pgsansio in session mode: the port."""
    return port_of(request.param, pg15, poolers)


def test_backend_pid_is_the_servers(session_target: int) -> None:
    """conn.info.backend_pid, pg_backend_pid(), pg_stat_activity and the pid of a
    NotificationResponse agree, so a program can ignore its own NOTIFYs."""
    dsn = psycopg_dsn(session_target)
    with psycopg.connect(dsn, autocommit=True, application_name="fidelity") as conn:
        pid = conn.info.backend_pid
        assert conn.execute("SELECT pg_backend_pid()").fetchone() == (pid,)
        assert conn.execute(
            "SELECT application_name FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone() == ("fidelity",)
        conn.execute("LISTEN fidelity")
        conn.execute("NOTIFY fidelity, 'hello'")
        (note,) = list(conn.notifies(timeout=TIMEOUT, stop_after=1))
        assert (note.channel, note.payload, note.pid) == ("fidelity", "hello", pid)


def test_terminating_my_backend_pid(session_target: int) -> None:
    """pg_terminate_backend(<the client's backend_pid>) ends that client's session with
    the server's own 57P01, whoever runs it; cancel requests still work."""
    dsn = psycopg_dsn(session_target)
    with psycopg.connect(dsn, autocommit=True) as victim, psycopg.connect(dsn) as other:
        # The cancel key handed out still reaches the right query. (cancel_safe:
        # libpq's blocking PQcancel holds the GIL, and the pooler runs in this process.)
        timer = threading.Timer(0.3, lambda: victim.cancel_safe(timeout=5))
        timer.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                victim.execute("SELECT pg_sleep(10)")
        finally:
            timer.join()
        assert other.execute(
            "SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,)
        ).fetchone() == (True,)
        with pytest.raises(psycopg.errors.AdminShutdown) as ended:
            victim.execute("SELECT 1")
        assert ended.value.sqlstate == "57P01"


# --- item 7: a server terminated under its client: the server's own error ---------------


@pytest.mark.usefixtures("pooler_frontend")
def test_terminated_server_reaches_the_client_as_57p01(pg15: Cluster) -> None:
    """pg_terminate_backend on the server a client holds (its session, or its open
    transaction): the client's next statement fails with the server's FATAL 57P01,
    every time, as on a direct connection; never a made-up 08006."""
    for where, port in each_target(pg15, {}):
        dsn = psycopg_dsn(port)
        with psycopg.connect(dsn, autocommit=True) as other:
            for round_ in range(4):
                with psycopg.connect(dsn) as victim:  # a transaction holds the server
                    row = victim.execute("SELECT pg_backend_pid()").fetchone()
                    assert row is not None
                    killed = other.execute("SELECT pg_terminate_backend(%s)", row)
                    assert killed.fetchone() == (True,)
                    if round_ % 2:  # sometimes after the FATAL arrived, sometimes racing it
                        time.sleep(0.05)
                    with pytest.raises(psycopg.OperationalError) as ended:
                        victim.execute("SELECT 1")
                    assert ended.value.sqlstate == "57P01", (where, round_, ended.value)
