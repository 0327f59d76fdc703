"""The fast lane: the same effects and state as the general path.

The engine serves an ordinary simple Query and its answer, and the answer to an
extended batch, through ``Relay._fast_query`` / ``Relay._fast_answer`` and the
protocol's ``take_query`` / ``pass_query`` and ``take_answer`` / ``pass_answer``; and it
links a client
to an idle server that needs no health check or SET without the pending list
(``Relay._ready_server``). These tests run the same traffic with the fast lane and
without it (an engine whose lane always declines) and require the same bytes, in the
same order, at the same simulated times; and they check, message by message, that the
protocol's fast calls decline what they must and leave the connections exactly as
``next_span`` and ``send_span`` do.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim.harness import kill_servers, make_config, simulate
from sim.scenarios import DEFAULT_WEIGHTS, Behaviour

from pgsansio.engine import Engine
from pgsansio.protocol import (
    CLIENT,
    SERVER,
    AuthenticationOk,
    BackendKeyData,
    Bind,
    BindComplete,
    Close,
    CommandComplete,
    Connection,
    CopyOutResponse,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    Field,
    FunctionCall,
    NoticeResponse,
    ParameterStatus,
    Parse,
    ParseComplete,
    Query,
    ReadyForQuery,
    RowDescription,
    Span,
    StartupMessage,
    Sync,
    Terminate,
)
from pgsansio.protocol._errors import LocalProtocolError


def GeneralOnly(*args: Any, **kw: Any) -> Engine:
    """The engine with its fast lane closed: every byte takes the general path, every
    checkout goes through Pools.checkout and the pending list."""
    return Engine(*args, fast_lane=False, **kw)


def recording(made: list[Engine]) -> Any:
    """An engine factory that keeps the engines it makes in ``made`` (to read their
    ``fast_taken`` afterwards)."""

    def make(*args: Any, **kw: Any) -> Engine:
        engine = Engine(*args, **kw)
        made.append(engine)
        return engine

    return make


def _run(factory: Any, seed: int, **kw: Any) -> tuple[list[str], object, int, int]:
    run = simulate(seed, clients=60, engine_factory=factory, verbose=True, trace_size=10**7, **kw)
    assert not run.problems, run.problems
    taken = run.world.engine.fast_taken  # inputs the fast lane took
    # SCRAM nonces come from os.urandom: the only bytes that differ from run to run.
    trace = [line for line in run.world.trace if "SASL" not in line]
    return trace, sorted(run.behaviour.ledger.items()), run.world.sched.events, taken


@pytest.mark.parametrize(
    ("seed", "kw"),
    [
        (1, {}),
        (2, {"config": make_config(pool_size=2)}),
        (
            3,
            {
                "faults": [kill_servers(0.3, 3.0, 0.1)],
                "behaviour": Behaviour(
                    allowed=frozenset({"53300", "08006", "08001", "08P01", "57P01"}),
                    recovered_at=5.0,
                ),
            },
        ),
        (
            4,
            {
                "behaviour": Behaviour(
                    weights={
                        k: (w * 4 if "simple" in k or "txn" in k else w)
                        for k, w in DEFAULT_WEIGHTS.items()
                    }
                )
            },
        ),
    ],
    ids=["default", "small-pool", "servers-die", "mostly-simple"],
)
def test_the_simulation_is_the_same_with_and_without_the_fast_lane(
    seed: int, kw: dict[str, Any]
) -> None:
    fast = _run(Engine, seed, **kw)
    assert fast[3] > 200  # the lane was used, not merely present
    general = _run(GeneralOnly, seed, **kw)
    assert general[3] == 0
    assert fast[2] == general[2]
    assert fast[1] == general[1]
    assert fast[0] == general[0]


# --- the protocol's fast calls ----------------------------------------------------------


def _pair() -> tuple[Connection, Connection]:
    """A proxy's two connections in the query phase: (client side, server side)."""
    client_side = Connection(SERVER)  # talks to a client
    server_side = Connection(CLIENT)  # talks to a server
    hello = bytes(StartupMessage({"user": "u", "database": "d"}))
    client_side.receive_data(hello)
    client_side.next_event()
    server_side.send(StartupMessage({"user": "u", "database": "d"}))
    from pgsansio.protocol import AuthenticationOk, BackendKeyData

    for event in (AuthenticationOk(), BackendKeyData(1, b"abcd"), ReadyForQuery("I")):
        client_side.send(event)
        server_side.receive_data(bytes(event))
        assert server_side.next_event() == event
    return client_side, server_side


