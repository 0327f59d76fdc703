"""Property tests: generated events round-trip, and a model-based pipeline.

1. For every event class, Hypothesis builds valid events (text without NUL,
   including non-UTF-8 bytes decoded with ``surrogateescape``; values that may
   be NULL; integers over their wire ranges). Each is encoded, cut at random
   points and fed to a Connection in a phase where it is legal: the same
   event and the same bytes must come out. The body readers, pickling and
   ``repr`` must round-trip too.
2. A ``RuleBasedStateMachine``: a client pipelines random Query, Parse, Bind,
   Describe, Execute, Close, Sync and Flush messages; a model server answers
   them in order the way PostgreSQL does (errors included: an extended-query
   error discards everything up to the next Sync). ``outstanding`` and
   ``state`` must follow the model on both roles' connections, and on a proxy
   pair forwarding the server's answers as spans.
"""

from __future__ import annotations

import itertools
import pickle
from collections import deque
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import pgsansio.protocol as pg
from pgsansio.protocol import (
    CLIENT,
    NEED_DATA,
    PROTOCOL_3_2,
    SERVER,
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
    Span,
    SSLRequest,
    SSLResponse,
    StartupMessage,
    State,
    Sync,
    Terminate,
)
from pgsansio.protocol._readers import (
    BACKEND_READERS,
    FRONTEND_READERS,
    read_gss_response,
    read_password,
    read_sasl_initial,
    read_sasl_response,
    read_startup_packet,
)

# Fast by default: the whole suite stays within seconds. No example database,
# so running the tests leaves nothing behind in the tree.
ROUNDTRIP = settings(max_examples=25, deadline=None, database=None)

# --- strategies ---------------------------------------------------------------------------

# Protocol strings: any text without NUL, and any bytes without NUL as the
# reader sees them (a LATIN1 client, garbage): decoded with surrogateescape.
TEXT = st.one_of(
    st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=12),
    st.binary(max_size=12).map(lambda b: b.replace(b"\0", b"").decode("utf-8", "surrogateescape")),
)
NAME = TEXT.filter(bool)
BLOB = st.binary(max_size=32)
VALUE = st.none() | BLOB
I16 = st.integers(-(2**15), 2**15 - 1)
I32 = st.integers(-(2**31), 2**31 - 1)
U32 = st.integers(0, 2**32 - 1)
KEY = st.binary(min_size=4, max_size=256)
KIND = st.sampled_from("SP")
FIELD_CODE = st.characters(min_codepoint=1, max_codepoint=255)


def lists(elements: st.SearchStrategy[object]) -> st.SearchStrategy[list[object]]:
    return st.lists(elements, max_size=4)


FRONTEND: dict[type[Event], st.SearchStrategy[Event]] = {
    StartupMessage: st.builds(
        StartupMessage,
        lists(st.tuples(NAME, TEXT)),
        st.integers(0, 0xFFFF).map(lambda minor: 0x00030000 | minor),
    ),
    SSLRequest: st.just(SSLRequest()),
    GSSENCRequest: st.just(GSSENCRequest()),
    CancelRequest: st.builds(CancelRequest, U32, KEY),
    PasswordMessage: st.builds(PasswordMessage, TEXT),
    SASLInitialResponse: st.builds(SASLInitialResponse, TEXT, VALUE),
    SASLResponse: st.builds(SASLResponse, BLOB),
    GSSResponse: st.builds(GSSResponse, BLOB),
    Query: st.builds(Query, TEXT),
    Parse: st.builds(Parse, TEXT, TEXT, lists(U32)),
    Bind: st.builds(Bind, TEXT, TEXT, lists(I16), lists(VALUE), lists(I16)),
    Describe: st.builds(Describe, KIND, TEXT),
    Close: st.builds(Close, KIND, TEXT),
    Execute: st.builds(Execute, TEXT, I32),
    Sync: st.just(Sync()),
    Flush: st.just(Flush()),
    Terminate: st.just(Terminate()),
    FunctionCall: st.builds(FunctionCall, U32, lists(I16), lists(VALUE), I16),
    CopyData: st.builds(CopyData, BLOB),
    CopyDone: st.just(CopyDone()),
    CopyFail: st.builds(CopyFail, TEXT),
}

