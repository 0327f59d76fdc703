"""The errors the engine sends to clients, and the exception that ends a client.

Every part of the engine answers with the same shapes, so they live below all of
them: a FATAL ErrorResponse ends the session (PgBouncer and PgCat close the client
after any error of theirs that is not about one query), and ``ClientFatal`` lets a
part deep in a call stack end the client's session without knowing who catches it
(the engine's input methods do, and drop the client with its error).
"""

from __future__ import annotations

from pgsansio.protocol import ErrorResponse

__all__ = ["INTERNAL", "NOT_POSTGRES", "TERMINATING", "ClientFatal", "as_fatal", "fatal", "how"]

NOT_POSTGRES = (
    "the server is not speaking the PostgreSQL protocol: check its host and port in the "
    "pooler's configuration"
)
"""What a client is told when its server sent bytes that are not PostgreSQL's protocol
(the pooler's log names the server and what it sent: :func:`how`)."""

_HTTP = "invalid length 1414811695 for a message of type 'H'"  # b"HTTP/" read as a header


def how(exc: Exception) -> str:
    """What the server sent, for the log line (never for the client)."""
    hint = "; it answered like an HTTP server" if _HTTP in str(exc) else ""
    return f" ({exc}{hint})"


def fatal(sqlstate: str, message: str) -> ErrorResponse:
    return ErrorResponse.build(sqlstate, message, "FATAL")


def as_fatal(error: ErrorResponse) -> ErrorResponse:
    if error.severity in ("FATAL", "PANIC"):
        return error
    return ErrorResponse([(k, "FATAL" if k in "SV" else v) for k, v in error.fields])


class ClientFatal(Exception):
    """A client did something we must end its session for (with this error)."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.error = ErrorResponse.build(sqlstate, message, "FATAL")


TERMINATING = ErrorResponse.build(
    "57P01", "terminating connection due to administrator command", "FATAL"
)
INTERNAL = ErrorResponse.build(
    "XX000", "internal error in the pooler; the connection is closed", "FATAL"
)
