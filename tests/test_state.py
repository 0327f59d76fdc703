"""ConversationState on its own, as h11's ``test_state.py`` tests ConnectionState.

The state does not know which side it serves: it is fed every frontend and
backend event in the order one side sees them. These tests feed it directly,
without bytes: the startup tables, the authentication answers, and the
outstanding-request queue a pooler relies on.
"""

from __future__ import annotations

import pytest

from pgsansio.protocol import (
    PROTOCOL_3_0,
    PROTOCOL_3_2,
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
    RowDescription,
    SASLInitialResponse,
    SASLResponse,
    SSLRequest,
    SSLResponse,
    StartupMessage,
    State,
    Sync,
    Terminate,
)
from pgsansio.protocol._state import ConversationState

STARTUP = StartupMessage({"user": "alice"})
ERROR = ErrorResponse.build("42601", "syntax error")
FATAL = ErrorResponse.build("28P01", "password authentication failed", "FATAL")
NOTICE = NoticeResponse.build("01000", "careful", "WARNING")
PARAM = ParameterStatus("application_name", "psql")
NOTIFY = NotificationResponse(42, "chan", "payload")


def authenticating(version: int = PROTOCOL_3_0) -> ConversationState:
    s = ConversationState()
    s.frontend(StartupMessage({"user": "alice"}, version))
    assert s.state is State.AUTHENTICATING
    return s


def authenticated(version: int = PROTOCOL_3_0) -> ConversationState:
    s = authenticating(version)
    s.backend(AuthenticationOk())
    assert s.state is State.AUTHENTICATED
    return s


def ready() -> ConversationState:
    s = authenticated()
    s.backend(ReadyForQuery("I"))
    assert s.state is State.READY
    return s


def refuses(s: ConversationState, who: str, event: Event) -> None:
    feed = s.frontend if who == "client" else s.backend
    with pytest.raises(LocalProtocolError, match=f"the {who} can't send {type(event).__name__}"):
        feed(event)


def test_initial_state() -> None:
    s = ConversationState()
    assert s.state is State.STARTUP
    assert s.outstanding == 0
    assert s.transaction_status == "I"
    assert s.protocol_version == PROTOCOL_3_0
    assert s.awaiting is None
    assert not s.frontend_copy_open
    assert not s.frontend_closed
    assert not s.backend_closed


# --- startup: the transition tables ------------------------------------------------------------


def test_startup_packets() -> None:
    s = ConversationState()
    s.frontend(SSLRequest())
    assert s.state is State.SSL_NEGOTIATION
    s.backend(SSLResponse(False))
    assert s.state is State.STARTUP
    # libpq tries GSS encryption first, then SSL, on the same connection.
    s.frontend(GSSENCRequest())
    assert s.state is State.GSS_NEGOTIATION
    s.backend(GSSENCResponse(False))
    assert s.state is State.STARTUP
    s.frontend(SSLRequest())
    s.backend(SSLResponse(True))
    assert s.state is State.STARTUP
    s.frontend(StartupMessage({"user": "alice"}, PROTOCOL_3_2))
    assert s.state is State.AUTHENTICATING
    assert s.protocol_version == PROTOCOL_3_2

    s = ConversationState()
    s.frontend(CancelRequest(1, b"abcd"))
    assert s.state is State.CLOSED
    refuses(s, "client", STARTUP)
    refuses(s, "server", AuthenticationOk())


@pytest.mark.parametrize("request_", [SSLRequest(), GSSENCRequest()])
def test_old_server_answers_encryption_request_with_error(request_: Event) -> None:
    # "the frontend might receive an ErrorResponse in response to SSLRequest
    # ... from a server that predates the addition of SSL support".
    s = ConversationState()
    s.frontend(request_)
    s.backend(FATAL)
    assert s.state is State.CLOSED


