"""Every message of both directions: built, encoded, read back and compared.

Like h11's ``test_events.py`` and ``test_io.py``. Each case is an event and
its wire bytes, written out from the "Message Formats" section of the
PostgreSQL docs (type byte, Int32 length counting itself, body). The bytes are
read with the reader of the right direction, directly and through a
:class:`Connection` brought to a phase where the message is legal: fed whole,
byte by byte, with trailing bytes and as a span. Then the malformed bodies:
each must raise ``LocalProtocolError`` from the reader and
``RemoteProtocolError`` with SQLSTATE 08P01 through a connection.
"""

from __future__ import annotations

import copy
import pickle
import re
import struct
from collections.abc import Callable
from functools import partial

import pytest

import pgsansio.protocol as pg
from pgsansio.protocol import (
    CLIENT,
    NEED_DATA,
    PAUSED,
    PROTOCOL_3_0,
    PROTOCOL_3_2,
    SERVER,
    Authentication,
    AuthenticationCleartextPassword,
    AuthenticationGSS,
    AuthenticationGSSContinue,
    AuthenticationKerberosV5,
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
    MalformedMessage,
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
    ProtocolError,
    Query,
    ReadyForQuery,
    RemoteProtocolError,
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
from pgsansio.protocol._errors import as_remote
from pgsansio.protocol._readers import (
    BACKEND_READERS,
    FRONTEND_READERS,
    read_gss_response,
    read_password,
    read_sasl_initial,
    read_sasl_response,
    read_startup_packet,
)


def msg(code: bytes, body: bytes) -> bytes:
    """A typed message: type byte, Int32 length (itself included), body."""
    return code + struct.pack("!i", len(body) + 4) + body


KEY4 = b"\x0a\x0b\x0c\x0d"
KEY32 = bytes(range(32))
# RFC 7677's SCRAM-SHA-256 example, with the empty user name PostgreSQL sends.
CLIENT_FIRST = b"n,,n=,r=rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
# Three bytes: never a whole message or startup packet, whatever the phase.
TRAILING = b"\x00\x00\x00"


# --- connections brought to the phase where a message may arrive -----------------------


def server_at_startup() -> Connection:
    return Connection(SERVER)


def server_awaiting(request: Authentication) -> Connection:
    """A server that sent ``request`` and now waits for the client's ``p``."""
    conn = Connection(SERVER)
    conn.receive_data(bytes(StartupMessage({"user": "alice"})))
    assert conn.next_event() == StartupMessage({"user": "alice"})
    conn.send(request)
    return conn


def server_ready() -> Connection:
    conn = server_awaiting(AuthenticationOk())
    conn.send(ReadyForQuery("I"))
    assert conn.state is State.READY
    return conn


def client_negotiating(request: Event) -> Connection:
    conn = Connection(CLIENT)
    conn.send(request)
    return conn


def client_authenticating() -> Connection:
    # 3.2, so that BackendKeyData may carry a long key.
    conn = Connection(CLIENT)
    conn.send(StartupMessage({"user": "alice"}, PROTOCOL_3_2))
    return conn


def client_authenticated() -> Connection:
    conn = client_authenticating()
    conn.receive_data(bytes(AuthenticationOk()))
    assert conn.next_event() == AuthenticationOk()
    return conn


def client_in_query() -> Connection:
    conn = client_authenticated()
    conn.receive_data(bytes(ReadyForQuery("I")))
    assert conn.next_event() == ReadyForQuery("I")
    conn.send(Query("SELECT 1"))
    assert conn.state is State.IN_QUERY
    return conn


def client_copy_out() -> Connection:
    conn = client_in_query()
    conn.receive_data(bytes(CopyOutResponse()))
    assert conn.next_event() == CopyOutResponse()
    return conn


Setup = Callable[[], Connection]
ssl_negotiating = partial(client_negotiating, SSLRequest())
gss_negotiating = partial(client_negotiating, GSSENCRequest())
awaiting_password = partial(server_awaiting, AuthenticationCleartextPassword())
awaiting_md5 = partial(server_awaiting, AuthenticationMD5Password(b"\x01\x02\x03\x04"))
awaiting_sasl_initial = partial(server_awaiting, AuthenticationSASL(["SCRAM-SHA-256"]))
awaiting_sasl = partial(server_awaiting, AuthenticationSASLContinue(SERVER_FIRST))
awaiting_gss = partial(server_awaiting, AuthenticationGSS())
awaiting_gss_continue = partial(server_awaiting, AuthenticationGSSContinue(b"more"))
awaiting_sspi = partial(server_awaiting, AuthenticationSSPI())


# --- the cases: (connection reading it, event, wire bytes) ---------------------------------

FRONTEND_CASES: list[tuple[Setup, Event, bytes]] = [
    (
        server_at_startup,
        StartupMessage({"user": "alice", "database": "db"}),
        b"\x00\x00\x00\x20\x00\x03\x00\x00user\x00alice\x00database\x00db\x00\x00",
    ),
    (
        server_at_startup,
        StartupMessage([("user", "bob"), ("_pq_.test_option", "on")], PROTOCOL_3_2),
        b"\x00\x00\x00\x26\x00\x03\x00\x02user\x00bob\x00_pq_.test_option\x00on\x00\x00",
    ),
    (server_at_startup, StartupMessage({}), b"\x00\x00\x00\x09\x00\x03\x00\x00\x00"),
    (server_at_startup, SSLRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),
    (server_at_startup, GSSENCRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x30"),
    # Protocol 3.0: a 4-byte key.
    (
        server_at_startup,
        CancelRequest(1234, KEY4),
        b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x04\xd2" + KEY4,
    ),
    # Protocol 3.2: PostgreSQL 18 sends 32 bytes; libpq's packet is 44 long.
    (
        server_at_startup,
        CancelRequest(1234, KEY32),
        b"\x00\x00\x00\x2c\x04\xd2\x16\x2e\x00\x00\x04\xd2" + KEY32,
    ),
    # The longest key 3.2 allows.
    (
        server_at_startup,
        CancelRequest(7, b"k" * 256),
        b"\x00\x00\x01\x0c\x04\xd2\x16\x2e\x00\x00\x00\x07" + b"k" * 256,
    ),
    (awaiting_password, PasswordMessage("secret"), b"p\x00\x00\x00\x0bsecret\x00"),
    (
        awaiting_md5,
        PasswordMessage("md5a3556571e93b0d20722ba62be61e8c2d"),
        b"p\x00\x00\x00\x28md5a3556571e93b0d20722ba62be61e8c2d\x00",
    ),
    (
        awaiting_sasl_initial,
        SASLInitialResponse("SCRAM-SHA-256", CLIENT_FIRST),
        b"p\x00\x00\x00\x32SCRAM-SHA-256\x00\x00\x00\x00\x1c" + CLIENT_FIRST,
    ),
    # "-1 if there is no Initial Response".
    (
        awaiting_sasl_initial,
        SASLInitialResponse("SCRAM-SHA-256", None),
        b"p\x00\x00\x00\x16SCRAM-SHA-256\x00\xff\xff\xff\xff",
    ),
    (awaiting_sasl, SASLResponse(CLIENT_FINAL), msg(b"p", CLIENT_FINAL)),
    (awaiting_gss, GSSResponse(b"\x60\x82token"), b"p\x00\x00\x00\x0b\x60\x82token"),
    (awaiting_gss_continue, GSSResponse(b""), b"p\x00\x00\x00\x04"),
    (awaiting_sspi, GSSResponse(b"NTLMSSP\x00"), b"p\x00\x00\x00\x0cNTLMSSP\x00"),
    (server_ready, Query("SELECT 1"), b"Q\x00\x00\x00\x0dSELECT 1\x00"),
    (server_ready, Query(""), b"Q\x00\x00\x00\x05\x00"),
    # A LATIN1 client's bytes survive as surrogate escapes.
    (server_ready, Query("SELECT 'caf\udce9'"), b"Q\x00\x00\x00\x12SELECT 'caf\xe9'\x00"),
    (server_ready, Query("SELECT 'café'"), b"Q\x00\x00\x00\x13SELECT 'caf\xc3\xa9'\x00"),
    (
        server_ready,
        Parse("stmt", "SELECT $1", [23]),
        b"P\x00\x00\x00\x19stmt\x00SELECT $1\x00\x00\x01\x00\x00\x00\x17",
    ),
    (server_ready, Parse("", "SELECT 1"), b"P\x00\x00\x00\x10\x00SELECT 1\x00\x00\x00"),
    (
        server_ready,
        Bind("", "stmt", [1], [b"\x00\x00\x00\x2a", None], [0]),
        b"B\x00\x00\x00\x20\x00stmt\x00\x00\x01\x00\x01\x00\x02"
        b"\x00\x00\x00\x04\x00\x00\x00\x2a\xff\xff\xff\xff\x00\x01\x00\x00",
    ),
    (server_ready, Bind("", ""), b"B\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00"),
    (server_ready, Describe("S", "stmt"), b"D\x00\x00\x00\x0aSstmt\x00"),
    (server_ready, Describe("P"), b"D\x00\x00\x00\x06P\x00"),
    (server_ready, Close("S", "stmt"), b"C\x00\x00\x00\x0aSstmt\x00"),
    (server_ready, Close("P", "portal"), b"C\x00\x00\x00\x0cPportal\x00"),
    (server_ready, Execute(), b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"),
    (server_ready, Execute("c", 10), b"E\x00\x00\x00\x0ac\x00\x00\x00\x00\x0a"),
    (server_ready, Sync(), b"S\x00\x00\x00\x04"),
    (server_ready, Flush(), b"H\x00\x00\x00\x04"),
    (server_ready, Terminate(), b"X\x00\x00\x00\x04"),
    (
        server_ready,
        FunctionCall(952, [1], [b"\x00\x00\x00\x01"], 1),
        b"F\x00\x00\x00\x18\x00\x00\x03\xb8\x00\x01\x00\x01"
        b"\x00\x01\x00\x00\x00\x04\x00\x00\x00\x01\x00\x01",
    ),
    (
        server_ready,
        FunctionCall(952, args=[None]),
        b"F\x00\x00\x00\x12\x00\x00\x03\xb8\x00\x00\x00\x01\xff\xff\xff\xff\x00\x00",
    ),
    (server_ready, CopyData(b"1\tone\n"), b"d\x00\x00\x00\x0a1\tone\n"),
    (server_ready, CopyData(b""), b"d\x00\x00\x00\x04"),
    (server_ready, CopyDone(), b"c\x00\x00\x00\x04"),
    (server_ready, CopyFail("aborted"), b"f\x00\x00\x00\x0caborted\x00"),
]

BACKEND_CASES: list[tuple[Setup, Event, bytes]] = [
    (ssl_negotiating, SSLResponse(True), b"S"),
    (ssl_negotiating, SSLResponse(False), b"N"),
    (gss_negotiating, GSSENCResponse(True), b"G"),
    (gss_negotiating, GSSENCResponse(False), b"N"),
    (client_authenticating, AuthenticationOk(), b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
    (client_authenticating, AuthenticationKerberosV5(), b"R\x00\x00\x00\x08\x00\x00\x00\x02"),
    (
        client_authenticating,
        AuthenticationCleartextPassword(),
        b"R\x00\x00\x00\x08\x00\x00\x00\x03",
    ),
    (
        client_authenticating,
        AuthenticationMD5Password(b"\x01\x02\x03\x04"),
        b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x01\x02\x03\x04",
    ),
    (client_authenticating, AuthenticationGSS(), b"R\x00\x00\x00\x08\x00\x00\x00\x07"),
    (
        client_authenticating,
        AuthenticationGSSContinue(b"tok"),
        b"R\x00\x00\x00\x0b\x00\x00\x00\x08tok",
    ),
    (client_authenticating, AuthenticationSSPI(), b"R\x00\x00\x00\x08\x00\x00\x00\x09"),
    (
        client_authenticating,
        AuthenticationSASL(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]),
        b"R\x00\x00\x00\x2a\x00\x00\x00\x0aSCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00",
    ),
    (client_authenticating, AuthenticationSASL([]), b"R\x00\x00\x00\x09\x00\x00\x00\x0a\x00"),
    (
        client_authenticating,
        AuthenticationSASLContinue(SERVER_FIRST),
        msg(b"R", b"\x00\x00\x00\x0b" + SERVER_FIRST),
    ),
    (
        client_authenticating,
        AuthenticationSASLFinal(SERVER_FINAL),
        msg(b"R", b"\x00\x00\x00\x0c" + SERVER_FINAL),
    ),
    # PostgreSQL 15 answering 3.2 + _pq_.test_option (reference §1c).
    (
        client_authenticating,
        NegotiateProtocolVersion(PROTOCOL_3_0, ["_pq_.test_option"]),
        b"v\x00\x00\x00\x1d\x00\x03\x00\x00\x00\x00\x00\x01_pq_.test_option\x00",
    ),
    (
        client_authenticating,
        NegotiateProtocolVersion(PROTOCOL_3_2),
        b"v\x00\x00\x00\x0c\x00\x03\x00\x02\x00\x00\x00\x00",
    ),
    (
        client_authenticated,
        BackendKeyData(4242, KEY4),
        b"K\x00\x00\x00\x0c\x00\x00\x10\x92" + KEY4,
    ),
    (
        client_authenticated,
        BackendKeyData(4242, KEY32),
        b"K\x00\x00\x00\x28\x00\x00\x10\x92" + KEY32,
    ),
    (
        client_authenticated,
        ParameterStatus("client_encoding", "UTF8"),
        b"S\x00\x00\x00\x19client_encoding\x00UTF8\x00",
    ),
    (client_authenticated, ReadyForQuery("I"), b"Z\x00\x00\x00\x05I"),
    (client_authenticated, ReadyForQuery("T"), b"Z\x00\x00\x00\x05T"),
    (client_authenticated, ReadyForQuery("E"), b"Z\x00\x00\x00\x05E"),
    (
        client_in_query,
        RowDescription([Field("?column?", 0, 0, 23, 4, -1, 0)]),
        b"T\x00\x00\x00\x21\x00\x01?column?\x00"
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00",
    ),
    (client_in_query, RowDescription([]), b"T\x00\x00\x00\x06\x00\x00"),
    (
        client_in_query,
        DataRow([b"1", None, b""]),
        b"D\x00\x00\x00\x13\x00\x03\x00\x00\x00\x011\xff\xff\xff\xff\x00\x00\x00\x00",
    ),
    (client_in_query, DataRow([]), b"D\x00\x00\x00\x06\x00\x00"),
    (client_in_query, CommandComplete("SELECT 1"), b"C\x00\x00\x00\x0dSELECT 1\x00"),
    (client_in_query, CommandComplete("INSERT 0 1"), b"C\x00\x00\x00\x0fINSERT 0 1\x00"),
    (client_in_query, ParseComplete(), b"1\x00\x00\x00\x04"),
    (client_in_query, BindComplete(), b"2\x00\x00\x00\x04"),
    (client_in_query, CloseComplete(), b"3\x00\x00\x00\x04"),
    (client_in_query, NoData(), b"n\x00\x00\x00\x04"),
    (client_in_query, PortalSuspended(), b"s\x00\x00\x00\x04"),
    (client_in_query, EmptyQueryResponse(), b"I\x00\x00\x00\x04"),
    (
        client_in_query,
        ParameterDescription([23, 25]),
        b"t\x00\x00\x00\x0e\x00\x02\x00\x00\x00\x17\x00\x00\x00\x19",
    ),
    (
        client_in_query,
        FunctionCallResponse(b"\x00\x00\x00\x01"),
        b"V\x00\x00\x00\x0c\x00\x00\x00\x04\x00\x00\x00\x01",
    ),
    (client_in_query, FunctionCallResponse(None), b"V\x00\x00\x00\x08\xff\xff\xff\xff"),
    (
        client_in_query,
        NotificationResponse(4242, "chan", "hello"),
        b"A\x00\x00\x00\x13\x00\x00\x10\x92chan\x00hello\x00",
    ),
    (
        client_in_query,
        ErrorResponse.build("42601", "syntax error", P="1"),
        b"E\x00\x00\x00\x2bSERROR\x00VERROR\x00C42601\x00Msyntax error\x00P1\x00\x00",
    ),
    (client_in_query, ErrorResponse([]), b"E\x00\x00\x00\x05\x00"),
    (
        client_in_query,
        NoticeResponse.build("00000", "hello", "NOTICE"),
        b"N\x00\x00\x00\x23SNOTICE\x00VNOTICE\x00C00000\x00Mhello\x00\x00",
    ),
    (
        client_in_query,
        CopyInResponse(0, [0, 0]),
        b"G\x00\x00\x00\x0b\x00\x00\x02\x00\x00\x00\x00",
    ),
    (client_in_query, CopyOutResponse(1, [1]), b"H\x00\x00\x00\x09\x01\x00\x01\x00\x01"),
    # START_REPLICATION's answer: "body 3 B: format 0, 0 columns".
    (client_in_query, CopyBothResponse(), b"W\x00\x00\x00\x07\x00\x00\x00"),
    (client_copy_out, CopyData(b"1\tone\n"), b"d\x00\x00\x00\x0a1\tone\n"),
    (client_copy_out, CopyDone(), b"c\x00\x00\x00\x04"),
]

CASES = FRONTEND_CASES + BACKEND_CASES
ALL_EVENTS: list[Event] = [event for _, event, _ in CASES] + [ConnectionClosed()]


def _case_id(case: tuple[Setup, Event, bytes]) -> str:
    return f"{type(case[1]).__name__}-{len(case[2])}"


def _reader_of(setup: Setup, wire: bytes) -> Callable[[bytes], Event] | None:
    """The reader that decodes ``wire``'s body directly (None: unframed answer)."""
    if setup is server_at_startup:
        return read_startup_packet
    if wire[:1] == b"p":
        by_setup = {
            awaiting_password: read_password,
            awaiting_md5: read_password,
            awaiting_sasl_initial: read_sasl_initial,
            awaiting_sasl: read_sasl_response,
            awaiting_gss: read_gss_response,
            awaiting_gss_continue: read_gss_response,
            awaiting_sspi: read_gss_response,
        }
        return by_setup[setup]
    if len(wire) == 1:
        return None
    return (FRONTEND_READERS if setup().role is SERVER else BACKEND_READERS)[wire[:1]]


def _body(setup: Setup, wire: bytes) -> bytes:
    return wire[4:] if setup is server_at_startup else wire[5:]


def _next(conn: Connection) -> object:
    event = conn.next_event()
    assert event is not PAUSED or conn.state in (State.SSL_NEGOTIATION, State.GSS_NEGOTIATION)
    return event


# --- encoding and decoding ------------------------------------------------------------------


@pytest.mark.parametrize(("setup", "event", "wire"), CASES, ids=[_case_id(c) for c in CASES])
def test_encode(setup: Setup, event: Event, wire: bytes) -> None:
    assert bytes(event) == wire


# The one-byte answers to SSLRequest/GSSENCRequest have no body to read.
FRAMED = [c for c in CASES if len(c[2]) > 1]


@pytest.mark.parametrize(("setup", "event", "wire"), FRAMED, ids=[_case_id(c) for c in FRAMED])
def test_read_body_directly(setup: Setup, event: Event, wire: bytes) -> None:
    reader = _reader_of(setup, wire)
    assert reader is not None
    got = reader(_body(setup, wire))
    assert type(got) is type(event)
    assert got == event
    assert bytes(got) == wire


@pytest.mark.parametrize(("setup", "event", "wire"), CASES, ids=[_case_id(c) for c in CASES])
def test_read_through_connection(setup: Setup, event: Event, wire: bytes) -> None:
    # Whole.
    conn = setup()
    conn.receive_data(wire)
    got = conn.next_event()
    assert type(got) is type(event)
    assert got == event
    assert bytes(got) == wire
    assert _next(conn) in (NEED_DATA, PAUSED)
    assert conn.trailing_data == b""

    # Byte by byte: nothing until the last byte.
    conn = setup()
    for i in range(len(wire) - 1):
        conn.receive_data(wire[i : i + 1])
        assert conn.next_event() is NEED_DATA
    conn.receive_data(wire[-1:])
    got = conn.next_event()
    assert got == event
    assert bytes(got) == wire

    # Trailing bytes stay buffered (except after an accepted encryption
    # request, where they are an attack: see test_connection.py).
    if isinstance(event, (SSLResponse, GSSENCResponse)) and event.accepted:
        return
    conn = setup()
    conn.receive_data(bytearray(wire + TRAILING))
    assert conn.next_event() == event
    assert _next(conn) in (NEED_DATA, PAUSED)
    assert conn.trailing_data == TRAILING


@pytest.mark.parametrize(("setup", "event", "wire"), CASES, ids=[_case_id(c) for c in CASES])
def test_read_as_span(setup: Setup, event: Event, wire: bytes) -> None:
    conn = setup()
    conn.receive_data(wire)
    span = conn.next_span()
    assert isinstance(span, pg.Span)
    assert span.data == wire
    # Rows and COPY data from a server (inside a copy-out), COPY data from a client.
    bulk = (conn.role is CLIENT and type(event) in (DataRow, CopyData)) or (
        conn.role is SERVER and type(event) is CopyData
    )
    if bulk:
        assert (span.events, span.offsets, span.bulk) == ([], [], 1)
    else:
        assert (span.events, span.offsets, span.bulk) == ([event], [0], 0)


def test_frontend_and_backend_flags() -> None:
    for _, event, _ in FRONTEND_CASES:
        assert event.frontend, event
    for _, event, _ in BACKEND_CASES:
        assert event.backend, event
    # Only the COPY stream messages go both ways.
    both = {type(e) for e in ALL_EVENTS if e.frontend and e.backend}
    assert both == {CopyData, CopyDone}
    assert not ConnectionClosed().frontend
    assert not ConnectionClosed().backend
    assert bytes(ConnectionClosed()) == b""


def test_every_message_class_has_a_case() -> None:
    def concrete(cls: type[Event]) -> set[type[Event]]:
        out = set()
        for sub in cls.__subclasses__():
            if not sub.__name__.startswith("_"):
                out.add(sub)
            out |= concrete(sub)
        return out

    # MalformedMessage is read, never built from fields: see test_malformed_frontend_message.
    classes = concrete(Event) - {Authentication, MalformedMessage}
    assert classes == {type(e) for e in ALL_EVENTS}
    assert all(cls.__name__ in pg.__all__ for cls in classes)


# --- value semantics: equality, hashing, repr, immutability, pickling ---------------------


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: type(e).__name__)
def test_value_semantics(event: Event) -> None:
    twin = copy.copy(event)
    assert twin == event
    assert (twin != event) is False
    assert hash(twin) == hash(event)
    assert copy.deepcopy(event) == event
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(event, protocol))
        assert type(back) is type(event)
        assert back == event
        assert bytes(back) == bytes(event)
    # The repr is a constructor call with keyword arguments.
    assert repr(event).startswith(type(event).__name__ + "(")
    assert eval(repr(event), vars(pg)) == event
    assert event != object()
    assert event.__eq__(object()) is NotImplemented
    assert not hasattr(event, "__dict__")


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: type(e).__name__)
def test_immutable(event: Event) -> None:
    for name in (*event._fields, "extra"):
        with pytest.raises(AttributeError, match="immutable"):
            setattr(event, name, None)
        with pytest.raises(AttributeError, match="immutable"):
            delattr(event, name)


