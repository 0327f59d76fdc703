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
    Bind,
    BindComplete,
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