def test_startup_refusals() -> None:
    s = ConversationState()
    for event in [Query("x"), Sync(), PasswordMessage("pw"), SSLResponse(True), Terminate()]:
        refuses(s, "client", event)
    for event in [AuthenticationOk(), ReadyForQuery("I"), SSLResponse(True), ERROR, NOTICE]:
        refuses(s, "server", event)
    s.frontend(SSLRequest())
    # The wrong answer kind, or anything from the client before the answer.
    refuses(s, "server", GSSENCResponse(True))
    refuses(s, "server", AuthenticationOk())
    refuses(s, "client", STARTUP)
    s = ConversationState()
    s.frontend(GSSENCRequest())
    refuses(s, "server", SSLResponse(False))
    s = authenticating()
    refuses(s, "client", STARTUP)
    refuses(s, "client", SSLRequest())
    refuses(s, "client", Query("x"))
    refuses(s, "server", ReadyForQuery("I"))
    refuses(s, "server", BackendKeyData(1, b"abcd"))
    refuses(s, "server", PARAM)
    refuses(s, "server", NOTIFY)
    s = authenticated()
    refuses(s, "server", AuthenticationOk())
    refuses(s, "server", AuthenticationSASL(["SCRAM-SHA-256"]))
    refuses(s, "server", CommandComplete("SELECT 1"))
    refuses(s, "server", NegotiateProtocolVersion(PROTOCOL_3_0))
    refuses(s, "client", PasswordMessage("late"))
    refuses(s, "client", STARTUP)


def test_violation_message_names_the_state() -> None:
    s = authenticating()
    with pytest.raises(LocalProtocolError) as excinfo:
        s.frontend(Query("SELECT 1"))
    assert str(excinfo.value) == "the client can't send Query in state AUTHENTICATING"
    assert excinfo.value.sqlstate == "08P01"


# --- authentication -----------------------------------------------------------------------------

AUTH_ANSWERS: list[tuple[Event, Event]] = [
    (AuthenticationCleartextPassword(), PasswordMessage("secret")),
    (AuthenticationMD5Password(b"salt"), PasswordMessage("md5" + "0" * 32)),
    (AuthenticationSASL(["SCRAM-SHA-256"]), SASLInitialResponse("SCRAM-SHA-256", b"n,,")),
    (AuthenticationSASLContinue(b"r=x"), SASLResponse(b"c=biws")),
    (AuthenticationGSS(), GSSResponse(b"tok")),
    (AuthenticationGSSContinue(b"more"), GSSResponse(b"tok")),
    (AuthenticationSSPI(), GSSResponse(b"tok")),
]


@pytest.mark.parametrize(("request_", "answer"), AUTH_ANSWERS)
def test_each_authentication_request_names_its_answer(request_: Event, answer: Event) -> None:
    s = authenticating()
    assert s.awaiting is None
    refuses(s, "client", answer)  # nobody asked yet
    s = authenticating()
    s.backend(request_)
    assert s.awaiting is type(answer)
    assert s.state is State.AUTHENTICATING
    s.frontend(answer)
    assert s.awaiting is None
    # One answer per request.
    refuses(s, "client", answer)


@pytest.mark.parametrize(
    "wrong",
    [PasswordMessage("pw"), SASLResponse(b"x"), GSSResponse(b"x")],
)
def test_the_wrong_kind_of_answer(wrong: Event) -> None:
    s = authenticating()
    s.backend(AuthenticationSASL(["SCRAM-SHA-256"]))
    refuses(s, "client", wrong)


def test_requests_that_take_no_answer() -> None:
    s = authenticating()
    s.backend(AuthenticationKerberosV5())  # unsupported since PostgreSQL 9.4
    assert s.awaiting is None
    refuses(s, "client", PasswordMessage("pw"))
    s = authenticating()
    s.backend(AuthenticationSASL(["SCRAM-SHA-256"]))
    s.frontend(SASLInitialResponse("SCRAM-SHA-256", b"n,,"))
    s.backend(AuthenticationSASLContinue(b"r=x"))
    s.frontend(SASLResponse(b"c=biws"))
    s.backend(AuthenticationSASLFinal(b"v=x"))
    assert s.awaiting is None
    refuses(s, "client", SASLResponse(b"again"))
    s.backend(AuthenticationOk())
    assert s.state is State.AUTHENTICATED


