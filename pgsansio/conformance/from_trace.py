"""Turn a recorded trace (:mod:`.trace`) into a replayable scenario (:mod:`.scenario`).

The client's messages are written as ``>`` lines and the server's answers as ``<`` lines,
both rendered the way the runner renders what it receives, so a converted conversation
replays against any target. The startup and authentication exchange is not copied: the
runner redoes it for the target's method (a recorded SCRAM exchange cannot be replayed);
from the first ReadyForQuery on, every message is kept. Error and notice texts become
``*`` (they vary by version and locale; severity and SQLSTATE stay).

A trace that never completes a login, uses replication or TLS, or carries messages this
converter cannot write is refused with :class:`TraceNotConvertible`, naming why.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping

from pgsansio import protocol as pg
from pgsansio.protocol._readers import BACKEND_READERS, FRONTEND_READERS

from .scenario import quote, render_backend
from .trace import BACKEND, FRONTEND, Trace

__all__ = ["TraceNotConvertible", "convert"]

_hdr = struct.Struct("!ci").unpack_from


class TraceNotConvertible(ValueError):
    """The trace cannot become a scenario; the message says why."""


def _messages(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a stream of typed messages into (type, body); a cut-off tail is dropped."""
    out = []
    pos = 0
    while pos + 5 <= len(data):
        code, length = _hdr(data, pos)
        out.append((code, data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return out


def _startup_end(data: bytes, answers: bytes) -> tuple[int, int]:
    """Offsets of the first typed frontend message and of the first backend message.

    An SSLRequest or GSSENCRequest the server refused (``N``) is skipped with its
    one-byte answer: the conversation after it is plaintext and replays as any other.
    """
    pos = back = 0
    while pos + 8 <= len(data):
        (length,) = struct.unpack_from("!i", data, pos)
        (code,) = struct.unpack_from("!i", data, pos + 4)
        pos += length
        if code in (80877103, 80877104):  # SSLRequest / GSSENCRequest
            if answers[back : back + 1] != b"N":
                raise TraceNotConvertible("the conversation is encrypted (TLS or GSSAPI)")
            back += 1
            continue
        if code >> 16 == 3:
            return int(pos), back
    raise TraceNotConvertible("no StartupMessage in the trace")


def _value(v: bytes | None) -> str:
    if v is None:
        return "NULL"
    try:
        text = v.decode("utf-8")
    except UnicodeDecodeError:
        return "x'" + v.hex() + "'"
    return quote(text) if text.isprintable() or not text else "x'" + v.hex() + "'"


def _send_line(event: pg.Event) -> str:
    if isinstance(event, pg.Query):
        return f"> Query {quote(event.sql)}"
    if isinstance(event, pg.Parse):
        return " ".join(
            [f"> Parse {quote(event.name)} {quote(event.query)}", *map(str, event.param_types)]
        ).rstrip()
    if isinstance(event, pg.Bind):
        fmts = event.param_formats
        vals = []
        for k, v in enumerate(event.params):
            fmt = fmts[k] if len(fmts) > 1 else (fmts[0] if fmts else 0)
            if v is not None and fmt == 1:
                vals.append("x'" + v.hex() + "'")
            elif v is not None and fmt == 0:
                try:
                    vals.append(quote(v.decode("utf-8")))
                except UnicodeDecodeError as e:
                    raise TraceNotConvertible("a text parameter that is not UTF-8") from e
            else:
                vals.append("NULL")
        res = (
            ["results=" + ",".join(map(str, event.result_formats))] if event.result_formats else []
        )
        return " ".join([f"> Bind {quote(event.portal)} {quote(event.statement)}", *vals, *res])
    if isinstance(event, pg.Execute):
        return f"> Execute {quote(event.portal)} {event.max_rows}"
    if isinstance(event, pg.Describe | pg.Close):
        return f"> {type(event).__name__} {event.kind} {quote(event.name)}"
    if isinstance(event, pg.Sync | pg.Flush | pg.Terminate | pg.CopyDone):
        return f"> {type(event).__name__}"
    if isinstance(event, pg.CopyData):
        return f"> CopyData {_value(event.data)}"
    if isinstance(event, pg.FunctionCall):
        vals = []
        for k, v in enumerate(event.args):
            fmts = event.arg_formats
            fmt = fmts[k] if len(fmts) > 1 else (fmts[0] if fmts else 0)
            vals.append("NULL" if v is None else ("x'" + v.hex() + "'" if fmt else _value(v)))
        res = [f"results={event.result_format}"] if event.result_format else []
        return " ".join([f"> FunctionCall {event.function_oid}", *vals, *res])
    if isinstance(event, pg.CopyFail):
        return f"> CopyFail {quote(event.message)}"
    raise TraceNotConvertible(f"cannot write {type(event).__name__} as a scenario line")


def _expect_line(event: pg.Event) -> str:
    line = render_backend(event)
    if isinstance(event, pg.ErrorResponse | pg.NoticeResponse):
        line = " ".join(line.split(" ")[:3]) + " *"
    return f"< {line}"


def _own_tables(sql: str, tables: Mapping[str, str]) -> str:
    for name in tables:
        sql = re.sub(rf"(?<![.\w]){re.escape(name)}\b", "{schema}." + name, sql)
    return sql


_SESSION_SQL = re.compile(
    r"\b(SET|RESET|DISCARD|LISTEN|UNLISTEN|PREPARE|DEALLOCATE|DECLARE|TEMP|TEMPORARY|"
    r"pg_advisory_lock)\b",
    re.IGNORECASE,
)


def pooling_of(events: list[pg.Event]) -> str:
    """``session`` if the conversation leans on session state, else ``transaction``.

    Session state here: a named prepared statement, the unnamed one bound in a later
    batch than it was parsed in, or SQL that sets, listens, prepares or declares.
    A transaction pooler is judged only on the conversations that need none of it.
    """
    parsed_here = False
    for e in events:
        if isinstance(e, pg.Parse):
            if e.name:
                return "session"
            parsed_here = True
        elif isinstance(e, pg.Bind) and (e.statement or not parsed_here):
            return "session"
        elif isinstance(e, pg.Sync):
            parsed_here = False
        sql = e.sql if isinstance(e, pg.Query) else e.query if isinstance(e, pg.Parse) else ""
        if _SESSION_SQL.search(sql):
            return "session"
    return "transaction"


def convert(
    trace: Trace,
    scenario_id: str,
    area: str = "corpus",
    tables: Mapping[str, str] | None = None,
) -> str:
    """The scenario text (without the file header line) of one trace.

    ``tables`` maps the names of tables the recording's harness created beforehand to
    their column lists: the scenario creates each one the conversation mentions in a
    schema of its own, and its SQL is rewritten to name them there.
    """
    front = trace.stream(FRONTEND)
    back = trace.stream(BACKEND)
    if trace.header.get("replication") or b"replication\0" in front[:2000]:
        raise TraceNotConvertible("a replication connection")
    start, skip = _startup_end(front, back)
    # The answers start after the first ReadyForQuery (the end of the login).
    answers = _messages(back[skip:])
    first_rfq = next((k for k, (c, _) in enumerate(answers) if c == b"Z"), None)
    if first_rfq is None:
        raise TraceNotConvertible("the login never completed (no ReadyForQuery)")
    # Skip the client's authentication messages: everything before its first non-'p'.
    sent = _messages(front[start:])
    while sent and sent[0][0] == b"p":
        sent.pop(0)
    lines: list[str] = []
    pending: list[str] = []
    # Interleave by chunk order: walk the trace, sending client messages and then the
    # answers that arrived after them. Simpler and as faithful for a replay: all client
    # messages up to a Sync/Query/CopyDone/Flush boundary, then the answers up to the
    # next ReadyForQuery (or, after a Flush, whatever came before the next client send).
    try:
        backend_events = [
            BACKEND_READERS[c](b) for c, b in answers[first_rfq + 1 :] if c in BACKEND_READERS
        ]
        frontend_events = [FRONTEND_READERS[c](b) for c, b in sent if c in FRONTEND_READERS]
    except pg.ProtocolError as e:
        raise TraceNotConvertible(
            f"the recording holds a message that does not decode: {e}"
        ) from e
    used = {
        n: cols
        for n, cols in (tables or {}).items()
        if any(
            re.search(rf"\b{re.escape(n)}\b", e.sql if isinstance(e, pg.Query) else e.query)
            for e in frontend_events
            if isinstance(e, pg.Query | pg.Parse)
        )
    }
    for name, cols in used.items():
        lines += [
            f"> Query {quote(f'CREATE TABLE {{schema}}.{name} ({cols})')}",
            '< CommandComplete "CREATE TABLE"',
            "< ReadyForQuery I",
        ]
    frontend_events = [
        pg.Query(_own_tables(e.sql, used))
        if isinstance(e, pg.Query)
        else pg.Parse(e.name, _own_tables(e.query, used), e.param_types)
        if isinstance(e, pg.Parse)
        else e
        for e in frontend_events
    ]
    bi = 0
    for fe in frontend_events:
        line = _send_line(fe)
        pending.append(line)
        if isinstance(
            fe, pg.Sync | pg.Query | pg.CopyDone | pg.CopyFail | pg.Terminate | pg.FunctionCall
        ):
            lines.extend(pending)
            pending.clear()
            if isinstance(fe, pg.Terminate):
                lines.append("< EOF")
                break
            while bi < len(backend_events):
                be = backend_events[bi]
                bi += 1
                if isinstance(be, pg.ParameterStatus):
                    continue
                lines.append(_expect_line(be))
                if isinstance(be, pg.ReadyForQuery | pg.CopyInResponse):
                    break
    if pending or bi < len(backend_events):
        raise TraceNotConvertible("the conversation does not split into request/answer turns")
    head = [
        f"=== {scenario_id}",
        f"area: {area}",
        f"pooling: {pooling_of(frontend_events)}",
        f"description: Replays the recorded {trace.header.get('scenario', scenario_id)} "
        "conversation.",
        f"origin: {trace.path.parent.name if trace.path else scenario_id}",
        "",
    ]
    return "\n".join(head + lines) + "\n"
