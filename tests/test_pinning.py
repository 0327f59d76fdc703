"""Pinning (pgsansio.engine._pinning): the statement scan, and the engine on fake servers.

The scan decides from the statement text alone what creates or removes session state;
the engine tests check what follows from it: the client keeps its server, an error
keeps the pin, what removes the state unpins only once it succeeded, SHOW CLIENTS,
/metrics and the log say why. Real PostgreSQL: tests/test_pinning_postgres.py.
"""

from __future__ import annotations

import pytest
from test_admin import admin, show
from test_engine import Client, World, config, logged_in, rows
from test_metrics import scrape

from pgsansio.engine._pinning import PinState, _ops, _statements, _worth_reading
from pgsansio.protocol import ErrorResponse, Query


def ops(sql: str, *, followed: bool = True, reused: bool = False) -> list[tuple[str, str, str]]:
    return [op for s in _statements(sql) for op in _ops(s, followed=followed, reused=reused)]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("CREATE TEMP TABLE t (a int)", [("+", "temp", "")]),
        ("create global temporary table t (a int)", [("+", "temp", "")]),
        ("SELECT * INTO TEMP x FROM y", [("+", "temp", "")]),
        ("CREATE TABLE pg_temp.x (a int)", [("+", "temp", "")]),
        ("PREPARE p (int) AS SELECT $1", [("+", "prepare", "p")]),
        ('PREPARE "P" AS SELECT 1', [("+", "prepare", "P")]),
        ("PREPARE TRANSACTION 'x'", []),
        ("DEALLOCATE PREPARE p", [("-", "prepare", "p")]),
        ("DEALLOCATE ALL", [("-", "prepare", "")]),
        (
            "SELECT pg_advisory_lock(1), pg_try_advisory_lock_shared(2)",
            [("+", "advisory_lock", "")] * 2,
        ),
        ("SELECT pg_advisory_xact_lock(1)", []),
        ("SELECT pg_advisory_unlock(1)", [("-", "advisory_lock", "1")]),
        ("SELECT pg_advisory_unlock_all()", [("-", "advisory_lock", "")]),
        ("LISTEN jobs", [("+", "listen", "jobs")]),
        ("UNLISTEN *", [("-", "listen", "")]),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", [("+", "hold_cursor", "c")]),
        ("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1", []),
        ("CLOSE ALL", [("-", "hold_cursor", "")]),
        ("SET ROLE bob", [("+", "set", "role")]),
        ("RESET ROLE", [("-", "set", "role")]),
        ("SET SESSION AUTHORIZATION bob", [("+", "set", "session authorization")]),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            [("+", "set", "session characteristics")],
        ),
        ("SET work_mem = '4MB'", []),  # followed: replayed on every server
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", []),  # followed too
        ("SET LOCAL work_mem = '4MB'", []),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", []),
        ("SET TIME ZONE 'UTC'", []),  # reported: followed through ParameterStatus
        ("SET application_name = 'x'", []),
        ("SELECT set_config('work_mem', '4MB', false)", [("+", "set", "set_config()")]),
        ("SELECT set_config('work_mem', '4MB', true)", []),
        ("SELECT set_config('work_mem', '4MB', $1)", [("+", "set", "set_config()")]),
        ("DISCARD ALL", [("-", "all", "")]),
        ("DISCARD TEMP", [("-", "temp", "")]),
        ("DISCARD PLANS", []),
        # Words in strings and comments are not statements.
        ("SELECT 'CREATE TEMP TABLE x' -- LISTEN y", []),
        ("SELECT 1 /* PREPARE p AS SELECT 1 */", []),
        ("SELECT * FROM t OFFSET 3", []),
        # A DO block's body is code: its lock pins.
        ("DO $$ BEGIN PERFORM pg_advisory_lock(5); END $$", [("+", "advisory_lock", "")]),
    ],
)
def test_the_scan(sql: str, expected: list[tuple[str, str, str]]) -> None:
    assert ops(sql) == expected


def test_a_set_the_pooler_cannot_follow_pins() -> None:
    assert ops("SET work_mem = '4MB'", followed=False) == [("+", "set", "work_mem")]
    assert ops("SET work_mem = '4MB'; SELECT 1", followed=False) == [("+", "set", "work_mem")]


def test_reused_statements_never_unpin_and_their_locks_are_not_counted() -> None:
    assert ops("SELECT pg_advisory_unlock_all()", reused=True) == []
    st = PinState()
    st.pending.extend(ops("SELECT pg_advisory_lock(1)", reused=True))
    st.pending.extend(ops("SELECT pg_advisory_unlock(1)"))
    st.settle(succeeded=True)
    assert st.pinned and st.describe() == "advisory lock"  # only unlock_all ends it
    st.pending.extend(ops("SELECT pg_advisory_unlock_all()"))
    st.settle(succeeded=True)
    assert not st.pinned


