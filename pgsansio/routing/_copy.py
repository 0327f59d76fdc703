"""COPY ... FROM STDIN into a sharded table: which rows go to which shard.

For a pool with ``cross_shard = "fan_out"``, a ``COPY <table> (<columns>) FROM STDIN``
into the table of ``automatic_sharding_key`` is read here: :func:`plan_copy` says how
its rows are written (text or CSV, the options that change how a row is cut), and a
:class:`CopyRows` cuts the client's CopyData stream into whole rows, each with its key
field's value. The engine hashes the keys and sends each row to its shard (PgDog
splits COPY the same way; PgCat has no such thing).

Decisions:

- Only text and CSV. Binary COPY is refused (0A000), as is a COPY naming no column
  list (the pooler does not know the table's column order) or one whose list lacks
  the key column: the rows would have no key.
- Rows are cut where PostgreSQL cuts them: text rows end at a newline not escaped by
  a backslash; CSV rows at a newline outside quotes. A row may span CopyData
  messages; what is not a whole row yet is kept (one row at most: memory is bounded
  by the longest row). ``\\.`` alone on a line ends the data, as it does for
  PostgreSQL; what follows it is dropped.
- A header line (``HEADER``) goes to every shard, whose COPY skips (or, with ``HEADER
  MATCH``, checks) it, as it would without the pooler.
- Keys are read in UTF-8 (the client_encoding the pooler's key hashing assumes).
"""

from __future__ import annotations

from dataclasses import dataclass

from pglast import ast

from ._fanout import one_statement

__all__ = ["CopyPlan", "CopyRows", "plan_copy"]

_TEXT_ESCAPES = {ord("b"): 8, ord("f"): 12, ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("v"): 11}


@dataclass(frozen=True, slots=True)
class CopyPlan:
    """How the rows of a COPY FROM STDIN are written, and where its key is."""

    csv: bool
    key_index: int  # the key's field, counted from 0
    delimiter: bytes
    null: bytes
    quote: bytes
    escape: bytes
    header: bool


def _option(value: object) -> str | None:
    if isinstance(value, ast.String):
        return str(value.sval)
    if isinstance(value, ast.Boolean):
        return "true" if value.boolval else "false"
    if isinstance(value, ast.Integer):
        return str(value.ival)
    return None


def plan_copy(sql: str, key: str) -> CopyPlan | str | None:
    """How to split ``sql``'s rows by ``key`` (``table.column`` or ``*.column``) if it
    is a COPY FROM STDIN into that table; a message if it is one the pooler cannot
    split (refused: its rows would land on one shard); None if it is not one."""
    table, _, column = key.rpartition(".")
    stmt = one_statement(sql)
    if not isinstance(stmt, ast.CopyStmt) or not stmt.is_from or stmt.relation is None:
        return None
    if stmt.filename is not None or stmt.is_program:
        return None  # a file on the server: not data that passes through the pooler
    if table not in ("*", stmt.relation.relname):
        return None
    options: dict[str, str | None] = {}
    for d in stmt.options or ():
        options[str(d.defname).lower()] = _option(d.arg) if d.arg is not None else "true"
    fmt = (options.get("format") or "text").lower()
    if fmt == "binary":
        return "binary COPY is not split across shards: use text or CSV"
    cols = [c.sval for c in stmt.attlist or ()]
    if column not in cols:
        return (
            f'COPY into the sharded table "{stmt.relation.relname}" needs a column list '
            f'naming its sharding key column "{column}", so each row can go to its shard'
        )
    csv = fmt == "csv"
    delimiter = (options.get("delimiter") or ("," if csv else "\t")).encode()
    null = options.get("null")
    quote = (options.get("quote") or '"').encode()
    header = (options.get("header") or "false").lower() not in ("false", "off", "0")
    return CopyPlan(
        csv=csv,
        key_index=cols.index(column),
        delimiter=delimiter,
        null=(null if null is not None else ("" if csv else "\\N")).encode(),
        quote=quote,
        escape=(options.get("escape") or quote.decode()).encode(),
        header=header,
    )


