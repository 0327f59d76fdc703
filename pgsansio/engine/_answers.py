"""Answers the pooler gives a client itself, in place of a server.

PgCat's custom commands (``SET SERVER ROLE``, ``SHOW SHARD`` ...) are answered by the
pooler in the shapes a server would use: a one-row ``SHOW`` result, or an
ErrorResponse the session survives, each followed by ReadyForQuery with the status
the client's server has (our answer leaves its transaction untouched).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgsansio.protocol import (
    CommandComplete,
    DataRow,
    ErrorResponse,
    Field,
    ReadyForQuery,
    RowDescription,
)

if TYPE_CHECKING:
    from ._context import Context
    from ._objects import Client

__all__ = ["command_error", "show_one"]

_TEXT_OID = 25


def show_one(ctx: Context, c: Client, column: str, value: str) -> None:
    """A ``SHOW`` answer: one text column, one row (ReadyForQuery is the caller's)."""
    ctx.send_client(c, RowDescription([Field(column, 0, 0, _TEXT_OID, -1, -1, 0)]))
    ctx.send_client(c, DataRow([value.encode()]))
    ctx.send_client(c, CommandComplete("SHOW"))


def command_error(
    ctx: Context, c: Client, message: str, status: str, sqlstate: str = "42601"
) -> None:
    """An error the session survives, then ReadyForQuery with the server's status."""
    ctx.send_client(c, ErrorResponse.build(sqlstate, message))
    ctx.send_client(c, ReadyForQuery(status))
