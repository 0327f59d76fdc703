"""The admin console with real clients: psql and psycopg against the pooler on pg15.

As PgBouncer users do it: ``psql -d pgbouncer -c 'SHOW POOLS'`` (and ``-d pgcat``),
with ``admin_username``/``admin_password`` (``admin``/``admin`` in make_config).
"""

from __future__ import annotations

import pathlib
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import replace

import psycopg
import psycopg.errors
import pytest
from _pooler import Pooler, make_config, running
from test_pooler_clients import client_env

from pgsansio.config import load_config
from pgsansio.testing.cluster import TEST_DATABASE, TEST_USERS, Cluster

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.timeout(90),
    pytest.mark.usefixtures("pooler_frontend"),
]


def admin_psql(
    cluster: Cluster, p: Pooler, sql: str, *, database: str = "pgbouncer", password: str = "admin"
) -> subprocess.CompletedProcess[str]:
    env = client_env()
    env["PGPASSWORD"] = password
    argv = [str(cluster.bindir / "psql"), "-X", "-A", "-F", "|", "-v", "ON_ERROR_STOP=1"]
    argv += ["-h", "127.0.0.1", "-p", str(p.port), "-U", "admin", "-d", database, "-c", sql]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def table(result: subprocess.CompletedProcess[str]) -> list[dict[str, str]]:
    """psql -A output (header, rows, '(n rows)') as dicts."""
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line and not line.startswith("(")]
    header = lines[0].split("|")
    return [dict(zip(header, line.split("|"), strict=True)) for line in lines[1:]]


def user_dsn(p: Pooler, user: str = "md5_user") -> str:
    return p.dsn(user, TEST_USERS[user][1] or "")


def test_psql_show_pools_databases_version_on_both_names(pg15: Cluster) -> None:
    with running(make_config(pg15)) as p:
        with psycopg.connect(user_dsn(p), autocommit=True) as conn:
            conn.execute("select 1")
            pools = table(admin_psql(pg15, p, "SHOW POOLS"))
            mine = [r for r in pools if r["user"] == "md5_user"]
            assert mine and mine[0]["database"] == TEST_DATABASE
            assert mine[0]["cl_active"] == "1" and mine[0]["sv_idle"] == "1"
        (db,) = table(admin_psql(pg15, p, "SHOW DATABASES", database="pgcat"))
        assert db["name"] == TEST_DATABASE and db["port"] == str(pg15.port)
        (version,) = table(admin_psql(pg15, p, "SHOW VERSION"))
        assert version["version"].startswith("pgsansio ")
        bad = admin_psql(pg15, p, "SHOW VERSION", password="wrong")
        assert bad.returncode != 0 and "password authentication failed" in bad.stderr
        err = admin_psql(pg15, p, "FROB")
        assert err.returncode != 0 and 'invalid command "FROB"' in err.stderr


def test_stats_count_three_transactions_exactly(pg15: Cluster) -> None:
    with running(make_config(pg15)) as p:
        with psycopg.connect(user_dsn(p), autocommit=True) as conn:
            for i in range(3):
                conn.execute("select %s::int", [i])
        stats = {r["database"]: r for r in table(admin_psql(pg15, p, "SHOW STATS"))}
        assert stats[TEST_DATABASE]["total_xact_count"] == "3"
        assert stats[TEST_DATABASE]["total_query_count"] == "3"
        assert int(stats[TEST_DATABASE]["total_received"]) > 0
        assert int(stats[TEST_DATABASE]["total_query_time"]) > 0
        totals = {r["name"]: r["value"] for r in table(admin_psql(pg15, p, "SHOW TOTALS"))}
        assert totals["total_xact_count"] == "3"


def test_psycopg_admin_console_simple_protocol_and_clear_error_for_extended(
    pg15: Cluster,
) -> None:
    with running(make_config(pg15)) as p:
        dsn = p.dsn("admin", "admin", dbname="pgbouncer")
        with psycopg.connect(dsn, autocommit=True) as conn:
            # Binary results need the extended protocol: a clear error ...
            with pytest.raises(psycopg.errors.FeatureNotSupported, match="simple queries"):
                conn.execute("SHOW POOLS", binary=True)
            # ... and the session goes on with the simple protocol.
            assert conn.execute("SHOW VERSION").fetchone() is not None
            cur = psycopg.ClientCursor(conn)
            cur.execute("SHOW CLIENTS")
            assert cur.description is not None
            names = [c.name for c in cur.description]
            assert names[:5] == ["type", "user", "database", "replication", "state"]
            assert any(row[2] == "pgbouncer" for row in cur.fetchall())


def test_pause_waits_for_the_open_transaction_and_resume(pg15: Cluster) -> None:
    with running(make_config(pg15, pool_size=1)) as p:
        conn = psycopg.connect(user_dsn(p))
        conn.execute("select 1")  # a transaction is open (autocommit off)
        result: list[subprocess.CompletedProcess[str]] = []
        pauser = threading.Thread(target=lambda: result.append(admin_psql(pg15, p, "PAUSE")))
        pauser.start()
        time.sleep(1.0)
        assert not result  # PAUSE waits for the transaction
        conn.commit()
        pauser.join(30)
        assert result and result[0].returncode == 0, result
        state = {r["key"]: r["value"] for r in table(admin_psql(pg15, p, "SHOW STATE"))}
        assert state["paused"] == "yes"
        assert admin_psql(pg15, p, "RESUME").returncode == 0
        assert conn.execute("select 2").fetchone() == (2,)
        conn.close()


