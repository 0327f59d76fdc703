"""The classifier: query text in, :class:`Decision` out, cached by text.

How a text is classified, cheapest step first (each step only runs on a cache miss):

1. One precompiled match on the first keyword. A single statement (no ``;`` before
   trailing whitespace) that starts with INSERT, UPDATE, DELETE or MERGE is a write
   whatever follows, and it cannot begin or end a transaction, so it is decided without
   parsing (0.3 µs instead of 4-5 µs). If the text is not valid SQL it is still a
   write, which is also what the parser path answers. The same match spots PgCat's
   custom commands (``SET SERVER ROLE ...``), which are not SQL.
2. A hint in the leading comments (``/* pgsansio_role: replica */``).
3. ``pglast.parser.parse_sql_json``: libpg_query's tree as JSON text, 10-16x cheaper
   than building pglast's Python AST. A single SELECT whose JSON has no function call,
   locking clause, INTO or data-modifying statement is a read without ``json.loads``;
   otherwise the JSON is loaded and walked (see ``_tree.py``).

Decisions are interned (equal decisions are one object), so the cache holds one
reference per text. A text longer than ``CACHE_TEXT_LIMIT`` characters is classified
but not cached: bulk INSERTs with inline values are unique, and caching them would
keep megabytes of SQL alive.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pglast.parser import parse_sql_json

from ._tree import classify_statements

CACHE_TEXT_LIMIT = 8192  # characters; longer texts are classified every time


@dataclass(frozen=True, slots=True)
class Decision:
    """What the engine needs to know to route one query text.

    ``write``: the text must run on the primary. ``begin``: it starts an explicit
    transaction. ``read_only``: True or False when a BEGIN / START TRANSACTION /
    SET TRANSACTION in it says READ ONLY or READ WRITE (the last one wins), else None.
    ``ends``: it ends a transaction (COMMIT, ROLLBACK, END, ABORT, PREPARE TRANSACTION,
    COMMIT/ROLLBACK PREPARED). ``hint``: "primary" or "replica" from a
    ``pgsansio_role`` comment, reported whatever the classification says. ``command``:
    a PgCat custom command as (name, value); the text is not SQL and must not be sent
    to a server.
    """

    write: bool
    begin: bool = False
    read_only: bool | None = None
    ends: bool = False
    hint: str | None = None
    command: tuple[str, str | None] | None = None


_interned: dict[Decision, Decision] = {}


def _intern(decision: Decision) -> Decision:
    # A small, bounded set: 2*2*3*2*3 flag combinations plus a dozen commands.
    return _interned.setdefault(decision, decision)


READ = _intern(Decision(write=False))
WRITE = _intern(Decision(write=True))

# The one per-miss regex. Group 1: a write keyword; group 2: the start of a PgCat
# custom command (SET/SHOW SERVER ROLE, SET/SHOW PRIMARY READS). \s after the keyword
# keeps identifiers such as "updated_at" or "primary_reads" out.
_LEAD = re.compile(
    r"\s*(?:(insert|update|delete|merge)\s|(?:set|show)\s+(?:server|primary)\s)", re.I | re.A
)

# --- PgCat custom commands ---------------------------------------------------------
# PgCat (src/query_router.rs) matches these case-insensitively with optional leading
# spaces and an optional trailing ";". SET SERVER ROLE wants its value in single quotes;
# SET PRIMARY READS takes it with or without. We also allow any run of whitespace
# between words. None of these is valid SQL, so a near miss is an error to report, not
# a statement to forward.
_COMMAND = re.compile(
    r"\s*(set|show)\s+(server\s+role|primary\s+reads)(.*?)\s*;?\s*\Z", re.I | re.A | re.S
)
_SET_ROLE_VALUE = re.compile(r"\s+to\s+'([a-z]*)'", re.I | re.A)
_SET_READS_VALUE = re.compile(r"\s+to\s+(?:'([a-z]*)'|([a-z]+))", re.I | re.A)
_ROLES = ("primary", "replica", "any", "auto", "default")
_PRIMARY_READS = ("on", "off", "default")
_ROLE_ERROR = (
    "SET SERVER ROLE TO takes one of 'primary', 'replica', 'any', 'auto' or 'default',"
    " in single quotes"
)
_READS_ERROR = "SET PRIMARY READS TO takes one of 'on', 'off' or 'default'"


def _command(match: re.Match[str]) -> Decision:
    verb = match.group(1).lower()
    what = "server_role" if match.group(2)[:1] in "sS" else "primary_reads"
    rest = match.group(3)
    if verb == "show":
        if rest:
            return _intern(
                Decision(
                    write=False,
                    command=("error", f"SHOW {what.replace('_', ' ').upper()} takes no value"),
                )
            )
        return _intern(Decision(write=False, command=("show_" + what, None)))
    if what == "server_role":
        m = _SET_ROLE_VALUE.fullmatch(rest)
        value = m.group(1).lower() if m else ""
        if value not in _ROLES:
            return _intern(Decision(write=False, command=("error", _ROLE_ERROR)))
    else:
        m = _SET_READS_VALUE.fullmatch(rest)
        value = (m.group(1) or m.group(2) or "").lower() if m else ""
        if value not in _PRIMARY_READS:
            return _intern(Decision(write=False, command=("error", _READS_ERROR)))
    return _intern(Decision(write=False, command=("set_" + what, value)))


# --- comment hints ---------------------------------------------------------------------
_HINT = re.compile(r"pgsansio_role\s*:\s*(primary|replica)\b", re.I | re.A)


def _hint(sql: str) -> str | None:
    """The first ``pgsansio_role`` hint in the comments before the first token."""
    i = 0
    n = len(sql)
    while True:
        while i < n and sql[i] in " \t\r\n\f\v":
            i += 1
        if sql.startswith("/*", i):
            # PostgreSQL block comments nest.
            depth = 1
            j = i + 2
            while depth and j < n:
                if sql.startswith("/*", j):
                    depth += 1
                    j += 2
                elif sql.startswith("*/", j):
                    depth -= 1
                    j += 2
                else:
                    j += 1
            if depth:
                return None  # unterminated: the server reports the error
            body = sql[i + 2 : j - 2]
            i = j
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            if j < 0:
                j = n
            body = sql[i + 2 : j]
            i = j
        else:
            return None
        m = _HINT.search(body)
        if m:
            return m.group(1).lower()


# --- the JSON shortcut ----------------------------------------------------------------
# libpg_query's JSON escapes every '"' inside a string value, so these keys (with their
# quotes and colon) can only match real nodes, never text inside a literal.
_SELECT_ONLY = '"stmts":[{"stmt":{"SelectStmt":'
_SELECT_MARKERS = (
    '"FuncCall":',
    '"lockingClause":',
    '"intoClause":',
    '"InsertStmt":',
    '"UpdateStmt":',
    '"DeleteStmt":',
    '"MergeStmt":',
)


def classify_text(sql: str) -> Decision:
    """Classify one query text (uncached). Never raises."""
    m = _LEAD.match(sql)
    if m is not None:
        if m.group(1) is not None:
            semi = sql.find(";")
            if semi < 0 or semi == len(sql) - 1 or sql[semi + 1 :].isspace():
                return WRITE
        else:
            c = _COMMAND.match(sql)
            if c is not None:
                return _command(c)
    hint = None
    if "/" in sql[:1] or sql[:1] == "-" or sql[:1].isspace():
        hint = _hint(sql)
    if "\x00" in sql:
        # Never on the wire (messages are NUL-terminated), but libpg_query would stop
        # at the NUL and classify only the part before it.
        return WRITE if hint is None else _intern(Decision(write=True, hint=hint))
    try:
        js = parse_sql_json(sql)
    except Exception:
        # A syntax error (or text that is not UTF-8 encodable): the primary reports it.
        return WRITE if hint is None else _intern(Decision(write=True, hint=hint))
    if (
        js.find(_SELECT_ONLY) >= 0
        and js.count('"stmt":') == 1
        and not any(marker in js for marker in _SELECT_MARKERS)
    ):
        return READ if hint is None else _intern(Decision(write=False, hint=hint))
    try:
        tree: dict[str, Any] = json.loads(js)
        write, begin, read_only, ends = classify_statements(tree["stmts"])
    except Exception:
        # A tree shape this module does not know: be safe.
        return WRITE if hint is None else _intern(Decision(write=True, hint=hint))
    return _intern(Decision(write, begin, read_only, ends, hint))


class Router:
    """Classifies query texts for read/write splitting, with a bounded LRU cache.

    Args:
        max_length: PgCat's ``query_parser_max_length``: a text longer than this many
            characters is not parsed and counts as a write. 0 means no limit.
        cache_size: how many distinct texts to remember (least recently used are
            dropped first). 0 disables the cache.

    One Router can serve every client of a pool: it holds no per-client state.
    """

    __slots__ = ("_cache_limit", "_cached", "_max_length")

    def __init__(self, max_length: int = 0, cache_size: int = 10_000) -> None:
        if max_length < 0:
            raise ValueError(f"max_length must be 0 (no limit) or positive, not {max_length}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be 0 (no cache) or positive, not {cache_size}")
        self._max_length = max_length
        self._cache_limit = (
            min(max_length, CACHE_TEXT_LIMIT) if max_length and cache_size else CACHE_TEXT_LIMIT
        )
        if cache_size == 0:
            self._cache_limit = -1
        self._cached: Callable[[str], Decision] = lru_cache(maxsize=cache_size)(classify_text)

    def classify(self, sql: str) -> Decision:
        """Classify ``sql`` (the text of one Query or Parse message). Never raises."""
        if len(sql) <= self._cache_limit:
            return self._cached(sql)  # a hit is one C-level dict lookup, no allocation
        if self._max_length and len(sql) > self._max_length:
            return WRITE
        return classify_text(sql)

    def cache_info(self) -> tuple[int, int, int | None, int]:
        """(hits, misses, maxsize, currsize) of the decision cache, for stats and tests."""
        info = self._cached.cache_info()  # type: ignore[attr-defined]
        return (info.hits, info.misses, info.maxsize, info.currsize)
