"""Read ``pgcat.toml`` into the resolved :class:`~pgsansio.config.model.Config`.

pgsansio is meant to be a drop-in replacement for PgCat, so a file PgCat accepts should
load here with the same meaning, and a file PgCat rejects should be rejected here too,
but with a message that says *where* and *why* (PgCat logs "BadConfig" and often not
much more). Every :class:`ConfigError` names the file, the dotted key and the problem::

    pgcat.toml: pools.sharded_db.users.0.pool_size: must be a positive integer, got "ten"

Defaults are PgCat's **code** defaults (``src/config.rs``), not the ones in its
CONFIG.md, which is wrong about ten-odd keys (``port`` is 5432, ``idle_timeout`` 600000,
``server_lifetime`` 3600000, ``server_round_robin`` true, ...). Precedence is PgCat's:
``connect_timeout``, ``idle_timeout`` and ``server_lifetime`` resolve user -> pool ->
general, ``pool_mode`` user -> pool, and each ``auth_query*`` key pool -> general. The
resolved values are stored, so the engine never has to look anything up twice.

Unknown keys are not errors, because PgCat ignores them (it has no
``deny_unknown_fields``, and its own example file relies on that); each one becomes a
warning in :attr:`Config.warnings`, with a "did you mean" suggestion, since a misspelt
key silently falling back to its default is the most common way to misconfigure PgCat.

pgsansio extensions to the format (PgCat ignores them, so one file can serve both):

* ``general.server_reset_query`` (default ``"DISCARD ALL"``): run on a server
  connection before another client gets it in session mode; ``""`` turns it off.
* ``general.max_client_conn`` (default 0 = unlimited): refuse clients beyond this many.
* ``auth_type`` / ``admin_auth_type`` also accept ``"scram-sha-256"``.
* Replicas and failover: a server's role may be ``"auto"`` (the primary is the server
  not in recovery, found and followed by probing), a ``servers`` entry may carry a 4th
  item, its load-balancing weight (1-1000, default 1), ``load_balancing_mode`` also
  accepts ``"round_robin"``; ``general.healthcheck_interval`` (ms) probes every server
  on a deadline; ``pools.X.replica_max_lag_ms`` / ``replica_max_lag_bytes`` keep reads
  off lagging replicas. See :mod:`pgsansio.engine._health`.
* Reliability at the socket (PgBouncer's names and meanings, docs/reliability.md):
  ``general.listen_backlog`` (default 4096 where PgBouncer has 128, which overflows in
  a connect storm), ``general.client_login_timeout`` (ms,
  default 60000, 0 = none), and ``general.client_tcp_keepalives_idle`` /
  ``_interval`` / ``_count`` / ``client_tcp_user_timeout`` for client sockets (default
  0 = the operating system's); PgCat's ``tcp_*`` keys apply to server sockets only;
  ``general.client_buffer_limit`` / ``total_buffer_limit`` (bytes; 64 MiB / 256 MiB)
  cap what the pooler holds whole of unfinished messages (long queries and COPY rows
  are streamed; see pgsansio.engine._buffers).
* ``general.log_connections``, ``log_disconnections`` and ``log_pooler_errors`` (each
  default true, PgBouncer's names and meanings): log each login, each logged-in client
  leaving, and each failed login or server connection with its cause (see
  :mod:`pgsansio.engine._eventlog`). PgCat's ``log_client_connections`` /
  ``log_client_disconnections`` turn the first two on too.
* ``general.logfile`` / ``general.pidfile`` (PgBouncer's names; default "" = none):
  the ``run`` command appends the log to that file as well as stderr, and keeps its pid
  in the pidfile until exit; ``general.syslog`` / ``syslog_ident`` (default
  "pgsansio") / ``syslog_facility`` (default "daemon") also send it to /dev/log
  (see :mod:`pgsansio.procfiles`, docs/pgbouncer.md).
* ``pools.X.prepared_statements_cache_size`` defaults to 500 (on) rather than PgCat's
  0 (off), as PgBouncer 1.24 and PgDog do; ``0`` turns it off.

Where pgsansio deliberately differs from PgCat:

* ``general.prometheus_exporter_port`` accepts 1-65535. PgCat stores it in a signed
  16-bit integer and so rejects anything above 32767; such values load here with a
  warning, so that a file shared with PgCat does not break it by surprise.
* A server whose role is ``"mirror"`` is rejected. PgCat's role type accepts that
  spelling because it is the role it gives the hosts listed under ``mirrors``; what a
  ``"mirror"`` entry in ``servers`` does is undocumented (it is neither primary nor
  replica to the router), so rather than guess, the message points at ``mirrors``.
* Two labels with the same ``username`` in one pool are an error (PgCat silently keeps
  one of them), as are two servers with the same host and port in one shard (PgCat only
  catches the same host, port *and* role).
* ``general.tls_certificate`` / ``tls_private_key`` (and the extension keys
  ``client_tls_ca_file`` / ``server_tls_ca_file``) are checked to be readable files by
  :func:`load_config` (PgCat also parses them; the frontend's TLS layer does that here).
  ``client_tls_sslmode`` other than ``disable`` needs a certificate, and ``verify-ca`` /
  ``verify-full`` need ``client_tls_ca_file``.
* ``[plugins]`` and ``[pools.X.plugins]`` are accepted but not implemented yet, which
  each produces a warning. As in PgCat, a pool's own plugins need its query parser.
* A pool's ``connect_timeout``, ``idle_timeout`` and ``server_lifetime`` are stored
  resolved (pool -> general), never ``None``, in what :func:`parse_config` returns.

Nothing here reads the environment: ``CONFIG_FILE`` is the command line's business.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, fields
from typing import Any

from pgsansio.config._pgcat_keys import (
    _DEFAULT_SHARD,
    _GENERAL_KEYS,
    _MIRRORS_IGNORED,
    _NOT_ACTED_ON,
    _PLUGINS_IGNORED,
    _POOL_KEYS,
    _POOL_TABLES,
    _SECTION_OF,
    _SHARD_KEYS,
    _SHARD_LISTS,
    _TOML_ERROR,
    _TOP_KEYS,
    _TOP_TABLES,
    _USER_KEYS,
    _Key,
)
from pgsansio.config._toml import (
    _join,
    _toml_str,
    _toml_value,
    effective_config_toml,
)
from pgsansio.config.errors import ConfigError
from pgsansio.config.model import (
    Config,
    General,
    PoolConfig,
    ServerAddress,
    ShardConfig,
    UserConfig,
)

__all__ = ["ConfigError", "effective_config_toml", "load_config", "parse_config"]

_ADMIN_DATABASES = ("pgcat", "pgbouncer")
_INHERITED_FROM_GENERAL = (
    "connect_timeout",
    "idle_timeout",
    "server_lifetime",
    "auth_query",
    "auth_query_user",
    "auth_query_password",
)


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the file at ``path``; raise :class:`ConfigError` if unusable.

    Unlike :func:`parse_config` this also checks that the TLS certificate and key the
    file names can be read, since a pooler that starts and then cannot serve TLS is
    worse than one that refuses to start.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(name, None, "cannot read the configuration: no such file") from None
    except IsADirectoryError:
        raise ConfigError(name, None, "is a directory, not a configuration file") from None
    except OSError as e:
        reason = e.strerror or str(e)
        raise ConfigError(name, None, f"cannot read the configuration ({reason})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            name,
            None,
            f"not UTF-8 text (byte 0x{raw[e.start]:02x}); TOML files must be UTF-8",
            line=line,
        ) from None
    return parse_config(text, name, check_files=True)


def parse_config(text: str, path: str = "pgcat.toml", *, check_files: bool = False) -> Config:
    """Parse ``pgcat.toml`` text; ``path`` is only used to label messages.

    ``check_files`` also verifies that the TLS files named in ``[general]`` are
    readable (relative paths are relative to the current directory, as in PgCat).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _syntax_error(path, str(e)) from None
    ctx = _Context(path)
    config = _read_config(ctx, data)
    if check_files:
        tls_files = ("tls_certificate", "tls_private_key", "client_tls_ca_file")
        for key in (*tls_files, "server_tls_ca_file"):
            file = getattr(config.general, key)
            if file is not None:
                try:
                    with open(file, "rb"):
                        pass
                except OSError as e:
                    reason = e.strerror or str(e)
                    raise ConfigError(
                        path, f"general.{key}", f'cannot read "{file}" ({reason})'
                    ) from None
    return config


