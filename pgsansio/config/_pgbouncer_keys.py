"""Every ``[pgbouncer]`` key PgBouncer 1.25 knows: its type, default and what we do.

Data for :mod:`pgsansio.config.pgbouncer` and for ``docs/pgbouncer.md``. A key is
either *honoured* (``field`` names where its value goes, ``None`` for keys the reader
uses itself) or *not honoured* (``ignored`` says why, and the reader warns by name
whenever the file sets it to anything but PgBouncer's default, which is what we do
anyway). Defaults are PgBouncer's, as text the way the file spells them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BOUNCER_KEYS", "DB_KEYS", "USER_KEYS", "BKey"]


@dataclass(frozen=True)
class BKey:
    kind: str  # "str" | "int" | "bool" | "time" (seconds, may be fractional) | "list"
    default: str = ""
    ignored: str = ""  # why it has no effect here; "" means honoured


_OS = "pgsansio does not switch OS user or daemonize; use your service manager"
_LATER = "not implemented in pgsansio yet"
_SOCK = "socket tuning is left to the OS defaults"

BOUNCER_KEYS: dict[str, BKey] = {
    # listening
    "listen_addr": BKey("str"),
    "listen_port": BKey("int", "6432"),
    "listen_backlog": BKey("int", "128"),
    "unix_socket_dir": BKey("str", "/tmp"),
    "unix_socket_mode": BKey("str", "0777"),
    "unix_socket_group": BKey("str"),
    "so_reuseport": BKey("bool", "0", "every pgsansio process listens alone"),
    "peer_id": BKey("int", "0", "peering is not implemented"),
    "tcp_defer_accept": BKey("bool", "1", _SOCK),
    "tcp_socket_buffer": BKey("int", "0", _SOCK),
    "tcp_keepalive": BKey("bool", "1", "keepalives are always on"),
    "tcp_keepcnt": BKey("int", "0"),
    "tcp_keepidle": BKey("int", "0"),
    "tcp_keepintvl": BKey("int", "0"),
    "tcp_user_timeout": BKey("int", "0"),
    "pkt_buf": BKey("int", "4096", "pgsansio sizes its buffers itself"),
    "max_packet_size": BKey("int", "2147483647"),
    "sbuf_loopcnt": BKey("int", "5", "pgsansio sizes its buffers itself"),
    "disable_pqexec": BKey("bool", "0", "multi-statement queries are always allowed"),
    # process
    "logfile": BKey("str"),
    "pidfile": BKey("str"),
    "user": BKey("str", "", _OS),
    "syslog": BKey("bool", "0"),
    "syslog_ident": BKey("str", "pgbouncer"),
    "syslog_facility": BKey("str", "daemon"),
    "verbose": BKey("int", "0", "use pgsansio run --log-level debug"),
    "log_connections": BKey("bool", "1"),
    "log_disconnections": BKey("bool", "1"),
    "log_pooler_errors": BKey("bool", "1"),
    "log_stats": BKey("bool", "1", "statistics are in SHOW STATS and /metrics"),
    "stats_period": BKey("int", "60", "SHOW STATS averages are computed pgsansio's way"),
    "service_name": BKey("str", "", "Windows only"),
    "job_name": BKey("str", "", "Windows only"),
    "conffile": BKey("str", "", "the file given on the command line is used"),
    "resolv_conf": BKey("str", "", "host names are resolved by the OS"),
    "dns_max_ttl": BKey("time", "15", "host names are resolved by the OS"),
    "dns_nxdomain_ttl": BKey("time", "15", "host names are resolved by the OS"),
    "dns_zone_check_period": BKey("time", "0", "host names are resolved by the OS"),
    # pools
    "pool_mode": BKey("str", "session"),
    "max_client_conn": BKey("int", "100"),
    "default_pool_size": BKey("int", "20"),
    "min_pool_size": BKey("int", "0"),
    "reserve_pool_size": BKey("int", "0"),
    "reserve_pool_timeout": BKey("time", "5"),
    "max_db_connections": BKey("int", "0"),
    "max_db_client_connections": BKey("int", "0", _LATER),
    "max_user_connections": BKey("int", "0"),
    "max_user_client_connections": BKey("int", "0", _LATER),
    "server_round_robin": BKey("bool", "0"),
    "track_extra_parameters": BKey(
        "list", "IntervalStyle", "pgsansio re-applies every startup parameter a client sets"
    ),
    "ignore_startup_parameters": BKey("list"),  # we refuse none, so all are "ignored"
    "application_name_add_host": BKey("bool", "0"),
    "max_prepared_statements": BKey("int", "200"),
    "autodb_idle_timeout": BKey("time", "3600", "pools of the * database are kept"),
    "pool_idle_timeout": BKey("time", "0", "empty pools are kept"),
    # authentication
    "auth_type": BKey("str", "md5"),
    "auth_file": BKey("str"),
    "auth_hba_file": BKey("str", "", "HBA rules are not implemented"),
    "auth_ident_file": BKey("str", "", "HBA rules are not implemented"),
    "auth_user": BKey("str"),
    "auth_query": BKey(
        "str",
        "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END "
        "FROM pg_authid WHERE rolname=$1 AND rolcanlogin",
    ),
    "auth_dbname": BKey("str", "", "auth_query runs in the client's database"),
    "auth_ldap_options": BKey("str", "", "LDAP is not implemented"),
    "scram_iterations": BKey("int", "4096", "verifiers pgsansio derives use 4096 iterations"),
    "admin_users": BKey("list"),
    "stats_users": BKey("list"),
    # servers
    "server_reset_query": BKey("str", "DISCARD ALL"),
    "server_reset_query_always": BKey("bool", "0", "the reset query runs in session mode only"),
    "server_check_delay": BKey("time", "30"),
    "server_check_query": BKey("str", "select 1"),
    "server_fast_close": BKey("bool", "0", _LATER),
    "server_lifetime": BKey("time", "3600"),
    "server_idle_timeout": BKey("time", "600"),
    "server_connect_timeout": BKey("time", "15"),
    "server_login_retry": BKey("time", "15", "pgsansio bans a failing server for ban_time"),
    # clients
    "client_login_timeout": BKey("time", "60"),
    "query_timeout": BKey("time", "0"),
    "query_wait_timeout": BKey("time", "120"),
    "query_wait_notify": BKey("time", "5", _LATER),
    "cancel_wait_timeout": BKey("time", "10", _LATER),
    "client_idle_timeout": BKey("time", "0"),
    "idle_transaction_timeout": BKey("time", "0"),
    "transaction_timeout": BKey("time", "0", _LATER),
    "suspend_timeout": BKey("time", "10", "SUSPEND and online restart are not implemented"),
    # TLS
    "client_tls_sslmode": BKey("str", "disable"),
    "client_tls_key_file": BKey("str"),
    "client_tls_cert_file": BKey("str"),
    "client_tls_ca_file": BKey("str"),
    "client_tls_protocols": BKey("str", "secure", "Python's ssl defaults (TLS 1.2+) apply"),
    "client_tls_ciphers": BKey("str", "default", "Python's ssl defaults apply"),
    "client_tls13_ciphers": BKey("str", "", "Python's ssl defaults apply"),
    "client_tls_ecdhcurve": BKey("str", "auto", "Python's ssl defaults apply"),
    "client_tls_dheparams": BKey("str", "auto", "Python's ssl defaults apply"),
    "server_tls_sslmode": BKey("str", "prefer"),
    "server_tls_ca_file": BKey("str"),
    "server_tls_key_file": BKey("str", "", "client certificates to servers are not sent"),
    "server_tls_cert_file": BKey("str", "", "client certificates to servers are not sent"),
    "server_tls_protocols": BKey("str", "secure", "Python's ssl defaults (TLS 1.2+) apply"),
    "server_tls_ciphers": BKey("str", "default", "Python's ssl defaults apply"),
    "server_tls13_ciphers": BKey("str", "", "Python's ssl defaults apply"),
}
"""Every [pgbouncer] key, by lower-case name (PgBouncer compares names ignoring case)."""

DB_KEYS: dict[str, str] = {
    "host": "",
    "port": "",
    "dbname": "",
    "user": "",
    "password": "",
    "auth_user": "per-database auth_user is not implemented; the [pgbouncer] one applies",
    "pool_size": "",
    "min_pool_size": "",
    "reserve_pool": "",
    "reserve_pool_size": "",
    "max_db_connections": "",
    "max_db_client_connections": _LATER,
    "pool_mode": "",
    "server_lifetime": "",
    "client_encoding": "",
    "datestyle": "",
    "timezone": "",
    "connect_query": _LATER,
    "application_name": _LATER,
    "auth_dbname": "auth_query runs in the client's database",
    "auth_query": "per-database auth_query is not implemented; the [pgbouncer] one applies",
    "load_balance_hosts": "only the first host is used",
}
"""Keys of a [databases] connection string: "" if honoured, else why not."""

USER_KEYS: dict[str, str] = {
    "pool_mode": "",
    "pool_size": "",
    "reserve_pool_size": _LATER,
    "max_user_connections": "",
    "max_user_client_connections": _LATER,
    "query_timeout": _LATER,
    "idle_transaction_timeout": _LATER,
    "client_idle_timeout": _LATER,
    "transaction_timeout": _LATER,
}
"""Keys of a [users] entry: "" if honoured, else why not."""
