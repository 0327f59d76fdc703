"""Logs that explain, and client messages that do not leak the implementation.

At the default level the operator gets one line, with the cause, the client's address
and the pool, for: a failed login (a wrong password, an unknown database or user: the
client gets the same 28P01 whatever the cause, so the log is the only place to tell
them apart), a server that refuses, times out or does not speak the protocol, and the
pooler's stop. Never a secret; never more than a bounded number of lines a minute.
Clients are told what happened in words, without errno numbers or server addresses.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator

import psycopg
import pytest
from _pooler import running
from test_engine import DB, Client, World, config, errors, logged_in
from test_ops_check import SHARDED

from pgsansio.config import parse_config
from pgsansio.config.model import (
    Config,
    General,
    PoolConfig,
    ServerAddress,
    ShardConfig,
    UserConfig,
)
from pgsansio.engine._eventlog import BUDGET, WINDOW
from pgsansio.frontends._driver import error_text
from pgsansio.protocol import AuthenticationMD5Password, PasswordMessage, md5_response
from pgsansio.testing.fakepg import Database, FakeUser

SECRET = "alice-S3cret"


def md5_world(**general: object) -> World:
    kw = {f"general_{k}": v for k, v in general.items()}
    db = Database(users={"alice": FakeUser(SECRET, "md5")}, databases=[DB])
    return World(config(auth_type="md5", password=SECRET, **kw), db)


def md5_try(w: World, user: str, database: str, password: str) -> Client:
    c = Client(w, user, database)
    (challenge,) = c.events()
    assert isinstance(challenge, AuthenticationMD5Password)
    c.send(PasswordMessage(md5_response(user, password, challenge.salt)))
    return c


def failed(w: World) -> list[str]:
    return [line for line in w.logs if " login failed: " in line]


@pytest.mark.parametrize(
    ("user", "database", "password", "why"),
    [
        ("alice", DB, "wr0ng-Pw", "wrong password"),
        ("alice", "nodb", SECRET, 'no such database: "nodb" (no [pools.nodb] section)'),
        ("mallory", DB, SECRET, f'no such user: "mallory" is not a user of pool "{DB}"'),
        (
            "eve",
            "pgbouncer",
            "adm1n-Pw",
            'user "eve" may not use the admin console (not admin_username, admin_users or'
            " stats_users)",
        ),
        ("admin", "pgbouncer", "n0pe-Pw", "wrong password for the admin console"),
    ],
)
def test_a_failed_login_is_logged_once_with_its_cause(
    user: str, database: str, password: str, why: str
) -> None:
    w = md5_world()
    c = md5_try(w, user, database, password)
    (err,) = errors(c.events())
    # The client's answer is the same whatever the cause (PostgreSQL's own behaviour).
    assert (err.sqlstate, err.message) == (
        "28P01",
        f'password authentication failed for user "{user}"',
    )
    assert failed(w) == [
        f"C-{c.cid}: {database}/{user}@test login failed: {why} (the client is told "
        '"password authentication failed", whatever the cause)'
    ]
    assert not [line for line in w.logs if "closing because" in line]  # once, not twice
    assert all(password not in line and SECRET not in line for line in w.logs)


def test_logins_and_leavings_are_logged_as_pgbouncer_words_them() -> None:
    w = md5_world()
    c = md5_try(w, "alice", DB, SECRET)
    c.events()
    c.query("select 1")
    w.advance(3)
    c.close()
    assert [line for line in w.logs if line.startswith(f"C-{c.cid}:")] == [
        f"C-{c.cid}: {DB}/alice@test login attempt: db={DB} user=alice tls=no",
        f"C-{c.cid}: {DB}/alice@test closing because: client close request (age=3s)",
    ]


def test_the_three_switches() -> None:
    w = md5_world(log_connections=False, log_disconnections=False, log_pooler_errors=False)
    c = md5_try(w, "alice", DB, SECRET)
    c.events()
    c.close()
    md5_try(w, "alice", DB, "wr0ng-Pw").events()
    assert not [line for line in w.logs if line.startswith(("C-", "S-"))]
    w = md5_world(log_pooler_errors=False)
    w.refuse_connect = True
    assert errors(md5_try(w, "alice", DB, SECRET).events())  # the server refused
    assert not [line for line in w.logs if line.startswith("S-")]
    # PgCat's own switches turn the first two back on.
    w = md5_world(
        log_connections=False,
        log_disconnections=False,
        log_client_connections=True,
        log_client_disconnections=True,
    )
    c = md5_try(w, "alice", DB, SECRET)
    c.events()
    c.close()
    assert len([line for line in w.logs if line.startswith("C-")]) == 2


def test_a_flood_is_bounded_and_the_rest_counted() -> None:
    w = md5_world()
    for _ in range(BUDGET + 150):
        md5_try(w, "alice", DB, "wrong").events()
    assert len(failed(w)) == BUDGET
    assert not [line for line in w.logs if "suppressed" in line]
    w.advance(WINDOW)
    assert [line for line in w.logs if "suppressed" in line] == [
        f"suppressed 150 failed login message(s) in the last {WINDOW:g} s (at most {BUDGET} "
        f"of each kind are logged per {WINDOW:g} s)"
    ]
    md5_try(w, "alice", DB, "wrong").events()  # a new window: logged again
    assert len(failed(w)) == BUDGET + 1


def test_a_refused_server_is_logged_with_its_address_and_the_client_told_in_words() -> None:
    w = md5_world()
    w.refuse_connect = True
    c = md5_try(w, "alice", DB, SECRET)
    (err,) = errors(c.events())
    assert err.message == "could not connect to the server: Connection refused"
    assert [line for line in w.logs if line.startswith("S-")] == [
        f"S-1: {DB}/alice@pg:5432 closing because: could not connect to the server: "
        "Connection refused (age=0s)"
    ]


def test_the_last_line_says_why_the_pooler_stopped() -> None:
    w = World(config())
    c = logged_in(w)
    w.apply(w.engine.signal("SIGTERM", w.now))
    c.close()
    assert w.exited and w.logs[-1] == "pgsansio stopped: SIGTERM; the last client left"
    w = World(config())
    logged_in(w)  # idle: let go at once
    w.apply(w.engine.signal("SIGINT", w.now))
    assert w.exited and w.logs[-1] == "pgsansio stopped: SIGINT; every client finished"
    w = World(config())
    logged_in(w).query("begin")  # in a transaction: waited for, up to shutdown_timeout
    w.apply(w.engine.signal("SIGINT", w.now))
    assert not w.exited
    w.advance(60)
    assert w.exited and w.logs[-1] == (
        "pgsansio stopped: SIGINT; shutdown_timeout (60000 ms) passed with 1 client(s) still "
        "connected, who were disconnected"
    )
    w = World(config())
    w.apply(w.engine.signal("SIGINT", w.now))
    w.apply(w.engine.signal("SIGINT", w.now))
    assert "pgsansio stopped: SIGINT during shutdown, so at once" in w.logs[-1]


# --- with a real pooler and a real client -------------------------------------------------


def _config(port: int) -> Config:
    user = UserConfig(username="alice", password=SECRET, pool_size=2, auth_type="md5")
    pool = PoolConfig(
        name="appdb",
        users={"alice": user},
        shards=(ShardConfig(0, "appdb", (ServerAddress("127.0.0.1", port, "primary"),)),),
    )
    general = General(host="127.0.0.1", port=0, admin_username="admin", admin_password="x")
    return Config(general=general, pools={"appdb": pool})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_server() -> Iterator[int]:
    """A port where an HTTP server answers whatever it is sent."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(1024)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        t.join(5)
        listener.close()


