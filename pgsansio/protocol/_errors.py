"""Protocol errors.

Two concrete classes, as in h11: :class:`LocalProtocolError` when *we* try to
do something the protocol forbids, :class:`RemoteProtocolError` when the *peer*
sent something we cannot accept. Each carries a SQLSTATE (the idea of h2's
error codes) so that a proxy can answer a broken client with an ErrorResponse
without a lookup table of its own.
"""

from __future__ import annotations

__all__ = [
    "SQLSTATE_FEATURE_NOT_SUPPORTED",
    "SQLSTATE_INVALID_AUTHORIZATION",
    "SQLSTATE_INVALID_PASSWORD",
    "SQLSTATE_PROGRAM_LIMIT",
    "SQLSTATE_PROTOCOL_VIOLATION",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "as_remote",
]

# The codes PostgreSQL itself uses for the same failures (errcodes.txt).
SQLSTATE_PROTOCOL_VIOLATION = "08P01"
SQLSTATE_PROGRAM_LIMIT = "54000"
SQLSTATE_INVALID_PASSWORD = "28P01"
SQLSTATE_INVALID_AUTHORIZATION = "28000"
SQLSTATE_FEATURE_NOT_SUPPORTED = "0A000"


class ProtocolError(Exception):
    """Base class; never raised directly.

    Attributes:
        sqlstate: the SQLSTATE PostgreSQL would report for this failure
            (``08P01`` protocol_violation unless a more precise code fits).
        reply: False where PostgreSQL only logs the failure and closes without a
            word (its COMMERROR level: a startup packet of impossible length, which
            is also what a Terminate sent before any startup packet looks like), so
            a proxy should close silently too; its peer may not speak the protocol.
    """

    def __init__(
        self, msg: str, sqlstate: str = SQLSTATE_PROTOCOL_VIOLATION, *, reply: bool = True
    ) -> None:
        if type(self) is ProtocolError:
            raise TypeError("tried to directly instantiate ProtocolError")
        super().__init__(msg)
        self.sqlstate = sqlstate
        self.reply = reply


class LocalProtocolError(ProtocolError):
    """We tried to send or do something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol."""


def as_remote(exc: ProtocolError) -> RemoteProtocolError:
    """``exc``, now a :class:`RemoteProtocolError` (the same object, message and
    SQLSTATE).

    The receive path runs the same validation code as the send path; a failure
    there is the peer's fault. The connection calls this in the one place that
    turns a local error into a remote one (h11's ``_reraise_as_remote_protocol_error``).
    """
    exc.__class__ = RemoteProtocolError
    assert isinstance(exc, RemoteProtocolError)
    return exc