def test_equality_needs_the_same_class() -> None:
    pairs: list[tuple[Event, Event]] = [
        (Sync(), Flush()),
        (SSLRequest(), GSSENCRequest()),
        (SSLResponse(True), GSSENCResponse(True)),
        (SSLResponse(False), GSSENCResponse(False)),
        (Describe("S", "x"), Close("S", "x")),
        (SASLResponse(b"x"), GSSResponse(b"x")),
        (CopyInResponse(), CopyOutResponse()),
        (ErrorResponse([]), NoticeResponse([])),
        (AuthenticationGSSContinue(b"x"), AuthenticationSASLContinue(b"x")),
        (CopyData(b"x"), SASLResponse(b"x")),
    ]
    for a, b in pairs:
        assert a != b
        assert b != a
    assert Query("a") != Query("b")
    assert Query("a") == Query("a")
    assert len({Query("a"), Query("a"), Query("b")}) == 2
    assert DataRow([b"1", None]) != DataRow([b"1", b""])


def test_constructors_normalize() -> None:
    # Any iterable becomes a tuple; bytes-like becomes bytes.
    assert StartupMessage({"user": "u", "database": "d"}).parameters == (
        ("user", "u"),
        ("database", "d"),
    )
    assert StartupMessage(iter([("user", "u")])) == StartupMessage({"user": "u"})
    assert StartupMessage({"user": "u"}).protocol_version == PROTOCOL_3_0
    assert CancelRequest(1, bytearray(KEY4)).secret_key == KEY4
    assert type(CancelRequest(1, bytearray(KEY4)).secret_key) is bytes
    assert BackendKeyData(1, memoryview(KEY4)).secret_key == KEY4
    assert AuthenticationMD5Password(bytearray(b"salt")).salt == b"salt"
    assert AuthenticationSASL(iter(["A"])).mechanisms == ("A",)
    assert SASLInitialResponse("M", bytearray(b"x")).data == b"x"
    assert CopyData(bytearray(b"x")).data == b"x"
    assert FunctionCallResponse(bytearray(b"x")).result == b"x"
    assert Parse("", "q", iter([23])).param_types == (23,)
    assert Bind("", "", iter([0]), iter([None]), iter([1])) == Bind("", "", [0], [None], [1])
    assert DataRow(iter([b"a"])).values == (b"a",)
    assert ParameterDescription(iter([1])).type_oids == (1,)
    assert NegotiateProtocolVersion(1, iter(["x"])).unrecognized == ("x",)
    assert CopyInResponse(1, iter([1])).column_formats == (1,)
    assert ErrorResponse(iter([("C", "x")])).fields == (("C", "x"),)
    assert SSLResponse(1).accepted is True  # type: ignore[arg-type]
    assert GSSENCResponse(0).accepted is False  # type: ignore[arg-type]
    # RowDescription takes Fields or plain 7-tuples.
    row = RowDescription([("a", 1, 2, 3, 4, 5, 6)])
    assert row.fields == (Field("a", 1, 2, 3, 4, 5, 6),)
    assert type(row.fields[0]) is Field
    assert Describe("P").name == ""
    assert Execute() == Execute("", 0)
    assert NotificationResponse(1, "c").payload == ""


