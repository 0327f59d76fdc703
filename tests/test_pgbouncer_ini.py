"""pgbouncer.ini: the reader on its own, then ``pgsansio run pgbouncer.ini`` against a
real PostgreSQL with real clients (userlist.txt in each secret format, the ``*``
fallback database, ``%include``, RELOAD by SIGHUP and by the console).
"""

from __future__ import annotations

import hashlib
import pathlib
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from _pooler import running

from pgsansio.config import ConfigError, load_config
from pgsansio.config.pgbouncer import is_pgbouncer_ini, parse_connstr, parse_userlist
from pgsansio.testing.cluster import TEST_DATABASE, Cluster

# --------------------------------------------------------------------------------------
# The reader alone
# --------------------------------------------------------------------------------------


def _write(tmp_path: pathlib.Path, text: str, name: str = "pgbouncer.ini") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_chosen_by_content_not_name(tmp_path: pathlib.Path) -> None:
    path = _write(
        tmp_path,
        "[databases]\nappdb = host=127.0.0.1\n[pgbouncer]\nlisten_port = 7000\n",
        name="settings.conf",
    )
    config = load_config(path)
    assert config.general.port == 7000
    assert list(config.pools) == ["appdb"]
    assert not is_pgbouncer_ini("[general]\nport = 1\n[pools.x]\n")


def test_pgbouncer_defaults(tmp_path: pathlib.Path) -> None:
    _write(tmp_path, '"bob" "pw"\n', "users.txt")
    path = _write(
        tmp_path,
        "[databases]\nappdb = host=10.0.0.5 dbname=real\n"
        "[pgbouncer]\nlisten_addr = *\nauth_file = users.txt\n",
    )
    config = load_config(path)
    g = config.general
    assert (g.host, g.port, g.max_client_conn) == ("*", 6432, 100)
    assert (g.connect_timeout, g.idle_timeout, g.server_lifetime) == (15000, 600000, 3600000)
    assert g.client_login_timeout == 60000 and g.client_tls_sslmode == "disable"
    # not PgBouncer's 128 and 2 GiB: the model's connect-storm backlog and 64 MiB cap
    assert (g.listen_backlog, g.client_buffer_limit) == (4096, 64 * 1024 * 1024)
    assert (g.logfile, g.pidfile) == ("", "")
    pool = config.pools["appdb"]
    assert pool.pool_mode == "session"
    assert pool.shards[0].database == "real"
    assert (pool.shards[0].servers[0].host, pool.shards[0].servers[0].port) == ("10.0.0.5", 5432)
    bob = pool.users["bob"]
    assert (bob.pool_size, bob.password, bob.auth_type) == (20, "pw", "md5")
    assert config.warnings == ()


def test_keys_and_overrides(tmp_path: pathlib.Path) -> None:
    scram = "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"
    _write(
        tmp_path,
        '"alice" "md5' + "0" * 32 + '"\n"bob" "' + scram + '"\n"admin" "adm"\n; comment\n',
        "userlist.txt",
    )
    _write(tmp_path, "[databases]\nincluded = host=/var/run/postgresql port=5433\n", "more.ini")
    path = _write(
        tmp_path,
        "[databases]\n"
        "appdb = host=db1 port=6000 dbname='my db' user=app password='it''s' pool_size=7"
        " min_pool_size=2 pool_mode=transaction\n"
        "[users]\nalice = pool_mode=session\n"
        "[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = 6500\nauth_type = md5\n"
        "auth_file = userlist.txt\nadmin_users = admin\nserver_lifetime = 1.5\n"
        "query_wait_timeout = 120\nmax_client_conn = 500\nlisten_backlog = 128\n"
        "max_packet_size = 100000\nlogfile = p.log\npidfile = p.pid\n%include more.ini\n",
    )
    config = load_config(path)
    pool = config.pools["appdb"]
    assert pool.shards[0].database == "my db"
    alice, bob = pool.users["alice"], pool.users["bob"]
    assert alice.pool_mode == "session" and bob.pool_mode == "transaction"
    assert (alice.pool_size, alice.min_pool_size, alice.server_lifetime) == (7, 2, 1500)
    assert alice.backend_username == "app" and alice.backend_password == "it's"
    assert bob.auth_type == "scram-sha-256"  # md5 uses SCRAM for a SCRAM secret
    assert config.general.admin_username == "admin" and config.general.admin_password == "adm"
    assert config.general.max_client_conn == 500
    assert (config.general.listen_backlog, config.general.client_buffer_limit) == (128, 100000)
    assert (config.general.logfile, config.general.pidfile) == ("p.log", "p.pid")
    assert (config.general.syslog, config.general.syslog_ident) == (False, "pgbouncer")
    bad_facility = "[pgbouncer]\nsyslog_facility = kern\n[databases]\n"
    with pytest.raises(ConfigError, match=r":2: \[pgbouncer\] syslog_facility: must be one of"):
        load_config(_write(tmp_path, bad_facility))
    huge = load_config(
        _write(tmp_path, "[pgbouncer]\nmax_packet_size = 2147483647\n[databases]\n")
    )
    assert huge.general.client_buffer_limit == 0x3FFFFFFF  # the protocol's own limit
    inc = config.pools["included"].shards[0].servers[0]
    assert (inc.host, inc.port) == ("/var/run/postgresql", 5433)
    assert config.warnings == ()  # query_wait_timeout at its default says nothing


