"""Bounded memory: long messages streamed, caps on what is held whole.

The ``Buffers`` part of the engine. The protocol core frames whole messages, so a
message used to be held in full before it was forwarded: twenty clients each sending
half of a 50 MB query made the pooler hold a gigabyte, where PgBouncer streams such a
message to the server and holds a few kilobytes. Now:

* a Query or CopyData of :data:`STREAM_MIN` bytes or more from a logged-in client (on
  a pool without the query parser and with one shard: routing needs the whole text)
  is handed out by the core in pieces (``Connection.stream_min``) and the relay
  forwards each as it arrives; while it waits for a server the client is not read
  (``_relay.client_span``), so nothing piles up. The server is reset before its next
  client (its text was never seen whole);
* what is still held whole is capped, with an error a client and an operator
  understand:

  - ``client_buffer_limit`` (64 MiB by default): the longest message a client may send
    that is not streamed, and the most the pooler holds for it while it waits for a
    server. A longer message is refused at its header, before its body is read
    (SQLSTATE 54000, as PostgreSQL refuses a message over 1 GiB), naming the key.
  - ``total_buffer_limit`` (256 MiB): the most the pooler holds in unfinished messages
    for all connections together, clients' and servers' (a single huge row from a
    server is held whole). The connection whose bytes push the total over is refused:
    a client with 53200 (out of memory), a server connection is closed and its client
    told the same. The others are not harmed.

Only connections holding at least :data:`SMALL` bytes are tracked (a handful at any
time), and the engine asks only when a connection holds that much or a client has
messages waiting for a server, so the ordinary path pays one comparison. The total is
recounted over the tracked connections at each check, so a connection that finished
its message or closed needs no bookkeeping elsewhere.

Where this departs from PgBouncer: PgBouncer streams every message and row; here rows,
messages other than Query/CopyData, and those of pools that route on the text are held
whole, under the caps.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._errors import fatal
from ._objects import Client
from ._states import C_CLOSED, S_CLOSED

if TYPE_CHECKING:
    from pgsansio.protocol import ErrorResponse, ProtocolError

    from ._context import Context
    from ._objects import ServerConn

__all__ = ["SMALL", "STREAM_MIN", "Buffers"]

SMALL = 64 * 1024
"""Connections holding less than this are not tracked (nor counted)."""

STREAM_MIN = 1024 * 1024
"""A Query or CopyData from a logged-in client this long or longer is forwarded in
pieces as it arrives (the protocol core's ``stream_min``), not held whole."""


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def _held(x: Client | ServerConn) -> int:
    held = x.conn.buffered
    if isinstance(x, Client) and x.pending:
        held += sum(len(data) for data, _, _ in x.pending)
    return held


class Buffers:
    """Owns the set of connections holding large unfinished messages."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._tracked: dict[Client | ServerConn, None] = {}

    def client_connected(self, c: Client) -> None:
        """Refuse a message longer than the client limit at its header."""
        c.conn.max_message_size = self.ctx.config.general.client_buffer_limit

    def too_large(self, c: Client, exc: ProtocolError) -> ErrorResponse | None:
        """The error for a client message over ``client_buffer_limit``, or None."""
        limit = self.ctx.config.general.client_buffer_limit
        if exc.sqlstate != "54000" or c.conn.max_message_size != limit:
            return None
        self.ctx.log(
            logging.WARNING,
            f"client {c.cid} from {c.peer}: refused a message longer than "
            f"client_buffer_limit ({limit} bytes): {exc}",
        )
        return fatal(
            "54000",
            f"message too long for the pooler: {exc}; the pooler accepts messages of at "
            f"most {limit} bytes from a client (client_buffer_limit)",
        )

    @property
    def total(self) -> int:
        """Bytes held in unfinished messages by the tracked connections, now."""
        total = 0
        for x in list(self._tracked):
            held = 0 if x.state is C_CLOSED or x.state is S_CLOSED else _held(x)
            if held < SMALL:
                del self._tracked[x]
            total += held
        return total

    def check_client(self, c: Client) -> ErrorResponse | None:
        """After reading ``c`` (holding SMALL or more, or with messages waiting): the
        error to drop it with if it holds too much, alone or with everyone else."""
        general = self.ctx.config.general
        held = _held(c)
        if held < SMALL:
            self._tracked.pop(c, None)
            return None
        if held > general.client_buffer_limit:
            self._tracked.pop(c, None)
            self.ctx.log(
                logging.WARNING,
                f"client {c.cid} from {c.peer}: sent {held} bytes while waiting for a "
                f"server, more than client_buffer_limit ({general.client_buffer_limit})",
            )
            return fatal(
                "54000",
                f"too much data sent while waiting for a server: the pooler holds at most "
                f"{general.client_buffer_limit} bytes for a client (client_buffer_limit)",
            )
        return self._check_total(c, f"client {c.cid} from {c.peer}")

    def check_server(self, s: ServerConn) -> ErrorResponse | None:
        """The same for a server connection holding a large unfinished message."""
        if s.conn.buffered < SMALL:
            self._tracked.pop(s, None)
            return None
        where = f"server {s.address.host}:{s.address.port}"
        return self._check_total(s, where)

    def _check_total(self, x: Client | ServerConn, who: str) -> ErrorResponse | None:
        self._tracked[x] = None
        limit = self.ctx.config.general.total_buffer_limit
        total = self.total
        if total <= limit:
            return None
        del self._tracked[x]
        self.ctx.log(
            logging.WARNING,
            f"{who}: refused: unfinished messages would hold {_mb(total)}, more than "
            f"total_buffer_limit ({_mb(limit)})",
        )
        return fatal(
            "53200",
            "out of memory in the pooler: too many large messages are in transit at "
            "once (total_buffer_limit); try again later",
        )
