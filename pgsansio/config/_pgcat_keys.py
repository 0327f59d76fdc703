"""The pgcat.toml keys pgsansio reads: types, units, limits, PgCat's spellings.

Data for :mod:`pgsansio.config.pgcat`, which checks a file against these tables and names
the file, the key and the problem when something does not fit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pgsansio.config.model import MAX_WORKERS, SYSLOG_FACILITIES

_U32_MAX = 2**32 - 1
# --------------------------------------------------------------------------------------
# Key specifications
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    """How one scalar key is checked; the messages are built from these fields."""

    kind: str  # "str" | "bool" | "uint" | "posint" | "port" | "enum" | "strlist"
    unit: str = ""  # shown in messages, e.g. "milliseconds"
    maximum: int | None = None
    minimum_port: int = 1
    choices: Mapping[str, str] | None = None  # accepted spelling -> canonical value
    required: bool = False
    hint: str = ""  # said when a required key is missing
    secret: bool = False  # never echo the value back, not even a mistyped one


_MS = "milliseconds"
_S = "seconds"

_POOL_MODES = {"transaction": "transaction", "Transaction": "transaction"}
_POOL_MODES |= {"session": "session", "Session": "session"}
_AUTH_TYPES = {"md5": "md5", "MD5": "md5", "trust": "trust", "Trust": "trust"}
_AUTH_TYPES |= {"scram-sha-256": "scram-sha-256"}

_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

_GENERAL_KEYS: dict[str, _Key] = {
    "host": _Key("str"),
    "port": _Key("port", minimum_port=0),
    "enable_prometheus_exporter": _Key("bool"),
    "prometheus_exporter_port": _Key("port"),
    "connect_timeout": _Key("uint", _MS),
    "idle_timeout": _Key("uint", _MS),
    "server_lifetime": _Key("uint", _MS),
    "idle_client_in_transaction_timeout": _Key("uint", _MS),
    "healthcheck_timeout": _Key("uint", _MS),
    "healthcheck_delay": _Key("uint", _MS),
    "shutdown_timeout": _Key("uint", _MS),
    "ban_time": _Key("uint", _S),
    "log_client_connections": _Key("bool"),
    "log_client_disconnections": _Key("bool"),
    "autoreload": _Key("posint", _MS),
    "worker_threads": _Key("posint"),
    "tcp_keepalives_idle": _Key("uint", _S),
    "tcp_keepalives_count": _Key("uint", maximum=_U32_MAX),
    "tcp_keepalives_interval": _Key("uint", _S),
    "tcp_user_timeout": _Key("uint", _MS),
    "tls_certificate": _Key("str"),
    "tls_private_key": _Key("str"),
    "server_tls": _Key("bool"),
    "verify_server_certificate": _Key("bool"),
    "admin_username": _Key(
        "str", required=True, hint="the user name for the admin console (pgcat/pgbouncer)"
    ),
    "admin_password": _Key(
        "str", required=True, hint="the password for the admin console", secret=True
    ),
    "admin_auth_type": _Key("enum", choices=_AUTH_TYPES),
    "validate_config": _Key("bool"),
    "server_round_robin": _Key("bool"),
    "dns_cache_enabled": _Key("bool"),
    "dns_max_ttl": _Key("uint", _S),
    "auth_query": _Key("str"),
    "auth_query_user": _Key("str"),
    "auth_query_password": _Key("str", secret=True),
    "server_reset_query": _Key("str"),
    "max_client_conn": _Key("uint"),
    # pgsansio extensions: replicas and failover
    "healthcheck_interval": _Key("uint", _MS),
    # TLS extensions (PgBouncer's names and meanings)
    "client_tls_sslmode": _Key("enum", choices={m: m for m in _SSLMODES}),
    "client_tls_ca_file": _Key("str"),
    "server_tls_ca_file": _Key("str"),
    # Listening and client sockets (PgBouncer's names; docs/reliability.md)
    "listen_backlog": _Key("posint", maximum=65535),
    "client_login_timeout": _Key("uint", _MS),
    "client_tcp_keepalives_idle": _Key("uint", _S),
    "client_tcp_keepalives_interval": _Key("uint", _S),
    "client_tcp_keepalives_count": _Key("uint", maximum=_U32_MAX),
    "client_tcp_user_timeout": _Key("uint", _MS),
    # Logging extensions (PgBouncer's names and meanings)
    "log_connections": _Key("bool"),
    "log_disconnections": _Key("bool"),
    "log_pooler_errors": _Key("bool"),
    # PgBouncer compatibility: the Unix socket (pgsansio extension, PgBouncer's names)
    "unix_socket_dir": _Key("str"),
    "unix_socket_mode": _Key("uint", "octal, e.g. 0o777", maximum=0o7777),
    "unix_socket_group": _Key("str"),
    # PgBouncer's limits and timeouts (pgsansio extensions, PgBouncer's names)
    "query_wait_timeout": _Key("uint", _MS),
    "reserve_pool_timeout": _Key("uint", _MS),
    "query_timeout": _Key("uint", _MS),
    "client_idle_timeout": _Key("uint", _MS),
    "admin_users": _Key("strlist"),
    "stats_users": _Key("strlist"),
    "application_name_add_host": _Key("bool"),
    # pgsansio extension: transaction pooling (the default of each pool's key)
    "pin_session_state": _Key("bool"),
    # Bounded memory (pgsansio extensions; docs/reliability.md)
    "client_buffer_limit": _Key("posint", "bytes", maximum=0x3FFFFFFF),
    "total_buffer_limit": _Key("posint", "bytes"),
    # Process files (pgsansio extensions, PgBouncer's names; docs/pgbouncer.md)
    "logfile": _Key("str"),
    "pidfile": _Key("str"),
    "syslog": _Key("bool"),
    "syslog_ident": _Key("str"),
    "syslog_facility": _Key("enum", choices={f: f for f in SYSLOG_FACILITIES}),
    # worker processes (pgsansio extension; docs/workers.md)
    "workers": _Key("posint", maximum=MAX_WORKERS),
}

_POOL_KEYS: dict[str, _Key] = {
    "pool_mode": _Key("enum", choices=_POOL_MODES),
    "load_balancing_mode": _Key(
        "enum",
        choices={
            "random": "random",
            "Random": "random",
            "loc": "loc",
            "LOC": "loc",
            "least_outstanding_connections": "loc",
            "round_robin": "round_robin",  # pgsansio extension
        },
    ),
    "default_role": _Key(
        "enum", choices={"any": "any", "primary": "primary", "replica": "replica"}
    ),
    "query_parser_enabled": _Key("bool"),
    "query_parser_max_length": _Key("uint"),
    "query_parser_read_write_splitting": _Key("bool"),
    "primary_reads_enabled": _Key("bool"),
    "connect_timeout": _Key("uint", _MS),
    "idle_timeout": _Key("uint", _MS),
    "server_lifetime": _Key("uint", _MS),
    "checkout_failure_limit": _Key("uint"),
    "sharding_function": _Key(
        "enum", choices={"pg_bigint_hash": "pg_bigint_hash", "sha1": "sha1"}
    ),
    "automatic_sharding_key": _Key("str"),
    "sharding_key_regex": _Key("str"),
    "shard_id_regex": _Key("str"),
    "regex_search_limit": _Key("uint"),
    "default_shard": _Key("str"),
    "auth_query": _Key("str"),
    "auth_query_user": _Key("str"),
    "auth_query_password": _Key("str", secret=True),
    "cleanup_server_connections": _Key("bool"),
    "log_client_parameter_status_changes": _Key("bool"),
    "prepared_statements_cache_size": _Key("uint"),
    "db_activity_based_routing": _Key("bool"),
    "db_activity_init_delay": _Key("uint", _MS),
    "db_activity_ttl": _Key("uint", _S),
    "table_mutation_cache_ms_ttl": _Key("uint", _MS),
    # pgsansio extensions: replica lag bounds
    "replica_max_lag_ms": _Key("uint", _MS),
    "replica_max_lag_bytes": _Key("uint"),
    # PgBouncer's limits (pgsansio extensions, PgBouncer's names)
    "reserve_pool_size": _Key("uint"),
    "max_db_connections": _Key("uint"),
    "client_encoding": _Key("str"),
    "datestyle": _Key("str"),
    "timezone": _Key("str"),
    # pgsansio extension: transaction pooling
    "pin_session_state": _Key("bool"),
    "begin_routing": _Key(
        "enum",
        choices={
            "declared": "declared",
            "first_statement": "first_statement",
            "primary": "primary",
        },
    ),
    "listen_fanout": _Key("bool"),
    "read_your_writes": _Key("bool"),
    # pgsansio extensions: sharding (docs/sharding.md)
    "sharding_key_type": _Key(
        "enum", choices={"bigint": "bigint", "text": "text", "uuid": "uuid"}
    ),
    "cross_shard": _Key("enum", choices={"off": "off", "fan_out": "fan_out"}),
    # pgsansio extension: read-your-writes (docs/transaction-pooling.md)
    "read_your_writes_wait_ms": _Key("uint", unit=_MS),
}
_POOL_TABLES = ("users", "shards", "plugins")

_USER_KEYS: dict[str, _Key] = {
    "username": _Key("str", required=True, hint="the user name clients log in with"),
    "password": _Key("str", secret=True),
    "auth_type": _Key("enum", choices=_AUTH_TYPES),
    "server_username": _Key("str"),
    "server_password": _Key("str", secret=True),
    "pool_size": _Key(
        "posint",
        maximum=_U32_MAX,
        required=True,
        hint="the most server connections this user may open to each server",
    ),
    "min_pool_size": _Key("uint", maximum=_U32_MAX),
    "pool_mode": _Key("enum", choices=_POOL_MODES),
    "server_lifetime": _Key("uint", _MS),
    "idle_timeout": _Key("uint", _MS),
    "connect_timeout": _Key("uint", _MS),
    "statement_timeout": _Key("uint", _MS),
    # PgBouncer's limit (pgsansio extension, PgBouncer's name)
    "max_user_connections": _Key("uint"),
}

_SHARD_KEYS: dict[str, _Key] = {
    "database": _Key("str", required=True, hint="the database name on the servers"),
}
_SHARD_LISTS = ("servers", "mirrors")


def _always(value: object) -> bool:
    return True


def _on(value: object) -> bool:
    return value is True


def _off(value: object) -> bool:
    return value is False


_NOT_ACTED_ON: dict[str, tuple[Callable[[object], bool], str]] = {
    # PgCat keys pgsansio accepts (so a PgCat file loads unchanged) but does not act on:
    # key -> (does this value ask for something we do not do?, what happens instead).
    # `pgsansio check` and `pgsansio run` both print these. Remove an entry in the
    # commit that implements its key.
    "worker_threads": (
        _always,
        "ignored: each pgsansio process serves its clients from one event loop (one CPU "
        "core), whatever this says; to use more cores, set workers = N (docs/workers.md)",
    ),
    "autoreload": (
        _always,
        "ignored: the file is not watched; send SIGHUP (or RELOAD on the admin console) "
        "to reload it",
    ),
    "dns_cache_enabled": (
        _on,
        "ignored: there is no DNS cache; a server's host name is resolved by the system "
        "each time a server connection is opened (dns_max_ttl does not apply)",
    ),
    "validate_config": (
        _on,
        "ignored: servers are not contacted to validate the configuration at start or "
        "reload; a wrong server address or password shows in the log at the first login "
        "that needs that server",
    ),
    "cleanup_server_connections": (
        _off,
        "ignored: a server connection is always cleaned with RESET ALL before reuse when "
        "a client changed a setting pgsansio cannot carry to its next server",
    ),
    "log_client_parameter_status_changes": (
        _on,
        "ignored: parameter changes are not logged (they are still carried from server "
        "to server for each client)",
    ),
    "db_activity_based_routing": (
        _on,
        "ignored: reads are not routed by recent writes (db_activity_init_delay, "
        "db_activity_ttl and table_mutation_cache_ms_ttl do nothing); they go where "
        "query_parser_read_write_splitting and default_role send them",
    ),
}
_PLUGINS_IGNORED = (
    "ignored: PgCat's plugins (query blocking, table access, query logging, intercept) "
    "are not implemented; every query is sent to the server as it is"
)
_MIRRORS_IGNORED = "ignored: mirroring is not implemented; no traffic is copied to these hosts"

_TOP_KEYS: dict[str, _Key] = {"path": _Key("str")}
_TOP_TABLES = ("general", "pools", "plugins")


def _sections() -> dict[str, str]:
    """Where each key belongs, to tell an operator who put one in the wrong section.

    Later sections win, so a key valid in several places points at [general] or the pool.
    """
    where: dict[str, str] = {}
    for place, keys in (
        ("a user setting: put it in [pools.<name>.users.<n>]", _USER_KEYS),
        ("a shard setting: put it in [pools.<name>.shards.<n>]", _SHARD_KEYS),
        ("a pool setting: put it in [pools.<name>]", _POOL_KEYS),
        ("a general setting: put it in [general]", _GENERAL_KEYS),
    ):
        where |= dict.fromkeys(keys, place)
    return where


_SECTION_OF = _sections()

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_DEFAULT_SHARD = re.compile(r"^shard_(\d+)$")
_TOML_ERROR = re.compile(r"^(?P<msg>.*?)\s*\(at line (?P<line>\d+), column (?P<col>\d+)\)$")
