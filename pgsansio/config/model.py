"""The effective configuration the engine runs on: PgCat's ``pgcat.toml``, resolved.

Every value here is already resolved (user -> pool -> general precedence applied) and
validated; the engine never looks at TOML. Times are in **milliseconds** as in
``pgcat.toml``; the engine converts. :mod:`pgsansio.config` builds these objects from
a file; tests build them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Config", "General", "PoolConfig", "ServerAddress", "ShardConfig", "UserConfig"]


@dataclass(frozen=True)
class General:
    host: str = "0.0.0.0"
    port: int = 5432
    connect_timeout: int = 1000
    idle_timeout: int = 600000
    server_lifetime: int = 3600000
    idle_client_in_transaction_timeout: int = 0
    healthcheck_timeout: int = 1000
    healthcheck_delay: int = 30000
    shutdown_timeout: int = 60000
    ban_time: int = 60
    log_client_connections: bool = False
    log_client_disconnections: bool = False
    enable_prometheus_exporter: bool = False
    prometheus_exporter_port: int = 9930
    worker_threads: int = 4
    autoreload: int | None = None
    tcp_keepalives_idle: int = 5
    tcp_keepalives_count: int = 5
    tcp_keepalives_interval: int = 5
    tcp_user_timeout: int = 10000
    tls_certificate: str | None = None
    tls_private_key: str | None = None
    server_tls: bool = False
    verify_server_certificate: bool = False
    admin_username: str = ""
    admin_password: str = ""
    admin_auth_type: str = "md5"
    validate_config: bool = True
    server_round_robin: bool = True
    dns_cache_enabled: bool = False
    dns_max_ttl: int = 30
    auth_query: str | None = None
    auth_query_user: str | None = None
    auth_query_password: str | None = None
    # pgsansio extensions (documented in the README)
    server_reset_query: str = "DISCARD ALL"
    max_client_conn: int = 0  # 0 = unlimited
    # Replicas and failover (pgsansio extensions, see pgsansio.engine._health):
    # how often every server is probed on its own connection (0: only when needed for
    # role = "auto" or a replica lag bound, then every 1000 ms).
    healthcheck_interval: int = 0
    # TLS extensions (PgBouncer's names; documented in the README)
    # "prefer" without tls_certificate offers nothing: it then acts as "disable".
    client_tls_sslmode: str = "prefer"
    client_tls_ca_file: str | None = None
    server_tls_ca_file: str | None = None
    # Reliability at the socket (docs/reliability.md). The listener's queue of
    # connections not yet accepted (PgBouncer's key; 4096 rather than its 128, which
    # overflows in a connect storm), and the time a new client has to log in (ms;
    # PgBouncer's key). Client sockets get keepalive settings of their own: 0 leaves
    # the operating system's default (as PostgreSQL and PgBouncer do), so a client that
    # stops reading or misses a probe is never cut by the server-side tcp_* values.
    listen_backlog: int = 4096
    client_login_timeout: int = 60000
    client_tcp_keepalives_idle: int = 0
    client_tcp_keepalives_interval: int = 0
    client_tcp_keepalives_count: int = 0
    client_tcp_user_timeout: int = 0
    # Logging (pgsansio extensions with PgBouncer's names and defaults; see
    # pgsansio.engine._eventlog): each login, each logged-in client leaving, and each
    # failed login or server connection with its cause.
    log_connections: bool = True
    log_disconnections: bool = True
    log_pooler_errors: bool = True
    # PgBouncer compatibility: a Unix socket to listen on,
    # <unix_socket_dir>/.s.PGSQL.<port>; "" listens on TCP only.
    unix_socket_dir: str = ""
    unix_socket_mode: int = 0o777
    unix_socket_group: str = ""
    # PgBouncer's limits and timeouts (milliseconds, 0 = off):
    # query_wait_timeout > 0 replaces connect_timeout as the wait for a server and
    # closes the client when it passes (PgBouncer), instead of PgCat's 53300 error.
    query_wait_timeout: int = 0
    reserve_pool_timeout: int = 5000
    query_timeout: int = 0
    client_idle_timeout: int = 0
    # Console users besides admin_username (PgBouncer's lists; their passwords are
    # their pool users' ones): admin_users may do everything, stats_users only SHOW.
    admin_users: tuple[str, ...] = ()
    stats_users: tuple[str, ...] = ()
    application_name_add_host: bool = False  # "<name> - <host>:<port>", as PgBouncer
    # Transaction pooling (pgsansio extension, see docs/transaction-pooling.md): the
    # default of every pool's pin_session_state.
    pin_session_state: bool = True
    # Bytes the pooler holds for one client (its unfinished message plus what waits
    # for a server; a longer message is refused at its header), and for everyone
    # together, unfinished messages from servers included (see pgsansio.engine._buffers).
    client_buffer_limit: int = 64 * 1024 * 1024
    total_buffer_limit: int = 256 * 1024 * 1024
    # Process files (PgBouncer's logfile and pidfile; docs/pgbouncer.md). The ``run``
    # command writes them, never the engine: log records appended to ``logfile`` as
    # well as stderr, the pooler's pid in ``pidfile`` until exit. "" = none.
    logfile: str = ""
    pidfile: str = ""
    # Also to syslog (PgBouncer's keys): through /dev/log, as ident[pid], with this
    # facility (one of SYSLOG_FACILITIES).
    syslog: bool = False
    syslog_ident: str = "pgsansio"
    syslog_facility: str = "daemon"
    # worker processes (pgsansio extension; docs/workers.md): with N > 1, ``run``
    # starts a supervisor and N processes, each its own engine, all listening on the
    # same port (SO_REUSEPORT); pool_size and max_client_conn are split between them.
    workers: int = 1


# The most worker processes general.workers allows: the worker is encoded in the low
# bits of each client's cancel key (6 here), which the secret's entropy pays for.
MAX_WORKERS = 64

# The facilities PgBouncer's syslog_facility accepts.
SYSLOG_FACILITIES = ("auth", "authpriv", "daemon", "user", *(f"local{n}" for n in range(8)))


@dataclass(frozen=True)
class ServerAddress:
    host: str
    port: int
    role: str  # "primary" | "replica" | "auto" (found with pg_is_in_recovery())
    weight: int = 1  # share of the reads (load balancing); a 4th item in ``servers``


@dataclass(frozen=True)
class ShardConfig:
    index: int
    database: str
    servers: tuple[ServerAddress, ...]
    mirrors: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True)
class UserConfig:
    """One ``[pools.X.users.N]`` entry, with pool/general values folded in."""

    username: str
    password: str | None
    pool_size: int
    auth_type: str = "md5"  # "md5" | "trust" | "scram-sha-256"
    server_username: str | None = None
    server_password: str | None = None
    min_pool_size: int = 0
    pool_mode: str = "transaction"  # "transaction" | "session"
    server_lifetime: int = 3600000
    idle_timeout: int = 600000
    connect_timeout: int = 1000
    statement_timeout: int = 0
    # PgBouncer's cap on one user's server connections over every pool (0 = none)
    max_user_connections: int = 0

    @property
    def backend_username(self) -> str:
        return self.server_username or self.username

    @property
    def backend_password(self) -> str | None:
        return self.server_password if self.server_password is not None else self.password


@dataclass(frozen=True)
class PoolConfig:
    """One ``[pools.X]`` section; ``name`` is the database name clients connect to."""

    name: str
    users: dict[str, UserConfig]  # keyed by username (not by PgCat's label)
    shards: tuple[ShardConfig, ...]
    pool_mode: str = "transaction"
    load_balancing_mode: str = "random"  # "random" | "loc" | "round_robin"
    default_role: str = "any"
    query_parser_enabled: bool = False
    query_parser_max_length: int | None = None
    query_parser_read_write_splitting: bool = False
    primary_reads_enabled: bool = False
    connect_timeout: int | None = None
    idle_timeout: int | None = None
    server_lifetime: int | None = None
    checkout_failure_limit: int | None = None
    sharding_function: str = "pg_bigint_hash"
    automatic_sharding_key: str | None = None
    sharding_key_regex: str | None = None
    shard_id_regex: str | None = None
    regex_search_limit: int = 1000
    default_shard: str = "shard_0"
    auth_query: str | None = None
    auth_query_user: str | None = None
    auth_query_password: str | None = None
    cleanup_server_connections: bool = True
    log_client_parameter_status_changes: bool = False
    # PgCat's default is 0 (off); pgsansio turns it on by default, as PgBouncer 1.24
    # and PgDog do. 0 in the file turns it off.
    prepared_statements_cache_size: int = 500
    db_activity_based_routing: bool = False
    db_activity_init_delay: int = 100
    db_activity_ttl: int = 900
    table_mutation_cache_ms_ttl: int = 50
    # Replica lag bounds (pgsansio extensions; 0 = no bound): a replica further behind
    # its primary gets no reads until it catches up.
    replica_max_lag_ms: int = 0
    replica_max_lag_bytes: int = 0
    # PgBouncer's limits (0 = none): connections over pool_size once a client waited
    # reserve_pool_timeout, and a cap on the database's connections over every user.
    reserve_pool_size: int = 0
    max_db_connections: int = 0
    # PgBouncer's per-database server settings, sent in the server's startup packet
    # (None: the server's own default)
    client_encoding: str | None = None
    datestyle: str | None = None
    timezone: str | None = None
    # Transaction pooling (pgsansio extension, see docs/transaction-pooling.md): a
    # client that creates session state keeps its server until the state is gone.
    pin_session_state: bool = True
    # Read/write splitting of transactions (see pgsansio.engine._readonly): "declared"
    # holds a plain BEGIN until the first statement (SET TRANSACTION READ ONLY: a
    # replica), "first_statement" also sends a transaction whose first statement reads
    # to a replica (a later write gets 25006), "primary" is PgCat's behaviour.
    begin_routing: str = "declared"
    # LISTEN in transaction mode through one listener connection per (pool, user)
    # instead of pinning (see pgsansio.engine._listen).
    listen_fanout: bool = True
    # Read-your-writes (see pgsansio.engine._routing): after a client's write commits,
    # its reads go only to replicas that have replayed it, else to the primary.
    read_your_writes: bool = False
    # Sharding beyond PgCat (see docs/sharding.md): the type of the sharding key
    # ("bigint" | "text" | "uuid"), how the hash of pg_bigint_hash reads it.
    sharding_key_type: str = "bigint"
    # What a read with no shard does: "off" (default_shard) | "fan_out" (every shard,
    # merged by the pooler; needs query_parser_enabled).
    cross_shard: str = "off"
    # Read-your-writes: how long (ms) a read that no caught-up replica can serve waits
    # for the next probe to find one, before the primary serves it (0: at once).
    read_your_writes_wait_ms: int = 0


@dataclass(frozen=True)
class Config:
    general: General
    pools: dict[str, PoolConfig]
    path: str = "pgcat.toml"
    warnings: tuple[str, ...] = field(default=())