_COPY_RESPONSE = (st.integers(0, 255), lists(I16))
BACKEND: dict[type[Event], st.SearchStrategy[Event]] = {
    SSLResponse: st.builds(SSLResponse, st.booleans()),
    GSSENCResponse: st.builds(GSSENCResponse, st.booleans()),
    AuthenticationOk: st.just(AuthenticationOk()),
    AuthenticationKerberosV5: st.just(AuthenticationKerberosV5()),
    AuthenticationCleartextPassword: st.just(AuthenticationCleartextPassword()),
    AuthenticationMD5Password: st.builds(
        AuthenticationMD5Password, st.binary(min_size=4, max_size=4)
    ),
    AuthenticationGSS: st.just(AuthenticationGSS()),
    AuthenticationGSSContinue: st.builds(AuthenticationGSSContinue, BLOB),
    AuthenticationSSPI: st.just(AuthenticationSSPI()),
    AuthenticationSASL: st.builds(AuthenticationSASL, lists(NAME)),
    AuthenticationSASLContinue: st.builds(AuthenticationSASLContinue, BLOB),
    AuthenticationSASLFinal: st.builds(AuthenticationSASLFinal, BLOB),
    NegotiateProtocolVersion: st.builds(NegotiateProtocolVersion, U32, lists(TEXT)),
    BackendKeyData: st.builds(BackendKeyData, U32, KEY),
    ParameterStatus: st.builds(ParameterStatus, TEXT, TEXT),
    ReadyForQuery: st.builds(ReadyForQuery, st.sampled_from("ITE")),
    RowDescription: st.builds(
        RowDescription, lists(st.builds(Field, TEXT, U32, I16, U32, I16, I32, I16))
    ),
    DataRow: st.builds(DataRow, lists(VALUE)),
    CommandComplete: st.builds(CommandComplete, TEXT),
    ParseComplete: st.just(ParseComplete()),
    BindComplete: st.just(BindComplete()),
    CloseComplete: st.just(CloseComplete()),
    NoData: st.just(NoData()),
    PortalSuspended: st.just(PortalSuspended()),
    EmptyQueryResponse: st.just(EmptyQueryResponse()),
    ParameterDescription: st.builds(ParameterDescription, lists(U32)),
    FunctionCallResponse: st.builds(FunctionCallResponse, VALUE),
    NotificationResponse: st.builds(NotificationResponse, U32, TEXT, TEXT),
    ErrorResponse: st.builds(ErrorResponse, lists(st.tuples(FIELD_CODE, TEXT))),
    NoticeResponse: st.builds(NoticeResponse, lists(st.tuples(FIELD_CODE, TEXT))),
    CopyInResponse: st.builds(CopyInResponse, *_COPY_RESPONSE),
    CopyOutResponse: st.builds(CopyOutResponse, *_COPY_RESPONSE),
    CopyBothResponse: st.builds(CopyBothResponse, *_COPY_RESPONSE),
    CopyData: st.builds(CopyData, BLOB),
    CopyDone: st.just(CopyDone()),
}

# --- a connection in the phase where an event may arrive ----------------------------------

_STARTUP_PACKETS = (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest)
# The authentication request that makes each kind of ``p`` message legal.
_ASKED_BY: dict[type[Event], Event] = {
    PasswordMessage: AuthenticationCleartextPassword(),
    SASLInitialResponse: AuthenticationSASL(["SCRAM-SHA-256"]),
    SASLResponse: AuthenticationSASLContinue(b"r=x"),
    GSSResponse: AuthenticationGSS(),
}
_P_READERS: dict[type[Event], Callable[[bytes], Event]] = {
    PasswordMessage: read_password,
    SASLInitialResponse: read_sasl_initial,
    SASLResponse: read_sasl_response,
    GSSResponse: read_gss_response,
}


def _server(cls: type[Event]) -> Connection:
    conn = Connection(SERVER)
    if cls in _STARTUP_PACKETS:
        return conn
    conn.receive_data(bytes(StartupMessage({"user": "u"})))
    conn.next_event()
    if cls in _ASKED_BY:
        conn.send(_ASKED_BY[cls])
        return conn
    conn.send(AuthenticationOk())
    conn.send(ReadyForQuery("I"))
    return conn