def test_every_unhonoured_key_is_warned_by_name(tmp_path: pathlib.Path) -> None:
    path = _write(
        tmp_path,
        "[databases]\nappdb = host=x connect_query='SELECT 1' bogus=1\n"
        "[pgbouncer]\nlisten_addr = 127.0.0.1\npkt_buf = 8192\nso_reuseport = 1\n"
        "transaction_timeout = 30\nmisspelt_key = 3\nserver_fast_close = 1\n",
    )
    warnings = "\n".join(load_config(path).warnings)
    for name in (
        "pkt_buf",
        "so_reuseport",
        "transaction_timeout",
        "connect_query",
        "server_fast_close",
    ):
        assert f"{name}" in warnings, name
    assert "misspelt_key: unknown key" in warnings
    assert "unknown setting bogus" in warnings
    assert f"{path}:5: [pgbouncer] pkt_buf" in warnings  # file and line


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[pgbouncer]\nlisten_port = abc\n[databases]\na = host=x\n",
            ":2: [pgbouncer] listen_port",
        ),
        ("[pgbouncer]\n[databases]\na = host=x port\n", ":3: [databases] a: expected name=value"),
        ("[pgbouncer]\npool_mode = fast\n[databases]\na = host=x\n", "must be session"),
        ("[pgbouncer]\nauth_file = nowhere.txt\n[databases]\na =\n", "nowhere.txt: cannot read"),
        ("[pgbouncer]\nserver_lifetime = soon\n[databases]\na =\n", "a time in seconds"),
        ("[databases]\na = host=x\n", "[pgbouncer] section is missing"),
        ("[pgbouncer]\n[databases]\n%include missing.ini\n", "missing.ini: cannot read"),
        ("[pgbouncer]\nunix_socket_dir\n", "line 2: expected key = value"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path: pathlib.Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)


def test_connstr_and_userlist_syntax() -> None:
    assert parse_connstr("host=h  dbname='a b' password='x\\'y' user=u", "f", 1, "k") == {
        "host": "h",
        "dbname": "a b",
        "password": "x'y",
        "user": "u",
    }
    assert parse_userlist('"a""b" "p w" extra\n# no\n"c" ""\n', "u") == {'a"b': "p w", "c": ""}
    with pytest.raises(ConfigError, match="secret"):
        parse_userlist('"a"\n', "u")


# --------------------------------------------------------------------------------------
# Against a real PostgreSQL
# --------------------------------------------------------------------------------------


def _userlist(pg15: Cluster) -> str:
    scram = pg15.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'scram_user'").strip()
    md5 = "md5" + hashlib.md5(b"md5-secretmd5_user").hexdigest()
    return (
        f'"password_user" "secret-pw"\n"md5_user" "{md5}"\n"scram_user" "{scram}"\n'
        '"admin" "admin-pw"\n'
    )


def _ini(pg15: Cluster, extra_db: str = "") -> str:
    return (
        "[databases]\n"
        f"{TEST_DATABASE} = host=127.0.0.1 port={pg15.port} pool_size=2\n"
        f"{extra_db}"
        f"* = host=127.0.0.1 port={pg15.port}\n"
        "%include more.ini\n"
        "[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = 0\nauth_type = md5\n"
        "auth_file = userlist.txt\nadmin_users = admin\npool_mode = transaction\n"
    )


def _dsn(port: int, user: str, password: str, db: str = TEST_DATABASE) -> str:
    return f"host=127.0.0.1 port={port} user={user} password='{password}' dbname={db}"


def _current_db(port: int, user: str, password: str, db: str = TEST_DATABASE) -> str:
    with psycopg.connect(_dsn(port, user, password, db), connect_timeout=10) as conn:
        row = conn.execute("SELECT current_database(), current_user").fetchone()
        assert row is not None and row[1] == user
        return str(row[0])