def test_field_defaults() -> None:
    # A text column of an unknown table, as a proxy describing its own result.
    assert Field("x") == Field("x", 0, 0, 25, -1, -1, 0)


def test_startup_message_accessors() -> None:
    # Duplicates and order are kept so that the packet re-encodes byte for byte.
    msg_ = StartupMessage([("user", "a"), ("options", "-c x=1"), ("user", "b")])
    assert msg_.get("user") == "a"
    assert msg_.get("database") is None
    assert msg_.get("database", "a") == "a"
    assert msg_.params == {"user": "b", "options": "-c x=1"}
    assert read_startup_packet(bytes(msg_)[4:]) == msg_


def test_report_accessors() -> None:
    err = ErrorResponse.build("57P01", "terminating connection", "FATAL", D="detail", H="hint")
    assert err.fields == (
        ("S", "FATAL"),
        ("V", "FATAL"),
        ("C", "57P01"),
        ("M", "terminating connection"),
        ("D", "detail"),
        ("H", "hint"),
    )
    assert err.sqlstate == "57P01"
    assert err.message == "terminating connection"
    assert err.severity == "FATAL"
    assert err.get("H") == "hint"
    assert err.get("W") is None
    assert err.get("W", "-") == "-"
    assert type(NoticeResponse.build("01000", "w")) is NoticeResponse
    # Before 9.6 there is no V, and S may be localized: it is still the answer.
    old = ErrorResponse([("S", "FEHLER"), ("C", "42P01")])
    assert old.severity == "FEHLER"
    # An ErrorResponse with no C field (PgBouncer CVE-2026-6666) reads fine.
    empty = ErrorResponse([])
    assert (empty.sqlstate, empty.message, empty.severity) == (None, None, None)
    # Unknown field codes are kept ("ignore unknown codes" is the reader's job).
    odd = BACKEND_READERS[b"E"](b"Zzz\x00\xe9x\x00\x00")
    assert odd == ErrorResponse([("Z", "zz"), ("é", "x")])
    assert bytes(odd) == msg(b"E", b"Zzz\x00\xe9x\x00\x00")


