"""Hostile bytes: whatever a peer sends, we parse it or raise RemoteProtocolError.

h11's rule for a sans-IO parser, checked with hypothesis (the atheris harnesses
in ``fuzz/`` run the same invariant for minutes; this file keeps it in every
``make test`` run, in seconds):

* random bytes and mutated real messages (bytes flipped, inserted, deleted,
  length fields rewritten) for both roles and several starting phases;
* fed whole and at random split points, with identical results: framing must
  not depend on where ``recv()`` cut the stream;
* ``next_span`` (the proxy fast path) obeys the same rule;
* a length header is checked before its body is buffered: a message claiming
  1 GiB is refused at once with SQLSTATE 54000 and never allocated.
"""

from __future__ import annotations

import itertools
import struct
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgsansio as pg

_i32 = struct.Struct("!i").pack
_u32 = struct.Struct("!I").pack

SMALL_LIMIT = 1 << 20

# --- connections in a given phase ----------------------------------------------------------


def _feed_setup(conn: pg.Connection, *events: pg.Event) -> None:
    conn.receive_data(b"".join(bytes(e) for e in events))
    for _ in events:
        assert isinstance(conn.next_event(), pg.Event)


def _server_ready(conn: pg.Connection) -> None:
    for event in (pg.AuthenticationOk(), pg.BackendKeyData(1, b"abcd"), pg.ReadyForQuery("I")):
        conn.send(event)


def _server(phase: str) -> pg.Connection:
    """A SERVER-role connection (reading client bytes) in ``phase``."""
    conn = pg.Connection(pg.SERVER, max_message_size=SMALL_LIMIT)
    if phase == "startup":
        return conn
    _feed_setup(conn, pg.StartupMessage({"user": "u"}))
    if phase == "password":
        conn.send(pg.AuthenticationCleartextPassword())
        return conn
    _server_ready(conn)
    if phase == "copy_in":
        _feed_setup(conn, pg.Query("copy t from stdin"))
        conn.send(pg.CopyInResponse(0, (0,)))
    return conn


def _client(phase: str) -> pg.Connection:
    """A CLIENT-role connection (reading server bytes) in ``phase``."""
    conn = pg.Connection(pg.CLIENT, max_message_size=SMALL_LIMIT)
    conn.send(pg.StartupMessage({"user": "u"}))
    if phase == "auth":
        return conn
    _feed_setup(conn, pg.AuthenticationOk(), pg.ReadyForQuery("I"))
    for _ in range(8):
        conn.send(pg.Query("select 1"))
        for event in (pg.Parse("", "select 1"), pg.Bind("", ""), pg.Execute(), pg.Sync()):
            conn.send(event)
    if phase == "copy_out":
        _feed_setup(conn, pg.CopyOutResponse(0, (0,)))
    return conn


PHASES: dict[str, Callable[[], pg.Connection]] = {
    "server-startup": lambda: _server("startup"),
    "server-password": lambda: _server("password"),
    "server-query": lambda: _server("query"),
    "server-copy_in": lambda: _server("copy_in"),
    "client-auth": lambda: _client("auth"),
    "client-query": lambda: _client("query"),
    "client-copy_out": lambda: _client("copy_out"),
}


# --- valid traffic to mutate -----------------------------------------------------------------


def _wire(*events: pg.Event) -> bytes:
    return b"".join(bytes(e) for e in events)


