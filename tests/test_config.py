"""The pgcat.toml loader: PgCat's defaults and precedence, every validation error, the
unknown-key warnings, the effective-config writer and ``pgsansio check``.

Expected defaults are written out here from the reference table (PgCat's code, not its
CONFIG.md) rather than read from the dataclasses, so that a wrong default in either
place fails a test.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
import tomllib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgsansio.config import ConfigError, effective_config_toml, load_config, parse_config
from pgsansio.config import pgcat as config_module
from pgsansio.config.model import (
    Config,
    General,
    PoolConfig,
    ServerAddress,
    ShardConfig,
    UserConfig,
)

DATA = pathlib.Path(__file__).parent / "data"
EXAMPLE = DATA / "pgcat.toml"

# PgCat's pgcat.minimal.toml, unknown key `query_result_capacity` included.
MINIMAL = """\
# The most basic config: PgBouncer in transaction mode with one server.
[general]
host = "127.0.0.1"
port = 6432
admin_username = "pgcat"
admin_password = "pgcat"

[pools.pgml]
query_parser_enabled = true
query_result_capacity = 1

[pools.pgml.users.0]
username = "postgres"
password = "postgres"
pool_size = 10
min_pool_size = 1
pool_mode = "transaction"

[pools.pgml.shards.0]
servers = [
  ["127.0.0.1", 5432, "primary"]
]
database = "postgres"
"""

PRIMARY = 'servers = [["127.0.0.1", 5432, "primary"]]'

# What PgCat's example file asks for that pgsansio does not do, each with what happens
# instead (the same list `check` prints and `run` logs).
EXAMPLE_WARNINGS = (
    "general.autoreload: ignored: the file is not watched; send SIGHUP (or RELOAD on the "
    "admin console) to reload it",
    "general.worker_threads: ignored: each pgsansio process serves its clients from one "
    "event loop (one CPU core), whatever this says; to use more cores, set workers = N "
    "(docs/workers.md)",
    "plugins: ignored: PgCat's plugins (query blocking, table access, query logging, "
    "intercept) are not implemented; every query is sent to the server as it is",
    "pools.sharded_db.shards.0.mirrors: ignored: mirroring is not implemented; no traffic "
    "is copied to these hosts",
)


def make(
    general: str = "",
    pool: str = "",
    user: str = "",
    shard: str = PRIMARY,
    extra: str = "",
) -> str:
    """A small valid config, with text added to each section."""
    return f"""
[general]
admin_username = "admin"
admin_password = "admin-secret"
{general}

[pools.db]
{pool}

[pools.db.users.0]
username = "app"
password = "app-secret"
pool_size = 10
{user}

[pools.db.shards.0]
database = "appdb"
{shard}

