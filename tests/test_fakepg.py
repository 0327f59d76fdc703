"""Tests for the fake PostgreSQL server in :mod:`pgsansio.testing.fakepg`.

The fake is only useful if it answers like PostgreSQL where a pooler can tell the
difference, so every test drives it with the protocol library's client-side
``Connection``: the state machine there rejects any answer real PostgreSQL could not
have given, and the assertions check the answers' content (error codes and wording,
transaction status, ParameterStatus timing) against what PostgreSQL 16 does.
"""

from __future__ import annotations

import pytest

from pgsansio.protocol import (
    CLIENT,
    NEED_DATA,
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
    Close,
    CloseComplete,
    CommandComplete,
    Connection,
    ConnectionClosed,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Event,
    Execute,
    Flush,
    NegotiateProtocolVersion,
    NoData,
    NoticeResponse,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    PasswordMessage,
    PortalSuspended,
    Query,
    ReadyForQuery,
    RowDescription,
    SASLInitialResponse,
    SASLResponse,
    ScramClient,
    SSLRequest,
    SSLResponse,
    StartupMessage,
    Sync,
    Terminate,
    md5_response,
)
from pgsansio.testing.fakepg import Database, FakeServer, FakeUser

USERS = {
    "alice": FakeUser("alice-pw", "md5"),
    "bob": FakeUser("bob-pw", "scram-sha-256"),
    "carol": FakeUser("carol-pw", "password"),
    "trusty": FakeUser(None, "trust"),
}


def make_db(**kw: object) -> Database:
    return Database(users=USERS, databases=["db"], scram_iterations=64, **kw)  # type: ignore[arg-type,unused-ignore]


class Peer:
    """A client-role Connection wired to one FakeServer."""

    def __init__(self, db: Database, now: float = 0.0) -> None:
        self.db = db
        self.server: FakeServer = db.connect(now)
        self.conn = Connection(CLIENT)
        self.now = now
        self.eof = False

    def send(self, *events: Event, bytewise: bool = False) -> list[Event]:
        data = b"".join(self.conn.send(e) for e in events)
        if bytewise:
            out = b"".join(
                self.server.receive(data[i : i + 1], self.now) for i in range(len(data))
            )
        else:
            out = self.server.receive(data, self.now)
        return self.feed(out)

    def feed(self, data: bytes) -> list[Event]:
        if data:
            self.conn.receive_data(data)
        if self.server.closed and not self.eof:
            self.eof = True
            self.conn.receive_data(b"")
        got: list[Event] = []
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                return got
            assert isinstance(event, Event)
            got.append(event)
            if isinstance(event, ConnectionClosed):
                return got

    def tick(self, now: float) -> list[Event]:
        self.now = now
        return self.feed(self.server.tick(now))

    def login(
        self, user: str = "trusty", password: str | None = None, **params: str
    ) -> list[Event]:
        got = self.send(StartupMessage({"user": user, "database": "db", **params}))
        while got and not isinstance(got[-1], (ReadyForQuery, ConnectionClosed)):
            request = got[-1]
            if isinstance(request, AuthenticationMD5Password):
                got += self.send(PasswordMessage(md5_response(user, password or "", request.salt)))
            elif isinstance(request, AuthenticationCleartextPassword):
                got += self.send(PasswordMessage(password or ""))
            elif isinstance(request, AuthenticationSASL):
                scram = ScramClient(password or "")
                cont = self.send(SASLInitialResponse("SCRAM-SHA-256", scram.client_first()))
                assert isinstance(cont[-1], AuthenticationSASLContinue)
                final = self.send(SASLResponse(scram.client_final(cont[-1].data)))
                if isinstance(final[0], AuthenticationSASLFinal):
                    scram.verify_server_final(final[0].data)
                got += cont + final
            else:
                break
        return got

    def query(self, sql: str) -> list[Event]:
        return self.send(Query(sql))


