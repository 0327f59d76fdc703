"""The conversation's state, as data.

One :class:`ConversationState` tracks what both peers have said; it does not
know which side we are. The connection feeds it every event in the order it
sees them (what it sends and what it receives) and asks it what the peer may
send next. A message that is not allowed raises ``LocalProtocolError``; the
receive path turns that into ``RemoteProtocolError``.

Startup is a strict exchange and lives in transition tables. After
authentication, PostgreSQL is not a strict request/response protocol: a client
may pipeline anything, and the server answers in order. There we keep the
queue of outstanding requests that PgBouncer keeps ("Message Flow: Pipelining"):
one entry per message that will be answered by ReadyForQuery (Query, Sync,
FunctionCall), plus an "open batch" entry for extended-query messages not yet
followed by a Sync. That is all a pooler needs to know whether a server may be
handed to another client.
"""

from __future__ import annotations

import enum

from . import _events as ev
from . import _events_query as qe
from ._errors import LocalProtocolError

__all__ = ["ConversationState", "State"]


class State(enum.Enum):
    """Where a conversation is; ``conn.state`` reports one of these."""

    STARTUP = "STARTUP"  # the client's turn to send a startup packet
    SSL_NEGOTIATION = "SSL_NEGOTIATION"  # SSLRequest sent; waiting for S or N
    GSS_NEGOTIATION = "GSS_NEGOTIATION"  # GSSENCRequest sent; waiting for G or N
    AUTHENTICATING = "AUTHENTICATING"  # StartupMessage sent; authentication exchange
    AUTHENTICATED = "AUTHENTICATED"  # AuthenticationOk seen; parameters and key until Z
    READY = "READY"  # idle: nothing outstanding
    IN_QUERY = "IN_QUERY"  # requests outstanding
    COPY_IN = "COPY_IN"
    COPY_OUT = "COPY_OUT"
    COPY_BOTH = "COPY_BOTH"
    FAILED_EXTENDED = "FAILED_EXTENDED"  # server error in extended query: discarding until Sync
    CLOSED = "CLOSED"  # Terminate/CancelRequest sent, a fatal startup error, or EOF
    ERROR = "ERROR"  # we raised a ProtocolError; nothing more may happen


# Entries of the outstanding-request queue.
_QUERY = "Q"  # a simple Query: answered by ReadyForQuery
_SYNC = "S"  # extended messages closed by a Sync: answered by ReadyForQuery
_CALL = "F"  # FunctionCall: answered by ReadyForQuery
_BATCH = "X"  # extended messages without a Sync yet: no ReadyForQuery until one comes