def test_order_within_a_request_counts() -> None:
    st = PinState()
    st.pending.extend(ops("DISCARD TEMP; CREATE TEMP TABLE t (a int)"))
    st.settle(succeeded=True)
    assert st.temp
    st.pending.extend(ops("CREATE TEMP TABLE u (a int); DISCARD ALL"))
    st.settle(succeeded=True)
    assert not st.pinned


def set_in_transaction(c: Client, sql: str) -> None:
    for q in ("BEGIN", sql, "COMMIT"):
        c.query(q)


def test_the_client_keeps_its_server_until_the_state_is_gone() -> None:
    w = World(config(pool_size=1))
    a, b = logged_in(w), logged_in(w)
    set_in_transaction(a, "SET work_mem = '5MB'")  # not followed: pinned
    set_in_transaction(a, "SET statement_timeout = 77")
    b.send(Query("select 2"))
    assert b.events() == []  # A keeps the only server
    (row,) = [r for r in show(admin(w), "CLIENTS") if r["pinned"]]
    assert row["pinned"] == "SET statement_timeout, work_mem"
    (pool,) = [r for r in show(admin(w), "POOLS") if r["user"] == "alice"]
    assert pool["cl_pinned"] == "1"
    metrics = scrape(w, b"GET /metrics HTTP/1.1\r\n\r\n").decode()
    assert 'pgcat_clients_pinned{pool="app",user="alice",reason="set"} 1' in metrics
    assert 'pgcat_pools_cl_pinned{pool="app",user="alice"} 1' in metrics
    a.query("RESET work_mem")
    assert b.events() == []  # statement_timeout is still set
    assert rows(a.query("SHOW statement_timeout")) == [("77",)]
    a.query("RESET statement_timeout")
    assert rows(b.events()) == [("2",)]
    pinned = [line for line in w.logs if "pinned to server" in line]
    assert len(pinned) == 1 and "set work_mem" in pinned[0]
    assert any("unpinned" in line for line in w.logs)


def test_a_failed_unpinning_statement_keeps_the_pin() -> None:
    w = World(config(pool_size=1))
    a, b = logged_in(w), logged_in(w)
    set_in_transaction(a, "SET work_mem = '5MB'")
    a.query("BEGIN")
    assert any(isinstance(e, ErrorResponse) for e in a.query("DISCARD ALL"))  # in a block
    a.query("ROLLBACK")
    b.send(Query("select 2"))
    assert b.events() == []
    assert rows(a.query("SHOW work_mem")) == [("5MB",)]
    a.close()  # leaving ends the pin; the server is reset for B
    assert rows(b.events()) == [("2",)]
    assert rows(b.query("SHOW work_mem")) == [("4MB",)]


def test_off_means_pgbouncer_behaviour() -> None:
    w = World(config(pool_size=1, pool_pin_session_state=False))
    a, b = logged_in(w), logged_in(w)
    a.query("CREATE TEMP TABLE t (a int)")
    assert rows(b.query("select 2")) == [("2",)]
    assert not any("pinned" in line for line in w.logs)


def test_a_listen_the_listener_cannot_confirm_fails_cleanly() -> None:
    """listen_fanout: a simple-query LISTEN is answered only once the pool's listener
    LISTENs; the fake server refuses LISTEN, so after connect_timeout the client gets
    08006 and goes on as before, unpinned."""
    w = World(config(pool_size=1, connect_timeout=500))
    a, b = logged_in(w), logged_in(w)
    a.send(Query("LISTEN jobs"))
    assert a.events() == []  # waiting for the listener
    a.send(Query("select 1"))  # queued behind the LISTEN
    w.advance(0.6)
    got = a.events()
    errs = [e for e in got if isinstance(e, ErrorResponse)]
    assert [e.sqlstate for e in errs] == ["08006"]
    assert rows(got) == [("1",)]
    assert rows(b.query("select 2")) == [("2",)]  # nobody pinned
    assert any("LISTEN not confirmed" in line for line in w.logs)


@pytest.mark.parametrize(
    ("sql", "worth"),
    [
        ("update pgbench_accounts set abalance = abalance + 1 where aid = 5;", False),
        ("select * from t offset 1", False),
        ("set work_mem = 1", True),
        ("(set x = 1)", True),
        ("select 1; reset all", True),
        ("select set_config('a', 'b', false)", True),
        ("/* hint */ set role x", True),
        ("create temp table t (a int)", True),
    ],
)
def test_the_quick_look_reads_only_what_may_matter(sql: str, *, worth: bool) -> None:
    """UPDATE ... SET is the common query with "set" in it: not read further."""
    assert _worth_reading(sql) is worth