def _state(conn: Connection) -> tuple[object, ...]:
    c = conn._conv
    return (
        c.phase,
        list(c.pending),
        c.copy,
        c.failed,
        c.transaction_status,
        c.frontend_closed,
        c.backend_closed,
        c.frontend_copy_open,
        conn.trailing_data,
    )


def _general(client_side: Connection, server_side: Connection, request: bytes, answer: bytes):
    client_side.receive_data(request)
    span = client_side.next_span()
    assert isinstance(span, Span)
    server_side.send_span(span)
    server_side.receive_data(answer)
    back = server_side.next_span()
    assert isinstance(back, Span)
    client_side.send_span(back)
    return [e for e in back.events if type(e) is CommandComplete], back.ready


def _forward_answer(
    client_side: Connection, server_side: Connection, answer: bytes, check: Any = None
) -> tuple[str, list[CommandComplete]] | None:
    """The answer half of the lane as the relay runs it: each side its own call."""
    result = server_side.take_answer(answer, check)
    if result is not None:
        assert client_side.pass_answer(answer, result[0]) is answer
    return result


def _fast(client_side: Connection, server_side: Connection, request: bytes, answer: bytes):
    sql = client_side.take_query(request)
    assert sql is not None
    assert server_side.pass_query(request, sql) == request
    result = _forward_answer(client_side, server_side, answer)
    assert result is not None
    status, tags = result
    return tags, status


def _answer(*events: Any) -> bytes:
    return b"".join(bytes(e) for e in events)


ROW_DESC = RowDescription([Field("a", 0, 0, 23, 4, -1, 0)])
ANSWERS = {
    "select": _answer(ROW_DESC, DataRow([b"1"]), CommandComplete("SELECT 1"), ReadyForQuery("I")),
    "no rows": _answer(ROW_DESC, CommandComplete("SELECT 0"), ReadyForQuery("I")),
    "begin": _answer(CommandComplete("BEGIN"), ReadyForQuery("T")),
    "failed tx": _answer(ReadyForQuery("E")),
    "empty": _answer(EmptyQueryResponse(), ReadyForQuery("I")),
    "two statements": _answer(
        CommandComplete("INSERT 0 1"),
        ROW_DESC,
        DataRow([b"2"]),
        DataRow([None]),
        CommandComplete("SELECT 2"),
        ReadyForQuery("I"),
    ),
}


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_fast_calls_leave_the_state_of_the_general_path(name: str) -> None:
    request = bytes(Query("select a from t"))
    fast_pair, general_pair = _pair(), _pair()
    fast = _fast(*fast_pair, request, ANSWERS[name])
    general = _general(*general_pair, request, ANSWERS[name])
    assert fast == general
    assert [_state(c) for c in fast_pair] == [_state(c) for c in general_pair]
    # ... and both go on alike.
    again = _fast(*fast_pair, request, ANSWERS["select"])
    assert again == _general(*general_pair, request, ANSWERS["select"])
    assert [_state(c) for c in fast_pair] == [_state(c) for c in general_pair]


QUERY = bytes(Query("select 1"))