{extra}
"""


def parse(text: str) -> Config:
    return parse_config(text, "test.toml")


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value


def masked(config: Config) -> Config:
    """``config`` with every secret replaced the way the effective config prints it."""

    def hide(value: str | None) -> str | None:
        return None if value is None else "********"

    general = dataclasses.replace(
        config.general,
        admin_password=hide(config.general.admin_password) or "",
        auth_query_password=hide(config.general.auth_query_password),
    )
    pools = {}
    for name, pool in config.pools.items():
        users = {
            username: dataclasses.replace(
                user, password=hide(user.password), server_password=hide(user.server_password)
            )
            for username, user in pool.users.items()
        }
        pools[name] = dataclasses.replace(
            pool, users=users, auth_query_password=hide(pool.auth_query_password)
        )
    return dataclasses.replace(config, general=general, pools=pools, warnings=())


# --------------------------------------------------------------------------------------
# PgCat's example and minimal files
# --------------------------------------------------------------------------------------


def test_example_file_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.path == str(EXAMPLE)
    assert list(config.pools) == ["sharded_db", "simple_db"]
    g = config.general
    assert (g.host, g.port, g.enable_prometheus_exporter) == ("0.0.0.0", 6432, True)
    assert (g.connect_timeout, g.idle_timeout, g.server_lifetime) == (5000, 30000, 86400000)
    assert (g.autoreload, g.worker_threads) == (15000, 5)
    assert (g.admin_username, g.admin_password) == ("admin_user", "admin_pass")
    assert g.tls_certificate is None and g.tls_private_key is None

    sharded = config.pools["sharded_db"]
    assert sharded.name == "sharded_db"
    assert [s.index for s in sharded.shards] == [0, 1, 2]
    assert [s.database for s in sharded.shards] == ["shard0", "shard1", "shard2"]
    assert sharded.shards[0].servers == (
        ServerAddress("127.0.0.1", 5432, "primary"),
        ServerAddress("localhost", 5432, "replica"),
    )
    assert sharded.shards[0].mirrors == (("10.0.0.9", 5432, 0),)
    assert sharded.shards[1].mirrors == ()
    assert sharded.query_parser_enabled and sharded.query_parser_read_write_splitting
    assert sharded.sharding_key_regex == r"/\* sharding_key: (\d+) \*/"
    assert sharded.shard_id_regex == r"/\* shard_id: (\d+) \*/"
    assert sharded.automatic_sharding_key == "data.id"
    assert (sharded.connect_timeout, sharded.idle_timeout) == (3000, 40000)
    assert sharded.server_lifetime == 86400000  # from [general]

    assert list(sharded.users) == ["sharding_user", "other_user"]  # keyed by username
    other = sharded.users["other_user"]
    assert (other.pool_size, other.min_pool_size, other.statement_timeout) == (21, 3, 15000)
    assert other.connect_timeout == 2500  # the user's own
    assert other.idle_timeout == 40000  # the pool's
    assert other.server_lifetime == 86400000  # [general]'s
    assert sharded.users["sharding_user"].connect_timeout == 3000

    simple = config.pools["simple_db"]
    assert simple.pool_mode == "session" and simple.default_role == "primary"
    assert simple.users["simple_user"].pool_mode == "transaction"  # user overrides pool
    assert simple.users["report_user"].pool_mode == "session"  # inherited
    report = simple.users["report_user"]
    assert report.backend_username == "reporting"
    assert report.backend_password == "s3cret-on-the-server"
    assert len(simple.shards) == 1 and simple.shards[0].database == "some_db"

    # What is accepted but not acted on is named, with what happens instead.
    assert config.warnings == tuple(f"{EXAMPLE}: {w}" for w in EXAMPLE_WARNINGS)


def test_pgcat_minimal_file() -> None:
    config = parse(MINIMAL)
    pool = config.pools["pgml"]
    user = pool.users["postgres"]
    assert (user.pool_size, user.min_pool_size, user.pool_mode) == (10, 1, "transaction")
    assert pool.shards == (
        ShardConfig(0, "postgres", (ServerAddress("127.0.0.1", 5432, "primary"),)),
    )
    assert config.warnings == (
        "test.toml: pools.pgml.query_result_capacity: unknown key, ignored",
    )


def test_pgcat_example_typo_section_is_a_warning() -> None:
    # PgCat's own pgcat.toml has [pool.sharded_db.plugins]; PgCat ignores it silently.
    config = parse(make(extra="[pool.db.plugins.query_logger]\nenabled = true"))
    assert config.warnings == ("test.toml: pool: unknown key, ignored (did you mean pools?)",)


# --------------------------------------------------------------------------------------
# Defaults: PgCat's code defaults (reference section 2), not CONFIG.md
# --------------------------------------------------------------------------------------

GENERAL_DEFAULTS: dict[str, Any] = {
    "host": "0.0.0.0",
    "port": 5432,  # CONFIG.md says 6432
    "enable_prometheus_exporter": False,
    "prometheus_exporter_port": 9930,
    "connect_timeout": 1000,
    "idle_timeout": 600000,  # CONFIG.md says 30000
    "server_lifetime": 3600000,  # CONFIG.md says 86400000
    "idle_client_in_transaction_timeout": 0,
    "healthcheck_timeout": 1000,
    "healthcheck_delay": 30000,
    "shutdown_timeout": 60000,
    "ban_time": 60,
    "log_client_connections": False,
    "log_client_disconnections": False,
    "autoreload": None,  # CONFIG.md says 15000
    "worker_threads": 4,  # CONFIG.md says 5
    "tcp_keepalives_idle": 5,
    "tcp_keepalives_count": 5,
    "tcp_keepalives_interval": 5,
    "tcp_user_timeout": 10000,
    "tls_certificate": None,
    "tls_private_key": None,
    "server_tls": False,
    "verify_server_certificate": False,
    "admin_auth_type": "md5",
    "validate_config": True,
    "server_round_robin": True,  # CONFIG.md says false
    "dns_cache_enabled": False,
    "dns_max_ttl": 30,
    "auth_query": None,
    "auth_query_user": None,
    "auth_query_password": None,
    # pgsansio extensions
    "server_reset_query": "DISCARD ALL",
    "max_client_conn": 0,
    "healthcheck_interval": 0,
    "client_tls_sslmode": "prefer",
    "client_tls_ca_file": None,
    "server_tls_ca_file": None,
    # reliability (docs/reliability.md)
    "listen_backlog": 4096,
    "client_login_timeout": 60000,
    "client_tcp_keepalives_idle": 0,
    "client_tcp_keepalives_interval": 0,
    "client_tcp_keepalives_count": 0,
    "client_tcp_user_timeout": 0,
    "log_connections": True,
    "log_disconnections": True,
    "log_pooler_errors": True,
    "unix_socket_dir": "",
    "unix_socket_mode": 0o777,
    "unix_socket_group": "",
    "query_wait_timeout": 0,
    "reserve_pool_timeout": 5000,
    "query_timeout": 0,
    "client_idle_timeout": 0,
    "admin_users": (),
    "stats_users": (),
    "application_name_add_host": False,
    "pin_session_state": True,
    "client_buffer_limit": 64 * 1024 * 1024,
    "total_buffer_limit": 256 * 1024 * 1024,
    "logfile": "",
    "pidfile": "",
    "syslog": False,
    "syslog_ident": "pgsansio",
    "syslog_facility": "daemon",
    "workers": 1,
}

POOL_DEFAULTS: dict[str, Any] = {
    "pool_mode": "transaction",
    "load_balancing_mode": "random",
    "default_role": "any",
    "query_parser_enabled": False,  # CONFIG.md says true
    "query_parser_max_length": None,
    "query_parser_read_write_splitting": False,
    "primary_reads_enabled": False,  # CONFIG.md says true
    "checkout_failure_limit": None,
    "sharding_function": "pg_bigint_hash",
    "automatic_sharding_key": None,
    "sharding_key_regex": None,
    "shard_id_regex": None,
    "regex_search_limit": 1000,
    "default_shard": "shard_0",
    "auth_query": None,
    "auth_query_user": None,
    "auth_query_password": None,
    "cleanup_server_connections": True,
    "log_client_parameter_status_changes": False,
    "prepared_statements_cache_size": 500,  # pgsansio: on by default (PgCat: 0)
    "db_activity_based_routing": False,
    "db_activity_init_delay": 100,
    "db_activity_ttl": 900,
    "table_mutation_cache_ms_ttl": 50,
    "replica_max_lag_ms": 0,
    "replica_max_lag_bytes": 0,
    "reserve_pool_size": 0,
    "max_db_connections": 0,
    "client_encoding": None,
    "datestyle": None,
    "timezone": None,
    "pin_session_state": True,
    "begin_routing": "declared",
    "listen_fanout": True,
    "read_your_writes": False,
    "sharding_key_type": "bigint",
    "cross_shard": "off",
    "read_your_writes_wait_ms": 0,
    # inherited from [general] when unset
    "connect_timeout": 1000,
    "idle_timeout": 600000,
    "server_lifetime": 3600000,
}

USER_DEFAULTS: dict[str, Any] = {
    "auth_type": "md5",
    "server_username": None,
    "server_password": None,
    "min_pool_size": 0,
    "pool_mode": "transaction",
    "statement_timeout": 0,
    "max_user_connections": 0,
    "connect_timeout": 1000,
    "idle_timeout": 600000,
    "server_lifetime": 3600000,
}


@pytest.mark.parametrize(("key", "expected"), GENERAL_DEFAULTS.items())
def test_general_default(key: str, expected: object) -> None:
    assert getattr(parse(make()).general, key) == expected


@pytest.mark.parametrize(("key", "expected"), POOL_DEFAULTS.items())
def test_pool_default(key: str, expected: object) -> None:
    assert getattr(parse(make()).pools["db"], key) == expected


@pytest.mark.parametrize(("key", "expected"), USER_DEFAULTS.items())
def test_user_default(key: str, expected: object) -> None:
    assert getattr(parse(make()).pools["db"].users["app"], key) == expected


def test_every_model_field_has_a_key_and_a_default_test() -> None:
    """A field added to config_model must be readable from the file and checked here."""
    general = {f.name for f in dataclasses.fields(General)}
    assert set(config_module._GENERAL_KEYS) == general
    assert set(GENERAL_DEFAULTS) == general - {"admin_username", "admin_password"}
    pool = {f.name for f in dataclasses.fields(PoolConfig)} - {"name", "users", "shards"}
    assert set(config_module._POOL_KEYS) == pool == set(POOL_DEFAULTS)
    user = {f.name for f in dataclasses.fields(UserConfig)}
    assert set(config_module._USER_KEYS) == user
    assert set(USER_DEFAULTS) == user - {"username", "password", "pool_size"}


# --------------------------------------------------------------------------------------
# Precedence
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["connect_timeout", "idle_timeout", "server_lifetime"])
@pytest.mark.parametrize(
    ("in_general", "in_pool", "in_user", "expected"),
    [
        (None, None, None, "default"),
        (11, None, None, 11),
        (11, 22, None, 22),
        (11, 22, 33, 33),
        (None, None, 33, 33),
        (11, None, 33, 33),
        (None, 22, None, 22),
    ],
)
def test_timeouts_resolve_user_pool_general(
    key: str, in_general: int | None, in_pool: int | None, in_user: int | None, expected: object
) -> None:
    def line(value: int | None) -> str:
        return "" if value is None else f"{key} = {value}"

    config = parse(make(general=line(in_general), pool=line(in_pool), user=line(in_user)))
    want = GENERAL_DEFAULTS[key] if expected == "default" else expected
    assert getattr(config.pools["db"].users["app"], key) == want
    pool_want = in_pool if in_pool is not None else (in_general or GENERAL_DEFAULTS[key])
    assert getattr(config.pools["db"], key) == pool_want
    assert getattr(config.general, key) == (in_general or GENERAL_DEFAULTS[key])


@pytest.mark.parametrize(
    ("pool_line", "user_line", "expected"),
    [
        ("", "", "transaction"),
        ('pool_mode = "session"', "", "session"),
        ('pool_mode = "session"', 'pool_mode = "transaction"', "transaction"),
        ("", 'pool_mode = "session"', "session"),
        ('pool_mode = "Session"', "", "session"),  # PgCat's capitalised alias
    ],
)
def test_pool_mode_resolves_user_pool(pool_line: str, user_line: str, expected: str) -> None:
    assert parse(make(pool=pool_line, user=user_line)).pools["db"].users["app"].pool_mode == (
        expected
    )


def test_pool_mode_in_general_is_ignored_with_a_hint() -> None:
    config = parse(make(general='pool_mode = "session"'))
    assert config.pools["db"].pool_mode == "transaction"
    assert config.warnings == (
        "test.toml: general.pool_mode: unknown key here, ignored (pool_mode is a pool "
        "setting: put it in [pools.<name>])",
    )


def test_auth_query_resolves_pool_then_general_key_by_key() -> None:
    general = (
        'auth_query = "SELECT usename, passwd FROM pg_shadow WHERE usename = $1"\n'
        'auth_query_user = "lookup"\nauth_query_password = "lookup-secret"'
    )
    config = parse(make(general=general, pool='auth_query_user = "pool_lookup"'))
    pool = config.pools["db"]
    assert pool.auth_query == config.general.auth_query
    assert pool.auth_query_user == "pool_lookup"
    assert pool.auth_query_password == "lookup-secret"


def test_auth_query_lets_users_go_without_a_password() -> None:
    text = make(
        pool='auth_query = "SELECT 1"\nauth_query_user = "u"\nauth_query_password = "p"'
    ).replace('password = "app-secret"\n', "")
    user = parse(text).pools["db"].users["app"]
    assert user.password is None


def test_pool_auth_query_with_general_credentials() -> None:
    text = make(
        general='auth_query_user = "u"\nauth_query_password = "p"', pool='auth_query = "SELECT 1"'
    )
    pool = parse(text).pools["db"]
    assert (pool.auth_query, pool.auth_query_user, pool.auth_query_password) == (
        "SELECT 1",
        "u",
        "p",
    )


# --------------------------------------------------------------------------------------
# Normalisation and the pgsansio extensions
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("random", "random"),
        ("Random", "random"),
        ("loc", "loc"),
        ("LOC", "loc"),
        ("least_outstanding_connections", "loc"),
    ],
)
def test_load_balancing_mode_spellings(spelling: str, expected: str) -> None:
    pool = parse(make(pool=f'load_balancing_mode = "{spelling}"')).pools["db"]
    assert pool.load_balancing_mode == expected


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [("md5", "md5"), ("MD5", "md5"), ("trust", "trust"), ("scram-sha-256", "scram-sha-256")],
)
def test_auth_type_spellings(spelling: str, expected: str) -> None:
    config = parse(
        make(general=f'admin_auth_type = "{spelling}"', user=f'auth_type = "{spelling}"')
    )
    assert config.general.admin_auth_type == expected
    assert config.pools["db"].users["app"].auth_type == expected


def test_roles_accept_pgcat_capitalised_aliases() -> None:
    shard = 'servers = [["a", 5432, "Primary"], ["b", 5432, "Replica"]]'
    servers = parse(make(shard=shard)).pools["db"].shards[0].servers
    assert [s.role for s in servers] == ["primary", "replica"]


def test_shards_are_sorted_numerically() -> None:
    shards = "\n".join(
        f'[pools.db.shards.{n}]\ndatabase = "s{n}"\n{PRIMARY}'
        for n in (10, 2, 1, 0, 3, 4, 5, 6, 7, 8, 9)
    )
    text = make(shard=PRIMARY, extra=shards).replace(
        '[pools.db.shards.0]\ndatabase = "appdb"\n' + PRIMARY, ""
    )
    pool = parse(text).pools["db"]
    assert [s.index for s in pool.shards] == list(range(11))
    assert [s.database for s in pool.shards] == [f"s{n}" for n in range(11)]


def test_extension_keys() -> None:
    config = parse(
        make(
            general='server_reset_query = ""\nmax_client_conn = 500',
            pool="prepared_statements_cache_size = 0",
        )
    )
    assert config.general.server_reset_query == ""
    assert config.general.max_client_conn == 500
    assert config.pools["db"].prepared_statements_cache_size == 0


def test_reliability_keys() -> None:
    general = parse(
        make(
            general="listen_backlog = 4096\nclient_login_timeout = 5000\n"
            "client_tcp_keepalives_idle = 60\nclient_tcp_user_timeout = 30000"
        )
    ).general
    assert (general.listen_backlog, general.client_login_timeout) == (4096, 5000)
    assert (general.client_tcp_keepalives_idle, general.client_tcp_user_timeout) == (60, 30000)
    with pytest.raises(ConfigError, match=r"general\.listen_backlog"):
        parse(make(general="listen_backlog = 0"))


def test_process_file_keys() -> None:
    """general.logfile / pidfile: PgBouncer's keys as pgcat.toml extensions."""
    general = parse(make(general='logfile = "/var/log/p.log"\npidfile = "/run/p.pid"')).general
    assert (general.logfile, general.pidfile) == ("/var/log/p.log", "/run/p.pid")
    with pytest.raises(ConfigError, match=r"general\.pidfile"):
        parse(make(general="pidfile = 5"))


