"""Message bodies to events, one table per direction.

Direction is part of the key because type bytes are reused: ``E`` is Execute
from a client and ErrorResponse from a server, ``S`` is Sync or
ParameterStatus, ``D`` Describe or DataRow, ``C`` Close or CommandComplete,
``H`` Flush or CopyOutResponse. ``p`` is worse: its meaning comes only from
the authentication exchange, so the connection picks its reader (from
``PASSWORD_READERS``). Beside the readers, per direction, the length bounds of
each type that the connection checks on the header, before a body is read.

Every reader consumes the whole body or raises: a body with trailing bytes is
a protocol violation, and refusing it is what makes ``bytes(event)`` equal to
the bytes the event was read from.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from . import _events as ev
from . import _events_query as qe
from ._errors import LocalProtocolError

__all__ = [
    "BACKEND_LIMITS",
    "BACKEND_READERS",
    "FRONTEND_LIMITS",
    "FRONTEND_READERS",
    "PASSWORD_READERS",
    "length_cap",
    "read_startup_packet",
]

_i16 = struct.Struct("!h").unpack_from
# Counts are unsigned 16-bit numbers, as PostgreSQL reads them (see _Body.count).
_u16 = struct.Struct("!H").unpack_from
_i32 = struct.Struct("!i").unpack_from
_u32 = struct.Struct("!I").unpack_from
_field = struct.Struct("!IhIhih")
# Events are immutable; readers fill in a new one's fields as its __init__ does.
_set = object.__setattr__


class _Body:
    """A cursor over one message body; errors name the message being read."""

    __slots__ = ("data", "end", "name", "pos")

    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)
        self.name = name

    def fail(self, what: str) -> LocalProtocolError:
        # Raised as Local and turned into Remote in one place, the receive path.
        return LocalProtocolError(f"malformed {self.name} message: {what}")

    def need(self, n: int) -> int:
        pos = self.pos
        if self.end - pos < n:
            raise self.fail("too short")
        self.pos = pos + n
        return pos

    def cstr(self) -> str:
        data, pos = self.data, self.pos
        nul = data.find(b"\0", pos)
        if nul < 0:
            raise self.fail("string without NUL terminator")
        self.pos = nul + 1
        return data[pos:nul].decode("utf-8", "surrogateescape")

    def i16(self) -> int:
        return int(_i16(self.data, self.need(2))[0])

    def i32(self) -> int:
        return int(_i32(self.data, self.need(4))[0])

    def u32(self) -> int:
        return int(_u32(self.data, self.need(4))[0])

    def count(self) -> int:
        # pq_getmsgint(msg, 2) and libpq's pqGetInt(.., 2) read counts as unsigned:
        # a Parse or Bind may carry up to 65,535 parameters.
        return int(_u16(self.data, self.need(2))[0])

    def i16s(self) -> tuple[int, ...]:
        n = self.count()
        if not n:
            return ()  # the common case (no format codes): no format string to build
        pos = self.need(2 * n)
        return struct.unpack_from(f"!{n}h", self.data, pos)

    def u32s(self) -> tuple[int, ...]:
        n = self.count()
        pos = self.need(4 * n)
        return struct.unpack_from(f"!{n}I", self.data, pos)

    def value(self) -> bytes | None:
        n = self.i32()
        if n == -1:
            return None
        if n < 0:
            raise self.fail(f"negative value length {n}")
        pos = self.need(n)
        return self.data[pos : pos + n]

    def values(self) -> tuple[bytes | None, ...]:
        return tuple([self.value() for _ in range(self.count())])

    def rest(self) -> bytes:
        pos, self.pos = self.pos, self.end
        return self.data[pos:]

    def cstrs(self) -> tuple[str, ...]:
        """Strings up to an empty one (the list terminator)."""
        out: list[str] = []
        while True:
            s = self.cstr()
            if not s:
                return tuple(out)
            out.append(s)

    def done(self) -> None:
        if self.pos != self.end:
            raise self.fail(f"{self.end - self.pos} unexpected trailing bytes")


Reader = Callable[[bytes], ev.Event]


def _empty(cls: type[ev.Event]) -> Reader:
    instance = cls()

    def read(body: bytes) -> ev.Event:
        if body:
            raise LocalProtocolError(f"malformed {cls.__name__} message: it has no body")
        return instance

    return read


def _one_string(cls: Callable[[str], ev.Event], name: str) -> Reader:
    def read(body: bytes) -> ev.Event:
        if body[-1:] != b"\0" or body.find(b"\0") != len(body) - 1:
            raise LocalProtocolError(f"malformed {name} message: expected one string")
        return cls(body[:-1].decode("utf-8", "surrogateescape"))

    return read


#: How many distinct bodies each of the caches below keeps.
_CACHE_SIZE = 256
#: Bodies longer than this are not cached (a RowDescription of a wide table).
_CACHE_MAX_BODY = 1024


def _cached(read: Reader) -> tuple[Reader, dict[bytes, ev.Event]]:
    """``read``, with events shared between equal bodies.

    For messages a workload repeats verbatim (CommandComplete "SELECT 1", the same
    RowDescription; from clients Parse, Describe and Execute): events are
    immutable, so equal bodies can share one event, as ReadyForQuery's do.
    A full cache starts again empty, so it follows the workload as it changes
    (row counts in tags vary without end).
    """
    cache: dict[bytes, ev.Event] = {}

    def cached(body: bytes) -> ev.Event:
        event = cache.get(body)
        if event is None:
            event = read(body)
            if len(body) <= _CACHE_MAX_BODY:
                if len(cache) >= _CACHE_SIZE:
                    cache.clear()
                cache[body] = event
        return event

    return cached, cache


_read_command_complete, _TAGS = _cached(_one_string(qe.CommandComplete, "CommandComplete"))


def _target(cls: Callable[[str, str], ev.Event], name: str) -> Reader:
    def read(body: bytes) -> ev.Event:
        b = _Body(body, name)
        kind = body[:1]
        if kind not in (b"S", b"P"):
            raise b.fail(f"kind must be S or P, not {kind!r}")
        b.pos = 1
        target = cls(kind.decode(), b.cstr())
        b.done()
        return target

    return read


def _read_parse(body: bytes) -> ev.Event:
    b = _Body(body, "Parse")
    event = qe.Parse(b.cstr(), b.cstr(), b.u32s())
    b.done()
    return event


def _read_bind(body: bytes) -> ev.Event:
    # On every prepared or extended query (a fifth of a pgbench -M extended
    # transaction's Python time went here): written out with no cursor object, the
    # same checks as _Body's in the same order with the same messages, and the event
    # built without Bind.__init__ copying each tuple again. The common case has no
    # format codes and empty names: no format string to build, nothing to decode.
    end = len(body)
    nul = body.find(0)
    if nul < 0:
        raise _bind_fail("string without NUL terminator")
    portal = body[:nul].decode("utf-8", "surrogateescape") if nul else ""
    pos = nul + 1
    nul = body.find(0, pos)
    if nul < 0:
        raise _bind_fail("string without NUL terminator")
    statement = body[pos:nul].decode("utf-8", "surrogateescape") if nul > pos else ""
    pos = nul + 1
    formats, pos = _bind_codes(body, pos, end)
    if end - pos < 2:
        raise _bind_fail("too short")
    (n,) = _u16(body, pos)
    pos += 2
    values: list[bytes | None] = []
    for _ in range(n):
        if end - pos < 4:
            raise _bind_fail("too short")
        (size,) = _i32(body, pos)
        pos += 4
        if size < 0:
            if size != -1:
                raise _bind_fail(f"negative value length {size}")
            values.append(None)
            continue
        if end - pos < size:
            raise _bind_fail("too short")
        values.append(body[pos : pos + size])
        pos += size
    results, pos = _bind_codes(body, pos, end)
    if pos != end:
        raise _bind_fail(f"{end - pos} unexpected trailing bytes")
    event = qe.Bind.__new__(qe.Bind)
    set_ = _set
    set_(event, "portal", portal)
    set_(event, "statement", statement)
    set_(event, "param_formats", formats)
    set_(event, "params", tuple(values))
    set_(event, "result_formats", results)
    return event


def _bind_codes(body: bytes, pos: int, end: int) -> tuple[tuple[int, ...], int]:
    """A Bind's list of format codes at ``pos`` (as _Body.i16s reads it), and where
    it ends."""
    if end - pos < 2:
        raise _bind_fail("too short")
    (n,) = _u16(body, pos)
    pos += 2
    if not n:
        return (), pos
    if end - pos < 2 * n:
        raise _bind_fail("too short")
    return struct.unpack_from(f"!{n}h", body, pos), pos + 2 * n


def _bind_fail(what: str) -> LocalProtocolError:
    return LocalProtocolError(f"malformed Bind message: {what}")


def _read_execute(body: bytes) -> ev.Event:
    b = _Body(body, "Execute")
    event = qe.Execute(b.cstr(), b.i32())
    b.done()
    return event


def _read_function_call(body: bytes) -> ev.Event:
    b = _Body(body, "FunctionCall")
    event = qe.FunctionCall(b.u32(), b.i16s(), b.values(), b.i16())
    b.done()
    return event


def _read_copy_data(body: bytes) -> ev.Event:
    return qe.CopyData(body)


FRONTEND_READERS: dict[bytes, Reader] = {
    b"Q": _one_string(qe.Query, "Query"),
    # A client repeats these verbatim (the same statement, "describe the unnamed
    # portal", "execute it"); Bind carries the parameters, which vary.
    b"P": _cached(_read_parse)[0],
    b"B": _read_bind,
    b"D": _cached(_target(qe.Describe, "Describe"))[0],
    b"C": _target(qe.Close, "Close"),
    b"E": _cached(_read_execute)[0],
    b"S": _empty(qe.Sync),
    b"H": _empty(qe.Flush),
    b"X": _empty(qe.Terminate),
    b"F": _read_function_call,
    b"d": _read_copy_data,
    b"c": _empty(qe.CopyDone),
    b"f": _one_string(qe.CopyFail, "CopyFail"),
}


# --- the ``p`` family: chosen by the authentication request it answers ----------


read_password = _one_string(ev.PasswordMessage, "PasswordMessage")


def read_sasl_initial(body: bytes) -> ev.Event:
    b = _Body(body, "SASLInitialResponse")
    mechanism = b.cstr()
    event = ev.SASLInitialResponse(mechanism, b.value())
    b.done()
    return event


def read_sasl_response(body: bytes) -> ev.Event:
    return ev.SASLResponse(body)


def read_gss_response(body: bytes) -> ev.Event:
    return ev.GSSResponse(body)


# --- backend ------------------------------------------------------------------------

_AUTH_EMPTY: dict[int, ev.Event] = {
    0: ev.AuthenticationOk(),
    2: ev.AuthenticationKerberosV5(),
    3: ev.AuthenticationCleartextPassword(),
    7: ev.AuthenticationGSS(),
    9: ev.AuthenticationSSPI(),
}
_AUTH_DATA: dict[int, Callable[[bytes], ev.Event]] = {
    8: ev.AuthenticationGSSContinue,
    11: ev.AuthenticationSASLContinue,
    12: ev.AuthenticationSASLFinal,
}


def _read_authentication(body: bytes) -> ev.Event:
    b = _Body(body, "Authentication")
    code = b.i32()
    if code in _AUTH_EMPTY:
        b.done()
        return _AUTH_EMPTY[code]
    if code in _AUTH_DATA:
        return _AUTH_DATA[code](b.rest())
    if code == 5:
        salt = b.rest()
        if len(salt) != 4:
            raise b.fail("the MD5 salt is 4 bytes")
        return ev.AuthenticationMD5Password(salt)
    if code == 10:
        event = ev.AuthenticationSASL(b.cstrs())
        b.done()
        return event
    raise b.fail(f"unknown authentication request {code}")


def _read_backend_key_data(body: bytes) -> ev.Event:
    # 4 bytes of key under 3.0; 4 to 256 under 3.2 ("the rest of the message").
    if not 8 <= len(body) <= 260:
        raise LocalProtocolError("malformed BackendKeyData message: the key is 4 to 256 bytes")
    return ev.BackendKeyData(_u32(body)[0], body[4:])


def _read_negotiate(body: bytes) -> ev.Event:
    b = _Body(body, "NegotiateProtocolVersion")
    version = b.u32()
    n = b.i32()
    if n < 0:
        raise b.fail(f"negative option count {n}")
    options = tuple(b.cstr() for _ in range(n))
    b.done()
    return ev.NegotiateProtocolVersion(version, options)


def _read_parameter_status(body: bytes) -> ev.Event:
    b = _Body(body, "ParameterStatus")
    event = ev.ParameterStatus(b.cstr(), b.cstr())
    b.done()
    return event


_READY = {b"I": ev.ReadyForQuery("I"), b"T": ev.ReadyForQuery("T"), b"E": ev.ReadyForQuery("E")}


def _read_ready(body: bytes) -> ev.Event:
    try:
        return _READY[body]
    except KeyError:
        raise LocalProtocolError(
            f"malformed ReadyForQuery message: status {body!r} is not I, T or E"
        ) from None


_make_field = ev.Field._make
_FIELD_SIZE = _field.size
_unpack_field = _field.unpack_from


def _read_row_description(body: bytes) -> ev.Event:
    # On every query's answer: _Body's checks, in its order and with its messages,
    # written out; and the event built without RowDescription.__init__ copying each
    # Field again.
    b = _Body(body, "RowDescription")
    n = b.count()
    pos, end = b.pos, b.end
    fields = []
    for _ in range(n):
        nul = body.find(b"\0", pos)
        if nul < 0:
            raise b.fail("string without NUL terminator")
        name = body[pos:nul].decode("utf-8", "surrogateescape")
        pos = nul + 1 + _FIELD_SIZE
        if pos > end:
            raise b.fail("too short")
        fields.append(_make_field((name, *_unpack_field(body, nul + 1))))
    b.pos = pos
    b.done()
    event = qe.RowDescription.__new__(qe.RowDescription)
    _set(event, "fields", tuple(fields))
    return event


_read_row_description_cached, _ROW_DESCRIPTIONS = _cached(_read_row_description)


def _read_data_row(body: bytes) -> ev.Event:
    # The one reader on a per-row path: written out rather than via _Body.
    try:
        (n,) = _u16(body, 0)
        pos = 2
        values: list[bytes | None] = []
        append = values.append
        for _ in range(n):
            (size,) = _i32(body, pos)
            pos += 4
            if size < 0:
                if size != -1:
                    raise LocalProtocolError(
                        f"malformed DataRow message: negative value length {size}"
                    )
                append(None)
                continue
            end = pos + size
            if end > len(body):
                raise LocalProtocolError("malformed DataRow message: too short")
            append(body[pos:end])
            pos = end
    except struct.error:
        raise LocalProtocolError("malformed DataRow message: too short") from None
    if pos != len(body):
        raise LocalProtocolError("malformed DataRow message: column count does not match")
    return qe.DataRow(values)


def _read_copy_response(cls: Callable[[int, tuple[int, ...]], ev.Event], name: str) -> Reader:
    def read(body: bytes) -> ev.Event:
        b = _Body(body, name)
        fmt = body[b.need(1)]
        event = cls(fmt, b.i16s())
        b.done()
        return event

    return read


def _read_parameter_description(body: bytes) -> ev.Event:
    b = _Body(body, "ParameterDescription")
    event = qe.ParameterDescription(b.u32s())
    b.done()
    return event


def _read_function_call_response(body: bytes) -> ev.Event:
    b = _Body(body, "FunctionCallResponse")
    event = qe.FunctionCallResponse(b.value())
    b.done()
    return event


def _read_notification(body: bytes) -> ev.Event:
    b = _Body(body, "NotificationResponse")
    event = qe.NotificationResponse(b.u32(), b.cstr(), b.cstr())
    b.done()
    return event


def _read_report(cls: Callable[[tuple[tuple[str, str], ...]], ev.Event], name: str) -> Reader:
    def read(body: bytes) -> ev.Event:
        b = _Body(body, name)
        fields = []
        while True:
            code = body[b.need(1)]
            if code == 0:
                break
            fields.append((chr(code), b.cstr()))
        b.done()
        return cls(tuple(fields))

    return read


BACKEND_READERS: dict[bytes, Reader] = {
    b"R": _read_authentication,
    b"K": _read_backend_key_data,
    b"v": _read_negotiate,
    b"S": _read_parameter_status,
    b"Z": _read_ready,
    b"T": _read_row_description_cached,
    b"D": _read_data_row,
    b"C": _read_command_complete,
    b"1": _empty(qe.ParseComplete),
    b"2": _empty(qe.BindComplete),
    b"3": _empty(qe.CloseComplete),
    b"n": _empty(qe.NoData),
    b"s": _empty(qe.PortalSuspended),
    b"I": _empty(qe.EmptyQueryResponse),
    b"t": _read_parameter_description,
    b"V": _read_function_call_response,
    b"A": _read_notification,
    b"E": _read_report(qe.ErrorResponse, "ErrorResponse"),
    b"N": _read_report(qe.NoticeResponse, "NoticeResponse"),
    b"G": _read_copy_response(qe.CopyInResponse, "CopyInResponse"),
    b"H": _read_copy_response(qe.CopyOutResponse, "CopyOutResponse"),
    b"W": _read_copy_response(qe.CopyBothResponse, "CopyBothResponse"),
    b"d": _read_copy_data,
    b"c": _empty(qe.CopyDone),
}


def read_startup_packet(body: bytes) -> ev.Event:
    """Read an untyped startup-phase packet (the part after its length)."""
    b = _Body(body, "startup packet")
    code = b.u32()
    if code in (ev.SSL_REQUEST_CODE, ev.GSSENC_REQUEST_CODE):
        b.done()
        return ev.SSLRequest() if code == ev.SSL_REQUEST_CODE else ev.GSSENCRequest()
    if code == ev.CANCEL_REQUEST_CODE:
        b.name = "CancelRequest"
        pid = b.u32()
        key = b.rest()
        if not 4 <= len(key) <= 256:
            raise b.fail("the cancel key is 4 to 256 bytes")
        return ev.CancelRequest(pid, key)
    if code >> 16 != 3:
        raise LocalProtocolError(
            f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
            "server supports 3.0 to 3.2",
            "0A000",
        )
    b.name = "StartupMessage"
    params = []
    while True:
        name = b.cstr()
        if not name:
            break
        params.append((name, b.cstr()))
    b.done()
    return ev.StartupMessage(params, code)


# PQ_SMALL_MESSAGE_LIMIT: the server's cap on frontend control messages.
_SMALL = 10000
# PG_MAX_AUTH_TOKEN_LENGTH: the cap on ``p`` messages.
_AUTH = 65535


# Length bounds (minimum, maximum, counting the length word itself) per type
# byte. ``None`` as maximum means the configured max_message_size. A type not
# listed is not a message of that direction.
def _limits(fixed: str, small: str, large: str, cap: int) -> dict[bytes, tuple[int, int | None]]:
    out: dict[bytes, tuple[int, int | None]] = {}
    out.update({c.encode(): (4, 4) for c in fixed})
    out.update({c.encode(): (4, cap) for c in small})
    out.update({c.encode(): (4, None) for c in large})
    return out


FRONTEND_LIMITS = _limits("SHXc", "CDEf", "QPBFd", _SMALL)
FRONTEND_LIMITS[b"p"] = (4, _AUTH + 4)
BACKEND_LIMITS = _limits("123nsIc", "", "RSvTDCtVANEGHWd", 0)
BACKEND_LIMITS[b"Z"] = (5, 5)
BACKEND_LIMITS[b"K"] = (12, 264)


def length_cap(high: int | None, max_message_size: int) -> int:
    """A type's length cap: max_message_size caps every type, those with a smaller
    cap of their own too."""
    return max_message_size if high is None or high > max_message_size else high


# ``p`` is read by what the last authentication request asked for.
PASSWORD_READERS: dict[type[ev.Event], Reader] = {
    ev.PasswordMessage: read_password,
    ev.SASLInitialResponse: read_sasl_initial,
    ev.SASLResponse: read_sasl_response,
    ev.GSSResponse: read_gss_response,
}