@pytest.mark.parametrize(
    "request_bytes",
    [
        QUERY[:-1],  # partial
        QUERY + QUERY,  # two messages
        bytes(Query("select 1")) + bytes(Sync()),
        bytes(Sync()),
        QUERY[:5] + b"sel\0ect 1\0",  # two strings
        QUERY[:5] + b"select 1",  # no terminator (length fixed below)
        b"Q\0\0\0\x04",  # no body
        bytearray(QUERY),  # not bytes: the general path copies it
    ],
    ids=[
        "partial",
        "two",
        "query-sync",
        "sync",
        "two-strings",
        "unterminated",
        "empty",
        "bytearray",
    ],
)
def test_take_query_declines_and_changes_nothing(request_bytes: bytes) -> None:
    if request_bytes[5:] == b"select 1":
        request_bytes = b"Q" + (4 + 8).to_bytes(4, "big") + b"select 1"
    client_side, _ = _pair()
    before = _state(client_side)
    assert client_side.take_query(request_bytes) is None
    assert _state(client_side) == before


def test_take_query_declines_with_something_outstanding_or_buffered() -> None:
    client_side, _ = _pair()
    client_side.receive_data(QUERY)
    assert isinstance(client_side.next_span(), Span)
    assert client_side.take_query(QUERY) is None  # the first is still outstanding
    client_side2, _ = _pair()
    client_side2.receive_data(QUERY[:3])
    assert client_side2.take_query(QUERY) is None  # bytes are buffered
    client_side3, _ = _pair()
    client_side3.max_message_size = 8
    assert client_side3.take_query(QUERY) is None  # over the cap: the general path says so


def test_pass_query_falls_back_to_send_span() -> None:
    _, server_side = _pair()
    server_side.send(Sync())  # something outstanding is no obstacle: queries pipeline
    assert server_side.pass_query(QUERY, "select 1") == QUERY
    assert list(server_side._conv.pending) == ["S", "Q"]
    # Where a Query may not be sent, send_span's checks say so, as they would have.
    server_side.send(Terminate())
    with pytest.raises(LocalProtocolError, match="can't send Query"):
        server_side.pass_query(QUERY, "select 1")
    with pytest.raises(LocalProtocolError):
        Connection(CLIENT).pass_query(QUERY, "select 1")  # before any login


DECLINED = {
    "error": _answer(ErrorResponse.build("42P01", "no such table"), ReadyForQuery("I")),
    "notice": _answer(NoticeResponse.build("01000", "hm", "NOTICE"), ReadyForQuery("I")),
    "parameter": _answer(ParameterStatus("TimeZone", "UTC"), ReadyForQuery("I")),
    "copy": _answer(CopyOutResponse(0, [0])),
    "partial": ANSWERS["select"][:-1],
    "no ready": _answer(ROW_DESC, CommandComplete("SELECT 0")),
    "bad status": ANSWERS["select"][:-1] + b"X",
    "ready too soon": _answer(ReadyForQuery("I"), ReadyForQuery("I")),
    "bad row description": b"T\0\0\0\x06\0\x05" + _answer(ReadyForQuery("I")),
    "short frame": b"D\0\0\0\x02" + _answer(ReadyForQuery("I")),
    "frame past the end": b"D\0\0\0\x09\0\0" + _answer(ReadyForQuery("I")),
    "bad empty query": b"I\0\0\0\x05x" + _answer(ReadyForQuery("I")),
    "three stray bytes": b"D\0\0" + _answer(ReadyForQuery("I")),
}


@pytest.mark.parametrize("name", sorted(DECLINED))
def test_take_answer_declines_and_changes_nothing(name: str) -> None:
    client_side, server_side = _pair()
    sql = client_side.take_query(QUERY)
    assert sql is not None
    server_side.pass_query(QUERY, sql)
    before = [_state(client_side), _state(server_side)]
    assert _forward_answer(client_side, server_side, DECLINED[name]) is None
    assert [_state(client_side), _state(server_side)] == before