def _client(cls: type[Event]) -> Connection:
    conn = Connection(CLIENT)
    if cls is SSLResponse or cls is GSSENCResponse:
        conn.send(SSLRequest() if cls is SSLResponse else GSSENCRequest())
        return conn
    conn.send(StartupMessage({"user": "u"}, PROTOCOL_3_2))
    if issubclass(cls, pg.Authentication) or cls is NegotiateProtocolVersion:
        return conn
    conn.receive_data(bytes(AuthenticationOk()))
    conn.next_event()
    if cls in (BackendKeyData, ParameterStatus, ReadyForQuery):
        return conn
    conn.receive_data(bytes(ReadyForQuery("I")))
    conn.next_event()
    conn.send(Query("SELECT"))
    if cls is CopyData or cls is CopyDone:
        conn.receive_data(bytes(CopyOutResponse()))
        conn.next_event()
    return conn


def _feed_in_pieces(conn: Connection, wire: bytes, cuts: list[int]) -> list[Event]:
    """Feed ``wire`` cut at ``cuts``; read after every piece."""
    got: list[Event] = []
    bounds = [0, *sorted(cuts), len(wire)]
    for start, end in itertools.pairwise(bounds):
        if end > start:  # an empty piece would mean EOF
            conn.receive_data(wire[start:end])
        while isinstance(event := conn.next_event(), Event):
            got.append(event)
    return got


def _check_roundtrip(conn: Connection, event: Event, cuts: list[int]) -> None:
    wire = bytes(event)
    got = _feed_in_pieces(conn, wire, [c % (len(wire) + 1) for c in cuts])
    assert got == [event]
    assert type(got[0]) is type(event)
    assert bytes(got[0]) == wire
    assert conn.trailing_data == b""


def _check_direct(event: Event, frontend: bool) -> None:
    wire = bytes(event)
    cls = type(event)
    if cls in _STARTUP_PACKETS:
        got = read_startup_packet(wire[4:])
    elif frontend and cls in _P_READERS:
        got = _P_READERS[cls](wire[5:])
    elif cls is SSLResponse or cls is GSSENCResponse:
        return  # one unframed byte; only a connection reads it
    else:
        got = (FRONTEND_READERS if frontend else BACKEND_READERS)[wire[:1]](wire[5:])
    assert got == event
    assert bytes(got) == wire


def _check_value(event: Event) -> None:
    back = pickle.loads(pickle.dumps(event))
    assert back == event
    assert hash(back) == hash(event)
    assert eval(repr(event), vars(pg)) == event


CUTS = st.lists(st.integers(0, 1 << 16), max_size=4)


