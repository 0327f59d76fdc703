"""PgBouncer's limits and timeouts, from a pgbouncer.ini, with real clients on a real
PostgreSQL: query_wait_timeout, the reserve pool, max_db_connections,
max_user_connections and query_timeout (PgBouncer's error texts and SQLSTATEs).
"""

from __future__ import annotations

import pathlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from _pooler import Pooler, running

from pgsansio.config import load_config
from pgsansio.testing.cluster import TEST_DATABASE, Cluster


@contextmanager
def bouncer(
    pg15: Cluster, tmp_path: pathlib.Path, settings: str, db: str = ""
) -> Iterator[Pooler]:
    (tmp_path / "userlist.txt").write_text(
        '"md5_user" "md5-secret"\n"password_user" "secret-pw"\n'
    )
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(
        f"[databases]\n{TEST_DATABASE} = host=127.0.0.1 port={pg15.port} {db}\n"
        f"other = host=127.0.0.1 port={pg15.port} dbname=postgres {db}\n"
        "[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = 0\nunix_socket_dir =\n"
        f"auth_file = userlist.txt\npool_mode = transaction\n{settings}"
    )
    with running(load_config(ini), config_path=str(ini)) as p:
        yield p


def connect(p: Pooler, user: str = "md5_user", db: str = TEST_DATABASE) -> psycopg.Connection:
    pw = {"md5_user": "md5-secret", "password_user": "secret-pw"}[user]
    dsn = f"host=127.0.0.1 port={p.port} user={user} password={pw} dbname={db}"
    return psycopg.connect(dsn, autocommit=True, connect_timeout=10)


def test_query_wait_timeout(pg15: Cluster, tmp_path: pathlib.Path) -> None:
    settings = "default_pool_size = 1\nquery_wait_timeout = 0.5\n"
    with bouncer(pg15, tmp_path, settings) as p, connect(p) as holder, connect(p) as waiter:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")  # holds the only server
        start = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as info:
            waiter.execute("SELECT 1")
        assert 0.4 < time.monotonic() - start < 5
        assert "query_wait_timeout" in str(info.value)
        assert info.value.sqlstate == "08P01"
        holder.execute("COMMIT")


def test_reserve_pool(pg15: Cluster, tmp_path: pathlib.Path) -> None:
    settings = "default_pool_size = 1\nreserve_pool_size = 1\nreserve_pool_timeout = 0.3\n"
    with (
        bouncer(pg15, tmp_path, settings) as p,
        connect(p) as holder,
        connect(p) as waiter,
        connect(p) as third,
    ):
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        start = time.monotonic()
        waiter.execute("BEGIN")
        waiter.execute("SELECT 1")  # a reserve connection, after reserve_pool_timeout
        assert time.monotonic() - start >= 0.25
        # The reserve is used up (pool_size 1 + 1): the third waits for a release
        done: list[float] = []
        t = threading.Thread(target=lambda: done.append(third.execute("SELECT 1") and 1))
        t.start()
        time.sleep(0.6)
        assert not done
        waiter.execute("COMMIT")
        t.join(5)
        assert done
        holder.execute("COMMIT")


def test_max_db_connections_hands_over(pg15: Cluster, tmp_path: pathlib.Path) -> None:
    with (
        bouncer(pg15, tmp_path, "query_wait_timeout = 5\n", db="max_db_connections=1") as p,
        connect(p) as one,
        connect(p, "password_user") as two,
    ):
        one.execute("BEGIN")
        one.execute("SELECT 1")  # the database's only connection
        done: list[int] = []
        t = threading.Thread(target=lambda: done.append(len(two.execute("SELECT 1").fetchall())))
        t.start()
        time.sleep(0.5)
        assert not done  # another user's pool, but the same database: it waits
        one.execute("COMMIT")  # released: handed over to the other user's pool
        t.join(5)
        assert done == [1]
        sql = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'pgsansio_test' "
            "AND usename IN ('md5_user', 'password_user')"
        )
        deadline = time.monotonic() + 5  # a closed backend leaves the view soon after
        while int(pg15.execute(sql)) != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert int(pg15.execute(sql)) == 1


def test_max_user_connections(pg15: Cluster, tmp_path: pathlib.Path) -> None:
    settings = "max_user_connections = 1\nquery_wait_timeout = 0.5\n"
    with bouncer(pg15, tmp_path, settings) as p:
        with connect(p) as here, connect(p, db="other") as there:
            here.execute("BEGIN")
            here.execute("SELECT 1")
            with pytest.raises(psycopg.OperationalError, match="query_wait_timeout"):
                there.execute("SELECT 1")  # same user, another database: capped
            here.execute("COMMIT")
        with connect(p, db="other") as there:  # the idle one is evicted to make room
            assert there.execute("SELECT current_database()").fetchone() == ("postgres",)


def test_query_timeout(pg15: Cluster, tmp_path: pathlib.Path) -> None:
    with bouncer(pg15, tmp_path, "query_timeout = 0.5\n") as p:
        with connect(p) as conn:
            start = time.monotonic()
            with pytest.raises(psycopg.OperationalError) as info:
                conn.execute("SELECT pg_sleep(5)")
            assert time.monotonic() - start < 4
            assert "query timeout" in str(info.value)
            assert info.value.sqlstate == "08P01"
        with connect(p) as conn:  # the pool serves the next client
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_client_idle_timeout(pg15: Cluster, tmp_path: pathlib.Path) -> None:
    settings = "client_idle_timeout = 0.6\n"
    with bouncer(pg15, tmp_path, settings) as p, connect(p) as idle, connect(p) as busy:
        busy.execute("SELECT pg_sleep(1.2)")  # running, not idle: kept
        assert busy.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError) as info:
            idle.execute("SELECT 1")
        assert "client_idle_timeout" in str(info.value)
        assert info.value.sqlstate == "08P01"


def test_query_timeout_in_a_transaction(pg15: Cluster, tmp_path: pathlib.Path) -> None:
    """PgBouncer's clock runs from the last request until the server is idle outside a
    transaction: a client idle in a transaction is let go too (checked side by side)."""
    with bouncer(pg15, tmp_path, "query_timeout = 0.5\n") as p, connect(p) as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
        time.sleep(1)
        with pytest.raises(psycopg.OperationalError, match="query timeout"):
            conn.execute("SELECT 1")


def test_application_name_add_host(pg15: Cluster, tmp_path: pathlib.Path) -> None:
    with bouncer(pg15, tmp_path, "application_name_add_host = 1\n") as p:
        dsn = f"host=127.0.0.1 port={p.port} user=md5_user password=md5-secret"
        with psycopg.connect(dsn, dbname=TEST_DATABASE, application_name="app") as conn:
            row = conn.execute("SELECT current_setting('application_name')").fetchone()
            assert row is not None and row[0].startswith("app - 127.0.0.1:")


def test_database_server_settings(pg15: Cluster, tmp_path: pathlib.Path) -> None:
    """[databases] client_encoding/datestyle/timezone reach the server at login."""
    db = "timezone=Asia/Tokyo datestyle='SQL, DMY'"
    with bouncer(pg15, tmp_path, "", db=db) as p, connect(p) as conn:
        row = conn.execute("SELECT current_setting('TimeZone'), current_setting('DateStyle')")
        assert row.fetchone() == ("Asia/Tokyo", "SQL, DMY")
