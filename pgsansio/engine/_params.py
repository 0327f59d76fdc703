"""Session state a transaction pooler carries from server to server.

A client in transaction mode lands on a different server connection for each
transaction, so whatever it set for its session must follow it there:

- *Reported* parameters (PostgreSQL sends a ParameterStatus when they change): the
  client's view comes from its startup packet and from the ParameterStatus messages
  its own statements caused; on checkout we compare with the server's reported value.
- *Other* settings from the startup packet (JDBC's ``extra_float_digits``,
  ``options=-c statement_timeout=5s``...) and plain session ``SET name = value``
  statements: we remember what the client asked for and what we applied to each
  server, and ``SET``/``RESET`` the difference.

Anything we cannot follow (``SET`` inside a multi-statement query, ``set_config()``,
``SET ROLE``...) is reset with ``RESET ALL`` before the server is reused, as PgCat does.
"""

from __future__ import annotations

import re

__all__ = [
    "TRACKED",
    "canonical_name",
    "parse_options",
    "parse_simple_set",
    "quote_literal",
    "restore_sql",
    "sync_sql",
]

# GUC_REPORT parameters a client may set and a pooler must keep per client.
# (server_version, is_superuser, in_hot_standby... are the server's facts, not the
# client's choice, and are never re-applied.)
TRACKED = (
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "standard_conforming_strings",
    "application_name",
    "search_path",  # reported since PostgreSQL 18
)
_CANONICAL = {name.lower(): name for name in TRACKED}

# GUC names are identifiers, possibly qualified (``myext.setting``); anything else in a
# startup packet is refused rather than pasted into SQL.
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")

# A single plain session SET as drivers and people send it. LOCAL and transaction
# forms are left alone: they end with the transaction.
_SET = re.compile(
    r"""^\s*SET\s+(?:SESSION\s+)?(?!LOCAL\b|SESSION\s+AUTHORIZATION\b|ROLE\b|TRANSACTION\b)
    ([A-Za-z_][A-Za-z0-9_$.]*)\s*(?:=|\bTO\b)\s*(.+?)\s*;?\s*$""",
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)
# The session's default access mode (PgJDBC's setReadOnly with readOnlyMode=always):
# followed as the setting it changes, default_transaction_read_only.
_CHARACTERISTICS = re.compile(
    r"^\s*SET\s+SESSION\s+CHARACTERISTICS\s+AS\s+TRANSACTION\s+READ\s+(ONLY|WRITE)\s*;?\s*$",
    re.IGNORECASE,
)
_RESET = re.compile(r"^\s*RESET\s+([A-Za-z_][A-Za-z0-9_$.]*)\s*;?\s*$", re.IGNORECASE)
_VALUE = re.compile(
    r"""^(?:'(?:[^']|'')*'|[A-Za-z0-9_.+\-]+|"(?:[^"]|"")*")
    (?:\s*,\s*(?:'(?:[^']|'')*'|[A-Za-z0-9_.+\-]+|"(?:[^"]|"")*"))*$""",
    re.VERBOSE,
)


def canonical_name(name: str) -> str:
    """The spelling PostgreSQL reports for a tracked parameter, else the name lowered."""
    return _CANONICAL.get(name.lower(), name.lower())


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def quote_literal(value: str) -> str:
    """A SQL string literal for ``value`` whatever standard_conforming_strings says."""
    if "\\" in value:
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + value.replace("'", "''") + "'"


def param_sql(name: str, value: str) -> str:
    """A reported value as SQL: search_path is a list and is sent as written
    (``"$user", public``), when it is a plain list; everything else is a literal."""
    if name == "search_path" and value and _VALUE.match(value):
        return value
    return quote_literal(value)


