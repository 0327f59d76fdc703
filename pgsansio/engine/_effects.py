"""What the engine asks a frontend to do.

Effects are small NamedTuples: cheap to make on the hot path, easy to match on. A
frontend carries them out in order and never decides anything itself.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "CloseClient",
    "CloseServer",
    "Effect",
    "Exit",
    "Log",
    "OpenServer",
    "ReadClient",
    "ReadServer",
    "Reload",
    "SendClient",
    "SendServer",
    "StartTls",
    "Wakeup",
]


class SendClient(NamedTuple):
    """Write ``data`` to client ``cid``."""

    cid: int
    data: bytes


class SendServer(NamedTuple):
    """Write ``data`` to server connection ``sid``."""

    sid: int
    data: bytes


class OpenServer(NamedTuple):
    """Open a TCP connection to ``host:port`` and report it as server ``sid``.

    Answer with ``engine.server_connected(sid, now)`` or
    ``engine.server_failed(sid, error, now)``.
    """

    sid: int
    host: str
    port: int


class CloseClient(NamedTuple):
    """Close client ``cid`` after writing what was already asked for.

    The frontend does not call ``client_closed`` for a close the engine asked for.
    """

    cid: int


class CloseServer(NamedTuple):
    """Close server connection ``sid`` (after pending writes); no ``server_closed``."""

    sid: int


class ReadServer(NamedTuple):
    """Stop (``on`` False) or resume reading from server ``sid``: its client is slow."""

    sid: int
    on: bool


class ReadClient(NamedTuple):
    """Stop (``on`` False) or resume reading from client ``cid``: its server is slow."""

    cid: int
    on: bool


class StartTls(NamedTuple):
    """Upgrade connection ``id`` to TLS, then report how it went.

    ``kind`` "client": a client whose SSLRequest was answered ``S``; the frontend is the
    TLS server, with the certificate from the configuration. ``kind`` "server": a server
    that answered ``S``; the frontend is the TLS client (verifying the server's
    certificate and host name when ``verify_server_certificate`` is set). Nothing is
    read from the connection until the handshake is over. Answer with
    ``engine.client_tls(cid, error, now)`` / ``engine.server_tls(sid, error, now)``:
    ``error`` None on success; otherwise a message, and the frontend has closed the
    connection and reports nothing more for that id.
    """

    kind: str  # "client" | "server"
    id: int


class Wakeup(NamedTuple):
    """Call ``engine.tick(now)`` at monotonic time ``at`` (replaces any earlier timer)."""

    at: float


class Log(NamedTuple):
    """A line for the operator; ``level`` is a :mod:`logging` level number."""

    level: int
    message: str


class Reload(NamedTuple):
    """Re-read the configuration file (the console's RELOAD), as SIGHUP does.

    Answer with ``engine.reload(config, now)``, or with
    ``engine.reload_failed(error, now)`` when the file does not load.
    """


class Exit(NamedTuple):
    """The engine has finished shutting down: stop listening and exit with ``code``.

    ``at_once`` (a second SIGINT/SIGTERM): close every connection without flushing
    what is still being written, and exit without waiting for them to close.
    """

    code: int = 0
    at_once: bool = False


Effect = (
    SendClient
    | SendServer
    | OpenServer
    | CloseClient
    | CloseServer
    | ReadServer
    | ReadClient
    | StartTls
    | Wakeup
    | Log
    | Reload
    | Exit
)
