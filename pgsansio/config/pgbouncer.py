"""Read PgBouncer's ``pgbouncer.ini`` (and its ``auth_file``) into the same :class:`Config`.

An operator should be able to stop PgBouncer and start ``pgsansio run
/etc/pgbouncer/pgbouncer.ini`` with their files unchanged. So the file is read as
PgBouncer reads it, with PgBouncer's defaults (not PgCat's): ``listen_port`` 6432,
``pool_mode`` session, ``default_pool_size`` 20, ``max_client_conn`` 100, times in
seconds (converted here to the model's milliseconds).

The format, as PgBouncer's parser takes it: ``[section]`` headers, ``key = value``
lines (names compared ignoring case; a value may be quoted with ``"`` or ``'``), whole
line comments starting with ``;`` or ``#``, and ``%include FILE`` anywhere (a relative
FILE is looked up from the current directory as PgBouncer does, then beside the
including file). A ``[databases]`` value is a libpq-style connection string of
``key=value`` words (``'...'`` quotes, ``\\'`` or ``''`` inside).

How PgBouncer's model maps onto pgsansio's (one pool per database, one entry per user
that may log in to it):

* each ``[databases]`` entry is a pool named after it, with one shard and one server
  (``host``, ``port``, ``dbname``). A ``host`` that starts with ``/`` is a Unix socket
  directory, as in libpq. A list of hosts keeps the first one, with a warning.
* the users of a pool are the users of ``auth_file`` (and of ``[users]``): each gets
  the secret stored for it, which is also what logs in to the server, as in PgBouncer.
  A database with ``user=`` logs every client in to the server as that user (with
  ``password=`` if given, else that user's ``auth_file`` secret).
* ``auth_type``: ``trust``, ``md5`` and ``scram-sha-256`` as in PgBouncer; ``md5``
  uses SCRAM for a user whose stored secret is a SCRAM verifier (PgBouncer's rule).
  ``plain``, ``hba``, ``cert``, ``pam`` and ``ldap`` fall back to ``md5`` (or SCRAM),
  ``any`` to ``trust`` for the users we know, each with a warning.
* ``admin_users``: the first one is the console's user, with its ``auth_file`` secret;
  more of them, and ``stats_users``, are warned about (the model has one admin).

Every key PgBouncer has that is not honoured is warned about by name, whenever its
value is not PgBouncer's default (then our behaviour is the default's anyway); every
key PgBouncer does not have is warned about as unknown. The status of each key is in
:mod:`pgsansio.config._pgbouncer_keys` and ``docs/pgbouncer.md``.

Where we differ from PgBouncer on purpose:

* With ``auth_user`` set, every pool also gets the user ``*``: any user not in
  ``auth_file`` logs in with the secret ``auth_query`` finds, as in PgBouncer (the
  engine makes that user's pool on first use).
* ``statement`` pool mode runs as ``transaction``, with a warning.
* ``listen_backlog`` defaults to 4096, not 128 (which overflows in a connect storm,
  docs/reliability.md), unless the file sets it.
* ``max_packet_size`` becomes ``client_buffer_limit``, capped at 1 GiB; unset, the
  limit is 64 MiB rather than PgBouncer's 2 GiB. It caps what a client sends that is
  held whole, not rows from servers (``total_buffer_limit`` bounds those).
* ``logfile``, ``pidfile`` and ``syslog`` are honoured by the ``run`` command
  (:mod:`pgsansio.procfiles`), not by the engine, which does no I/O.
* Errors are raised for what PgBouncer would refuse to start with, naming the file,
  the line and the key; a few things PgBouncer logs and skips (a database entry it
  cannot parse) are errors here, because skipping them silently loses a database.
"""

from __future__ import annotations

import os
import re

from pgsansio.config._ini import (
    Entry,
    Ini,
    parse_connstr,
    parse_ini,
    parse_userlist,
    read_text,
)
from pgsansio.config._pgbouncer_keys import BOUNCER_KEYS, DB_KEYS, USER_KEYS
from pgsansio.config.errors import ConfigError
from pgsansio.config.model import (
    SYSLOG_FACILITIES,
    Config,
    General,
    PoolConfig,
    ServerAddress,
    ShardConfig,
    UserConfig,
)