def test_event_subclass_defaults() -> None:
    # The base class's contract: a type byte, fields from __slots__, an
    # empty body unless _body says otherwise.
    class Ping(Event):
        __slots__ = ()
        type_code = b"!"

    class Pong(Ping):
        __slots__ = ("n",)

        def __init__(self, n: int) -> None:
            object.__setattr__(self, "n", n)

    assert bytes(Ping()) == b"!\x00\x00\x00\x04"
    assert repr(Ping()) == "Ping()"
    assert Ping() == Ping()
    assert Pong._fields == ("n",)
    assert repr(Pong(1)) == "Pong(n=1)"
    assert Pong(1) != Ping()


def test_empty_messages_share_an_encoding() -> None:
    assert bytes(Sync()) is bytes(Sync())
    # and readers hand out one instance per empty message
    assert FRONTEND_READERS[b"S"](b"") is FRONTEND_READERS[b"S"](b"")
    assert BACKEND_READERS[b"Z"](b"I") is BACKEND_READERS[b"Z"](b"I")


@pytest.mark.parametrize("n", [32_767, 32_768, 40_000, 65_535])
def test_counts_are_unsigned_16_bit(n: int) -> None:
    """PostgreSQL reads every Int16 count (parameters, values, formats, columns) with
    pq_getmsgint(msg, 2), unsigned: up to 65,535, both ways, through our readers."""
    events: list[Event] = [
        Parse("s", "q", [23] * n),
        Bind("", "s", [1] * n, [b"1"] * n, [0] * n),
        FunctionCall(1, [0] * n, [None] * n, 0),
    ]
    for event in events:
        wire = bytes(event)
        assert FRONTEND_READERS[wire[:1]](wire[5:]) == event
    backend: list[Event] = [
        ParameterDescription([23] * n),
        DataRow([b"x"] * n),
        RowDescription([Field(f"c{i}") for i in range(n)]),
        CopyInResponse(0, [0] * n),
    ]
    for event in backend:
        wire = bytes(event)
        assert wire[5:7] == n.to_bytes(2, "big") or wire[6:8] == n.to_bytes(2, "big")
        assert BACKEND_READERS[wire[:1]](wire[5:]) == event


