"""LISTEN/NOTIFY in transaction mode without pinning, against real PostgreSQL.

50 asyncpg clients listen on 5 channels through a pool of 2 servers (they would need
50 servers if each kept one); a sender notifies through the pooler as well. Every
notification must reach exactly the listeners of its channel, each once. Then the
pooler's listener connection is killed with pg_terminate_backend: it comes back,
LISTENs again, and the next notifications arrive as before. See
pgsansio.engine._listen.
"""

from __future__ import annotations

import asyncio
import pathlib
import signal
import socket
import time
import urllib.request
from collections import Counter

import asyncpg
import psycopg
import pytest
from _pooler import Pooler, make_config, running

from pgsansio.testing.cluster import TEST_DATABASE, TEST_USERS, Cluster

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.timeout(120),
    pytest.mark.usefixtures("pooler_frontend"),
]

USER = "trust_user"
CLIENTS = 50
CHANNELS = [f"chan_{i}" for i in range(5)]
PER_CHANNEL = 10


def _listener_pids(cluster: Cluster) -> list[int]:
    with psycopg.connect(cluster.dsn(dbname=TEST_DATABASE), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s AND state = 'idle' "
            "AND query LIKE 'LISTEN \"chan_%%'",
            (USER,),
        ).fetchall()
    return [r[0] for r in rows]


def _kill(cluster: Cluster, pid: int) -> None:
    with psycopg.connect(cluster.dsn(dbname=TEST_DATABASE), autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def _scenario(p: Pooler, cluster: Cluster) -> tuple[int, int, int]:
    got: list[Counter[tuple[str, str]]] = [Counter() for _ in range(CLIENTS)]
    dsn = f"postgresql://{USER}@127.0.0.1:{p.port}/{TEST_DATABASE}"
    listeners = [await asyncpg.connect(dsn, statement_cache_size=0) for _ in range(CLIENTS)]
    sender = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        for i, conn in enumerate(listeners):

            def record(_c: object, _pid: int, channel: str, payload: str, i: int = i) -> None:
                got[i][(channel, payload)] += 1

            await conn.add_listener(CHANNELS[i % len(CHANNELS)], record)

        async def batch(tag: str) -> int:
            for n in range(PER_CHANNEL):
                for channel in CHANNELS:
                    await sender.execute(f"SELECT pg_notify('{channel}', '{tag}-{n}')")
            want = CLIENTS * PER_CHANNEL
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                have = sum(1 for c in got for (_, payload) in c if payload.startswith(tag))
                if have >= want:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # anything more (a duplicate) would arrive now
            return want

        first = await batch("a")
        # Other clients keep working meanwhile: the two servers are free for them.
        assert await sender.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0

        (pid,) = await asyncio.to_thread(_listener_pids, cluster)
        await asyncio.to_thread(_kill, cluster, pid)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = await asyncio.to_thread(_listener_pids, cluster)
            if pids and pids != [pid]:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the listener connection did not come back")
        second = await batch("b")

        for i, counts in enumerate(got):
            mine = CHANNELS[i % len(CHANNELS)]
            want = {(mine, f"{t}-{n}") for t in "ab" for n in range(PER_CHANNEL)}
            assert set(counts) == want, (i, set(counts) ^ want)
            assert max(counts.values()) == 1, (i, counts.most_common(3))
        total = sum(sum(c.values()) for c in got)

        # DISCARD ALL and UNLISTEN * end a client's listening; the others go on.
        await listeners[0].execute("DISCARD ALL")
        await listeners[5].execute("UNLISTEN *")
        await sender.execute(f"SELECT pg_notify('{CHANNELS[0]}', 'after')")
        others = [i for i in range(10, CLIENTS, len(CHANNELS))]
        deadline = time.monotonic() + 10
        while not all(got[i][(CHANNELS[0], "after")] for i in others):
            assert time.monotonic() < deadline, "the last notification did not arrive"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        assert got[0][(CHANNELS[0], "after")] == got[5][(CHANNELS[0], "after")] == 0
        return first + second, total, sum(sum(c.values()) for c in got)
    finally:
        for conn in [*listeners, sender]:
            await conn.close()


def test_notifications_reach_exactly_their_listeners(pg15: Cluster) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    general = {"enable_prometheus_exporter": True, "prometheus_exporter_port": metrics_port}
    cfg = make_config(pg15, pool_size=2, users=(USER,), general=general)
    with running(cfg) as p:
        want, delivered, in_all = asyncio.run(_scenario(p, pg15))
        assert delivered == want == 2 * CLIENTS * PER_CHANNEL
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = answer.read().decode()
        labels = f'{{pool="{TEST_DATABASE}",user="{USER}"}}'
        assert f"pgcat_listen_notifications_delivered{labels} {in_all}" in body
        assert f"pgcat_listen_connected{labels} 1" in body
        with psycopg.connect(p.dsn("admin", "admin", dbname="pgbouncer"), autocommit=True) as a:
            pools = a.execute("SHOW POOLS").fetchall()
            assert all(row[-1] == 0 for row in pools)  # cl_pinned: nobody pinned


RELOAD_USER = "md5_user"


def _listener_databases(cluster: Cluster) -> list[str]:
    with psycopg.connect(cluster.dsn(dbname=TEST_DATABASE), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_stat_activity WHERE usename = %s AND query LIKE 'LISTEN%%'",
            (RELOAD_USER,),
        ).fetchall()
    return [r[0] for r in rows]


def _notify_and_receive(p: Pooler, listener: psycopg.Connection[tuple[object]], tag: str) -> bool:
    with psycopg.connect(p.dsn(RELOAD_USER), autocommit=True) as sender:
        sender.execute(f"NOTIFY reload_chan, '{tag}'")
    got = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    return got == [tag]


def test_the_listener_follows_a_reload(pg15: Cluster, tmp_path: pathlib.Path) -> None:
    """A reload that points the pool at another database (notifications are per
    database, as they would be per server) moves the listener there: a NOTIFY sent
    through the pooler after the reload reaches the client that listened before it."""
    other = "listen_reload"
    pg15.create_database(other)
    path = tmp_path / "pgcat.toml"
    path.write_text(
        f"""[general]
host = "127.0.0.1"
port = 0
admin_username = "admin"
admin_password = "admin"

[pools.{TEST_DATABASE}]
pool_mode = "transaction"

[pools.{TEST_DATABASE}.users.0]
username = "{RELOAD_USER}"
password = "{TEST_USERS[RELOAD_USER][1]}"
pool_size = 2

[pools.{TEST_DATABASE}.shards.0]
database = "{other}"
servers = [["127.0.0.1", {pg15.port}, "primary"]]
"""
    )
    try:
        cfg = make_config(pg15, pool_size=2, users=(RELOAD_USER,))
        with (
            running(cfg, config_path=str(path)) as p,
            psycopg.connect(p.dsn(RELOAD_USER), autocommit=True) as listener,
        ):
            listener.execute("LISTEN reload_chan")
            assert _notify_and_receive(p, listener, "before")
            assert _listener_databases(pg15) == [TEST_DATABASE]
            p.signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while _listener_databases(pg15) != [other]:
                assert time.monotonic() < deadline, _listener_databases(pg15)
                time.sleep(0.05)
            assert _notify_and_receive(p, listener, "after")
    finally:
        pg15.execute(f"DROP DATABASE IF EXISTS {other} WITH (FORCE)")
