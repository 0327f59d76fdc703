"""The console's ``SET key = value``: PgBouncer's run-time settings, applied as a RELOAD
would apply the same change to the file.

Only settings that live once in ``[general]`` can change this way: the ones resolved
into every pool and user at load time (``default_pool_size``, ``pool_mode``,
``server_lifetime``, ...) answer that they need the file changed and a RELOAD, rather
than change half of what they govern. Names are PgBouncer's (the console is
PgBouncer's), and pgcat.toml's where they differ; times are PgBouncer's seconds (or
milliseconds under a pgcat.toml name). What PgBouncer does not know (``SET
application_name``, ``SET extra_float_digits`` that drivers send) stays accepted and
ignored, as before. A later RELOAD reads the file again, as in PgBouncer.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any

from ._control import AdminError

if TYPE_CHECKING:
    from pgsansio.config.model import Config

__all__ = ["SET_STATEMENT", "apply_set"]

SET_STATEMENT = re.compile(
    r"SET\s+(\w+)\s*(?:=|\s+TO\s+)\s*(?:'((?:[^']|'')*)'|(\S+))\s*$", re.IGNORECASE
)

# PgBouncer key -> (General field, kind): "s" seconds, "ms", "int", "bool", "str", "list"
_SETTABLE: dict[str, tuple[str, str]] = {
    "query_timeout": ("query_timeout", "s"),
    "query_wait_timeout": ("query_wait_timeout", "s"),
    "client_idle_timeout": ("client_idle_timeout", "s"),
    "client_login_timeout": ("client_login_timeout", "s"),
    "reserve_pool_timeout": ("reserve_pool_timeout", "s"),
    "idle_transaction_timeout": ("idle_client_in_transaction_timeout", "s"),
    "server_check_delay": ("healthcheck_delay", "s"),
    "server_reset_query": ("server_reset_query", "str"),
    "max_client_conn": ("max_client_conn", "int"),
    "server_round_robin": ("server_round_robin", "bool"),
    "log_connections": ("log_connections", "bool"),
    "log_disconnections": ("log_disconnections", "bool"),
    "log_pooler_errors": ("log_pooler_errors", "bool"),
    "admin_users": ("admin_users", "list"),
    "stats_users": ("stats_users", "list"),
}
# the same fields under their pgcat.toml names (times in milliseconds there)
_SETTABLE |= {
    field: (field, "ms" if kind == "s" else kind)
    for field, kind in _SETTABLE.values()
    if field not in _SETTABLE
}
_NEEDS_RELOAD = frozenset(
    {
        "default_pool_size",
        "min_pool_size",
        "reserve_pool_size",
        "pool_mode",
        "max_db_connections",
        "max_user_connections",
        "max_prepared_statements",
        "server_lifetime",
        "server_idle_timeout",
        "server_connect_timeout",
        "auth_type",
        "auth_file",
        "auth_query",
        "auth_user",
        "listen_addr",
        "listen_port",
        "unix_socket_dir",
    }
)
_TRUE = ("1", "yes", "on", "true")
_FALSE = ("0", "no", "off", "false")


def apply_set(config: Config, key: str, value: str) -> Config | None:
    """The configuration with ``key`` set to ``value``; None when ``key`` is not a
    pooler setting (the SET is then accepted and ignored, for drivers).

    Raises:
        AdminError: the setting cannot change at run time, or the value is wrong.
    """
    name = key.lower()
    if name in _NEEDS_RELOAD:
        raise AdminError(
            "55P02", f"{name} cannot be changed with SET here: change it in the file and RELOAD"
        )
    found = _SETTABLE.get(name)
    if found is None:
        return None
    field, kind = found
    new: object
    if kind in ("s", "ms", "int"):
        try:
            number = float(value) if kind == "s" else int(value)
        except ValueError:
            raise AdminError("22023", f"{name} must be a number, got {value!r}") from None
        if number < 0:
            raise AdminError("22023", f"{name} must be 0 or more, got {value!r}")
        new = round(number * 1000) if kind == "s" else int(number)
    elif kind == "bool":
        if value.lower() not in _TRUE + _FALSE:
            raise AdminError("22023", f"{name} must be 1 or 0 (on/off), got {value!r}")
        new = value.lower() in _TRUE
    elif kind == "list":
        new = tuple(v.strip() for v in value.split(",") if v.strip())
    else:
        new = value
    changes: dict[str, Any] = {field: new}
    general = dataclasses.replace(config.general, **changes)
    return dataclasses.replace(config, general=general)