# --- what cannot be encoded -----------------------------------------------------------------

UNENCODABLE: list[tuple[Event, str]] = [
    (Query("a\0b"), "NUL"),
    (Query("\ud800"), "surrogates"),
    (Parse("s\0", "q"), "NUL"),
    (Parse("", "q", [-1]), "can't encode Parse"),
    (Parse("", "q", [0] * 65536), "can't encode Parse"),
    (Bind("", "", [70000]), "can't encode Bind"),
    (Bind("", "", result_formats=[-32769]), "can't encode Bind"),
    (Execute("", 2**31), "can't encode Execute"),
    (Describe("X"), "kind must be"),
    (Describe(""), "kind must be"),
    (Close("SP"), "kind must be"),
    (FunctionCall(-1), "can't encode FunctionCall"),
    (FunctionCall(1, result_format=2**15), "can't encode FunctionCall"),
    (CopyFail("a\0"), "NUL"),
    (StartupMessage({"": "x"}), "must not be empty"),
    (StartupMessage({"user": "a\0b"}), "NUL"),
    (StartupMessage({"user": "u"}, -1), "can't encode StartupMessage"),
    (CancelRequest(1, b"123"), "4 to 256"),
    (CancelRequest(1, b"x" * 257), "4 to 256"),
    (CancelRequest(-1, KEY4), "can't encode CancelRequest"),
    (BackendKeyData(1, b"123"), "4 to 256"),
    (BackendKeyData(1, b"x" * 257), "4 to 256"),
    (BackendKeyData(2**32, KEY4), "can't encode BackendKeyData"),
    (AuthenticationMD5Password(b"123"), "4 bytes"),
    (AuthenticationMD5Password(b"12345"), "4 bytes"),
    (AuthenticationSASL([""]), "must not be empty"),
    (AuthenticationSASL(["a\0"]), "NUL"),
    (PasswordMessage("pw\0"), "NUL"),
    (SASLInitialResponse("M\0", None), "NUL"),
    (NegotiateProtocolVersion(-1), "can't encode NegotiateProtocolVersion"),
    (NegotiateProtocolVersion(PROTOCOL_3_0, ["a\0"]), "NUL"),
    (ParameterStatus("a", "\0"), "NUL"),
    (ReadyForQuery("X"), "invalid transaction status"),
    (ReadyForQuery(""), "invalid transaction status"),
    (RowDescription([Field("a", table_oid=-1)]), "can't encode RowDescription"),
    (RowDescription([Field("a\0")]), "NUL"),
    (DataRow([b""] * 65536), "can't encode DataRow"),
    (ParameterDescription([2**32]), "can't encode ParameterDescription"),
    (NotificationResponse(-1, "c"), "can't encode NotificationResponse"),
    (CommandComplete("\0"), "NUL"),
    (ErrorResponse([("", "x")]), "single non-NUL"),
    (ErrorResponse([("CC", "x")]), "single non-NUL"),
    (ErrorResponse([("\0", "x")]), "single non-NUL"),
    (NoticeResponse([("€", "x")]), "can't encode NoticeResponse"),
    (ErrorResponse([("M", "\udfff")]), "surrogates"),
    (CopyInResponse(256), "one byte"),
    (CopyOutResponse(-1), "one byte"),
    (CopyBothResponse(0, [2**15]), "can't encode CopyBothResponse"),
]


