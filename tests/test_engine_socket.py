"""Reliability at the socket, in the engine alone: early refusals (the SSLRequest is
answered before the error), the login timeout, the buffer caps, listen_backlog reloads.

The same behaviours through real sockets on every frontend are in
tests/test_reliability.py.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from test_engine import DB, Client, World, config, errors, logged_in

from pgsansio.engine import Log
from pgsansio.protocol import (
    CLIENT,
    Connection,
    Query,
    SSLRequest,
    SSLResponse,
    StartupMessage,
)


def raw_client(w: World) -> Client:
    """A client that has connected and sent nothing yet."""
    c = Client.__new__(Client)
    w._next_cid += 1
    c.world, c.cid, c.conn, c.user = w, w._next_cid, Connection(CLIENT), "alice"
    w.apply(w.engine.client_connected(c.cid, "test", w.now))
    return c


def test_over_max_client_conn_the_ssl_request_is_answered_first() -> None:
    w = World(config(general_max_client_conn=1))
    logged_in(w)
    late = raw_client(w)
    assert not late.events() and not late.closed  # nothing written on accept
    late.send(SSLRequest())
    assert late.events() == [SSLResponse(False)]
    late.send(StartupMessage({"user": "alice", "database": DB}))
    got = errors(late.events())
    assert [e.sqlstate for e in got] == ["53300"] and late.closed


def test_a_refused_client_still_has_client_login_timeout() -> None:
    w = World(config(general_max_client_conn=1, general_client_login_timeout=2000))
    logged_in(w)
    late = raw_client(w)
    w.advance(2.1)
    said = bytes(w.inbox.get(late.cid, b""))
    assert late.closed and said[:1] == b"E" and b"08006" in said


def test_a_client_yet_to_log_in_does_not_hold_a_shutdown_up() -> None:
    """SIGINT: idle clients leave at once and the pooler exits, as before."""
    w = World(config())
    logged_in(w)
    raw_client(w)  # connected, never sends its startup packet
    w.apply(w.engine.shutdown(w.now))
    assert w.exited


def test_during_a_shutdown_a_new_client_is_refused_after_its_startup_packet() -> None:
    w = World(config())
    a = logged_in(w)
    a.query("begin")  # keeps the pooler up while it drains
    w.apply(w.engine.shutdown(w.now))
    late = raw_client(w)
    late.send(SSLRequest())
    assert late.events() == [SSLResponse(False)]
    late.send(StartupMessage({"user": "alice", "database": DB}))
    assert [e.sqlstate for e in errors(late.events())] == ["57P01"]


def test_a_client_waiting_for_a_server_may_not_pile_up_more_than_its_limit() -> None:
    w = World(config(general_client_buffer_limit=100_000))
    a = logged_in(w)
    a.query("begin")  # pool_size 1: b waits for a's server
    b = logged_in(w)
    b.send(Query("select 1"))
    assert not b.closed
    b.send(*(Query("select '" + "x" * 1000 + "'") for _ in range(120)))
    (error,) = errors(b.events())
    assert error.sqlstate == "54000" and "client_buffer_limit" in error.message
    assert b.closed and not a.closed


def test_a_message_over_client_buffer_limit_is_refused_at_its_header() -> None:
    w = World(config(general_client_buffer_limit=100_000))
    a = logged_in(w)
    a.send_raw(b"Q" + (200_000).to_bytes(4, "big") + b"select")
    (error,) = errors(a.events())
    assert error.sqlstate == "54000" and "client_buffer_limit" in error.message
    assert a.closed


def test_changing_listen_backlog_on_reload_is_logged_as_needing_a_restart() -> None:
    cfg = config()
    w = World(cfg)
    new = replace(cfg, general=replace(cfg.general, listen_backlog=64))
    effects = w.engine.reload(new, w.now)
    said = [e.message for e in effects if isinstance(e, Log) and e.level >= logging.WARNING]
    assert any("listen_backlog changed" in m and "restarted" in m for m in said), said
