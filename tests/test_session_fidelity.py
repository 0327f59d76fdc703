"""What real drivers see through the pooler, compared with PostgreSQL itself.

Each test runs the same driver program with the same assertions three ways: directly
against PostgreSQL 15, through pgsansio in session mode and through pgsansio in
transaction mode (``target``). A session pooler should be invisible; where transaction
mode must differ, the test says so and why (see ``docs/session-mode.md``).

Behaviour that lives in the engine alone runs on the asyncio frontend (two poolers for
the module, one per mode); behaviour where the frontend takes part (closing a socket
after Terminate, a server's FATAL reaching a client) runs on every frontend.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pg8000.native
import pytest
from _pooler import Pooler, make_config, running

from pgsansio.protocol import (
    CLIENT,
    NEED_DATA,
    Connection,
    ConnectionClosed,
    Event,
    Parse,
    Query,
    ReadyForQuery,
    StartupMessage,
    Sync,
)
from pgsansio.testing.cluster import TEST_DATABASE, Cluster

TIMEOUT = 20.0
USER, PASSWORD = "md5_user", "md5-secret"
MODES = ("session", "transaction")


@pytest.fixture(scope="module")
def poolers(pg15: Cluster) -> Iterator[dict[str, Pooler]]:
    """One pooler per pool mode on the asyncio frontend, shared by the module's tests."""
    started: dict[str, Pooler] = {}
    try:
        for mode in MODES:
            p = Pooler(make_config(pg15, pool_mode=mode, pool_size=2), frontend="asyncio")
            p.start()
            started[mode] = p
        yield started
    finally:
        for p in started.values():
            p.stop()


@pytest.fixture(params=("direct", *MODES))
def target(request: pytest.FixtureRequest, pg15: Cluster, poolers: dict[str, Pooler]) -> str:
    """``direct`` (PostgreSQL itself), ``session`` or ``transaction`` (through pgsansio)."""
    name: str = request.param
    return name


def port_of(target: str, pg15: Cluster, poolers: dict[str, Pooler]) -> int:
    return pg15.port if target == "direct" else poolers[target].port


def pg8000_connect(port: int, **kwargs: Any) -> pg8000.native.Connection:
    return pg8000.native.Connection(
        USER,
        host="127.0.0.1",
        port=port,
        password=PASSWORD,
        database=TEST_DATABASE,
        timeout=TIMEOUT,
        **kwargs,
    )


# --- item 2: up to 65,535 parameters ----------------------------------------------------


@pytest.mark.parametrize("n", [40_000, 60_000, 65_535])
def test_pg8000_many_parameters(
    target: str, pg15: Cluster, poolers: dict[str, Pooler], n: int
) -> None:
    """PostgreSQL reads the Int16 counts of Parse, Bind and ParameterDescription as
    unsigned: 65,535 parameters work, and through the pooler too."""
    con = pg8000_connect(port_of(target, pg15, poolers))
    try:
        # pg8000's own Parse/Bind/Execute/Sync (native.run's name mapping is quadratic
        # in the number of parameters: 15 s for 65,535 before a byte is sent).
        sql = (
            "SELECT cardinality(ARRAY[" + ",".join(f"${i}" for i in range(1, n + 1)) + "]::int[])"
        )
        context = con.execute_unnamed(sql, vals=[str(i) for i in range(n)], oids=[23] * n)
        assert context.rows == [[n]]
        # and the connection is still good for the next statement
        assert con.run("SELECT :a::int + 1", a=41) == [[42]]
    finally:
        con.close()


# --- items 3 and 4: Terminate closes silently, whatever comes with it -------------------


