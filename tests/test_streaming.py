"""A long client message handed out in pieces (``Connection.stream_min``).

A proxy forwards a long Query or CopyData to its server as it arrives instead of
holding it whole (PgBouncer's behaviour); the core hands out its start with the event
the state machine needs (``Query("")``: the text is never seen whole) and then the
rest as raw spans, resuming normal framing where the message ends.
"""

from __future__ import annotations

import struct

import pytest

import pgsansio as pg

LONG = 3000  # the message's length word in these tests


def _client_ready(stream_min: int = 1000) -> pg.Connection:
    conn = pg.Connection(pg.SERVER)
    conn.receive_data(bytes(pg.StartupMessage({"user": "u"})))
    assert isinstance(conn.next_event(), pg.StartupMessage)
    for event in (pg.AuthenticationOk(), pg.BackendKeyData(1, b"abcd"), pg.ReadyForQuery("I")):
        conn.send(event)
    conn.stream_min = stream_min
    return conn


def _long_query() -> bytes:
    sql = b"select 1 -- " + b"x" * (LONG - 4 - 13) + b"\0"
    data = b"Q" + struct.pack("!i", LONG) + sql
    assert len(data) == LONG + 1
    return data


def test_a_long_query_comes_out_in_pieces_then_framing_resumes() -> None:
    conn = _client_ready()
    data = _long_query() + bytes(pg.Query("select 2"))
    conn.receive_data(data[:700])
    first = conn.next_span()
    assert isinstance(first, pg.Span) and first.data == data[:700]
    assert [type(e) for e in first.events] == [pg.Query] and first.events[0].sql == ""
    assert conn.streaming and conn.state is pg.State.IN_QUERY
    assert conn.take_query(data[700:1400]) is None  # no fast path in the middle
    conn.receive_data(data[700:1400])
    middle = conn.next_span()
    assert isinstance(middle, pg.Span) and middle.data == data[700:1400] and not middle.events
    assert conn.next_span() is pg.NEED_DATA
    conn.receive_data(data[1400:])  # the end, and a whole Query after it
    last = conn.next_span()
    assert isinstance(last, pg.Span) and last.data == data[1400:]
    assert [e.sql for e in last.events] == ["select 2"]  # type: ignore[attr-defined]
    assert last.offsets == [LONG + 1 - 1400]
    assert not conn.streaming and conn.outstanding == 2


def test_a_long_message_may_exceed_max_message_size_but_not_postgres_limit() -> None:
    conn = _client_ready()
    conn.max_message_size = 2000  # what must be held whole is capped ...
    conn.receive_data(_long_query()[:100])
    assert isinstance(conn.next_span(), pg.Span)  # ... a streamed message is not
    held = _client_ready()
    held.max_message_size = 2000
    held.receive_data(b"P" + struct.pack("!i", LONG) + b"\0select")
    with pytest.raises(pg.RemoteProtocolError) as info:
        held.next_span()
    assert info.value.sqlstate == "54000"


def test_eof_in_the_middle_of_a_streamed_message_is_an_error() -> None:
    conn = _client_ready()
    conn.receive_data(_long_query()[:100])
    assert isinstance(conn.next_span(), pg.Span)
    conn.receive_data(b"")
    with pytest.raises(pg.RemoteProtocolError, match="middle of a message"):
        conn.next_span()


def test_short_messages_and_stream_min_zero_are_framed_whole() -> None:
    conn = _client_ready(stream_min=0)
    conn.receive_data(_long_query()[:100])
    assert conn.next_span() is pg.NEED_DATA and conn.buffered == 100
    short = _client_ready(stream_min=LONG + 1)
    short.receive_data(_long_query()[:100])
    assert short.next_span() is pg.NEED_DATA


def test_long_copy_data_is_streamed_during_copy_in() -> None:
    conn = _client_ready()
    conn.receive_data(bytes(pg.Query("copy t from stdin")))
    assert isinstance(conn.next_span(), pg.Span)
    conn.send(pg.CopyInResponse(0, (0,)))
    row = b"d" + struct.pack("!i", LONG) + b"r" * (LONG - 4)
    conn.receive_data(row[:500])
    first = conn.next_span()
    assert isinstance(first, pg.Span) and first.bulk == 1 and not first.events
    conn.receive_data(row[500:] + bytes(pg.CopyDone()))
    rest = conn.next_span()
    assert isinstance(rest, pg.Span) and [type(e) for e in rest.events] == [pg.CopyDone]
