"""Reliability at the socket, against the real daemon, real PostgreSQL and real clients.

The short forms run in the default suite; the long forms (thousands of clients, a
network hiccup in a private namespace, storms, side-by-side with PgBouncer) carry the
``reliability`` marker and run with ``make reliability`` (see docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psycopg
import pytest
import trustme
from _build import pythonpath
from _daemons import USER, Daemon, pgbouncer, pgsansio, report
from _pooler import Pooler, make_config, running
from _storm import raise_fd_limit, serial_connects, simultaneous_logins
from _wire import (
    answer_now,
    drain_result,
    error_fields,
    finish_partial_query,
    login,
    message_header,
    query,
    read_messages,
    send_partial_query,
    socket_to,
    startup_packet,
    tcp_options,
)

from pgsansio.testing.cluster import TEST_DATABASE, TEST_USERS, Cluster

every_frontend = pytest.mark.usefixtures("pooler_frontend")


def _os_defaults() -> dict[str, int]:
    with socket.socket() as fresh:
        fresh.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        fresh.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return tcp_options(fresh)


@every_frontend
@pytest.mark.parametrize("client_keys", [False, True], ids=["os-defaults", "client_tcp_keys"])
def test_client_and_server_sockets_get_their_own_options(pg15: Cluster, client_keys: bool) -> None:
    """Clients: client_tcp_* (OS defaults by default); servers: PgCat's tcp_* keys."""
    general: dict[str, object] = {
        "tcp_keepalives_idle": 6,
        "tcp_keepalives_interval": 4,
        "tcp_keepalives_count": 3,
        "tcp_user_timeout": 9000,
    }
    if client_keys:
        general |= {
            "client_tcp_keepalives_idle": 300,
            "client_tcp_keepalives_interval": 30,
            "client_tcp_keepalives_count": 7,
            "client_tcp_user_timeout": 120000,
        }
    with running(make_config(pg15, general=general)) as p:
        client = login(p.port, "trust_user", TEST_DATABASE)
        try:
            client.sendall(query("select 1"))  # a server connection is made and kept
            drain_result(client, 10)
            ours = socket_to(client.getsockname()[:2])
            theirs = socket_to(("127.0.0.1", pg15.port))
            assert ours is not None and theirs is not None
            with ours, theirs:
                client_opts, server_opts = tcp_options(ours), tcp_options(theirs)
        finally:
            client.close()
    assert server_opts == {
        "SO_KEEPALIVE": 1,
        "TCP_NODELAY": 1,
        "TCP_KEEPIDLE": 6,
        "TCP_KEEPINTVL": 4,
        "TCP_KEEPCNT": 3,
        "TCP_USER_TIMEOUT": 9000,
    }
    if client_keys:
        expected = {
            "SO_KEEPALIVE": 1,
            "TCP_NODELAY": 1,
            "TCP_KEEPIDLE": 300,
            "TCP_KEEPINTVL": 30,
            "TCP_KEEPCNT": 7,
            "TCP_USER_TIMEOUT": 120000,
        }
    else:
        expected = _os_defaults()
        assert expected["TCP_USER_TIMEOUT"] == 0
    assert client_opts == expected


BIG_RESULT = "select repeat('x', 1048576) from generate_series(1, 24)"
"""About 24 MB of rows: far more than the socket buffers on both sides hold."""


def stalled_client_survives(port: int, stall: float) -> None:
    """A client stops reading a big result for ``stall`` seconds, then reads it all."""
    client = login(port, "trust_user", TEST_DATABASE, rcvbuf=4096)
    try:
        client.sendall(query(BIG_RESULT))
        time.sleep(stall)  # a zero receive window all along: the pooler cannot send
        total, _ = drain_result(client, 60)
        assert total > 24 * 1048576
    finally:
        client.close()


def test_client_that_stops_reading_is_not_reset(pg15: Cluster) -> None:
    """The server-side TCP_USER_TIMEOUT (1 s here) no longer reaches client sockets.

    Before the split, this client got ECONNRESET when it resumed reading. The options
    are checked on every frontend above; the kernel's behaviour once here, on asyncio
    (on every frontend with PgCat's 10 s in ``make reliability``).
    """
    general = {"tcp_user_timeout": 1000}
    with running(make_config(pg15, general=general)) as p:
        stalled_client_survives(p.port, 2.5)