def rows(events: list[Event]) -> list[tuple[bytes | None, ...]]:
    return [e.values for e in events if isinstance(e, DataRow)]


def errors(events: list[Event]) -> list[tuple[str | None, str | None]]:
    return [(e.sqlstate, e.message) for e in events if isinstance(e, ErrorResponse)]


def status(events: list[Event]) -> str:
    ready = [e for e in events if isinstance(e, ReadyForQuery)]
    return str(ready[-1].status)


def logged_in(db: Database | None = None, **params: str) -> Peer:
    peer = Peer(db or make_db())
    assert status(peer.login(**params)) == "I"
    return peer


# --- startup ------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["alice", "bob", "carol", "trusty"])
def test_login_each_method(user: str) -> None:
    db = make_db()
    peer = Peer(db)
    password = USERS[user].password
    got = peer.login(user, password)
    assert any(isinstance(e, AuthenticationOk) for e in got)
    params = {e.name: e.value for e in got if isinstance(e, ParameterStatus)}
    assert params["server_version"] == "16.4"
    assert params["session_authorization"] == user
    for name in ("client_encoding", "DateStyle", "TimeZone", "integer_datetimes"):
        assert name in params
    key = next(e for e in got if isinstance(e, BackendKeyData))
    assert len(key.secret_key) == 4
    assert db.backends[key.process_id] is peer.server
    assert status(got) == "I"
    assert db.stats["logins"] == 1


@pytest.mark.parametrize("user", ["alice", "bob", "carol"])
def test_wrong_password_is_28p01(user: str) -> None:
    peer = Peer(make_db())
    got = peer.login(user, "nope")
    assert errors(got)[0][0] == "28P01"
    assert f'authentication failed for user "{user}"' in (errors(got)[0][1] or "")
    assert peer.server.closed and isinstance(got[-1], ConnectionClosed)


def test_unknown_user_and_database() -> None:
    peer = Peer(make_db())
    assert errors(peer.login("mallory")) == [("28000", 'role "mallory" does not exist')]
    peer = Peer(make_db())
    got = peer.send(StartupMessage({"user": "trusty", "database": "nope"}))
    assert errors(got) == [("3D000", 'database "nope" does not exist')]


def test_startup_parameters_become_session_defaults() -> None:
    peer = Peer(make_db())
    got = peer.login(application_name="app1", options="-c TimeZone=Europe/Paris")
    params = {e.name: e.value for e in got if isinstance(e, ParameterStatus)}
    assert params["application_name"] == "app1"
    assert params["TimeZone"] == "Europe/Paris"
    peer.query("SET application_name = 'other'")
    got = peer.query("RESET ALL; SHOW application_name")
    assert rows(got) == [(b"app1",)]
    assert ParameterStatus("application_name", "app1") in got


def test_unknown_startup_parameter_is_fatal() -> None:
    peer = Peer(make_db())
    got = peer.login(no_such_thing="1")
    assert errors(got) == [("42704", 'unrecognized configuration parameter "no_such_thing"')]


def test_ssl_request_is_declined() -> None:
    peer = Peer(make_db())
    assert peer.send(SSLRequest()) == [SSLResponse(False)]
    assert status(peer.login()) == "I"


def test_protocol_3_2_gets_a_long_key_and_pq_options_are_negotiated() -> None:
    peer = Peer(make_db())
    got = peer.send(
        StartupMessage(
            {"user": "trusty", "database": "db", "_pq_.magic": "1"}, protocol_version=PROTOCOL_3_2
        )
    )
    assert got[0] == NegotiateProtocolVersion(PROTOCOL_3_2, ["_pq_.magic"])
    key = next(e for e in got if isinstance(e, BackendKeyData))
    assert len(key.secret_key) == 32


