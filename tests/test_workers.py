"""Worker processes (``general.workers``): ``pgsansio run`` as a real process tree.

Real PostgreSQL, real clients (psycopg), real signals. What is checked: cancel requests
reach the worker that owns the query whichever worker they land on (every frontend),
limits split so the whole pooler stays within ``pool_size``, a worker killed with
SIGKILL is restarted and its clients get an error rather than a hang, and the
operator's signals reach every worker. The key's encoding and the split are unit
tested too (pure functions).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import psycopg
import pytest
from _build import pythonpath
from _daemons import pgsansio_toml
from _frontend_thread import frontend_params
from _pooler import make_config
from _wire import query, startup_packet
from pooler_bench import free_port, stop, wait_for_port

from pgsansio.config import ConfigError, load_config
from pgsansio.engine import (
    UNIX_OWNER_PEER,
    CloseServer,
    Engine,
    Log,
    OpenServer,
    SendClient,
    WorkerInfo,
)
from pgsansio.engine._peers import ASK_SECONDS, share, split_config
from pgsansio.testing.cluster import TEST_DATABASE, Cluster

ROOT = pathlib.Path(__file__).resolve().parent.parent


@contextmanager
def workers_run(
    pg: Cluster,
    work: pathlib.Path,
    *,
    frontend: str = "asyncio",
    workers: int = 2,
    pool_size: int = 16,
    general: dict[str, object] | None = None,
    tmpdir: str | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], int, pathlib.Path]]:
    """``pgsansio run`` with ``workers``; (process, port, log file). Logs at info.
    ``tmpdir``: its TMPDIR (where the supervisor makes the workers' directory)."""
    port = free_port()
    toml = work / "pgcat.toml"
    keys = {"workers": workers, **(general or {})}
    text = pgsansio_toml(port, pg, pool_size, keys)
    toml.write_text(text.replace("= True\n", "= true\n").replace("= False\n", "= false\n"))
    log = work / "pooler.log"
    cmd = [sys.executable, "-m", "pgsansio", "run", str(toml), "--frontend", frontend]
    env = {**os.environ, "PYTHONPATH": pythonpath(), **({"TMPDIR": tmpdir} if tmpdir else {})}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_port(port, proc, "pgsansio", log)
        wait_for(lambda: len(children(proc.pid)) == workers, "the workers to start")
        wait_for(lambda: "worker processes listening" in log.read_text(), "every worker")
        yield proc, port, log
    finally:
        stop(proc)
        assert not children(proc.pid)


def children(pid: int) -> list[int]:
    try:
        text = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def dsn(port: int) -> str:
    return f"host=127.0.0.1 port={port} dbname={TEST_DATABASE} user=trust_user"


def server_count(pg: psycopg.Connection[tuple[int]], where: str) -> int:
    """Backends of trust_user (the pooler's) on the server now, but ``pg``'s own."""
    row = pg.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'trust_user' "
        f"AND pid <> pg_backend_pid() AND {where}"
    ).fetchone()
    assert row is not None
    return int(row[0])


@contextmanager
def direct(pg: Cluster) -> Iterator[psycopg.Connection[tuple[int]]]:
    """A connection straight to PostgreSQL, to watch what the pooler opened."""
    conn: psycopg.Connection[tuple[int]] = psycopg.connect(
        f"host=127.0.0.1 port={pg.port} dbname={TEST_DATABASE} user=trust_user", autocommit=True
    )
    with conn:
        yield conn


# ------------------------------------------------------------------------ unit tests


def test_shares_add_up_and_never_starve() -> None:
    for total in range(0, 40):
        for count in range(1, 9):
            parts = [share(total, i, count) for i in range(1, count + 1)]
            if total == 0:
                assert parts == [0] * count
            elif total >= count:
                assert sum(parts) == total
                assert max(parts) - min(parts) <= 1
            else:
                assert parts == [1] * count  # each keeps one server (docs/workers.md)