def test_take_answer_needs_one_request_outstanding() -> None:
    client_side, server_side = _pair()
    assert _forward_answer(client_side, server_side, ANSWERS["select"]) is None  # nothing asked
    # Extended messages without their Sync: no ReadyForQuery is due yet.
    batch = bytes(Bind("", "", (), [], ())) + bytes(Execute())
    client_side.receive_data(batch)
    span = client_side.next_span()
    assert isinstance(span, Span)
    server_side.send_span(span)
    before = [_state(client_side), _state(server_side)]
    assert (
        _forward_answer(client_side, server_side, _answer(BindComplete(), ReadyForQuery("I")))
        is None
    )
    assert [_state(client_side), _state(server_side)] == before
    # A FunctionCall's answer is left to the general path.
    client_side, server_side = _pair()
    client_side.receive_data(bytes(FunctionCall(1, (), [], 0)))
    span = client_side.next_span()
    assert isinstance(span, Span)
    server_side.send_span(span)
    assert _forward_answer(client_side, server_side, _answer(ReadyForQuery("I"))) is None


EXTENDED = bytes(Parse("", "select a from t")) + bytes(Bind("", "", (), [], ()))
EXTENDED += bytes(Describe("P", "")) + bytes(Execute()) + bytes(Sync())
EXTENDED_ANSWER = _answer(
    ParseComplete(),
    BindComplete(),
    ROW_DESC,
    DataRow([b"1"]),
    CommandComplete("SELECT 1"),
    ReadyForQuery("I"),
)


def _sent(request: bytes) -> tuple[Connection, Connection]:
    client_side, server_side = _pair()
    client_side.receive_data(request)
    span = client_side.next_span()
    assert isinstance(span, Span)
    server_side.send_span(span)
    return client_side, server_side


def test_take_answer_takes_an_extended_batch_and_shows_its_replies() -> None:
    fast, general = _sent(EXTENDED), _sent(EXTENDED)
    seen: list[bytes] = []
    result = _forward_answer(*fast, EXTENDED_ANSWER, lambda codes: not seen.append(codes))
    assert seen == [b"12TC"]  # DataRows left out
    general[1].receive_data(EXTENDED_ANSWER)
    span = general[1].next_span()
    assert isinstance(span, Span)
    general[0].send_span(span)
    assert result == ("I", [CommandComplete("SELECT 1")])
    assert [_state(c) for c in fast] == [_state(c) for c in general]


def test_take_answer_refused_by_its_check_changes_nothing() -> None:
    client_side, server_side = _sent(EXTENDED)
    before = [_state(client_side), _state(server_side)]
    assert _forward_answer(client_side, server_side, EXTENDED_ANSWER, lambda codes: False) is None
    assert [_state(client_side), _state(server_side)] == before


PIECES = [
    bytes(ROW_DESC),
    bytes(DataRow([b"1"])),
    bytes(CommandComplete("SELECT 1")),
    bytes(CommandComplete("SET")),
    bytes(EmptyQueryResponse()),
    bytes(ErrorResponse.build("42P01", "no")),
    bytes(NoticeResponse.build("01000", "hm", "NOTICE")),
    bytes(ParameterStatus("a", "b")),
    bytes(ReadyForQuery("I")),
    bytes(ReadyForQuery("T")),
    bytes(ParseComplete()),
    bytes(BindComplete()),
    b"D\0\0\0\x02",
    b"T\0\0\0\x05\0",
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(PIECES), max_size=6),
    st.integers(min_value=0, max_value=3),
    st.binary(max_size=3),
    st.booleans(),
)
def test_the_answer_calls_agree_with_the_general_path(
    pieces: list[bytes], cut: int, junk: bytes, extended: bool
) -> None:
    """Any answer, to a Query or to an extended batch: take_answer declines with
    nothing changed, or it and pass_answer do exactly what next_span + send_span do
    with it."""
    answer = b"".join(pieces) + junk
    answer = answer[: len(answer) - cut] if cut < len(answer) else answer
    if extended:
        fast_pair, general_pair = _sent(EXTENDED), _sent(EXTENDED)
    else:
        fast_pair, general_pair = _pair(), _pair()
        for client_side, server_side in (fast_pair, general_pair):
            sql = client_side.take_query(QUERY)
            assert sql is not None
            server_side.pass_query(QUERY, sql)
    before = [_state(c) for c in fast_pair]
    result = _forward_answer(*fast_pair, answer)
    if result is None:
        assert [_state(c) for c in fast_pair] == before
        return
    general_pair[1].receive_data(answer)
    span = general_pair[1].next_span()
    assert isinstance(span, Span)
    assert span.data == answer  # the whole answer, nothing left over
    general_pair[0].send_span(span)
    assert result == (span.ready, [e for e in span.events if type(e) is CommandComplete])
    assert [_state(c) for c in fast_pair] == [_state(c) for c in general_pair]