def _connect(port: int, **kw: str) -> str:
    args = {"host": "127.0.0.1", "port": str(port), "user": "alice", "password": SECRET}
    args |= {"dbname": "appdb", "sslmode": "disable", "connect_timeout": "10"} | kw
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(" ".join(f"{k}={v}" for k, v in args.items())).close()
    return str(info.value)


def _pooler_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pgsansio"]


def test_real_refused_server(caplog: pytest.LogCaptureFixture) -> None:
    port = _free_port()
    with caplog.at_level(logging.INFO), running(_config(port)) as p:
        message = _connect(p.port)
    assert "could not connect to the server: connection refused" in message
    assert "Errno" not in message and str(port) not in message
    lines = [line for line in _pooler_lines(caplog) if line.startswith("S-")]
    assert lines == [
        f"S-1: appdb/alice@127.0.0.1:{port} closing because: could not connect to the "
        "server: connection refused (age=0s)"
    ]


def test_real_server_that_is_not_postgres(
    http_server: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO), running(_config(http_server)) as p:
        message = _connect(p.port)
    assert (
        "the server is not speaking the PostgreSQL protocol: check its host and port in the "
        "pooler's configuration"
    ) in message
    assert str(http_server) not in message and "length" not in message
    (line,) = [line for line in _pooler_lines(caplog) if line.startswith("S-")]
    assert line.startswith(f"S-1: appdb/alice@127.0.0.1:{http_server} closing because: the ")
    assert "it answered like an HTTP server" in line