@pytest.mark.parametrize(("event", "what"), UNENCODABLE, ids=lambda x: type(x).__name__)
def test_unencodable(event: Event, what: str) -> None:
    with pytest.raises(LocalProtocolError, match=re.escape(what)) as excinfo:
        bytes(event)
    assert excinfo.value.sqlstate == "08P01"
    assert excinfo.value.__cause__ is None


def test_unencodable_through_send_is_an_error_state() -> None:
    conn = server_ready()
    with pytest.raises(LocalProtocolError):
        conn.send(ReadyForQuery("X"))
    assert conn.state is State.ERROR
    conn = client_in_query()
    with pytest.raises(LocalProtocolError):
        conn.send(Query("\0"))
    assert conn.state is State.ERROR


# --- malformed bodies -----------------------------------------------------------------------


def _check_malformed(
    conn: Connection, wire: bytes, what: str, sqlstate: str = "08P01", *, eof: bool = False
) -> None:
    conn.receive_data(wire)
    if eof:
        conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match=re.escape(what)) as excinfo:
        conn.next_event()
    assert excinfo.value.sqlstate == sqlstate
    assert conn.state is State.ERROR
    # After the error nothing more happens.
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    with pytest.raises(RemoteProtocolError):
        conn.next_span()
    with pytest.raises(LocalProtocolError):
        conn.send(ErrorResponse.build(sqlstate, "bye", "FATAL"))


# (code, body, message) read by a server in the query phase.
FRONTEND_MALFORMED = [
    (b"Q", b"SELECT 1", "expected one string"),
    (b"Q", b"", "expected one string"),
    (b"Q", b"a\0b\0", "expected one string"),
    (b"Q", b"\0\0", "expected one string"),
    (b"f", b"oops", "expected one string"),
    (b"P", b"", "string without NUL"),
    (b"P", b"s\0", "string without NUL"),
    (b"P", b"s\0q\0", "too short"),
    (b"P", b"s\0q\0\x00", "too short"),
    (b"P", b"s\0q\0\xff\xff", "too short"),  # 65,535 types: unsigned
    (b"P", b"s\0q\0\x00\x01\x00\x00", "too short"),
    (b"P", b"s\0q\0\x00\x00x", "1 unexpected trailing bytes"),
    (b"B", b"\0s\0\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00", "negative value length -2"),
    (b"B", b"\0s\0\x00\x00\x00\x01\x00\x00\x00\x09ab\x00\x00", "too short"),
    (b"B", b"\0s\0\x00\x00\x00\x01\x00\x00", "too short"),
    (b"B", b"\0s\0\x80\x00", "too short"),
    (b"B", b"\0s\0\x00\x00\x00\x00\x00\x00ab", "2 unexpected trailing bytes"),
    (b"B", b"\0s\0\x00\x00\x00\x00", "too short"),
    (b"B", b"portal", "string without NUL"),
    (b"B", b"\0statement", "string without NUL"),
    (b"B", b"\0s\0\x00\x00", "too short"),  # no parameter count
    (b"D", b"X\0", "kind must be S or P, not b'X'"),
    (b"D", b"", "kind must be S or P, not b''"),
    (b"D", b"S", "string without NUL"),
    (b"D", b"Sname\0x", "1 unexpected trailing bytes"),
    (b"C", b"s\0", "kind must be S or P"),
    (b"E", b"\0\x00\x00", "too short"),
    (b"E", b"portal", "string without NUL"),
    (b"E", b"\0\0\0\0\0x", "1 unexpected trailing bytes"),
    (b"F", b"\x00\x00", "too short"),
    (b"F", b"\x00\x00\x03\xb8\x00\x00\x00\x00\x00\x00\x00", "1 unexpected trailing bytes"),
    (b"F", b"\x00\x00\x03\xb8\x00\x00\xff\xfe", "too short"),
]


@pytest.mark.parametrize(("code", "body", "what"), FRONTEND_MALFORMED)
def test_malformed_frontend_message(code: bytes, body: bytes, what: str) -> None:
    with pytest.raises(LocalProtocolError, match=re.escape(what)):
        FRONTEND_READERS[code](body)
    if code not in b"PBDEC":
        _check_malformed(server_ready(), msg(code, body), what)
        return
    # An extended-query message: PostgreSQL answers ERROR and skips to Sync, so the
    # connection reads it as MalformedMessage and goes on (by event and by span).
    for how in ("event", "span"):
        conn = server_ready()
        conn.receive_data(msg(code, body) + bytes(Sync()))
        if how == "event":
            got = [conn.next_event(), conn.next_event()]
        else:
            span = conn.next_span()
            assert isinstance(span, Span)
            assert span.data == msg(code, body) + bytes(Sync())
            got = list(span.events)
        bad = got[0]
        assert isinstance(bad, MalformedMessage) and got[1] == Sync()
        assert bad.code == code and bad.body == body and what in bad.reason
        assert bytes(bad) == msg(code, body)
        conn.send(ErrorResponse.build("08P01", bad.reason))
        conn.send(ReadyForQuery("I"))
        assert conn.idle


