"""Writing the effective configuration back as pgcat.toml text (``pgsansio check``)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pgsansio.config._pgcat_keys import _BARE_KEY
from pgsansio.config.model import Config

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_MASK = "********"


def _join(prefix: str, key: str) -> str:
    """Dotted path of ``key`` under ``prefix``, quoting keys the way TOML would."""
    part = key if _BARE_KEY.match(key) else _toml_str(key)
    return f"{prefix}.{part}" if prefix else part


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------

_SECRET_GENERAL = frozenset({"admin_password", "auth_query_password"})
_SECRET_POOL = frozenset({"auth_query_password"})
_SECRET_USER = frozenset({"password", "server_password"})


def effective_config_toml(config: Config, *, mask: bool = True) -> str:
    """Render ``config`` as ``pgcat.toml`` text with every default written out.

    What ``pgsansio check`` prints, so an operator can see what the pooler will really
    do, including the values inherited from [general] and the pool. Secrets are
    replaced by ``"********"``: this output ends up in tickets and chat. Reading the
    text back gives the same configuration, apart from those passwords. ``mask=False``
    writes them out (``pgsansio convert``, whose output is a file to run with).
    """
    lines = [
        f"# The effective configuration read from {config.path}.",
        "# Every default is filled in, inherited values are resolved"
        + (", passwords are masked." if mask else "."),
        "",
        "[general]",
    ]
    none: frozenset[str] = frozenset()
    lines += _emit_fields(config.general, (), _SECRET_GENERAL if mask else none)
    for name, pool in config.pools.items():
        prefix = _join("pools", name)
        lines += ["", f"[{prefix}]"]
        lines += _emit_fields(pool, ("name", "users", "shards"), _SECRET_POOL if mask else none)
        for i, user in enumerate(pool.users.values()):
            lines += ["", f"[{prefix}.users.{i}]"]
            lines += _emit_fields(user, (), _SECRET_USER if mask else none)
        for shard in pool.shards:
            lines += ["", f"[{prefix}.shards.{shard.index}]"]
            lines.append(f"database = {_toml_str(shard.database)}")
            servers = [
                [s.host, s.port, s.role] + ([s.weight] if s.weight != 1 else [])
                for s in shard.servers
            ]
            lines.append(f"servers = {_toml_value(servers)}")
            lines.append(f"mirrors = {_toml_value([list(m) for m in shard.mirrors])}")
    return "\n".join(lines) + "\n"


def _emit_fields(
    obj: DataclassInstance, skip: Iterable[str], secrets: frozenset[str]
) -> list[str]:
    out = []
    for f in dataclasses.fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        if value is None:
            out.append(f"# {f.name} is not set")
        elif f.name in secrets:
            out.append(f"{f.name} = {_toml_str(_MASK)}")
        else:
            out.append(f"{f.name} = {_toml_value(value)}")
    return out


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if "\\" in value and _LITERAL_OK.match(value):
            return f"'{value}'"  # a literal string keeps regexes readable
        return _toml_str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


_LITERAL_OK = re.compile(r"^[^'\x00-\x08\x0a-\x1f\x7f]*$")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f"}
_ESCAPES["\r"] = "\\r"


def _toml_str(s: str) -> str:
    """A TOML basic string; control characters are escaped, other text kept as is."""
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
