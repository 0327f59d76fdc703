"""The client-role Connection against real PostgreSQL 15 and 18.

Unit tests check the state machine against what the docs say; these check it
against what servers do: every login method, errors in the middle of simple
and extended queries, COPY both ways (and the bad-row race), asynchronous
messages, protocol 3.2's long cancel keys and NegotiateProtocolVersion, and a
SCRAM pass-through login as a pooler would do it. A small blocking
:class:`Session` does the I/O; every socket has a timeout so nothing hangs.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import TypeVar

import psycopg
import pytest

import pgsansio as pg
from pgsansio.testing.cluster import TEST_DATABASE, TEST_USERS, Cluster

pytestmark = pytest.mark.postgres

TIMEOUT = 10.0
E = TypeVar("E", bound=pg.Event)


class Session:
    """A socket plus a client-role Connection: the least I/O that drives the core."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.conn = pg.Connection(pg.CLIENT)
        self.scram: pg.ScramClient | None = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, *events: pg.Event) -> None:
        self.sock.sendall(b"".join(self.conn.send(e) for e in events))

    def next(self) -> pg.Event:
        while True:
            event = self.conn.next_event()
            if isinstance(event, pg.Event):
                return event
            assert event is pg.NEED_DATA
            self.conn.receive_data(self.sock.recv(65536))

    def events_until(self, kind: type[pg.Event]) -> list[pg.Event]:
        """Events up to and including the first ``kind``; EOF before it fails."""
        events: list[pg.Event] = []
        while True:
            event = self.next()
            events.append(event)
            if isinstance(event, kind):
                return events
            if isinstance(event, pg.ConnectionClosed):
                raise AssertionError(f"EOF while waiting for {kind.__name__}: {events}")

    def read_until_ready(self) -> list[pg.Event]:
        return self.events_until(pg.ReadyForQuery)

    def query(self, sql: str) -> list[pg.Event]:
        self.send(pg.Query(sql))
        return self.read_until_ready()

    def login(
        self,
        user: str,
        password: str | pg.ScramClient | None = None,
        *,
        version: int = pg.PROTOCOL_3_0,
        **params: str,
    ) -> list[pg.Event]:
        """Answer whatever authentication the server asks for; stop at Z or an error."""
        startup = {"user": user, "database": TEST_DATABASE, **params}
        self.send(pg.StartupMessage(startup, protocol_version=version))
        events: list[pg.Event] = []
        while not (events and isinstance(events[-1], (pg.ReadyForQuery, pg.ErrorResponse))):
            event = self.next()
            events.append(event)
            if isinstance(event, pg.AuthenticationCleartextPassword):
                assert isinstance(password, str)
                self.send(pg.PasswordMessage(password))
            elif isinstance(event, pg.AuthenticationMD5Password):
                assert isinstance(password, str)
                self.send(pg.PasswordMessage(pg.md5_response(user, password, event.salt)))
            elif isinstance(event, pg.AuthenticationSASL):
                assert "SCRAM-SHA-256" in event.mechanisms and password is not None
                scram = pg.ScramClient(password) if isinstance(password, str) else password
                self.scram = scram
                self.send(pg.SASLInitialResponse("SCRAM-SHA-256", scram.client_first()))
            elif isinstance(event, pg.AuthenticationSASLContinue):
                assert self.scram is not None
                self.send(pg.SASLResponse(self.scram.client_final(event.data)))
            elif isinstance(event, pg.AuthenticationSASLFinal):
                assert self.scram is not None
                self.scram.verify_server_final(event.data)
        return events