def test_refused_and_too_many_logins() -> None:
    db = make_db(refuse_logins=("28P01", "no way"))
    assert errors(Peer(db).login()) == [("28P01", "no way")]
    db = make_db(max_connections=1)
    logged_in(db)
    assert errors(Peer(db).login()) == [("53300", "sorry, too many clients already")]


def test_stalled_login_never_answers() -> None:
    db = make_db(stall_logins=True)
    peer = Peer(db)
    assert peer.login() == []
    assert peer.tick(100.0) == []
    assert not peer.server.closed
    peer.server.receive(b"", 101.0)
    assert peer.server.closed


def test_stalled_queries_never_answer() -> None:
    peer = logged_in(make_db(stall_queries=True))
    assert peer.query("SELECT 1") == []
    peer.server.stalled = False
    peer.server.receive(b"", 1.0)  # nothing crashes when it finally reads
    assert peer.server.closed


# --- simple query -------------------------------------------------------------------


def test_select_int() -> None:
    got = logged_in().query("SELECT 42")
    assert got[0] == RowDescription([("?column?", 0, 0, 23, 4, -1, 0)])
    assert got[1:] == [DataRow([b"42"]), CommandComplete("SELECT 1"), ReadyForQuery("I")]


def test_multi_statement_query_and_empty_query() -> None:
    peer = logged_in()
    got = peer.query("SELECT 1; SELECT 'a;b' AS x;;")
    assert rows(got) == [(b"1",), (b"a;b",)]
    assert [e for e in got if isinstance(e, RowDescription)][1].fields[0].name == "x"
    assert peer.query("  ;  -- nothing\n") == [EmptyQueryResponse(), ReadyForQuery("I")]


def test_backend_pid() -> None:
    peer = logged_in()
    assert rows(peer.query("SELECT pg_backend_pid()")) == [(str(peer.server.pid).encode(),)]


def test_error_outside_and_inside_a_transaction() -> None:
    peer = logged_in()
    got = peer.query("SELECT error")
    assert errors(got) == [("42601", 'syntax error at or near "error"')]
    assert status(got) == "I"
    assert status(peer.query("BEGIN")) == "T"
    assert status(peer.query("SELECT error")) == "E"
    got = peer.query("SELECT 1")
    assert errors(got)[0][0] == "25P02" and status(got) == "E"
    got = peer.query("COMMIT")
    assert CommandComplete("ROLLBACK") in got and status(got) == "I"


def test_unknown_statement_is_a_syntax_error() -> None:
    got = logged_in().query("VACUUM FULL")
    assert errors(got) == [("42601", 'syntax error at or near "vacuum"')]


def test_writes_are_visible_at_commit_only() -> None:
    db = make_db()
    a, b = logged_in(db), logged_in(db)
    a.query("BEGIN; INSERT INTO t VALUES (1, 'x'), (2, 'y')")
    assert rows(a.query("SELECT count(*) FROM t")) == [(b"2",)]
    assert errors(b.query("SELECT count(*) FROM t"))[0][0] == "42P01"
    a.query("COMMIT")
    assert rows(b.query("SELECT count(*) FROM t")) == [(b"2",)]
    assert db.rows("t") == [("1", "x"), ("2", "y")]
    b.query("BEGIN; INSERT INTO t VALUES (3, 'z'); ROLLBACK")
    assert rows(b.query("SELECT * FROM t")) == [(b"1", b"x"), (b"2", b"y")]
    assert CommandComplete("DELETE 2") in a.query("DELETE FROM t")
    assert db.rows("t") == []


def test_a_failing_multi_statement_query_is_rolled_back() -> None:
    db = make_db()
    peer = logged_in(db)
    got = peer.query("INSERT INTO t VALUES (1); SELECT error; INSERT INTO t VALUES (2)")
    assert status(got) == "I" and len(errors(got)) == 1
    assert db.rows("t") == []
    peer.query("BEGIN; INSERT INTO t VALUES (1); COMMIT; SELECT error")
    assert db.rows("t") == [("1",)]