def test_notice_during_authentication_keeps_the_request_open() -> None:
    # NoticeResponse "can be sent at any time"; the client still owes its answer.
    s = authenticating()
    s.backend(AuthenticationSASL(["SCRAM-SHA-256"]))
    s.backend(NOTICE)
    assert s.awaiting is SASLInitialResponse
    s.frontend(SASLInitialResponse("SCRAM-SHA-256", b"n,,"))
    assert s.awaiting is None


def test_authentication_failure() -> None:
    s = authenticating()
    s.backend(AuthenticationMD5Password(b"salt"))
    s.frontend(PasswordMessage("md5" + "0" * 32))
    s.backend(FATAL)
    assert s.state is State.CLOSED
    assert s.awaiting is None
    refuses(s, "server", ReadyForQuery("I"))
    # Also possible before any request (no such role, too many clients ...).
    s = authenticating()
    s.backend(FATAL)
    assert s.state is State.CLOSED


def test_negotiate_protocol_version() -> None:
    # A PostgreSQL 15 server answers a 3.2 request with "newest: 3.0".
    s = authenticating(PROTOCOL_3_2)
    s.backend(NegotiateProtocolVersion(PROTOCOL_3_0, ["_pq_.test_option"]))
    assert s.protocol_version == PROTOCOL_3_0
    assert s.state is State.AUTHENTICATING
    # A newer server never raises the version the client asked for.
    s = authenticating(PROTOCOL_3_0)
    s.backend(NegotiateProtocolVersion(0x00030009))
    assert s.protocol_version == PROTOCOL_3_0
    # A 3.9 request meets a PostgreSQL 18: 3.2.
    s = authenticating(0x00030009)
    s.backend(NegotiateProtocolVersion(PROTOCOL_3_2))
    assert s.protocol_version == PROTOCOL_3_2


def test_backend_key_length_follows_the_protocol_version() -> None:
    s = authenticated(PROTOCOL_3_0)
    with pytest.raises(LocalProtocolError, match="only 4-byte cancel keys"):
        s.backend(BackendKeyData(1, bytes(32)))
    s = authenticated(PROTOCOL_3_0)
    s.backend(BackendKeyData(1, bytes(4)))
    s = authenticated(PROTOCOL_3_2)
    s.backend(BackendKeyData(1, bytes(32)))
    s.backend(BackendKeyData(1, bytes(4)))  # 4 is still allowed under 3.2
    # Asked for 3.2, negotiated down to 3.0: back to 4 bytes.
    s = authenticating(PROTOCOL_3_2)
    s.backend(NegotiateProtocolVersion(PROTOCOL_3_0))
    s.backend(AuthenticationOk())
    with pytest.raises(LocalProtocolError):
        s.backend(BackendKeyData(1, bytes(32)))


def test_after_authentication() -> None:
    s = authenticated()
    for event in [PARAM, BackendKeyData(1, b"abcd"), NOTICE, NOTIFY, PARAM]:
        s.backend(event)
        assert s.state is State.AUTHENTICATED
    s.backend(ReadyForQuery("T"))
    assert s.state is State.READY
    assert s.transaction_status == "T"
    # A startup failure after AuthenticationOk (e.g. the database is gone).
    s = authenticated()
    s.backend(FATAL)
    assert s.state is State.CLOSED


def test_queries_pipelined_behind_startup() -> None:
    # The server reads them once it is ready.
    s = authenticated()
    s.frontend(Query("SELECT 1"))
    s.frontend(Parse("", "SELECT 2"))
    s.frontend(Sync())
    assert s.outstanding == 2
    assert s.state is State.AUTHENTICATED
    s.backend(BackendKeyData(1, b"abcd"))
    s.backend(ReadyForQuery("I"))  # the end of startup pops nothing
    assert s.state is State.IN_QUERY
    assert s.outstanding == 2