class CopyRows:
    """Cuts a COPY stream into whole rows and reads each row's key field."""

    def __init__(self, plan: CopyPlan) -> None:
        self.plan = plan
        self._rest = b""
        self._header = plan.header
        self.ended = False  # ``\\.`` came: the rest is not data

    def feed(self, data: bytes) -> tuple[bytes | None, list[tuple[str | None, bytes]]]:
        """The header line (once, if any), and the whole rows in ``data`` and what
        came before it: (key, row with its newline); key None for a NULL key. Raises
        ValueError naming the problem for a key that cannot be read."""
        if self.ended:
            return None, []
        buf = self._rest + data if self._rest else data
        rows: list[tuple[str | None, bytes]] = []
        header: bytes | None = None
        start = 0
        while True:
            end = self._row_end(buf, start)
            if end < 0:
                break
            line = buf[start:end]
            row = buf[start : end + 1]
            start = end + 1
            body = line[:-1] if line.endswith(b"\r") else line
            if body == b"\\.":
                self.ended = True
                break
            if self._header:
                self._header = False
                header = row
                continue
            rows.append((self._key(body), row))
        self._rest = b"" if self.ended else buf[start:]
        return header, rows

    def finish(self) -> tuple[bytes | None, list[tuple[str | None, bytes]]]:
        """At CopyDone: a last row without its newline, as PostgreSQL takes it."""
        if self.ended or not self._rest:
            return None, []
        header, rows = self.feed(b"\n")
        return header, rows

    def _row_end(self, buf: bytes, start: int) -> int:
        """Where the row from ``start`` ends (its newline), or -1 if it is not whole."""
        plan = self.plan
        i = start
        while True:
            end = buf.find(b"\n", i)
            if end < 0:
                return -1
            if not plan.csv:
                slashes = 0
                j = end - 1
                while j >= start and buf[j] == 0x5C:
                    slashes += 1
                    j -= 1
                if slashes % 2 == 0:
                    return end
            elif not self._in_quotes(buf, start, end):
                return end
            i = end + 1

    def _in_quotes(self, buf: bytes, start: int, end: int) -> bool:
        plan = self.plan
        if plan.quote not in buf[start:end]:
            return False
        if plan.escape == plan.quote:
            return buf.count(plan.quote, start, end) % 2 == 1
        quote, escape = plan.quote[0], plan.escape[0]
        inside = False
        i = start
        while i < end:
            ch = buf[i]
            if inside and ch == escape and i + 1 < end and buf[i + 1] in (quote, escape):
                i += 2
                continue
            if ch == quote:
                inside = not inside
            i += 1
        return inside

    def _key(self, line: bytes) -> str | None:
        plan = self.plan
        raw, quoted = (self._csv_field if plan.csv else self._text_field)(line, plan.key_index)
        if not quoted and raw == plan.null:
            return None
        if not plan.csv and b"\\" in raw:
            raw = _text_unescape(raw)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("the sharding key is not valid UTF-8") from None

    def _text_field(self, line: bytes, index: int) -> tuple[bytes, bool]:
        delimiter = self.plan.delimiter
        if b"\\" not in line:
            fields = line.split(delimiter, index + 1)
            if len(fields) <= index:
                raise ValueError("a row has fewer fields than the column list")
            return fields[index], False
        field = 0
        begin = i = 0
        d = delimiter[0]
        while i < len(line):
            ch = line[i]
            if ch == 0x5C:
                i += 2
                continue
            if ch == d:
                if field == index:
                    return line[begin:i], False
                field += 1
                begin = i + 1
            i += 1
        if field == index:
            return line[begin:], False
        raise ValueError("a row has fewer fields than the column list")

    def _csv_field(self, line: bytes, index: int) -> tuple[bytes, bool]:
        plan = self.plan
        d, quote, escape = plan.delimiter[0], plan.quote[0], plan.escape[0]
        field = 0
        out = bytearray()
        quoted = inside = False
        i = 0
        while i <= len(line):
            if i == len(line) or (not inside and line[i] == d):
                if field == index:
                    return bytes(out), quoted
                field += 1
                out.clear()
                quoted = False
                i += 1
                if i > len(line):
                    break
                continue
            ch = line[i]
            if inside:
                if (
                    ch == escape
                    and i + 1 < len(line)
                    and line[i + 1] in (quote, escape)
                    and (escape != quote or line[i + 1] == quote)
                ):
                    out.append(line[i + 1])
                    i += 2
                    continue
                if ch == quote:
                    inside = False
                else:
                    out.append(ch)
            elif ch == quote:
                inside = quoted = True
            else:
                out.append(ch)
            i += 1
        raise ValueError("a row has fewer fields than the column list")


def _text_unescape(raw: bytes) -> bytes:
    """A text-format field's backslash escapes, decoded as COPY decodes them."""
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        ch = raw[i]
        if ch != 0x5C or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = raw[i + 1]
        if nxt in _TEXT_ESCAPES:
            out.append(_TEXT_ESCAPES[nxt])
            i += 2
        elif 0x30 <= nxt <= 0x37:
            j = i + 1
            while j < n and j < i + 4 and 0x30 <= raw[j] <= 0x37:
                j += 1
            out.append(int(raw[i + 1 : j], 8) & 0xFF)
            i = j
        elif nxt == ord("x") and i + 2 < n and chr(raw[i + 2]) in "0123456789abcdefABCDEF":
            j = i + 2
            while j < n and j < i + 4 and chr(raw[j]) in "0123456789abcdefABCDEF":
                j += 1
            out.append(int(raw[i + 2 : j], 16))
            i = j
        else:
            out.append(nxt)
            i += 2
    return bytes(out)