def eof_without_a_byte(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes (PostgreSQL sends nothing)."""
    sock.settimeout(TIMEOUT)
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


def logged_in(port: int) -> socket.socket:
    """A raw socket logged in as trust_user (no password asked), after ReadyForQuery."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    conn = Connection(CLIENT)
    sock.sendall(conn.send(StartupMessage({"user": "trust_user", "database": TEST_DATABASE})))
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            conn.receive_data(sock.recv(65536))
            continue
        assert isinstance(event, Event) and not isinstance(event, ConnectionClosed), event
        if isinstance(event, ReadyForQuery):
            return sock


TERMINATE = b"X\0\0\0\x04"
# A Parse, a Sync and a Query: more messages in the same write as the Terminate.
AFTER = bytes(Parse("s", "SELECT 1")) + bytes(Sync()) + bytes(Query("SELECT 1"))


def each_target(pg15: Cluster, config: Any) -> Iterator[tuple[str, int]]:
    """PostgreSQL itself, then pgsansio (the test's frontend) in each pool mode."""
    yield "direct", pg15.port
    for mode in MODES:
        with running(make_config(pg15, pool_mode=mode, pool_size=1, **config)) as p:
            yield mode, p.port


@pytest.mark.usefixtures("pooler_frontend")
def test_terminate_before_the_startup_packet_closes_silently(pg15: Cluster) -> None:
    """PostgreSQL reads ``X\\0\\0\\0\\x04`` as a startup packet of absurd length,
    logs it and closes without a word (a COMMERROR); PgBouncer does the same."""
    for where, port in each_target(pg15, {}):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(TERMINATE)
            assert eof_without_a_byte(sock) == b"", where
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(TERMINATE + AFTER)
            assert eof_without_a_byte(sock) == b"", where


@pytest.mark.usefixtures("pooler_frontend")
def test_bytes_after_terminate_are_not_answered(pg15: Cluster) -> None:
    """A client's Terminate and more messages in one read: PostgreSQL stops reading at
    the Terminate and closes; nothing is answered."""
    for where, port in each_target(pg15, {}):
        with logged_in(port) as sock:
            sock.sendall(TERMINATE + AFTER)
            assert eof_without_a_byte(sock) == b"", where


NODE_END_WHILE_CONNECTING = """
// end() called while connect() is still in progress: node-postgres writes its
// Terminate before the startup packet. Prints what the client saw, as JSON, at exit.
const { Client } = require('pg');
const events = [];
process.on('exit', () => console.log(JSON.stringify(events)));
process.on('uncaughtException', (e) => events.push('uncaught: ' + e.message));
const c = new Client({host: '127.0.0.1', port: Number(process.argv[2]),
                      user: 'trust_user', database: process.argv[3]});
c.on('error', (e) => events.push('error: ' + e.message));
c.on('end', () => events.push('end'));
c.connect().then(() => events.push('connected'),
                 (e) => events.push('connect failed: ' + e.message));
c.end().then(() => events.push('ended'), (e) => events.push('end failed: ' + e.message));
"""


@pytest.fixture(scope="module")
def node_pg() -> Iterator[pathlib.Path]:
    """A temporary directory with node-postgres installed by npm, and the script."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are not installed: node-postgres cannot run")
    with tempfile.TemporaryDirectory(prefix="pgsansio-node-") as tmp:
        npm = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent", "pg@8"],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            env={**os.environ, "NO_UPDATE_NOTIFIER": "1"},
        )
        if npm.returncode != 0:
            pytest.skip(f"npm could not install node-postgres: {npm.stderr.strip()[-300:]}")
        script = pathlib.Path(tmp, "end_while_connecting.js")
        script.write_text(NODE_END_WHILE_CONNECTING)
        yield script


def test_node_postgres_end_while_connecting(
    target: str, pg15: Cluster, poolers: dict[str, Pooler], node_pg: pathlib.Path
) -> None:
    """node-postgres ending a client before its startup packet went out: PostgreSQL
    closes silently, so the client only sees its own end; an error reply used to
    fail its connect() with "invalid startup packet length"."""
    run = subprocess.run(
        ["node", str(node_pg), str(port_of(target, pg15, poolers)), TEST_DATABASE],
        cwd=node_pg.parent,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == ["end", "ended"]
