"""Unix sockets on every frontend: clients in through ``<dir>/.s.PGSQL.<port>`` (psql
``-h /the/dir``), servers reached through PostgreSQL's own socket directory, and the
console open without a password to a client running as the pooler's OS user
(SO_PEERCRED), as in PgBouncer when ``admin_users`` is not set.
"""

from __future__ import annotations

import os
import pathlib
import socket
import stat
import subprocess

import psycopg
import pytest
from _pooler import running
from test_pooler_clients import client_env

from pgsansio.config import load_config
from pgsansio.testing.cluster import TEST_DATABASE, Cluster

pytestmark = pytest.mark.usefixtures("pooler_frontend")


def _psql(
    pg15: Cluster,
    directory: pathlib.Path,
    port: int,
    *,
    user: str,
    db: str,
    sql: str,
    pw: str = "",
) -> subprocess.CompletedProcess[str]:
    env = client_env()
    if pw:
        env["PGPASSWORD"] = pw
    argv = [str(pg15.bindir / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    argv += ["-h", str(directory), "-p", str(port), "-U", user, "-d", db, "-c", sql]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_unix_socket_in_and_out(pg15: Cluster, tmp_path: pathlib.Path) -> None:
    assert pg15.socket_dir is not None, "the cluster's socket directory path is too long"
    sockets = tmp_path / "s"
    sockets.mkdir()
    (tmp_path / "userlist.txt").write_text('"md5_user" "md5-secret"\n')
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"{TEST_DATABASE} = host={pg15.socket_dir} port={pg15.port}\n"
        "[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = 0\nauth_file = userlist.txt\n"
        f"unix_socket_dir = {sockets}\nunix_socket_mode = 0770\npool_mode = transaction\n"
    )
    with running(load_config(ini), config_path=str(ini)) as p:
        path = sockets / f".s.PGSQL.{p.port}"
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o770
        # A client in over the Unix socket, to a server reached over PostgreSQL's socket
        sql = "SELECT inet_server_addr() IS NULL, current_user"
        out = _psql(
            pg15, sockets, p.port, user="md5_user", db=TEST_DATABASE, sql=sql, pw="md5-secret"
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "t|md5_user"
        bad = _psql(pg15, sockets, p.port, user="md5_user", db=TEST_DATABASE, sql=sql, pw="wrong")
        assert "password authentication failed" in bad.stderr
        # The console: no admin_users, and we run as the pooler's OS user
        show = _psql(pg15, sockets, p.port, user="anyone", db="pgbouncer", sql="SHOW VERSION")
        assert show.returncode == 0, show.stderr
        assert "pgsansio" in show.stdout
        # ... which only the Unix socket proves: over TCP the same login fails
        env = client_env()
        argv = [str(pg15.bindir / "psql"), "-X", "-w", "-h", "127.0.0.1", "-p", str(p.port)]
        argv += ["-U", "anyone", "-d", "pgbouncer", "-c", "SHOW VERSION"]
        tcp = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert tcp.returncode != 0
    assert not os.path.exists(path)  # removed at exit


def test_several_listen_addresses(pg15: Cluster, tmp_path: pathlib.Path) -> None:
    """listen_addr = 127.0.0.1,::1 listens on both (and * on every interface)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "userlist.txt").write_text('"md5_user" "md5-secret"\n')
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(
        f"[databases]\n{TEST_DATABASE} = host=127.0.0.1 port={pg15.port}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1, ::1\nlisten_port = {port}\n"
        "unix_socket_dir =\nauth_file = userlist.txt\n"
    )
    with running(load_config(ini), config_path=str(ini)):
        for host in ("127.0.0.1", "::1"):
            dsn = (
                f"host={host} port={port} user=md5_user password=md5-secret dbname={TEST_DATABASE}"
            )
            with psycopg.connect(dsn, connect_timeout=10) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