def test_split_config_cuts_every_limit(pg15: Cluster) -> None:
    config = make_config(pg15, pool_size=5, general={"max_client_conn": 101})
    config = replace(
        config,
        pools={
            name: replace(pool, reserve_pool_size=3, max_db_connections=7)
            for name, pool in config.pools.items()
        },
    )
    parts = [split_config(config, WorkerInfo(i, 2, "/nowhere")) for i in (1, 2)]
    assert [p.general.max_client_conn for p in parts] == [51, 50]
    for name in config.pools:
        assert [p.pools[name].reserve_pool_size for p in parts] == [2, 1]
        assert [p.pools[name].max_db_connections for p in parts] == [4, 3]
        for key in config.pools[name].users:
            assert [p.pools[name].users[key].pool_size for p in parts] == [3, 2]


def test_cancel_keys_name_their_worker(pg15: Cluster) -> None:
    config = make_config(pg15)
    for count in (2, 3, 64):
        for index in (1, count):
            engine = Engine(config, seed=index, worker=WorkerInfo(index, count, "/nowhere"))
            bits = (count - 1).bit_length()
            secrets = {engine.peers.secret() for _ in range(200)}
            assert all(
                (int.from_bytes(s, "big") & ((1 << bits) - 1)) + 1 == index for s in secrets
            )
            assert len(secrets) > 150  # still random above the worker's bits


def test_a_worker_that_does_not_answer_the_console_is_left_out(pg15: Cluster) -> None:
    """The engine alone (sans-IO): SHOW asks the other worker over its Unix socket; a
    worker that cannot be reached, or does not answer in time, is left out of the
    rows and named in the log, and the console gets its answer."""
    engine = Engine(make_config(pg15), seed=1, worker=WorkerInfo(1, 2, "/run/w"))
    engine.start(0.0)
    engine.client_connected(7, UNIX_OWNER_PEER, 0.0)
    welcome = engine.client_data(7, startup_packet("pgbouncer", "pgbouncer"), 0.0)
    assert any(isinstance(e, SendClient) and e.data.endswith(b"Z\0\0\0\x05I") for e in welcome)
    now = 1.0
    for item, fail in (("POOLS", True), ("STATS", False)):
        asked = engine.client_data(7, query(f"SHOW {item}"), now)
        opened = [e for e in asked if isinstance(e, OpenServer)]
        assert [(e.host, e.port) for e in opened] == [("/run/w", 2)]  # .s.PGSQL.2 there
        assert not any(isinstance(e, SendClient) for e in asked)  # not before the answer
        if fail:
            answer = engine.server_failed(opened[0].sid, "connection refused", now)
        else:
            engine.server_connected(opened[0].sid, now)
            answer = engine.tick(now + ASK_SECONDS)  # the worker never answers
            assert CloseServer(opened[0].sid) in answer
        sent = b"".join(e.data for e in answer if isinstance(e, SendClient))
        assert b"worker\0" in sent and sent.endswith(b"Z\0\0\0\x05I")
        logs = [e.message for e in answer if isinstance(e, Log)]
        assert any(f"worker 2 could not run 'SHOW {item}'" in m for m in logs), logs
        now += ASK_SECONDS + 1


def test_workers_key_is_checked(tmp_path: pathlib.Path, pg15: Cluster) -> None:
    path = tmp_path / "pgcat.toml"
    for value, problem in (("0", "positive integer"), ('"2"', "positive integer"), ("65", "64")):
        text = pgsansio_toml(6432, pg15, 4, {}).replace(
            "[general]\n", f"[general]\nworkers = {value}\n"
        )
        path.write_text(text)
        with pytest.raises(ConfigError, match=rf"general\.workers.*{problem}") as info:
            load_config(str(path))
        assert str(path) in str(info.value)
    path.write_text(pgsansio_toml(6432, pg15, 4, {"workers": 3}))
    assert load_config(str(path)).general.workers == 3


# ------------------------------------------------------------------ real processes