def test_begin_twice_and_commit_without_begin_warn() -> None:
    peer = logged_in()
    got = peer.query("BEGIN; BEGIN")
    assert [e.sqlstate for e in got if isinstance(e, NoticeResponse)] == ["25001"]
    peer.query("COMMIT")
    got = peer.query("COMMIT")
    assert [e.sqlstate for e in got if isinstance(e, NoticeResponse)] == ["25P01"]


def test_generate_series() -> None:
    got = logged_in().query("SELECT generate_series(1, 3)")
    assert rows(got) == [(b"1",), (b"2",), (b"3",)]
    assert CommandComplete("SELECT 3") in got


# --- parameters -----------------------------------------------------------------------


def test_set_reports_before_ready_and_show() -> None:
    peer = logged_in()
    got = peer.query("SET application_name = 'c1'")
    assert got == [
        CommandComplete("SET"),
        ParameterStatus("application_name", "c1"),
        ReadyForQuery("I"),
    ]
    assert rows(peer.query("SHOW application_name")) == [(b"c1",)]
    got = peer.query('SET "DateStyle" TO german; SHOW datestyle')
    assert rows(got) == [(b"German, MDY",)]
    assert ParameterStatus("DateStyle", "German, MDY") in got
    got = peer.query("SET TIME ZONE 'Asia/Tokyo'; SHOW TimeZone")
    assert rows(got) == [(b"Asia/Tokyo",)]
    assert rows(peer.query("SELECT current_setting('timezone')")) == [(b"Asia/Tokyo",)]
    got = peer.query("SET client_encoding = 'latin-1'")
    assert ParameterStatus("client_encoding", "LATIN1") in got


def test_set_is_rolled_back_with_the_transaction() -> None:
    peer = logged_in()
    got = peer.query("BEGIN; SET application_name = 'inside'")
    assert ParameterStatus("application_name", "inside") in got
    got = peer.query("ROLLBACK")
    assert ParameterStatus("application_name", "") in got
    assert rows(peer.query("SHOW application_name")) == [(b"",)]
    peer.query("BEGIN; SET LOCAL TimeZone = 'X'; SET application_name = 'kept'")
    got = peer.query("COMMIT")
    assert ParameterStatus("TimeZone", "UTC") in got
    assert rows(peer.query("SHOW application_name")) == [(b"kept",)]


def test_set_errors() -> None:
    peer = logged_in()
    assert errors(peer.query("SET nonsense = 1"))[0] == (
        "42704",
        'unrecognized configuration parameter "nonsense"',
    )
    assert errors(peer.query("SET server_version = '1'"))[0][0] == "55P02"
    assert errors(peer.query("SET DateStyle = 'bogus'"))[0][0] == "22023"
    assert CommandComplete("SET") in peer.query("SET myapp.flag = 'on'")
    assert rows(peer.query("SHOW myapp.flag")) == [(b"on",)]
    assert rows(peer.query("RESET ALL; SHOW myapp.flag")) == [(b"",)]
    got = peer.query("SET LOCAL work_mem = '8MB'")
    assert [e.sqlstate for e in got if isinstance(e, NoticeResponse)] == ["25P01"]


def test_discard_all_and_deallocate() -> None:
    peer = logged_in()
    peer.send(Parse("s1", "SELECT 1"), Parse("s2", "SELECT 2"), Sync())
    peer.query("SET application_name = 'x'")
    got = peer.query("DISCARD ALL")
    assert got[0] == CommandComplete("DISCARD ALL")
    assert ParameterStatus("application_name", "") in got
    assert peer.server.statements == {}
    assert errors(peer.query("BEGIN; DISCARD ALL"))[0][0] == "25001"
    peer.query("ROLLBACK")
    assert errors(peer.query("SELECT 1; DISCARD ALL"))[0][0] == "25001"
    peer.send(Parse("s1", "SELECT 1"), Sync())
    assert CommandComplete("DEALLOCATE") in peer.query("DEALLOCATE s1")
    assert errors(peer.query("DEALLOCATE s1")) == [
        ("26000", 'prepared statement "s1" does not exist')
    ]
    peer.send(Parse("s1", "SELECT 1"), Sync())
    assert CommandComplete("DEALLOCATE ALL") in peer.query("DEALLOCATE ALL")
    assert peer.server.statements == {}