def parse_options(options: str) -> dict[str, str]:
    """Read the ``-c name=value`` / ``--name=value`` pairs of a startup ``options``.

    Words are separated by spaces; a backslash makes the next character literal, as
    in PostgreSQL's ``pg_split_opts``.

    Raises:
        ValueError: anything but settings (PostgreSQL's other command-line switches
            would change the server for every later client).
    """
    words: list[str] = []
    word: list[str] = []
    escaped = False
    for ch in options:
        if escaped:
            word.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if word:
                words.append("".join(word))
                word = []
        else:
            word.append(ch)
    if word:
        words.append("".join(word))
    result: dict[str, str] = {}
    i = 0
    while i < len(words):
        w = words[i]
        if w == "-c" and i + 1 < len(words):
            pair = words[i + 1]
            i += 2
        elif (w.startswith("-c") and len(w) > 2) or (w.startswith("--") and "=" in w):
            pair = w[2:]
            i += 1
        else:
            raise ValueError(f"unsupported startup option {w!r} (only -c name=value)")
        name, eq, value = pair.partition("=")
        name = name.replace("-", "_")  # PostgreSQL accepts --work-mem=4MB too
        if not eq or not valid_name(name):
            raise ValueError(f"malformed startup option {pair!r} (expected -c name=value)")
        result[name] = value
    return result


def strip_comments(sql: str) -> str:
    """``sql`` without ``--`` and ``/* */`` comments (ORMs append them to every
    statement: sqlcommenter), leaving quoted text alone."""
    if "--" not in sql and "/*" not in sql:
        return sql
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"":
            end = i + 1
            while end < n:
                if sql[end] == ch:
                    if end + 1 < n and sql[end + 1] == ch:
                        end += 2
                        continue
                    break
                end += 1
            out.append(sql[i : end + 1])
            i = end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            out.append(" ")
        elif sql.startswith("/*", i):
            i = block_comment_end(sql, i)
            out.append(" ")
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def block_comment_end(sql: str, i: int) -> int:
    """Where the ``/* */`` comment starting at ``i`` ends (PostgreSQL's nest)."""
    n = len(sql)
    depth, i = 1, i + 2
    while i < n and depth:
        if sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
        else:
            i += 1
    return i


def parse_simple_set(sql: str) -> tuple[str, str | None] | None:
    """``(name, value_sql)`` for ``SET name = value``, ``(name, None)`` for ``RESET name``.

    ``value_sql`` is the value exactly as written (quotes included), to be replayed as
    ``SET name = <value_sql>``. None when the statement is anything else.
    """
    sql = strip_comments(sql)
    if ";" in sql.rstrip().rstrip(";"):
        return None  # several statements: not followed, the server gets DISCARD ALL
    m = _CHARACTERISTICS.match(sql)
    if m is not None:
        return "default_transaction_read_only", "on" if m.group(1).lower() == "only" else "off"
    m = _SET.match(sql)
    if m is not None:
        value = m.group(2).strip()
        if not _VALUE.match(value):
            return None
        return m.group(1).lower(), value
    m = _RESET.match(sql)
    if m is not None and m.group(1).lower() != "all":
        return m.group(1).lower(), None
    return None


def restore_sql(startup: tuple[dict[str, str], dict[str, str]], name: str | None = None) -> str:
    """The query that puts back what a client's startup packet set (all of it, or just
    ``name``), after a RESET ALL, DISCARD ALL or RESET name of the client reset the
    server to the pooled connection's own startup values; or ``""``."""
    params, settings = startup
    parts = [
        f"SET {n} = {param_sql(n, v)}"
        for n, v in params.items()
        if name is None or n.lower() == name
    ]
    parts += [f"SET {n} = {v}" for n, v in settings.items() if name is None or n == name]
    return ";".join(parts)


def sync_sql(
    want_params: dict[str, str],
    server_params: dict[str, str],
    want_settings: dict[str, str],
    applied: dict[str, str],
) -> str:
    """The one query that makes a server's session match a client's, or ``""``.

    ``want_settings``/``applied`` values are SQL (as the client wrote them);
    ``want_params`` values are plain strings (as ParameterStatus reports them).
    """
    parts = []
    for name, value in want_params.items():
        have = server_params.get(name)
        if have is None or have.lower() != value.lower():
            parts.append(f"SET {name} = {param_sql(name, value)}")
    for name, value_sql in want_settings.items():
        if applied.get(name) != value_sql:
            parts.append(f"SET {name} = {value_sql}")
    for name in applied:
        if name not in want_settings:
            parts.append(f"RESET {name}")
    return ";".join(parts)
