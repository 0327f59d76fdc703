"""One event class per message of the PostgreSQL frontend/backend protocol.

Events are small immutable slotted objects. ``bytes(event)`` encodes one whole
message (type byte, length, body) and the readers in ``_readers.py`` build
events from bytes, so ``bytes(read(x)) == x`` for every valid message: that is
what lets a proxy hand an event received on one connection to ``send`` on the
other.

Text fields are ``str``. The protocol's strings are byte strings in the
connection's ``client_encoding``; we decode them as UTF-8 with
``surrogateescape`` so that any byte sequence (a LATIN1 client, garbage)
survives a decode/encode round trip unchanged.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, NamedTuple

from ._errors import LocalProtocolError

__all__ = [
    "PROTOCOL_3_0",
    "PROTOCOL_3_2",
    "Event",
    "Field",
]

PROTOCOL_3_0 = 0x00030000
PROTOCOL_3_2 = 0x00030002

# "Message Formats": Int32 codes of the untyped startup-phase packets.
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

_pack_header = struct.Struct("!ci").pack
_pack_i16 = struct.Struct("!h").pack
# "Int16" counts (parameters, columns, format codes) are read by PostgreSQL as
# unsigned 16-bit numbers (pq_getmsgint(msg, 2)): up to 65,535 parameters.
_pack_count = struct.Struct("!H").pack
_pack_i32 = struct.Struct("!i").pack
_pack_u32 = struct.Struct("!I").pack
_pack_ii = struct.Struct("!ii").pack
_pack_Ii = struct.Struct("!Ii").pack
_set = object.__setattr__


def _cstr(text: str) -> bytes:
    """Encode a protocol String: text then a NUL terminator."""
    data = text.encode("utf-8", "surrogateescape")
    if b"\0" in data:
        raise LocalProtocolError(f"string {text[:40]!r} contains a NUL byte")
    return data + b"\0"


def _i16_array(values: tuple[int, ...]) -> bytes:
    """An unsigned 16-bit count, then one signed Int16 per value (format codes)."""
    return _pack_count(len(values)) + b"".join(_pack_i16(v) for v in values)


def _values(values: tuple[bytes | None, ...]) -> bytes:
    """Unsigned 16-bit count then (Int32 length or -1 for NULL, bytes) per value."""
    parts = [_pack_count(len(values))]
    for v in values:
        if v is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(_pack_i32(len(v)))
            parts.append(v)
    return b"".join(parts)


class Event:
    """Base class of every message event.

    Subclasses declare ``__slots__`` (the fields; sorted by ruff, so not in
    wire or constructor order), a ``type_code`` and the directions that may
    carry them. Equality, hashing and ``repr`` come from the fields, as with a
    frozen dataclass, but creating one costs a third of what a frozen
    dataclass does.
    """

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()
    #: the message's type byte; ``b""`` for the untyped startup packets.
    type_code: ClassVar[bytes] = b""
    #: which side may send it.
    frontend: ClassVar[bool] = False
    backend: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields: list[str] = []
        for klass in reversed(cls.__mro__):
            fields.extend(klass.__dict__.get("__slots__", ()))
        cls._fields = tuple(fields)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} events are immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} events are immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._fields)

    def __hash__(self) -> int:
        return hash((type(self), *(getattr(self, f) for f in self._fields)))

    def __repr__(self) -> str:
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({args})"

    # Pickling and copying restore the fields by name: ``_fields`` follows
    # ``__slots__``, which are sorted, not in the constructor's argument order.
    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in self._fields)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(self._fields, state, strict=True):
            _set(self, name, value)

    def _body(self) -> bytes:
        """The message body, without type byte and length."""
        return b""

    def _encoded_body(self) -> bytes:
        # A field out of its wire range (an Int16 format of 70000, a negative
        # process ID) or a str that is not text (a lone surrogate) cannot be sent:
        # that is the caller's protocol error, not a crash.
        try:
            return self._body()
        except (struct.error, UnicodeEncodeError) as exc:
            raise LocalProtocolError(f"can't encode {type(self).__name__}: {exc}") from None

    def __bytes__(self) -> bytes:
        body = self._encoded_body()
        return _pack_header(self.type_code, len(body) + 4) + body


class _Empty(Event):
    """A message with no body (Sync, ParseComplete ...): one shared encoding."""

    __slots__ = ()
    _wire: ClassVar[bytes] = b""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._wire = _pack_header(cls.type_code, 4) if cls.type_code else b""

    def __bytes__(self) -> bytes:
        return self._wire


class Field(NamedTuple):
    """One column of a RowDescription."""

    name: str
    table_oid: int = 0
    column_number: int = 0
    type_oid: int = 25
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0


# --- startup-phase packets (no type byte) -----------------------------------


class StartupMessage(Event):
    """The first packet of a session: protocol version and parameters.

    ``parameters`` keeps the client's order (and any duplicates) so the packet
    re-encodes byte for byte; use :meth:`get` or :attr:`params` to read it.
    """

    __slots__ = ("parameters", "protocol_version")
    frontend = True
    parameters: tuple[tuple[str, str], ...]
    protocol_version: int

    def __init__(
        self,
        parameters: Mapping[str, str] | Iterable[tuple[str, str]],
        protocol_version: int = PROTOCOL_3_0,
    ) -> None:
        items = parameters.items() if isinstance(parameters, Mapping) else parameters
        _set(self, "parameters", tuple((str(k), str(v)) for k, v in items))
        _set(self, "protocol_version", protocol_version)

    @property
    def params(self) -> dict[str, str]:
        return dict(self.parameters)

    def get(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.parameters:
            if key == name:
                return value
        return default

    def _body(self) -> bytes:
        parts = [_pack_u32(self.protocol_version)]
        for key, value in self.parameters:
            if not key:
                raise LocalProtocolError("startup parameter names must not be empty")
            parts.append(_cstr(key))
            parts.append(_cstr(value))
        parts.append(b"\0")
        return b"".join(parts)

    def __bytes__(self) -> bytes:
        body = self._encoded_body()
        return _pack_i32(len(body) + 4) + body


class _Request(_Empty):
    __slots__ = ()
    frontend = True
    code: ClassVar[int] = 0

    def __bytes__(self) -> bytes:
        return _pack_ii(8, self.code)


class SSLRequest(_Request):
    """Ask the server to switch to TLS; it answers with one unframed byte."""

    __slots__ = ()
    code = SSL_REQUEST_CODE


class GSSENCRequest(_Request):
    """Ask for GSSAPI encryption; answered like SSLRequest."""

    __slots__ = ()
    code = GSSENC_REQUEST_CODE


class CancelRequest(Event):
    """Sent on a new connection to cancel the query of (process_id, secret_key).

    The key is 4 bytes under protocol 3.0 and 4 to 256 bytes under 3.2.
    """

    __slots__ = ("process_id", "secret_key")
    frontend = True
    process_id: int
    secret_key: bytes

    def __init__(self, process_id: int, secret_key: bytes) -> None:
        _set(self, "process_id", process_id)
        _set(self, "secret_key", bytes(secret_key))

    def _body(self) -> bytes:
        if not 4 <= len(self.secret_key) <= 256:
            raise LocalProtocolError("cancel keys are 4 to 256 bytes long")
        return _pack_i32(CANCEL_REQUEST_CODE) + _pack_u32(self.process_id) + self.secret_key

    def __bytes__(self) -> bytes:
        body = self._encoded_body()
        return _pack_i32(len(body) + 4) + body


class _Answer(Event):
    """The server's one-byte, unframed answer to SSLRequest/GSSENCRequest."""

    __slots__ = ("accepted",)
    backend = True
    accepted: bool
    yes: ClassVar[bytes] = b"S"

    def __init__(self, accepted: bool) -> None:
        _set(self, "accepted", bool(accepted))

    def __bytes__(self) -> bytes:
        return self.yes if self.accepted else b"N"


