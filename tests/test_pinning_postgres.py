"""Pinning with real PostgreSQL: session state survives transaction pooling.

Transaction mode, a pool of three servers, two other clients busy all along. For each
kind of session state (docs/transaction-pooling.md) a psycopg client creates it, uses
it in 21 statements (each would land on any of the three servers without pinning),
removes it and is shown unpinned, creates it again and leaves; then three clients,
holding all three servers at once, find none of it anywhere. The admin console and
/metrics show the pinned client and why. Last, a pool whose only server is pinned
fails its waiter with the connect_timeout error, which says the server is pinned.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import psycopg
import pytest
from _pooler import Pooler, make_config, running

from pgsansio.testing.cluster import Cluster

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.timeout(120),
    pytest.mark.usefixtures("pooler_frontend"),
]

USER = "md5_user"
ROUNDS = 21

# name -> (create, use (must return the same row every time while kept), remove)
KINDS: dict[str, tuple[list[str], str, list[str]]] = {
    "temp table": (
        ["CREATE TEMP TABLE pin_t (a int)", "INSERT INTO pin_t VALUES (1)"],
        "SELECT count(*) > 0 FROM pin_t",
        ["DISCARD TEMP"],
    ),
    "prepare": (["PREPARE pin_p AS SELECT 41 + 1"], "EXECUTE pin_p", ["DEALLOCATE pin_p"]),
    "advisory lock": (
        ["SELECT pg_advisory_lock(424242)"],
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        ["SELECT pg_advisory_unlock_all()"],
    ),
    "listen": (
        ["LISTEN pin_channel"],
        "SELECT array_agg(c) FROM pg_listening_channels() c",
        ["UNLISTEN *"],
    ),
    "with hold cursor": (
        ["BEGIN", "DECLARE pin_c CURSOR WITH HOLD FOR SELECT 1", "COMMIT"],
        "SELECT count(*) FROM pg_cursors WHERE name = 'pin_c'",
        ["CLOSE pin_c"],
    ),
    "set in a transaction": (
        ["BEGIN", "SET work_mem = '7MB'", "COMMIT"],
        "SHOW work_mem",
        ["RESET ALL"],
    ),
    "set_config": (
        ["SELECT set_config('work_mem', '9MB', false)"],
        "SHOW work_mem",
        ["RESET ALL"],
    ),
}

# Run on each of the pool's servers after the pinned client left: nothing of it left.
LEFTOVERS = (
    "SELECT (SELECT count(*) FROM pg_prepared_statements WHERE from_sql) + "
    "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) + "
    "(SELECT count(*) FROM pg_listening_channels()) + "
    "(SELECT count(*) FROM pg_cursors WHERE is_holdable) + "
    "(SELECT count(*) FROM pg_class WHERE oid = to_regclass('pg_temp.pin_t')), "
    "current_setting('work_mem'), pg_backend_pid()"
)


def admin(p: Pooler, sql: str) -> list[dict[str, object]]:
    with psycopg.connect(p.dsn("admin", "admin", dbname="pgbouncer"), autocommit=True) as a:
        cur = a.execute(sql)
        names = [d.name for d in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


@contextlib.contextmanager
def busy(p: Pooler, clients: int = 2) -> Iterator[list[int]]:
    """Other clients running short transactions all along; yields their count."""
    stop = threading.Event()
    done = [0]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with psycopg.connect(p.dsn(USER), autocommit=True) as conn:
                while not stop.is_set():
                    conn.execute("SELECT pg_backend_pid(), current_setting('work_mem')")
                    done[0] += 1
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        yield done
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors


def run(conn: psycopg.Connection[tuple[object, ...]], statements: list[str]) -> None:
    for sql in statements:
        conn.execute(sql)


def test_each_kind_of_session_state_keeps_its_server(pg15: Cluster) -> None:
    # listen_fanout off: LISTEN pins (with it on, test_listen_postgres: it does not).
    cfg = make_config(pg15, pool_size=3, users=(USER,), pool={"listen_fanout": False})
    with running(cfg) as p, busy(p) as done:
        for name, (create, use, remove) in KINDS.items():
            conn = psycopg.connect(p.dsn(USER), autocommit=True)
            try:
                run(conn, create)
                pids = set()
                answers = set()
                for _ in range(ROUNDS):
                    row = conn.execute(use).fetchone()
                    assert row is not None
                    answers.add(str(row[0]))
                    # A transaction of its own: without pinning, any of the servers.
                    pids.add(conn.execute("SELECT pg_backend_pid()").fetchone())
                assert len(pids) == 1, (name, pids)
                assert len(answers) == 1 and answers not in ({"0"}, {"None"}), (
                    name,
                    answers,
                )
                (me,) = [r for r in admin(p, "SHOW CLIENTS") if r["pinned"]]
                assert me["link"], (name, me)
                (pool,) = admin(p, "SHOW POOLS")
                assert pool["cl_pinned"] == 1
                # Removing the state unpins: the client shares the pool again.
                run(conn, remove)
                clients = admin(p, "SHOW CLIENTS")
                assert not any(r["pinned"] for r in clients), (name, clients)
                run(conn, create)  # ... and once more, then it leaves holding it
            finally:
                conn.close()
            # All three servers at once (each client in its own transaction): none of
            # them has anything of that client left.
            others = [psycopg.connect(p.dsn(USER)) for _ in range(3)]
            try:
                seen = {tuple(c.execute(LEFTOVERS).fetchone() or ()) for c in others}
                assert {row[:2] for row in seen} == {(0, "4MB")}, (name, seen)
                assert len({row[2] for row in seen}) == 3
            finally:
                for c in others:
                    c.close()
        assert done[0] > 0


def test_a_pool_of_pinned_servers_says_so(pg15: Cluster) -> None:
    cfg = make_config(pg15, pool_size=1, users=(USER,), user={"connect_timeout": 300})
    with running(cfg) as p, psycopg.connect(p.dsn(USER), autocommit=True) as holder:
        holder.execute("PREPARE pin_full AS SELECT 1")
        with psycopg.connect(p.dsn(USER), autocommit=True) as waiter:
            with pytest.raises(psycopg.errors.TooManyConnections) as info:
                waiter.execute("SELECT 1")
            assert "pinned" in str(info.value), str(info.value)
            holder.execute("DEALLOCATE pin_full")  # unpinned: the waiter gets the server
            assert waiter.execute("SELECT 2").fetchone() == (2,)