# --- extended query -----------------------------------------------------------------


def test_unnamed_extended_query() -> None:
    got = logged_in().send(
        Parse("", "SELECT $1, $2::int"),
        Bind("", "", params=[b"hello", b"7"]),
        Describe("P", ""),
        Execute("", 0),
        Sync(),
    )
    assert got[:2] == [ParseComplete(), BindComplete()]
    assert isinstance(got[2], RowDescription)
    assert [f.type_oid for f in got[2].fields] == [25, 23]
    assert got[3:] == [DataRow([b"hello", b"7"]), CommandComplete("SELECT 1"), ReadyForQuery("I")]


def test_named_statement_lifecycle() -> None:
    peer = logged_in()
    got = peer.send(Parse("s1", "SELECT $1::int"), Describe("S", "s1"), Sync())
    assert got[1] == ParameterDescription([23])
    assert isinstance(got[2], RowDescription)
    got = peer.send(Parse("s1", "SELECT 2"), Sync())
    assert errors(got) == [("42P05", 'prepared statement "s1" already exists')]
    got = peer.send(Bind("", "s1", [1], [(5).to_bytes(4, "big")], [1]), Execute(), Sync())
    assert rows(got) == [((5).to_bytes(4, "big"),)]
    got = peer.send(Close("S", "s1"), Bind("", "s1", params=[b"1"]), Execute(), Sync())
    assert got[0] == CloseComplete()
    assert errors(got) == [("26000", 'prepared statement "s1" does not exist')]
    got = peer.send(Bind("", "", params=[]), Sync())
    assert errors(got) == [("26000", "unnamed prepared statement does not exist")]


def test_statements_are_per_connection() -> None:
    db = make_db()
    a, b = logged_in(db), logged_in(db)
    a.send(Parse("shared", "SELECT 1"), Sync())
    got = b.send(Bind("", "shared"), Execute(), Sync())
    assert errors(got) == [("26000", 'prepared statement "shared" does not exist')]


def test_error_discards_until_sync() -> None:
    peer = logged_in()
    got = peer.send(
        Parse("", "SELECT error"),
        Bind("", ""),
        Execute(),
        Sync(),
        Parse("", "SELECT 3"),
        Bind("", ""),
        Execute(),
        Sync(),
    )
    assert [type(e).__name__ for e in got] == [
        "ErrorResponse",
        "ReadyForQuery",
        "ParseComplete",
        "BindComplete",
        "DataRow",
        "CommandComplete",
        "ReadyForQuery",
    ]


def test_bind_parameter_count_is_checked() -> None:
    got = logged_in().send(Parse("", "SELECT $1"), Bind("", "", params=[]), Sync())
    assert errors(got)[0][0] == "08P01"


def test_portal_suspended_and_resumed() -> None:
    peer = logged_in()
    got = peer.send(
        Query("BEGIN"),
        Parse("", "SELECT generate_series(1, 5)"),
        Bind("cur", ""),
        Execute("cur", 2),
        Execute("cur", 2),
        Flush(),
    )
    assert rows(got) == [(b"1",), (b"2",), (b"3",), (b"4",)]
    assert got.count(PortalSuspended()) == 2
    got = peer.send(Execute("cur", 0), Sync(), Query("COMMIT"))
    assert rows(got) == [(b"5",)]
    assert CommandComplete("SELECT 1") in got
    got = peer.send(Execute("cur", 0), Sync())
    assert errors(got) == [("34000", 'portal "cur" does not exist')]