_ROWS = _wire(
    pg.RowDescription([pg.Field("a", 0, 0, 23, 4, -1, 0), pg.Field("b")]),
    pg.DataRow([b"1", None]),
    pg.DataRow([b"22", b"x" * 30]),
    pg.CommandComplete("SELECT 2"),
)
VALID: dict[str, list[bytes]] = {
    "server-startup": [
        _wire(pg.StartupMessage({"user": "u", "database": "d", "options": "-c x=1"})),
        _wire(pg.SSLRequest()) + _wire(pg.StartupMessage({"user": "u"}, pg.PROTOCOL_3_2)),
        _wire(pg.CancelRequest(7, b"k" * 32)),
    ],
    "server-password": [_wire(pg.PasswordMessage("secret")), _wire(pg.PasswordMessage(""))],
    "server-query": [
        _wire(pg.Query("select 1"), pg.Terminate()),
        _wire(
            pg.Parse("s", "select $1", (23,)),
            pg.Bind("", "s", (1,), (b"\0\0\0\1", None), (0,)),
            pg.Describe("P", ""),
            pg.Execute("", 5),
            pg.Close("S", "s"),
            pg.Flush(),
            pg.Sync(),
        ),
        _wire(pg.FunctionCall(1598, (1,), (b"ab",), 1), pg.CopyFail("no")),
    ],
    "server-copy_in": [
        _wire(pg.CopyData(b"1\tx\n"), pg.CopyData(b"2\ty\n"), pg.Sync(), pg.CopyDone()),
        _wire(pg.CopyData(b"1\n"), pg.CopyFail("abort"), pg.Query("select 1")),
    ],
    "client-auth": [
        _wire(
            pg.AuthenticationMD5Password(b"salt"),
            pg.AuthenticationOk(),
            pg.ParameterStatus("TimeZone", "UTC"),
            pg.BackendKeyData(42, b"abcd"),
            pg.ReadyForQuery("I"),
        ),
        _wire(
            pg.NegotiateProtocolVersion(pg.PROTOCOL_3_0, ["_pq_.x"]),
            pg.AuthenticationSASL(["SCRAM-SHA-256"]),
            pg.AuthenticationSASLContinue(b"r=abc,s=c2FsdA==,i=4096"),
            pg.AuthenticationSASLFinal(b"v=xyz"),
            pg.ErrorResponse([("S", "FATAL"), ("C", "28P01"), ("M", "bad")]),
        ),
    ],
    "client-query": [
        _ROWS + _wire(pg.ReadyForQuery("I")),
        _wire(pg.ParseComplete(), pg.BindComplete())
        + _ROWS
        + _wire(
            pg.NoticeResponse([("S", "NOTICE"), ("M", "n")]),
            pg.NotificationResponse(1, "ch", "p"),
            pg.ReadyForQuery("T"),
        ),
        _wire(
            pg.ErrorResponse([("S", "ERROR"), ("C", "22012"), ("M", "x")]),
            pg.ReadyForQuery("E"),
            pg.EmptyQueryResponse(),
            pg.ParameterDescription((23,)),
            pg.NoData(),
            pg.PortalSuspended(),
        ),
    ],
    "client-copy_out": [
        _wire(pg.CopyData(b"1\n"), pg.CopyDone(), pg.CommandComplete("COPY 1")),
        _wire(pg.CopyData(b"2\n"), pg.ErrorResponse([("S", "ERROR"), ("M", "x")])),
    ],
}


# --- feeding ---------------------------------------------------------------------------------

Result = tuple[list[pg.Event], tuple[str, str] | None]


def _answer_paused(conn: pg.Connection) -> None:
    if conn.state is pg.State.SSL_NEGOTIATION:
        conn.send(pg.SSLResponse(False))
    else:
        conn.send(pg.GSSENCResponse(False))


def feed(conn: pg.Connection, chunks: list[bytes], *, spans: bool = False) -> Result:
    """Feed ``chunks`` then EOF and read everything.

    Returns the events read (for spans: the decoded ones) and, if the peer's
    bytes were refused, the RemoteProtocolError's SQLSTATE and message. Any
    other exception propagates and fails the test: that is the invariant.
    """
    events: list[pg.Event] = []
    read = conn.next_span if spans else conn.next_event
    try:
        for chunk in [*chunks, b""]:
            conn.receive_data(chunk)
            while True:
                got = read()
                if got is pg.NEED_DATA:
                    # At most one partial message is held, within the limit.
                    assert len(conn.trailing_data) <= SMALL_LIMIT
                    break
                if got is pg.PAUSED:
                    _answer_paused(conn)
                    continue
                if isinstance(got, pg.Span):
                    events.extend(got.events)
                    continue
                assert isinstance(got, pg.Event)
                events.append(got)
                if isinstance(got, pg.ConnectionClosed):
                    return events, None
    except pg.RemoteProtocolError as exc:
        assert conn.state is pg.State.ERROR
        with pytest.raises(pg.RemoteProtocolError):
            conn.next_event()  # fails fast from now on
        return events, (exc.sqlstate, str(exc))
    raise AssertionError("EOF fed, but no ConnectionClosed")


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def check(phase: str, data: bytes, cuts: list[int]) -> None:
    """The invariant: same outcome whole, split and one byte at a time; spans agree."""
    whole = feed(PHASES[phase](), [data] if data else [])
    assert feed(PHASES[phase](), _split(data, cuts)) == whole
    assert feed(PHASES[phase](), [data[i : i + 1] for i in range(len(data))]) == whole
    span_events, span_error = feed(PHASES[phase](), _split(data, cuts), spans=True)
    if whole[1] is None:
        # Spans skip the bulk messages (rows from a server, COPY data from a client).
        bulk = (pg.DataRow, pg.CopyData) if phase.startswith("client") else (pg.CopyData,)
        assert span_error is None
        assert span_events == [e for e in whole[0] if type(e) not in bulk]


# --- hypothesis --------------------------------------------------------------------------