def _asked(*requests: bytes, error: bool = False, buffered: bytes = b"") -> Connection:
    """A proxy's client side that has read ``requests`` (and answered an error first,
    if ``error``), with ``buffered`` received but not yet read."""
    client_side, _ = _pair()
    for request in requests:
        client_side.receive_data(request)
        assert isinstance(client_side.next_span(), Span)
    if error:
        client_side.send(ErrorResponse.build("42P01", "no such table"))
    if buffered:
        client_side.receive_data(buffered)
    return client_side


BIND_EXECUTE = bytes(Bind("", "", (), [], ())) + bytes(Execute())
CLIENT_SIDES = {
    "one query": lambda: _asked(QUERY),
    "one sync": lambda: _asked(EXTENDED),
    "batch without sync": lambda: _asked(BIND_EXECUTE),
    "function call": lambda: _asked(bytes(FunctionCall(1, (), [], 0))),
    "two queries": lambda: _asked(QUERY + QUERY),
    "query and sync": lambda: _asked(QUERY, EXTENDED),
    "query then terminate": lambda: _asked(QUERY + bytes(Terminate())),
    "failed batch": lambda: _asked(EXTENDED, error=True),
    "bytes buffered": lambda: _asked(QUERY, buffered=QUERY[:3]),
    "nothing asked": _asked,
    "still logging in": lambda: Connection(SERVER),
    "wrong role": lambda: Connection(CLIENT),
}


@pytest.mark.parametrize("answer", ["select", "extended"])
@pytest.mark.parametrize("name", sorted(CLIENT_SIDES))
def test_pass_answer_does_what_send_span_does(name: str, answer: str) -> None:
    """On any client side, pass_answer leaves the state send_span leaves (its short
    cut where one request is outstanding, send_span itself otherwise), or raises the
    error send_span raises."""
    data = EXTENDED_ANSWER if answer == "extended" else ANSWERS["select"]
    server_side = _sent(EXTENDED)[1] if answer == "extended" else _sent(QUERY)[1]
    server_side.receive_data(data)
    span = server_side.next_span()
    assert isinstance(span, Span) and span.ready is not None
    fast, general = CLIENT_SIDES[name](), CLIENT_SIDES[name]()
    try:
        general.send_span(span)
    except LocalProtocolError as exc:
        with pytest.raises(LocalProtocolError) as raised:
            fast.pass_answer(data, span.ready)
        assert str(raised.value) == str(exc)
    else:
        assert fast.pass_answer(data, span.ready) is data
    assert _state(fast) == _state(general)


# --- the request half of the lane for the extended protocol -----------------------------

PREPARED = bytes(Bind("", "P_1", (0,), [b"42", None], (1,))) + bytes(Describe("P", ""))
PREPARED += bytes(Execute("", 0)) + bytes(Sync())
BATCH_PIECES = [
    bytes(Parse("", "select $1::int", (23,))),
    bytes(Parse("s1", "select 1")),
    bytes(Bind("", "", (), [b"1"], ())),
    bytes(Bind("p", "s1", (1, 0), [None, b"x"], (1,))),
    bytes(Describe("P", "")),
    bytes(Describe("S", "s1")),
    bytes(Execute("", 0)),
    bytes(Execute("p", 5)),
    bytes(Sync()),
    bytes(Query("select 1")),
    bytes(Close("S", "s1")),
    bytes(FunctionCall(1, (), [], 0)),
    b"B\0\0\0\x06\0\0",  # a malformed Bind: PostgreSQL answers 08P01 and goes on
    b"E\0\0\0\x05\0",  # an Execute too short
    b"D\0\0\0\x06X\0",  # a Describe of neither S nor P
]