def test_automatic_sharding_key_quotes_are_stripped() -> None:
    pool = parse(
        make(pool='query_parser_enabled = true\nautomatic_sharding_key = \'"data"."id"\'')
    ).pools["db"]
    assert pool.automatic_sharding_key == "data.id"


def test_general_port_zero_means_any_free_port() -> None:
    assert parse(make(general="port = 0")).general.port == 0


def test_top_level_path_is_accepted_and_replaced() -> None:
    config = parse('path = "/etc/elsewhere.toml"\n' + make())
    assert config.path == "test.toml" and config.warnings == ()


# --------------------------------------------------------------------------------------
# Validation errors: every one names the file, the key and the problem
# --------------------------------------------------------------------------------------

ERRORS: list[tuple[str, str, str, str]] = [
    # (id, config text, dotted key, the problem, exactly)
    (
        "pool_size string",
        make().replace("pool_size = 10", 'pool_size = "ten"'),
        "pools.db.users.0.pool_size",
        'must be a positive integer, got "ten"',
    ),
    (
        "pool_size zero",
        make().replace("pool_size = 10", "pool_size = 0"),
        "pools.db.users.0.pool_size",
        "must be a positive integer, got 0",
    ),
    (
        "pool_size bool",
        make().replace("pool_size = 10", "pool_size = true"),
        "pools.db.users.0.pool_size",
        "must be a positive integer, got true",
    ),
    (
        "pool_size float",
        make().replace("pool_size = 10", "pool_size = 10.5"),
        "pools.db.users.0.pool_size",
        "must be a positive integer, got 10.5",
    ),
    (
        "pool_size above u32",
        make().replace("pool_size = 10", "pool_size = 4294967296"),
        "pools.db.users.0.pool_size",
        "must be at most 4294967295, got 4294967296",
    ),
    (
        "negative timeout",
        make(general="connect_timeout = -1"),
        "general.connect_timeout",
        "must be an integer, 0 or more (milliseconds), got -1",
    ),
    (
        "timeout as string",
        make(pool='idle_timeout = "30s"'),
        "pools.db.idle_timeout",
        'must be an integer, 0 or more (milliseconds), got "30s"',
    ),
    (
        "negative ban_time",
        make(general="ban_time = -60"),
        "general.ban_time",
        "must be an integer, 0 or more (seconds), got -60",
    ),
    (
        "negative user timeout",
        make(user="statement_timeout = -1"),
        "pools.db.users.0.statement_timeout",
        "must be an integer, 0 or more (milliseconds), got -1",
    ),
    (
        "bool as string",
        make(general='log_client_connections = "yes"'),
        "general.log_client_connections",
        'must be true or false, got "yes"',
    ),
    (
        "bool as int",
        make(pool="query_parser_enabled = 1"),
        "pools.db.query_parser_enabled",
        "must be true or false, got 1",
    ),
    (
        "string as int",
        make(general="host = 127"),
        "general.host",
        "must be a string (in quotes), got 127",
    ),
    (
        "password as number is not echoed",
        make().replace('password = "app-secret"', "password = 271828"),
        "pools.db.users.0.password",
        "must be a string (in quotes), got a number",
    ),
    (
        "admin password as bool",
        make().replace('admin_password = "admin-secret"', "admin_password = true"),
        "general.admin_password",
        "must be a string (in quotes), got true or false",
    ),
    (
        "worker_threads zero",
        make(general="worker_threads = 0"),
        "general.worker_threads",
        "must be a positive integer, got 0",
    ),
    (
        "port too big",
        make(general="port = 70000"),
        "general.port",
        "must be a port number from 0 to 65535 (0 picks a free port), got 70000",
    ),
    (
        "port negative",
        make(general="port = -1"),
        "general.port",
        "must be a port number from 0 to 65535 (0 picks a free port), got -1",
    ),
    (
        "prometheus port zero",
        make(general="prometheus_exporter_port = 0"),
        "general.prometheus_exporter_port",
        "must be a port number from 1 to 65535, got 0",
    ),
    (
        "prometheus port too big",
        make(general="prometheus_exporter_port = 65536"),
        "general.prometheus_exporter_port",
        "must be a port number from 1 to 65535, got 65536",
    ),
    (
        "pool_mode",
        make(pool='pool_mode = "statement"'),
        "pools.db.pool_mode",
        'must be one of "transaction", "session", got "statement"',
    ),
    (
        "user pool_mode",
        make(user='pool_mode = "sessions"'),
        "pools.db.users.0.pool_mode",
        'must be one of "transaction", "session", got "sessions"',
    ),
    (
        "load_balancing_mode",
        make(pool='load_balancing_mode = "weighted"'),
        "pools.db.load_balancing_mode",
        'must be one of "random", "loc", "least_outstanding_connections", "round_robin", '
        'got "weighted"',
    ),
    (
        "default_role",
        make(pool='default_role = "master"'),
        "pools.db.default_role",
        'must be one of "any", "primary", "replica", got "master"',
    ),
    (
        "auth_type",
        make(user='auth_type = "plain"'),
        "pools.db.users.0.auth_type",
        'must be one of "md5", "trust", "scram-sha-256", got "plain"',
    ),
    (
        "admin_auth_type",
        make(general='admin_auth_type = "password"'),
        "general.admin_auth_type",
        'must be one of "md5", "trust", "scram-sha-256", got "password"',
    ),
    (
        "sharding_function",
        make(pool='sharding_function = "md5"'),
        "pools.db.sharding_function",
        'must be one of "pg_bigint_hash", "sha1", got "md5"',
    ),
    (
        "sharding_key_type",
        make(pool='sharding_key_type = "int"'),
        "pools.db.sharding_key_type",
        'must be one of "bigint", "text", "uuid", got "int"',
    ),
    (
        "cross_shard without the parser",
        make(pool='cross_shard = "fan_out"'),
        "pools.db.cross_shard",
        '"fan_out" reads each query to merge it across shards: it needs '
        "query_parser_enabled = true in the same pool",
    ),
    (
        "default_shard out of range",
        make(pool='default_shard = "shard_1"'),
        "pools.db.default_shard",
        '"shard_1" does not exist: this pool has 1 shard(s), numbered from shard_0',
    ),
    (
        "default_shard bad",
        make(pool='default_shard = "first"'),
        "pools.db.default_shard",
        'must be "shard_<n>" (for example "shard_0"), "random" or "random_healthy", got "first"',
    ),
    (
        "min_pool_size above pool_size",
        make(user="min_pool_size = 11"),
        "pools.db.users.0.min_pool_size",
        "is 11, larger than pool_size (10)",
    ),
    (
        "no password",
        make().replace('password = "app-secret"\n', ""),
        "pools.db.users.0.password",
        "is missing: set the user's password, or configure auth_query (in this pool or in "
        "[general]) so the pooler can look it up",
    ),
    (
        "general auth_query without user",
        make(general='auth_query = "SELECT 1"\nauth_query_password = "p"'),
        "general.auth_query_user",
        "is missing: auth_query is set, and running it needs both auth_query_user and "
        "auth_query_password (the server login used to look passwords up)",
    ),
    (
        "general auth_query without password",
        make(general='auth_query = "SELECT 1"\nauth_query_user = "u"'),
        "general.auth_query_password",
        "is missing: auth_query is set, and running it needs both auth_query_user and "
        "auth_query_password (the server login used to look passwords up)",
    ),
    (
        "pool auth_query without user",
        make(pool='auth_query = "SELECT 1"\nauth_query_password = "p"'),
        "pools.db.auth_query_user",
        "is missing: auth_query is set, and running it needs both auth_query_user and "
        "auth_query_password (the server login used to look passwords up)",
    ),
    (
        "certificate without key",
        make(general='tls_certificate = "server.cert"'),
        "general.tls_private_key",
        "is missing: tls_certificate is set, and client TLS needs the certificate's private "
        "key too",
    ),
    (
        "key without certificate",
        make(general='tls_private_key = "server.key"'),
        "general.tls_certificate",
        "is missing: tls_private_key is set, and client TLS needs the certificate too",
    ),
    (
        "require without a certificate",
        make(general='client_tls_sslmode = "require"'),
        "general.client_tls_sslmode",
        'is "require", but no tls_certificate and tls_private_key are set: client TLS '
        "needs the pooler's certificate",
    ),
    (
        "verify-ca without a CA file",
        make(
            general='tls_certificate = "c"\ntls_private_key = "k"\n'
            'client_tls_sslmode = "verify-ca"'
        ),
        "general.client_tls_ca_file",
        'is missing: client_tls_sslmode "verify-ca" verifies client certificates against '
        "this CA file",
    ),
    (
        "unknown sslmode",
        make(general='client_tls_sslmode = "always"'),
        "general.client_tls_sslmode",
        'must be one of "disable", "allow", "prefer", "require", "verify-ca", '
        '"verify-full", got "always"',
    ),
    (
        "shard key not a number",
        make().replace("[pools.db.shards.0]", "[pools.db.shards.first]"),
        "pools.db.shards.first",
        'shard names must be numbers (0, 1, 2, ...), got "first"',
    ),
    (
        "shard key negative",
        make().replace("[pools.db.shards.0]", '[pools.db.shards."-1"]'),
        "pools.db.shards.-1",
        'shard names must be numbers (0, 1, 2, ...), got "-1"',
    ),
    (
        "shard defined twice",
        make(extra=f'[pools.db.shards.00]\ndatabase = "x"\n{PRIMARY}'),
        "pools.db.shards.00",
        "shard 0 is defined twice",
    ),
    (
        "servers empty",
        make(shard="servers = []"),
        "pools.db.shards.0.servers",
        "is empty; list at least one [host, port, role] entry",
    ),
    (
        "servers missing",
        make(shard=""),
        "pools.db.shards.0.servers",
        "is required but missing: list the shard's [host, port, role] entries, e.g. "
        'servers = [["127.0.0.1", 5432, "primary"]]',
    ),
    (
        "servers not an array",
        make(shard='servers = "127.0.0.1:5432"'),
        "pools.db.shards.0.servers",
        'must be an array of [host, port, role] entries, got "127.0.0.1:5432"',
    ),
    (
        "server entry too short",
        make(shard='servers = [["127.0.0.1", 5432]]'),
        "pools.db.shards.0.servers.0",
        'must be [host, port, role], e.g. ["127.0.0.1", 5432, "primary"] (or [host, port, '
        'role, weight]), got ["127.0.0.1", 5432]',
    ),
    (
        "server entry is a string",
        make(shard='servers = ["127.0.0.1:5432"]'),
        "pools.db.shards.0.servers.0",
        'must be [host, port, role], e.g. ["127.0.0.1", 5432, "primary"] (or [host, port, '
        'role, weight]), got "127.0.0.1:5432"',
    ),
    (
        "server weight zero",
        make(shard='servers = [["h", 5432, "replica", 0]]'),
        "pools.db.shards.0.servers.0",
        "the weight (fourth item) must be a number from 1 to 1000, got 0",
    ),
    (
        "primary mixed with auto",
        make(shard='servers = [["a", 5432, "primary"], ["b", 5432, "auto"]]'),
        "pools.db.shards.0.servers",
        'mixes a "primary" with "auto" servers: with "auto" the primary is whichever server '
        'is not in recovery, so list the primary as "auto" too',
    ),
    (
        "server host empty",
        make(shard='servers = [["", 5432, "primary"]]'),
        "pools.db.shards.0.servers.0",
        'the host (first item) must be a non-empty string, got ""',
    ),
    (
        "server port string",
        make(shard='servers = [["h", "5432", "primary"]]'),
        "pools.db.shards.0.servers.0",
        'the port (second item) must be a number from 1 to 65535, got "5432"',
    ),
    (
        "server port out of range",
        make(shard='servers = [["h", 65536, "primary"]]'),
        "pools.db.shards.0.servers.0",
        "the port (second item) must be a number from 1 to 65535, got 65536",
    ),
    (
        "server role",
        make(shard='servers = [["h", 5432, "master"]]'),
        "pools.db.shards.0.servers.0",
        'the role (third item) must be "primary", "replica" or "auto" (found out with '
        'pg_is_in_recovery()), got "master"',
    ),
    (
        "server role mirror",
        make(shard='servers = [["h", 5432, "primary"], ["m", 5432, "mirror"]]'),
        "pools.db.shards.0.servers.1",
        'role "mirror" is not supported in servers: to copy traffic to another host, list it '
        "in this shard's mirrors = [[host, port, server_index]]",
    ),
    (
        "two primaries",
        make(shard='servers = [["a", 5432, "primary"], ["b", 5432, "primary"]]'),
        "pools.db.shards.0.servers",
        "has 2 primaries (servers.0 and servers.1); a shard can have at most one",
    ),
    (
        "duplicate server",
        make(shard='servers = [["a", 5432, "primary"], ["a", 5432, "replica"]]'),
        "pools.db.shards.0.servers.1",
        "duplicate server a:5432 (also pools.db.shards.0.servers.0)",
    ),
    (
        "mirror entry",
        make(shard=PRIMARY + '\nmirrors = [["m", 5432]]'),
        "pools.db.shards.0.mirrors.0",
        "must be [host, port, server_index], where server_index is the position of the "
        'mirrored server in servers (from 0), e.g. ["10.0.0.9", 5432, 0], got ["m", 5432]',
    ),
    (
        "bad sharding_key_regex",
        make(pool='sharding_key_regex = "/\\\\* sharding_key: (\\\\d+ \\\\*/"'),
        "pools.db.sharding_key_regex",
        "is not a valid regular expression: missing ), unterminated subpattern at position 18",
    ),
    (
        "bad shard_id_regex",
        make(pool="shard_id_regex = '['"),
        "pools.db.shard_id_regex",
        "is not a valid regular expression: unterminated character set at position 0",
    ),
    (
        "read/write splitting without the parser",
        make(pool="query_parser_read_write_splitting = true"),
        "pools.db.query_parser_read_write_splitting",
        "needs query_parser_enabled = true in the same pool: read/write splitting works by "
        "parsing each query",
    ),
    (
        "automatic_sharding_key without a dot",
        make(pool='query_parser_enabled = true\nautomatic_sharding_key = "id"'),
        "pools.db.automatic_sharding_key",
        'must be table.column, with exactly one dot, got "id"',
    ),
    (
        "automatic_sharding_key with two dots",
        make(pool='query_parser_enabled = true\nautomatic_sharding_key = "s.t.id"'),
        "pools.db.automatic_sharding_key",
        'must be table.column, with exactly one dot, got "s.t.id"',
    ),
    (
        "pool plugins without the parser",
        make(extra="[pools.db.plugins.query_logger]\nenabled = true"),
        "pools.db.plugins",
        "plugins need query_parser_enabled = true in the same pool",
    ),
    (
        "db activity routing with a zero delay",
        make(pool="db_activity_based_routing = true\ndb_activity_init_delay = 0"),
        "pools.db.db_activity_init_delay",
        "must be above 0 while db_activity_based_routing is on",
    ),
    (
        "duplicate username",
        make(extra='[pools.db.users.1]\nusername = "app"\npassword = "x"\npool_size = 1'),
        "pools.db.users.1.username",
        'user "app" is already defined in pools.db.users.0; each username may appear only '
        "once per pool",
    ),
    (
        "empty username",
        make().replace('username = "app"', 'username = ""'),
        "pools.db.users.0.username",
        "must not be empty",
    ),
    (
        "username missing",
        make().replace('username = "app"', ""),
        "pools.db.users.0.username",
        "is required but missing (the user name clients log in with)",
    ),
    (
        "pool_size missing",
        make().replace("pool_size = 10", ""),
        "pools.db.users.0.pool_size",
        "is required but missing (the most server connections this user may open to each server)",
    ),
    (
        "database missing",
        make().replace('database = "appdb"', ""),
        "pools.db.shards.0.database",
        "is required but missing (the database name on the servers)",
    ),
    (
        "admin_username missing",
        make().replace('admin_username = "admin"', ""),
        "general.admin_username",
        "is required but missing (the user name for the admin console (pgcat/pgbouncer))",
    ),
    (
        "admin_password missing",
        make().replace('admin_password = "admin-secret"', ""),
        "general.admin_password",
        "is required but missing (the password for the admin console)",
    ),
    (
        "general missing",
        make().replace('[general]\nadmin_username = "admin"\nadmin_password = "admin-secret"', ""),
        "general",
        "the [general] section is missing; it needs at least admin_username and admin_password",
    ),
    (
        "general not a table",
        "general = 5\n",
        "general",
        "must be a table ([general]), got 5",
    ),
    (
        "pools missing",
        '[general]\nadmin_username = "a"\nadmin_password = "b"\n',
        "pools",
        "no pools are configured; add at least one [pools.<database>] section",
    ),
    (
        "pools empty",
        '[general]\nadmin_username = "a"\nadmin_password = "b"\n[pools]\n',
        "pools",
        "no pools are configured; add at least one [pools.<database>] section",
    ),
    (
        "pool not a table",
        '[general]\nadmin_username = "a"\nadmin_password = "b"\n[pools]\ndb = "x"\n',
        "pools.db",
        'must be a table ([pools.db]), got "x"',
    ),
    (
        "users missing",
        f'[general]\nadmin_username = "a"\nadmin_password = "b"\n'
        f'[pools.db.shards.0]\ndatabase = "d"\n{PRIMARY}\n',
        "pools.db.users",
        "is required but missing: add a [pools.db.users.0] section with username, password "
        "and pool_size",
    ),
    (
        "shards missing",
        '[general]\nadmin_username = "a"\nadmin_password = "b"\n'
        '[pools.db.users.0]\nusername = "u"\npassword = "p"\npool_size = 1\n',
        "pools.db.shards",
        "is required but missing: add a [pools.db.shards.0] section with database and servers",
    ),
    (
        "shards empty",
        '[general]\nadmin_username = "a"\nadmin_password = "b"\n'
        '[pools.db.users.0]\nusername = "u"\npassword = "p"\npool_size = 1\n'
        "[pools.db.shards]\n",
        "pools.db.shards",
        "no shards are configured; add a [pools.db.shards.0] section with database and servers",
    ),
    (
        "pool name needing quotes",
        make().replace("[pools.db", '[pools."my.db"').replace("pool_size = 10", "pool_size = -3"),
        'pools."my.db".users.0.pool_size',
        "must be a positive integer, got -3",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "problem"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_validation_error(text: str, key: str, problem: str) -> None:
    e = error_of(text)
    assert (e.path, e.key, e.problem) == ("test.toml", key, problem)
    assert str(e) == f"test.toml: {key}: {problem}"


def test_first_error_in_file_order_is_reported() -> None:
    e = error_of(make(general="connect_timeout = -1\nidle_timeout = -2"))
    assert e.key == "general.connect_timeout"


def test_toml_syntax_error_names_the_line() -> None:
    text = make().replace("pool_size = 10", "pool_size = = 10")
    e = error_of(text)
    line = text.splitlines().index("pool_size = = 10") + 1
    assert (e.key, e.line) == (None, line)
    assert str(e) == f"test.toml: line {line}: {e.problem}"
    assert e.problem.startswith("not valid TOML: invalid value (column ")


def test_toml_duplicate_key_is_a_syntax_error() -> None:
    e = error_of(make(general="port = 1\nport = 2"))
    assert e.line is not None and e.problem.startswith("not valid TOML: ")


def test_empty_file() -> None:
    assert error_of("").key == "general"


# --------------------------------------------------------------------------------------
# Unknown keys: ignored, as in PgCat, but reported
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "warning"),
    [
        (
            make(general="conect_timeout = 5000"),
            "general.conect_timeout: unknown key, ignored (did you mean connect_timeout? "
            "connect_timeout stays 1000 milliseconds)",
        ),
        (
            make(general="verify_config = true"),
            "general.verify_config: unknown key, ignored (did you mean validate_config? "
            "validate_config stays true)",
        ),
        (
            make(pool="query_parser_enable = true"),
            "pools.db.query_parser_enable: unknown key, ignored (did you mean "
            "query_parser_enabled? query_parser_enabled stays false)",
        ),
        (
            make(pool="pool_size = 20"),
            "pools.db.pool_size: unknown key here, ignored (pool_size is a user setting: put "
            "it in [pools.<name>.users.<n>])",
        ),
        (
            make(user="statment_timeout = 5"),
            "pools.db.users.0.statment_timeout: unknown key, ignored (did you mean "
            "statement_timeout? statement_timeout stays 0 milliseconds)",
        ),
        (
            make(shard=PRIMARY + '\ndatabse = "x"'),
            "pools.db.shards.0.databse: unknown key, ignored (did you mean database? database is "
            'also set in this section, to "appdb")',
        ),
        (
            make(general="default_pool_size = 20"),
            "general.default_pool_size: unknown key, ignored",
        ),
        ("gneral = 1\n" + make(), "gneral: unknown key, ignored (did you mean general?)"),
        (
            make(general="prometheus_exporter_port = 40000"),
            "general.prometheus_exporter_port: 40000 is above 32767, which PgCat itself "
            "rejects (it stores this port as a signed 16-bit number); pgsansio accepts it",
        ),
        (
            make(
                pool="query_parser_enabled = true",
                extra="[pools.db.plugins.intercept]\nenabled = true",
            ),
            "pools.db.plugins: ignored: PgCat's plugins (query blocking, table access, query "
            "logging, intercept) are not implemented; every query is sent to the server as it "
            "is",
        ),
        (
            make(pool='automatic_sharding_key = "t.id"'),
            "pools.db.automatic_sharding_key: has no effect unless query_parser_enabled = true",
        ),
        (
            make(shard=PRIMARY + '\nmirrors = [["m", 5432, 0]]'),
            "pools.db.shards.0.mirrors: ignored: mirroring is not implemented; no traffic is "
            "copied to these hosts",
        ),
        (
            make().replace("[pools.db.shards.0]", "[pools.db.shards.1]"),
            "pools.db.shards: shards are numbered 1; shards are chosen by position (the 1 "
            "shards are reached as 0 to 0, as in PgCat), so number them 0, 1, 2, ... to avoid "
            "surprises",
        ),
        (
            make().replace("[pools.db", "[pools.pgbouncer"),
            'pools.pgbouncer: clients connecting to database "pgbouncer" reach the admin '
            "console, so this pool cannot be used; rename it",
        ),
    ],
)
def test_warning(text: str, warning: str) -> None:
    assert parse(text).warnings == (f"test.toml: {warning}",)


