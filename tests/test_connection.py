"""Connection flows for both roles, modelled on h11's ``test_connection.py``.

Most tests use a :class:`ConnectionPair`: a client-role and a server-role
connection wired back to back. Every event one side sends must come out of
the other side's ``next_event`` unchanged, and afterwards both sides must agree
on everything a pooler asks (state, outstanding, transaction status, idle ...).
A :class:`Proxy` puts a server-role and a client-role connection between them
and forwards with ``next_span``/``send_span``, as a pooler does.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from pgsansio.protocol import (
    CLIENT,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_STARTUP_SIZE,
    NEED_DATA,
    PAUSED,
    PROTOCOL_3_0,
    PROTOCOL_3_2,
    SERVER,
    AuthenticationCleartextPassword,
    AuthenticationGSS,
    AuthenticationGSSContinue,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    AuthenticationSSPI,
    BackendKeyData,
    Bind,
    BindComplete,
    CancelRequest,
    Close,
    CloseComplete,
    CommandComplete,
    Connection,
    ConnectionClosed,
    CopyBothResponse,
    CopyData,
    CopyDone,
    CopyFail,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Event,
    Execute,
    Field,
    Flush,
    FunctionCall,
    FunctionCallResponse,
    GSSENCRequest,
    GSSENCResponse,
    GSSResponse,
    LocalProtocolError,
    NegotiateProtocolVersion,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    PasswordMessage,
    PortalSuspended,
    Query,
    ReadyForQuery,
    RemoteProtocolError,
    Role,
    RowDescription,
    SASLInitialResponse,
    SASLResponse,
    Span,
    SSLRequest,
    SSLResponse,
    StartupMessage,
    State,
    Sync,
    Terminate,
)

STARTUP = StartupMessage({"user": "alice", "database": "db"})
ROW_1 = RowDescription([Field("?column?", 0, 0, 23, 4, -1, 0)])
NOTICE = NoticeResponse.build("01000", "careful", "WARNING")
DIV_BY_ZERO = ErrorResponse.build("22012", "division by zero")
KEY4 = b"\x01\x02\x03\x04"
KEY32 = bytes(range(32))


def get_all_events(conn: Connection) -> list[Event]:
    """Read until NEED_DATA or PAUSED (or the end)."""
    got: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA or event is PAUSED:
            return got
        assert isinstance(event, Event)
        got.append(event)
        if type(event) is ConnectionClosed:
            return got


def receive_and_get(conn: Connection, data: bytes) -> list[Event]:
    conn.receive_data(data)
    return get_all_events(conn)


def agree(*conns: Connection) -> None:
    """Everything a pooler asks is the same on every connection."""

    def view(c: Connection) -> tuple[object, ...]:
        return (
            c.state,
            c.outstanding,
            c.transaction_status,
            c.idle,
            c.frontend_copy_open,
            c.protocol_version,
        )

    first = view(conns[0])
    for conn in conns[1:]:
        assert view(conn) == first


class ConnectionPair:
    """A client and a server connection, back to back."""

    def __init__(self) -> None:
        self.conn = {CLIENT: Connection(CLIENT), SERVER: Connection(SERVER)}

    @property
    def client(self) -> Connection:
        return self.conn[CLIENT]

    @property
    def server(self) -> Connection:
        return self.conn[SERVER]

    def send(
        self,
        role: Role,
        events: Event | Iterable[Event],
        expect: list[Event] | None = None,
    ) -> bytes:
        """``role`` sends ``events``; the other side must read ``expect`` (default: the same)."""
        events = [events] if isinstance(events, Event) else list(events)
        data = b"".join(self.conn[role].send(e) for e in events)
        other = self.server if role is CLIENT else self.client
        assert receive_and_get(other, data) == (events if expect is None else expect)
        agree(self.client, self.server)
        return data


def ready_pair() -> ConnectionPair:
    p = ConnectionPair()
    p.send(CLIENT, StartupMessage({"user": "alice"}))
    p.send(
        SERVER,
        [
            AuthenticationOk(),
            ParameterStatus("server_version", "18.0"),
            BackendKeyData(4242, KEY4),
            ReadyForQuery("I"),
        ],
    )
    assert p.client.state is State.READY
    return p


def ready_client() -> Connection:
    return ready_pair().client


def ready_server() -> Connection:
    return ready_pair().server


# --- basics ---------------------------------------------------------------------------------


def test_connection_basics() -> None:
    assert repr(NEED_DATA) == "NEED_DATA"
    assert repr(PAUSED) == "PAUSED"
    conn = Connection(CLIENT)
    assert conn.role is CLIENT is Role.CLIENT
    assert conn.max_message_size == DEFAULT_MAX_MESSAGE_SIZE == 0x3FFFFFFF
    assert conn.max_startup_size == DEFAULT_MAX_STARTUP_SIZE == 10000
    assert conn.state is State.STARTUP
    assert conn.outstanding == 0
    assert conn.transaction_status == "I"
    assert conn.protocol_version == PROTOCOL_3_0
    assert not conn.idle
    assert not conn.frontend_copy_open
    assert not conn.their_closed
    assert conn.trailing_data == b""
    assert conn.next_event() is NEED_DATA
    assert conn.next_span() is NEED_DATA
    assert Connection(SERVER).next_event() is NEED_DATA


def test_startup_trust() -> None:
    p = ConnectionPair()
    data = p.send(CLIENT, STARTUP)
    assert data == bytes(STARTUP)
    assert p.client.state is State.AUTHENTICATING
    p.send(SERVER, AuthenticationOk())
    assert p.client.state is State.AUTHENTICATED
    # The server's parameters, in no fixed order, then the cancel key.
    p.send(
        SERVER,
        [
            ParameterStatus("client_encoding", "UTF8"),
            ParameterStatus("server_version", "18.0"),
            NOTICE,
            BackendKeyData(4242, KEY4),
        ],
    )
    assert p.client.state is State.AUTHENTICATED
    assert not p.client.idle
    p.send(SERVER, ReadyForQuery("I"))
    assert p.client.state is State.READY
    assert p.client.idle
    assert p.server.protocol_version == PROTOCOL_3_0


def test_server_reads_pipelined_queries_behind_startup() -> None:
    p = ConnectionPair()
    p.send(CLIENT, STARTUP)
    p.send(SERVER, AuthenticationOk())
    p.send(CLIENT, [Query("SELECT 1"), Parse("", "SELECT 2"), Sync()])
    assert p.client.outstanding == 2
    p.send(SERVER, [BackendKeyData(1, KEY4), ReadyForQuery("I")])
    assert p.client.state is State.IN_QUERY


# --- encryption negotiation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "answer", "state"),
    [
        (SSLRequest(), SSLResponse, State.SSL_NEGOTIATION),
        (GSSENCRequest(), GSSENCResponse, State.GSS_NEGOTIATION),
    ],
)
@pytest.mark.parametrize("accepted", [True, False])
def test_encryption_request(
    request_: Event, answer: type[SSLResponse], state: State, accepted: bool
) -> None:
    p = ConnectionPair()
    p.send(CLIENT, request_)
    assert p.client.state is state
    # The server must answer before it reads anything else.
    assert p.server.next_event() is PAUSED
    assert p.server.next_span() is PAUSED
    data = p.send(SERVER, answer(accepted))
    assert data == (answer.yes if accepted else b"N")
    assert p.client.state is State.STARTUP
    # (The TLS or GSSAPI handshake would happen here.)
    p.send(CLIENT, STARTUP)
    p.send(SERVER, [AuthenticationOk(), ReadyForQuery("I")])
    assert p.client.idle


def test_gss_then_ssl_then_startup() -> None:
    # libpq's sslmode=prefer + gssencmode=prefer against a server with neither.
    p = ConnectionPair()
    p.send(CLIENT, GSSENCRequest())
    p.send(SERVER, GSSENCResponse(False))
    p.send(CLIENT, SSLRequest())
    p.send(SERVER, SSLResponse(False))
    p.send(CLIENT, STARTUP)
    assert p.server.state is State.AUTHENTICATING


def test_server_paused_even_at_eof() -> None:
    server = Connection(SERVER)
    assert receive_and_get(server, bytes(SSLRequest())) == [SSLRequest()]
    server.receive_data(b"")
    assert server.next_event() is PAUSED
    assert server.send(SSLResponse(False)) == b"N"
    assert server.next_event() == ConnectionClosed()


@pytest.mark.parametrize(
    ("request_", "answer"), [(SSLRequest(), SSLResponse), (GSSENCRequest(), GSSENCResponse)]
)
def test_cve_2021_23214_plaintext_after_encryption_request(
    request_: Event, answer: type[SSLResponse]
) -> None:
    # A man in the middle appends a plaintext StartupMessage to the request:
    # the server must not read it as if it came over the encrypted channel.
    server = Connection(SERVER)
    server.receive_data(bytes(request_) + bytes(STARTUP))
    assert server.next_event() == request_
    assert server.next_event() is PAUSED
    with pytest.raises(RemoteProtocolError, match="unencrypted data") as excinfo:
        server.send(answer(True))
    assert excinfo.value.sqlstate == "08P01"
    assert server.state is State.ERROR
    # Refusing is fine: the bytes are then plaintext as they should be.
    server = Connection(SERVER)
    server.receive_data(bytes(request_) + bytes(STARTUP))
    assert server.next_event() == request_
    assert server.send(answer(False)) == b"N"
    assert server.next_event() == STARTUP


@pytest.mark.parametrize(
    ("request_", "yes"), [(SSLRequest(), b"S"), (GSSENCRequest(), b"G")], ids=["ssl", "gss"]
)
def test_cve_2021_23222_bytes_after_the_servers_yes(request_: Event, yes: bytes) -> None:
    # The client side: bytes with the S/G before the handshake are injected.
    client = Connection(CLIENT)
    client.send(request_)
    client.receive_data(yes + bytes(AuthenticationOk()))
    with pytest.raises(RemoteProtocolError, match="unencrypted data"):
        client.next_event()
    assert client.state is State.ERROR
    # After N the server may say more (e.g. a FATAL), all in plaintext.
    client = Connection(CLIENT)
    client.send(request_)
    client.receive_data(b"N" + bytes(AuthenticationOk()))
    assert client.next_event() == (SSLResponse(False) if yes == b"S" else GSSENCResponse(False))
    # ... but nothing before the client's StartupMessage.
    with pytest.raises(RemoteProtocolError, match="can't send AuthenticationOk in state STARTUP"):
        client.next_event()


@pytest.mark.parametrize(
    ("request_", "answer"),
    [
        (SSLRequest(), b"X"),
        (SSLRequest(), b"G"),
        (GSSENCRequest(), b"S"),
        (GSSENCRequest(), b"\0"),
    ],
)
def test_invalid_answer_to_encryption_request(request_: Event, answer: bytes) -> None:
    client = Connection(CLIENT)
    client.send(request_)
    client.receive_data(answer)
    with pytest.raises(RemoteProtocolError, match="invalid answer"):
        client.next_event()
    assert client.state is State.ERROR


@pytest.mark.parametrize("request_", [SSLRequest(), GSSENCRequest()])
def test_old_server_answers_encryption_request_with_error(request_: Event) -> None:
    fatal = ErrorResponse.build("08P01", "unsupported frontend protocol 1234.5679", "FATAL")
    wire = bytes(fatal)
    client = Connection(CLIENT)
    client.send(request_)
    # Byte by byte: the E alone is not yet an answer.
    for i in range(len(wire) - 1):
        client.receive_data(wire[i : i + 1])
        assert client.next_event() is NEED_DATA
    client.receive_data(wire[-1:])
    assert client.next_event() == fatal
    assert client.state is State.CLOSED
    client.receive_data(b"")
    assert client.next_event() == ConnectionClosed()


def test_direct_tls_client_hello() -> None:
    # sslnegotiation=direct sends a TLS ClientHello straight away.
    server = Connection(SERVER)
    server.receive_data(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32))
    with pytest.raises(RemoteProtocolError, match="TLS handshake") as excinfo:
        server.next_event()
    assert excinfo.value.sqlstate == "08P01"
    assert server.state is State.ERROR
    # Fewer than 4 bytes: not decided yet.
    server = Connection(SERVER)
    server.receive_data(b"\x16\x03")
    assert server.next_event() is NEED_DATA


# --- cancel requests -----------------------------------------------------------------------


@pytest.mark.parametrize("key", [KEY4, KEY32, b"k" * 256], ids=["3.0", "3.2", "longest"])
def test_cancel_request(key: bytes) -> None:
    p = ConnectionPair()
    data = p.send(CLIENT, CancelRequest(4242, key))
    assert len(data) == 12 + len(key)
    assert p.client.state is State.CLOSED
    # No reply: the server closes the socket.
    with pytest.raises(LocalProtocolError):
        p.server.send(ErrorResponse.build("57014", "canceled"))
    p = ConnectionPair()
    p.send(CLIENT, CancelRequest(4242, key))
    assert p.server.send(ConnectionClosed()) == b""
    assert receive_and_get(p.client, b"") == [ConnectionClosed()]
    assert p.client.their_closed


def test_a_span_ends_at_terminate() -> None:
    """PostgreSQL reads nothing after a Terminate: what follows in the same read is
    not part of the span (and not a protocol error a proxy would answer)."""
    server = ready_server()
    wire = bytes(Query("SELECT 1")) + bytes(Terminate())
    server.receive_data(wire + bytes(Parse("s", "q")) + bytes(Sync()))
    span = server.next_span()
    assert isinstance(span, Span)
    assert span.data == wire
    assert span.events == [Query("SELECT 1"), Terminate()]
    assert server.state is State.CLOSED


def test_nothing_after_cancel_request() -> None:
    server = Connection(SERVER)
    server.receive_data(bytes(CancelRequest(1, KEY4)) + bytes(Query("x")))
    assert server.next_event() == CancelRequest(1, KEY4)
    with pytest.raises(RemoteProtocolError, match="can't send Query in state CLOSED"):
        server.next_event()


# --- protocol versions ----------------------------------------------------------------------


def test_protocol_3_2_key() -> None:
    p = ConnectionPair()
    p.send(CLIENT, StartupMessage({"user": "alice"}, PROTOCOL_3_2))
    assert p.server.protocol_version == PROTOCOL_3_2
    p.send(SERVER, [AuthenticationOk(), BackendKeyData(4242, KEY32), ReadyForQuery("I")])
    assert p.client.protocol_version == PROTOCOL_3_2


def test_protocol_3_0_refuses_long_key() -> None:
    wire = bytes(BackendKeyData(4242, KEY32))
    assert len(wire) == 41  # a body of 36 bytes: pid + 32-byte key
    p = ConnectionPair()
    p.send(CLIENT, STARTUP)
    p.send(SERVER, AuthenticationOk())
    with pytest.raises(LocalProtocolError, match="only 4-byte cancel keys"):
        p.server.send(BackendKeyData(4242, KEY32))
    with pytest.raises(RemoteProtocolError, match="only 4-byte cancel keys") as excinfo:
        receive_and_get(p.client, wire)
    assert excinfo.value.sqlstate == "08P01"


def test_negotiate_protocol_version() -> None:
    # Asking a PostgreSQL 15 for 3.2 and an unknown option (reference §1c).
    p = ConnectionPair()
    p.send(CLIENT, StartupMessage({"user": "alice", "_pq_.test_option": "on"}, PROTOCOL_3_2))
    p.send(SERVER, NegotiateProtocolVersion(PROTOCOL_3_0, ["_pq_.test_option"]))
    assert p.client.protocol_version == p.server.protocol_version == PROTOCOL_3_0
    p.send(SERVER, AuthenticationOk())
    with pytest.raises(RemoteProtocolError):
        receive_and_get(p.client, bytes(BackendKeyData(1, KEY32)))
    # A PostgreSQL 18 keeps 3.2.
    p = ConnectionPair()
    p.send(CLIENT, StartupMessage({"user": "alice"}, 0x00030009))
    p.send(SERVER, [NegotiateProtocolVersion(PROTOCOL_3_2), AuthenticationOk()])
    p.send(SERVER, [BackendKeyData(1, KEY32), ReadyForQuery("I")])
    assert p.client.protocol_version == PROTOCOL_3_2


@pytest.mark.parametrize(("version", "name"), [(0x00020000, "2.0"), (0x00040000, "4.0")])
def test_unsupported_protocol(version: int, name: str) -> None:
    client = Connection(CLIENT)
    wire = client.send(StartupMessage({"user": "alice"}, version))
    server = Connection(SERVER)
    with pytest.raises(RemoteProtocolError, match=f"unsupported frontend protocol {name}") as ei:
        receive_and_get(server, wire)
    assert ei.value.sqlstate == "0A000"
    # The error carries what a proxy needs to answer; the connection itself is done.
    answer = ErrorResponse.build(ei.value.sqlstate, str(ei.value), "FATAL")
    assert receive_and_get(client, bytes(answer)) == [answer]
    assert client.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        server.send(answer)


# --- authentication ------------------------------------------------------------------------


def test_cleartext_password() -> None:
    p = ConnectionPair()
    p.send(CLIENT, STARTUP)
    p.send(SERVER, AuthenticationCleartextPassword())
    p.send(CLIENT, PasswordMessage("secret"))
    p.send(SERVER, [AuthenticationOk(), ReadyForQuery("I")])


def test_md5_password() -> None:
    p = ConnectionPair()
    p.send(CLIENT, STARTUP)
    p.send(SERVER, AuthenticationMD5Password(b"\x93\x0d\x7f\x2c"))
    p.send(CLIENT, PasswordMessage("md5a3556571e93b0d20722ba62be61e8c2d"))
    p.send(SERVER, AuthenticationOk())


def test_scram() -> None:
    p = ConnectionPair()
    p.send(CLIENT, STARTUP)
    p.send(SERVER, AuthenticationSASL(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]))
    p.send(CLIENT, SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=rOprNGfwEbeRWgbNEkqO"))
    p.send(SERVER, AuthenticationSASLContinue(b"r=rOprNGfwEbeRWgbNEkqO%hvYD,s=W22Z,i=4096"))
    p.send(CLIENT, SASLResponse(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYD,p=dHzb"))
    p.send(SERVER, AuthenticationSASLFinal(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="))
    # Nothing is asked after the final message.
    with pytest.raises(LocalProtocolError, match="can't send SASLResponse"):
        ConnectionPair().client.send(SASLResponse(b""))
    p.send(SERVER, [AuthenticationOk(), ReadyForQuery("I")])


def test_scram_without_initial_response() -> None:
    p = ConnectionPair()
    p.send(CLIENT, STARTUP)
    p.send(SERVER, AuthenticationSASL(["SCRAM-SHA-256"]))
    p.send(CLIENT, SASLInitialResponse("SCRAM-SHA-256", None))


@pytest.mark.parametrize("request_", [AuthenticationGSS(), AuthenticationSSPI()])
def test_gss_and_sspi(request_: Event) -> None:
    p = ConnectionPair()
    p.send(CLIENT, STARTUP)
    p.send(SERVER, request_)
    p.send(CLIENT, GSSResponse(b"\x60\x82first"))
    p.send(SERVER, AuthenticationGSSContinue(b"\xa1\x81second"))
    p.send(CLIENT, GSSResponse(b"\x60\x82third"))
    p.send(SERVER, AuthenticationOk())


def test_notice_between_request_and_answer() -> None:
    p = ConnectionPair()
    p.send(CLIENT, STARTUP)
    p.send(SERVER, [AuthenticationSASL(["SCRAM-SHA-256"]), NOTICE])
    p.send(CLIENT, SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=x"))


def test_bad_password() -> None:
    p = ConnectionPair()
    p.send(CLIENT, STARTUP)
    p.send(SERVER, AuthenticationCleartextPassword())
    p.send(CLIENT, PasswordMessage("wrong"))
    fatal = ErrorResponse.build(
        "28P01", 'password authentication failed for user "alice"', "FATAL"
    )
    p.send(SERVER, fatal)
    assert p.client.state is State.CLOSED
    assert p.server.send(ConnectionClosed()) == b""
    assert receive_and_get(p.client, b"") == [ConnectionClosed()]


def test_password_nobody_asked_for() -> None:
    # The client may not send one ...
    p = ConnectionPair()
    p.send(CLIENT, STARTUP)
    with pytest.raises(LocalProtocolError, match="can't send PasswordMessage"):
        p.client.send(PasswordMessage("secret"))
    assert p.client.state is State.ERROR
    # ... and a server refuses one, before authentication and after it.
    server = Connection(SERVER)
    server.receive_data(bytes(STARTUP) + bytes(PasswordMessage("secret")))
    assert server.next_event() == STARTUP
    with pytest.raises(RemoteProtocolError, match="no authentication asked") as excinfo:
        server.next_event()
    assert excinfo.value.sqlstate == "08P01"
    server = ready_server()
    server.receive_data(bytes(PasswordMessage("secret")))
    with pytest.raises(RemoteProtocolError, match="no authentication asked"):
        server.next_event()


def test_second_password_is_refused() -> None:
    server = Connection(SERVER)
    receive_and_get(server, bytes(STARTUP))
    server.send(AuthenticationCleartextPassword())
    server.receive_data(bytes(PasswordMessage("a")) + bytes(PasswordMessage("b")))
    assert server.next_event() == PasswordMessage("a")
    with pytest.raises(RemoteProtocolError, match="no authentication asked"):
        server.next_event()


# --- simple query ---------------------------------------------------------------------------


def test_simple_query() -> None:
    p = ready_pair()
    p.send(CLIENT, Query("SELECT 1"))
    assert p.client.state is State.IN_QUERY
    assert p.client.outstanding == 1
    assert not p.client.idle
    p.send(SERVER, [ROW_1, DataRow([b"1"]), CommandComplete("SELECT 1")])
    assert p.client.outstanding == 1
    p.send(SERVER, ReadyForQuery("I"))
    assert p.client.state is State.READY
    assert p.client.idle
    p.send(CLIENT, Query(""))
    p.send(SERVER, [EmptyQueryResponse(), ReadyForQuery("I")])


def test_multi_statement_query_with_error() -> None:
    # One implicit transaction: the error aborts the rest and rolls back.
    p = ready_pair()
    p.send(CLIENT, Query("SELECT 1; SELECT 1/0; SELECT 2"))
    p.send(SERVER, [ROW_1, DataRow([b"1"]), CommandComplete("SELECT 1"), DIV_BY_ZERO])
    assert p.client.state is State.IN_QUERY  # a simple query never fails the batch
    p.send(SERVER, ReadyForQuery("I"))
    assert p.client.idle


def test_transaction_status() -> None:
    p = ready_pair()
    p.send(CLIENT, Query("BEGIN"))
    p.send(SERVER, [CommandComplete("BEGIN"), ReadyForQuery("T")])
    assert p.client.transaction_status == "T"
    # Idle in a transaction block: nothing outstanding, but a pooler must
    # keep the link (idle is about the request queue, not the transaction).
    assert p.client.idle
    p.send(CLIENT, Query("SELECT 1/0"))
    p.send(SERVER, [DIV_BY_ZERO, ReadyForQuery("E")])
    assert p.client.transaction_status == "E"
    p.send(CLIENT, Query("ROLLBACK"))
    p.send(SERVER, [CommandComplete("ROLLBACK"), ReadyForQuery("I")])
    assert p.client.transaction_status == "I"


def test_pipelined_simple_queries() -> None:
    # PgJDBC: Q "BEGIN" and a whole extended batch in one flight.
    p = ready_pair()
    p.send(CLIENT, [Query("BEGIN"), Parse("", "SELECT 1"), Bind("", ""), Execute(), Sync()])
    assert p.client.outstanding == 2
    p.send(SERVER, [CommandComplete("BEGIN"), ReadyForQuery("T")])
    assert p.client.outstanding == 1
    p.send(SERVER, [ParseComplete(), BindComplete(), DataRow([b"1"])])
    p.send(SERVER, [CommandComplete("SELECT 1"), ReadyForQuery("T")])
    assert p.client.outstanding == 0
    assert p.client.idle


def test_async_messages_at_idle() -> None:
    p = ready_pair()
    p.send(
        SERVER,
        [
            NotificationResponse(4243, "jobs", "42"),
            ParameterStatus("TimeZone", "UTC"),  # a config reload (SIGHUP)
            NOTICE,
        ],
    )
    assert p.client.state is State.READY
    assert p.client.idle


def test_unsolicited_fatal_at_idle() -> None:
    p = ready_pair()
    fatal = ErrorResponse.build(
        "57P01", "terminating connection due to administrator command", "FATAL"
    )
    p.send(SERVER, fatal)
    # A FATAL means the server is closing: no pooler may hand it out any more.
    assert p.client.state is State.CLOSED
    assert not p.client.idle
    assert p.server.state is State.CLOSED
    assert p.server.send(ConnectionClosed()) == b""
    assert receive_and_get(p.client, b"") == [ConnectionClosed()]
    assert p.client.state is State.CLOSED
    assert not p.client.idle
    assert p.client.their_closed


def test_function_call() -> None:
    p = ready_pair()
    p.send(CLIENT, FunctionCall(952, [1], [b"\x00\x00\x00\x01"], 1))
    assert p.client.outstanding == 1
    p.send(SERVER, [FunctionCallResponse(b"\x00\x00\x00\x00"), ReadyForQuery("I")])
    assert p.client.idle
    p.send(CLIENT, FunctionCall(952))
    p.send(SERVER, [ErrorResponse.build("42883", "no function"), ReadyForQuery("I")])
    assert p.client.idle


# --- extended query -------------------------------------------------------------------------


def test_extended_query() -> None:
    p = ready_pair()
    p.send(CLIENT, [Parse("s1", "SELECT $1::int", [23]), Bind("", "s1", [0], [b"1"], [0])])
    p.send(CLIENT, [Describe("P"), Execute("", 0), Close("S", "s1"), Sync()])
    assert p.client.outstanding == 1
    p.send(SERVER, [ParseComplete(), BindComplete(), ROW_1, DataRow([b"1"])])
    p.send(SERVER, [CommandComplete("SELECT 1"), CloseComplete(), ReadyForQuery("I")])
    assert p.client.idle


def test_portal_suspended() -> None:
    p = ready_pair()
    p.send(CLIENT, [Bind("c", "s"), Execute("c", 1), Flush()])
    p.send(SERVER, [BindComplete(), DataRow([b"1"]), PortalSuspended()])
    assert p.client.state is State.IN_QUERY
    p.send(CLIENT, [Execute("c", 1), Sync()])
    p.send(SERVER, [DataRow([b"2"]), CommandComplete("SELECT 1"), ReadyForQuery("I")])


def test_pipeline_many_syncs() -> None:
    p = ready_pair()
    for i in range(5):
        p.send(CLIENT, [Parse("", f"SELECT {i}"), Bind("", ""), Execute(), Sync()])
        assert p.client.outstanding == i + 1
    for i in range(5):
        p.send(SERVER, [ParseComplete(), BindComplete(), DataRow([b"%d" % i])])
        p.send(SERVER, [CommandComplete("SELECT 1"), ReadyForQuery("I")])
        assert p.client.outstanding == 4 - i
    assert p.client.idle


def test_error_inside_pipeline() -> None:
    # psycopg's pipeline: three statements, one Sync; the second fails at Bind.
    p = ready_pair()
    for n in ("1", "1/0", "2"):
        p.send(CLIENT, [Parse("", f"SELECT {n}"), Bind("", ""), Describe("P"), Execute()])
    p.send(CLIENT, Sync())
    p.send(SERVER, [ParseComplete(), BindComplete(), ROW_1, DataRow([b"1"])])
    p.send(SERVER, [CommandComplete("SELECT 1"), ParseComplete()])
    assert p.client.state is State.IN_QUERY
    p.send(SERVER, DIV_BY_ZERO)
    # Discarding until Sync: nothing for the third statement.
    assert p.client.state is State.FAILED_EXTENDED
    assert p.client.outstanding == 1
    assert not p.client.idle
    p.send(SERVER, ReadyForQuery("I"))
    assert p.client.state is State.READY
    assert p.client.idle


def test_error_in_first_of_several_syncs() -> None:
    p = ready_pair()
    p.send(CLIENT, [Parse("", "bad"), Sync(), Parse("", "SELECT 1"), Sync()])
    p.send(SERVER, ErrorResponse.build("42601", "syntax error"))
    assert p.client.state is State.FAILED_EXTENDED
    p.send(SERVER, ReadyForQuery("I"))
    assert p.client.state is State.IN_QUERY
    assert p.client.outstanding == 1
    p.send(SERVER, [ParseComplete(), ReadyForQuery("I")])
    assert p.client.idle


def test_flush_without_sync() -> None:
    # asyncpg: Parse + Describe + Flush, wait for the answers, then Bind ...
    p = ready_pair()
    p.send(CLIENT, [Parse("", "SELECT $1"), Describe("S"), Flush()])
    p.send(SERVER, [ParseComplete(), ParameterDescription([23]), NoData()])
    assert p.client.state is State.IN_QUERY
    assert p.client.outstanding == 0
    assert not p.client.idle
    p.send(CLIENT, [Bind("", "", [], [b"1"]), Execute(), Sync()])
    p.send(SERVER, [BindComplete(), CommandComplete("SELECT 0"), ReadyForQuery("I")])
    assert p.client.idle


# --- COPY ------------------------------------------------------------------------------------


def test_copy_in_simple() -> None:
    p = ready_pair()
    p.send(CLIENT, Query("COPY t FROM STDIN"))
    p.send(SERVER, CopyInResponse(0, [0, 0]))
    assert p.client.state is State.COPY_IN
    assert p.client.frontend_copy_open
    p.send(CLIENT, [CopyData(b"1\tone\n"), CopyData(b"2\ttwo\n"), Flush(), Sync()])
    assert p.client.outstanding == 1  # Flush and Sync are ignored in copy-in mode
    p.send(CLIENT, CopyDone())
    assert not p.client.frontend_copy_open
    p.send(SERVER, [CommandComplete("COPY 2"), ReadyForQuery("I")])
    assert p.client.idle


def test_copy_in_error_while_client_still_sends() -> None:
    p = ready_pair()
    p.send(CLIENT, Query("COPY t FROM STDIN"))
    p.send(SERVER, CopyInResponse())
    p.send(CLIENT, CopyData(b"not a number\n"))
    # The server fails at once and is ready again ...
    p.send(SERVER, [ErrorResponse.build("22P02", "invalid input syntax"), ReadyForQuery("I")])
    assert p.client.state is State.READY
    assert p.client.outstanding == 0
    # ... but the client is still copying: not idle until it ends its COPY.
    assert p.client.frontend_copy_open
    assert not p.client.idle
    p.send(CLIENT, CopyData(b"more rows\n"))
    assert not p.client.idle
    p.send(CLIENT, CopyDone())
    assert not p.client.frontend_copy_open
    assert p.client.idle


def test_copy_in_fail() -> None:
    p = ready_pair()
    p.send(CLIENT, Query("COPY t FROM STDIN"))
    p.send(SERVER, CopyInResponse())
    p.send(CLIENT, CopyFail("interrupted"))
    p.send(SERVER, [ErrorResponse.build("57014", "COPY from stdin failed"), ReadyForQuery("I")])
    assert p.client.idle


def test_copy_in_extended() -> None:
    # libpq: P B D E S; the server reads that Sync in copy-in mode and eats it;
    # after CopyDone libpq sends the Sync that is answered.
    p = ready_pair()
    p.send(CLIENT, [Parse("", "COPY t FROM STDIN"), Bind("", ""), Describe("P"), Execute()])
    p.send(CLIENT, Sync())
    assert p.client.outstanding == 1
    p.send(SERVER, [ParseComplete(), BindComplete(), NoData(), CopyInResponse()])
    assert p.client.state is State.COPY_IN
    assert p.client.outstanding == 0
    p.send(CLIENT, [CopyData(b"1\n"), CopyDone(), Sync()])
    assert p.client.outstanding == 1
    p.send(SERVER, [CommandComplete("COPY 1"), ReadyForQuery("I")])
    assert p.client.idle


def test_copy_out() -> None:
    p = ready_pair()
    p.send(CLIENT, Query("COPY t TO STDOUT"))
    p.send(SERVER, CopyOutResponse(0, [0, 0]))
    assert p.client.state is State.COPY_OUT
    p.send(SERVER, [CopyData(b"1\tone\n"), NOTICE, CopyData(b"2\ttwo\n"), CopyDone()])
    assert p.client.state is State.IN_QUERY
    p.send(SERVER, [CommandComplete("COPY 2"), ReadyForQuery("I")])
    assert p.client.idle


def test_copy_both() -> None:
    p = ready_pair()
    p.send(CLIENT, Query("START_REPLICATION 0/2000000 TIMELINE 1"))
    p.send(SERVER, CopyBothResponse())
    assert p.client.state is State.COPY_BOTH
    p.send(SERVER, CopyData(b"w" + bytes(24) + b"wal"))
    p.send(CLIENT, CopyData(b"r" + bytes(33)))
    p.send(CLIENT, CopyDone())
    p.send(SERVER, CopyDone())
    p.send(SERVER, [CommandComplete("START_STREAMING"), ReadyForQuery("I")])
    assert p.client.idle


# --- the end of a connection ----------------------------------------------------------------


def test_terminate() -> None:
    p = ready_pair()
    p.send(CLIENT, Terminate())
    assert p.client.state is State.CLOSED
    assert not p.client.idle
    with pytest.raises(LocalProtocolError, match="can't send Query in state CLOSED"):
        p.client.send(Query("SELECT 1"))
    # The server closes; the client sees the end.
    p = ready_pair()
    p.send(CLIENT, Terminate())
    p.client.send(ConnectionClosed())
    assert receive_and_get(p.server, b"") == [ConnectionClosed()]
    assert p.server.state is State.CLOSED


def test_terminate_does_not_wait_for_answers() -> None:
    p = ready_pair()
    p.send(CLIENT, [Query("SELECT 1"), Terminate()])
    assert p.server.state is State.CLOSED
    p.send(SERVER, [ROW_1, DataRow([b"1"]), CommandComplete("SELECT 1"), ReadyForQuery("I")])
    assert p.client.outstanding == 0
    assert receive_and_get(p.client, b"") == [ConnectionClosed()]


def test_eof() -> None:
    client = ready_client()
    client.receive_data(b"")
    assert client.their_closed
    # The state learns of the end when ConnectionClosed is read, as in h11.
    assert client.idle
    assert client.next_event() == ConnectionClosed()
    assert client.state is State.CLOSED
    assert not client.idle
    # It stays closed.
    assert client.next_event() == ConnectionClosed()
    assert client.next_span() == ConnectionClosed()
    with pytest.raises(RuntimeError, match="after the peer closed"):
        client.receive_data(b"more")
    with pytest.raises(RuntimeError):
        client.receive_data(b"")


@pytest.mark.parametrize("role", [CLIENT, SERVER])
def test_eof_during_startup(role: Role) -> None:
    conn = Connection(role)
    if role is CLIENT:
        conn.send(STARTUP)
    assert receive_and_get(conn, b"") == [ConnectionClosed()]
    assert conn.state is State.CLOSED


@pytest.mark.parametrize(
    ("role", "partial"),
    [
        (SERVER, bytes(STARTUP)[:3]),
        (SERVER, bytes(STARTUP)[:-1]),
        (CLIENT, b"Z\x00\x00\x00\x05"),
        (CLIENT, b"Z\x00"),
    ],
)
def test_eof_in_the_middle_of_a_message(role: Role, partial: bytes) -> None:
    if role is CLIENT:
        conn = ready_client()
        conn.send(Query("SELECT 1"))
    else:
        conn = Connection(SERVER)
    conn.receive_data(partial)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    assert not conn.their_closed
    assert conn.trailing_data == partial
    with pytest.raises(RemoteProtocolError, match=f"{len(partial)} bytes left over"):
        conn.next_event()
    assert conn.state is State.ERROR


def test_eof_in_the_middle_of_a_span() -> None:
    client = ready_client()
    client.send(Query("SELECT 1"))
    client.receive_data(bytes(ROW_1)[:7])
    assert client.next_span() is NEED_DATA
    client.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="7 bytes left over"):
        client.next_span()
    assert client.state is State.ERROR


def test_their_closed_and_trailing_data() -> None:
    client = ready_client()
    client.send(Query("SELECT 1"))
    wire = bytes(ROW_1) + bytes(DataRow([b"1"]))
    client.receive_data(wire + b"C\x00")
    assert client.trailing_data == wire + b"C\x00"
    assert client.next_event() == ROW_1
    assert client.trailing_data == bytes(DataRow([b"1"])) + b"C\x00"
    assert client.next_event() == DataRow([b"1"])
    assert client.next_event() is NEED_DATA
    assert client.trailing_data == b"C\x00"
    client.receive_data(bytes(CommandComplete("SELECT 1"))[2:] + bytes(ReadyForQuery("I")))
    assert client.trailing_data == bytes(CommandComplete("SELECT 1")) + bytes(ReadyForQuery("I"))
    client.receive_data(b"")
    assert not client.their_closed
    assert get_all_events(client) == [
        CommandComplete("SELECT 1"),
        ReadyForQuery("I"),
        ConnectionClosed(),
    ]
    assert client.their_closed
    assert client.trailing_data == b""


@pytest.mark.parametrize("data", [bytearray(bytes(Query("x"))), memoryview(bytes(Query("x")))])
def test_receive_bytes_like(data: bytearray | memoryview) -> None:
    server = ready_server()
    server.receive_data(data)
    assert server.next_event() == Query("x")
    # Split in the middle, with a bytes-like rest.
    server.receive_data(bytes(Sync())[:2])
    server.receive_data(type(data)(bytes(Sync())[2:]))
    assert server.next_event() == Sync()


def test_receive_buffer_compaction() -> None:
    # A leftover is kept and grown in place, across many small receives.
    server = ready_server()
    wire = bytes(Query("SELECT 1")) * 3
    for i in range(len(wire)):
        server.receive_data(wire[i : i + 1])
        if i % 2:
            get_all_events(server)
    assert get_all_events(server) == []
    assert server.outstanding == 3


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [CLIENT, SERVER])
def test_error_state_is_final(role: Role) -> None:
    conn = ready_client() if role is CLIENT else ready_server()
    conn.receive_data(b"?\x00\x00\x00\x04")
    with pytest.raises(RemoteProtocolError, match="unknown message type b'\\?'"):
        conn.next_event()
    assert conn.state is State.ERROR
    assert not conn.idle
    with pytest.raises(RemoteProtocolError, match="after a protocol error"):
        conn.next_event()
    with pytest.raises(RemoteProtocolError, match="after a protocol error"):
        conn.next_span()
    event = Sync() if role is CLIENT else ReadyForQuery("I")
    with pytest.raises(LocalProtocolError, match="after a protocol error"):
        conn.send(event)
    with pytest.raises(LocalProtocolError, match="after a protocol error"):
        conn.send_span(Span(bytes(event), [event], [0]))
    # Closing is always allowed.
    assert conn.send(ConnectionClosed()) == b""
    assert conn.state is State.ERROR


def test_local_error_is_final_too() -> None:
    client = ready_client()
    with pytest.raises(LocalProtocolError):
        client.send(DataRow([]))
    assert client.state is State.ERROR
    client.receive_data(bytes(ReadyForQuery("I")))
    with pytest.raises(RemoteProtocolError):
        client.next_event()


@pytest.mark.parametrize(
    ("role", "wire"),
    [
        (CLIENT, b"?\x00\x00\x00\x04"),
        (SERVER, b"?\x00\x00\x00\x04"),
        # Right byte, wrong direction.
        (CLIENT, bytes(Query("x"))),
        (CLIENT, b"p\x00\x00\x00\x04"),
        (CLIENT, bytes(Terminate())),
        (SERVER, bytes(ReadyForQuery("I"))),
        (SERVER, bytes(AuthenticationOk())),
        (SERVER, bytes(NoData())),
    ],
)
def test_unknown_message_type(role: Role, wire: bytes) -> None:
    conn = ready_client() if role is CLIENT else ready_server()
    conn.receive_data(wire)
    with pytest.raises(RemoteProtocolError, match="unknown message type") as excinfo:
        conn.next_event()
    assert excinfo.value.sqlstate == "08P01"
    conn = ready_client() if role is CLIENT else ready_server()
    conn.receive_data(wire)
    with pytest.raises(RemoteProtocolError, match="unknown message type"):
        conn.next_span()


@pytest.mark.parametrize(
    ("role", "event"),
    [
        (CLIENT, DataRow([])),
        (CLIENT, ReadyForQuery("I")),
        (CLIENT, SSLResponse(True)),
        (CLIENT, ErrorResponse([])),
        (CLIENT, Event()),  # the base class is no message
        (SERVER, Query("x")),
        (SERVER, Sync()),
        (SERVER, SSLRequest()),
        (SERVER, PasswordMessage("x")),
    ],
)
def test_wrong_direction(role: Role, event: Event) -> None:
    conn = ready_client() if role is CLIENT else ready_server()
    side = role.value.lower()
    with pytest.raises(LocalProtocolError, match=f"a {side} can't send {type(event).__name__}"):
        conn.send(event)
    assert conn.state is State.ERROR


@pytest.mark.parametrize(
    ("setup", "event"),
    [
        (lambda: Connection(CLIENT), Query("SELECT 1")),
        (lambda: Connection(CLIENT), Terminate()),
        (lambda: Connection(SERVER), AuthenticationOk()),
        (lambda: Connection(SERVER), SSLResponse(False)),
        (ready_client, STARTUP),
        (ready_client, SSLRequest()),
        (ready_server, DataRow([b"1"])),
        (ready_server, CommandComplete("SELECT 1")),
        (ready_server, CopyData(b"x")),
        (ready_server, AuthenticationOk()),
        (ready_server, BackendKeyData(1, KEY4)),
    ],
)
def test_send_in_the_wrong_state(setup: object, event: Event) -> None:
    conn = setup()  # type: ignore[operator]
    with pytest.raises(LocalProtocolError, match=f"can't send {type(event).__name__} in state"):
        conn.send(event)
    assert conn.state is State.ERROR


def test_receive_in_the_wrong_state() -> None:
    client = ready_client()
    client.receive_data(bytes(DataRow([b"1"])))
    with pytest.raises(RemoteProtocolError, match="can't send DataRow in state READY"):
        client.next_event()
    server = ready_server()
    server.receive_data(bytes(STARTUP))
    with pytest.raises(RemoteProtocolError, match="unknown message type"):
        server.next_event()


# --- size limits ----------------------------------------------------------------------------


def test_max_message_size() -> None:
    server = Connection(SERVER, max_message_size=1000)
    receive_and_get(server, bytes(STARTUP))
    server.send(AuthenticationOk())
    server.send(ReadyForQuery("I"))
    # Exactly the limit (the length word counts, the type byte does not).
    query = Query("x" * 995)
    assert len(bytes(query)) == 1001
    assert receive_and_get(server, bytes(query)) == [query]
    server.receive_data(bytes(Query("x" * 996)))
    with pytest.raises(RemoteProtocolError, match="invalid length 1001") as excinfo:
        server.next_event()
    assert excinfo.value.sqlstate == "54000"


def test_max_message_size_is_known_from_the_header() -> None:
    # The header alone is enough to refuse: no need to buffer a gigabyte.
    client = ready_client()
    client.send(Query("SELECT repeat('x', 1 << 30)"))
    client.receive_data(b"D\x40\x00\x00\x00")
    with pytest.raises(RemoteProtocolError, match="invalid length 1073741824") as excinfo:
        client.next_event()
    assert excinfo.value.sqlstate == "54000"


def test_max_message_size_caps_small_messages_too() -> None:
    server = Connection(SERVER, max_message_size=100)
    receive_and_get(server, bytes(STARTUP))
    server.send(AuthenticationOk())
    server.send(ReadyForQuery("I"))
    server.receive_data(bytes(Describe("S", "x" * 200)))
    with pytest.raises(RemoteProtocolError, match="invalid length") as excinfo:
        server.next_event()
    assert excinfo.value.sqlstate == "54000"


def test_control_message_limit() -> None:
    # PQ_SMALL_MESSAGE_LIMIT: control messages are small whatever max_message_size says.
    server = ready_server()
    describe = Describe("S", "x" * 9994)
    assert len(bytes(describe)) == 10001
    assert receive_and_get(server, bytes(describe)) == [describe]
    server.receive_data(bytes(Describe("S", "x" * 9995)))
    with pytest.raises(RemoteProtocolError, match="invalid length 10001") as excinfo:
        server.next_event()
    assert excinfo.value.sqlstate == "08P01"


@pytest.mark.parametrize(
    ("role", "wire"),
    [
        (SERVER, b"S\x00\x00\x00\x05x"),
        (SERVER, b"Q\x00\x00\x00\x03"),
        (SERVER, b"Q\xff\xff\xff\xff"),
        (CLIENT, b"1\x00\x00\x00\x00"),
        (CLIENT, b"K\x00\x00\x00\x0b"),
        (CLIENT, b"Z\x00\x00\x00\x04"),
    ],
)
def test_invalid_lengths(role: Role, wire: bytes) -> None:
    conn = ready_client() if role is CLIENT else ready_server()
    conn.receive_data(wire)
    with pytest.raises(RemoteProtocolError, match="invalid length") as excinfo:
        conn.next_event()
    assert excinfo.value.sqlstate == "08P01"


def test_max_startup_size() -> None:
    big = StartupMessage({"user": "alice", "options": "x" * 20000})
    server = Connection(SERVER)
    server.receive_data(bytes(big)[:4])
    with pytest.raises(RemoteProtocolError, match="invalid startup packet length") as excinfo:
        server.next_event()
    assert excinfo.value.sqlstate == "54000"
    server = Connection(SERVER, max_startup_size=30000)
    assert receive_and_get(server, bytes(big)) == [big]


# --- spans: the proxy fast path -----------------------------------------------------------


def test_span_bulk_offsets_and_zero_copy() -> None:
    client = ready_client()
    client.send(Query("SELECT generate_series(1, 3)"))
    messages = [ROW_1, DataRow([b"1"]), DataRow([b"2"]), DataRow([b"3"])]
    messages += [CommandComplete("SELECT 3"), ReadyForQuery("I")]
    chunk = b"".join(bytes(m) for m in messages)
    client.receive_data(chunk)
    span = client.next_span()
    assert isinstance(span, Span)
    # The whole chunk, forwarded without a copy.
    assert span.data is chunk
    assert span.events == [ROW_1, CommandComplete("SELECT 3"), ReadyForQuery("I")]
    assert span.bulk == 3
    row_end = len(bytes(ROW_1)) + 3 * len(bytes(DataRow([b"1"])))
    assert span.offsets == [0, row_end, row_end + len(bytes(CommandComplete("SELECT 3")))]
    for event, offset in zip(span.events, span.offsets, strict=True):
        assert chunk[offset:].startswith(bytes(event))
    assert span.ready == "I"
    assert repr(span) == (
        f"Span({len(chunk)} bytes, bulk=3, events=[RowDescription,CommandComplete,ReadyForQuery])"
    )
    assert client.idle
    assert client.next_span() is NEED_DATA


def test_span_without_ready_for_query() -> None:
    client = ready_client()
    client.send(Query("SELECT 1"))
    client.receive_data(bytes(ROW_1) + bytes(DataRow([b"1"])))
    span = client.next_span()
    assert isinstance(span, Span)
    assert span.ready is None
    assert span.bulk == 1
    assert client.state is State.IN_QUERY


def test_span_keeps_a_partial_message() -> None:
    client = ready_client()
    client.send(Query("SELECT 1"))
    whole = bytes(ROW_1) + bytes(DataRow([b"1"]))
    tail = bytes(CommandComplete("SELECT 1")) + bytes(ReadyForQuery("I"))
    chunk = whole + tail[:3]
    client.receive_data(chunk)
    span = client.next_span()
    assert isinstance(span, Span)
    assert span.data == whole
    assert span.data is not chunk
    assert client.trailing_data == tail[:3]
    assert client.next_span() is NEED_DATA
    # A header that arrived whole, with its body still missing.
    client.receive_data(tail[3:7])
    assert client.next_span() is NEED_DATA
    rest = tail[7:]
    client.receive_data(rest)
    span = client.next_span()
    assert isinstance(span, Span)
    assert span.data == tail
    assert type(span.data) is bytes
    assert span.events == [CommandComplete("SELECT 1"), ReadyForQuery("I")]
    assert span.ready == "I"


def test_span_of_a_bytes_like_chunk_is_bytes() -> None:
    server = ready_server()
    chunk = bytearray(bytes(Query("SELECT 1")) + bytes(CopyData(b"x")))
    server.receive_data(chunk)
    span = server.next_span()
    assert isinstance(span, Span)
    assert type(span.data) is bytes
    assert span.data == chunk
    assert (span.events, span.bulk) == ([Query("SELECT 1")], 1)


def test_span_bulk_from_the_client_is_copy_data() -> None:
    server = ready_server()
    server.receive_data(bytes(Query("COPY t FROM STDIN")))
    assert server.next_span().events == [Query("COPY t FROM STDIN")]  # type: ignore[union-attr]
    server.send(CopyInResponse())
    rows = [CopyData(b"%d\n" % i) for i in range(10)]
    chunk = b"".join(bytes(r) for r in rows) + bytes(CopyDone())
    server.receive_data(chunk)
    span = server.next_span()
    assert isinstance(span, Span)
    assert (span.events, span.bulk) == ([CopyDone()], 10)
    assert span.offsets == [len(chunk) - 5]
    assert not server.frontend_copy_open


def test_span_data_row_needs_a_query() -> None:
    client = ready_client()
    client.receive_data(bytes(DataRow([b"1"])))
    with pytest.raises(RemoteProtocolError, match="can't send DataRow in state READY"):
        client.next_span()
    assert client.state is State.ERROR


def test_span_protocol_error_midway() -> None:
    client = ready_client()
    client.send(Query("SELECT 1"))
    client.receive_data(bytes(ROW_1) + b"Z\x00\x00\x00\x05X")
    with pytest.raises(RemoteProtocolError, match="is not I, T or E"):
        client.next_span()
    assert client.state is State.ERROR


def test_spans_in_startup_hold_one_message() -> None:
    client = Connection(CLIENT)
    client.send(STARTUP)
    messages: list[Event] = [
        AuthenticationOk(),
        ParameterStatus("client_encoding", "UTF8"),
        BackendKeyData(1, KEY4),
        ReadyForQuery("I"),
        NotificationResponse(1, "a", "b"),
        NOTICE,
    ]
    client.receive_data(b"".join(bytes(m) for m in messages))
    for m in messages[:4]:
        span = client.next_span()
        assert isinstance(span, Span)
        assert (span.data, span.events, span.offsets, span.bulk) == (bytes(m), [m], [0], 0)
    # Once READY, the rest comes as one span.
    span = client.next_span()
    assert isinstance(span, Span)
    assert span.events == messages[4:]
    assert client.next_span() is NEED_DATA


def test_spans_during_negotiation() -> None:
    server = Connection(SERVER)
    server.receive_data(bytes(SSLRequest()))
    span = server.next_span()
    assert isinstance(span, Span)
    assert span.events == [SSLRequest()]
    assert server.next_span() is PAUSED
    client = Connection(CLIENT)
    client.send(SSLRequest())
    assert client.next_span() is NEED_DATA
    client.receive_data(b"N")
    span = client.next_span()
    assert isinstance(span, Span)
    assert (span.data, span.events) == (b"N", [SSLResponse(False)])


def test_span_at_eof() -> None:
    server = ready_server()
    server.receive_data(bytes(Terminate()))
    server.receive_data(b"")
    span = server.next_span()
    assert isinstance(span, Span)
    assert span.events == [Terminate()]
    assert server.next_span() == ConnectionClosed()
    assert server.state is State.CLOSED
    # In startup too.
    server = Connection(SERVER)
    server.receive_data(b"")
    assert server.next_span() == ConnectionClosed()


class Proxy:
    """client <-> down (server role) | up (client role) <-> server.

    Forwards with next_span/send_span only; all four connections must agree.
    """

    def __init__(self) -> None:
        self.client = Connection(CLIENT)
        self.down = Connection(SERVER)
        self.up = Connection(CLIENT)
        self.server = Connection(SERVER)
        self.spans = 0

    def _forward(self, src: Connection, dst: Connection) -> bytes:
        out = []
        while True:
            span = src.next_span()
            if span is NEED_DATA or span is PAUSED:
                return b"".join(out)
            assert isinstance(span, Span)
            self.spans += 1
            out.append(dst.send_span(span))

    def send(self, role: Role, events: list[Event]) -> None:
        if role is CLIENT:
            path = [self.client, self.down, self.up, self.server]
        else:
            path = [self.server, self.up, self.down, self.client]
        data = b"".join(path[0].send(e) for e in events)
        path[1].receive_data(data)
        forwarded = self._forward(path[1], path[2])
        # Byte for byte what was sent.
        assert forwarded == data
        assert receive_and_get(path[3], forwarded) == events
        agree(self.client, self.down, self.up, self.server)


def test_proxy_forwards_a_whole_session() -> None:
    p = Proxy()
    p.send(CLIENT, [SSLRequest()])
    p.send(SERVER, [SSLResponse(False)])
    p.send(CLIENT, [StartupMessage({"user": "alice"}, PROTOCOL_3_2)])
    p.send(SERVER, [NegotiateProtocolVersion(PROTOCOL_3_0, ["_pq_.x"])])
    assert p.up.protocol_version == PROTOCOL_3_0
    p.send(SERVER, [AuthenticationSASL(["SCRAM-SHA-256"])])
    p.send(CLIENT, [SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc")])
    p.send(SERVER, [AuthenticationSASLContinue(b"r=abcdef,s=c2FsdA==,i=4096")])
    p.send(CLIENT, [SASLResponse(b"c=biws,r=abcdef,p=cHJvb2Y=")])
    p.send(SERVER, [AuthenticationSASLFinal(b"v=c2ln")])
    p.send(SERVER, [AuthenticationOk(), ParameterStatus("a", "b"), BackendKeyData(9, KEY4)])
    p.send(SERVER, [ReadyForQuery("I")])
    assert p.client.idle
    # Rows pass as bulk.
    p.send(CLIENT, [Query("SELECT 1"), Parse("", "SELECT 2"), Bind("", ""), Execute(), Sync()])
    assert p.up.outstanding == 2
    rows = [DataRow([b"%d" % i]) for i in range(50)]
    p.send(SERVER, [ROW_1, *rows, CommandComplete("SELECT 50"), ReadyForQuery("I")])
    p.send(SERVER, [ParseComplete(), BindComplete(), *rows, CommandComplete("SELECT 50")])
    p.send(SERVER, [ReadyForQuery("T")])
    assert p.down.transaction_status == "T"
    assert p.client.idle
    # COPY IN with an early error: the proxy keeps the link until CopyDone.
    p.send(CLIENT, [Query("COPY t FROM STDIN")])
    p.send(SERVER, [CopyInResponse()])
    p.send(CLIENT, [CopyData(b"bad\n")])
    p.send(SERVER, [ErrorResponse.build("22P02", "bad"), ReadyForQuery("E")])
    assert not p.up.idle
    p.send(CLIENT, [CopyData(b"x\n"), CopyDone()])
    assert p.up.idle
    # And the end.
    p.send(CLIENT, [Terminate()])
    assert p.up.state is State.CLOSED


def test_proxy_refuses_to_forward_the_wrong_way() -> None:
    client = ready_client()
    client.send(Query("SELECT 1"))
    client.receive_data(bytes(ROW_1))
    span = client.next_span()
    assert isinstance(span, Span)
    # A span read from a server cannot go back to a server.
    other = ready_client()
    with pytest.raises(LocalProtocolError, match="a client can't send RowDescription"):
        other.send_span(span)
    assert other.state is State.ERROR
    # Nor into a state where it is not legal.
    server = ready_server()
    with pytest.raises(LocalProtocolError, match="can't send RowDescription in state READY"):
        server.send_span(span)
    assert server.state is State.ERROR


@pytest.mark.parametrize(
    ("request_", "answer"), [(SSLRequest(), SSLResponse), (GSSENCRequest(), GSSENCResponse)]
)
def test_proxy_forwarding_yes_checks_for_injected_bytes(
    request_: Event, answer: type[SSLResponse]
) -> None:
    down = Connection(SERVER)
    down.receive_data(bytes(request_) + bytes(STARTUP))
    assert down.next_event() == request_
    yes = answer(True)
    with pytest.raises(RemoteProtocolError, match="unencrypted data"):
        down.send_span(Span(bytes(yes), [yes], [0]))
    assert down.state is State.ERROR
    # Without extra bytes the answer passes.
    down = Connection(SERVER)
    down.receive_data(bytes(request_))
    assert down.next_event() == request_
    assert down.send_span(Span(bytes(yes), [yes], [0])) == bytes(yes)
    assert down.state is State.STARTUP


def test_proxy_refuses_to_forward_a_client_message_to_a_client() -> None:
    server = ready_server()
    query = Query("SELECT 1")
    with pytest.raises(LocalProtocolError, match="a server can't send Query"):
        server.send_span(Span(bytes(query), [query], [0]))
    assert server.state is State.ERROR


def test_proxy_forwards_while_part_of_a_message_waits() -> None:
    # Unread bytes only matter after an encryption answer; an ordinary span passes.
    client = ready_client()
    client.receive_data(b"Z\x00\x00")
    query = Query("SELECT 1")
    assert client.send_span(Span(bytes(query), [query], [0])) == bytes(query)
    assert client.state is State.IN_QUERY


def test_command_tags_share_events_within_a_bound() -> None:
    from pgsansio.protocol import _readers

    read = _readers.BACKEND_READERS[b"C"]
    first = read(b"SELECT 1\0")
    assert first == CommandComplete("SELECT 1")
    assert read(b"SELECT 1\0") is first
    # Row counts make endless distinct tags: past the bound they are read anew.
    tags = [f"INSERT 0 {i}" for i in range(2 * _readers._CACHE_SIZE)]
    assert [read(t.encode() + b"\0") for t in tags] == [CommandComplete(t) for t in tags]
    assert 0 < len(_readers._TAGS) <= _readers._CACHE_SIZE
    with pytest.raises(LocalProtocolError, match="expected one string"):
        read(b"SELECT 1")


def test_row_descriptions_share_events_unless_large() -> None:
    from pgsansio.protocol import _readers

    read = _readers.BACKEND_READERS[b"T"]
    small = RowDescription([Field("abalance", 16397, 3, 23, 4, -1, 0)])
    body = bytes(small)[5:]
    assert read(body) == small
    assert read(body) is read(body)
    # A wide table's description is not kept: it is read anew each time.
    wide = RowDescription([Field(f"column_{i}") for i in range(60)])
    wide_body = bytes(wide)[5:]
    assert len(wide_body) > _readers._CACHE_MAX_BODY
    assert read(wide_body) == wide
    assert read(wide_body) is not read(wide_body)