# Startup transitions: (state, event class) -> next state. An event class not
# listed for the current state is a protocol violation.
_STARTUP_FRONTEND: dict[tuple[State, type[ev.Event]], State] = {
    (State.STARTUP, ev.StartupMessage): State.AUTHENTICATING,
    (State.STARTUP, ev.SSLRequest): State.SSL_NEGOTIATION,
    (State.STARTUP, ev.GSSENCRequest): State.GSS_NEGOTIATION,
    (State.STARTUP, ev.CancelRequest): State.CLOSED,
}
_STARTUP_BACKEND: dict[tuple[State, type[ev.Event]], State] = {
    (State.SSL_NEGOTIATION, ev.SSLResponse): State.STARTUP,
    (State.GSS_NEGOTIATION, ev.GSSENCResponse): State.STARTUP,
    # "the frontend might receive an ErrorResponse in response to SSLRequest
    # ... from a server that predates the addition of SSL support".
    (State.SSL_NEGOTIATION, qe.ErrorResponse): State.CLOSED,
    (State.GSS_NEGOTIATION, qe.ErrorResponse): State.CLOSED,
    (State.AUTHENTICATING, ev.AuthenticationOk): State.AUTHENTICATED,
    (State.AUTHENTICATING, qe.ErrorResponse): State.CLOSED,
    (State.AUTHENTICATING, qe.NoticeResponse): State.AUTHENTICATING,
    (State.AUTHENTICATING, ev.NegotiateProtocolVersion): State.AUTHENTICATING,
    (State.AUTHENTICATED, ev.ParameterStatus): State.AUTHENTICATED,
    (State.AUTHENTICATED, ev.BackendKeyData): State.AUTHENTICATED,
    (State.AUTHENTICATED, qe.NoticeResponse): State.AUTHENTICATED,
    (State.AUTHENTICATED, qe.ErrorResponse): State.CLOSED,
    (State.AUTHENTICATED, ev.ReadyForQuery): State.READY,
}
# Each authentication request names the kind of ``p`` message that answers it.
_AUTH_ANSWERS: dict[type[ev.Event], type[ev.Event] | None] = {
    ev.AuthenticationCleartextPassword: ev.PasswordMessage,
    ev.AuthenticationMD5Password: ev.PasswordMessage,
    ev.AuthenticationSASL: ev.SASLInitialResponse,
    ev.AuthenticationSASLContinue: ev.SASLResponse,
    ev.AuthenticationSASLFinal: None,
    ev.AuthenticationGSS: ev.GSSResponse,
    ev.AuthenticationGSSContinue: ev.GSSResponse,
    ev.AuthenticationSSPI: ev.GSSResponse,
    ev.AuthenticationKerberosV5: None,
}
# Messages a server may send at any time after startup ("Asynchronous Operations").
_ASYNC_BACKEND = (ev.ParameterStatus, qe.NoticeResponse, qe.NotificationResponse)
# A malformed one is answered (with an error) like the rest, and a Sync ends it.
_EXTENDED = (qe.Parse, qe.Bind, qe.Describe, qe.Execute, qe.Close, qe.MalformedMessage)
# The replies to a request; with nothing outstanding they are a violation.
_REPLIES = (
    qe.ParseComplete,
    qe.BindComplete,
    qe.CloseComplete,
    qe.CommandComplete,
    qe.DataRow,
    qe.EmptyQueryResponse,
    qe.NoData,
    qe.PortalSuspended,
    qe.ParameterDescription,
    qe.RowDescription,
    qe.FunctionCallResponse,
)
_COPY_STATES = {
    qe.CopyInResponse: State.COPY_IN,
    qe.CopyOutResponse: State.COPY_OUT,
    qe.CopyBothResponse: State.COPY_BOTH,
}

# What an event does to the query phase depends on its class alone, so each class
# is classified once (by the isinstance rules below, which subclasses follow too)
# and the answer cached: a dict lookup instead of a chain of isinstance checks on
# every message a proxy forwards.
_F_EXTENDED, _F_SYNC, _F_QUERY, _F_CALL, _F_COPY_END, _F_TERMINATE, _F_PASS, _F_ILLEGAL = (
    "extended",
    "sync",
    "query",
    "call",
    "copy-end",
    "terminate",
    "pass",
    "illegal",
)
_B_ROW, _B_READY, _B_ERROR, _B_ASYNC, _B_REPLY, _B_COPY_DATA, _B_COPY_DONE = (
    "row",
    "ready",
    "error",
    "async",
    "reply",
    "copy-data",
    "copy-done",
)
_B_COPY_START, _B_ILLEGAL = "copy-start", "illegal"
_FRONTEND_KIND: dict[type[ev.Event], str] = {}
_BACKEND_KIND: dict[type[ev.Event], str] = {}


def _frontend_kind(event: ev.Event) -> str:
    if isinstance(event, _EXTENDED):
        return _F_EXTENDED
    if isinstance(event, qe.Sync):
        return _F_SYNC
    if isinstance(event, qe.Query):
        return _F_QUERY
    if isinstance(event, qe.FunctionCall):
        return _F_CALL
    if isinstance(event, (qe.CopyDone, qe.CopyFail)):
        return _F_COPY_END
    if isinstance(event, qe.Terminate):
        return _F_TERMINATE
    if isinstance(event, (qe.Flush, qe.CopyData)):
        return _F_PASS
    return _F_ILLEGAL


def _backend_kind(event: ev.Event) -> str:
    if isinstance(event, qe.DataRow):
        return _B_ROW
    if isinstance(event, ev.ReadyForQuery):
        return _B_READY
    if isinstance(event, qe.ErrorResponse):
        return _B_ERROR
    if isinstance(event, _ASYNC_BACKEND):
        return _B_ASYNC
    if isinstance(event, _REPLIES):
        return _B_REPLY
    if isinstance(event, qe.CopyData):
        return _B_COPY_DATA
    if isinstance(event, qe.CopyDone):
        return _B_COPY_DONE
    if type(event) in _COPY_STATES:
        return _B_COPY_START
    return _B_ILLEGAL


