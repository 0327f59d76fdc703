"""Client and server connection states, as data.

The engine tracks each client and each server connection through a few states; this
module holds them, what may happen in each (the inputs) and where each input leads, in
two tables (h11's ``_state.py`` is the model). Every state change goes through
:func:`client_to` or :func:`server_to`; an input the table has no entry for is a bug
of ours and raises :class:`StateError` ("can't handle X in state Y"), leaving the
state as it was. The constructors of :class:`~._objects.Client` and
:class:`~._objects.ServerConn` set the first state; nothing else writes ``.state``.

Closing is legal from every state, ``CLOSED`` included (closing twice is harmless,
though the engine's callers check first), and nothing leads out of ``CLOSED``.

The members hash by identity (``object.__hash__``, not ``Enum``'s Python-level hash of
the name), so a table look-up costs a dict probe; compare states with ``is``. On the
hot paths (the relay, the engine's data inputs) use the module-level aliases below:
in Python 3.11 ``ServerState.CLOSED`` is a look-up through the enum's metaclass that
costs several times a module global.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._objects import Client, ServerConn

__all__ = [
    "CLIENT_TRANSITIONS",
    "SERVER_TRANSITIONS",
    "ClientInput",
    "ClientState",
    "ServerInput",
    "ServerState",
    "StateError",
    "client_to",
    "server_to",
]


class StateError(Exception):
    """A state change the table does not allow: a bug of the engine's, never the peer's
    (the engine's counterpart of the protocol layer's ``LocalProtocolError``)."""


class ClientState(enum.Enum):
    """Where a client connection is."""

    __hash__ = object.__hash__

    STARTUP = "STARTUP"  # waiting for the startup packet (SSL/GSS requests answered 'N')
    AUTH = "AUTH"  # we asked for a password / SASL exchange
    FETCH = "FETCH"  # waiting for auth_query to return the user's secret
    WELCOME = "WELCOME"  # authenticated; waiting for the pool's first server login
    READY = "READY"  # logged in
    CLOSED = "CLOSED"


class ClientInput(enum.Enum):
    """What happened to a client connection."""

    __hash__ = object.__hash__

    FETCHING = "FETCHING"  # the user's secret must come from auth_query first
    CHALLENGED = "CHALLENGED"  # we sent the authentication request
    AUTHENTICATED = "AUTHENTICATED"  # password accepted; the pool has no server login yet
    LOGGED_IN = "LOGGED_IN"  # welcomed: parameters, cancel key and ReadyForQuery sent
    CLOSED = "CLOSED"  # dropped, or the client went away


class ServerState(enum.Enum):
    """Where a server connection is."""

    __hash__ = object.__hash__

    CONNECTING = "CONNECTING"  # OpenServer sent
    LOGIN = "LOGIN"  # TCP up, StartupMessage sent, authenticating
    IDLE = "IDLE"  # in the pool's idle list (a probe's: between two rounds)
    ACTIVE = "ACTIVE"  # linked to a client
    INTERNAL = "INTERNAL"  # running our own queries (reset, rollback) with no client
    CLOSED = "CLOSED"


class ServerInput(enum.Enum):
    """What happened to a server connection."""

    __hash__ = object.__hash__

    CONNECTED = "CONNECTED"  # the frontend's server_connected: log in now
    LOGGED_IN = "LOGGED_IN"  # ReadyForQuery after the login: ours until set up
    LINKED = "LINKED"  # given to a client
    RELEASED = "RELEASED"  # the client let go of it
    QUERIED = "QUERIED"  # we sent a query of our own (reset, rollback, health check, probe)
    IDLED = "IDLED"  # nothing runs on it: into the idle list (a probe: wait)
    CLOSED = "CLOSED"  # closed by us, or the server went away


_C = ClientState
_CI = ClientInput
_S = ServerState
_SI = ServerInput

CLIENT_TRANSITIONS: dict[tuple[ClientState, ClientInput], ClientState] = {
    (_C.STARTUP, _CI.FETCHING): _C.FETCH,
    (_C.STARTUP, _CI.CHALLENGED): _C.AUTH,
    (_C.FETCH, _CI.CHALLENGED): _C.AUTH,
    (_C.AUTH, _CI.AUTHENTICATED): _C.WELCOME,
    (_C.AUTH, _CI.LOGGED_IN): _C.READY,
    (_C.WELCOME, _CI.LOGGED_IN): _C.READY,
}
CLIENT_TRANSITIONS.update({(state, _CI.CLOSED): _C.CLOSED for state in ClientState})

SERVER_TRANSITIONS: dict[tuple[ServerState, ServerInput], ServerState] = {
    (_S.CONNECTING, _SI.CONNECTED): _S.LOGIN,
    (_S.LOGIN, _SI.LOGGED_IN): _S.INTERNAL,
    (_S.LOGIN, _SI.IDLED): _S.IDLE,  # a probe's connection, logged in
    (_S.IDLE, _SI.LINKED): _S.ACTIVE,
    (_S.INTERNAL, _SI.LINKED): _S.ACTIVE,
    (_S.ACTIVE, _SI.RELEASED): _S.INTERNAL,
    (_S.IDLE, _SI.QUERIED): _S.INTERNAL,
    (_S.INTERNAL, _SI.QUERIED): _S.INTERNAL,
    (_S.INTERNAL, _SI.IDLED): _S.IDLE,
}
SERVER_TRANSITIONS.update({(state, _SI.CLOSED): _S.CLOSED for state in ServerState})

# Aliases for the hot paths (see the module docstring).
C_READY = ClientState.READY
C_CLOSED = ClientState.CLOSED
S_LOGIN = ServerState.LOGIN
S_IDLE = ServerState.IDLE
S_ACTIVE = ServerState.ACTIVE
S_CLOSED = ServerState.CLOSED
SI_LINKED = ServerInput.LINKED  # a transaction-mode round trip links, releases and idles
SI_RELEASED = ServerInput.RELEASED
SI_IDLED = ServerInput.IDLED


# The tables again, by input then state: a look-up keyed by one member is cheaper than
# by a tuple of two (the server's table is used three times per transaction).
_CLIENT_NEXT = {w: {s: n for (s, x), n in CLIENT_TRANSITIONS.items() if x is w} for w in _CI}
_SERVER_NEXT = {w: {s: n for (s, x), n in SERVER_TRANSITIONS.items() if x is w} for w in _SI}


def client_to(c: Client, what: ClientInput) -> None:
    """Move ``c`` as the table says ``what`` does in its state, or raise StateError."""
    try:
        c.state = _CLIENT_NEXT[what][c.state]
    except KeyError:
        raise StateError(f"client: can't handle {what.name} in state {c.state.name}") from None


def server_to(s: ServerConn, what: ServerInput) -> None:
    """Move ``s`` as the table says ``what`` does in its state, or raise StateError."""
    try:
        s.state = _SERVER_NEXT[what][s.state]
    except KeyError:
        raise StateError(f"server: can't handle {what.name} in state {s.state.name}") from None
