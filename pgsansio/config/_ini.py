"""PgBouncer's file syntax: the ini lines, ``%include``, libpq connection strings and
the auth_file, read as PgBouncer's parser reads them (see :mod:`.pgbouncer`).

Kept apart from the reader that gives them meaning, so each stays readable on its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from pgsansio.config.errors import ConfigError

__all__ = ["Entry", "Ini", "parse_connstr", "parse_ini", "parse_userlist", "read_text"]

_SECTIONS = ("databases", "users", "pgbouncer", "peers")
_INCLUDE_DEPTH = 10  # PgBouncer's own limit on nested %include


@dataclass
class Entry:
    value: str
    path: str
    line: int


@dataclass
class Ini:
    """The sections read so far (later values win, as in PgBouncer), and warnings."""

    sections: dict[str, dict[str, Entry]] = field(default_factory=dict)
    order: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def read_text(path: str, what: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(path, None, f"cannot read the {what}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(path, None, f"is a directory, not the {what}") from None
    except OSError as e:
        raise ConfigError(path, None, f"cannot read the {what} ({e.strerror or e})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            path, None, f"not UTF-8 text (byte 0x{raw[e.start]:02x})", line=line
        ) from None


def _unquote(text: str, path: str, line: int) -> tuple[str, str]:
    """Split a leading quoted string off ``text``: (its value, the rest)."""
    quote = text[0]
    out: list[str] = []
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == quote:
            if text[i + 1 : i + 2] == quote:  # a doubled quote stands for itself
                out.append(quote)
                i += 2
                continue
            return "".join(out), text[i + 1 :]
        out.append(ch)
        i += 1
    raise ConfigError(path, None, f"unterminated {quote} quote", line=line)


def parse_ini(ini: Ini, text: str, path: str, section: str | None, depth: int) -> str | None:
    """Add the lines of one file to ``ini``; return the section open at its end."""
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("%include"):
            name = line[len("%include") :].strip()
            if not name:
                raise ConfigError(path, None, "%include needs a file name", line=n)
            if depth >= _INCLUDE_DEPTH:
                raise ConfigError(
                    path, None, f"%include nested more than {_INCLUDE_DEPTH} deep", line=n
                )
            target = name
            if not os.path.isabs(name) and not os.path.exists(name):
                beside = os.path.join(os.path.dirname(path), name)
                if os.path.exists(beside):
                    target = beside
            section = parse_ini(
                ini, read_text(target, "included file"), target, section, depth + 1
            )
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigError(path, None, f"a section header must end with ]: {line}", line=n)
            section = line[1:-1].strip().lower()
            if section not in _SECTIONS:
                ini.warnings.append(
                    f"{path}:{n}: [{section}]: unknown section, ignored (PgBouncer's are "
                    "[databases], [users], [pgbouncer] and [peers])"
                )
            ini.sections.setdefault(section, {})
            ini.order.setdefault(section, [])
            continue
        if line[0] in "\"'":
            key, rest = _unquote(line, path, n)
        else:
            key, sep, rest = line.partition("=")
            if not sep:
                raise ConfigError(
                    path, None, f"expected key = value, a [section] or %include: {line}", line=n
                )
            rest = "=" + rest
            key = key.strip()
        rest = rest.strip()
        if not rest.startswith("="):
            raise ConfigError(path, key, "expected = after the key", line=n)
        value = rest[1:].strip()
        if value and value[0] in "\"'":
            value, tail = _unquote(value, path, n)
            if tail.strip():
                raise ConfigError(path, key, "text after the closing quote", line=n)
        if section is None:
            raise ConfigError(path, key, "appears before any [section] header", line=n)
        if section != "databases":
            key = key.lower()
        entries = ini.sections[section]
        if key not in entries:
            ini.order[section].append(key)
        entries[key] = Entry(value, path, n)
    return section


def parse_connstr(text: str, path: str, line: int, key: str) -> dict[str, str]:
    """``host=x port=5432 dbname='my db'`` -> a dict (libpq's keyword/value syntax)."""
    out: dict[str, str] = {}
    rest = text.strip()
    while rest:
        name, sep, after = rest.partition("=")
        name = name.strip()
        if not sep or not name or any(c.isspace() for c in name):
            raise ConfigError(
                path, key, f"expected name=value in the connection string, at {rest!r}", line=line
            )
        after = after.lstrip()
        if after.startswith("'"):
            chars: list[str] = []
            i = 1
            while True:
                if i >= len(after):
                    raise ConfigError(path, key, f"unterminated quote after {name}=", line=line)
                ch = after[i]
                if ch == "\\" and i + 1 < len(after):
                    chars.append(after[i + 1])
                    i += 2
                elif ch == "'" and after[i + 1 : i + 2] == "'":
                    chars.append("'")
                    i += 2
                elif ch == "'":
                    i += 1
                    break
                else:
                    chars.append(ch)
                    i += 1
            value, rest = "".join(chars), after[i:].lstrip()
        else:
            parts = after.split(None, 1)
            value = parts[0] if parts else ""
            rest = parts[1] if len(parts) > 1 else ""
        out[name.lower()] = value
    return out


# --------------------------------------------------------------------------------------
# auth_file (userlist.txt)
# --------------------------------------------------------------------------------------


def parse_userlist(text: str, path: str) -> dict[str, str]:
    """``"user" "secret"`` per line; lines not starting with a quote are ignored."""
    users: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line.startswith('"'):
            continue
        user, rest = _unquote(line, path, n)
        rest = rest.lstrip()
        if not rest.startswith('"'):
            raise ConfigError(
                path, None, f'expected "user" "secret", the secret of "{user}" is missing', line=n
            )
        secret, _ = _unquote(rest, path, n)
        users[user] = secret
    return users