def test_mirror_out_of_range_is_a_warning_too() -> None:
    assert parse(make(shard=PRIMARY + '\nmirrors = [["m", 5432, 3]]')).warnings[0] == (
        "test.toml: pools.db.shards.0.mirrors.0: server_index 3 does not match any entry in "
        "servers (0 to 0), so this mirror never receives traffic"
    )


def test_pool_without_users_is_a_warning() -> None:
    text = (
        '[general]\nadmin_username = "a"\nadmin_password = "b"\n[pools.db.users]\n'
        f'[pools.db.shards.0]\ndatabase = "d"\n{PRIMARY}\n'
    )
    config = parse(text)
    assert config.pools["db"].users == {}
    assert config.warnings == (
        "test.toml: pools.db.users: this pool has no users, so no client can connect to it",
    )


def test_unknown_keys_keep_their_defaults() -> None:
    config = parse(make(general="conect_timeout = 5000"))
    assert config.general.connect_timeout == 1000


# --------------------------------------------------------------------------------------
# The effective configuration
# --------------------------------------------------------------------------------------


def round_trip(config: Config) -> Config:
    again = parse_config(effective_config_toml(config), config.path)
    assert again == masked(config) or again == dataclasses.replace(
        masked(config), warnings=again.warnings
    )
    return again