@pytest.mark.reliability
@every_frontend
def test_client_that_stops_reading_longer_than_any_timeout(pg15: Cluster) -> None:
    """With PgCat's defaults (10 s user timeout on servers), a 12 s stall, every frontend."""
    with running(make_config(pg15)) as p:
        stalled_client_survives(p.port, 12)


@pytest.mark.reliability
@every_frontend
def test_control_a_client_user_timeout_does_reset_a_stalled_client(pg15: Cluster) -> None:
    """The stall test detects the old behaviour: a 1 s client user timeout resets it."""
    config = make_config(pg15, general={"client_tcp_user_timeout": 1000})
    with running(config) as p, pytest.raises(OSError):
        stalled_client_survives(p.port, 3)


# ------------------------------------------------------------ refusals a client can read

PSQL = shutil.which("psql")


def psql_error(port: int, user: str = "md5_user", **env: str) -> str:
    """What psql says when it cannot log in through the pooler (libpq's sslmode=prefer)."""
    assert PSQL is not None, "psql is part of the PostgreSQL client the tests need"
    proc = subprocess.run(
        [
            PSQL,
            "-X",
            "-w",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            user,
            "-c",
            "select 1",
            TEST_DATABASE,
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=30,
        env={
            **os.environ,
            "PGSSLMODE": "prefer",
            "PGCONNECT_TIMEOUT": "10",
            "PGPASSWORD": TEST_USERS[user][1] or "",
            **env,
        },
    )
    assert proc.returncode != 0, proc.stdout
    return proc.stderr


def psycopg_error(p: Pooler, user: str = "md5_user") -> str:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(p.dsn(user) + " sslmode=prefer connect_timeout=10")
    return str(info.value)


def assert_readable(said: str, reason: str) -> None:
    assert reason in said, said
    assert "during SSL exchange" not in said, said


@every_frontend
@pytest.mark.parametrize("tls", [False, True], ids=["no-tls", "tls"])
def test_max_client_conn_refusal_reaches_libpq(
    pg15: Cluster, tls: bool, tmp_path: pathlib.Path
) -> None:
    """Over max_client_conn, the SSLRequest is answered (N, or TLS) before the error."""
    general: dict[str, object] = {"max_client_conn": 1}
    if tls:
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1")
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        general |= {"tls_certificate": str(cert), "tls_private_key": str(key)}
    with (
        running(make_config(pg15, general=general)) as p,
        psycopg.connect(p.dsn("md5_user") + " sslmode=prefer") as held,
    ):
        assert held.pgconn.ssl_in_use is tls
        reason = "no more connections allowed (max_client_conn)"
        assert_readable(psql_error(p.port), reason)
        assert_readable(psycopg_error(p), reason)
        assert held.execute("select 1").fetchone() == (1,)


@every_frontend
def test_shutdown_refusal_reaches_libpq(pg15: Cluster) -> None:
    """SIGTERM: new clients are refused, readably, while the last one finishes."""
    with running(make_config(pg15)) as p:
        held = psycopg.connect(p.dsn("md5_user") + " sslmode=prefer")
        try:
            held.execute("begin")
            p.signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            said = psql_error(p.port)
            while "shutting down" not in said and time.monotonic() < deadline:
                time.sleep(0.05)  # the signal reaches the engine on the pooler's thread
                said = psql_error(p.port)
            assert_readable(said, "pgsansio is shutting down")
            assert_readable(psycopg_error(p), "pgsansio is shutting down")
            held.execute("commit")
        finally:
            held.close()


# ---------------------------------------------------------------- listener and login time


def listen_queue(port: int) -> int:
    """The accept queue's size of the socket listening on ``port`` (ss's Send-Q)."""
    ss = shutil.which("ss") or "/usr/bin/ss"
    out = subprocess.run(
        [ss, "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out and out[0] == "LISTEN", out
    return int(out[2])


@every_frontend
def test_listen_backlog_is_used_by_the_listener(pg15: Cluster) -> None:
    with running(make_config(pg15, general={"listen_backlog": 777})) as p:
        assert listen_queue(p.port) == 777


@every_frontend
def test_client_login_timeout_bounds_a_byte_at_a_time_startup(pg15: Cluster) -> None:
    """A client trickling its startup packet is cut at client_login_timeout, with 08006."""
    with running(make_config(pg15, general={"client_login_timeout": 400})) as p:
        packet = startup_packet("trust_user", TEST_DATABASE)
        with socket.create_connection(("127.0.0.1", p.port)) as slow:
            started = time.monotonic()
            slow.settimeout(5)
            answer = b""
            for byte in packet:
                try:
                    slow.sendall(bytes([byte]))
                except OSError:
                    break  # reset after the pooler closed: the answer is read below
                time.sleep(0.05)
                slow.setblocking(False)
                try:
                    answer += slow.recv(4096)
                except BlockingIOError:
                    pass
                except OSError:
                    break
                finally:
                    slow.settimeout(5)
                if answer:
                    break
            waited = time.monotonic() - started
        assert answer[:1] == b"E", answer
        assert error_fields(answer)["C"] == "08006"
        assert 0.35 < waited < 0.05 * len(packet), waited


# ----------------------------------------------------------- side by side with PgBouncer

FRONTENDS = ("asyncio", "uvloop", "anyio", "trio", "curio")
BEFORE = os.environ.get("PGSANSIO_BEFORE_TREE")
"""Another source tree of pgsansio to measure as "before" (make reliability BEFORE=...)."""


@pytest.mark.reliability
def test_connect_storms(pg15: Cluster, tmp_path: pathlib.Path) -> None:
    """1,000 serial connect-and-close and 2,000 simultaneous logins, each daemon.

    No SYN may be dropped by pgsansio's listener (a drop costs the client a 1 s
    retransmission) and every login must succeed; PgBouncer's figures are reported.
    """
    raise_fd_limit(20000)
    rows = []
    daemons = [
        (f"pgsansio {fe}", lambda fe=fe: pgsansio(pg15, tmp_path, frontend=fe)) for fe in FRONTENDS
    ]
    if BEFORE:
        daemons.insert(
            0,
            (
                "before: pgsansio uvloop",
                lambda: pgsansio(pg15, tmp_path, tree=pathlib.Path(BEFORE), name="before"),
            ),
        )
    daemons.append(("PgBouncer 1.18", lambda: pgbouncer(pg15)))
    results = {}
    for name, start in daemons:
        with start() as d:
            serial = serial_connects(d.port, 1000)
            crowd = simultaneous_logins(d.port, 2000)
        results[name] = (serial, crowd)
        rows.append((name, f"serial 1000: {serial.text()}"))
        rows.append(("", f"2000 at once: {crowd.text()}"))
    report("connect storms", rows)
    for name, (serial, crowd) in results.items():
        if name.startswith("pgsansio"):
            assert serial.failures == 0 and crowd.failures == 0, name
            assert max(serial.latencies) < 1.0, f"{name}: a SYN was dropped"


# ------------------------------------------------------------- bounded memory


def held_clients(
    port: int, n: int, length: int, sent: int, kind: bytes = b"Q"
) -> tuple[list[socket.socket], dict[str, int]]:
    """``n`` logged-in clients each send ``sent`` bytes of a ``length``-byte Query (or
    Parse); (the clients, how many were held or streamed, refused (their errors
    checked) and stalled)."""
    clients = [login(port, USER, TEST_DATABASE) for _ in range(n)]
    outcomes = [send_partial_query(sock, length, sent, kind) for sock in clients]
    counts = {"held": 0, "refused": 0, "stalled": outcomes.count("stalled")}
    for sock, outcome in zip(clients, outcomes, strict=True):
        if outcome == "stalled":
            continue
        answer = answer_now(sock, 0.3)
        if answer is None:
            counts["held"] += 1
            continue
        assert answer[:1] == b"E", answer[:100]
        fields = error_fields(answer)
        assert fields["C"] == "53200" and "total_buffer_limit" in fields["M"], fields
        counts["refused"] += 1
    return clients, counts


def test_partial_huge_queries_are_streamed_not_held(pg15: Cluster) -> None:
    """16 clients each send 5 of a 6 MiB query: each piece goes on to the server as it
    arrives, so the pooler's RSS barely moves; each query is answered once complete.

    The daemon runs as its own process, so its RSS is the pooler's alone.
    """
    mib = 1024 * 1024
    with (
        tempfile.TemporaryDirectory() as work,
        pgsansio(pg15, pathlib.Path(work), pool_size=16) as d,
    ):
        before = d.rss_kib()
        clients, counts = held_clients(d.port, 16, 6 * mib, 5 * mib)
        try:
            grown = (d.rss_kib() - before) / 1024
            print(f"streamed: RSS grew {grown:.1f} MiB; {counts}")
            assert counts == {"held": 16, "refused": 0, "stalled": 0}, counts
            assert grown < 16, f"RSS grew by {grown:.0f} MiB"
            for sock in clients:
                answer = finish_partial_query(sock, 6 * mib, 5 * mib)
                assert [m[:1] for m in answer] == [b"T", b"D", b"C", b"Z"], answer
        finally:
            for sock in clients:
                sock.close()


def test_partial_huge_parses_stay_under_the_caps(pg15: Cluster) -> None:
    """What is held whole (a Parse) is capped: 16 clients each send 5 of a 6 MiB Parse
    under a 32 MiB total_buffer_limit; a Parse over client_buffer_limit is refused."""
    mib = 1024 * 1024
    caps = {"client_buffer_limit": 8 * mib, "total_buffer_limit": 32 * mib}
    with (
        tempfile.TemporaryDirectory() as work,
        pgsansio(pg15, pathlib.Path(work), general=caps) as d,
    ):
        before = d.rss_kib()
        clients, counts = held_clients(d.port, 16, 6 * mib, 5 * mib, kind=b"P")
        try:
            grown = (d.rss_kib() - before) / 1024
            print(f"held: RSS grew {grown:.1f} MiB; {counts}")
            assert counts["held"] <= 32 // 5 + 1, counts  # those that fit under the cap
            assert counts["held"] + counts["refused"] == 16, counts
            # The cap, bytearray growth (1/8) and the frontend's read buffers.
            assert grown < 32 * 1.25 + 16, f"RSS grew by {grown:.0f} MiB"
            # A message longer than client_buffer_limit is refused at its header.
            with login(d.port, USER, TEST_DATABASE) as big:
                big.sendall(message_header(b"P", 9 * mib))
                fields = error_fields(read_messages(big, until=b"E")[-1])
                assert fields["C"] == "54000" and "client_buffer_limit" in fields["M"]
        finally:
            for sock in clients:
                sock.close()


# ------------------------------------------------------------- idle clients, a hiccup

HICCUP_CLIENTS = int(os.environ.get("PGSANSIO_HICCUP_CLIENTS", "2000"))


def _can_make_namespaces() -> str:
    """Why a private network namespace with tc cannot be made here ('' if it can)."""
    if os.geteuid() != 0:
        return "needs root (unshare -n and tc)"
    for tool in ("unshare", "tc", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return ""


@pytest.mark.reliability
def test_idle_clients_survive_a_network_hiccup() -> None:
    """Thousands of idle clients, 6 s of a loopback that passes nothing, then a query.

    In a private network namespace (tests/_hiccup.py), every frontend, then the control
    (PgCat's keepalives on client sockets, as before) and PgBouncer 1.18.
    """
    why_not = _can_make_namespaces()
    if why_not:
        pytest.skip(f"the hiccup needs a private network namespace: {why_not}")
    script = pathlib.Path(__file__).parent / "_hiccup.py"
    proc = subprocess.run(
        [
            "unshare",
            "-n",
            sys.executable,
            str(script),
            "--clients",
            str(HICCUP_CLIENTS),
            "--hiccup",
            "6",
            "--frontends",
            ",".join(FRONTENDS),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "PYTHONPATH": pythonpath()},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    report(
        f"{HICCUP_CLIENTS} idle clients, a 6 s hiccup",
        [
            (
                r["pooler"],
                f"ok {r['ok']}, reset {r['reset']}, timed out {r['timeout']}, "
                f"closed {r['closed']}, other errors {r['error']}",
            )
            for r in rows
        ],
    )
    for r in rows:
        if "PgCat's keepalives" in r["pooler"]:
            assert r["reset"] > 0, f"the hiccup did not bite: {r}"
        elif r["pooler"].startswith("pgsansio"):
            assert r["ok"] == HICCUP_CLIENTS, r


@pytest.mark.reliability
def test_big_messages_side_by_side(pg15: Cluster) -> None:
    """The issue's case: 20 clients each send 49 of a 50 MB query, default caps.

    Both stream a query to its server as it arrives and leave a client waiting for a
    server unread (pool_size 4), so neither holds the queries: pgsansio on every
    frontend, PgBouncer's RSS reported.
    """
    rows = []
    with tempfile.TemporaryDirectory() as work:
        pg = pg15
        daemons = [
            (
                f"pgsansio {fe}",
                # Waiting clients wait (PgBouncer's query_wait_timeout is 120 s).
                lambda fe=fe: pgsansio(
                    pg, pathlib.Path(work), frontend=fe, general={"connect_timeout": 60000}
                ),
            )
            for fe in FRONTENDS
        ]
        daemons.append(("PgBouncer 1.18", lambda: pgbouncer(pg)))
        for name, start in daemons:
            with start() as d:
                before = d.rss_kib()
                clients, counts = held_clients(d.port, 20, 50 * 1000 * 1000, 49 * 1000 * 1000)
                grown = (d.rss_kib() - before) / 1024
                for sock in clients:
                    sock.close()
            rows.append(
                (
                    name,
                    f"RSS {before / 1024:.0f} -> {before / 1024 + grown:.0f} MiB "
                    f"(+{grown:.0f}); of 20 clients: {counts['held']} streaming to a server, "
                    f"{counts['refused']} refused, {counts['stalled']} not read (waiting)",
                )
            )
            if name.startswith("pgsansio"):
                assert grown < 32, (name, grown)  # streamed or not read: not held
    report("20 clients x 49 of a 50 MB query", rows)


IDLE_CLIENTS = 2000


def idle_cost(d: Daemon) -> float:
    """Bytes of RSS each of IDLE_CLIENTS idle logged-in clients costs the daemon."""
    raise_fd_limit(IDLE_CLIENTS + 1000)
    warm = [login(d.port, USER, TEST_DATABASE) for _ in range(50)]  # pools, caches
    before = d.rss_kib()
    clients = [login(d.port, USER, TEST_DATABASE) for _ in range(IDLE_CLIENTS)]
    time.sleep(0.5)
    after = d.rss_kib()
    for sock in clients + warm:
        sock.close()
    return (after - before) * 1024 / IDLE_CLIENTS


@pytest.mark.reliability
def test_idle_memory_per_client(pg15: Cluster) -> None:
    """What an idle logged-in client costs, every frontend and PgBouncer (reported)."""
    rows = []
    with tempfile.TemporaryDirectory() as work:
        daemons = [
            (f"pgsansio {fe}", lambda fe=fe: pgsansio(pg15, pathlib.Path(work), frontend=fe))
            for fe in FRONTENDS
        ]
        if BEFORE:
            daemons.insert(
                0,
                (
                    "before: pgsansio uvloop",
                    lambda: pgsansio(
                        pg15, pathlib.Path(work), tree=pathlib.Path(BEFORE), name="before"
                    ),
                ),
            )
        daemons.append(("PgBouncer 1.18", lambda: pgbouncer(pg15)))
        costs = {}
        for name, start in daemons:
            with start() as d:
                costs[name] = idle_cost(d)
            rows.append((name, f"{costs[name] / 1024:.1f} KiB per idle client"))
    report(f"RSS per idle client ({IDLE_CLIENTS} clients)", rows)
    # Ceilings a little above what was measured: asyncio's own transports cost more
    # than uvloop's, and trio and curio run three tasks per connection (the shared
    # reader/writer loops of pgsansio.frontends._tasks).
    ceilings = {"asyncio": 8, "uvloop": 5, "anyio": 9, "trio": 24, "curio": 20}
    for name, cost in costs.items():
        frontend = name.removeprefix("pgsansio ")
        if frontend in ceilings:
            assert cost < ceilings[frontend] * 1024, (name, cost)


def first_login(port: int) -> socket.socket:
    """The one client max_client_conn = 1 lets in (once the daemon has seen the probe
    connection that found it listening go away)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return login(port, USER, TEST_DATABASE)
        except (AssertionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.reliability
def test_refusals_side_by_side(pg15: Cluster) -> None:
    """What psql (sslmode=prefer) shows at max_client_conn, pgsansio and PgBouncer."""
    rows = []
    with tempfile.TemporaryDirectory() as work:
        limit = {"max_client_conn": 1}
        daemons = [
            ("pgsansio uvloop", lambda: pgsansio(pg15, pathlib.Path(work), general=limit)),
            ("PgBouncer 1.18", lambda: pgbouncer(pg15, max_client_conn=1)),
        ]
        if BEFORE:
            daemons.insert(
                0,
                (
                    "before: pgsansio uvloop",
                    lambda: pgsansio(
                        pg15,
                        pathlib.Path(work),
                        tree=pathlib.Path(BEFORE),
                        general=limit,
                        name="before",
                    ),
                ),
            )
        said = {}
        for name, start in daemons:
            with start() as d, first_login(d.port):
                said[name] = psql_error(d.port, USER).strip()
            rows.append((name, said[name]))
    report("psql at max_client_conn (sslmode=prefer)", rows)
    assert_readable(said["pgsansio uvloop"], "no more connections allowed (max_client_conn)")


def test_a_single_huge_row_counts_towards_total_buffer_limit(pg15: Cluster) -> None:
    """A server row is held whole until it has arrived: within the cap it passes, over
    it the client gets 53200 and the pooler goes on."""
    mib = 1024 * 1024
    with running(make_config(pg15, general={"total_buffer_limit": 8 * mib})) as p:
        with login(p.port, USER, TEST_DATABASE) as fits:
            fits.sendall(query(f"select repeat('x', {4 * mib})"))
            total, _ = drain_result(fits, 30)
            assert total > 4 * mib
        with login(p.port, USER, TEST_DATABASE) as huge:
            huge.sendall(query(f"select repeat('x', {16 * mib})"))
            msgs = read_messages(huge, until=b"E", timeout=30)
            fields = error_fields(msgs[-1])
            assert fields["C"] == "53200" and "total_buffer_limit" in fields["M"], fields
        with login(p.port, USER, TEST_DATABASE) as after:
            after.sendall(query("select 1"))
            assert read_messages(after)[-1][:1] == b"Z"


def test_long_copy_rows_and_queries_through_real_clients(pg15: Cluster) -> None:
    """psycopg's 6 MB CopyData and a 3 MB simple Query arrive whole at PostgreSQL,
    through a pooler that may hold no more than 2 MiB: they were streamed."""
    mib = 1024 * 1024
    caps = {"client_buffer_limit": 2 * mib, "total_buffer_limit": 2 * mib}
    with (
        running(make_config(pg15, pool_size=1, general=caps)) as p,
        psycopg.connect(p.dsn("md5_user"), autocommit=True) as conn,
    ):
        with conn.transaction():
            conn.execute("create temporary table big2 (t text) on commit drop")
            with conn.cursor().copy("copy big2 from stdin") as copy:
                copy.write(b"y" * (6 * mib) + b"\n")
            got = conn.execute("select length(t) from big2").fetchone()
        assert got == (6 * mib,)
        text = "select length('" + "z" * (3 * mib) + "')"
        cur = psycopg.ClientCursor(conn)
        assert cur.execute(text).fetchone() == (3 * mib,)
        assert conn.execute("select 1").fetchone() == (1,)