class SSLResponse(_Answer):
    """``S``: go ahead with the TLS handshake; ``N``: continue in plaintext."""

    __slots__ = ()
    yes = b"S"


class GSSENCResponse(_Answer):
    """``G``: go ahead with GSSAPI encryption; ``N``: continue in plaintext."""

    __slots__ = ()
    yes = b"G"


# --- authentication ----------------------------------------------------------


class Authentication(Event):
    """Base of the ``R`` messages; ``auth_code`` is their Int32 subtype."""

    __slots__ = ()
    type_code = b"R"
    backend = True
    auth_code: ClassVar[int] = 0

    def _extra(self) -> bytes:
        return b""

    def _body(self) -> bytes:
        return _pack_i32(self.auth_code) + self._extra()


class _AuthEmpty(Authentication):
    __slots__ = ()

    def __init__(self) -> None:
        pass


class AuthenticationOk(_AuthEmpty):
    __slots__ = ()
    auth_code = 0


class AuthenticationKerberosV5(_AuthEmpty):
    __slots__ = ()
    auth_code = 2


class AuthenticationCleartextPassword(_AuthEmpty):
    __slots__ = ()
    auth_code = 3


class AuthenticationGSS(_AuthEmpty):
    __slots__ = ()
    auth_code = 7


class AuthenticationSSPI(_AuthEmpty):
    __slots__ = ()
    auth_code = 9


class AuthenticationMD5Password(Authentication):
    __slots__ = ("salt",)
    auth_code = 5
    salt: bytes

    def __init__(self, salt: bytes) -> None:
        _set(self, "salt", bytes(salt))

    def _extra(self) -> bytes:
        if len(self.salt) != 4:
            raise LocalProtocolError("the MD5 salt is exactly 4 bytes")
        return self.salt