def test_effective_config_round_trips_the_example() -> None:
    config = load_config(EXAMPLE)
    again = round_trip(config)
    # Everything written back is a known key; only what pgsansio does not act on is named.
    assert [w.split(": ")[1] for w in again.warnings] == [
        "general.worker_threads",
        "general.autoreload",
        "general.validate_config",
        "pools.sharded_db.shards.0.mirrors",
    ]
    assert masked(config).pools == again.pools


def test_effective_config_round_trips_the_minimal_file() -> None:
    round_trip(parse(MINIMAL))


def test_effective_config_round_trips_every_option() -> None:
    text = make(
        general=(
            'host = "::1"\nport = 7000\nautoreload = 2000\ntls_certificate = "c.pem"\n'
            'tls_private_key = "k.pem"\nauth_query = "SELECT usename, passwd FROM pg_shadow '
            'WHERE usename = \'$1\'"\nauth_query_user = "lookup"\n'
            'auth_query_password = "lookup-secret"\n'
            'server_reset_query = "SET a = \'\\\\\\"x\\"\\n\'; DISCARD ALL"'
        ),
        pool=(
            "query_parser_enabled = true\nquery_parser_max_length = 4096\n"
            'checkout_failure_limit = 3\nload_balancing_mode = "LOC"\n'
            'sharding_function = "sha1"\ndefault_shard = "random_healthy"\n'
            "sharding_key_regex = '/\\* sharding_key: (\\d+) \\*/'"
        ),
        user='server_username = "srv"\nserver_password = "srv-secret"\nauth_type = "trust"',
        shard=(
            'servers = [["a", 5432, "primary"], ["b", 5433, "replica"]]\nmirrors = [["m", 1, 1]]'
        ),
        extra='[pools.db.users.1]\nusername = "naïve \\"user\\""\npool_size = 1\n'
        '[pools."weird pool.name"]\n[pools."weird pool.name".users.x]\nusername = "u"\n'
        'password = "p"\npool_size = 2\n[pools."weird pool.name".shards.0]\ndatabase = "d"\n'
        + PRIMARY,
    )
    config = parse(text)
    assert config.pools["db"].users['naïve "user"'].password is None
    assert config.general.server_reset_query == "SET a = '\\\"x\"\n'; DISCARD ALL"
    round_trip(config)


