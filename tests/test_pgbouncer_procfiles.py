"""PgBouncer's ``logfile`` and ``pidfile`` with ``pgsansio run pgbouncer.ini`` as a
process of its own, against a real PostgreSQL: the log is appended to and follows a
logrotate-style move, the pidfile holds the pooler's pid until exit, and files that
cannot be used stop the start with a message naming them. Then the limits the ini
maps onto the model's: listen_backlog (4096 unless set) and max_packet_size. Last,
syslog, through a real datagram socket standing in for /dev/log.
"""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from _pooler import running
from test_reliability import listen_queue

from pgsansio.config import load_config
from pgsansio.config.model import General
from pgsansio.procfiles import process_files
from pgsansio.testing.cluster import TEST_DATABASE, Cluster


def _ini(pg15: Cluster, tmp_path: pathlib.Path, logfile: str, pidfile: str) -> pathlib.Path:
    (tmp_path / "userlist.txt").write_text('"md5_user" "md5-secret"\n')
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(
        f"[databases]\n{TEST_DATABASE} = host=127.0.0.1 port={pg15.port}\n"
        "[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = 0\nunix_socket_dir =\n"
        f"auth_type = md5\nauth_file = userlist.txt\nlogfile = {logfile}\n"
        f"pidfile = {pidfile}\n"
    )
    return ini


def _start(ini: pathlib.Path) -> tuple[subprocess.Popen[str], int]:
    """``pgsansio run`` on ``ini``; its port once it listens (stderr drained after)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgsansio", "run", str(ini), "--frontend", "asyncio"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ini.parent,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if " listening on " in line:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, int(line.split(" listening on ")[1].split()[0].rsplit(":", 1)[1])
    proc.wait(10)
    raise AssertionError("the pooler did not start:\n" + "".join(seen))


def _login(port: int) -> None:
    dsn = f"host=127.0.0.1 port={port} user=md5_user password=md5-secret dbname={TEST_DATABASE}"
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def _wait_for(path: pathlib.Path, text: str) -> str:
    deadline = time.monotonic() + 10
    while True:
        content = path.read_text() if path.exists() else ""
        if text in content or time.monotonic() > deadline:
            return content
        time.sleep(0.05)


def test_logfile_and_pidfile(pg15: Cluster, tmp_path: pathlib.Path) -> None:
    log, pid = tmp_path / "pgbouncer.log", tmp_path / "pgbouncer.pid"
    log.write_text("a line from an earlier run\n")
    dead = subprocess.Popen(["true"])
    dead.wait()
    pid.write_text(f"{dead.pid}\n")  # left behind by a process that is gone: replaced
    proc, port = _start(_ini(pg15, tmp_path, str(log), str(pid)))
    try:
        assert pid.read_text() == f"{proc.pid}\n"
        _login(port)
        content = _wait_for(log, f"{TEST_DATABASE}/md5_user@")
        assert content.startswith("a line from an earlier run\n")  # appended
        assert " listening on 127.0.0.1:" in content
        assert f"login attempt: db={TEST_DATABASE} user=md5_user" in content

        # logrotate's default: move the file away; the next record opens a new one
        log.rename(tmp_path / "pgbouncer.log.1")
        proc.send_signal(signal.SIGHUP)  # what logrotate's postrotate sends PgBouncer
        _login(port)
        assert f"{TEST_DATABASE}/md5_user@" in _wait_for(log, f"{TEST_DATABASE}/md5_user@")
        assert "a line from an earlier run" not in log.read_text()
        assert (tmp_path / "pgbouncer.log.1").read_text().startswith("a line from")
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    assert code == 0
    assert not pid.exists()  # removed at exit


def test_unusable_process_files_stop_the_start(pg15: Cluster, tmp_path: pathlib.Path) -> None:
    # a pidfile naming a live process (this test's own) is another pooler's
    pid = tmp_path / "busy.pid"
    pid.write_text(f"{os.getpid()}\n")
    ini = _ini(pg15, tmp_path, "", str(pid))
    argv = [sys.executable, "-m", "pgsansio", "run", str(ini), "--frontend", "asyncio"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1
    assert f"pidfile '{pid}' names process {os.getpid()}, which is running" in out.stderr
    assert pid.read_text() == f"{os.getpid()}\n"  # left alone

    missing = tmp_path / "no-such-dir" / "pgbouncer.log"
    ini = _ini(pg15, tmp_path, str(missing), "")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1
    assert f"cannot open logfile '{missing}': No such file or directory" in out.stderr


def test_listen_backlog_and_max_packet_size(pg15: Cluster, tmp_path: pathlib.Path) -> None:
    """Unset, listen_backlog is 4096 on the real listener (PgBouncer's 128 overflows in
    a connect storm); max_packet_size caps a client's message (54000), the rest runs."""
    ini = _ini(pg15, tmp_path, "", "")
    with running(load_config(ini), config_path=str(ini)) as p:
        assert listen_queue(p.port) == 4096
    ini.write_text(ini.read_text() + "listen_backlog = 128\nmax_packet_size = 10000\n")
    with running(load_config(ini), config_path=str(ini)) as p:
        assert listen_queue(p.port) == 128
        dsn = f"host=127.0.0.1 port={p.port} user=md5_user password=md5-secret "
        dsn += f"dbname={TEST_DATABASE}"
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            row = conn.execute("SELECT length(%s::text)", ["x" * 5000]).fetchone()
            assert row == (5000,)
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            with pytest.raises(psycopg.OperationalError) as failed:
                conn.execute("SELECT length(%s::text)", ["x" * 20000])
            assert failed.value.sqlstate == "54000"
            assert "at most 10000 bytes from a client (client_buffer_limit)" in str(failed.value)


def test_syslog(pg15: Cluster, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    """syslog = 1: each record reaches the syslog socket as <priority>ident[pid]: ...,
    the priority made of syslog_facility and the level. No socket: a warning, no error."""
    caplog.set_level(logging.INFO)
    ini = _ini(pg15, tmp_path, "", "")
    ini.write_text(
        ini.read_text() + "syslog = 1\nsyslog_ident = pgb-test\nsyslog_facility = local3\n"
    )
    config = load_config(ini)
    address = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as daemon:
        daemon.bind(address)
        daemon.settimeout(10)
        with (
            process_files(config.general, syslog_address=address),
            running(config, config_path=str(ini)) as p,
        ):
            _login(p.port)
        received = []
        while not any("login attempt" in r for r in received):
            received.append(daemon.recv(65536).decode())
    local3_info = 19 * 8 + 6  # LOG_LOCAL3, LOG_INFO
    login = next(r for r in received if "login attempt" in r)
    assert login.startswith(f"<{local3_info}>pgb-test[{os.getpid()}]: INFO pgsansio")
    assert f"login attempt: db={TEST_DATABASE} user=md5_user" in login

    caplog.clear()
    missing = str(tmp_path / "no-syslog-here")
    with process_files(General(syslog=True), syslog_address=missing):
        pass
    assert f"syslog is on, but {missing} does not exist" in caplog.text