def test_extended_batch_is_one_implicit_transaction() -> None:
    db = make_db()
    peer = logged_in(db)
    peer.send(
        Parse("", "INSERT INTO t VALUES (1)"),
        Bind("", ""),
        Execute(),
        Parse("", "SELECT error"),
        Sync(),
    )
    assert db.rows("t") == []
    got = peer.send(Parse("", "INSERT INTO t VALUES ($1)"), Bind("", "", params=[b"2"]))
    got += peer.send(Describe("P", ""), Execute(), Sync())
    assert NoData() in got and CommandComplete("INSERT 0 1") in got
    assert db.rows("t") == [("2",)]


def test_a_simple_query_drops_the_unnamed_statement() -> None:
    peer = logged_in()
    peer.send(Parse("", "SELECT 1"), Sync())
    peer.query("SELECT 2")
    assert errors(peer.send(Bind("", ""), Sync()))[0][0] == "26000"


def test_byte_by_byte_gives_the_same_answers() -> None:
    events = [Parse("s", "SELECT $1"), Bind("", "s", params=[b"x"]), Execute(), Sync()]
    whole = logged_in().send(*events, Query("SELECT 1; SELECT 2"))
    bytewise = logged_in().send(*events, Query("SELECT 1; SELECT 2"), bytewise=True)
    assert whole == bytewise


# --- sleeping, cancelling, dying ----------------------------------------------------


def test_pg_sleep_answers_after_the_deadline() -> None:
    peer = logged_in()
    peer.now = 10.0
    got = peer.send(Query("SELECT pg_sleep(2)"), Query("SELECT 7"))
    assert got == []
    assert peer.server.deadline == 12.0
    assert peer.tick(11.9) == []
    got = peer.tick(12.0)
    assert rows(got) == [(b"",), (b"7",)]
    assert peer.server.deadline is None


def test_sleep_in_the_middle_of_a_multi_statement_query() -> None:
    peer = logged_in()
    got = peer.query("SELECT 1; SELECT pg_sleep(1); SELECT 3")
    assert rows(got) == [(b"1",)]
    assert rows(peer.tick(1.0)) == [(b"",), (b"3",)]


def test_sleep_in_extended_query() -> None:
    peer = logged_in()
    got = peer.send(Parse("", "SELECT pg_sleep($1)"), Bind("", "", params=[b"0.5"]), Execute())
    got += peer.send(Sync())
    assert got == [ParseComplete(), BindComplete()]
    got = peer.tick(0.5)
    assert got == [DataRow([b""]), CommandComplete("SELECT 1"), ReadyForQuery("I")]


def test_cancel_request_interrupts_a_sleep() -> None:
    db = make_db()
    woken: list[FakeServer] = []
    db.on_wake = woken.append
    peer = logged_in(db)
    assert peer.query("BEGIN; SELECT pg_sleep(100)") != []
    canceller = Peer(db)
    # A wrong key is ignored, as PostgreSQL does.
    canceller.send(CancelRequest(peer.server.pid, b"\0\0\0\0"))
    assert canceller.server.closed and woken == []
    assert db.stats["cancels_wrong_key"] == 1
    Peer(db).send(CancelRequest(peer.server.pid, peer.server.secret))
    assert woken == [peer.server] and peer.server.deadline == 0.0
    got = peer.tick(0.1)
    assert errors(got) == [("57014", "canceling statement due to user request")]
    assert status(got) == "E"


def test_cancel_between_queries_is_ignored() -> None:
    db = make_db()
    peer = logged_in(db)
    Peer(db).send(CancelRequest(peer.server.pid, peer.server.secret))
    assert peer.server.deadline is None
    assert rows(peer.query("SELECT 1")) == [(b"1",)]