@pytest.mark.parametrize("request_bytes", [EXTENDED, PREPARED], ids=["unnamed", "prepared"])
def test_take_batch_leaves_the_state_of_the_general_path(request_bytes: bytes) -> None:
    fast, general = _pair(), _pair()
    taken = fast[0].take_batch(request_bytes)
    assert taken is not None
    events, offsets = taken
    assert fast[1].pass_batch(request_bytes, events) is request_bytes
    general[0].receive_data(request_bytes)
    span = general[0].next_span()
    assert isinstance(span, Span)
    general[1].send_span(span)
    assert (events, offsets) == (span.events, span.offsets)
    assert [_state(c) for c in fast] == [_state(c) for c in general]
    # ... and the answer and the next batch go on alike.
    assert _forward_answer(*fast, EXTENDED_ANSWER) is not None
    assert _forward_answer(*general, EXTENDED_ANSWER) is not None
    assert fast[0].take_batch(request_bytes) is not None
    assert [_state(c) for c in fast] != [_state(c) for c in general]


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.lists(st.sampled_from(BATCH_PIECES[:8]), min_size=1, max_size=5),  # mostly taken
        st.lists(st.sampled_from(BATCH_PIECES), max_size=6),
    ),
    st.sampled_from([0, 0, 0, 1, 3]),
    st.booleans(),
)
def test_take_batch_declines_or_agrees_with_next_span(
    pieces: list[bytes], cut: int, synced: bool
) -> None:
    """Any request: take_batch declines with nothing changed, or it reads what
    receive_data + next_span read, with the same events and the same state after."""
    request = b"".join(pieces) + (bytes(Sync()) if synced else b"")
    request = request[: len(request) - cut] if cut < len(request) else request
    fast, general = _pair(), _pair()
    before = _state(fast[0])
    taken = fast[0].take_batch(request)
    if taken is None:
        assert _state(fast[0]) == before
        return
    general[0].receive_data(request)
    span = general[0].next_span()
    assert isinstance(span, Span)
    assert span.data == request
    assert taken == (span.events, span.offsets)
    assert not any(type(e).__name__ == "MalformedMessage" for e in span.events)
    assert _state(fast[0]) == _state(general[0])


@pytest.mark.parametrize(
    "request_bytes",
    [
        EXTENDED[:-1],  # partial
        bytes(Sync()),  # a Sync alone: nothing to save
        EXTENDED + EXTENDED,  # two batches
        BIND_EXECUTE,  # no Sync
        bytes(Bind("", "", (), [], ())) + bytes(Close("S", "a")) + bytes(Sync()),
        bytes(Bind("", "", (), [], ())) + bytes(Sync()) + bytes(Sync()),
        b"B\0\0\0\x06\0\0" + bytes(Sync()),  # malformed: the general path forwards it
        bytearray(EXTENDED),
    ],
    ids=["partial", "sync", "two", "no-sync", "close", "two-syncs", "malformed", "bytearray"],
)
def test_take_batch_declines_and_changes_nothing(request_bytes: bytes) -> None:
    client_side, _ = _pair()
    before = _state(client_side)
    assert client_side.take_batch(request_bytes) is None
    assert _state(client_side) == before


def test_take_batch_declines_with_something_outstanding_buffered_or_too_long() -> None:
    assert _asked(QUERY).take_batch(EXTENDED) is None  # the query is outstanding
    assert _asked(buffered=EXTENDED[:3]).take_batch(EXTENDED) is None
    client_side, _ = _pair()
    client_side.max_message_size = 8
    assert client_side.take_batch(EXTENDED) is None  # over the cap: the general path says so
    assert Connection(SERVER).take_batch(EXTENDED) is None  # still logging in