# --- the query phase -----------------------------------------------------------------------


def test_simple_query() -> None:
    s = ready()
    s.frontend(Query("SELECT 1"))
    assert s.state is State.IN_QUERY
    assert s.outstanding == 1
    for event in [RowDescription([]), DataRow([b"1"]), CommandComplete("SELECT 1")]:
        s.backend(event)
        assert s.state is State.IN_QUERY
    s.backend(ReadyForQuery("I"))
    assert s.state is State.READY
    assert s.outstanding == 0


def test_error_in_simple_query_is_not_an_extended_failure() -> None:
    s = ready()
    s.frontend(Query("SELECT 1; SELECT 1/0; SELECT 2"))
    s.backend(ERROR)
    assert s.state is State.IN_QUERY
    s.backend(ReadyForQuery("I"))
    assert s.state is State.READY
    s.frontend(FunctionCall(1))
    s.backend(ERROR)
    assert s.state is State.IN_QUERY
    s.backend(ReadyForQuery("I"))
    assert s.state is State.READY


def test_extended_query_queue() -> None:
    s = ready()
    s.frontend(Parse("", "SELECT 1"))
    s.frontend(Bind("", ""))
    # An open batch: something outstanding, no ReadyForQuery owed yet.
    assert s.state is State.IN_QUERY
    assert s.outstanding == 0
    s.frontend(Describe("P"))
    s.frontend(Execute())
    s.frontend(Close("P"))
    s.frontend(Sync())
    assert s.outstanding == 1
    s.frontend(Sync())  # a Sync alone is answered too
    assert s.outstanding == 2
    s.frontend(Query("SELECT 2"))
    s.frontend(Parse("s", "SELECT 3"))
    assert s.outstanding == 3
    for event in [
        ParseComplete(),
        BindComplete(),
        RowDescription([]),
        DataRow([b"1"]),
        CommandComplete("SELECT 1"),
        CloseComplete(),
    ]:
        s.backend(event)
    s.backend(ReadyForQuery("I"))
    assert s.outstanding == 2
    s.backend(ReadyForQuery("I"))
    assert s.outstanding == 1
    s.backend(CommandComplete("SELECT 1"))
    s.backend(ReadyForQuery("I"))
    # The trailing Parse is still unsynced.
    assert s.outstanding == 0
    assert s.state is State.IN_QUERY
    s.backend(ParseComplete())
    s.frontend(Flush())
    assert s.state is State.IN_QUERY
    s.frontend(Sync())
    s.backend(ReadyForQuery("I"))
    assert s.state is State.READY


def test_query_behind_an_unsynced_batch() -> None:
    # asyncpg-style Parse + Describe + Flush, then a simple Query: the Query
    # runs in (and ends) the same implicit transaction, so its ReadyForQuery
    # also closes the batch before it.
    s = ready()
    s.frontend(Parse("", "SELECT 1"))
    s.frontend(Describe("S"))
    s.frontend(Flush())
    s.frontend(Query("SELECT 2"))
    assert s.outstanding == 1
    s.backend(ParseComplete())
    s.backend(ParameterDescription([]))
    s.backend(RowDescription([]))
    s.backend(CommandComplete("SELECT 1"))
    s.backend(ReadyForQuery("I"))
    assert s.outstanding == 0
    assert s.state is State.READY


def test_other_replies() -> None:
    s = ready()
    s.frontend(Parse("", "SELECT $1"))
    s.frontend(Describe("S"))
    s.frontend(Bind("", ""))
    s.frontend(Execute("", 1))
    s.frontend(Sync())
    for event in [
        ParseComplete(),
        ParameterDescription([23]),
        NoData(),
        BindComplete(),
        EmptyQueryResponse(),
        PortalSuspended(),
        FunctionCallResponse(None),
    ]:
        s.backend(event)
        assert s.state is State.IN_QUERY