def test_kill_client_ends_that_session(pg15: Cluster) -> None:
    with running(make_config(pg15)) as p, psycopg.connect(user_dsn(p), autocommit=True) as conn:
        conn.execute("select 1")
        clients = table(admin_psql(pg15, p, "SHOW CLIENTS"))
        (mine,) = [r for r in clients if r["user"] == "md5_user"]
        assert admin_psql(pg15, p, f"KILL_CLIENT {mine['id']}").returncode == 0
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")


def test_reload_without_a_file_answers_with_the_reason(pg15: Cluster) -> None:
    with running(make_config(pg15)) as p:
        result = admin_psql(pg15, p, "RELOAD")
        assert result.returncode != 0
        assert "not started from a configuration file" in result.stderr


def test_shutdown_wait_for_clients_exits_when_the_last_client_leaves(pg15: Cluster) -> None:
    with running(make_config(pg15)) as p:
        conn = psycopg.connect(user_dsn(p), autocommit=True)
        assert admin_psql(pg15, p, "SHUTDOWN WAIT_FOR_CLIENTS").returncode == 0
        assert conn.execute("select 1").fetchone() == (1,)  # still served
        with pytest.raises(psycopg.OperationalError, match="shutting down"):
            psycopg.connect(user_dsn(p))
        assert p.wait(0.5) is None  # one client left: still running
        conn.close()
        assert p.wait(15) == 0


def toml(cluster: Cluster, pools: dict[str, int]) -> str:
    """A pgcat.toml for ``cluster``: one pool per entry (name -> md5_user's pool_size)."""
    text = (
        '[general]\nhost = "127.0.0.1"\nport = 6432\n'
        'admin_username = "admin"\nadmin_password = "admin"\n'
    )
    for name, size in pools.items():
        text += (
            f'\n[pools.{name}]\npool_mode = "transaction"\n'
            f'[pools.{name}.users.0]\nusername = "md5_user"\n'
            f'password = "{TEST_USERS["md5_user"][1]}"\npool_size = {size}\n'
            f'[pools.{name}.shards.0]\ndatabase = "{TEST_DATABASE}"\n'
            f'servers = [["127.0.0.1", {cluster.port}, "primary"]]\n'
        )
    return text


def test_reload_from_the_console_refuses_a_bad_file_and_keeps_unchanged_pools(
    pg15: Cluster, tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "pgcat.toml"
    path.write_text(toml(pg15, {TEST_DATABASE: 2}))
    config = load_config(str(path))
    config = replace(config, general=replace(config.general, port=0))
    with running(config, config_path=str(path)) as p:
        conn = psycopg.connect(user_dsn(p), autocommit=True)
        pid = conn.execute("select pg_backend_pid()").fetchone()
        path.write_text(toml(pg15, {TEST_DATABASE: 2}).replace("pool_size = 2", 'pool_size = "x"'))
        bad = admin_psql(pg15, p, "RELOAD")
        assert bad.returncode != 0 and "RELOAD failed" in bad.stderr
        assert "pool_size" in bad.stderr, bad.stderr
        path.write_text(toml(pg15, {TEST_DATABASE: 2, "second": 1}))
        assert admin_psql(pg15, p, "RELOAD").returncode == 0
        assert {r["database"] for r in table(admin_psql(pg15, p, "SHOW POOLS"))} == {
            TEST_DATABASE,
            "second",
        }
        # The unchanged pool kept its server connection.
        assert conn.execute("select pg_backend_pid()").fetchone() == pid
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_metrics_and_operator_signals_with_the_real_engine(pg15: Cluster) -> None:
    """/metrics through the frontend's second listener; SIGUSR1/SIGUSR2 pause and
    resume; SIGTERM waits for the last client (PgBouncer 1.23) on every frontend."""
    port = free_port()
    cfg = make_config(
        pg15,
        general={"enable_prometheus_exporter": True, "prometheus_exporter_port": port},
    )
    with running(cfg) as p:
        with psycopg.connect(user_dsn(p), autocommit=True) as conn:
            conn.execute("select 1")
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as answer:
                body = answer.read().decode()
                assert answer.headers["Content-Type"].startswith("text/plain")
            assert f'pgcat_stats_total_xact_count{{pool="{TEST_DATABASE}"' in body
            assert "pgcat_pools_sv_idle" in body

            p.signal(signal.SIGUSR1)
            deadline = time.monotonic() + 10
            while table(admin_psql(pg15, p, "SHOW STATE"))[1]["value"] != "yes":
                assert time.monotonic() < deadline, "SIGUSR1 did not pause the pooler"
                time.sleep(0.05)
            p.signal(signal.SIGUSR2)
            while table(admin_psql(pg15, p, "SHOW STATE"))[1]["value"] != "no":
                assert time.monotonic() < deadline, "SIGUSR2 did not resume the pooler"
                time.sleep(0.05)
            assert conn.execute("select 2").fetchone() == (2,)

            p.signal(signal.SIGTERM)
            time.sleep(0.3)
            assert conn.execute("select 3").fetchone() == (3,)  # still served
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(user_dsn(p), connect_timeout=5).close()
        assert p.wait(15) == 0