@pytest.mark.parametrize("code", [b"S", b"H", b"X", b"c"])
def test_empty_messages_with_a_body(code: bytes) -> None:
    with pytest.raises(LocalProtocolError, match="it has no body"):
        FRONTEND_READERS[code](b"x")
    # A connection refuses the length before reading the body.
    _check_malformed(server_ready(), msg(code, b"x"), "invalid length 5")


@pytest.mark.parametrize("code", [b"1", b"2", b"3", b"n", b"s", b"I", b"c"])
def test_empty_backend_messages_with_a_body(code: bytes) -> None:
    with pytest.raises(LocalProtocolError, match="it has no body"):
        BACKEND_READERS[code](b"x")
    _check_malformed(client_copy_out(), msg(code, b"x"), "invalid length 5")


# (setup, code, body, message) read by a client.
BACKEND_MALFORMED: list[tuple[Setup, bytes, bytes, str]] = [
    (client_authenticating, b"R", b"\x00\x00", "too short"),
    (client_authenticating, b"R", b"\x00\x00\x00\x06", "unknown authentication request 6"),
    (client_authenticating, b"R", b"\x00\x00\x00\x04", "unknown authentication request 4"),
    (client_authenticating, b"R", b"\xff\xff\xff\xff", "unknown authentication request -1"),
    (client_authenticating, b"R", b"\x00\x00\x00\x05abc", "the MD5 salt is 4 bytes"),
    (client_authenticating, b"R", b"\x00\x00\x00\x05abcde", "the MD5 salt is 4 bytes"),
    (client_authenticating, b"R", b"\x00\x00\x00\x00x", "1 unexpected trailing bytes"),
    (client_authenticating, b"R", b"\x00\x00\x00\x0aSCRAM\x00", "string without NUL"),
    (client_authenticating, b"R", b"\x00\x00\x00\x0aA\x00\x00x", "1 unexpected trailing"),
    (client_authenticating, b"v", b"\x00\x03\x00\x00\xff\xff\xff\xff", "negative option count"),
    (client_authenticating, b"v", b"\x00\x03\x00\x00\x00\x00\x00\x02a\x00", "without NUL"),
    (client_authenticating, b"v", b"\x00\x03\x00\x00\x00\x00\x00\x00x", "trailing"),
    (client_authenticating, b"v", b"\x00\x03\x00\x00", "too short"),
    (client_authenticated, b"S", b"name\0", "string without NUL"),
    (client_authenticated, b"S", b"name\0value\0x", "1 unexpected trailing bytes"),
    (client_authenticated, b"Z", b"X", "status b'X' is not I, T or E"),
    (client_authenticated, b"Z", b"\0", "is not I, T or E"),
    (client_in_query, b"T", b"\xff\xff", "string without NUL"),
    (client_in_query, b"T", b"\x00\x01a\x00\x00\x00", "too short"),
    (client_in_query, b"T", b"\x00\x01a", "string without NUL"),
    (client_in_query, b"T", b"\x00\x00x", "1 unexpected trailing bytes"),
    (client_in_query, b"D", b"", "too short"),
    (client_in_query, b"D", b"\x00", "too short"),
    (client_in_query, b"D", b"\x00\x01\xff\xff\xff\xfe", "negative value length -2"),
    (client_in_query, b"D", b"\x00\x02\x00\x00\x00\x01a", "too short"),
    (client_in_query, b"D", b"\x00\x01\x00\x00\x00\x05abc", "too short"),
    (client_in_query, b"D", b"\xff\xff", "too short"),
    (client_in_query, b"D", b"\x00\x00x", "column count does not match"),
    (client_in_query, b"D", b"\x00\x01\x00\x00\x00\x01ab", "column count does not match"),
    (client_in_query, b"C", b"SELECT 1", "expected one string"),
    (client_in_query, b"t", b"\x80\x00", "too short"),
    (client_in_query, b"t", b"\x00\x01\x00\x00", "too short"),
    (client_in_query, b"V", b"\xff\xff\xff\xfe", "negative value length -2"),
    (client_in_query, b"V", b"\xff\xff\xff\xffx", "1 unexpected trailing bytes"),
    (client_in_query, b"V", b"\x00\x00\x00\x02x", "too short"),
    (client_in_query, b"A", b"\x00\x00\x00\x01chan\0", "string without NUL"),
    (client_in_query, b"A", b"\x00\x00", "too short"),
    (client_in_query, b"E", b"", "too short"),
    (client_in_query, b"E", b"SERROR\0", "too short"),
    (client_in_query, b"E", b"SERROR", "string without NUL"),
    (client_in_query, b"E", b"\0x", "1 unexpected trailing bytes"),
    (client_in_query, b"N", b"Mhi\0", "too short"),
    (client_in_query, b"G", b"", "too short"),
    (client_in_query, b"G", b"\x00\xff\xff", "too short"),
    (client_in_query, b"H", b"\x00\x00\x01", "too short"),
    (client_in_query, b"W", b"\x00\x00\x00x", "1 unexpected trailing bytes"),
]


@pytest.mark.parametrize(
    ("setup", "code", "body", "what"),
    BACKEND_MALFORMED,
    ids=[f"{c[1].decode()}-{i}" for i, c in enumerate(BACKEND_MALFORMED)],
)
def test_malformed_backend_message(setup: Setup, code: bytes, body: bytes, what: str) -> None:
    with pytest.raises(LocalProtocolError, match=re.escape(what)):
        BACKEND_READERS[code](body)
    _check_malformed(setup(), msg(code, body), what)


def test_malformed_backend_key_data() -> None:
    # Key length 3 or 257: refused by the reader, and by a connection at the
    # length word already.
    for key in (b"abc", b"x" * 257):
        body = b"\x00\x00\x00\x01" + key
        with pytest.raises(LocalProtocolError, match="the key is 4 to 256 bytes"):
            BACKEND_READERS[b"K"](body)
        _check_malformed(client_authenticated(), msg(b"K", body), "invalid length")
    assert BACKEND_READERS[b"K"](b"\x00\x00\x00\x01" + b"x" * 256) == BackendKeyData(1, b"x" * 256)


def test_malformed_ready_for_query_length() -> None:
    _check_malformed(client_authenticated(), msg(b"Z", b"II"), "invalid length 6")
    _check_malformed(client_authenticated(), msg(b"Z", b""), "invalid length 4")
    with pytest.raises(LocalProtocolError, match="is not I, T or E"):
        BACKEND_READERS[b"Z"](b"II")