def test_effective_config_never_prints_a_secret() -> None:
    text = make(
        general='auth_query = "q"\nauth_query_user = "u"\nauth_query_password = "AQP-123"',
        pool='auth_query_password = "POOL-AQP-456"',
        user='server_password = "SERVER-789"',
    )
    out = effective_config_toml(parse(text))
    for secret in ("admin-secret", "app-secret", "AQP-123", "POOL-AQP-456", "SERVER-789"):
        assert secret not in out
    assert out.count('"********"') == 5


def test_effective_config_layout() -> None:
    out = effective_config_toml(load_config(EXAMPLE))
    assert out.startswith(f"# The effective configuration read from {EXAMPLE}.\n")
    headers = [line for line in out.splitlines() if line.startswith("[")]
    assert headers == [
        "[general]",
        "[pools.sharded_db]",
        "[pools.sharded_db.users.0]",
        "[pools.sharded_db.users.1]",
        "[pools.sharded_db.shards.0]",
        "[pools.sharded_db.shards.1]",
        "[pools.sharded_db.shards.2]",
        "[pools.simple_db]",
        "[pools.simple_db.users.0]",
        "[pools.simple_db.users.1]",
        "[pools.simple_db.shards.0]",
    ]
    assert 'servers = [["127.0.0.1", 5432, "primary"], ["localhost", 5432, "replica"]]' in out
    assert "sharding_key_regex = '/\\* sharding_key: (\\d+) \\*/'" in out  # readable
    assert "# tls_certificate is not set" in out
    parsed = tomllib.loads(out)
    assert parsed["general"]["idle_timeout"] == 30000
    assert parsed["pools"]["sharded_db"]["users"]["1"]["connect_timeout"] == 2500


