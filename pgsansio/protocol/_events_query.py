"""Events of the query phases: simple and extended query, COPY, function call.

Split from ``_events.py`` (the base class, startup and authentication) only
to keep modules short; both are re-exported together by the package.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Self

from ._errors import LocalProtocolError
from ._events import (
    Event,
    Field,
    _cstr,
    _Empty,
    _FrontendData,
    _i16_array,
    _pack_count,
    _set,
    _values,
)

_pack_i16 = struct.Struct("!h").pack
_pack_i32 = struct.Struct("!i").pack
_pack_u32 = struct.Struct("!I").pack
_pack_field = struct.Struct("!IhIhih").pack


def _kind(kind: str) -> bytes:
    if kind not in ("S", "P"):
        raise LocalProtocolError(f"kind must be 'S' (statement) or 'P' (portal), not {kind!r}")
    return kind.encode()


# --- frontend: simple and extended query --------------------------------------


class Query(Event):
    """A simple-protocol query string; it may hold several statements."""

    __slots__ = ("sql",)
    type_code = b"Q"
    frontend = True
    sql: str

    def __init__(self, sql: str) -> None:
        _set(self, "sql", sql)

    def _body(self) -> bytes:
        return _cstr(self.sql)


class Parse(Event):
    __slots__ = ("name", "param_types", "query")
    type_code = b"P"
    frontend = True
    name: str
    query: str
    param_types: tuple[int, ...]

    def __init__(self, name: str, query: str, param_types: Iterable[int] = ()) -> None:
        _set(self, "name", name)
        _set(self, "query", query)
        _set(self, "param_types", tuple(param_types))

    def _body(self) -> bytes:
        types = self.param_types
        return (
            _cstr(self.name)
            + _cstr(self.query)
            + _pack_count(len(types))
            + b"".join(_pack_u32(t) for t in types)
        )


class Bind(Event):
    __slots__ = ("param_formats", "params", "portal", "result_formats", "statement")
    type_code = b"B"
    frontend = True
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]

    def __init__(
        self,
        portal: str,
        statement: str,
        param_formats: Iterable[int] = (),
        params: Iterable[bytes | None] = (),
        result_formats: Iterable[int] = (),
    ) -> None:
        _set(self, "portal", portal)
        _set(self, "statement", statement)
        _set(self, "param_formats", tuple(param_formats))
        _set(self, "params", tuple(params))
        _set(self, "result_formats", tuple(result_formats))

    def _body(self) -> bytes:
        return (
            _cstr(self.portal)
            + _cstr(self.statement)
            + _i16_array(self.param_formats)
            + _values(self.params)
            + _i16_array(self.result_formats)
        )


class _Target(Event):
    """Describe and Close: a kind (S statement / P portal) and a name."""

    __slots__ = ("kind", "name")
    frontend = True
    kind: str
    name: str

    def __init__(self, kind: str, name: str = "") -> None:
        _set(self, "kind", kind)
        _set(self, "name", name)

    def _body(self) -> bytes:
        return _kind(self.kind) + _cstr(self.name)


class Describe(_Target):
    __slots__ = ()
    type_code = b"D"


class Close(_Target):
    __slots__ = ()
    type_code = b"C"


class Execute(Event):
    """Run a portal; ``max_rows`` 0 means all rows, else PortalSuspended after that many."""

    __slots__ = ("max_rows", "portal")
    type_code = b"E"
    frontend = True
    portal: str
    max_rows: int

    def __init__(self, portal: str = "", max_rows: int = 0) -> None:
        _set(self, "portal", portal)
        _set(self, "max_rows", max_rows)

    def _body(self) -> bytes:
        return _cstr(self.portal) + _pack_i32(self.max_rows)


class _FrontendEmpty(_Empty):
    __slots__ = ()
    frontend = True

    def __init__(self) -> None:
        pass


class Sync(_FrontendEmpty):
    __slots__ = ()
    type_code = b"S"


class Flush(_FrontendEmpty):
    __slots__ = ()
    type_code = b"H"


class Terminate(_FrontendEmpty):
    __slots__ = ()
    type_code = b"X"


class MalformedMessage(Event):
    """A client's extended-query message (Parse, Bind, Describe, Execute, Close) that
    is framed correctly but whose body does not parse.

    PostgreSQL answers such a message with ERROR 08P01 and skips to the next Sync;
    the session goes on. So a server-role connection reads it as this event, not as a
    protocol error, and a proxy may forward it untouched (the server then answers it
    itself) or answer the error itself. A broken frame (a bad length, an unknown type)
    still raises: nothing after it can be trusted.
    """

    __slots__ = ("body", "code", "reason")
    frontend = True
    code: bytes  # the message's type byte
    body: bytes  # as received, without type byte and length
    reason: str  # what is wrong with it, for an ErrorResponse or a log

    def __init__(self, code: bytes, body: bytes, reason: str) -> None:
        _set(self, "code", code)
        _set(self, "body", body)
        _set(self, "reason", reason)

    def _body(self) -> bytes:
        return self.body

    def __bytes__(self) -> bytes:
        return self.code + _pack_i32(len(self.body) + 4) + self.body


class FunctionCall(Event):
    """The legacy fast-path call (libpq's large-object functions use it)."""

    __slots__ = ("arg_formats", "args", "function_oid", "result_format")
    type_code = b"F"
    frontend = True
    function_oid: int
    arg_formats: tuple[int, ...]
    args: tuple[bytes | None, ...]
    result_format: int

    def __init__(
        self,
        function_oid: int,
        arg_formats: Iterable[int] = (),
        args: Iterable[bytes | None] = (),
        result_format: int = 0,
    ) -> None:
        _set(self, "function_oid", function_oid)
        _set(self, "arg_formats", tuple(arg_formats))
        _set(self, "args", tuple(args))
        _set(self, "result_format", result_format)

    def _body(self) -> bytes:
        return (
            _pack_u32(self.function_oid)
            + _i16_array(self.arg_formats)
            + _values(self.args)
            + _pack_i16(self.result_format)
        )


# --- COPY (both directions) ----------------------------------------------------


class CopyData(_FrontendData):
    __slots__ = ()
    type_code = b"d"
    backend = True


class CopyDone(_Empty):
    __slots__ = ()
    type_code = b"c"
    frontend = True
    backend = True

    def __init__(self) -> None:
        pass


class CopyFail(Event):
    __slots__ = ("message",)
    type_code = b"f"
    frontend = True
    message: str

    def __init__(self, message: str) -> None:
        _set(self, "message", message)

    def _body(self) -> bytes:
        return _cstr(self.message)


class _CopyResponse(Event):
    """G / H / W: overall format (0 text, 1 binary) and per-column formats."""

    __slots__ = ("column_formats", "format")
    backend = True
    format: int
    column_formats: tuple[int, ...]

    def __init__(self, format: int = 0, column_formats: Iterable[int] = ()) -> None:
        _set(self, "format", format)
        _set(self, "column_formats", tuple(column_formats))

    def _body(self) -> bytes:
        if not 0 <= self.format <= 255:
            raise LocalProtocolError("the COPY format is one byte")
        return bytes((self.format,)) + _i16_array(self.column_formats)


class CopyInResponse(_CopyResponse):
    __slots__ = ()
    type_code = b"G"


class CopyOutResponse(_CopyResponse):
    __slots__ = ()
    type_code = b"H"


class CopyBothResponse(_CopyResponse):
    __slots__ = ()
    type_code = b"W"


# --- backend: results ------------------------------------------------------------


class _BackendEmpty(_Empty):
    __slots__ = ()
    backend = True

    def __init__(self) -> None:
        pass


class ParseComplete(_BackendEmpty):
    __slots__ = ()
    type_code = b"1"


class BindComplete(_BackendEmpty):
    __slots__ = ()
    type_code = b"2"


class CloseComplete(_BackendEmpty):
    __slots__ = ()
    type_code = b"3"


class NoData(_BackendEmpty):
    __slots__ = ()
    type_code = b"n"


class PortalSuspended(_BackendEmpty):
    __slots__ = ()
    type_code = b"s"


class EmptyQueryResponse(_BackendEmpty):
    __slots__ = ()
    type_code = b"I"


class CommandComplete(Event):
    """The command tag, e.g. ``INSERT 0 1``, ``SELECT 3``, ``COPY 10``."""

    __slots__ = ("tag",)
    type_code = b"C"
    backend = True
    tag: str

    def __init__(self, tag: str) -> None:
        _set(self, "tag", tag)

    def _body(self) -> bytes:
        return _cstr(self.tag)


class RowDescription(Event):
    __slots__ = ("fields",)
    type_code = b"T"
    backend = True
    fields: tuple[Field, ...]

    def __init__(self, fields: Iterable[Field | tuple[str, int, int, int, int, int, int]]) -> None:
        _set(self, "fields", tuple(Field(*f) for f in fields))

    def _body(self) -> bytes:
        parts = [_pack_count(len(self.fields))]
        for f in self.fields:
            parts.append(_cstr(f.name))
            parts.append(
                _pack_field(
                    f.table_oid,
                    f.column_number,
                    f.type_oid,
                    f.type_size,
                    f.type_modifier,
                    f.format,
                )
            )
        return b"".join(parts)


class DataRow(Event):
    """One row: each value is the column's bytes, or None for NULL."""

    __slots__ = ("values",)
    type_code = b"D"
    backend = True
    values: tuple[bytes | None, ...]

    def __init__(self, values: Iterable[bytes | None]) -> None:
        _set(self, "values", tuple(values))

    def _body(self) -> bytes:
        return _values(self.values)


class ParameterDescription(Event):
    __slots__ = ("type_oids",)
    type_code = b"t"
    backend = True
    type_oids: tuple[int, ...]

    def __init__(self, type_oids: Iterable[int]) -> None:
        _set(self, "type_oids", tuple(type_oids))

    def _body(self) -> bytes:
        return _pack_count(len(self.type_oids)) + b"".join(_pack_u32(t) for t in self.type_oids)


class FunctionCallResponse(Event):
    __slots__ = ("result",)
    type_code = b"V"
    backend = True
    result: bytes | None

    def __init__(self, result: bytes | None) -> None:
        _set(self, "result", None if result is None else bytes(result))

    def _body(self) -> bytes:
        if self.result is None:
            return b"\xff\xff\xff\xff"
        return _pack_i32(len(self.result)) + self.result


class NotificationResponse(Event):
    """A NOTIFY delivered to this session; may arrive while the session is idle."""

    __slots__ = ("channel", "payload", "process_id")
    type_code = b"A"
    backend = True
    process_id: int
    channel: str
    payload: str

    def __init__(self, process_id: int, channel: str, payload: str = "") -> None:
        _set(self, "process_id", process_id)
        _set(self, "channel", channel)
        _set(self, "payload", payload)

    def _body(self) -> bytes:
        return _pack_u32(self.process_id) + _cstr(self.channel) + _cstr(self.payload)


class _Report(Event):
    """ErrorResponse and NoticeResponse: (code, value) fields in wire order.

    Codes are single characters ("Error and Notice Message Fields"): S
    severity, V non-localized severity, C SQLSTATE, M message, D detail, H
    hint, P position ... Unknown codes are kept, as the docs ask.
    """

    __slots__ = ("fields",)
    backend = True
    fields: tuple[tuple[str, str], ...]

    def __init__(self, fields: Iterable[tuple[str, str]]) -> None:
        _set(self, "fields", tuple(fields))

    @classmethod
    def build(
        cls,
        sqlstate: str,
        message: str,
        severity: str = "ERROR",
        **extra: str,
    ) -> Self:
        """A report with severity, SQLSTATE and message, as a proxy answers.

        ``extra`` takes the other fields by code letter, e.g. ``D="detail"``.
        """
        fields = [("S", severity), ("V", severity), ("C", sqlstate), ("M", message)]
        fields.extend(extra.items())
        return cls(fields)

    def get(self, code: str, default: str | None = None) -> str | None:
        for key, value in self.fields:
            if key == code:
                return value
        return default

    @property
    def sqlstate(self) -> str | None:
        return self.get("C")

    @property
    def message(self) -> str | None:
        return self.get("M")

    @property
    def severity(self) -> str | None:
        # V is never localized; S is, and is the only one before 9.6.
        return self.get("V") or self.get("S")

    def _body(self) -> bytes:
        parts = []
        for code, value in self.fields:
            if len(code) != 1 or code == "\0":
                raise LocalProtocolError(f"field codes are single non-NUL characters: {code!r}")
            parts.append(code.encode("latin-1") + _cstr(value))
        parts.append(b"\0")
        return b"".join(parts)


class ErrorResponse(_Report):
    __slots__ = ()
    type_code = b"E"


class NoticeResponse(_Report):
    __slots__ = ()
    type_code = b"N"


class ConnectionClosed(Event):
    """Not a message: the peer closed its side of the connection (EOF)."""

    __slots__ = ()

    def __init__(self) -> None:
        pass

    def __bytes__(self) -> bytes:
        return b""