def test_run_pgbouncer_ini(pg15: Cluster, tmp_path: pathlib.Path) -> None:
    (tmp_path / "userlist.txt").write_text(_userlist(pg15))
    (tmp_path / "more.ini").write_text(
        f"[databases]\nviainclude = host=127.0.0.1 port={pg15.port} dbname={TEST_DATABASE}\n"
    )
    ini = _write(tmp_path, _ini(pg15))
    config = load_config(ini)
    with running(config, config_path=str(ini)) as p:
        # userlist.txt in each format: plain, md5 hash, SCRAM verifier (pass-through)
        for user, password in (
            ("password_user", "secret-pw"),
            ("md5_user", "md5-secret"),
            ("scram_user", "scram-secret"),
        ):
            assert _current_db(p.port, user, password) == TEST_DATABASE
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            _current_db(p.port, "md5_user", "wrong")
        # the * fallback: a database with no entry of its own
        assert _current_db(p.port, "password_user", "secret-pw", "postgres") == "postgres"
        # %include
        assert _current_db(p.port, "md5_user", "md5-secret", "viainclude") == TEST_DATABASE

        # RELOAD by SIGHUP after editing the ini: a new alias appears
        alias = f"alias1 = host=127.0.0.1 port={pg15.port} dbname=postgres\n"
        ini.write_text(_ini(pg15, alias).replace("* = host", "; * = host"))
        p.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            try:
                assert _current_db(p.port, "md5_user", "md5-secret", "alias1") == "postgres"
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with pytest.raises(psycopg.OperationalError):  # the * entry is gone
            _current_db(p.port, "md5_user", "md5-secret", "template1")

        # RELOAD from the console (admin_users with its auth_file password)
        ini.write_text(_ini(pg15, alias.replace("alias1", "alias2")))
        with psycopg.connect(
            _dsn(p.port, "admin", "admin-pw", "pgbouncer"), autocommit=True
        ) as admin:
            admin.execute("RELOAD")
        assert _current_db(p.port, "scram_user", "scram-secret", "alias2") == "postgres"