def test_extended_error_fails_until_ready_for_query() -> None:
    s = ready()
    s.frontend(Parse("", "SELECT 1/0"))
    s.frontend(Bind("", ""))
    s.backend(ParseComplete())
    s.backend(ERROR)
    # "the backend will ... read and discard messages until a Sync".
    assert s.state is State.FAILED_EXTENDED
    s.frontend(Execute())
    assert s.state is State.FAILED_EXTENDED
    s.frontend(Sync())
    assert s.state is State.FAILED_EXTENDED
    assert s.outstanding == 1
    s.backend(ReadyForQuery("E"))
    assert s.state is State.READY
    assert s.transaction_status == "E"


def test_error_at_idle() -> None:
    # An unsolicited FATAL (admin shutdown, idle_session_timeout) at idle.
    s = ready()
    s.backend(ErrorResponse.build("57P01", "terminating connection", "FATAL"))
    # The server is closing: CLOSED at once, before the EOF.
    assert s.state is State.CLOSED
    s.closed(frontend=False)
    assert s.state is State.CLOSED
    t = ready()
    t.backend(ErrorResponse.build("XX000", "not fatal"))
    assert t.state is State.READY


def test_async_messages_at_idle() -> None:
    s = ready()
    for event in [NOTICE, PARAM, NOTIFY]:
        s.backend(event)
        assert s.state is State.READY


def test_replies_need_a_request() -> None:
    for event in [
        ParseComplete(),
        BindComplete(),
        CloseComplete(),
        CommandComplete("SELECT 1"),
        DataRow([]),
        EmptyQueryResponse(),
        NoData(),
        PortalSuspended(),
        ParameterDescription([]),
        RowDescription([]),
        FunctionCallResponse(None),
        CopyInResponse(),
        CopyOutResponse(),
        CopyBothResponse(),
    ]:
        refuses(ready(), "server", event)


def test_startup_messages_in_the_query_phase() -> None:
    for event in [
        AuthenticationOk(),
        BackendKeyData(1, b"abcd"),
        NegotiateProtocolVersion(PROTOCOL_3_0),
        SSLResponse(False),
        Query("x"),
    ]:
        refuses(ready(), "server", event)
    for event in [STARTUP, SSLRequest(), CancelRequest(1, b"abcd"), PasswordMessage("x"), NOTICE]:
        refuses(ready(), "client", event)


def test_a_stray_ready_for_query_is_tolerated() -> None:
    # Nothing asked for it: it pops nothing and only sets the status.
    s = ready()
    s.backend(ReadyForQuery("T"))
    assert s.state is State.READY
    assert s.transaction_status == "T"


# --- COPY ----------------------------------------------------------------------------------------


def test_copy_in_simple() -> None:
    s = ready()
    s.frontend(Query("COPY t FROM STDIN"))
    s.backend(CopyInResponse(0, [0]))
    assert s.state is State.COPY_IN
    assert s.frontend_copy_open
    s.frontend(CopyData(b"1\n"))
    # "the backend will ignore Flush and Sync messages received during copy-in mode".
    s.frontend(Flush())
    s.frontend(Sync())
    assert s.outstanding == 1
    s.frontend(CopyDone())
    assert not s.frontend_copy_open
    s.backend(CommandComplete("COPY 1"))
    s.backend(ReadyForQuery("I"))
    assert s.state is State.READY


def test_copy_in_fail() -> None:
    s = ready()
    s.frontend(Query("COPY t FROM STDIN"))
    s.backend(CopyInResponse())
    s.frontend(CopyFail("client gave up"))
    assert not s.frontend_copy_open
    s.backend(ERROR)
    assert s.state is State.IN_QUERY
    s.backend(ReadyForQuery("I"))
    assert s.state is State.READY


