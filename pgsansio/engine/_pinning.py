"""Pinning: a client in transaction mode keeps its server while it holds session state.

The ``Pinning`` part of the engine (below Sessions; the Context only). A transaction
pooler hands a client a different server for each transaction. State a statement left
in the *session* (not the transaction) stays behind on the old server and is wiped by
``DISCARD ALL`` before the next client gets it; the client later finds its temporary
table, prepared statement, lock or cursor gone, or worse, finds someone else's. PgBouncer
and PgCat let that happen silently; PgDog, Odyssey and Supavisor users report it over and
over. We keep such a client on its server ("pin" it) until the state is provably gone.

What pins (``pin_session_state``, on by default, per pool; off = PgBouncer's behaviour):

- temporary objects: ``CREATE TEMP|TEMPORARY ...``, ``SELECT ... INTO TEMP``, anything
  naming ``pg_temp.`` -- until ``DISCARD TEMP`` / ``DISCARD ALL``. Dropping the table
  does not unpin (we do not track which temporary objects exist).
- SQL ``PREPARE name`` -- until ``DEALLOCATE name`` of every one, or ``DEALLOCATE ALL``.
  (The protocol's named statements are not SQL PREPARE: the relay shares those between
  servers and never pins for them.)
- session advisory locks ``pg_advisory_lock``/``pg_try_advisory_lock`` (and
  ``_shared``), counted -- until as many ``pg_advisory_unlock`` calls in simple queries
  or unnamed statements, or ``pg_advisory_unlock_all()``. Locks taken through a named
  (reused) statement cannot be counted: they stay pinned until ``unlock_all``.
- ``LISTEN channel`` -- until ``UNLISTEN`` of each, or ``UNLISTEN *``.
- ``DECLARE name ... WITH HOLD`` -- until ``CLOSE name`` / ``CLOSE ALL``.
- a session ``SET`` the pooler cannot replay on another server (inside a transaction
  block, among several statements, ``SET ROLE``, ``SET SESSION AUTHORIZATION``, ``SET
  SESSION CHARACTERISTICS``, a value it cannot quote) -- until ``RESET name``, ``RESET
  ALL``, ``RESET ROLE``/``SET ROLE NONE``, ``RESET SESSION AUTHORIZATION`` as fits;
  ``set_config(..., false)`` (or a third argument we cannot read) -- until ``RESET ALL``.
  ``SET`` of a parameter the server reports (TimeZone, DateStyle, application_name...)
  never pins: the pooler follows those everywhere.
- ``DISCARD ALL`` unpins everything.

How it is detected: a cheap scan of every simple Query and Parse text. One pass over
the lowered text for a handful of words answers most queries (``SELECT ... WHERE aid
= $1``) with "nothing here"; only a query naming one of them is read statement by
statement, with string literals and comments blanked out (dollar-quoted bodies are
*kept*, so a ``DO`` block that takes a lock pins). The scan is deliberately
conservative: it pins on sight, before the server has answered (a statement that then
fails keeps the pin), and it unpins only once the whole request has succeeded (an
ErrorResponse forgets the pending unpins). It does not see into functions: a function
that creates a temporary table is not noticed (documented). This is the same scan
whether or not ``query_parser_enabled`` is on: the pglast tree would not see into
functions either, and one detector is easier to reason about than two.

A pinned client keeps its server through every ReadyForQuery ``I`` (Sessions asks
:meth:`Pinning.held`); when it leaves, the server is marked dirty so the pool runs
``DISCARD ALL`` on it before anyone else gets it. A pool whose servers are all pinned
makes waiters fail with the usual connect_timeout error, which then says how many are
pinned (see :meth:`Pinning.pinned_in`).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from ._params import TRACKED, block_comment_end, parse_simple_set

if TYPE_CHECKING:
    from ._context import Context
    from ._listen import Listen
    from ._objects import Client, Pool, ServerConn

__all__ = ["KINDS", "PinState", "Pinning", "inert", "may_pin", "pinned_in"]

# Any statement that might pin or unpin names one of these (case-folded). "set"
# also finds reset/offset/dataset: a false hit only costs the statement-level read.
_WORDS = ("temp", "prepare", "deallocate", "advisory", "listen", "hold", "set", "discard", "close")
_ANY_WORD = re.compile("|".join(_WORDS), re.I)


_SET_STATEMENT = re.compile(r"(?:^|;)[\s(]*(?:re)?set\b")


def _worth_reading(low: str) -> bool:
    """Whether the lowered text may pin or unpin: one of the words, and for "set"
    (also in every UPDATE) a statement that starts with SET/RESET, set_config(), or a
    comment that could hide where a statement starts."""
    if may_pin(low) or "discard" in low or "deallocate" in low:
        return True
    if "set" not in low:
        return False
    if "set_config" in low or "--" in low or "/*" in low:
        return True
    if ";" not in low.rstrip().rstrip(";"):  # one statement: look at its start only
        return low.lstrip(" \t\r\n(").startswith(("set", "reset"))
    return _SET_STATEMENT.search(low) is not None


def inert(sql: str) -> bool:
    """Whether ``sql`` can neither pin nor unpin a session, whoever sends it (then
    it names none of the words, or only "set" in no SET statement)."""
    if sql.isascii():
        return not _worth_reading(sql.lower())
    return _ANY_WORD.search(sql) is None


def may_pin(low: str) -> bool:
    """For the relay, which has already looked for set/discard/deallocate in the
    lowered text: whether one of the other words is there (the hot path's test)."""
    return (
        "temp" in low
        or "prepare" in low
        or "advisory" in low
        or "listen" in low
        or "hold" in low
        or "close" in low
    )


_IDENT = r'("(?:[^"]|"")+"|[A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*)'
_CREATE_TEMP = re.compile(
    r"^create\s+(?:or\s+replace\s+)?(?:(?:global|local)\s+)?(?:temp|temporary)\b", re.I
)
_INTO_TEMP = re.compile(r"\binto\s+(?:temp|temporary)\b", re.I)
_PG_TEMP = re.compile(r"\bpg_temp(?:_\d+)?\s*\.", re.I)
_PREPARE = re.compile(r"^prepare\s+(?!transaction\b)" + _IDENT, re.I)
_DEALLOCATE = re.compile(r"^deallocate\s+(?:prepare\s+)?" + _IDENT, re.I)
_LISTEN = re.compile(r"^listen\s+" + _IDENT, re.I)
_UNLISTEN = re.compile(r"^unlisten\s+(\*|" + _IDENT[1:], re.I)
_DECLARE = re.compile(r"^declare\s+" + _IDENT, re.I)
_WITH_HOLD = re.compile(r"\bwith\s+hold\b", re.I)
_CLOSE = re.compile(r"^close\s+" + _IDENT, re.I)
_DISCARD = re.compile(r"^discard\s+(all|temp|temporary|plans|sequences)\b", re.I)
_LOCK = re.compile(r"\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\(", re.I)
_UNLOCK = re.compile(r"\bpg_advisory_unlock(?:_shared)?\s*\(", re.I)
_UNLOCK_ALL = re.compile(r"\bpg_advisory_unlock_all\s*\(", re.I)
_SET_CONFIG = re.compile(r"\bset_config\s*\(", re.I)
_SET = re.compile(r"^set\s+(?:session\s+)?(?!local\b)" + _IDENT, re.I)
_RESET = re.compile(r"^reset\s+" + _IDENT, re.I)
_SET_ROLE_OFF = re.compile(r"^set\s+(?:session\s+)?role\s+none\b", re.I)
_SET_AUTH_OFF = re.compile(r"^set\s+(?:session\s+)?session\s+authorization\s+default\b", re.I)
# Statements that add or remove one named thing: first word -> (pattern, sign, kind).
_NAMED: dict[str, tuple[re.Pattern[str], str, str]] = {
    "prepare": (_PREPARE, "+", "prepare"),
    "deallocate": (_DEALLOCATE, "-", "prepare"),
    "listen": (_LISTEN, "+", "listen"),
    "unlisten": (_UNLISTEN, "-", "listen"),
    "declare": (_DECLARE, "+", "hold_cursor"),
    "close": (_CLOSE, "-", "hold_cursor"),
}
# SET forms that end with the transaction, and reported parameters (followed through
# ParameterStatus; TIME ZONE and NAMES are the SQL spellings of two of them).
_TRANSACTION_SETS = frozenset({"local", "transaction", "constraints"})
# search_path is reported only since PostgreSQL 18: not followed inside a transaction.
_FOLLOWED = frozenset(n.lower() for n in TRACKED if n != "search_path") | {"time", "names"}

# Kinds of state, as SHOW CLIENTS and /metrics name them.
TEMP = "temp"
PREPARE = "prepare"
LOCK = "advisory_lock"
LISTEN = "listen"
CURSOR = "hold_cursor"
SET = "set"
KINDS = (TEMP, PREPARE, LOCK, LISTEN, CURSOR, SET)


def _name(raw: str) -> str:
    if raw.startswith('"'):
        return raw[1:-1].replace('""', '"')
    return raw.lower()


def _statements(sql: str) -> list[str]:
    """``sql`` split into statements, with string literals and comments blanked.

    Dollar-quoted text is kept as code (a DO block's body is what runs) and split too;
    a fragment of one then reads as a statement of its own, which only ever pins more.
    """
    out: list[str] = []
    buf: list[str] = []
    i, n = 0, len(sql)
    start = 0
    while i < n:
        ch = sql[i]
        if ch == "'":
            buf.append(sql[start:i])
            end = i + 1
            while end < n:
                if sql[end] == "'":
                    if end + 1 < n and sql[end + 1] == "'":
                        end += 2
                        continue
                    break
                end += 1
            buf.append("''")
            i = start = end + 1
        elif ch == '"':
            end = sql.find('"', i + 1)
            while end >= 0 and sql.startswith('""', end):
                end = sql.find('"', end + 2)
            i = n if end < 0 else end + 1
        elif sql.startswith("--", i):
            buf.append(sql[start:i])
            end = sql.find("\n", i)
            i = start = n if end < 0 else end
            buf.append(" ")
        elif sql.startswith("/*", i):
            buf.append(sql[start:i])
            i = start = block_comment_end(sql, i)
            buf.append(" ")
        elif ch == ";":
            buf.append(sql[start:i])
            out.append("".join(buf).strip())
            buf = []
            i = start = i + 1
        else:
            i += 1
    buf.append(sql[start:])
    out.append("".join(buf).strip())
    return [s.lstrip("( \t\r\n") for s in out if s]


def _set_config_local(stmt: str, at: int) -> bool:
    """Whether the set_config call whose ``(`` is at ``at`` says is_local = true."""
    depth = 0
    args: list[str] = []
    arg_start = at + 1
    for j in range(at, len(stmt)):
        ch = stmt[j]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append(stmt[arg_start:j])
                break
        elif ch == "," and depth == 1:
            args.append(stmt[arg_start:j])
            arg_start = j + 1
    else:
        return False
    return len(args) == 3 and args[2].strip().lower() in ("true", "on")


# One step of what a request does to the session: (+ or -, kind, name). "-" with an
# empty name removes all of that kind; kind "all" is DISCARD ALL.
Op = tuple[str, str, str]


def _ops(stmt: str, *, followed: bool, reused: bool) -> list[Op]:
    """What one statement (blanked by _statements) does to the session's state."""
    ops: list[Op] = []
    low = stmt.lower()
    if _CREATE_TEMP.match(stmt) or _INTO_TEMP.search(stmt) or _PG_TEMP.search(stmt):
        ops.append(("+", TEMP, ""))
    # Unpinning through a reused (named) statement is not trusted: it may be parsed
    # now and run much later, or never.
    undo = not reused
    m: re.Match[str] | None
    word = low.split(None, 1)[0] if low else ""
    named = _NAMED.get(word)
    if named is not None:
        pattern, sign, kind = named
        m = pattern.match(stmt)
        holds = word != "declare" or _WITH_HOLD.search(stmt) is not None
        if m is not None and (sign == "+" or undo) and holds:
            name = m.group(1)
            everything = name == "*" or name.lower() == "all"
            ops.append((sign, kind, "" if everything and sign == "-" else _name(name)))
    elif low.startswith("discard"):
        m = _DISCARD.match(stmt)
        if m is not None and undo:
            what = m.group(1).lower()
            if what == "all":
                ops.append(("-", "all", ""))
            elif what.startswith("temp"):
                ops.append(("-", TEMP, ""))
    elif low.startswith("set"):
        ops.extend(_set_ops(stmt, followed=followed, undo=undo))
    elif low.startswith("reset"):
        m = _RESET.match(stmt)
        if m is not None and undo:
            name = _name(m.group(1))
            ops.append(("-", SET, "session authorization" if name == "session" else name))
    if "advisory" in low:
        for _ in _LOCK.finditer(stmt):
            ops.append(("+", LOCK, "reused" if reused else ""))
        if undo:
            if _UNLOCK_ALL.search(stmt):
                ops.append(("-", LOCK, ""))
            else:
                for _ in _UNLOCK.finditer(stmt):
                    ops.append(("-", LOCK, "1"))
    if "set_config" in low:
        for m in _SET_CONFIG.finditer(stmt):
            if not _set_config_local(stmt, m.end() - 1):
                ops.append(("+", SET, "set_config()"))
    return ops


def _set_ops(stmt: str, *, followed: bool, undo: bool) -> list[Op]:
    m = _SET.match(stmt)
    if m is None:
        return []
    name = _name(m.group(1))
    if name in _TRANSACTION_SETS or name in _FOLLOWED:
        return []
    if name in ("authorization", "characteristics"):
        name = "session " + name
        if _SET_AUTH_OFF.match(stmt):
            return [("-", SET, name)] if undo else []
        if followed and parse_simple_set(stmt) is not None:
            return []  # READ ONLY / READ WRITE: followed as default_transaction_read_only
    elif name == "role":
        if _SET_ROLE_OFF.match(stmt):
            return [("-", SET, name)] if undo else []
    elif followed and parse_simple_set(stmt) is not None:
        return []  # the pooler replays this one on every server it links
    return [("+", SET, name)]


class PinState:
    """What session state one client holds on its server (see the module docstring)."""

    __slots__ = (
        "cursors",
        "listens",
        "locks",
        "locks_exact",
        "pending",
        "pinning",
        "prepared",
        "sets",
        "temp",
    )

    def __init__(self) -> None:
        self.temp = False
        self.prepared: set[str] = set()
        self.locks = 0
        self.locks_exact = True  # False: a lock through a reused statement; only unlock_all
        self.listens: set[str] = set()
        self.cursors: set[str] = set()
        self.sets: set[str] = set()
        # What the requests sent since the last ReadyForQuery I do, in order: applied
        # once they succeeded; after an error only their "+" steps are.
        self.pending: list[Op] = []
        self.pinning = 0  # "+" steps in pending: pinned already, before the answer

    @property
    def pinned(self) -> bool:
        return bool(
            self.pinning
            or self.temp
            or self.prepared
            or self.locks
            or self.listens
            or self.cursors
            or self.sets
        )

    def kinds(self) -> list[str]:
        """The kinds of state held, in KINDS order."""
        held = (self.temp, self.prepared, self.locks, self.listens, self.cursors, self.sets)
        return [kind for kind, h in zip(KINDS, held, strict=True) if h]

    def describe(self) -> str:
        """Why the client is pinned, for SHOW CLIENTS and the log."""
        parts = []
        if self.temp:
            parts.append("temporary table")
        if self.prepared:
            parts.append("PREPARE " + ", ".join(sorted(self.prepared)))
        if self.locks:
            parts.append(f"advisory lock x{self.locks}" if self.locks_exact else "advisory lock")
        if self.listens:
            parts.append("LISTEN " + ", ".join(sorted(self.listens)))
        if self.cursors:
            parts.append("WITH HOLD cursor " + ", ".join(sorted(self.cursors)))
        if self.sets:
            parts.append("SET " + ", ".join(sorted(self.sets)))
        return "; ".join(parts)

    def settle(self, *, succeeded: bool) -> None:
        """Apply the pending steps (all of them, or only the pins after an error)."""
        for sign, kind, name in self.pending:
            if sign == "+":
                self._add(kind, name)
            elif succeeded:
                self._remove(kind, name)
        self.pending.clear()
        self.pinning = 0

    def _add(self, kind: str, name: str) -> None:
        if kind == TEMP:
            self.temp = True
        elif kind == PREPARE:
            self.prepared.add(name)
        elif kind == LOCK:
            self.locks += 1
            if name:
                self.locks_exact = False
        elif kind == LISTEN:
            self.listens.add(name)
        elif kind == CURSOR:
            self.cursors.add(name)
        else:
            self.sets.add(name)

    def _remove(self, kind: str, name: str) -> None:
        if kind == "all":
            self.temp = False
            self.locks = 0
            self.locks_exact = True
            for held in (self.prepared, self.listens, self.cursors, self.sets):
                held.clear()
            return
        if kind == TEMP:
            self.temp = False
        elif kind == LOCK:
            if not name:
                self.locks = 0
                self.locks_exact = True
            elif self.locks_exact and self.locks:
                self.locks -= 1
        elif kind == SET and name == "all":
            # RESET ALL leaves the role and the session authorization alone.
            self.sets = {x for x in self.sets if x in ("role", "session authorization")}
        else:
            held = {PREPARE: self.prepared, LISTEN: self.listens, CURSOR: self.cursors}.get(
                kind, self.sets
            )
            if name:
                held.discard(name)
            else:
                held.clear()


class Pinning:
    """Keeps each client's PinState on ``Client.pin``; see the module docstring."""

    def __init__(self, ctx: Context, *, listen: Listen) -> None:
        self.ctx = ctx
        self.listen = listen
        self.pinnings = 0  # clients pinned since start (for /metrics)

    def watching(self, c: Client) -> bool:
        return (
            c.user is not None
            and c.group is not None
            and c.user.pool_mode == "transaction"
            and c.group.cfg.pin_session_state
        )

    def query(
        self, c: Client, s: ServerConn, sql: str, *, simple: bool = True, reused: bool = False
    ) -> None:
        """Note what ``sql`` does to the session: a simple Query, or a Parse
        (``simple`` False; ``reused`` if it is named). Pins ``c`` to ``s`` at once if
        it creates state; what removes state counts once the request has succeeded."""
        if inert(sql):
            return  # the common query: nothing here
        if not self.watching(c):
            return
        statements = _statements(sql)
        followed = simple and len(statements) == 1 and s.conn.transaction_status == "I"
        ops: list[Op] = []
        for stmt in statements:
            ops.extend(_ops(stmt, followed=followed, reused=reused))
        if c.listens is not None or any(kind == LISTEN for _, kind, _ in ops):
            ops = self._fan_out(c, ops, reused=reused)
        if not ops:
            return
        st = c.pin
        if st is None:
            if all(sign == "-" for sign, _, _ in ops):
                return  # nothing held, nothing to remove
            st = c.pin = PinState()
        was = st.pinned
        st.pending.extend(ops)
        st.pinning += sum(1 for sign, _, _ in ops if sign == "+")
        if st.pinned:
            s.dirty = True  # whatever happens next, no one else gets this session as is
            if not was:
                self.pinnings += 1
                why = "; ".join(sorted({f"{kind} {name}".strip() for _, kind, name in ops}))
                self.ctx.log(
                    logging.INFO,
                    f'client {c.cid} ("{c.username}" to "{c.database}") pinned to server '
                    f"{self.ctx.where(s)}: it created session state ({why}); it keeps this "
                    "server until that state is gone or it disconnects",
                )

    def _fan_out(self, c: Client, ops: list[Op], *, reused: bool) -> list[Op]:
        """LISTEN/UNLISTEN (and DISCARD ALL's UNLISTEN *) go to the pool's listener
        when it serves ``c`` (see _listen); what is left may pin."""
        if not self.listen.fans_out(c):
            return ops
        for sign, kind, name in ops:
            if kind == LISTEN:
                if sign == "+":
                    self.listen.listen(c, name)
                else:
                    self.listen.unlisten(c, name or None)
            elif kind == "all" and not reused:
                self.listen.unlisten(c, None)
        return [op for op in ops if op[1] != LISTEN]

    def failed(self, c: Client) -> None:
        """An error reached ``c``: what it sent may not have run; keep every pin."""
        st = c.pin
        if st is not None and st.pending:
            st.settle(succeeded=False)

    def held(self, c: Client, s: ServerConn) -> bool:
        """At ReadyForQuery ``I``: apply what succeeded; True while ``c`` must keep ``s``."""
        st = c.pin
        if st is None:
            return False
        if st.pending:
            st.settle(succeeded=True)
            if not st.pinned:
                self.ctx.log(
                    logging.INFO,
                    f"client {c.cid} unpinned from server {self.ctx.where(s)}: its session "
                    "state is gone; it shares the pool again",
                )
        if st.pinned:
            return True
        c.pin = None
        return False


def pinned_in(pool: Pool) -> int:
    """How many of ``pool``'s servers are held by pinned clients (for the error a
    waiter gets when none became free)."""
    n = 0
    for s in pool.servers:
        c = s.client
        if c is not None and c.pin is not None and c.pin.pinned:
            n += 1
    return n