def _syntax_error(path: str, message: str) -> ConfigError:
    m = _TOML_ERROR.match(message)
    if m is None:
        return ConfigError(path, None, f"not valid TOML: {_lower_first(message)}")
    problem = f"not valid TOML: {_lower_first(m['msg'])} (column {m['col']})"
    return ConfigError(path, None, problem, line=int(m["line"]))


def _lower_first(s: str) -> str:
    return s[:1].lower() + s[1:]


class _Context:
    """The file name, for messages, and the warnings collected so far."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.warnings: list[str] = []

    def error(self, key: str | None, problem: str) -> ConfigError:
        return ConfigError(self.path, key, problem)

    def warn(self, key: str, problem: str) -> None:
        self.warnings.append(f"{self.path}: {key}: {problem}")


def _show(value: object) -> str:
    """Render a value the way it looks in the file, for "got ..." in messages."""
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        try:
            shown = _toml_value(value)
        except TypeError:
            return "an array"
        return shown if len(shown) <= 60 else "an array"
    return f"a date/time ({value})"


def _kind_of(value: object) -> str:
    """Describe a value without showing it, for keys that hold secrets."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return "a date/time"


def _table(ctx: _Context, key: str, value: object, header: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ctx.error(key, f"must be a table ({header}), got {_show(value)}")
    return value


def _check(ctx: _Context, key: str, spec: _Key, value: object) -> object:
    """Return ``value`` converted to its canonical form, or raise naming the problem."""
    unit = f" ({spec.unit})" if spec.unit else ""
    if spec.kind == "str":
        if not isinstance(value, str):
            got = _kind_of(value) if spec.secret else _show(value)
            raise ctx.error(key, f"must be a string (in quotes), got {got}")
        return value
    if spec.kind == "strlist":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ctx.error(
                key, f'must be an array of user names, e.g. ["alice"], got {_show(value)}'
            )
        return tuple(value)
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise ctx.error(key, f"must be true or false, got {_show(value)}")
        return value
    if spec.kind == "enum":
        assert spec.choices is not None
        if not isinstance(value, str) or value not in spec.choices:
            listed = ", ".join(_toml_str(k) for k in spec.choices if k.islower())
            raise ctx.error(key, f"must be one of {listed}, got {_show(value)}")
        return spec.choices[value]
    if spec.kind == "port":
        low = spec.minimum_port
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 65535:
            extra = " (0 picks a free port)" if low == 0 else ""
            raise ctx.error(
                key, f"must be a port number from {low} to 65535{extra}, got {_show(value)}"
            )
        return value
    positive = spec.kind == "posint"
    wanted = f"a positive integer{unit}" if positive else f"an integer, 0 or more{unit}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ctx.error(key, f"must be {wanted}, got {_show(value)}")
    if value < (1 if positive else 0):
        raise ctx.error(key, f"must be {wanted}, got {_show(value)}")
    if spec.maximum is not None and value > spec.maximum:
        raise ctx.error(key, f"must be at most {spec.maximum}, got {_show(value)}")
    return value


def _read_keys(
    ctx: _Context,
    prefix: str,
    data: Mapping[str, Any],
    spec: Mapping[str, _Key],
    tables: Iterable[str] = (),
    *,
    fallback: Mapping[str, object] | None = None,
) -> dict[str, Any]:
    """Check the scalar keys of one section; warn about the keys nobody knows.

    Keys named in ``tables`` are left to the caller. Checking happens in file order, so
    the error reported is the first one in the file. ``fallback`` is what each key is
    when the section does not set it (its default, or what it inherits), so that a
    misspelt key's warning can say which value is used instead.
    """
    tables = tuple(tables)
    out: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in data.items():
        if key in spec:
            out[key] = _check(ctx, _join(prefix, key), spec[key], value)
            note = _NOT_ACTED_ON.get(key)
            if note is not None and note[0](out[key]):
                ctx.warn(_join(prefix, key), note[1])
        elif key not in tables:
            unknown.append(key)
    for key, s in spec.items():
        if s.required and key not in data:
            hint = f" ({s.hint})" if s.hint else ""
            raise ctx.error(_join(prefix, key), f"is required but missing{hint}")
    for key in unknown:
        _warn_unknown(
            ctx,
            _join(prefix, key),
            key,
            spec,
            known=[*spec, *tables],
            values=out,
            fallback=fallback or {},
        )
    return out


def _warn_unknown(
    ctx: _Context,
    dotted: str,
    key: str,
    spec: Mapping[str, _Key],
    *,
    known: list[str],
    values: Mapping[str, object],
    fallback: Mapping[str, object],
) -> None:
    """An unknown key is ignored; say what the key it most likely meant is instead.

    A misspelt key falling back to its default is PgCat's classic misconfiguration
    (``prot = 6432`` leaves the pooler on 5432, where a local PostgreSQL may listen),
    so the warning names the value that is really used.
    """
    if key in _SECTION_OF and key not in spec:
        ctx.warn(dotted, f"unknown key here, ignored ({key} is {_SECTION_OF[key]})")
        return
    close = difflib.get_close_matches(key, known, n=1)
    if not close:
        ctx.warn(dotted, "unknown key, ignored")
        return
    meant = close[0]
    secret = meant in spec and spec[meant].secret
    if meant in values:
        used = "" if secret else f", to {_show(values[meant])}"
        instead = f"{meant} is also set in this section{used}"
    elif meant in fallback:
        value = fallback[meant]
        if secret or value is None:
            instead = f"{meant} stays unset"
        else:
            unit = spec[meant].unit if meant in spec else ""
            instead = f"{meant} stays {_show(value)}{' ' + unit if unit else ''}"
            if meant == "port" and value == 5432:
                instead += ", which a local PostgreSQL may already use"
    else:
        ctx.warn(dotted, f"unknown key, ignored (did you mean {meant}?)")
        return
    ctx.warn(dotted, f"unknown key, ignored (did you mean {meant}? {instead})")


def _defaults(cls: type) -> dict[str, object]:
    """The field defaults of a model dataclass: what a key is when a file leaves it out."""
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


def _read_config(ctx: _Context, data: dict[str, Any]) -> Config:
    _read_keys(ctx, "", data, _TOP_KEYS, _TOP_TABLES)  # `path` is replaced, as in PgCat
    if "general" not in data:
        raise ctx.error(
            "general",
            "the [general] section is missing; it needs at least admin_username and "
            "admin_password",
        )
    general = _read_general(ctx, _table(ctx, "general", data["general"], "[general]"))
    if "plugins" in data:
        _table(ctx, "plugins", data["plugins"], "[plugins]")
        ctx.warn("plugins", _PLUGINS_IGNORED)
    if "pools" not in data:
        raise ctx.error(
            "pools", "no pools are configured; add at least one [pools.<database>] section"
        )
    pools_data = _table(ctx, "pools", data["pools"], "[pools.<database>]")
    if not pools_data:
        raise ctx.error(
            "pools", "no pools are configured; add at least one [pools.<database>] section"
        )
    pools: dict[str, PoolConfig] = {}
    for name, pool_data in pools_data.items():
        prefix = _join("pools", name)
        pools[name] = _read_pool(
            ctx, general, name, prefix, _table(ctx, prefix, pool_data, f"[{prefix}]")
        )
    return Config(general=general, pools=pools, path=ctx.path, warnings=tuple(ctx.warnings))


def _read_general(ctx: _Context, data: dict[str, Any]) -> General:
    values = _read_keys(ctx, "general", data, _GENERAL_KEYS, fallback=_defaults(General))
    cert, key = values.get("tls_certificate"), values.get("tls_private_key")
    if cert is not None and key is None:
        raise ctx.error(
            "general.tls_private_key",
            "is missing: tls_certificate is set, and client TLS needs the certificate's "
            "private key too",
        )
    if key is not None and cert is None:
        raise ctx.error(
            "general.tls_certificate",
            "is missing: tls_private_key is set, and client TLS needs the certificate too",
        )
    _check_tls(ctx, values)
    _check_auth_query(ctx, "general", values)
    port = values.get("prometheus_exporter_port", 9930)
    if port > 32767:
        ctx.warn(
            "general.prometheus_exporter_port",
            f"{port} is above 32767, which PgCat itself rejects (it stores this port as a "
            "signed 16-bit number); pgsansio accepts it",
        )
    return General(**values)


def _check_tls(ctx: _Context, values: Mapping[str, Any]) -> None:
    """The TLS keys that only make sense together."""
    mode = values.get("client_tls_sslmode")
    if mode in ("require", "verify-ca", "verify-full") and values.get("tls_certificate") is None:
        raise ctx.error(
            "general.client_tls_sslmode",
            f'is "{mode}", but no tls_certificate and tls_private_key are set: client TLS '
            "needs the pooler's certificate",
        )
    if mode in ("verify-ca", "verify-full") and values.get("client_tls_ca_file") is None:
        raise ctx.error(
            "general.client_tls_ca_file",
            f'is missing: client_tls_sslmode "{mode}" verifies client certificates '
            "against this CA file",
        )


def _check_auth_query(ctx: _Context, prefix: str, values: Mapping[str, Any]) -> None:
    if values.get("auth_query") is None:
        return
    for key in ("auth_query_user", "auth_query_password"):
        if values.get(key) is None:
            raise ctx.error(
                f"{prefix}.{key}",
                "is missing: auth_query is set, and running it needs both auth_query_user "
                "and auth_query_password (the server login used to look passwords up)",
            )


def _read_pool(
    ctx: _Context, general: General, name: str, prefix: str, data: dict[str, Any]
) -> PoolConfig:
    inherited = {k: getattr(general, k) for k in _INHERITED_FROM_GENERAL}
    values = _read_keys(
        ctx, prefix, data, _POOL_KEYS, _POOL_TABLES, fallback=_defaults(PoolConfig) | inherited
    )

    # Inherited values are stored resolved, so the engine (and the effective config)
    # never need to know where they came from.
    for key in ("connect_timeout", "idle_timeout", "server_lifetime", "pin_session_state"):
        values.setdefault(key, getattr(general, key))
    for key in ("auth_query", "auth_query_user", "auth_query_password"):
        if values.get(key) is None and inherited[key] is not None:
            values[key] = inherited[key]
    _check_auth_query(ctx, prefix, values)

    parser = values.get("query_parser_enabled", False)
    if values.get("query_parser_read_write_splitting") and not parser:
        raise ctx.error(
            _join(prefix, "query_parser_read_write_splitting"),
            "needs query_parser_enabled = true in the same pool: read/write splitting "
            "works by parsing each query",
        )
    if "plugins" in data:
        _table(ctx, _join(prefix, "plugins"), data["plugins"], f"[{prefix}.plugins]")
        if not parser:
            raise ctx.error(
                _join(prefix, "plugins"),
                "plugins need query_parser_enabled = true in the same pool",
            )
        ctx.warn(_join(prefix, "plugins"), _PLUGINS_IGNORED)
    for key in ("sharding_key_regex", "shard_id_regex"):
        pattern = values.get(key)
        if pattern is not None:
            try:
                groups = re.compile(pattern).groups
            except re.error as e:
                raise ctx.error(
                    _join(prefix, key), f"is not a valid regular expression: {e}"
                ) from None
            if groups < 1:
                ctx.warn(
                    _join(prefix, key),
                    "has no capture group, so it never routes: the shard number or key is "
                    r"capture group 1, e.g. '/\* shard_id: (\d+) \*/'",
                )
    sharding_key = values.get("automatic_sharding_key")
    if sharding_key is not None:
        unquoted = sharding_key.replace('"', "")
        parts = unquoted.split(".")
        if len(parts) != 2 or not all(parts):
            raise ctx.error(
                _join(prefix, "automatic_sharding_key"),
                f"must be table.column, with exactly one dot, got {_show(sharding_key)}",
            )
        values["automatic_sharding_key"] = unquoted
        if not parser:
            ctx.warn(
                _join(prefix, "automatic_sharding_key"),
                "has no effect unless query_parser_enabled = true",
            )
    if values.get("db_activity_based_routing"):
        for key in ("db_activity_init_delay", "db_activity_ttl", "table_mutation_cache_ms_ttl"):
            if values.get(key) == 0:
                raise ctx.error(
                    _join(prefix, key), "must be above 0 while db_activity_based_routing is on"
                )

    pool_mode = values.get("pool_mode", "transaction")
    users = _read_users(ctx, prefix, data, values, pool_mode)
    shards = _read_shards(ctx, prefix, data)

    default_shard = values.get("default_shard", "shard_0")
    m = _DEFAULT_SHARD.match(default_shard)
    if m is not None:
        if int(m[1]) >= len(shards):
            raise ctx.error(
                _join(prefix, "default_shard"),
                f"{_show(default_shard)} does not exist: this pool has {len(shards)} "
                f"shard(s), numbered from shard_0",
            )
    elif default_shard not in ("random", "random_healthy"):
        raise ctx.error(
            _join(prefix, "default_shard"),
            'must be "shard_<n>" (for example "shard_0"), "random" or "random_healthy", '
            f"got {_show(default_shard)}",
        )
    if values.get("cross_shard") == "fan_out" and not values.get("query_parser_enabled"):
        raise ctx.error(
            _join(prefix, "cross_shard"),
            '"fan_out" reads each query to merge it across shards: it needs '
            "query_parser_enabled = true in the same pool",
        )
    if name in _ADMIN_DATABASES:
        ctx.warn(
            prefix,
            f'clients connecting to database "{name}" reach the admin console, so this pool '
            "cannot be used; rename it",
        )
    return PoolConfig(name=name, users=users, shards=shards, **values)


def _read_users(
    ctx: _Context,
    prefix: str,
    data: Mapping[str, Any],
    pool: Mapping[str, Any],
    pool_mode: str,
) -> dict[str, UserConfig]:
    if "users" not in data:
        raise ctx.error(
            _join(prefix, "users"),
            f"is required but missing: add a [{prefix}.users.0] section with username, "
            "password and pool_size",
        )
    users_key = _join(prefix, "users")
    users_data = _table(ctx, users_key, data["users"], f"[{users_key}.<n>]")
    if not users_data:
        ctx.warn(users_key, "this pool has no users, so no client can connect to it")
    has_auth_query = pool.get("auth_query") is not None
    users: dict[str, UserConfig] = {}
    labels: dict[str, str] = {}
    user_fallback = _defaults(UserConfig) | {"pool_mode": pool_mode}
    user_fallback |= {k: pool[k] for k in ("connect_timeout", "idle_timeout", "server_lifetime")}
    for label, user_data in users_data.items():
        uprefix = _join(users_key, label)
        values = _read_keys(
            ctx,
            uprefix,
            _table(ctx, uprefix, user_data, f"[{uprefix}]"),
            _USER_KEYS,
            fallback=user_fallback,
        )
        username = values["username"]
        if not username:
            raise ctx.error(_join(uprefix, "username"), "must not be empty")
        if username in labels:
            raise ctx.error(
                _join(uprefix, "username"),
                f"user {_show(username)} is already defined in {labels[username]}; "
                "each username may appear only once per pool",
            )
        labels[username] = uprefix
        if values.get("password") is None and not has_auth_query:
            raise ctx.error(
                _join(uprefix, "password"),
                "is missing: set the user's password, or configure auth_query (in this "
                "pool or in [general]) so the pooler can look it up",
            )
        min_size = values.get("min_pool_size", 0)
        if min_size > values["pool_size"]:
            raise ctx.error(
                _join(uprefix, "min_pool_size"),
                f"is {min_size}, larger than pool_size ({values['pool_size']})",
            )
        values.setdefault("password", None)
        values.setdefault("pool_mode", pool_mode)
        for key in ("connect_timeout", "idle_timeout", "server_lifetime"):
            values.setdefault(key, pool[key])
        users[username] = UserConfig(**values)
    return users


def _read_shards(ctx: _Context, prefix: str, data: Mapping[str, Any]) -> tuple[ShardConfig, ...]:
    shards_key = _join(prefix, "shards")
    if "shards" not in data:
        raise ctx.error(
            shards_key,
            f"is required but missing: add a [{prefix}.shards.0] section with database and "
            "servers",
        )
    shards_data = _table(ctx, shards_key, data["shards"], f"[{shards_key}.<n>]")
    if not shards_data:
        raise ctx.error(
            shards_key,
            f"no shards are configured; add a [{prefix}.shards.0] section with database and "
            "servers",
        )
    numbered: dict[int, ShardConfig] = {}
    for key, shard_data in shards_data.items():
        sprefix = _join(shards_key, key)
        if not key.isascii() or not key.isdigit():
            raise ctx.error(
                sprefix,
                f"shard names must be numbers (0, 1, 2, ...), got {_show(key)}",
            )
        index = int(key)
        if index in numbered:
            raise ctx.error(sprefix, f"shard {index} is defined twice")
        shard = _table(ctx, sprefix, shard_data, f"[{sprefix}]")
        numbered[index] = _read_shard(ctx, index, sprefix, shard)
    ordered = tuple(numbered[i] for i in sorted(numbered))
    if [s.index for s in ordered] != list(range(len(ordered))):
        found = ", ".join(str(s.index) for s in ordered)
        ctx.warn(
            shards_key,
            f"shards are numbered {found}; shards are chosen by position (the "
            f"{len(ordered)} shards are reached as 0 to {len(ordered) - 1}, as in PgCat), so "
            "number them 0, 1, 2, ... to avoid surprises",
        )
    return ordered


def _read_shard(ctx: _Context, index: int, prefix: str, data: dict[str, Any]) -> ShardConfig:
    values = _read_keys(ctx, prefix, data, _SHARD_KEYS, _SHARD_LISTS)
    skey = _join(prefix, "servers")
    if "servers" not in data:
        raise ctx.error(
            skey,
            "is required but missing: list the shard's [host, port, role] entries, e.g. "
            'servers = [["127.0.0.1", 5432, "primary"]]',
        )
    raw = data["servers"]
    if not isinstance(raw, list):
        raise ctx.error(skey, f"must be an array of [host, port, role] entries, got {_show(raw)}")
    if not raw:
        raise ctx.error(skey, "is empty; list at least one [host, port, role] entry")
    servers: list[ServerAddress] = []
    seen: dict[tuple[str, int], int] = {}
    primaries: list[int] = []
    for i, entry in enumerate(raw):
        ekey = _join(skey, str(i))
        if not isinstance(entry, list) or len(entry) not in (3, 4):
            raise ctx.error(
                ekey,
                f'must be [host, port, role], e.g. ["127.0.0.1", 5432, "primary"] (or '
                f"[host, port, role, weight]), got {_show(entry)}",
            )
        host, port, role = entry[:3]
        weight = entry[3] if len(entry) == 4 else 1
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 1000:
            raise ctx.error(
                ekey,
                f"the weight (fourth item) must be a number from 1 to 1000, got {_show(weight)}",
            )
        if not isinstance(host, str) or not host:
            raise ctx.error(
                ekey, f"the host (first item) must be a non-empty string, got {_show(host)}"
            )
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ctx.error(
                ekey, f"the port (second item) must be a number from 1 to 65535, got {_show(port)}"
            )
        if role in ("mirror", "Mirror"):
            raise ctx.error(
                ekey,
                'role "mirror" is not supported in servers: to copy traffic to another host, '
                "list it in this shard's mirrors = [[host, port, server_index]]",
            )
        if role not in ("primary", "Primary", "replica", "Replica", "auto", "Auto"):
            raise ctx.error(
                ekey,
                'the role (third item) must be "primary", "replica" or "auto" (found out '
                f"with pg_is_in_recovery()), got {_show(role)}",
            )
        role = role.lower()
        if (host, port) in seen:
            raise ctx.error(
                ekey,
                f"duplicate server {host}:{port} (also {_join(skey, str(seen[host, port]))})",
            )
        seen[host, port] = i
        if role == "primary":
            primaries.append(i)
        servers.append(ServerAddress(host=host, port=port, role=role, weight=weight))
    if primaries and any(s.role == "auto" for s in servers):
        raise ctx.error(
            skey,
            'mixes a "primary" with "auto" servers: with "auto" the primary is whichever '
            'server is not in recovery, so list the primary as "auto" too',
        )
    if len(primaries) > 1:
        which = " and ".join(f"servers.{i}" for i in primaries)
        raise ctx.error(
            skey, f"has {len(primaries)} primaries ({which}); a shard can have at most one"
        )
    mirrors = _read_mirrors(ctx, prefix, data, len(servers))
    return ShardConfig(
        index=index, database=values["database"], servers=tuple(servers), mirrors=mirrors
    )


def _read_mirrors(
    ctx: _Context, prefix: str, data: Mapping[str, Any], n_servers: int
) -> tuple[tuple[str, int, int], ...]:
    mkey = _join(prefix, "mirrors")
    raw = data.get("mirrors", [])
    if not isinstance(raw, list):
        raise ctx.error(
            mkey, f"must be an array of [host, port, server_index] entries, got {_show(raw)}"
        )
    mirrors: list[tuple[str, int, int]] = []
    for i, entry in enumerate(raw):
        ekey = _join(mkey, str(i))
        ok = isinstance(entry, list) and len(entry) == 3
        if ok:
            host, port, target = entry
            ok = (
                isinstance(host, str)
                and bool(host)
                and isinstance(port, int)
                and not isinstance(port, bool)
                and 1 <= port <= 65535
                and isinstance(target, int)
                and not isinstance(target, bool)
                and target >= 0
            )
        if not ok:
            raise ctx.error(
                ekey,
                "must be [host, port, server_index], where server_index is the position of "
                f'the mirrored server in servers (from 0), e.g. ["10.0.0.9", 5432, 0], got '
                f"{_show(entry)}",
            )
        if target >= n_servers:
            ctx.warn(
                ekey,
                f"server_index {target} does not match any entry in servers (0 to "
                f"{n_servers - 1}), so this mirror never receives traffic",
            )
        mirrors.append((host, port, target))
    if mirrors:
        ctx.warn(mkey, _MIRRORS_IGNORED)
    return tuple(mirrors)