class ConversationState:
    """What has happened on one connection, seen from both peers.

    Attributes:
        phase: a startup state, READY (the query phase), CLOSED or ERROR.
        pending: the outstanding-request queue (see the module docstring).
        copy: COPY_IN / COPY_OUT / COPY_BOTH while the server is in a COPY.
        frontend_copy_open: the client has not yet ended a COPY FROM STDIN
            with CopyDone or CopyFail. It can outlive ``copy``: when a bad row
            makes the server answer ErrorResponse and ReadyForQuery at once,
            the client is still sending rows that the server will ignore.
        failed: a server error in an extended-query batch; the server discards
            messages until the next Sync.
        transaction_status: I, T or E from the last ReadyForQuery.
        awaiting: the ``p`` message the last authentication request asks for.
        protocol_version: from the StartupMessage, lowered by NegotiateProtocolVersion.
        frontend_closed: the client sent Terminate or closed its side. The
            server may still answer what was already sent ("a client may send
            Terminate without waiting"), so backend messages stay legal.
        backend_closed: the server closed its side.
    """

    __slots__ = (
        "awaiting",
        "backend_closed",
        "copy",
        "failed",
        "frontend_closed",
        "frontend_copy_open",
        "pending",
        "phase",
        "protocol_version",
        "transaction_status",
    )

    def __init__(self) -> None:
        self.phase = State.STARTUP
        # A list, not a deque: a deque allocates a block of 64 slots (over 600 bytes)
        # for every connection, and this queue is short (the pipeline's depth).
        self.pending: list[str] = []
        self.copy: State | None = None
        self.frontend_copy_open = False
        self.failed = False
        self.transaction_status = "I"
        self.awaiting: type[ev.Event] | None = None
        self.protocol_version = ev.PROTOCOL_3_0
        self.frontend_closed = False
        self.backend_closed = False

    @property
    def state(self) -> State:
        if self.phase is not State.READY:
            return self.phase
        if self.frontend_closed or self.backend_closed:
            return State.CLOSED
        if self.failed:
            return State.FAILED_EXTENDED
        if self.copy is not None:
            return self.copy
        return State.IN_QUERY if self.pending else State.READY

    @property
    def outstanding(self) -> int:
        """How many ReadyForQuery messages the client still waits for."""
        return sum(1 for p in self.pending if p != _BATCH)

    def _violation(self, event: ev.Event, who: str) -> LocalProtocolError:
        return LocalProtocolError(
            f"{who} can't send {type(event).__name__} in state {self.state.name}"
        )

    # --- the frontend ---------------------------------------------------------------

    def frontend(self, event: ev.Event) -> None:
        phase = self.phase
        if self.frontend_closed:
            raise self._violation(event, "the client")
        if phase is State.READY or phase is State.AUTHENTICATED:
            self._frontend_query_phase(event, phase)
            return
        cls = type(event)
        if phase is State.AUTHENTICATING and self.awaiting is cls:
            self.awaiting = None
            return
        nxt = _STARTUP_FRONTEND.get((phase, cls))
        if nxt is None:
            raise self._violation(event, "the client")
        if cls is ev.StartupMessage:
            assert isinstance(event, ev.StartupMessage)
            self.protocol_version = event.protocol_version
        self.phase = nxt

    def _frontend_query_phase(self, event: ev.Event, phase: State) -> None:
        # Queries may be pipelined behind the startup exchange, and the server
        # will read them once it is ready; so AUTHENTICATED accepts them too.
        pending = self.pending
        kind = _FRONTEND_KIND.get(type(event))
        if kind is None:
            kind = _FRONTEND_KIND[type(event)] = _frontend_kind(event)
        if kind is _F_EXTENDED:
            if not pending or pending[-1] != _BATCH:
                pending.append(_BATCH)
        elif kind is _F_SYNC:
            # "the backend will ignore Flush and Sync messages received during
            # copy-in mode" (Message Flow: COPY Operations).
            if self.frontend_copy_open and self.copy is State.COPY_IN:
                return
            if pending and pending[-1] == _BATCH:
                pending[-1] = _SYNC
            else:
                pending.append(_SYNC)
        elif kind is _F_QUERY:
            pending.append(_QUERY)
        elif kind is _F_CALL:
            pending.append(_CALL)
        elif kind is _F_COPY_END:
            # Outside COPY the server ignores these "for robustness", which is
            # what happens to a client's trailing rows after a failed COPY.
            self.frontend_copy_open = False
        elif kind is _F_TERMINATE:
            self.frontend_closed = True
        elif kind is _F_ILLEGAL:
            raise self._violation(event, "the client")

    # --- the backend -----------------------------------------------------------------

    def backend(self, event: ev.Event) -> None:
        if self.phase is State.READY:
            self.backend_query_phase(event)
            return
        phase = self.phase
        cls = type(event)
        if phase is State.AUTHENTICATING and cls in _AUTH_ANSWERS:
            self.awaiting = _AUTH_ANSWERS[cls]
            return
        nxt = _STARTUP_BACKEND.get((phase, cls))
        if nxt is None:
            if phase is State.AUTHENTICATED and isinstance(event, _ASYNC_BACKEND):
                return
            raise self._violation(event, "the server")
        if cls is ev.NegotiateProtocolVersion:
            assert isinstance(event, ev.NegotiateProtocolVersion)
            self.protocol_version = min(self.protocol_version, event.newest_version)
        elif cls is ev.BackendKeyData:
            assert isinstance(event, ev.BackendKeyData)
            if self.protocol_version < ev.PROTOCOL_3_2 and len(event.secret_key) != 4:
                raise LocalProtocolError("a 3.0 connection takes only 4-byte cancel keys")
        elif cls is ev.ReadyForQuery:
            assert isinstance(event, ev.ReadyForQuery)
            self.transaction_status = event.status
        if nxt is not phase:
            # Not on a NoticeResponse between an authentication request and
            # its answer: the client still owes that ``p`` message.
            self.awaiting = None
        self.phase = nxt

    def backend_query_phase(self, event: ev.Event) -> None:
        """``backend(event)`` once the phase is READY, without asking again: for a
        caller that feeds a run of messages and knows that none of them can end the
        query phase (the connection's spans)."""
        pending = self.pending
        kind = _BACKEND_KIND.get(type(event))
        if kind is None:
            kind = _BACKEND_KIND[type(event)] = _backend_kind(event)
        if kind is _B_ROW:
            if not pending:
                raise self._violation(event, "the server")
        elif kind is _B_READY:
            # Pop up to and including the first entry that expects a
            # ReadyForQuery. After an extended-query error the server "discards
            # messages until a Sync", Query and FunctionCall included, so then
            # only a Sync answers.
            answers = (_SYNC,) if self.failed else (_SYNC, _QUERY, _CALL)
            while pending:
                if pending.pop(0) in answers:
                    break
            self.transaction_status = event.status  # type: ignore[attr-defined]
            self.failed = False
            self.copy = None
        elif kind is _B_ERROR:
            if pending and pending[0] != _QUERY and pending[0] != _CALL:
                self.failed = True
            self.copy = None
            if event.severity in ("FATAL", "PANIC"):  # type: ignore[attr-defined]
                # "the backend will close the connection": the server is gone
                # already for a pooler, even before its EOF arrives.
                self.backend_closed = True
        elif kind is _B_ASYNC:
            pass
        elif kind is _B_REPLY:
            if not pending:
                raise self._violation(event, "the server")
        elif kind is _B_COPY_DATA:
            if self.copy is not State.COPY_OUT and self.copy is not State.COPY_BOTH:
                raise self._violation(event, "the server")
        elif kind is _B_COPY_DONE:
            if self.copy is not State.COPY_OUT and self.copy is not State.COPY_BOTH:
                raise self._violation(event, "the server")
            if self.copy is State.COPY_OUT:
                self.copy = None
        elif kind is _B_COPY_START:
            if not pending:
                raise self._violation(event, "the server")
            self.copy = _COPY_STATES[type(event)]  # type: ignore[index]
            if self.copy is State.COPY_IN:
                self.frontend_copy_open = True
                if pending[0] == _SYNC:
                    # COPY started by Execute and the Sync is already sent: the
                    # server read that Sync in copy-in mode and ignored it, so a
                    # later Sync (libpq sends one after CopyDone) is the one
                    # that will be answered. Any more Syncs sent before the
                    # CopyInResponse arrived are read in copy-in mode too.
                    pending[0] = _BATCH
                    while len(pending) > 1 and pending[1] == _SYNC:
                        del pending[1]
        else:
            raise self._violation(event, "the server")

    def closed(self, frontend: bool) -> None:
        """One side closed its connection (EOF)."""
        if frontend:
            self.frontend_closed = True
        else:
            self.backend_closed = True
        if self.phase is not State.READY and self.phase is not State.ERROR:
            self.phase = State.CLOSED