@pytest.mark.parametrize("name", sorted(CLIENT_SIDES))
def test_pass_batch_does_what_send_span_does(name: str) -> None:
    """Through any server side, pass_batch leaves the state send_span leaves (its
    short cut where it applies, send_span itself otherwise), or raises its error."""
    client_side, _ = _pair()
    taken = client_side.take_batch(EXTENDED)
    assert taken is not None
    events, offsets = taken
    span = Span(EXTENDED, events, offsets)
    # CLIENT_SIDES builds client sides; their mirror images are server sides that
    # have sent the same requests.
    fast, general = _server_side(name), _server_side(name)
    try:
        general.send_span(span)
    except LocalProtocolError as exc:
        with pytest.raises(LocalProtocolError) as raised:
            fast.pass_batch(EXTENDED, events)
        assert str(raised.value) == str(exc)
    else:
        assert fast.pass_batch(EXTENDED, events) is EXTENDED
    assert _state(fast) == _state(general)


def _server_side(name: str) -> Connection:
    """A proxy's server side that sent what ``CLIENT_SIDES[name]`` read."""
    if name == "still logging in":
        return Connection(CLIENT)
    if name == "wrong role":
        return Connection(SERVER)
    _, server_side = _pair()
    requests = {
        "one query": [QUERY],
        "one sync": [EXTENDED],
        "batch without sync": [BIND_EXECUTE],
        "function call": [bytes(FunctionCall(1, (), [], 0))],
        "two queries": [QUERY + QUERY],
        "query and sync": [QUERY, EXTENDED],
        "query then terminate": [QUERY + bytes(Terminate())],
        "failed batch": [EXTENDED],
        "bytes buffered": [QUERY],
        "nothing asked": [],
    }[name]
    for request in requests:
        helper = Connection(SERVER)
        helper.receive_data(bytes(StartupMessage({"user": "u", "database": "d"})))
        helper.next_event()
        for event in (AuthenticationOk(), BackendKeyData(1, b"abcd"), ReadyForQuery("I")):
            helper.send(event)
        helper.receive_data(request)
        span = helper.next_span()
        assert isinstance(span, Span)
        server_side.send_span(span)
    if name == "failed batch":
        server_side.receive_data(bytes(ErrorResponse.build("42P01", "no such table")))
        assert server_side.next_span() is not None
    return server_side


def _drive(
    factory: Any, steps: list[tuple[str, int, bytes]], **general: Any
) -> list[tuple[str, int, bytes]]:
    """Two trust clients on a pool of one server (cache of two shared statements)
    through ``factory``'s engine and fakepg: every byte written, in order. A step is
    ("send", cid, bytes), ("hold", 0, b"") (keep what goes to the server from now on)
    or ("release", 0, b"") (deliver it, then go on delivering at once)."""
    from pgsansio.config.model import (
        Config,
        General,
        PoolConfig,
        ServerAddress,
        ShardConfig,
        UserConfig,
    )
    from pgsansio.engine import OpenServer, SendClient, SendServer
    from pgsansio.testing.fakepg import Database, FakeUser

    user = UserConfig(username="u", password="pw", pool_size=1, auth_type="trust")
    pool = PoolConfig(
        name="db",
        users={"u": user},
        shards=(ShardConfig(0, "db", (ServerAddress("h", 1, "primary"),)),),
        prepared_statements_cache_size=2,
    )
    engine = factory(Config(General(**general), {"db": pool}), seed=1)
    db = Database(users={"u": FakeUser("pw", "trust")}, databases=["db"])
    fakes: dict[int, Any] = {}
    written: list[tuple[str, int, bytes]] = []
    held: list[Any] = []
    holding = False

    def run(effects: list[Any]) -> None:
        queue = list(effects)
        while queue:
            e = queue.pop(0)
            if isinstance(e, OpenServer):
                fakes[e.sid] = db.connect()
                queue += engine.server_connected(e.sid, 1.0)
            elif isinstance(e, SendServer):
                written.append(("server", e.sid, e.data))
                if holding:
                    held.append(e)
                    continue
                reply = fakes[e.sid].receive(e.data, 1.0)
                if reply:
                    queue += engine.server_data(e.sid, reply, 1.0)
            elif isinstance(e, SendClient):
                written.append(("client", e.cid, e.data))

    startup = bytes(StartupMessage({"user": "u", "database": "db"}))
    for cid in (1, 2):
        run(engine.client_connected(cid, "test", 1.0))
        run(engine.client_data(cid, startup, 1.0))
    for what, cid, data in steps:
        if what == "send":
            run(engine.client_data(cid, data, 1.0))
        elif what == "hold":
            holding = True
        else:
            holding = False
            again, held[:] = list(held), []
            run(again)
    return written