__all__ = [
    "is_pgbouncer_ini",
    "load_pgbouncer",
    "parse_connstr",
    "parse_pgbouncer",
    "parse_userlist",
]

_SECTION_LINE = re.compile(r"^\s*\[\s*([A-Za-z_]+)\s*\]\s*$", re.MULTILINE)
_TIME = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*(us|ms|s|min|h|d)?\s*$")
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_TRUE = ("1", "yes", "on", "true")
_FALSE = ("0", "no", "off", "false")
_SCRAM = "SCRAM-SHA-256$"
_FOREVER_MS = 2**31 - 1  # about 24.8 days: "no limit" for a timeout whose 0 means another rule


def is_pgbouncer_ini(text: str) -> bool:
    """Whether ``text`` is a pgbouncer.ini rather than a pgcat.toml, by its content.

    A PgBouncer file has a ``[pgbouncer]`` or ``[databases]`` section or an
    ``%include``; a pgcat.toml has ``[general]`` and ``[pools.*]`` (whose names have
    dots, so they never match here).
    """
    names = {m.lower() for m in _SECTION_LINE.findall(text)}
    if "general" in names:
        return False
    if names & {"pgbouncer", "databases"}:
        return True
    return any(line.lstrip().startswith("%include") for line in text.splitlines())


# --------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------


class _Values:
    """Typed access to one section's entries, with errors that name file, line, key."""

    def __init__(self, section: str, entries: dict[str, Entry]) -> None:
        self.section = section
        self.entries = entries

    def error(self, key: str, problem: str) -> ConfigError:
        e = self.entries.get(key)
        where = f"[{self.section}] {key}"
        if e is None:
            return ConfigError("pgbouncer.ini", where, problem)
        return ConfigError(e.path, where, problem, line=e.line)

    def raw(self, key: str) -> str:
        e = self.entries.get(key)
        return e.value if e is not None else BOUNCER_KEYS[key].default

    def text(self, key: str) -> str:
        return self.raw(key)

    def integer(self, key: str, minimum: int = 0) -> int:
        value = self.raw(key)
        try:
            n = int(value, 0) if value.startswith("0") and len(value) > 1 else int(value)
        except ValueError:
            raise self.error(key, f"must be an integer, got {value!r}") from None
        if n < minimum:
            raise self.error(key, f"must be {minimum} or more, got {n}")
        return n

    def ms(self, key: str) -> int:
        """A PgBouncer time (seconds, maybe fractional or with a unit) in milliseconds."""
        value = self.raw(key)
        m = _TIME.match(value)
        if m is None:
            raise self.error(key, f"must be a time in seconds (e.g. 15 or 2.5), got {value!r}")
        return round(float(m[1]) * _TIME_UNITS[m[2] or "s"] * 1000)

    def flag(self, key: str) -> bool:
        value = self.raw(key).lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise self.error(key, f"must be 1 or 0 (or yes/no, on/off), got {value!r}")

    def items(self, key: str) -> list[str]:
        return [v.strip() for v in self.raw(key).split(",") if v.strip()]

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.raw(key).lower()
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value


def _where(e: Entry, section: str, key: str) -> str:
    return f"{e.path}:{e.line}: [{section}] {key}"


def _opt_int(opts: dict[str, str], key: str, e: Entry, where: str) -> int | None:
    """An integer setting of a [databases]/[users] entry, 0 or more; None if absent."""
    if key not in opts:
        return None
    try:
        value = int(opts[key])
    except ValueError:
        value = -1
    if value < 0:
        problem = f"{key} must be an integer, 0 or more, got {opts[key]!r}"
        raise ConfigError(e.path, where, problem, line=e.line)
    return value


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def load_pgbouncer(path: str) -> Config:
    """Read ``path`` (a pgbouncer.ini), its includes and its auth_file.

    Raises:
        ConfigError: the file, an included file or the auth_file cannot be used.
    """
    return parse_pgbouncer(read_text(path, "configuration"), path)