def test_statement_timeout() -> None:
    peer = logged_in()
    peer.query("SET statement_timeout = '1s'")
    assert peer.query("SELECT pg_sleep(5)") == []
    assert peer.server.deadline == 1.0
    got = peer.tick(1.0)
    assert errors(got) == [("57014", "canceling statement due to statement timeout")]


def test_terminate_message_and_eof_roll_back() -> None:
    db = make_db()
    peer = logged_in(db)
    pid = peer.server.pid
    peer.query("BEGIN; INSERT INTO t VALUES (1)")
    peer.send(Terminate())
    assert peer.server.closed and pid not in db.backends
    assert db.rows("t") == []
    peer = logged_in(db)
    peer.query("BEGIN; INSERT INTO t VALUES (1)")
    peer.server.receive(b"", 0.0)
    assert peer.server.closed and db.rows("t") == []


def test_pg_terminate_backend_self_and_other() -> None:
    db = make_db()
    woken: list[FakeServer] = []
    db.on_wake = woken.append
    victim, killer = logged_in(db), logged_in(db)
    got = killer.query(f"SELECT pg_terminate_backend({victim.server.pid})")
    assert rows(got) == [(b"t",)]
    assert woken == [victim.server]
    got = victim.tick(0.0)
    assert errors(got) == [("57P01", "terminating connection due to administrator command")]
    assert isinstance(got[-1], ConnectionClosed)
    got = killer.query("SELECT pg_terminate_backend(pg_backend_pid())")
    assert errors(got)[0][0] == "57P01" and killer.server.closed


def test_crash_and_terminate_from_outside() -> None:
    db = make_db()
    peer = logged_in(db)
    peer.server.crash()
    assert peer.server.closed and db.stats["crashes"] == 1
    assert peer.server.receive(Query("SELECT 1").__bytes__(), 0.0) == b""
    peer = logged_in(db)
    got = peer.feed(peer.server.terminate())
    assert errors(got)[0][0] == "57P01"


def test_protocol_violation_is_recorded() -> None:
    db = make_db()
    peer = logged_in(db)
    out = peer.server.receive(b"Z\x00\x00\x00\x05I", 0.0)  # a backend message, from a client
    assert out.startswith(b"E") and peer.server.closed
    assert len(db.violations) == 1 and "protocol error" in db.violations[0]


# --- ownership tags ---------------------------------------------------------------------


def test_tags_may_change_between_transactions_only() -> None:
    db = make_db()
    peer = logged_in(db)
    peer.query("SELECT 1 /* tag:a */")
    peer.query("/* tag:b */ SELECT 1")
    peer.query("BEGIN /* tag:a */; SELECT 2 /* tag:a */")
    peer.query("COMMIT")
    assert db.violations == []
    peer.query("BEGIN /* tag:a */")
    peer.query("SELECT 2 /* tag:b */")
    assert len(db.violations) == 1 and "b's statement" in db.violations[0]


def test_bind_parameter_tags() -> None:
    db = make_db()
    peer = logged_in(db)
    peer.send(Parse("s", "SELECT $1"), Sync())
    peer.send(Bind("", "s", params=[b"tag:a"]), Execute(), Sync())
    peer.send(Bind("", "s", params=[b"tag:b"]), Execute(), Sync())
    assert db.violations == []
    peer.send(Bind("", "s", params=[b"tag:a"]), Execute())
    peer.send(Bind("", "s", params=[b"tag:b"]), Execute(), Sync())
    assert len(db.violations) == 1


def test_hooks_see_every_statement_and_message() -> None:
    db = make_db()
    seen: list[str] = []
    messages: list[tuple[str, bool]] = []
    db.on_statement = lambda server, plan: seen.append(plan.kind)
    peer = logged_in(db)
    db.on_message = lambda server, event, out: messages.append((type(event).__name__, out))
    peer.query("BEGIN; SELECT 1; COMMIT")
    assert seen == ["begin", "select", "commit"]
    assert messages[0] == ("Query", False) and messages[-1] == ("ReadyForQuery", True)