def _batch(*events: Any) -> bytes:
    return b"".join(bytes(e) for e in (*events, Sync()))


def _prepared(name: str, *params: bytes) -> bytes:
    return _batch(Bind("", name, (), list(params), ()), Describe("P", ""), Execute("", 0))


BATCH_STEPS = [
    ("send", 1, _batch(Parse("a", "select $1::int"))),  # named: shared, renamed
    ("send", 1, _prepared("a", b"1")),
    ("send", 1, _batch(Describe("S", "a"))),
    ("send", 1, _batch(Bind("", "a", (), [b"2"], ()), Describe("S", "a"), Execute("", 0))),
    ("send", 2, _batch(Parse("b", "select $1::text"))),
    ("send", 2, _batch(Parse("c", "select $1::bigint"))),  # evicts a from the server
    ("send", 1, _prepared("a", b"3")),  # a is prepared again first
    ("send", 1, _prepared("zz", b"4")),  # never prepared: 26000, as from PostgreSQL
    ("send", 2, _batch(Parse("", "select $1::int + 1"), Bind("", "", (), [b"5"], ()))),
    ("send", 2, EXTENDED),
    ("send", 2, _batch(Parse("", "select set_config('a.b', 'c', false)"), Execute("", 0))),
    ("send", 1, bytes(Query("begin"))),
    ("send", 1, _prepared("a", b"6")),
    ("hold", 0, b""),
    ("send", 1, bytes(Query("commit"))),
    ("send", 2, _prepared("c", b"7")),  # waits for the server: the pending list
    ("release", 0, b""),
    ("hold", 0, b""),
    ("send", 1, _prepared("a", b"8")),
    ("send", 2, EXTENDED),
    ("release", 0, b""),
    ("send", 2, _batch(Close("S", "c"))),
    ("send", 2, _prepared("c", b"9")),  # closed: 26000
]


def test_extended_batches_take_the_lane_with_the_general_path_s_effects() -> None:
    made: list[Engine] = []
    fast = _drive(recording(made), BATCH_STEPS)
    assert made[0].fast_taken >= 10
    general = _drive(GeneralOnly, BATCH_STEPS)
    assert fast == general
    answers = b"".join(data for side, _, data in fast if side == "client")
    assert answers.count(b"26000") == 2  # zz was never prepared; c was closed
    assert b"PGSANSIO_" not in answers  # the client's names, never ours


def test_a_large_request_that_must_wait_is_held_to_the_buffer_limits() -> None:
    """A request of SMALL bytes or more that would wait for a server takes the
    general path, where Buffers counts it against client_buffer_limit (here a batch
    of two Binds under the limit each, over it together: 54000, as without the lane)."""
    big = _batch(
        Bind("", "", (), [b"x" * 70_000], ()),
        Bind("", "", (), [b"y" * 70_000], ()),
        Execute("", 0),
    )
    steps = [("hold", 0, b""), ("send", 1, QUERY), ("send", 2, big), ("release", 0, b"")]
    fast = _drive(Engine, steps, client_buffer_limit=100_000)
    assert fast == _drive(GeneralOnly, steps, client_buffer_limit=100_000)
    refused = [data for side, cid, data in fast if side == "client" and cid == 2]
    assert refused and b"54000" in refused[-1]
