"""The sans-IO connection: bytes in, events out; events in, bytes out.

Modelled on h11's ``Connection``. ``receive_data`` only buffers;
``next_event`` frames and reads one message; ``send`` checks that an event is
legal now and encodes it. A client-role connection is the frontend (it sends
frontend messages and reads backend ones); a server-role connection is the
reverse. Both share one :class:`ConversationState`, fed in the order this side
sees things.

For proxies, ``next_span`` returns every whole message buffered as one
``bytes`` plus the decoded events that matter for pooling, without building an
object per DataRow or CopyData; ``send_span`` forwards such a span through the
connection on the other side, updating its state from those events alone.
With ``stream_min`` set on a server-role connection, a Query or CopyData from the
client at least that long comes out of ``next_span`` in pieces as it arrives (its
start with the event the state machine needs, then raw spans), so a proxy need not
hold it whole; such a message is bounded by PostgreSQL's limit, not
``max_message_size``.

Narrower still, for the round trips that dominate a transaction pooler's work, a
pair of calls for each direction: one simple Query (``take_query`` reads it from the
client, ``pass_query`` sends it on to the server), one batch of extended messages
closed by a Sync, as drivers send a statement with parameters (``take_batch`` /
``pass_batch``), and the whole answer to a Query or to extended messages up to one
Sync (``take_answer`` reads it from the server, ``pass_answer`` sends it on to the
client). Like every call here, each reads and
changes its own connection only. A ``take_`` call makes the checks that
``receive_data`` + ``next_span`` would and leaves its connection in the same state,
without building a span or an event for anything but a CommandComplete (and the
RowDescriptions it checks), or declines (changing nothing) for anything else; a
``pass_`` call leaves its connection as ``send_span`` would, and is ``send_span``
itself where its short cut does not apply.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from typing import Final

from . import _events as ev
from . import _events_query as qe
from . import _readers
from ._errors import LocalProtocolError, ProtocolError, RemoteProtocolError, as_remote
from ._readers import length_cap
from ._sentinels import NEED_DATA, PAUSED
from ._span import Span, backend_span
from ._state import _BATCH, _QUERY, _SYNC, ConversationState, State

__all__ = ["CLIENT", "NEED_DATA", "PAUSED", "SERVER", "Connection", "Role"]

_hdr = struct.Struct("!ci").unpack_from
_i32 = struct.Struct("!i").unpack_from

#: PostgreSQL's MaxAllocSize - 1: the largest message it accepts.
DEFAULT_MAX_MESSAGE_SIZE: Final = 0x3FFFFFFF
#: MAX_STARTUP_PACKET_LENGTH in PostgreSQL.
DEFAULT_MAX_STARTUP_SIZE: Final = 10000


class Role(enum.Enum):
    CLIENT = "CLIENT"
    SERVER = "SERVER"


CLIENT: Final = Role.CLIENT
SERVER: Final = Role.SERVER


_ROWS: Final = (b"D",)
_STATUS: Final = {ord(x): x for x in "ITE"}  # ReadyForQuery's status byte
# Replies without a body: EmptyQueryResponse, Parse/Bind/CloseComplete, NoData,
# PortalSuspended.
_EMPTY_REPLIES: Final = frozenset((b"I", b"1", b"2", b"3", b"n", b"s"))
_DESCRIPTIONS: Final = frozenset((b"T", b"t"))  # RowDescription, ParameterDescription
_COPY_DATA: Final = (b"d",)
# A client's messages whose malformed body PostgreSQL answers with ERROR 08P01, skipping
# to the next Sync, and survives (Parse, Bind, Describe, Execute, Close).
_MALFORMED_OK: Final = frozenset((b"P", b"B", b"D", b"E", b"C"))
_NONE: Final = frozenset[bytes]()
_STREAMED: Final = frozenset((b"Q", b"d"))  # what next_span may hand out in pieces
# The messages of an ordinary extended batch before its Sync (see take_batch).
_BATCHED: Final = frozenset((b"P", b"B", b"D", b"E"))


class Connection:
    """One side of a PostgreSQL connection.

    Args:
        role: ``CLIENT`` to talk to a server, ``SERVER`` to talk to a client.
        max_message_size: the largest message accepted from the peer (the
            length word included); PostgreSQL's own limit by default.
        max_startup_size: the largest startup packet accepted.
    """

    # Slots: a pooler holds one of these per client and per server connection, and
    # an instance dict would be the largest part of an idle client's cost.
    __slots__ = (
        "_conv",
        "_data",
        "_eof",
        "_left",
        "_limits",
        "_pos",
        "_process_received",
        "_process_sent",
        "_readers",
        "max_message_size",
        "max_startup_size",
        "role",
        "stream_min",
    )

    def __init__(
        self,
        role: Role,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_startup_size: int = DEFAULT_MAX_STARTUP_SIZE,
    ) -> None:
        self.role = role
        self.max_message_size = max_message_size
        self.max_startup_size = max_startup_size
        self._conv = ConversationState()
        self._data: bytes | bytearray = b""
        self._pos = 0
        self._eof = False
        self.stream_min = 0
        """Messages from a client this long or longer (a Query or CopyData) are
        handed out in pieces by ``next_span``, as they arrive (0: never; see there)."""
        self._left = 0  # bytes of a message handed out in pieces still to come
        if role is CLIENT:
            self._readers = _readers.BACKEND_READERS
            self._limits = _readers.BACKEND_LIMITS
            self._process_received = self._conv.backend
            self._process_sent = self._conv.frontend
        else:
            self._readers = _readers.FRONTEND_READERS
            self._limits = _readers.FRONTEND_LIMITS
            self._process_received = self._conv.frontend
            self._process_sent = self._conv.backend

    # --- what a pooler asks ------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._conv.state

    @property
    def transaction_status(self) -> str:
        """I, T or E, as of the last ReadyForQuery."""
        return self._conv.transaction_status

    @property
    def outstanding(self) -> int:
        """ReadyForQuery messages still to come for requests already sent."""
        return self._conv.outstanding

    @property
    def idle(self) -> bool:
        """Nothing outstanding, no open COPY, no unsynced extended messages.

        This is the moment a transaction pooler may hand the server to another
        client (when ``transaction_status`` is also ``I``).
        """
        c = self._conv
        # ``c.state is State.READY``, written out (the engine asks after every
        # answer): READY only with nothing pending, no COPY and neither side
        # closed (after EOF the phase itself stays READY).
        return (
            c.phase is State.READY
            and not (c.frontend_closed or c.backend_closed or c.failed or c.pending)
            and c.copy is None
            and not c.frontend_copy_open
        )

    @property
    def frontend_copy_open(self) -> bool:
        """The client has not ended its COPY FROM STDIN (see ConversationState)."""
        return self._conv.frontend_copy_open

    @property
    def protocol_version(self) -> int:
        return self._conv.protocol_version

    @property
    def their_closed(self) -> bool:
        """The peer closed its side (EOF) and everything it sent has been read."""
        return self._eof and self._pos >= len(self._data)

    @property
    def streaming(self) -> bool:
        """A message is being handed out in pieces; more of it is to come."""
        return self._left > 0

    @property
    def buffered(self) -> int:
        """How many received bytes wait to be read (part of a message, at most)."""
        return len(self._data) - self._pos

    @property
    def trailing_data(self) -> bytes:
        """Bytes received but not yet read as messages."""
        return bytes(self._data[self._pos :])

    # --- receiving --------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes from the peer; ``b""`` means the peer closed (EOF).

        Raises:
            RuntimeError: data after EOF.
        """
        if self._eof:
            raise RuntimeError("received data after the peer closed the connection")
        if not data:
            self._eof = True
            return
        buf = self._data
        if self._pos >= len(buf):
            # The common case for a proxy: nothing left over. Keep the chunk
            # itself, so that a span covering all of it is forwarded uncopied.
            self._data = data if type(data) is bytes else bytes(data)
        else:
            if isinstance(buf, bytes):
                buf = bytearray(memoryview(buf)[self._pos :])
            else:
                del buf[: self._pos]
            buf += data
            self._data = buf
        self._pos = 0

    def _fail(self, exc: ProtocolError) -> ProtocolError:
        self._conv.phase = State.ERROR
        if isinstance(exc, LocalProtocolError):
            return as_remote(exc)
        return exc

    def next_event(self) -> ev.Event | type[NEED_DATA] | type[PAUSED]:
        """Read the next message the peer sent.

        Returns:
            An event; ``ConnectionClosed`` after EOF; ``NEED_DATA`` when no
            whole message is buffered; ``PAUSED`` while the peer must wait
            for our answer to its SSLRequest/GSSENCRequest.

        Raises:
            RemoteProtocolError: the peer broke the protocol. The connection
                is then in ``ERROR`` and every later call raises.
        """
        conv = self._conv
        if conv.phase is State.ERROR:
            raise RemoteProtocolError("can't read after a protocol error")
        try:
            event: ev.Event | type[NEED_DATA] | type[PAUSED]
            if conv.phase is State.STARTUP and self.role is SERVER:
                event = self._read_startup_packet()
            elif conv.phase in (State.SSL_NEGOTIATION, State.GSS_NEGOTIATION):
                event = self._read_negotiation_answer()
            else:
                event = self._read_message()
            if event is NEED_DATA:
                if self._eof:
                    return self._closed()
                return NEED_DATA
            if event is PAUSED:
                return PAUSED
            assert isinstance(event, ev.Event)
            self._process_received(event)
            return event
        except ProtocolError as exc:
            raise self._fail(exc) from None

    def _closed(self) -> qe.ConnectionClosed:
        if self._left:
            raise RemoteProtocolError(
                f"the peer closed the connection in the middle of a message "
                f"({self._left} bytes of it missing)"
            )
        if self._pos < len(self._data):
            raise RemoteProtocolError(
                f"the peer closed the connection in the middle of a message "
                f"({len(self._data) - self._pos} bytes left over)"
            )
        self._conv.closed(frontend=self.role is SERVER)
        return qe.ConnectionClosed()

    def _read_startup_packet(self) -> ev.Event | type[NEED_DATA]:
        buf, pos = self._data, self._pos
        if len(buf) - pos < 4:
            return NEED_DATA
        (length,) = _i32(buf, pos)
        if buf[pos] == 0x16:
            raise RemoteProtocolError(
                "received a TLS handshake instead of a startup packet "
                "(direct SSL negotiation is not supported; use sslnegotiation=postgres)"
            )
        if not 8 <= length <= self.max_startup_size:
            # ProcessStartupPacket logs "invalid length of startup packet" and
            # closes without an answer (COMMERROR): so do we (reply=False).
            raise RemoteProtocolError(
                f"invalid startup packet length {length}",
                "54000" if length > self.max_startup_size else "08P01",
                reply=False,
            )
        if len(buf) - pos < length:
            return NEED_DATA
        self._pos = pos + length
        return _readers.read_startup_packet(bytes(buf[pos + 4 : pos + length]))

    def _read_negotiation_answer(self) -> ev.Event | type[NEED_DATA] | type[PAUSED]:
        if self.role is SERVER:
            return PAUSED  # the client waits for our S/N; read nothing until then
        buf, pos = self._data, self._pos
        if len(buf) - pos < 1:
            return NEED_DATA
        answer = buf[pos : pos + 1]
        if answer == b"E":
            # A server too old for SSL answers with an ErrorResponse.
            return self._read_message()
        ssl = self._conv.phase is State.SSL_NEGOTIATION
        if answer not in (b"N", b"S" if ssl else b"G"):
            raise RemoteProtocolError(f"invalid answer {bytes(answer)!r} to an encryption request")
        self._pos = pos + 1
        if answer != b"N" and len(buf) > pos + 1:
            # CVE-2021-23222: bytes that arrive with the S before the TLS
            # handshake come from whoever sits in the middle; never read them.
            raise RemoteProtocolError("unencrypted data received after the server accepted TLS")
        accepted = answer != b"N"
        return ev.SSLResponse(accepted) if ssl else ev.GSSENCResponse(accepted)

    def _header(self, buf: bytes | bytearray, pos: int) -> tuple[bytes, int]:
        code, length = _hdr(buf, pos)
        bounds = self._limits.get(code)
        if bounds is None:
            raise RemoteProtocolError(f"unknown message type {code!r}")
        low, high = bounds
        if length < low or length > length_cap(high, self.max_message_size):
            raise RemoteProtocolError(
                f"invalid length {length} for a message of type {code.decode('latin-1')!r}",
                "54000" if length > self.max_message_size else "08P01",
            )
        return code, length

    def _read_message(self) -> ev.Event | type[NEED_DATA]:
        buf, pos = self._data, self._pos
        if len(buf) - pos < 5:
            return NEED_DATA
        code, length = self._header(buf, pos)
        end = pos + 1 + length
        if end > len(buf):
            return NEED_DATA
        self._pos = end
        body = buf[pos + 5 : end]
        if type(body) is not bytes:
            body = bytes(body)
        if self.role is SERVER and code in _MALFORMED_OK:
            try:
                return self._decode(code, body)
            except LocalProtocolError as exc:  # answered with an ERROR (see next_span)
                return qe.MalformedMessage(code, body, str(exc))
        return self._decode(code, body)

    def _decode(self, code: bytes, body: bytes) -> ev.Event:
        if code == b"p":
            awaiting = self._conv.awaiting
            if awaiting is None or self._conv.phase is not State.AUTHENTICATING:
                raise LocalProtocolError("unexpected password message: no authentication asked")
            return _readers.PASSWORD_READERS[awaiting](body)
        return self._readers[code](body)

    def next_span(self) -> Span | ev.Event | type[NEED_DATA] | type[PAUSED]:
        """Read every whole message buffered, for forwarding as one piece.

        In the query phase the span covers all whole messages buffered; during
        startup, one message. DataRow (from a server) and CopyData (from a
        client) are framed and checked but not decoded.

        Returns:
            A :class:`Span`; or, like ``next_event``, ``ConnectionClosed``,
            ``NEED_DATA`` or ``PAUSED``.

        Raises:
            RemoteProtocolError: as ``next_event``.
        """
        conv = self._conv
        if conv.phase is not State.READY:
            start = self._pos
            data = self._data
            event = self.next_event()
            if isinstance(event, ev.Event) and type(event) is not qe.ConnectionClosed:
                return Span(bytes(data[start : self._pos]), [event], [0])
            return event
        if self._left:
            return self._next_piece()
        buf, start = self._data, self._pos
        pos, size = start, len(buf)
        events: list[ev.Event] = []
        offsets: list[int] = []
        bulk = 0
        bulk_max = self.max_message_size
        limits = self._limits
        readers = self._readers
        client = self.role is CLIENT
        # The phase stays READY for the whole span (see the end of the loop), so a
        # server's messages go straight to the query-phase half of conv.backend.
        process = conv.backend_query_phase if client else self._process_received
        # Which bulk types are legal now; only decoded events change that, so
        # it is recomputed after each of them (on a server-role connection it
        # never changes). A bulk type that is not legal takes the slow path,
        # where the state machine says what is wrong.
        passable = self._passable() if client else _COPY_DATA
        skippable = _NONE if client else _MALFORMED_OK
        try:
            while size - pos >= 5:
                code, length = _hdr(buf, pos)
                if code in passable and 4 <= length <= bulk_max:
                    # The hot loop: a row is framed, counted and passed over.
                    end = pos + 1 + length
                    if end > size:
                        if pos == start and self._streamable(code, length):
                            return self._first_piece(code, end)
                        break
                    bulk += 1
                    pos = end
                    continue
                # _header's checks, written out for the common case; _header
                # itself raises the error when one of them fails.
                bounds = limits.get(code)
                if (
                    bounds is None
                    or length < bounds[0]
                    or length > length_cap(bounds[1], bulk_max)
                ) and not self._streamable(code, length):
                    self._header(buf, pos)
                end = pos + 1 + length
                if end > size:
                    if pos == start and self._streamable(code, length):
                        return self._first_piece(code, end)
                    break
                body = buf[pos + 5 : end]
                if type(body) is not bytes:
                    body = bytes(body)
                try:
                    event = self._decode(code, body) if code == b"p" else readers[code](body)
                except LocalProtocolError as bad:  # not ``exc``: compiled, one name, one type
                    # A body that does not parse, in a good frame: for the extended
                    # messages PostgreSQL answers ERROR and carries on (see
                    # MalformedMessage); anything else is fatal, as before.
                    if code not in skippable:
                        raise
                    event = qe.MalformedMessage(code, body, str(bad))
                process(event)
                events.append(event)
                offsets.append(pos - start)
                pos = end
                if client:
                    # _passable(), written out for the case without COPY.
                    if conv.copy is None:
                        passable = _ROWS if conv.pending else ()
                    else:
                        passable = self._passable()
                # A span never crosses a Terminate: PostgreSQL reads nothing after
                # it and closes, so what follows in the same read is left unread
                # (and a proxy closes silently too). No query-phase event changes
                # the phase today; that test is defensive.
                if conv.frontend_closed or conv.phase is not State.READY:
                    break
        except ProtocolError as exc:
            raise self._fail(exc) from None
        if pos == start:
            return self._nothing_whole()
        self._pos = pos
        # The whole chunk as received is forwarded without a copy.
        if start == 0 and pos == size and isinstance(buf, bytes):
            data = buf
        else:
            data = bytes(buf[start:pos])
        return Span(data, events, offsets, bulk)

    def _nothing_whole(self) -> type[NEED_DATA] | qe.ConnectionClosed:
        """``next_span`` found nothing to hand out: more is needed, or the peer left."""
        if self._eof:
            try:
                return self._closed()
            except ProtocolError as exc:
                raise self._fail(exc) from None
        return NEED_DATA

    def _streamable(self, code: bytes, length: int) -> bool:
        """Whether a client's message may be handed out in pieces (``stream_min``).

        Such a message is bounded by PostgreSQL's limit rather than
        ``max_message_size``, which then caps what must be held whole."""
        return (
            code in _STREAMED
            and 0 < self.stream_min <= length <= DEFAULT_MAX_MESSAGE_SIZE
            and self.role is SERVER
        )

    def _first_piece(self, code: bytes, end: int) -> Span:
        """The start of a long Query or CopyData from a client, handed out before the
        rest has arrived (``stream_min``), so a proxy forwards it as it comes instead
        of holding it whole. The state machine sees a Query (its text unknown: the
        span's event is ``Query("")``) or a CopyData now; ``next_span`` then returns
        the rest in pieces (spans of raw bytes, no events) until the message is
        complete. Only called in the query phase, on a server-role connection, with
        the message's header checked and nothing before it in the buffer."""
        buf, pos = self._data, self._pos
        size = len(buf)
        events: list[ev.Event] = []
        bulk = 0
        try:
            if code == b"Q":
                event = qe.Query("")
                self._process_received(event)
                events.append(event)
            else:
                bulk = 1
        except ProtocolError as exc:
            raise self._fail(exc) from None
        data = buf if pos == 0 and isinstance(buf, bytes) else bytes(buf[pos:size])
        self._pos = size
        self._left = end - size
        return Span(data, events, [0] if events else [], bulk)

    def _next_piece(self) -> Span | type[NEED_DATA] | qe.ConnectionClosed:
        """The next piece of a message being handed out (see ``_first_piece``)."""
        buf, pos = self._data, self._pos
        n = min(self._left, len(buf) - pos)
        if n <= 0:
            return self._nothing_whole()
        if pos == 0 and n == len(buf) and isinstance(buf, bytes):
            data = buf
        else:
            data = bytes(buf[pos : pos + n])
        self._pos = pos + n
        self._left -= n
        if self._left or self._pos == len(buf):
            return Span(data, [], [], 0)
        # The message ended inside this chunk: what follows it goes in the same span
        # (a caller reads one span per chunk; a CopyDone must not wait for more bytes).
        rest = self.next_span()
        if not isinstance(rest, Span):
            return Span(data, [], [], 0)
        shift = len(data)
        offsets = [offset + shift for offset in rest.offsets]
        return Span(data + rest.data, rest.events, offsets, rest.bulk)

    def _passable(self) -> tuple[bytes, ...]:
        """The message types ``next_span`` may frame without decoding, now, when
        reading a server; from a client it is always CopyData (which the server
        ignores outside COPY)."""
        conv = self._conv
        rows = _ROWS if conv.pending else ()
        if conv.copy is State.COPY_OUT or conv.copy is State.COPY_BOTH:
            return (*rows, b"d")
        return rows

    # --- sending ------------------------------------------------------------------------

    def send(self, event: ev.Event) -> bytes:
        """Check that ``event`` may be sent now and return its bytes.

        Sending ``ConnectionClosed()`` marks our side closed and returns
        ``b""`` (close the socket yourself).

        Raises:
            LocalProtocolError: the event is not legal for this role or
                state, or its fields cannot be encoded. The connection is
                then in ``ERROR``.
        """
        if type(event) is qe.ConnectionClosed:
            self._conv.closed(frontend=self.role is CLIENT)
            return b""
        try:
            self._check_direction(event)
            data = bytes(event)
            self._process_sent(event)
        except LocalProtocolError:
            self._conv.phase = State.ERROR
            raise
        self._check_encryption_answer(event)
        return data

    def _check_encryption_answer(self, event: ev.Event) -> None:
        if (
            isinstance(event, (ev.SSLResponse, ev.GSSENCResponse))
            and event.accepted
            and self._pos < len(self._data)
        ):
            # CVE-2021-23214 (SSL and GSS alike): the client sent more after
            # its request; those bytes were never encrypted and must not be read.
            self._conv.phase = State.ERROR
            raise RemoteProtocolError("unencrypted data received after an encryption request")

    def _check_direction(self, event: ev.Event) -> None:
        if self._conv.phase is State.ERROR:
            raise LocalProtocolError("can't send after a protocol error")
        if not (event.frontend if self.role is CLIENT else event.backend):
            raise self._wrong_direction(event)

    def _wrong_direction(self, event: ev.Event) -> LocalProtocolError:
        side = "client" if self.role is CLIENT else "server"
        return LocalProtocolError(f"a {side} can't send {type(event).__name__}")

    def send_span(self, span: Span) -> bytes:
        """Forward a span read from the connection on the other side of a proxy.

        Only ``span.events`` are checked and fed to this side's state; the
        bulk messages in between pass through untouched.

        Returns:
            ``span.data``, to write to the peer.

        Raises:
            LocalProtocolError: an event this side may not send now (the
                connection is then in ``ERROR``).
        """
        # _check_direction for each event, with what cannot change inside the
        # loop hoisted out of it (the state machine never sets ERROR itself).
        events = span.events
        conv = self._conv
        process = self._process_sent
        if self.role is SERVER and conv.phase is State.READY:
            process = conv.backend_query_phase  # as conv.backend would (see next_span)
        try:
            if events and conv.phase is State.ERROR:
                raise LocalProtocolError("can't send after a protocol error")
            if self.role is CLIENT:
                for event in events:
                    if not event.frontend:
                        raise self._wrong_direction(event)
                    process(event)
            else:
                after_status = False
                for event in events:
                    if type(event) is ev.ParameterStatus:
                        # One accepted ParameterStatus leaves the state as it was (a
                        # loop in AUTHENTICATED, asynchronous in READY), so the next
                        # one is accepted alike and changes nothing either: a login's
                        # run of them (the welcome) goes to the state machine once.
                        if after_status:
                            continue
                        after_status = True
                    else:
                        after_status = False
                        if not event.backend:
                            raise self._wrong_direction(event)
                    process(event)
        except LocalProtocolError:
            conv.phase = State.ERROR
            raise
        if self._pos < len(self._data):  # else no encryption answer can be wrong
            for event in events:
                self._check_encryption_answer(event)
        return span.data

    # --- the common round trip ----------------------------------------------------------

    def _waiting_client(self) -> bool:
        """A server-role connection whose client may send a new request, with nothing
        outstanding, buffered or half-read: where the ``take_`` calls for requests
        apply."""
        conv = self._conv
        return (
            conv.phase is State.READY
            and not conv.pending
            and self.role is SERVER
            and not conv.failed
            and conv.copy is None
            and not conv.frontend_copy_open
            and not conv.frontend_closed
            and not self._eof
            and not self._left
            and self._pos >= len(self._data)
        )

    def take_query(self, data: bytes | bytearray | memoryview) -> str | None:
        """Read ``data`` as one whole Query from an idle client, and return its text.

        The fast path for the commonest request a proxy sees. It applies when this
        server-role connection has nothing buffered and nothing outstanding, and
        ``data`` is exactly one Query message: then it is read as ``receive_data``
        plus ``next_span`` would read it, with the same checks and the same state
        afterwards. A proxy forwards it with the other connection's ``pass_query``.

        Args:
            data: the bytes just received from the client.

        Returns:
            The Query's text; or None, with nothing changed, for anything else: use
            ``receive_data`` and ``next_span`` for it (they report what is wrong).
        """
        if type(data) is not bytes:  # declined, not a TypeError, in the compiled build too
            return None
        conv = self._conv
        n = len(data)
        if (
            n < 6
            or data[0] != 0x51  # Q
            or not self._waiting_client()
            or int.from_bytes(data[1:5], "big") != n - 1
            or n - 1 > self.max_message_size
            or data.find(b"\0", 5) != n - 1
        ):
            return None
        conv.pending.append(_QUERY)
        return data[5:-1].decode("utf-8", "surrogateescape")

    def pass_query(self, data: bytes, sql: str) -> bytes:
        """Forward a Query that ``take_query`` read on the other side of a proxy
        through this client-role connection: ``send_span`` of it, for less.

        Args:
            data: the Query's bytes, as ``take_query`` accepted them.
            sql: the text ``take_query`` returned.

        Returns:
            ``data``, to write to the server.

        Raises:
            LocalProtocolError: as ``send_span``, where a Query may not be sent now
                (the connection is then in ``ERROR``).
        """
        conv = self._conv
        if self.role is CLIENT and conv.phase is State.READY and not conv.frontend_closed:
            conv.pending.append(_QUERY)
            return data
        return self.send_span(Span(data, [qe.Query(sql)], [0]))

    def take_batch(
        self, data: bytes | bytearray | memoryview
    ) -> tuple[list[ev.Event], list[int]] | None:
        """Read ``data`` as one whole batch of extended messages closed by one Sync,
        from an idle client; return its events and their offsets, Sync included.

        The request half of the lane for the extended protocol: Parse, Bind, Describe
        and Execute (any number, any order), then a Sync that ends ``data``, as a
        driver sends a statement with parameters (pgbench ``-M extended``:
        Parse/Bind/Describe/Execute/Sync; a prepared statement: Bind/.../Sync). It
        applies when this server-role connection has nothing buffered and nothing
        outstanding; then it is read as ``receive_data`` plus ``next_span`` would
        read it (the same events, the same checks, the same state afterwards) without
        building a span or feeding the state machine message by message. A proxy
        forwards it with the other connection's ``pass_batch``.

        Returns:
            The events and their offsets in ``data``, as a span of it would hold them;
            or None, with nothing changed, for anything else (another message, a
            malformed body, a partial message ...): use ``receive_data`` and
            ``next_span`` for it (they report what is wrong).
        """
        if type(data) is not bytes:  # declined, not a TypeError, in the compiled build too
            return None
        conv = self._conv
        n = len(data)
        if n < 10 or data[n - 5 : n] != b"S\0\0\0\x04" or not self._waiting_client():
            return None
        readers = self._readers
        limits = self._limits
        cap = self.max_message_size
        events: list[ev.Event] = []
        offsets: list[int] = []
        pos = 0
        last = n - 5  # where the Sync starts
        try:
            while pos < last:
                code, length = _hdr(data, pos)
                end = pos + 1 + length
                if code not in _BATCHED or end > last:
                    return None
                low, high = limits[code]
                if length < low or length > length_cap(high, cap):
                    return None
                events.append(readers[code](data[pos + 5 : end]))
                offsets.append(pos)
                pos = end
        except ProtocolError:
            return None  # a malformed body: the general path forwards it as such
        events.append(readers[b"S"](b""))
        offsets.append(last)
        conv.pending.append(_SYNC)
        return events, offsets

    def pass_batch(self, data: bytes, events: list[ev.Event]) -> bytes:
        """Forward a batch that ``take_batch`` read on the other side of a proxy
        (renamed, perhaps, as ``events`` say) through this client-role connection:
        ``send_span`` of it, for less.

        Args:
            data: the batch's bytes: extended messages closed by one Sync at the end.
            events: what ``data`` holds, as ``send_span`` would be given them.

        Returns:
            ``data``, to write to the server.

        Raises:
            LocalProtocolError: as ``send_span``, where the batch may not be sent now
                (the connection is then in ``ERROR``).
        """
        conv = self._conv
        pending = conv.pending
        if (
            self.role is CLIENT
            and conv.phase is State.READY
            and not conv.frontend_closed
            and not (pending and pending[-1] == _BATCH)
            and not (conv.frontend_copy_open and conv.copy is State.COPY_IN)
        ):
            # What send_span's events would do: the extended messages open a batch
            # and the Sync closes it, one request more that ReadyForQuery answers.
            pending.append(_SYNC)
            return data
        return self.send_span(Span(data, events, []))

    def take_answer(
        self, data: bytes | bytearray | memoryview, check: Callable[[bytes], bool] | None = None
    ) -> tuple[str, list[qe.CommandComplete]] | None:
        """Read ``data`` as the whole answer to the one Query, or the one batch of
        extended messages closed by a Sync, outstanding on this client-role connection.

        The answer may hold the replies to queries (RowDescription, DataRow,
        CommandComplete, EmptyQueryResponse, ParseComplete, BindComplete,
        CloseComplete, NoData, ParameterDescription, PortalSuspended) and must end
        with ReadyForQuery, exactly at the end of ``data``; the connection must have
        just that request outstanding and nothing buffered. Then it is read as
        ``receive_data`` plus ``next_span`` would read it, with the same checks and
        the same state afterwards. A proxy forwards it with the other connection's
        ``pass_answer``.

        Args:
            data: the bytes just received from the server.
            check: if given, sees the type bytes of the messages before the
                ReadyForQuery, DataRows left out (``b"TC"`` for a plain SELECT), and
                may refuse them by returning False.

        Returns:
            The ReadyForQuery status (``I``, ``T`` or ``E``) and the CommandComplete
            events, in order; or None, with nothing changed, for anything else (an
            error, a notice, COPY, a partial message, a refusal ...): use
            ``receive_data`` and ``next_span`` for it (they report what is wrong).
        """
        if type(data) is not bytes:  # declined, not a TypeError, in the compiled build too
            return None
        conv = self._conv
        pending = conv.pending
        n = len(data)
        if (
            n < 6
            or conv.phase is not State.READY
            or len(pending) != 1
            or (pending[0] != _QUERY and pending[0] != _SYNC)
            or self.role is not CLIENT
            or conv.failed
            or conv.copy is not None
            or conv.frontend_copy_open
            or conv.backend_closed
            or self._eof
            or self._pos < len(self._data)
            or data[n - 6 : n - 2] != b"Z\0\0\0"
            or data[n - 2] != 5
        ):
            return None
        text = _STATUS.get(data[n - 1])
        if text is None:
            return None
        cap = self.max_message_size
        readers = self._readers
        tags: list[qe.CommandComplete] = []
        codes = bytearray()
        pos = 0
        last = n - 6  # where the ReadyForQuery starts
        try:
            while pos < last:
                # Fewer than 5 bytes before the ReadyForQuery cannot be a header: the
                # length read then runs into it, and ``end`` past ``last`` says so.
                code, length = _hdr(data, pos)
                end = pos + 1 + length
                if length < 4 or length > cap or end > last:
                    return None
                if code == b"D":
                    pos = end  # framed, not decoded, as next_span does
                    continue
                if code == b"C":
                    tags.append(readers[code](data[pos + 5 : end]))  # type: ignore[arg-type]
                elif code in _DESCRIPTIONS:
                    readers[code](data[pos + 5 : end])  # checked as next_span checks it
                elif code not in _EMPTY_REPLIES or length != 4:
                    return None
                codes += code
                pos = end
        except ProtocolError:
            return None  # the general path reports it
        if check is not None and not check(bytes(codes)):
            return None
        pending.clear()
        conv.transaction_status = text
        return text, tags

    def pass_answer(self, data: bytes, status: str) -> bytes:
        """Forward an answer that ``take_answer`` read on the other side of a proxy
        through this server-role connection: ``send_span`` of it, for less.

        When this connection has one request outstanding (and no COPY, no failed
        batch), the answer's ReadyForQuery settles it and nothing else needs to be
        looked at; otherwise the answer's messages are read again and go through
        ``send_span``, with its checks.

        Args:
            data: the answer's bytes, as ``take_answer`` accepted them.
            status: the status ``take_answer`` returned.

        Returns:
            ``data``, to write to the client.

        Raises:
            LocalProtocolError: as ``send_span``, where the answer may not be sent
                now (the connection is then in ``ERROR``).
        """
        conv = self._conv
        pending = conv.pending
        if (
            len(pending) == 1
            and conv.phase is State.READY
            and self.role is SERVER
            and not conv.failed
            and conv.copy is None
        ):
            # What send_span's events would do: every reply finds the request
            # outstanding, and the ReadyForQuery takes it off.
            pending.clear()
            conv.transaction_status = status
            return data
        return self.send_span(backend_span(data))