def test_effective_config_of_a_hand_built_config() -> None:
    """The engine's tests build Config objects directly; those print too."""
    config = Config(
        general=General(admin_username="a", admin_password="b"),
        pools={
            "db": PoolConfig(
                name="db",
                users={"u": UserConfig(username="u", password="p", pool_size=3)},
                shards=(ShardConfig(0, "d", (ServerAddress("h", 5432, "primary"),)),),
            )
        },
    )
    again = parse_config(effective_config_toml(config))
    user = again.pools["db"].users["u"]
    assert (user.pool_size, user.password, user.connect_timeout) == (3, "********", 1000)
    # The hand-built pool left its timeouts to inherit; the file states them.
    assert again.pools["db"].connect_timeout == 1000


@given(st.text())
def test_toml_strings_round_trip(text: str) -> None:
    assert tomllib.loads(f"a = {config_module._toml_str(text)}")["a"] == text
    assert tomllib.loads(f"a = {config_module._toml_value(text)}")["a"] == text


# --------------------------------------------------------------------------------------
# load_config: the file itself
# --------------------------------------------------------------------------------------


def test_load_missing_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read the configuration: no such file"


def test_load_directory(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="is a directory, not a configuration file"):
        load_config(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_load_unreadable_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "pgcat.toml"
    path.write_text(make())
    path.chmod(0)
    with pytest.raises(ConfigError, match="cannot read the configuration \\(Permission denied\\)"):
        load_config(path)


def test_load_not_utf8(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "pgcat.toml"
    path.write_bytes(b"[general]\n# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: line 2: not UTF-8 text (byte 0xe9); TOML files must be UTF-8"
    )


def test_load_accepts_a_byte_order_mark(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "pgcat.toml"
    path.write_bytes(b"\xef\xbb\xbf" + make().encode())
    assert load_config(str(path)).path == str(path)


def test_load_checks_tls_files(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "server.cert").write_text("cert")
    path = tmp_path / "pgcat.toml"
    path.write_text(
        make(general='tls_certificate = "server.cert"\ntls_private_key = "server.key"')
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.key, info.value.problem) == (
        "general.tls_private_key",
        'cannot read "server.key" (No such file or directory)',
    )
    (tmp_path / "server.key").write_text("key")
    assert load_config(path).general.tls_private_key == "server.key"
    for key in ("client_tls_ca_file", "server_tls_ca_file"):
        with_ca = path.read_text().replace("[general]", f'[general]\n{key} = "{key}.pem"', 1)
        path.write_text(with_ca)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert (info.value.key, info.value.problem) == (
            f"general.{key}",
            f'cannot read "{key}.pem" (No such file or directory)',
        )
        (tmp_path / f"{key}.pem").write_text("ca")
        assert getattr(load_config(path).general, key) == f"{key}.pem"
    # parse_config alone does not touch the file system.
    assert parse_config(path.read_text()).general.tls_certificate == "server.cert"


def test_load_ignores_the_environment(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other.toml"
    other.write_text(make(general="port = 1111"))
    monkeypatch.setenv("CONFIG_FILE", str(other))
    assert load_config(EXAMPLE).general.port == 6432


# --------------------------------------------------------------------------------------
# pgsansio check
# --------------------------------------------------------------------------------------


def run_check(*args: str, env: dict[str, str] | None = None, cwd: str | None = None) -> Any:
    environ = {k: v for k, v in os.environ.items() if k != "CONFIG_FILE"}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pgsansio", "check", *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_check_valid_file() -> None:
    result = run_check(str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert result.stdout == effective_config_toml(load_config(EXAMPLE))
    assert result.stderr.splitlines() == [
        *(f"warning: {EXAMPLE}: {w}" for w in EXAMPLE_WARNINGS),
        f"{EXAMPLE}: OK (2 pool(s), 4 user(s), 4 shard(s), 4 warning(s))",
    ]


def test_check_bad_file_exits_78_without_traceback(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "pgcat.toml"
    path.write_text(make().replace("pool_size = 10", 'pool_size = "ten"'))
    result = run_check(str(path))
    assert result.returncode == 78
    assert result.stdout == ""
    assert result.stderr == (
        f'{path}: pools.db.users.0.pool_size: must be a positive integer, got "ten"\n'
    )


def test_check_syntax_error_and_missing_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "pgcat.toml"
    path.write_text("[general\n")
    result = run_check(str(path))
    assert result.returncode == 78 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{path}: line 1: not valid TOML: ")
    result = run_check(str(tmp_path / "missing.toml"))
    assert result.returncode == 78 and "Traceback" not in result.stderr
    assert "no such file" in result.stderr


def test_check_defaults_to_config_file_then_pgcat_toml(tmp_path: pathlib.Path) -> None:
    result = run_check(env={"CONFIG_FILE": str(EXAMPLE)}, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    result = run_check(cwd=str(tmp_path))
    assert result.returncode == 78
    assert result.stderr == "pgcat.toml: cannot read the configuration: no such file\n"
    (tmp_path / "pgcat.toml").write_text(MINIMAL)
    result = run_check(cwd=str(tmp_path))
    assert result.returncode == 0
    assert "warning: pgcat.toml: pools.pgml.query_result_capacity: unknown key" in result.stderr


def test_check_in_process() -> None:
    from typer.testing import CliRunner

    from pgsansio.cli import build_app

    result = CliRunner().invoke(build_app(), ["check", str(EXAMPLE)])
    assert result.exit_code == 0
    assert tomllib.loads(result.stdout)["general"]["admin_password"] == "********"
    result = CliRunner().invoke(build_app(), ["check", str(DATA / "missing.toml")])
    assert result.exit_code == 78


def test_replica_extensions_load_and_round_trip() -> None:
    config = parse(
        make(
            general="healthcheck_interval = 500",
            pool='load_balancing_mode = "round_robin"\nreplica_max_lag_ms = 2000\n'
            "replica_max_lag_bytes = 1048576",
            shard='servers = [["a", 5432, "auto"], ["b", 5432, "Auto", 3], '
            '["c", 5432, "replica"]]',
        )
    )
    pool = config.pools["db"]
    assert [(s.host, s.role, s.weight) for s in pool.shards[0].servers] == [
        ("a", "auto", 1),
        ("b", "auto", 3),
        ("c", "replica", 1),
    ]
    assert config.general.healthcheck_interval == 500
    assert (pool.load_balancing_mode, pool.replica_max_lag_ms, pool.replica_max_lag_bytes) == (
        "round_robin",
        2000,
        1048576,
    )
    round_trip(config)


def test_pin_session_state_pool_inherits_general() -> None:
    config = parse(make(general="pin_session_state = false", pool=""))
    assert config.general.pin_session_state is False
    assert config.pools["db"].pin_session_state is False
    config = parse(make(general="pin_session_state = false", pool="pin_session_state = true"))
    assert config.pools["db"].pin_session_state is True
    assert parse(make()).pools["db"].pin_session_state is True