def _cli(command: str, path: pathlib.Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pgsansio", command, str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_check_command(tmp_path: pathlib.Path) -> None:
    path = _write(
        tmp_path, "[databases]\na = host=x\n[pgbouncer]\nlisten_addr=*\npkt_buf = 8192\n"
    )
    out = _cli("check", path)
    assert out.returncode == 0, out.stderr
    assert "[pgbouncer] pkt_buf: not honoured" in out.stderr
    assert '[pools.a.shards.0]\ndatabase = "a"' in out.stdout


def test_convert_round_trip(tmp_path: pathlib.Path) -> None:
    """pgsansio convert: the TOML loads back (pgcat.toml reader) as the same config."""
    scram = "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"
    _write(tmp_path, f'"alice" "pw"\n"bob" "{scram}"\n"admin" "adm"\n', "userlist.txt")
    ini = _write(
        tmp_path,
        "[databases]\nappdb = host=db1 port=6000 dbname=real user=app password=x pool_size=7\n"
        "* = host=/var/run/postgresql max_db_connections=4\n"
        "[pgbouncer]\nlisten_addr = 127.0.0.1\nauth_file = userlist.txt\nadmin_users = admin\n"
        "query_timeout = 2\nreserve_pool_size = 2\nlogfile = /var/log/x.log\n"
        "pkt_buf = 8192\nmax_packet_size = 100000\n"
        "syslog = 1\nsyslog_facility = local3\n",
    )
    out = _cli("convert", ini)
    assert out.returncode == 0, out.stderr
    assert "not carried over: " in out.stderr and "pkt_buf" in out.stderr
    assert "logfile" not in out.stderr and "max_packet_size" not in out.stderr
    assert "syslog" not in out.stderr
    toml = _write(tmp_path, out.stdout, "pgcat.toml")
    back, original = load_config(toml), load_config(ini)
    assert back.general == original.general
    assert back.pools == original.pools
    bad = _cli("convert", toml)
    assert bad.returncode == 78 and "is not a pgbouncer.ini" in bad.stderr


def test_docs_list_every_key() -> None:
    """docs/pgbouncer.md has a row for every key PgBouncer has, with its status."""
    from pgsansio.config._pgbouncer_keys import BOUNCER_KEYS, DB_KEYS, USER_KEYS

    doc = (pathlib.Path(__file__).parent.parent / "docs" / "pgbouncer.md").read_text()
    for key in [*BOUNCER_KEYS, *DB_KEYS, *USER_KEYS]:
        assert f"| `{key}` |" in doc, key


def test_auth_user_looks_up_unlisted_users(pg15: Cluster, tmp_path: pathlib.Path) -> None:
    """auth_user + auth_query: a user missing from auth_file logs in with the secret
    the server holds (md5 hash or SCRAM verifier), as in PgBouncer."""
    (tmp_path / "userlist.txt").write_text(f'"{pg15.superuser}" "unused-trust"\n')
    ini = _write(
        tmp_path,
        f"[databases]\n{TEST_DATABASE} = host=127.0.0.1 port={pg15.port}\n"
        "[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = 0\nunix_socket_dir =\n"
        f"auth_file = userlist.txt\nauth_user = {pg15.superuser}\n"
        "auth_query = SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename=$1\n",
    )
    with running(load_config(ini), config_path=str(ini)) as p:
        assert _current_db(p.port, "md5_user", "md5-secret") == TEST_DATABASE
        assert _current_db(p.port, "scram_user", "scram-secret") == TEST_DATABASE
        for user, password in (("md5_user", "nope"), ("nobody_here", "x")):
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                _current_db(p.port, user, password)


def test_admin_users_and_stats_users(pg15: Cluster, tmp_path: pathlib.Path) -> None:
    """admin_users may do everything, stats_users only read, with auth_file passwords."""
    (tmp_path / "userlist.txt").write_text(
        '"boss" "boss-pw"\n"ops" "ops-pw"\n"mon" "mon-pw"\n"md5_user" "md5-secret"\n'
    )
    ini = _write(
        tmp_path,
        f"[databases]\n{TEST_DATABASE} = host=127.0.0.1 port={pg15.port}\n"
        "[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = 0\nunix_socket_dir =\n"
        "auth_file = userlist.txt\nadmin_users = boss, ops\nstats_users = mon\n",
    )
    with running(load_config(ini), config_path=str(ini)) as p:
        for user, password in (("boss", "boss-pw"), ("ops", "ops-pw")):
            with psycopg.connect(_dsn(p.port, user, password, "pgbouncer"), autocommit=True) as a:
                a.execute("RELOAD")
        with psycopg.connect(_dsn(p.port, "mon", "mon-pw", "pgbouncer"), autocommit=True) as m:
            assert m.execute("SHOW POOLS").fetchall()
            with pytest.raises(psycopg.Error, match="admin access needed") as info:
                m.execute("RELOAD")
            assert info.value.sqlstate == "42501"
        for user, password in (("mon", "wrong"), ("md5_user", "md5-secret")):
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(_dsn(p.port, user, password, "pgbouncer")).close()


def test_console_user_lists_in_pgcat_toml() -> None:
    from pgsansio.config import parse_config

    base = (
        '[general]\nadmin_username = "a"\nadmin_password = "b"\n{}\n'
        '[pools.db.users.0]\nusername = "u"\npassword = "p"\npool_size = 1\n'
        '[pools.db.shards.0]\ndatabase = "db"\nservers = [["127.0.0.1", 5432, "primary"]]\n'
    )
    assert parse_config(base.format('stats_users = ["u"]')).general.stats_users == ("u",)
    with pytest.raises(ConfigError, match=r"general\.stats_users: must be an array of user names"):
        parse_config(base.format('stats_users = "u"'))


def test_console_parity_views_and_wait_close(pg15: Cluster, tmp_path: pathlib.Path) -> None:
    """PgBouncer's remaining views answer with its columns; WAIT_CLOSE returns once the
    servers a RECONNECT marked are closed (at the client's release, here)."""
    (tmp_path / "userlist.txt").write_text('"admin" "admin-pw"\n"md5_user" "md5-secret"\n')
    (tmp_path / "more.ini").write_text("")
    ini = _write(tmp_path, _ini(pg15))
    with running(load_config(ini), config_path=str(ini)) as p:
        console = psycopg.connect(_dsn(p.port, "admin", "admin-pw", "pgbouncer"), autocommit=True)
        with console, psycopg.connect(_dsn(p.port, "md5_user", "md5-secret")) as app:
            app.execute("SELECT 1")  # a transaction: the server stays linked
            sockets = console.execute("SHOW SOCKETS")
            names = [d.name for d in sockets.description or ()]
            assert names[:3] == ["type", "user", "database"] and names[-1] == "send_avail"
            assert {row[0] for row in sockets.fetchall()} == {"C", "S"}
            for view, first in (("FDS", "fd"), ("MEM", "name"), ("DNS_HOSTS", "hostname")):
                cur = console.execute(f"SHOW {view}")
                assert cur.description is not None and cur.description[0].name == first
                assert cur.fetchall() == []
            console.execute(f"RECONNECT {TEST_DATABASE}")
            done: list[bool] = []
            waiter = threading.Thread(
                target=lambda: done.append(bool(console.execute("WAIT_CLOSE")))
            )
            waiter.start()
            time.sleep(0.3)
            assert not done  # the linked server is still open
            app.commit()  # released: it closes, as RECONNECT asked
            waiter.join(10)
            assert done == [True]


def test_console_set_applies_like_reload(pg15: Cluster, tmp_path: pathlib.Path) -> None:
    """SET key = value on the console changes the running setting (PgBouncer's names and
    seconds); settings resolved into the pools need the file and RELOAD; what is not a
    pooler setting (a driver's session setup) is accepted and ignored."""
    (tmp_path / "userlist.txt").write_text(
        '"admin" "admin-pw"\n"mon" "mon-pw"\n"md5_user" "md5-secret"\n'
    )
    (tmp_path / "more.ini").write_text("")
    ini = _write(tmp_path, _ini(pg15) + "stats_users = mon\n")
    with running(load_config(ini), config_path=str(ini)) as p:
        admin_dsn = _dsn(p.port, "admin", "admin-pw", "pgbouncer")
        with psycopg.connect(admin_dsn, autocommit=True) as console:
            console.execute("SET query_timeout = 0.5")
            console.execute("SET application_name = 'psql'")  # ignored, as before
            rows = {r[0]: r[1] for r in console.execute("SHOW CONFIG").fetchall()}
            assert rows["query_timeout"] == "500"
            with pytest.raises(psycopg.Error, match="change it in the file and RELOAD") as info:
                console.execute("SET default_pool_size = 5")
            assert info.value.sqlstate == "55P02"
            with pytest.raises(psycopg.Error, match="must be a number"):
                console.execute("SET query_timeout TO 'soon'")
        app = psycopg.connect(_dsn(p.port, "md5_user", "md5-secret"), autocommit=True)
        with app, pytest.raises(psycopg.OperationalError, match="query timeout"):
            app.execute("SELECT pg_sleep(3)")
        mon = psycopg.connect(_dsn(p.port, "mon", "mon-pw", "pgbouncer"), autocommit=True)
        with mon, pytest.raises(psycopg.Error, match="admin access needed"):
            mon.execute("SET query_timeout = 0")
        with psycopg.connect(admin_dsn, autocommit=True) as console:
            console.execute("RELOAD")  # the file again: no query_timeout
            rows = {r[0]: r[1] for r in console.execute("SHOW CONFIG").fetchall()}
            assert rows["query_timeout"] == "0"


def test_users_section_checked_once(tmp_path: pathlib.Path) -> None:
    _write(tmp_path, '"alice" "pw"\n', "userlist.txt")
    text = (
        "[databases]\na = host=x\nb = host=y\n[users]\nalice = pool_mode=statement pool_size={}\n"
        "[pgbouncer]\nlisten_addr = 127.0.0.1\nauth_file = userlist.txt\n"
    )
    config = load_config(_write(tmp_path, text.format(3)))
    assert [w for w in config.warnings if "statement pooling" in w] == [
        f"{tmp_path / 'pgbouncer.ini'}:5: [users] alice: statement pooling is not implemented; "
        "transaction pooling is used"
    ]
    assert config.pools["b"].users["alice"].pool_size == 3
    with pytest.raises(ConfigError, match=r":5: \[users\] alice: pool_size must be an integer"):
        load_config(_write(tmp_path, text.format("many")))


def test_debian_default_ini_runs(tmp_path: pathlib.Path) -> None:
    """Debian's shipped pgbouncer.ini (no databases, console over the Unix socket as
    the pooler's OS user, logfile and pidfile set) starts and serves the console."""
    sockets = tmp_path / "run"
    sockets.mkdir()
    (tmp_path / "userlist.txt").write_text("")
    ini = _write(
        tmp_path,
        "[databases]\n\n[users]\n\n[pgbouncer]\nlogfile = /var/log/postgresql/pgbouncer.log\n"
        "pidfile = /var/run/postgresql/pgbouncer.pid\nlisten_addr = localhost\n"
        f"listen_port = 0\nunix_socket_dir = {sockets}\nauth_type = md5\n"
        "auth_file = userlist.txt\n",
    )
    config = load_config(ini)
    assert not config.pools and len(config.warnings) == 1  # listen_addr; logfile is honoured
    with running(config, config_path=str(ini)) as p:
        dsn = f"host={sockets} port={p.port} user=pgbouncer dbname=pgbouncer"
        with psycopg.connect(dsn, autocommit=True) as console:
            assert console.execute("SHOW DATABASES").fetchall() == []
