"""Prepared statements shared between clients (transaction mode).

The ``Statements`` part of the engine, below the Relay, which calls it for every
named Parse, Bind, Describe and Close. PgCat's ``prepared_statements`` and
PgBouncer's ``max_prepared_statements``, with the same idea:

- A client's named statement is renamed ``PGSANSIO_<n>``, one name per distinct
  (query text, parameter types), shared by every client that prepares the same text;
  a server prepares it once and keeps at most ``prepared_statements_cache_size``
  (least recently used first out, closed with a silent Close).
- Before a Bind or Describe reaches a server that lacks the statement, a silent Parse
  goes first; its answer is swallowed.
- A statement the client never prepared is sent under a name no server has, so the
  server answers 26000 exactly as a direct connection would (the error also skips to
  Sync and aborts a transaction); the client's own name goes back in the message.
- A client's Close of a shared statement is answered by us (CloseComplete in its
  place in the answer stream); the server keeps the statement for others.
- Session mode does none of this: the client's names go to the server as they are.
- A client's names change when its request is sent, as if it will succeed; an error
  that makes the server skip the request puts them back (undo). What the client
  pipelines after the Sync of a pipeline that renamed waits until that pipeline is
  answered (Relay._hold): read on the first guess, a ``Parse b`` after a skipped
  ``Close b`` was answered ParseComplete where PostgreSQL says 42P05. It costs a
  driver that pipelines past a new statement one round trip, once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgsansio.protocol import Close, CloseComplete, Event, Parse, ParseComplete

from ._effects import SendClient
from ._objects import (
    FAKE,
    FWD,
    K_CLOSE,
    K_PARSE,
    SKIP,
    Binding,
    Client,
    Entry,
    Prepared,
    ServerConn,
)

__all__ = ["STATEMENT_PREFIX", "Statements"]

STATEMENT_PREFIX = "PGSANSIO_"

if TYPE_CHECKING:
    from ._context import Context


class Statements:
    """Owns the registry of shared statements."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._by_key: dict[tuple[str, tuple[int, ...]], Prepared] = {}
        self._counter = 0

    def alias(self, c: Client, name: str) -> str:
        """A name no server has, standing for a statement the client never prepared:
        the server then answers 26000 exactly as for a direct connection (the error
        skips to Sync and aborts a transaction), and we put the client's name back."""
        if len(c.aliases) > 64:
            c.aliases.clear()
        self._counter += 1
        alias = f"{STATEMENT_PREFIX}U{self._counter}"
        c.aliases[alias] = name
        return alias

    def client_parse(self, c: Client, s: ServerConn, e: Parse) -> list[Event | bytes]:
        key = (e.query, e.param_types)
        old = c.prepared.get(e.name)
        if old is not None:
            # "already exists" (42P05), from the server itself: Parse again a statement
            # that is prepared there. The failed Parse leaves the old one in place.
            new = self.ensure(s, old)
            entry = Entry(K_PARSE, FWD)
            entry.binding = (e.name, old, old)  # whose name the server's error is about
            s.queue.append(entry)
            new.append(Parse(old.name, e.query, e.param_types))
            return new
        p = self._by_key.get(key)
        if p is None:
            self._counter += 1
            name = f"{STATEMENT_PREFIX}{self._counter}"
            p = Prepared(key, name, Parse(name, e.query, e.param_types))
            self._by_key[key] = p
        p.refs += 1
        c.prepared[e.name] = p
        # The name is the client's from now on, as the server will see it; if the
        # server skips or refuses this Parse, undo() forgets it again.
        binding: Binding = (e.name, None, p)
        if p.name in s.prepared:
            s.prepared.move_to_end(p.name)
            self.fake(c, s, K_PARSE, ParseComplete(), binding)
            return []
        new = self.register(c, s, p)
        entry = Entry(K_PARSE, FWD, name=p.name)
        entry.binding = binding
        s.queue.append(entry)
        new.append(p.parse)
        return new

    def client_close(self, c: Client, s: ServerConn, name: str) -> None:
        """A client's Close of its statement ``name``: answered by us (the shared
        statement stays on the server for others); undone if the server would have
        skipped it (an earlier error in the same pipeline)."""
        p = c.prepared.pop(name, None)
        if p is not None:
            self.unref(p)
        self.fake(c, s, K_CLOSE, CloseComplete(), None if p is None else (name, p, None))

    def undo(self, c: Client, bindings: list[Binding]) -> None:
        """Requests the server skipped or refused (a failed Parse, or anything after
        an error up to Sync), latest first: the client's names mean again what they
        meant before, as they would on a direct connection."""
        for name, before, after in bindings:
            if before is after or c.prepared.get(name) is not after:
                continue  # a later request (DEALLOCATE ALL) changed it meanwhile
            if after is not None:
                del c.prepared[name]
                self.unref(after)
            if before is not None:
                c.prepared[name] = before
                before.refs += 1
                self._by_key.setdefault(before.key, before)

    def ensure(self, s: ServerConn, p: Prepared) -> list[Event | bytes]:
        """Messages to send first so that ``p`` exists on ``s`` (a silent re-Parse)."""
        if p.name in s.prepared:
            s.prepared.move_to_end(p.name)
            return []
        assert s.client is not None
        new = self.register(s.client, s, p)
        s.queue.append(Entry(K_PARSE, SKIP, name=p.name))
        new.append(p.parse)
        return new

    def register(self, c: Client, s: ServerConn, p: Prepared) -> list[Event | bytes]:
        """Note ``p`` as prepared on ``s``, evicting the least recently used one."""
        s.prepared[p.name] = None
        c.stats.server_parse_count += 1
        new: list[Event | bytes] = []
        limit = self.cache_size(c)
        while len(s.prepared) > limit:
            victim, _ = s.prepared.popitem(last=False)
            s.queue.append(Entry(K_CLOSE, SKIP, name=victim))
            new.append(Close("S", victim))
        return new

    def unref(self, p: Prepared) -> None:
        p.refs -= 1
        if p.refs <= 0 and self._by_key.get(p.key) is p:
            # Servers keep it until their LRU evicts it; a new client preparing the
            # same text gets a new name, which is harmless.
            del self._by_key[p.key]

    def fake(
        self, c: Client, s: ServerConn, kind: int, event: Event, binding: Binding | None = None
    ) -> None:
        if s.queue:
            entry = Entry(kind, FAKE, fake=event)
            entry.binding = binding
            s.queue.append(entry)
        else:
            self.ctx.out.append(SendClient(c.cid, c.conn.send(event)))

    def cache_size(self, c: Client) -> int:
        if c.group is None or c.user is None or c.user.pool_mode != "transaction":
            return 0
        return c.group.cfg.prepared_statements_cache_size