def budget(examples: int) -> settings:
    """A fixed example count: about 2 ms each, so the file takes ~15 s in ``make test``."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )


phases = st.sampled_from(sorted(PHASES))
cuts = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=8)


@budget(1000)
@given(phase=phases, data=st.binary(max_size=200), cuts=cuts)
def test_random_bytes_parse_or_raise_remote_protocol_error(
    phase: str, data: bytes, cuts: list[int]
) -> None:
    check(phase, data, cuts)


@budget(1500)
@given(phase=phases, data=st.binary(min_size=1, max_size=60), cuts=cuts)
def test_random_message_after_a_valid_header(phase: str, data: bytes, cuts: list[int]) -> None:
    # Pure random bytes rarely get past the type byte and length check;
    # give them a plausible header so the readers see random bodies.
    if phase == "server-startup":
        framed = _i32(len(data) + 8) + _u32(pg.PROTOCOL_3_0) + data
    else:
        framed = data[:1] + _i32(len(data) + 3) + data[1:]
    check(phase, framed, cuts)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid stream for some phase with a few bytes flipped, inserted or deleted."""
    phase = draw(phases)
    data = bytearray(draw(st.sampled_from(VALID[phase])))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "length", "byte"]))
        at = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and data:
            del data[at : at + draw(st.integers(min_value=1, max_value=4))]
        elif op == "length":
            # An Int32 at a random place: usually lands on a length or count.
            value = draw(st.sampled_from([-2, -1, 0, 3, 4, 5, 0x7FFF, 1 << 20, 1 << 30]))
            data[at : at + 4] = _i32(value)
        elif data:
            data[at] = draw(st.integers(min_value=0, max_value=255))
    return phase, bytes(data)


@budget(3000)
@given(case=mutated(), cuts=cuts)
def test_mutated_real_messages(case: tuple[str, bytes], cuts: list[int]) -> None:
    phase, data = case
    check(phase, data, cuts)


@pytest.mark.parametrize("phase", sorted(VALID))
def test_valid_streams_parse_cleanly(phase: str) -> None:
    # The mutation bases must be valid, or "mutated" would test nothing new.
    for data in VALID[phase]:
        events, error = feed(PHASES[phase](), [data])
        assert error is None, (phase, error)
        assert b"".join(bytes(e) for e in events if type(e) is not pg.ConnectionClosed) == data


# --- memory bound -------------------------------------------------------------------------

# Message types whose limit is max_message_size (not a fixed per-type cap).
LARGE = [("client-query", b"D"), ("client-query", b"T"), ("server-query", b"Q")]
LARGE += [("server-query", b"B"), ("server-copy_in", b"d")]


@pytest.mark.parametrize(("phase", "code"), LARGE)
@pytest.mark.parametrize("spans", [False, True])
def test_length_over_the_limit_raises_54000_before_the_body(
    phase: str, code: bytes, spans: bool
) -> None:
    conn = PHASES[phase]()
    header = code + _i32(1 << 30)
    read = conn.next_span if spans else conn.next_event
    for byte in header[:-1]:
        conn.receive_data(bytes([byte]))
        assert read() is pg.NEED_DATA
    conn.receive_data(header[-1:])
    with pytest.raises(pg.RemoteProtocolError) as info:
        read()
    assert info.value.sqlstate == "54000"


@pytest.mark.parametrize("role", [pg.CLIENT, pg.SERVER])
def test_length_header_claiming_1gib_allocates_nothing(role: pg.Role) -> None:
    # With PostgreSQL's own limit (MaxAllocSize - 1) a length just under 1 GiB
    # is legal, so we must wait for the body, without reserving room for it.
    conn = PHASES["client-query" if role is pg.CLIENT else "server-query"]()
    conn.max_message_size = pg.DEFAULT_MAX_MESSAGE_SIZE
    code = b"D" if role is pg.CLIENT else b"Q"
    tracemalloc.start()
    try:
        conn.receive_data(code + _i32(pg.DEFAULT_MAX_MESSAGE_SIZE))
        assert conn.next_event() is pg.NEED_DATA
        assert conn.next_span() is pg.NEED_DATA
        chunk = b"x" * 65536
        for _ in range(4):
            conn.receive_data(chunk)
            assert conn.next_event() is pg.NEED_DATA
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak {peak} bytes for 256 KiB received"


def test_startup_packet_claiming_1gib_is_refused_at_once() -> None:
    # Refused from the 4 length bytes alone. (PostgreSQL itself says 08P01
    # "invalid length of startup packet"; 54000 names the limit more precisely.)
    conn = pg.Connection(pg.SERVER)
    conn.receive_data(_i32(1 << 30))
    with pytest.raises(pg.RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.sqlstate in ("54000", "08P01")


@pytest.mark.parametrize("length", [-1, -(1 << 31), 0, 3])
@pytest.mark.parametrize("phase", ["client-query", "server-query"])
def test_length_below_4_is_a_protocol_violation(phase: str, length: int) -> None:
    conn = PHASES[phase]()
    conn.receive_data(b"D" + _i32(length))
    with pytest.raises(pg.RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.sqlstate == "08P01"