def test_real_unknown_database(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO), running(_config(_free_port())) as p:
        message = _connect(p.port, dbname="apdb")
    assert 'password authentication failed for user "alice"' in message
    (line,) = [line for line in _pooler_lines(caplog) if " login failed: " in line]
    assert line.startswith("C-1: apdb/alice@127.0.0.1:")
    assert 'no such database: "apdb" (no [pools.apdb] section)' in line
    assert SECRET not in "".join(_pooler_lines(caplog))


def test_the_logging_keys_load_from_pgcat_toml() -> None:
    text = SHARDED.replace(
        "worker_threads = 8",
        "log_connections = false\nlog_disconnections = false\nlog_pooler_errors = false",
    )
    general = parse_config(text).general
    assert not (general.log_connections or general.log_disconnections or general.log_pooler_errors)
    assert General().log_connections and General().log_pooler_errors


def test_a_connection_error_is_words_without_errno_or_address() -> None:
    refused = ConnectionRefusedError(111, "Connect call failed ('10.0.0.5', 5432)")
    assert error_text(refused) == "connection refused"
    assert error_text(TimeoutError()) == "timed out"
    unknown = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert error_text(unknown) == "cannot resolve the host name (name or service not known)"


def test_a_server_that_never_answers_is_logged_as_timed_out() -> None:
    db = Database(users={"alice": FakeUser(SECRET, "md5")}, databases=[DB], stall_logins=True)
    w = World(config(auth_type="md5", password=SECRET), db)
    c = md5_try(w, "alice", DB, SECRET)
    for _ in range(10):
        w.advance(1)
    (err,) = errors(c.events())
    assert (err.sqlstate, err.message) == ("08001", "timed out connecting to the server")
    assert [line for line in w.logs if line.startswith("S-")] == [
        f"S-1: {DB}/alice@pg:5432 closing because: timed out connecting to the server (age=5s)"
    ]


def test_a_server_refusing_the_pooler_login_is_logged_with_its_words() -> None:
    db = Database(users={"alice": FakeUser("other", "md5")}, databases=[DB])
    w = World(config(auth_type="md5", password=SECRET), db)
    c = md5_try(w, "alice", DB, SECRET)
    (err,) = errors(c.events())
    assert err.sqlstate == "28P01"
    (line,) = [line for line in w.logs if line.startswith("S-")]
    assert line == (
        f"S-1: {DB}/alice@pg:5432 closing because: the server refused the login: md5 "
        'authentication failed for user "alice" (age=0s)'
    )
    assert SECRET not in " ".join(w.logs)


def test_clients_waiting_for_a_failed_server_do_not_repeat_its_line() -> None:
    w = md5_world()
    w.refuse_connect = True
    clients = [md5_try(w, "alice", DB, SECRET) for _ in range(3)]
    assert all(errors(c.events()) for c in clients)
    assert [line.split(" closing")[0] for line in w.logs if line[:2] in ("S-", "C-")] == [
        f"S-{n}: {DB}/alice@pg:5432" for n in (1, 2, 3)
    ]