class AuthenticationSASL(Authentication):
    """The list of SASL mechanisms the server offers (e.g. SCRAM-SHA-256)."""

    __slots__ = ("mechanisms",)
    auth_code = 10
    mechanisms: tuple[str, ...]

    def __init__(self, mechanisms: Iterable[str]) -> None:
        _set(self, "mechanisms", tuple(mechanisms))

    def _extra(self) -> bytes:
        for m in self.mechanisms:
            if not m:
                raise LocalProtocolError("SASL mechanism names must not be empty")
        return b"".join(_cstr(m) for m in self.mechanisms) + b"\0"


class _AuthData(Authentication):
    __slots__ = ("data",)
    data: bytes

    def __init__(self, data: bytes) -> None:
        _set(self, "data", bytes(data))

    def _extra(self) -> bytes:
        return self.data


class AuthenticationGSSContinue(_AuthData):
    __slots__ = ()
    auth_code = 8


class AuthenticationSASLContinue(_AuthData):
    __slots__ = ()
    auth_code = 11


class AuthenticationSASLFinal(_AuthData):
    __slots__ = ()
    auth_code = 12


class _FrontendData(Event):
    __slots__ = ("data",)
    frontend = True
    data: bytes

    def __init__(self, data: bytes) -> None:
        _set(self, "data", bytes(data))

    def _body(self) -> bytes:
        return self.data


class PasswordMessage(Event):
    """A cleartext password or an ``md5...`` response (type ``p``)."""

    __slots__ = ("password",)
    type_code = b"p"
    frontend = True
    password: str

    def __init__(self, password: str) -> None:
        _set(self, "password", password)

    def _body(self) -> bytes:
        return _cstr(self.password)


class SASLInitialResponse(Event):
    """The chosen mechanism and the client-first message (type ``p``)."""

    __slots__ = ("data", "mechanism")
    type_code = b"p"
    frontend = True
    mechanism: str
    data: bytes | None

    def __init__(self, mechanism: str, data: bytes | None) -> None:
        _set(self, "mechanism", mechanism)
        _set(self, "data", None if data is None else bytes(data))

    def _body(self) -> bytes:
        if self.data is None:
            return _cstr(self.mechanism) + b"\xff\xff\xff\xff"
        return _cstr(self.mechanism) + _pack_i32(len(self.data)) + self.data


class SASLResponse(_FrontendData):
    """A later SASL message from the client, e.g. SCRAM's client-final."""

    __slots__ = ()
    type_code = b"p"


class GSSResponse(_FrontendData):
    """An opaque GSSAPI/SSPI token from the client."""

    __slots__ = ()
    type_code = b"p"


class BackendKeyData(Event):
    """The (process_id, secret_key) a client needs to cancel its queries."""

    __slots__ = ("process_id", "secret_key")
    type_code = b"K"
    backend = True
    process_id: int
    secret_key: bytes

    def __init__(self, process_id: int, secret_key: bytes) -> None:
        _set(self, "process_id", process_id)
        _set(self, "secret_key", bytes(secret_key))

    def _body(self) -> bytes:
        if not 4 <= len(self.secret_key) <= 256:
            raise LocalProtocolError("cancel keys are 4 to 256 bytes long")
        return _pack_u32(self.process_id) + self.secret_key


class NegotiateProtocolVersion(Event):
    """The server's newest supported version and the options it did not know."""

    __slots__ = ("newest_version", "unrecognized")
    type_code = b"v"
    backend = True
    newest_version: int
    unrecognized: tuple[str, ...]

    def __init__(self, newest_version: int, unrecognized: Iterable[str] = ()) -> None:
        _set(self, "newest_version", newest_version)
        _set(self, "unrecognized", tuple(unrecognized))

    def _body(self) -> bytes:
        return _pack_Ii(self.newest_version, len(self.unrecognized)) + b"".join(
            _cstr(o) for o in self.unrecognized
        )


class ParameterStatus(Event):
    __slots__ = ("name", "value")
    type_code = b"S"
    backend = True
    name: str
    value: str

    def __init__(self, name: str, value: str) -> None:
        _set(self, "name", name)
        _set(self, "value", value)

    def _body(self) -> bytes:
        return _cstr(self.name) + _cstr(self.value)


class ReadyForQuery(Event):
    """End of a request cycle; ``status`` is I (idle), T (in a block) or E (failed block)."""

    __slots__ = ("status",)
    type_code = b"Z"
    backend = True
    status: str

    def __init__(self, status: str) -> None:
        _set(self, "status", status)

    def _body(self) -> bytes:
        if self.status not in ("I", "T", "E"):
            raise LocalProtocolError(f"invalid transaction status {self.status!r}")
        return self.status.encode()
