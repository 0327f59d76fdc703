"""The classifier: query text in, :class:`Decision` out, cached by text.

How a text is classified, cheapest step first (each step only runs on a cache miss):

1. One precompiled match on the first keyword. A single statement (no ``;`` before
   trailing whitespace) that starts with INSERT, UPDATE, DELETE or MERGE is a write
   whatever follows, and it cannot begin or end a transaction, so it is decided without
   parsing (0.3 µs against 8-18 µs for parse + json.loads + walk, measured on a loaded
   2-core machine). If the text is not valid SQL it is still a write, which is also
   what the parser path answers. The same match spots PgCat's custom commands
   (``SET SERVER ROLE ...``), which are not SQL.
2. A hint in the leading comments (``/* pgsansio_role: replica */``).
3. ``pglast.parser.parse_sql_json``: libpg_query's tree as JSON text, 10-16x cheaper
   than building pglast's Python AST. A single SELECT is judged on the JSON text with a
   few substring scans (see ``_select_writes_from_json``); anything else is loaded with
   ``json.loads`` and walked (see ``_tree.py``).

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

try:
    from pglast.parser import parse_sql_json
except ImportError as exc:
    raise ImportError(
        "read/write splitting and automatic_sharding_key (pgsansio.routing) need the pglast"
        " package, which is not installed: install it with pip install pglast (pgsansio's"
        " 'routing' extra)"
    ) from exc

from ._functions import READ_SAFE_FUNCTIONS
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
            while depth:
                close = sql.find("*/", j)
                if close < 0:
                    return None  # unterminated: the server reports the error
                opening = sql.find("/*", j, close)
                if opening >= 0:
                    depth += 1
                    j = opening + 2
                else:
                    depth -= 1
                    j = close + 2
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
# libpg_query's JSON escapes every '"' inside a string value, so a pattern that starts
# with '"' and has another '"' before its colon can only match a key: a node type or a
# field name, never text from a literal or an identifier. That lets one SELECT be
# judged on the JSON text with a few C-speed scans instead of json.loads and a walk
# (2-3x cheaper overall: a 160-byte SELECT costs 13 us instead of 30-40). It answers
# exactly what _tree.query_writes would (a differential test checks it), or None to
# let the walk decide.
_ONE_SELECT = '"stmts":[{"stmt":{"SelectStmt":'
_NAME = r'\{"String":\{"sval":"((?:[^"\\]|\\.)*)"\}\}'
# The first one or two parts of a function name; group 2 is None for a longer name.
_FUNC_NAME = re.compile(rf'"FuncCall":\{{"funcname":\[{_NAME}(\]|,{_NAME}\])?')


def _select_writes_from_json(js: str, sql: str) -> bool | None:
    if js.find(_ONE_SELECT) < 0:
        return None  # the first statement is not a SELECT
    if sql.find(";") >= 0 and js.count('"stmt":') != 1:
        return None  # several statements (scanning the SQL is ~9x cheaper than the JSON)
    if '"lockingClause":' in js or '"intoClause":' in js:
        return True
    if js.count('Stmt":') != js.count('"SelectStmt":'):
        return None  # a data-modifying CTE, or a node this shortcut does not know
    calls = js.count('"FuncCall":')
    if calls:
        for m in _FUNC_NAME.finditer(js):
            calls -= 1
            second = m.group(3)
            if m.group(2) is None:
                return True  # catalog.schema.function: not a built-in
            if second is None:
                if m.group(1) not in READ_SAFE_FUNCTIONS:
                    return True
            elif m.group(1) != "pg_catalog" or second not in READ_SAFE_FUNCTIONS:
                return True
        if calls:
            return None  # a FuncCall the pattern did not read: let the walk see it
    return False


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
    first = sql[:1]
    if first in ("/", "-") or first.isspace():
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
    shortcut = _select_writes_from_json(js, sql)
    if shortcut is not None:
        if hint is None:
            return WRITE if shortcut else READ
        return _intern(Decision(write=shortcut, hint=hint))
    try:
        tree: dict[str, Any] = json.loads(js)
        write, begin, read_only, ends = classify_statements(tree["stmts"])
    except Exception:
        # A tree shape this module does not know: be safe.
        return WRITE if hint is None else _intern(Decision(write=True, hint=hint))
    return _intern(Decision(write, begin, read_only, ends, hint))


def cache_limit(max_length: int, cache_size: int) -> int:
    """The longest text that goes through a cache of ``cache_size`` texts (-1: none)
    when texts over ``max_length`` characters (0: no limit) are not read. Raises
    ValueError for a negative size."""
    if max_length < 0:
        raise ValueError(f"max_length must be 0 (no limit) or positive, not {max_length}")
    if cache_size < 0:
        raise ValueError(f"cache_size must be 0 (no cache) or positive, not {cache_size}")
    if cache_size == 0:
        return -1
    return min(max_length, CACHE_TEXT_LIMIT) if max_length else CACHE_TEXT_LIMIT


def cache_info(cached: Callable[[str], object]) -> tuple[int, int, int | None, int]:
    """(hits, misses, maxsize, currsize) of an ``lru_cache``, for stats and tests."""
    info = cached.cache_info()  # type: ignore[attr-defined]
    return (info.hits, info.misses, info.maxsize, info.currsize)


class Router:
    """Classifies query texts for read/write splitting, with a bounded LRU cache.

    Args:
        max_length: PgCat's ``query_parser_max_length``: a text longer than this many
            characters is not parsed and counts as a write. 0 means no limit. (PgCat
            compares the message's length in bytes, five more than an ASCII text.)
        cache_size: how many distinct texts to remember (least recently used are
            dropped first). 0 disables the cache.

    One Router can serve every client of a pool: it holds no per-client state.
    """

    __slots__ = ("_cache_limit", "_cached", "_max_length")

    def __init__(self, max_length: int = 0, cache_size: int = 10_000) -> None:
        # Texts up to _cache_limit characters go through the cache; a text over
        # max_length never does (it is a write without being looked at).
        self._cache_limit = cache_limit(max_length, cache_size)
        self._max_length = max_length
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
        return cache_info(self._cached)