def only(events: list[pg.Event], kind: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


def connect(cluster: Cluster, user: str = "trust_user") -> Session:
    """A session logged in as ``user`` (a TEST_USERS role), ready for queries."""
    session = Session(cluster.host, cluster.port)
    events = session.login(user, TEST_USERS[user][1])
    assert isinstance(events[-1], pg.ReadyForQuery), events
    return session


@pytest.fixture(params=["pg15", "pg18"])
def cluster(request: pytest.FixtureRequest) -> Cluster:
    """Run a test once per server version."""
    found = request.getfixturevalue(request.param)
    assert isinstance(found, Cluster)
    return found


@pytest.fixture
def session(cluster: Cluster) -> Iterator[Session]:
    with connect(cluster) as s:
        yield s


# --- startup and authentication --------------------------------------------------

FIRST_REQUEST = {
    "trust_user": pg.AuthenticationOk,
    "password_user": pg.AuthenticationCleartextPassword,
    "md5_user": pg.AuthenticationMD5Password,
    "scram_user": pg.AuthenticationSASL,
}


@pytest.mark.parametrize("user", list(TEST_USERS))
def test_login(cluster: Cluster, user: str) -> None:
    with Session(cluster.host, cluster.port) as s:
        events = s.login(user, TEST_USERS[user][1])
        assert type(events[0]) is FIRST_REQUEST[user]
        assert s.conn.state is pg.State.READY and s.conn.transaction_status == "I"
        status = {e.name: e.value for e in only(events, pg.ParameterStatus)}
        assert status["server_version"].startswith(str(cluster.server_version[0]))
        assert status["session_authorization"] == user
        (key,) = only(events, pg.BackendKeyData)
        assert len(key.secret_key) == 4
        if user == "scram_user":
            assert s.scram is not None and s.scram.server_verified
        assert only(s.query("select current_user"), pg.DataRow) == [pg.DataRow([user.encode()])]


@pytest.mark.parametrize("user", ["password_user", "md5_user", "scram_user"])
def test_wrong_password(cluster: Cluster, user: str) -> None:
    with Session(cluster.host, cluster.port) as s:
        error = s.login(user, "wrong")[-1]
        assert isinstance(error, pg.ErrorResponse)
        assert (error.severity, error.sqlstate) == ("FATAL", "28P01")
        assert s.conn.state is pg.State.CLOSED
        assert s.events_until(pg.ConnectionClosed) == [pg.ConnectionClosed()]


def test_ssl_request_refused(cluster: Cluster) -> None:
    with Session(cluster.host, cluster.port) as s:
        s.send(pg.SSLRequest())
        assert s.conn.state is pg.State.SSL_NEGOTIATION
        # The test clusters run without TLS.
        assert (s.next(), s.conn.state) == (pg.SSLResponse(False), pg.State.STARTUP)
        assert isinstance(s.login("trust_user")[-1], pg.ReadyForQuery)


# --- simple query ---------------------------------------------------------------


def test_simple_query_rows(session: Session) -> None:
    events = session.query("select g, 'x' || g, null from generate_series(1, 3) g")
    (desc,) = only(events, pg.RowDescription)
    assert [f.type_oid for f in desc.fields] == [23, 25, 25]
    rows = [r.values for r in only(events, pg.DataRow)]
    assert rows == [(b"1", b"x1", None), (b"2", b"x2", None), (b"3", b"x3", None)]
    assert events[-2:] == [pg.CommandComplete("SELECT 3"), pg.ReadyForQuery("I")]
    assert session.conn.state is pg.State.READY
    assert session.query("") == [pg.EmptyQueryResponse(), pg.ReadyForQuery("I")]


def test_multi_statement_error_stops_the_rest(session: Session) -> None:
    # The SET is rolled back with the implicit transaction: no ParameterStatus.
    events = session.query("select 1; set application_name = 'zz'; select 1/0; select 3")
    kinds = [type(e) for e in events]
    assert kinds == [
        pg.RowDescription,
        pg.DataRow,
        pg.CommandComplete,
        pg.CommandComplete,
        pg.ErrorResponse,
        pg.ReadyForQuery,
    ]
    error = events[4]
    assert isinstance(error, pg.ErrorResponse) and error.sqlstate == "22012"
    assert session.conn.state is pg.State.READY and session.conn.transaction_status == "I"
    # Inside BEGIN the failure sticks until ROLLBACK.
    assert session.query("begin; select 1/0")[-1] == pg.ReadyForQuery("E")
    assert session.conn.transaction_status == "E"
    assert session.query("rollback")[-1] == pg.ReadyForQuery("I")


# --- extended query -------------------------------------------------------------


def batch(sql: str) -> list[pg.Event]:
    return [pg.Parse("", sql), pg.Bind("", ""), pg.Describe("P"), pg.Execute()]


def test_extended_pipeline_with_an_error(session: Session) -> None:
    conn = session.conn
    session.send(
        *batch("select 1"), *batch("select 1/0"), *batch("select 2"), pg.Sync(),
        *batch("select 3"), pg.Sync(),
    )  # fmt: skip
    assert (conn.state, conn.outstanding) == (pg.State.IN_QUERY, 2)
    first = session.events_until(pg.ErrorResponse)
    assert only(first, pg.DataRow) == [pg.DataRow([b"1"])]
    assert isinstance(first[-1], pg.ErrorResponse) and first[-1].sqlstate == "22012"
    # The server now skips everything up to the Sync ("select 2" never runs).
    assert (conn.state, conn.outstanding) == (pg.State.FAILED_EXTENDED, 2)
    assert session.next() == pg.ReadyForQuery("I")
    assert (conn.state, conn.outstanding) == (pg.State.IN_QUERY, 1)
    second = session.read_until_ready()
    assert [type(e) for e in second] == [
        pg.ParseComplete,
        pg.BindComplete,
        pg.RowDescription,
        pg.DataRow,
        pg.CommandComplete,
        pg.ReadyForQuery,
    ]
    assert only(second, pg.DataRow) == [pg.DataRow([b"3"])]
    assert (conn.state, conn.outstanding) == (pg.State.READY, 0)


def test_query_behind_a_failed_batch_is_discarded(session: Session) -> None:
    """After an extended-query error the server skips a Query too, up to the Sync."""
    conn = session.conn
    session.send(*batch("select 1/0"), pg.Query("select 42"), pg.Sync())
    assert conn.outstanding == 2
    events = session.read_until_ready()
    assert [type(e) for e in events][-2:] == [pg.ErrorResponse, pg.ReadyForQuery]
    assert (conn.state, conn.outstanding) == (pg.State.READY, 0)
    # The next request is answered normally: nothing of the discarded Query is left.
    assert only(session.query("select 7"), pg.DataRow) == [pg.DataRow([b"7"])]


# --- COPY -----------------------------------------------------------------------


def test_copy_in_and_out(session: Session) -> None:
    session.query("create temp table t (a int, b text)")
    session.send(pg.Query("copy t from stdin"))
    assert isinstance(session.next(), pg.CopyInResponse)
    assert session.conn.state is pg.State.COPY_IN
    # Rows may be split anywhere across CopyData messages.
    session.send(pg.CopyData(b"1\tone\n2\t"), pg.CopyData(b"\\N\n"), pg.CopyDone())
    assert session.read_until_ready() == [pg.CommandComplete("COPY 2"), pg.ReadyForQuery("I")]
    session.send(pg.Query("copy t to stdout"))
    assert (type(session.next()), session.conn.state) == (pg.CopyOutResponse, pg.State.COPY_OUT)
    events = session.read_until_ready()
    assert only(events, pg.CopyData) == [pg.CopyData(b"1\tone\n"), pg.CopyData(b"2\t\\N\n")]
    assert events[-3:] == [pg.CopyDone(), pg.CommandComplete("COPY 2"), pg.ReadyForQuery("I")]
    assert session.conn.idle


def test_copy_bad_row_while_still_sending(session: Session) -> None:
    session.query("create temp table t (a int)")
    session.send(pg.Query("copy t from stdin"))
    assert isinstance(session.next(), pg.CopyInResponse)
    session.send(pg.CopyData(b"not a number\n"))
    # The server gives up at once: E and Z while our COPY is still open.
    events = session.read_until_ready()
    assert isinstance(events[0], pg.ErrorResponse) and events[0].sqlstate == "22P02"
    assert events[-1] == pg.ReadyForQuery("I")
    assert session.conn.frontend_copy_open and not session.conn.idle
    # Our trailing rows and CopyDone are legal; the server ignores them.
    session.send(pg.CopyData(b"1\n"), pg.CopyDone())
    assert session.conn.idle
    assert only(session.query("select count(*) from t"), pg.DataRow) == [pg.DataRow([b"0"])]


# --- asynchronous messages ------------------------------------------------------


def test_notify_to_self(session: Session) -> None:
    events = session.query("listen chan; notify chan, 'hello'")
    (note,) = only(events, pg.NotificationResponse)
    assert (note.channel, note.payload) == ("chan", "hello")
    pid = only(session.query("select pg_backend_pid()"), pg.DataRow)[0].values[0]
    assert str(note.process_id).encode() == pid
    assert session.conn.state is pg.State.READY


def test_parameter_status_after_set(session: Session) -> None:
    events = session.query("set application_name = 'pgsansio-test'")
    assert events == [
        pg.CommandComplete("SET"),
        pg.ParameterStatus("application_name", "pgsansio-test"),
        pg.ReadyForQuery("I"),
    ]


# --- protocol 3.2 -----------------------------------------------------------------


def wait_until_active(cluster: Cluster, pid: int) -> None:
    """A cancel that arrives before the query starts is lost; wait for it to run."""
    sql = f"select state from pg_stat_activity where pid = {pid}"
    deadline = time.monotonic() + TIMEOUT
    while cluster.execute(sql).strip() != "active":
        assert time.monotonic() < deadline, "the query never started"
        time.sleep(0.05)


def test_protocol_3_2_long_cancel_key(pg18: Cluster) -> None:
    with Session(pg18.host, pg18.port) as s:
        events = s.login("trust_user", version=pg.PROTOCOL_3_2)
        assert not only(events, pg.NegotiateProtocolVersion)
        assert s.conn.protocol_version == pg.PROTOCOL_3_2
        (key,) = only(events, pg.BackendKeyData)
        assert len(key.secret_key) == 32
        s.send(pg.Query("select pg_sleep(10)"))
        wait_until_active(pg18, key.process_id)
        with Session(pg18.host, pg18.port) as canceller:
            canceller.send(pg.CancelRequest(key.process_id, key.secret_key))
            assert canceller.conn.state is pg.State.CLOSED
            assert canceller.events_until(pg.ConnectionClosed) == [pg.ConnectionClosed()]
        events = s.read_until_ready()  # RowDescription comes before the sleep
        assert [e.sqlstate for e in only(events, pg.ErrorResponse)] == ["57014"]
        assert not only(events, pg.CommandComplete)
        assert s.conn.state is pg.State.READY


@pytest.mark.parametrize("options", [{}, {"_pq_.x": "on"}], ids=["plain", "option"])
def test_protocol_3_2_negotiation(cluster: Cluster, options: dict[str, str]) -> None:
    with Session(cluster.host, cluster.port) as s:
        events = s.login("trust_user", version=pg.PROTOCOL_3_2, **options)
        assert isinstance(events[-1], pg.ReadyForQuery)
        newest = pg.PROTOCOL_3_2 if cluster.server_version[0] >= 18 else pg.PROTOCOL_3_0
        negotiated = only(events, pg.NegotiateProtocolVersion)
        if newest == pg.PROTOCOL_3_2 and not options:
            assert negotiated == []  # nothing to negotiate
        else:
            assert negotiated == [pg.NegotiateProtocolVersion(newest, list(options))]
        assert s.conn.protocol_version == newest
        (key,) = only(events, pg.BackendKeyData)
        assert len(key.secret_key) == (32 if newest == pg.PROTOCOL_3_2 else 4)


# --- SCRAM pass-through -------------------------------------------------------------


def fake_pooler(listener: socket.socket, cluster: Cluster, verifier: str) -> None:
    """Authenticate one client with the stored verifier, then log in as it.

    Holding no password, the pooler recovers ClientKey from the client's proof
    and logs in to the real server with it; then it relays queries.
    """
    sock, _ = listener.accept()
    sock.settimeout(TIMEOUT)
    conn = pg.Connection(pg.SERVER)
    scram = pg.ScramServer(verifier)
    server: Session | None = None
    user: str | None = None

    def reply(*events: pg.Event) -> None:
        sock.sendall(b"".join(conn.send(e) for e in events))

    try:
        while conn.state is not pg.State.CLOSED:
            event = conn.next_event()
            if event is pg.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, pg.SSLRequest):
                reply(pg.SSLResponse(False))
            elif isinstance(event, pg.StartupMessage):
                user = event.get("user")
                reply(pg.AuthenticationSASL(["SCRAM-SHA-256"]))
            elif isinstance(event, pg.SASLInitialResponse):
                reply(pg.AuthenticationSASLContinue(scram.server_first(event.data or b"")))
            elif isinstance(event, pg.SASLResponse):
                final = scram.server_final(event.data)  # raises for a wrong password
                assert scram.client_key is not None and user is not None
                client = pg.ScramClient(
                    client_key=scram.client_key, server_key=scram.verifier.server_key
                )
                server = Session(cluster.host, cluster.port)
                events = server.login(user, client)
                assert client.server_verified, "the real server proved it knows the verifier"
                after_ok = events[events.index(pg.AuthenticationOk()) :]
                reply(pg.AuthenticationSASLFinal(final), *after_ok)
            elif isinstance(event, pg.Query):
                assert server is not None
                server.send(event)
                reply(*server.read_until_ready())
            elif isinstance(event, pg.Terminate):
                assert server is not None
                server.send(event)
    finally:
        sock.close()
        if server is not None:
            server.sock.close()


def test_scram_pass_through(pg15: Cluster) -> None:
    verifier = pg15.execute(
        "select rolpassword from pg_authid where rolname = 'scram_user'"
    ).strip()
    assert verifier.startswith("SCRAM-SHA-256$")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fake_pooler(listener, pg15, verifier)
        except BaseException as exc:
            errors.append(exc)

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        port = listener.getsockname()[1]
        # libpq computes the proof; the pooler never sees the password.
        with psycopg.connect(
            host="127.0.0.1",
            port=port,
            user="scram_user",
            password=TEST_USERS["scram_user"][1],
            dbname=TEST_DATABASE,
            autocommit=True,
            connect_timeout=10,
        ) as client:
            row = client.execute("select current_user, pg_backend_pid() > 0").fetchone()
            assert row == ("scram_user", True)
        thread.join(TIMEOUT)
    assert not errors, errors
    assert not thread.is_alive()