def parse_pgbouncer(text: str, path: str = "pgbouncer.ini") -> Config:
    """Parse pgbouncer.ini text; includes and the auth_file are read from disk."""
    ini = Ini()
    parse_ini(ini, text, path, None, 0)
    return _Builder(ini, path).build()


_MAX_PACKET = 0x3FFFFFFF  # the longest message PostgreSQL's protocol allows


class _Builder:
    def __init__(self, ini: Ini, path: str) -> None:
        self.ini = ini
        self.path = path
        self.warnings = ini.warnings
        if "pgbouncer" not in ini.sections:
            raise ConfigError(path, "[pgbouncer]", "the [pgbouncer] section is missing")
        self.bouncer = _Values("pgbouncer", ini.sections["pgbouncer"])
        self.auth_file = "auth_file"

    def warn(self, where: str, problem: str) -> None:
        self.warnings.append(f"{where}: {problem}")

    def build(self) -> Config:
        self._check_bouncer_keys()
        b = self.bouncer
        self.auth_type = b.choice(
            "auth_type",
            ("any", "trust", "plain", "md5", "scram-sha-256", "cert", "hba", "pam", "ldap"),
        )
        if self.auth_type in ("plain", "hba", "cert", "pam", "ldap"):
            self.warn(
                _where(b.entries["auth_type"], "pgbouncer", "auth_type"),
                f"{self.auth_type} is not implemented; clients authenticate with md5 "
                "(SCRAM for users whose secret is a SCRAM verifier)",
            )
        elif self.auth_type == "any":
            self.warn(
                _where(b.entries["auth_type"], "pgbouncer", "auth_type"),
                "any lets only the users named in auth_file or [users] in, without a password",
            )
        self.userlist = self._userlist()
        self.pool_mode = self._pool_mode(
            b.raw("pool_mode"), b.entries.get("pool_mode"), "[pgbouncer] pool_mode"
        )
        general = self._general()
        user_opts = self._users_section()
        pools: dict[str, PoolConfig] = {}
        databases = self.ini.sections.get("databases", {})
        if not databases:  # PgBouncer starts so, with its console only; so do we
            self.warn(
                f"{self.path}: [databases]",
                "no databases are configured: only the admin console can be used",
            )
        for name, entry in databases.items():
            pools[name] = self._pool(name, entry, user_opts)
        if self.ini.sections.get("peers"):
            self.warn(f"{self.path}: [peers]", "peering is not implemented; ignored")
        return Config(general=general, pools=pools, path=self.path, warnings=tuple(self.warnings))

    def _check_bouncer_keys(self) -> None:
        for key, e in self.bouncer.entries.items():
            spec = BOUNCER_KEYS.get(key)
            if spec is None:
                self.warn(_where(e, "pgbouncer", key), "unknown key, ignored")
            elif spec.ignored and e.value.strip().lower() != spec.default.lower():
                self.warn(_where(e, "pgbouncer", key), f"not honoured, ignored ({spec.ignored})")

    def _userlist(self) -> dict[str, str]:
        name = self.bouncer.text("auth_file")
        if not name:
            return {}
        target = name
        if not os.path.isabs(name) and not os.path.exists(name):
            beside = os.path.join(os.path.dirname(self.path), name)
            if os.path.exists(beside):
                target = beside
        self.auth_file = target
        return parse_userlist(read_text(target, "auth_file"), target)

    def _pool_mode(self, value: str, e: Entry | None, where: str) -> str:
        """A pool_mode value (``where`` is "[section] name" for messages)."""
        mode = value.strip().lower()
        if mode == "statement":
            at = f"{e.path}:{e.line}: {where}" if e is not None else where
            self.warn(at, "statement pooling is not implemented; transaction pooling is used")
            return "transaction"
        if mode not in ("session", "transaction"):
            problem = f"pool_mode must be session, transaction or statement, got {value!r}"
            if e is None:
                raise ConfigError(self.path, where, problem)
            raise ConfigError(e.path, where, problem, line=e.line)
        return mode

    def _general(self) -> General:
        b = self.bouncer
        addrs = b.items("listen_addr")
        if not addrs:
            host = "127.0.0.1"
            self.warn(
                f"{self.path}: [pgbouncer] listen_addr",
                "is not set: PgBouncer would listen on its Unix socket only; pgsansio "
                "listens on 127.0.0.1 too (the Unix socket is named after that TCP port)",
            )
        else:
            host = ",".join(addrs)  # the frontends listen on each; * is every interface
        admins = b.items("admin_users")
        admin = admins[0] if admins else ""
        tls_mode = b.choice(
            "client_tls_sslmode",
            ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
        )
        cert, key = b.text("client_tls_cert_file") or None, b.text("client_tls_key_file") or None
        if tls_mode != "disable" and (cert is None or key is None):
            raise b.error(
                "client_tls_sslmode",
                f"is {tls_mode}, but client_tls_key_file and client_tls_cert_file are not "
                "both set",
            )
        server_mode = b.choice(
            "server_tls_sslmode",
            ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
        )
        if server_mode in ("allow", "prefer") and "server_tls_sslmode" in b.entries:
            self.warn(
                _where(b.entries["server_tls_sslmode"], "pgbouncer", "server_tls_sslmode"),
                f"{server_mode} is treated as disable: pgsansio does not try TLS to servers "
                "unless it is required",
            )
        auth_user = b.text("auth_user") or None
        if auth_user is not None and auth_user not in self.userlist:
            self.warn(
                _where(b.entries["auth_user"], "pgbouncer", "auth_user"),
                f'"{auth_user}" has no secret in auth_file, so auth_query cannot log in',
            )
        max_client = b.integer("max_client_conn")
        return General(
            host=host,
            port=b.integer("listen_port"),
            # PgBouncer's 128 overflows in a connect storm (docs/reliability.md): the
            # model's default unless the file sets it
            listen_backlog=(
                b.integer("listen_backlog", 1)
                if "listen_backlog" in b.entries
                else General.listen_backlog
            ),
            connect_timeout=b.ms("server_connect_timeout"),
            idle_timeout=b.ms("server_idle_timeout"),
            server_lifetime=b.ms("server_lifetime"),
            idle_client_in_transaction_timeout=b.ms("idle_transaction_timeout"),
            healthcheck_delay=b.ms("server_check_delay"),
            client_login_timeout=b.ms("client_login_timeout"),
            tcp_keepalives_idle=b.integer("tcp_keepidle"),
            tcp_keepalives_count=b.integer("tcp_keepcnt"),
            tcp_keepalives_interval=b.integer("tcp_keepintvl"),
            tcp_user_timeout=b.integer("tcp_user_timeout"),
            server_round_robin=b.flag("server_round_robin"),
            tls_certificate=cert if tls_mode != "disable" else None,
            tls_private_key=key if tls_mode != "disable" else None,
            client_tls_sslmode=tls_mode,
            client_tls_ca_file=b.text("client_tls_ca_file") or None,
            server_tls=server_mode in ("require", "verify-ca", "verify-full"),
            verify_server_certificate=server_mode in ("verify-ca", "verify-full"),
            server_tls_ca_file=b.text("server_tls_ca_file") or None,
            admin_username=admin,
            admin_password=self.userlist.get(admin, ""),
            admin_auth_type=self._auth_for(self.userlist.get(admin)),
            server_reset_query=b.text("server_reset_query"),
            max_client_conn=max_client,
            auth_query=b.text("auth_query") if auth_user else None,
            auth_query_user=auth_user,
            auth_query_password=self.userlist.get(auth_user or ""),
            log_connections=b.flag("log_connections"),
            log_disconnections=b.flag("log_disconnections"),
            log_pooler_errors=b.flag("log_pooler_errors"),
            unix_socket_dir=b.text("unix_socket_dir"),
            unix_socket_mode=self._mode(),
            unix_socket_group=b.text("unix_socket_group"),
            # PgBouncer's 0 is "wait forever"; ours would be PgCat's connect_timeout rule
            query_wait_timeout=b.ms("query_wait_timeout") or _FOREVER_MS,
            reserve_pool_timeout=b.ms("reserve_pool_timeout"),
            query_timeout=b.ms("query_timeout"),
            client_idle_timeout=b.ms("client_idle_timeout"),
            admin_users=tuple(admins),
            stats_users=tuple(b.items("stats_users")),
            application_name_add_host=b.flag("application_name_add_host"),
            client_buffer_limit=self._max_packet_size(),
            logfile=b.text("logfile"),
            pidfile=b.text("pidfile"),
            syslog=b.flag("syslog"),
            syslog_ident=b.text("syslog_ident"),
            syslog_facility=b.choice("syslog_facility", SYSLOG_FACILITIES),
        )

    def _max_packet_size(self) -> int:
        """PgBouncer's max_packet_size as client_buffer_limit, capped at 1 GiB (the
        protocol's own limit); unset, the model's 64 MiB rather than PgBouncer's 2 GiB."""
        if "max_packet_size" not in self.bouncer.entries:
            return General.client_buffer_limit
        return min(self.bouncer.integer("max_packet_size", 1), _MAX_PACKET)

    def _mode(self) -> int:
        value = self.bouncer.raw("unix_socket_mode")
        try:
            mode = int(value, 8)
        except ValueError:
            mode = -1
        if not 0 <= mode <= 0o7777:
            raise self.bouncer.error(
                "unix_socket_mode", f"must be an octal file mode such as 0777, got {value!r}"
            )
        return mode

    def _auth_for(self, secret: str | None) -> str:
        """PgBouncer's method for a user with this stored secret."""
        if self.auth_type in ("any", "trust"):
            return "trust"
        if self.auth_type == "scram-sha-256" or (secret or "").startswith(_SCRAM):
            return "scram-sha-256"
        return "md5"

    def _users_section(self) -> dict[str, dict[str, str | int]]:
        """Each [users] entry's settings, checked once (not once per database)."""
        out: dict[str, dict[str, str | int]] = {}
        for name, e in self.ini.sections.get("users", {}).items():
            where = f"[users] {name}"
            opts = parse_connstr(e.value, e.path, e.line, where)
            for key in opts:
                why = USER_KEYS.get(key)
                if why is None:
                    self.warn(_where(e, "users", name), f"unknown setting {key}, ignored")
                elif why:
                    self.warn(_where(e, "users", name), f"{key} is not honoured ({why})")
            typed: dict[str, str | int] = {}
            for key in ("pool_size", "max_user_connections"):
                value = _opt_int(opts, key, e, where)
                if value is not None:
                    typed[key] = value
            if "pool_mode" in opts:
                typed["pool_mode"] = self._pool_mode(opts["pool_mode"], e, where)
            out[name] = typed
        return out

    def _pool(self, name: str, e: Entry, user_opts: dict[str, dict[str, str | int]]) -> PoolConfig:
        where = _where(e, "databases", name)
        opts = parse_connstr(e.value, e.path, e.line, f"[databases] {name}")
        for key in opts:
            why = DB_KEYS.get(key)
            if why is None:
                self.warn(where, f"unknown setting {key}, ignored")
            elif why:
                self.warn(where, f"{key} is not honoured ({why})")

        def num(key: str, default: int) -> int:
            value = _opt_int(opts, key, e, f"[databases] {name}")
            return default if value is None else value

        hosts = [h for h in opts.get("host", "").split(",") if h]
        # No host: PgBouncer connects through the Unix socket directory it listens in.
        host = hosts[0] if hosts else (self.bouncer.text("unix_socket_dir") or "/tmp")
        if len(hosts) > 1:
            self.warn(where, f"several hosts: pgsansio uses the first one ({host})")
        port = num("port", 5432)
        if not 1 <= port <= 65535:
            raise ConfigError(
                e.path, f"[databases] {name}", "port must be 1 to 65535", line=e.line
            )
        dbname = opts.get("dbname", name)
        b = self.bouncer
        reserve = num("reserve_pool", b.integer("reserve_pool_size"))
        reserve = num("reserve_pool_size", reserve)
        max_db = num("max_db_connections", b.integer("max_db_connections"))
        pool_size = num("pool_size", b.integer("default_pool_size"))
        min_pool = num("min_pool_size", b.integer("min_pool_size"))
        lifetime = b.ms("server_lifetime")
        if "server_lifetime" in opts:
            lifetime = num("server_lifetime", 0) * 1000
        db_mode = self.pool_mode
        if "pool_mode" in opts:
            db_mode = self._pool_mode(opts["pool_mode"], e, f"[databases] {name}")
        forced = opts.get("user")
        forced_password = opts.get("password") or (self.userlist.get(forced) if forced else None)
        if "password" in opts and not forced:
            self.warn(where, "password= is only used together with user=; ignored")
        names = dict.fromkeys([*self.userlist, *user_opts])
        if forced:
            names.setdefault(forced)
        if b.text("auth_user"):
            names.setdefault("*")  # any other user, looked up with auth_query
        if not names:
            self.warn(where, "no user can log in: auth_file and [users] name no user")
        users: dict[str, UserConfig] = {}
        for user in names:
            uo = user_opts.get(user, {})
            secret = self.userlist.get(user)
            size = int(uo.get("pool_size", pool_size))
            if size == 0:
                size = 10000  # PgBouncer 1.24: 0 means no limit
            max_user = int(uo.get("max_user_connections", b.integer("max_user_connections")))
            mode = str(uo.get("pool_mode", db_mode))
            auth = self._auth_for(secret)
            if secret is None and auth != "trust" and not b.text("auth_user"):
                continue  # no secret to check, none to look up: cannot log in
            if (
                auth == "scram-sha-256"
                and secret is not None
                and re.fullmatch(r"md5[0-9a-f]{32}", secret)
            ):
                self.warn(
                    f"{self.auth_file}: {user}",
                    "auth_type is scram-sha-256 but the secret is an md5 hash: this user "
                    "cannot log in (as in PgBouncer)",
                )
            users[user] = UserConfig(
                username=user,
                password=secret if auth != "trust" or secret else None,
                pool_size=size,
                auth_type=auth,
                server_username=forced or None,
                server_password=forced_password if forced else None,
                min_pool_size=min(min_pool, size),
                pool_mode=mode,
                server_lifetime=lifetime,
                idle_timeout=b.ms("server_idle_timeout"),
                connect_timeout=b.ms("server_connect_timeout"),
                max_user_connections=max_user,
            )
        server = ServerAddress(host=host, port=port, role="primary")
        check_query = b.text("server_check_query")
        if "server_check_query" in b.entries and check_query.strip().lower() not in (
            "select 1",
            "select 1;",
            "",
        ):
            self.warn(
                _where(b.entries["server_check_query"], "pgbouncer", "server_check_query"),
                "pgsansio checks servers with its own query (;), not this one",
            )
        return PoolConfig(
            name=name,
            users=users,
            shards=(ShardConfig(index=0, database=dbname, servers=(server,)),),
            pool_mode=db_mode,
            connect_timeout=b.ms("server_connect_timeout"),
            idle_timeout=b.ms("server_idle_timeout"),
            server_lifetime=lifetime,
            auth_query=self.bouncer.text("auth_query") if b.text("auth_user") else None,
            auth_query_user=b.text("auth_user") or None,
            auth_query_password=self.userlist.get(b.text("auth_user")),
            prepared_statements_cache_size=b.integer("max_prepared_statements"),
            reserve_pool_size=reserve,
            max_db_connections=max_db,
            client_encoding=opts.get("client_encoding"),
            datestyle=opts.get("datestyle"),
            timezone=opts.get("timezone"),
        )