def _by_name(classes: dict[type[Event], object]) -> list[type[Event]]:
    return sorted(classes, key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", _by_name(FRONTEND), ids=lambda c: c.__name__)
@ROUNDTRIP
@given(data=st.data(), cuts=CUTS)
def test_frontend_events_roundtrip(cls: type[Event], data: st.DataObject, cuts: list[int]) -> None:
    event = data.draw(FRONTEND[cls])
    _check_roundtrip(_server(cls), event, cuts)
    _check_direct(event, frontend=True)
    _check_value(event)


@pytest.mark.parametrize("cls", _by_name(BACKEND), ids=lambda c: c.__name__)
@ROUNDTRIP
@given(data=st.data(), cuts=CUTS)
def test_backend_events_roundtrip(cls: type[Event], data: st.DataObject, cuts: list[int]) -> None:
    event = data.draw(BACKEND[cls])
    _check_roundtrip(_client(cls), event, cuts)
    _check_direct(event, frontend=False)
    _check_value(event)


@settings(max_examples=60, deadline=None, database=None)
@given(
    rows=st.lists(st.builds(DataRow, lists(VALUE)), max_size=6),
    cuts=st.lists(st.integers(0, 1 << 16), max_size=6),
)
def test_spans_at_any_split_forward_the_same_bytes(rows: list[DataRow], cuts: list[int]) -> None:
    # However the chunks fall, the spans' data joined is the stream, and
    # their events are the non-bulk messages in order.
    messages: list[Event] = [RowDescription([Field("a")]), *rows, CommandComplete("SELECT")]
    messages.append(ReadyForQuery("I"))
    wire = b"".join(bytes(m) for m in messages)
    conn = _client(Query)
    bounds = [0, *sorted(c % (len(wire) + 1) for c in cuts), len(wire)]
    forwarded, events, bulk = b"", [], 0
    for start, end in itertools.pairwise(bounds):
        if end > start:
            conn.receive_data(wire[start:end])
        span = conn.next_span()
        if span is NEED_DATA:
            continue
        assert isinstance(span, Span)
        assert all(
            wire.startswith(bytes(e), len(forwarded) + o)
            for e, o in zip(span.events, span.offsets, strict=True)
        )
        forwarded += span.data
        events += span.events
        bulk += span.bulk
    assert forwarded == wire
    assert events == [m for m in messages if type(m) is not DataRow]
    assert bulk == len(rows)
    assert conn.idle


# --- the model-based pipeline ---------------------------------------------------------------

SQL = st.sampled_from(["SELECT 1", "SELECT 1; SELECT 2", "", "BEGIN", "COMMIT"])
EXTENDED = st.one_of(
    st.builds(Parse, st.sampled_from(["", "s1"]), SQL, lists(st.sampled_from([0, 23, 25]))),
    st.builds(Bind, st.sampled_from(["", "p1"]), st.sampled_from(["", "s1"])),
    st.builds(Describe, KIND, st.sampled_from(["", "s1", "p1"])),
    st.builds(Execute, st.sampled_from(["", "p1"]), st.integers(0, 3)),
    st.builds(Close, KIND, st.sampled_from(["", "s1", "p1"])),
)

CLIENT_MESSAGE = st.one_of(
    st.builds(Query, SQL), EXTENDED, EXTENDED, EXTENDED, st.just(Sync()), st.just(Flush())
)
# How the model server answers one request: fail?, rows, transaction status.
PLAN = st.tuples(
    st.integers(0, 5).map(lambda n: n == 0), st.integers(0, 3), st.sampled_from("ITE")
)


class PipelineMachine(RuleBasedStateMachine):
    """A client pipelines random requests; a model server answers them in order.

    Connections: ``client`` and ``server`` back to back; ``up`` is a second
    client-role connection that reads the server's bytes as spans, and
    ``down`` a second server-role connection that forwards those spans with
    ``send_span`` (a proxy). All four must agree with the model.
    """

    def __init__(self) -> None:
        super().__init__()
        self.client = Connection(CLIENT)
        self.server = Connection(SERVER)
        self.up = Connection(CLIENT)
        self.down = Connection(SERVER)
        self.inbox: deque[Event] = deque()  # read by the server, not yet answered
        self.owed = 0  # ReadyForQuery messages the model server still owes
        self.open_batch = False  # extended messages since the last Sync
        self.discarding = False  # an extended-query error: skipping to Sync
        self.unsent: list[Event] = []  # the rest of the current request's replies
        self.answering_extended = False  # the current request is an extended-query message
        self.status = "I"
        self.client_sends(StartupMessage({"user": "alice"}), model=False)
        for event in [AuthenticationOk(), BackendKeyData(1, b"abcd"), ReadyForQuery("I")]:
            wire = self.server.send(event)
            for conn in (self.client, self.up):
                conn.receive_data(wire)
                assert conn.next_event() == event
            assert self.down.send(event) == wire

    # --- plumbing --------------------------------------------------------------------------

    def client_sends(self, event: Event, model: bool = True) -> None:
        data = self.client.send(event)
        assert self.up.send(event) == data
        for conn in (self.server, self.down):
            conn.receive_data(data)
            assert conn.next_event() == event
            assert conn.next_event() is NEED_DATA
        if model:
            self.inbox.append(event)

    def server_sends(self, events: list[Event]) -> None:
        """The server sends ``events``: the client reads them one at a time and
        must follow the model after each; the proxy forwards them as spans."""
        data = b""
        for event in events:
            wire = self.server.send(event)
            data += wire
            self.client.receive_data(wire)
            assert self.client.next_event() == event
            assert self.client.next_event() is NEED_DATA
            self.model_reads(event)
            self.check(self.client, self.server)
        if data:  # (receive_data(b"") would mean EOF)
            self.up.receive_data(data)
            forwarded = b""
            while isinstance(span := self.up.next_span(), Span):
                forwarded += self.down.send_span(span)
            assert forwarded == data

    # --- the client ------------------------------------------------------------------------

    @rule(events=st.lists(CLIENT_MESSAGE, min_size=1, max_size=4))
    def client_pipelines(self, events: list[Event]) -> None:
        for event in events:
            if type(event) is Query and self.open_batch:
                # A Query closes the batch with a Sync first: whether the
                # server answers a Query behind unsynced extended messages
                # depends on where an error happens, which the client cannot
                # know (see test_state.test_query_behind_an_unsynced_batch).
                self.client_pipelines([Sync()])
            self.client_sends(event)
            if type(event) is Query:
                self.owed += 1
            elif type(event) is Sync:
                self.owed += 1
                self.open_batch = False
            elif type(event) is not Flush:
                self.open_batch = True

    # --- the model server --------------------------------------------------------------------

    @precondition(lambda self: bool(self.inbox) and not self.unsent)
    @rule(plans=st.lists(PLAN, min_size=1, max_size=8), now=st.integers(0, 3))
    def answer(self, plans: list[tuple[bool, int, str]], now: int) -> None:
        """Answer the next requests; of the last one, send ``now`` replies and keep the rest."""
        for i, (fail, rows, status) in enumerate(plans, 1):
            request = self.inbox.popleft()
            replies = self.replies(request, fail, rows, status)
            self.answering_extended = type(request) is not Query
            if i == len(plans) or not self.inbox:
                self.unsent = replies[now:]
                self.server_sends(replies[:now])
                return
            self.server_sends(replies)

    @precondition(lambda self: bool(self.unsent))
    @rule(now=st.integers(1, 8))
    def answer_more(self, now: int) -> None:
        replies, self.unsent = self.unsent[:now], self.unsent[now:]
        self.server_sends(replies)

    @precondition(lambda self: bool(self.inbox or self.unsent))
    @rule(status=st.sampled_from("ITE"))
    def drain(self, status: str) -> None:
        """Answer everything received so far, without errors."""
        self.server_sends(self.unsent)
        self.unsent = []
        while self.inbox:
            request = self.inbox.popleft()
            self.answering_extended = type(request) is not Query
            self.server_sends(self.replies(request, False, 1, status))

    def replies(self, request: Event, fail: bool, rows: int, status: str) -> list[Event]:
        """What PostgreSQL answers to one request."""
        if self.discarding and type(request) is not Sync:
            return []  # "read and discard messages until a Sync"
        if type(request) is Sync:
            return [ReadyForQuery(status)]
        if type(request) is Flush:
            return []
        error = ErrorResponse.build("42601", "syntax error")
        if type(request) is Query:
            if fail:
                return [error, ReadyForQuery(status)]
            if request.sql == "":
                return [EmptyQueryResponse(), ReadyForQuery(status)]
            rowset = [RowDescription([Field("?column?")]), *[DataRow([b"1"])] * rows]
            return [*rowset, CommandComplete(f"SELECT {rows}"), ReadyForQuery(status)]
        if fail:
            return [error]
        if type(request) is Parse:
            return [ParseComplete()]
        if type(request) is Bind:
            return [BindComplete()]
        if type(request) is Close:
            return [CloseComplete()]
        if type(request) is Describe:
            described: list[Event] = [RowDescription([Field("a")]) if rows else NoData()]
            if request.kind == "S":
                return [ParameterDescription([23] * rows), *described]
            return described
        assert type(request) is Execute
        if request.max_rows and rows >= request.max_rows:
            return [*[DataRow([b"x"])] * request.max_rows, PortalSuspended()]
        return [*[DataRow([b"x"])] * rows, CommandComplete(f"SELECT {rows}")]

    def model_reads(self, event: Event) -> None:
        if type(event) is ReadyForQuery:
            self.owed -= 1
            self.discarding = False
            self.status = event.status
        elif type(event) is ErrorResponse and self.answering_extended:
            self.discarding = True

    @rule()
    def notice(self) -> None:
        # Asynchronous messages may come at any time.
        self.server_sends([NoticeResponse.build("01000", "hm", "WARNING")])

    # --- what every connection must say --------------------------------------------------------

    @invariant()
    def connections_follow_the_model(self) -> None:
        self.check(self.client, self.server, self.up, self.down)

    def check(self, *conns: Connection) -> None:
        if self.discarding:
            expected = State.FAILED_EXTENDED
        elif self.owed or self.open_batch:
            expected = State.IN_QUERY
        else:
            expected = State.READY
        for conn in conns:
            assert conn.state is expected
            assert conn.outstanding == self.owed
            assert conn.transaction_status == self.status
            assert conn.idle is (expected is State.READY)


PipelineMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPipeline = PipelineMachine.TestCase