@pytest.mark.parametrize("frontend", frontend_params())
def test_cancel_reaches_the_worker_that_runs_the_query(
    pg15: Cluster, tmp_path: pathlib.Path, frontend: str
) -> None:
    """Each of 16 clients runs pg_sleep and is cancelled: every one gets 57014, and the
    cancel requests that landed on the other worker were forwarded (the log says so;
    the kernel spreads connections by a hash, so with 16 some land there)."""
    n = 16
    with (
        workers_run(pg15, tmp_path, frontend=frontend, pool_size=2 * n) as (_, port, log),
        direct(pg15) as pg,
    ):
        conns = [psycopg.connect(dsn(port), autocommit=True) for _ in range(n)]
        errors: list[str | None] = []

        def sleep(conn: psycopg.Connection[object]) -> None:
            try:
                conn.execute("select pg_sleep(60)")
                errors.append("finished")
            except psycopg.Error as exc:
                errors.append(exc.sqlstate)

        threads = [threading.Thread(target=sleep, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        running = "state = 'active' AND query LIKE 'select pg_sleep%'"
        wait_for(lambda: server_count(pg, running) == n, "every pg_sleep to run on the server")
        for conn in conns:
            conn.cancel()
        for t in threads:
            t.join(30)
        assert errors == ["57014"] * n
        assert all(c.execute("select 1").fetchone() == (1,) for c in conns)  # still usable
        for conn in conns:
            conn.close()
        assert "forwarded to it" in log.read_text()


def test_pool_size_is_split_between_workers(pg15: Cluster, tmp_path: pathlib.Path) -> None:
    """pool_size 3 over two workers (2 + 1): 10 clients in concurrent transactions
    never hold more than 3 server connections, and every one of them is served. Then
    SIGTERM: every worker waits for its clients, and the pooler exits 0."""
    with workers_run(pg15, tmp_path, pool_size=3) as (proc, port, log), direct(pg15) as pg:
        most = 0
        done: list[int] = []
        stop_watch = threading.Event()

        def watch() -> None:
            nonlocal most
            while not stop_watch.is_set():
                most = max(most, server_count(pg, "true"))
                time.sleep(0.02)

        def client() -> None:
            with psycopg.connect(dsn(port)) as conn:
                for _ in range(2):
                    with conn.transaction():
                        conn.execute("select pg_sleep(0.05)")
            done.append(1)

        watcher = threading.Thread(target=watch)
        watcher.start()
        threads = [threading.Thread(target=client) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stop_watch.set()
        watcher.join()
        assert len(done) == 10
        assert 1 <= most <= 3
        held = psycopg.connect(dsn(port))
        proc.send_signal(signal.SIGTERM)
        gentle = "SIGTERM: shutting down once every client has left"
        wait_for(lambda: log.read_text().count(gentle) == 2, "both workers to hear SIGTERM")
        assert held.execute("select 1").fetchone() == (1,)  # its worker waits for it
        assert proc.poll() is None
        held.close()
        assert proc.wait(15) == 0


def workers_of(port: int, conns: list[psycopg.Connection[tuple[int]]]) -> list[int]:
    """The worker each of ``conns`` is on, from SHOW CLIENTS (matched by client port)."""
    with psycopg.connect(
        f"host=127.0.0.1 port={port} dbname=pgbouncer user=admin password=admin",
        autocommit=True,
    ) as admin:
        cur = admin.execute("SHOW CLIENTS")
        assert cur.description is not None
        names = [d.name for d in cur.description]
        by_port = {row[names.index("port")]: row[-1] for row in cur.fetchall()}
    ports = []
    for conn in conns:
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
            ports.append(sock.getsockname()[1])
    return [int(by_port[p]) for p in ports]


def worker_pids(log: pathlib.Path) -> dict[int, int]:
    """Worker number -> pid, from the supervisor's "listening" line."""
    line = next(x for x in log.read_text().splitlines() if "worker processes listening" in x)
    pids = line.rsplit("(pids ", 1)[1].rstrip(")").split(", ")
    return {i: int(pid) for i, pid in enumerate(pids, 1)}


def test_a_killed_worker_is_restarted_and_signals_reach_every_worker(
    pg15: Cluster, tmp_path: pathlib.Path
) -> None:
    with workers_run(pg15, tmp_path, frontend="uvloop") as (proc, port, log):
        conns = [psycopg.connect(dsn(port), autocommit=True) for _ in range(12)]
        where = workers_of(port, conns)
        victim = worker_pids(log)[where[0]]
        os.kill(victim, signal.SIGKILL)
        # The victim's clients get an error at once (no hang); the others go on.
        outcomes = []
        for conn in conns:
            try:
                outcomes.append(conn.execute("select 1").fetchone() == (1,))
            except psycopg.OperationalError:
                outcomes.append(False)
            conn.close()
        assert outcomes == [w != where[0] for w in where]
        wait_for(lambda: "starting worker" in log.read_text(), "the restart", 30)
        listening = re.compile(r"worker \d: listening on ")
        wait_for(lambda: len(listening.findall(log.read_text())) == 3, "the new worker")
        assert victim not in children(proc.pid)
        assert "was killed by SIGKILL" in log.read_text()
        # Every new client is served, on either worker.
        for _ in range(12):
            with psycopg.connect(dsn(port)) as conn:
                assert conn.execute("select 1").fetchone() == (1,)
        for signum, said in ((signal.SIGUSR1, "SIGUSR1: pausing;"), (signal.SIGUSR2, "SIGUSR2")):
            proc.send_signal(signum)
            wait_for(
                lambda said=said: all(f"worker {i}: {said}" in log.read_text() for i in (1, 2)),
                f"both workers to hear {said}",
            )
        proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: all(f"worker {i}: configuration reloaded" in log.read_text() for i in (1, 2)),
            "both workers to reload",
        )
        # A client in a transaction keeps SIGINT's shutdown waiting; a second SIGINT
        # ends it at once, and the supervisor exits with the workers' status.
        held = psycopg.connect(dsn(port))
        held.execute("select 1")  # in a transaction now (psycopg's default)
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: log.read_text().count("SIGINT: shutting down") == 2, "both to shut down")
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 128 + signal.SIGINT
        held.close()
    text = log.read_text()
    assert "Traceback" not in text


def test_a_pooler_that_cannot_listen_stops_and_leaves_nothing_behind(
    pg15: Cluster, tmp_path: pathlib.Path
) -> None:
    """A TCP port taken by another program: the workers cannot listen, the others are
    stopped, exit 1 with the reason. A Unix socket a server answers on: the supervisor
    cannot make it, exit 1. Either way its directory is gone."""
    short = tempfile.mkdtemp(prefix="w", dir="/tmp")  # TMPDIR, and the Unix socket
    toml = tmp_path / "pgcat.toml"
    cmd = [sys.executable, "-m", "pgsansio", "run", str(toml), "--frontend", "asyncio"]
    env = {**os.environ, "PYTHONPATH": pythonpath(), "TMPDIR": short}
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            toml.write_text(pgsansio_toml(port, pg15, 4, {"workers": 2}))
            done = subprocess.run(cmd, capture_output=True, env=env, timeout=60, check=False)
        err = done.stderr.decode()
        assert done.returncode == 1, err
        assert f"cannot listen on 127.0.0.1:{port}: address already in use" in err
        assert "Traceback" not in err
        assert os.listdir(short) == []
        port = free_port()
        with socket.socket(socket.AF_UNIX) as other:
            other.bind(f"{short}/.s.PGSQL.{port}")
            other.listen()
            keys = {"workers": 2, "unix_socket_dir": short}
            toml.write_text(pgsansio_toml(port, pg15, 4, keys))
            done = subprocess.run(cmd, capture_output=True, env=env, timeout=60, check=False)
        err = done.stderr.decode()
        assert done.returncode == 1, err
        assert "another server is running there" in err
        assert "Traceback" not in err
        assert os.listdir(short) == [f".s.PGSQL.{port}"]  # the other server's, alone
    finally:
        shutil.rmtree(short, ignore_errors=True)


def paused_column(admin: psycopg.Connection[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """SHOW STATE's ``paused`` rows: (value, worker) for each worker."""
    return [row[1:] for row in admin.execute("SHOW STATE").fetchall() if row[0] == "paused"]


def max_client_conn(admin: psycopg.Connection[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """SHOW CONFIG's (max_client_conn, worker) for each worker."""
    rows = admin.execute("SHOW CONFIG").fetchall()
    return sorted((row[1], row[-1]) for row in rows if row[0] == "max_client_conn")


def test_the_console_and_metrics_speak_for_every_worker(
    pg15: Cluster, tmp_path: pathlib.Path
) -> None:
    """SHOW answers one row per worker (a worker column), /metrics one series per
    worker (a worker label), and PAUSE, RESUME and SHUTDOWN act on every worker,
    whichever worker the console connection landed on. The Unix socket
    (unix_socket_dir) is one, shared by the workers, and removed at exit."""
    mport = free_port()
    general = {
        "enable_prometheus_exporter": True,
        "prometheus_exporter_port": mport,
        "unix_socket_dir": str(tmp_path),
    }
    with workers_run(pg15, tmp_path, general=general) as (proc, port, log):
        clients = [psycopg.connect(dsn(port), autocommit=True) for _ in range(6)]
        clients += [
            psycopg.connect(dsn(port).replace("127.0.0.1", str(tmp_path)), autocommit=True)
            for _ in range(2)
        ]
        for conn in clients:
            conn.execute("select 1")
        admin = psycopg.connect(
            f"host=127.0.0.1 port={port} dbname=pgbouncer user=admin password=admin",
            autocommit=True,
        )
        cur = admin.execute("SHOW POOLS")
        assert cur.description is not None
        assert cur.description[-1].name == "worker"
        pools = cur.fetchall()
        assert sorted(row[-1] for row in pools) == [1, 2]
        cl_active = [d.name for d in cur.description].index("cl_active")
        assert sum(row[cl_active] for row in pools if row[1] == "trust_user") == 8
        rows = admin.execute("SHOW CLIENTS").fetchall()
        assert sorted(r[1] for r in rows) == ["admin"] + ["trust_user"] * 8  # no worker's
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10) as r:
            text = r.read().decode()
        for worker in (1, 2):
            assert f'pgcat_pools_cl_active{{pool="{TEST_DATABASE}",user="trust_user",' in text
            assert f'worker="{worker}"}}' in text
        assert text.count("# TYPE pgcat_pools_cl_active gauge") == 1
        # PAUSE answers once every worker is paused; RESUME reaches the others after.
        assert admin.execute("PAUSE").statusmessage == "PAUSE"
        assert paused_column(admin) == [("yes", 1), ("yes", 2)]
        assert admin.execute("RESUME").statusmessage == "RESUME"
        wait_for(lambda: paused_column(admin) == [("no", 1), ("no", 2)], "both to resume")
        for conn in clients:
            assert conn.execute("select 1").fetchone() == (1,)
            conn.close()
        # SET is not split: every worker takes the value (docs/workers.md).
        assert admin.execute("SET max_client_conn = 500").statusmessage == "SET"
        wait_for(lambda: max_client_conn(admin) == [("500", 1), ("500", 2)], "SET everywhere")
        admin.execute("SHUTDOWN")
        assert proc.wait(15) == 0
        assert log.read_text().count("SHUTDOWN from the admin console: exiting now") == 2
        assert not (tmp_path / f".s.PGSQL.{port}").exists()


def test_a_worker_that_keeps_failing_waits_longer_each_time(
    pg15: Cluster, tmp_path: pathlib.Path
) -> None:
    """A worker that cannot start again (its Unix socket's directory is gone) is
    retried after 0.5 s, then 1 s...: a crash loop does not spin, and each failure is
    logged with its reason. Once the cause is gone, the next attempt serves again."""
    short = tempfile.mkdtemp(prefix="w", dir="/tmp")  # Unix socket paths are short
    try:
        with workers_run(pg15, tmp_path, tmpdir=short) as (_, port, log):
            (directory,) = pathlib.Path(short).iterdir()
            shutil.rmtree(directory)
            os.kill(worker_pids(log)[2], signal.SIGKILL)
            wait_for(lambda: "starting it again in 1.0 s" in log.read_text(), "a second failure")
            text = log.read_text()
            assert "starting it again in 0.5 s" in text
            assert f"worker 2: cannot start: cannot listen on {directory}/.s.PGSQL.2" in text
            directory.mkdir(mode=0o700)
            listening = re.compile(r"worker 2: listening on ")
            wait_for(lambda: len(listening.findall(log.read_text())) == 2, "worker 2 back")
            for _ in range(6):
                with psycopg.connect(dsn(port)) as conn:
                    assert conn.execute("select 1").fetchone() == (1,)
    finally:
        shutil.rmtree(short, ignore_errors=True)