def test_copy_in_error_while_client_still_sends() -> None:
    # Observed: a bad row makes the server send E and Z at once while the
    # client is still copying; its later rows are dropped by the server.
    s = ready()
    s.frontend(Query("COPY t FROM STDIN"))
    s.backend(CopyInResponse())
    s.frontend(CopyData(b"bad\n"))
    s.backend(ERROR)
    assert s.state is State.IN_QUERY
    s.backend(ReadyForQuery("I"))
    assert s.state is State.READY
    assert s.frontend_copy_open
    s.frontend(CopyData(b"more\n"))
    s.frontend(CopyDone())
    assert not s.frontend_copy_open
    assert s.outstanding == 0


def test_copy_in_extended_eats_the_early_sync() -> None:
    # libpq: P B D E S, then CopyData..., CopyDone, Sync. The first Sync is
    # read (and ignored) in copy-in mode; the second one is answered.
    s = ready()
    for event in [Parse("", "COPY t FROM STDIN"), Bind("", ""), Describe("P"), Execute(), Sync()]:
        s.frontend(event)
    assert s.outstanding == 1
    s.backend(ParseComplete())
    s.backend(BindComplete())
    s.backend(NoData())
    s.backend(CopyInResponse())
    assert s.outstanding == 0
    assert s.state is State.COPY_IN
    s.frontend(CopyData(b"1\n"))
    s.frontend(CopyDone())
    s.frontend(Sync())
    assert s.outstanding == 1
    s.backend(CommandComplete("COPY 1"))
    s.backend(ReadyForQuery("I"))
    assert s.outstanding == 0
    assert s.state is State.READY


def test_copy_in_extended_without_early_sync() -> None:
    s = ready()
    s.frontend(Parse("", "COPY t FROM STDIN"))
    s.frontend(Bind("", ""))
    s.frontend(Execute())
    s.frontend(Flush())
    s.backend(ParseComplete())
    s.backend(BindComplete())
    s.backend(CopyInResponse())
    assert s.state is State.COPY_IN
    s.frontend(CopyDone())
    s.frontend(Sync())
    assert s.outstanding == 1
    s.backend(CommandComplete("COPY 0"))
    s.backend(ReadyForQuery("I"))
    assert s.state is State.READY


def test_copy_in_extended_error() -> None:
    s = ready()
    for event in [Parse("", "COPY t FROM STDIN"), Bind("", ""), Execute(), Sync()]:
        s.frontend(event)
    s.backend(CopyInResponse())
    s.frontend(CopyData(b"bad\n"))
    s.backend(ERROR)
    assert s.state is State.FAILED_EXTENDED
    assert s.frontend_copy_open
    # Out of copy-in mode, the server answers this Sync.
    s.frontend(CopyDone())
    s.frontend(Sync())
    assert s.outstanding == 1
    s.backend(ReadyForQuery("I"))
    assert s.state is State.READY


def test_copy_out() -> None:
    s = ready()
    s.frontend(Query("COPY t TO STDOUT"))
    s.backend(CopyOutResponse(0, [0, 0]))
    assert s.state is State.COPY_OUT
    assert not s.frontend_copy_open
    s.backend(CopyData(b"1\tone\n"))
    s.backend(NOTICE)  # async messages may interleave
    s.backend(CopyData(b"2\ttwo\n"))
    s.backend(CopyDone())
    assert s.state is State.IN_QUERY
    refuses(s, "server", CopyData(b"late"))
    refuses(s, "server", CopyDone())
    s.backend(CommandComplete("COPY 2"))
    s.backend(ReadyForQuery("I"))
    assert s.state is State.READY


def test_copy_out_ends_with_error() -> None:
    s = ready()
    s.frontend(Query("COPY (SELECT 1/0) TO STDOUT"))
    s.backend(CopyOutResponse())
    s.backend(ERROR)
    assert s.state is State.IN_QUERY
    s.backend(ReadyForQuery("I"))
    assert s.state is State.READY


