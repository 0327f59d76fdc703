"""Read-only transactions on replicas: which transactions may run on a standby.

Used by Routes (the role a client's requests need) when a pool splits reads from
writes (``query_parser_read_write_splitting``). A transaction declared read-only may
run on a replica; PgCat and PgBouncer send every transaction that starts with a plain
``BEGIN`` to the primary, because what follows is not known yet. Drivers and ORMs open
a transaction before every statement (psycopg, SQLAlchemy and Django by default), so
for them read scaling did nothing. What we do:

- ``BEGIN READ ONLY`` / ``START TRANSACTION READ ONLY`` (PgJDBC's ``setReadOnly(true)``
  with autocommit off sends the former; psycopg's ``read_only = True`` too): a replica.
- **Holding a plain BEGIN.** With ``begin_routing = "declared"`` (the default) or
  ``"first_statement"``, a plain ``BEGIN`` / ``START TRANSACTION`` that arrives alone
  (psycopg sends it so) while the client has no server is answered by the pooler
  itself (``BEGIN``, ReadyForQuery ``T``) and sent later, in front of the
  transaction's first statement, on the server that statement is routed to. A
  ``COMMIT``/``ROLLBACK`` with nothing in between is answered by the pooler too. The
  first statement decides:

  - ``SET TRANSACTION READ ONLY`` (or ``... READ WRITE``): a replica (the primary);
  - ``"first_statement"`` only (PgDog's "aggressive" strategy, off by default): a read
    sends the transaction to a replica. **Failure mode:** a write later in that
    transaction fails on the replica with PostgreSQL's 25006 ("cannot execute ... in a
    read-only transaction"); use it only where read transactions do not turn into
    writes;
  - anything else: the primary, as before.

  ``begin_routing = "primary"`` restores PgCat's behaviour (no holding).
- **Read-only sessions.** ``SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY``
  (PgJDBC's ``setReadOnly(true)`` with ``readOnlyMode=always``) is followed as the
  setting it is, ``default_transaction_read_only = on``, like ``SET
  default_transaction_read_only = on`` or the same in the startup packet: every
  transaction of such a client counts as declared read-only (unless it says ``READ
  WRITE``), so its plain ``BEGIN`` goes to a replica.

A held BEGIN is only held in pools that have a replica to route to.

Read-your-writes (``read_your_writes``; the routing is in :mod:`._routing`, the query
in :mod:`._sessions`): :func:`take_lsn_answer` takes the answer to the pooler's
WAL-position query off the head of a server's answers, for the relay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgsansio.protocol import CommandComplete, ErrorResponse, ReadyForQuery, Span

from ._states import S_CLOSED

if TYPE_CHECKING:
    from collections.abc import Callable

    from pgsansio.routing import Decision

    from ._context import Context
    from ._objects import Client, Entry, ServerConn

__all__ = ["Begins", "held_transaction_write", "session_read_only", "take_lsn_answer"]

BEGIN_ROUTINGS = ("declared", "first_statement", "primary")
_TRUE = frozenset({"on", "true", "yes", "1", "t", "y", "tr", "tru", "ye"})


def session_read_only(c: Client) -> bool:
    """Whether ``c``'s session makes its transactions read-only by default."""
    value = c.settings.get("default_transaction_read_only")
    if value is None:
        return False
    return value.strip().strip("'\"").lower() in _TRUE


def held_transaction_write(strategy: str, d: Decision, read_only_session: bool) -> bool:
    """For a transaction whose BEGIN was held: whether it needs the primary, decided
    by its first statement ``d`` (see the module docstring)."""
    if d.read_only is not None:
        return not d.read_only  # SET TRANSACTION READ ONLY / READ WRITE
    if read_only_session:
        return False
    return not (strategy == "first_statement" and not d.write and not d.begin)


def _single(sql: str) -> bool:
    return ";" not in sql.strip().rstrip(";")


class Begins:
    """Holds a client's plain BEGIN (``Client.held_begin``) until its first statement."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def query(self, c: Client, sql: str, d: Decision) -> bool:
        """A lone Query ``sql`` from ``c`` (classified as ``d``): True if answered here."""
        group = c.group
        if (
            c.server is not None
            or c.pending
            or group is None
            or c.user is None
            or c.user.pool_mode != "transaction"
            or not group.cfg.query_parser_read_write_splitting
        ):
            return False
        if c.held_begin is None:
            if (
                group.cfg.begin_routing == "primary"
                or not d.begin
                or d.ends
                or d.read_only is not None
                or d.hint is not None
                or not _single(sql)
                or not all(len(shard) > 1 for shard in group.pools)
            ):
                return False
            c.held_begin = sql
            word = sql.split(None, 1)[0].lower() if sql.strip() else ""
            self.ctx.send_client(
                c, CommandComplete("START TRANSACTION" if word == "start" else "BEGIN")
            )
            self.ctx.send_client(c, ReadyForQuery("T"))
            return True
        if d.ends and not d.begin and _single(sql):
            # COMMIT/ROLLBACK of a transaction that ran nothing: no server needed.
            c.held_begin = None
            word = sql.split(None, 1)[0].lower()
            self.ctx.send_client(
                c, CommandComplete("ROLLBACK" if word in ("rollback", "abort") else "COMMIT")
            )
            self.ctx.send_client(c, ReadyForQuery("I"))
            return True
        return False


def take_lsn_answer(
    s: ServerConn, span: Span, done: Callable[[ServerConn, Entry], None]
) -> Span | None:
    """The answer to our WAL-position query (``s.queue[0]``) at the head of ``span``,
    however the reads cut it: its row (undecoded in spans, so walked here) is taken
    and never forwarded; ``done`` is told when it is complete. Returns the rest of
    ``span``, if any (the client's answers that follow)."""
    q = s.queue
    entry = q[0]
    data = span.data
    events = span.events
    offsets = span.offsets
    pos, k, n = 0, 0, len(data)
    while pos < n:
        end = pos + 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")
        if k < len(events) and offsets[k] == pos:
            e = events[k]
            k += 1
            if type(e) is ErrorResponse:
                entry.error = e
            elif type(e) is ReadyForQuery:
                q.popleft()
                pos = end
                done(s, entry)
                break
        elif data[pos : pos + 1] == b"D" and entry.value is None:
            entry.value = _first_value(data, pos, end)
        pos = end
    if pos >= n or s.state is S_CLOSED:
        return None
    return Span(data[pos:], events[k:], [o - pos for o in offsets[k:]])


def _first_value(data: bytes, start: int, end: int) -> str | None:
    """The first column of the DataRow in ``data[start:end]``."""
    if end - start < 11:
        return None
    size = int.from_bytes(data[start + 7 : start + 11], "big", signed=True)
    if size < 0 or start + 11 + size > end:
        return None
    return bytes(data[start + 11 : start + 11 + size]).decode("ascii", "replace")