# (awaiting setup, body, message): the ``p`` family.
P_MALFORMED: list[tuple[Setup, bytes, str]] = [
    (awaiting_password, b"secret", "malformed PasswordMessage message: expected one string"),
    (awaiting_password, b"a\0b\0", "expected one string"),
    (awaiting_md5, b"", "expected one string"),
    (awaiting_sasl_initial, b"SCRAM-SHA-256", "string without NUL"),
    (awaiting_sasl_initial, b"SCRAM-SHA-256\0\xff\xff\xff\xfe", "negative value length -2"),
    (awaiting_sasl_initial, b"SCRAM-SHA-256\0\x00\x00\x00\x05n,,", "too short"),
    (awaiting_sasl_initial, b"SCRAM-SHA-256\0\xff\xff\xff\xffx", "1 unexpected trailing"),
    (awaiting_sasl_initial, b"SCRAM-SHA-256\0\x00\x00", "too short"),
]


@pytest.mark.parametrize(("setup", "body", "what"), P_MALFORMED)
def test_malformed_password_family(setup: Setup, body: bytes, what: str) -> None:
    reader = _reader_of(setup, b"p")
    assert reader is not None
    with pytest.raises(LocalProtocolError, match=re.escape(what)):
        reader(body)
    _check_malformed(setup(), msg(b"p", body), what)


def test_password_message_too_long() -> None:
    # PG_MAX_AUTH_TOKEN_LENGTH: 65535 bytes of body.
    conn = awaiting_gss()
    conn.receive_data(msg(b"p", b"x" * 65535))
    assert conn.next_event() == GSSResponse(b"x" * 65535)
    _check_malformed(awaiting_gss(), msg(b"p", b"x" * 65536), "invalid length 65540")


def _packet(body: bytes) -> bytes:
    return struct.pack("!i", len(body) + 4) + body


# (packet, message, SQLSTATE) read by a server at startup.
STARTUP_MALFORMED = [
    (_packet(b"\x04\xd2\x16\x2fxxxx"), "4 unexpected trailing bytes", "08P01"),
    (_packet(b"\x04\xd2\x16\x30\x00"), "1 unexpected trailing bytes", "08P01"),
    (_packet(b"\x04\xd2\x16\x2e\x00\x00\x00\x01abc"), "the cancel key is 4 to 256 bytes", "08P01"),
    (_packet(b"\x04\xd2\x16\x2e\x00\x00\x00\x01" + b"x" * 257), "4 to 256 bytes", "08P01"),
    (_packet(b"\x04\xd2\x16\x2e\x00\x00"), "malformed CancelRequest message: too short", "08P01"),
    (_packet(b"\x00\x03\x00\x00"), "malformed StartupMessage message: string without", "08P01"),
    (_packet(b"\x00\x03\x00\x00user\0"), "string without NUL", "08P01"),
    (_packet(b"\x00\x03\x00\x00user\0u\0"), "string without NUL", "08P01"),
    (_packet(b"\x00\x03\x00\x00user\0u\0\0x"), "1 unexpected trailing bytes", "08P01"),
    (_packet(b"\x00\x03\x00\x00\0value\0\0"), "unexpected trailing bytes", "08P01"),
    # Protocol 2.0 and a future 4.0: feature_not_supported, as PostgreSQL says.
    (_packet(b"\x00\x02\x00\x00user\0u\0\0"), "unsupported frontend protocol 2.0", "0A000"),
    (_packet(b"\x00\x04\x00\x00user\0u\0\0"), "unsupported frontend protocol 4.0", "0A000"),
    (_packet(b"\x04\xd2\x16\x31"), "unsupported frontend protocol 1234.5681", "0A000"),
    # Lengths: below 8 is a violation, above the limit a program limit.
    (b"\x00\x00\x00\x07\x00\x03\x00", "invalid startup packet length 7", "08P01"),
    (b"\x00\x00\x00\x00", "invalid startup packet length 0", "08P01"),
    (b"\xff\xff\xff\xff", "invalid startup packet length -1", "08P01"),
    (b"\x00\x00\x27\x11", "invalid startup packet length 10001", "54000"),
    # A direct-TLS ClientHello (sslnegotiation=direct): record type 0x16.
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "received a TLS handshake", "08P01"),
]


@pytest.mark.parametrize(("wire", "what", "sqlstate"), STARTUP_MALFORMED)
def test_malformed_startup_packet(wire: bytes, what: str, sqlstate: str) -> None:
    if len(wire) >= 8 and wire[0] != 0x16 and struct.unpack("!i", wire[:4])[0] == len(wire):
        with pytest.raises(LocalProtocolError, match=re.escape(what)) as excinfo:
            read_startup_packet(wire[4:])
        assert excinfo.value.sqlstate == sqlstate
    _check_malformed(Connection(SERVER), wire, what, sqlstate)


def test_malformed_startup_packet_read_byte_by_byte() -> None:
    # The same verdict when the bytes trickle in.
    conn = Connection(SERVER)
    wire = _packet(b"\x00\x02\x00\x00user\0u\0\0")
    for i in range(len(wire) - 1):
        conn.receive_data(wire[i : i + 1])
        assert conn.next_event() is NEED_DATA
    _check_malformed(conn, wire[-1:], "unsupported frontend protocol 2.0", "0A000")


def test_startup_packet_of_exactly_the_limit() -> None:
    conn = Connection(SERVER, max_startup_size=40)
    packet = bytes(StartupMessage({"user": "x" * 25}))
    assert len(packet) == 40
    conn.receive_data(packet)
    assert conn.next_event() == StartupMessage({"user": "x" * 25})
    conn = Connection(SERVER, max_startup_size=39)
    _check_malformed(conn, packet, "invalid startup packet length 40", "54000")


# --- errors ---------------------------------------------------------------------------------


def test_protocol_error_classes() -> None:
    with pytest.raises(TypeError):
        ProtocolError("abstract")
    local = LocalProtocolError("no")
    assert isinstance(local, ProtocolError)
    assert str(local) == "no"
    assert local.sqlstate == "08P01"
    assert LocalProtocolError("big", "54000").sqlstate == "54000"
    remote = RemoteProtocolError("they did it", "0A000")
    assert isinstance(remote, ProtocolError)
    assert remote.sqlstate == "0A000"
    # The receive path converts a local error in place, keeping its details.
    exc = LocalProtocolError("bad", "0A000")
    converted = as_remote(exc)
    assert converted is exc
    assert type(converted) is RemoteProtocolError
    assert (str(converted), converted.sqlstate) == ("bad", "0A000")