def test_copy_both() -> None:
    s = ready()
    s.frontend(Query("START_REPLICATION 0/0"))
    s.backend(CopyBothResponse())
    assert s.state is State.COPY_BOTH
    s.backend(CopyData(b"w..."))
    s.frontend(CopyData(b"r..."))
    s.frontend(CopyDone())
    s.backend(CopyDone())
    assert s.state is State.COPY_BOTH
    s.backend(CommandComplete("START_REPLICATION"))
    s.backend(ReadyForQuery("I"))
    assert s.state is State.READY


def test_copy_data_from_the_server_needs_copy_out() -> None:
    s = ready()
    refuses(s, "server", CopyData(b"x"))
    refuses(s, "server", CopyDone())
    s.frontend(Query("COPY t FROM STDIN"))
    s.backend(CopyInResponse())
    refuses(s, "server", CopyData(b"x"))


def test_stray_copy_messages_from_the_client() -> None:
    # Outside COPY the server ignores them "for robustness".
    s = ready()
    for event in [CopyData(b"x"), CopyDone(), CopyFail("x"), Flush()]:
        s.frontend(event)
        assert s.state is State.READY


# --- the end ---------------------------------------------------------------------------------


def test_terminate() -> None:
    # "a client may send Terminate without waiting": the answers still come.
    s = ready()
    s.frontend(Query("SELECT 1"))
    s.frontend(Terminate())
    assert s.frontend_closed
    assert s.state is State.CLOSED
    refuses(s, "client", Query("SELECT 2"))
    refuses(s, "client", Sync())
    s.backend(CommandComplete("SELECT 1"))
    s.backend(ReadyForQuery("I"))
    assert s.outstanding == 0
    assert s.state is State.CLOSED


def test_terminate_during_startup() -> None:
    s = authenticated()
    s.frontend(Terminate())
    assert s.state is State.AUTHENTICATED
    assert s.frontend_closed
    refuses(s, "client", Query("x"))


@pytest.mark.parametrize("frontend", [True, False])
def test_eof(frontend: bool) -> None:
    s = ready()
    s.closed(frontend=frontend)
    assert (s.frontend_closed, s.backend_closed) == (frontend, not frontend)
    assert s.state is State.CLOSED
    # Before the query phase, EOF ends the conversation.
    s = authenticating()
    s.closed(frontend=frontend)
    assert s.state is State.CLOSED
    # ERROR is final.
    s = ready()
    s.phase = State.ERROR
    s.closed(frontend=frontend)
    assert s.state is State.ERROR


def test_query_behind_a_failed_batch_is_discarded() -> None:
    # P B E (no Sync), then Query, then Sync: when the batch fails the server
    # discards everything up to the Sync, the Query included: one ReadyForQuery.
    s = ready()
    for event in (Parse("", "select 1/0"), Bind("", ""), Execute(), Query("select 1"), Sync()):
        s.frontend(event)
    assert s.outstanding == 2
    s.backend(ParseComplete())
    s.backend(ErrorResponse.build("22012", "division by zero"))
    assert s.state is State.FAILED_EXTENDED
    s.backend(ReadyForQuery("I"))
    assert s.state is State.READY
    assert s.outstanding == 0


def test_several_syncs_before_copy_in_response_are_all_eaten() -> None:
    s = ready()
    for event in (Parse("", "copy t from stdin"), Bind("", ""), Execute(), Sync(), Sync()):
        s.frontend(event)
    assert s.outstanding == 2
    s.backend(ParseComplete())
    s.backend(BindComplete())
    s.backend(CopyInResponse(0, ()))
    assert s.outstanding == 0
    s.frontend(CopyData(b"1\n"))
    s.frontend(CopyDone())
    s.frontend(Sync())
    assert s.outstanding == 1
    s.backend(CommandComplete("COPY 1"))
    s.backend(ReadyForQuery("I"))
    assert s.state is State.READY
    assert s.outstanding == 0
