"""Read and write recorded PostgreSQL conversations ("traces").

A trace is one TCP connection between a PostgreSQL client and a server, recorded byte
for byte by :mod:`pgsansio.conformance.recorder` (or any other tool that speaks this format). The
conformance tests replay traces through the protocol state machines at the *recorded*
chunk boundaries as well as at arbitrary ones, so a trace keeps every ``recv()`` chunk
separately, in arrival order, with both directions interleaved.

The format is deliberately boring so that tools in any language can read it:

* one file per connection, JSON Lines, UTF-8; ``.jsonl`` or gzip-compressed
  ``.jsonl.gz`` (used for traces with more than about 256 KiB of payload, because
  base64 inside JSON costs a third on top of the raw bytes);
* line 1 is a header object::

      {"format": "pgsansio-trace", "version": 1, "connection": 1, ...free metadata}

* every further line is one chunk, in the order the recorder received them::

      {"d": "F", "t_us": 1234, "b64": "AAAACATSFi8="}
      {"d": "B", "t_us": 1310, "eof": true}

  ``d`` is ``"F"`` (frontend: client to server) or ``"B"`` (backend: server to client),
  ``t_us`` is an integer number of microseconds since the recording (scenario) started
  and never decreases from one line to the next, ``b64`` is the chunk in standard
  base64 (never empty: an empty read means end of stream, which is written as
  ``"eof": true``). After a direction's ``eof`` line no more data follows in that
  direction.

Readers ignore keys they do not know, so later revisions of version 1 may add keys;
anything incompatible bumps ``version`` and old readers refuse the file with a clear
message instead of misreading it.

Only the standard library is used: this module is imported by library users, by the test
suite and by the corpus tools, none of which should pull in dependencies for it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import gzip
import io
import json
import os
import pathlib
import re
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import IO, Any, Final, Literal

__all__ = [
    "BACKEND",
    "FORMAT",
    "FRONTEND",
    "VERSION",
    "Chunk",
    "Direction",
    "Trace",
    "TraceWriter",
    "iter_corpus",
    "read_trace",
    "trace_filename",
]

FORMAT: Final = "pgsansio-trace"
"""Value of the header's ``format`` key; lets a reader reject unrelated JSON files."""

VERSION: Final = 1
"""The format version this module writes and the highest it reads."""

FRONTEND: Final = "F"
"""Direction of bytes sent by the client (the frontend) to the server."""

BACKEND: Final = "B"
"""Direction of bytes sent by the server (the backend) to the client."""

Direction = Literal["F", "B"]

_DIRECTIONS: Final = (FRONTEND, BACKEND)
_RESERVED_HEADER_KEYS: Final = ("format", "version", "connection")
_GZIP_MAGIC: Final = b"\x1f\x8b"
_TRACE_NAME = re.compile(r"^c(\d+)\.jsonl(\.gz)?$")


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class Chunk:
    """One ``recv()`` result of one direction, or that direction's end of stream.

    ``data`` is empty exactly when ``eof`` is true.
    """

    direction: Direction
    t_us: int
    data: bytes
    eof: bool = False

    def __repr__(self) -> str:
        # Chunks reach 256 KiB; a full repr would drown test failure output.
        if self.eof:
            return f"Chunk({self.direction!r}, t_us={self.t_us}, eof=True)"
        head = self.data[:32]
        more = f"...+{len(self.data) - 32}" if len(self.data) > 32 else ""
        return f"Chunk({self.direction!r}, t_us={self.t_us}, data={head!r}{more})"


def trace_filename(connection: int, *, compressed: bool = False) -> str:
    """Return the conventional file name of a connection's trace (``c1.jsonl``).

    The corpus relies on this naming to order traces by connection id and to tell them
    apart from ``meta.json`` and other files kept next to them.
    """
    return f"c{connection}.jsonl" + (".gz" if compressed else "")


def _check_direction(direction: str) -> Direction:
    if direction == FRONTEND:
        return FRONTEND
    if direction == BACKEND:
        return BACKEND
    raise ValueError(f"direction must be 'F' or 'B', not {direction!r}")


def _dumps(obj: Mapping[str, Any]) -> str:
    # Compact separators keep big traces small; ensure_ascii keeps the files pure ASCII
    # so that byte-level diffs of re-recorded corpora stay readable.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True)


class TraceWriter:
    """Write one connection's trace, line by line, as chunks arrive.

    ``path`` ending in ``.gz`` is always written gzip-compressed. With
    ``compress_above`` set and a plain ``.jsonl`` path, the trace is written plain and
    compressed into ``<path>.gz`` on :meth:`close` only if its payload exceeded that many
    bytes: the recorder cannot know in advance how big a connection will get, and small
    traces stay greppable and diffable. :attr:`path` names the final file after close.

    Gzip output is reproducible (no timestamp or file name in the gzip header), so the
    same chunks always give the same file.

    The writer checks what it is given (direction, non-empty data, non-decreasing time,
    nothing after a direction's EOF), so a buggy recorder fails at once instead of
    producing a corpus that every reader later rejects.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        connection: int,
        meta: Mapping[str, Any] | None = None,
        *,
        compress_above: int | None = None,
    ) -> None:
        if connection < 1:
            raise ValueError(f"connection ids start at 1, got {connection}")
        self.path = pathlib.Path(path)
        self.connection = connection
        self.payload_bytes = 0
        """Total data bytes written so far, both directions."""
        self._compress_above = compress_above
        self._gzip_now = self.path.name.endswith(".gz")
        self._last_t_us = 0
        self._eof: set[str] = set()
        self._closed = False
        header: dict[str, Any] = {"format": FORMAT, "version": VERSION, "connection": connection}
        for key, value in (meta or {}).items():
            if key in _RESERVED_HEADER_KEYS:
                raise ValueError(f"metadata key {key!r} is reserved by the trace format")
            header[key] = value
        self._raw: io.BufferedIOBase = open(self.path, "wb")  # noqa: SIM115 - see close()
        self._out: io.BufferedIOBase = (
            gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0)
            if self._gzip_now
            else self._raw
        )
        self._write(header)

    def _write(self, obj: Mapping[str, Any]) -> None:
        self._out.write(_dumps(obj).encode("ascii") + b"\n")

    def _check(self, direction: str, t_us: int) -> Direction:
        if self._closed:
            raise ValueError(f"{self.path}: trace writer is closed")
        d = _check_direction(direction)
        if d in self._eof:
            raise ValueError(f"{self.path}: direction {d} already reached EOF")
        if t_us < self._last_t_us:
            raise ValueError(f"{self.path}: t_us went backwards ({t_us} < {self._last_t_us})")
        self._last_t_us = t_us
        return d

    def chunk(self, direction: str, data: bytes | bytearray | memoryview, t_us: int) -> None:
        """Append one received chunk (``data`` must not be empty: use :meth:`eof`)."""
        d = self._check(direction, t_us)
        if not data:
            raise ValueError(f"{self.path}: empty chunk; record end of stream with eof()")
        self.payload_bytes += len(data)
        self._write({"d": d, "t_us": t_us, "b64": base64.b64encode(data).decode("ascii")})

    def eof(self, direction: str, t_us: int) -> None:
        """Record that ``direction``'s sender closed (or shut down) its side."""
        d = self._check(direction, t_us)
        self._eof.add(d)
        self._write({"d": d, "t_us": t_us, "eof": True})

    def flush(self) -> None:
        """Push buffered lines to the operating system (the gzip stream stays open)."""
        self._out.flush()
        if self._out is not self._raw:
            self._raw.flush()

    def close(self) -> None:
        """Finish the file, compressing it now if it outgrew ``compress_above``."""
        if self._closed:
            return
        self._closed = True
        if self._out is not self._raw:
            self._out.close()
        self._raw.close()
        if (
            not self._gzip_now
            and self._compress_above is not None
            and self.payload_bytes > self._compress_above
        ):
            target = self.path.with_name(self.path.name + ".gz")
            with (
                open(self.path, "rb") as src,
                open(target, "wb") as raw,
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as dst,
            ):
                while block := src.read(1 << 20):
                    dst.write(block)
            self.path.unlink()
            self.path = target

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclasses.dataclass(slots=True)
class Trace:
    """A trace read back from disk: its header and every chunk in arrival order."""

    header: dict[str, Any]
    chunks: list[Chunk]
    path: pathlib.Path | None = None

    @property
    def connection(self) -> int:
        """The connection id from the header (1, 2, ... in the recorder's accept order)."""
        value = self.header["connection"]
        assert isinstance(value, int)
        return value

    def stream(self, direction: str) -> bytes:
        """All bytes one side sent, joined: what a parser sees if it ignores chunking."""
        d = _check_direction(direction)
        return b"".join(c.data for c in self.chunks if c.direction == d)

    def chunks_of(self, direction: str) -> list[bytes]:
        """One direction's data chunks as the recorder received them (EOF left out)."""
        d = _check_direction(direction)
        return [c.data for c in self.chunks if c.direction == d and not c.eof]

    def eof(self, direction: str) -> bool:
        """Whether the trace saw ``direction``'s sender close its side."""
        d = _check_direction(direction)
        return any(c.eof for c in self.chunks if c.direction == d)


_Fail = Callable[[int, str], ValueError]


def _open_text(path: pathlib.Path) -> IO[str]:
    # Sniff the gzip magic instead of trusting the suffix: a file renamed by hand, or a
    # tool that compresses without renaming, still reads.
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == _GZIP_MAGIC:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="\n")
    return open(path, encoding="utf-8", newline="\n")


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Read and validate one trace file (plain or gzip-compressed JSON Lines).

    Raises :class:`ValueError` naming the file and the line for anything that is not a
    valid trace of a version this module understands: a wrong or missing header, a line
    that is not JSON, an unknown direction, a bad base64 payload, time going backwards,
    or data after a direction's EOF.
    """
    p = pathlib.Path(path)

    def fail(lineno: int, why: str) -> ValueError:
        return ValueError(f"{p}: line {lineno}: {why}")

    chunks: list[Chunk] = []
    header: dict[str, Any] | None = None
    last_t = 0
    eof_seen: set[str] = set()
    try:
        with _open_text(p) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    raise fail(lineno, "empty line")
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise fail(lineno, f"not valid JSON ({e.msg} at column {e.colno})") from e
                if not isinstance(obj, dict):
                    raise fail(lineno, f"expected a JSON object, got {type(obj).__name__}")
                if header is None:
                    header = _check_header(obj, lineno, fail)
                    continue
                chunk = _check_chunk(obj, lineno, fail)
                if chunk.t_us < last_t:
                    raise fail(lineno, f"t_us {chunk.t_us} is earlier than the previous {last_t}")
                if chunk.direction in eof_seen:
                    raise fail(lineno, f"direction {chunk.direction} continues after its eof")
                if chunk.eof:
                    eof_seen.add(chunk.direction)
                last_t = chunk.t_us
                chunks.append(chunk)
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"{p}: unreadable trace file ({e})") from e
    if header is None:
        raise ValueError(f"{p}: line 1: empty file, expected a {FORMAT} header")
    return Trace(header=header, chunks=chunks, path=p)


def _check_header(obj: dict[str, Any], lineno: int, fail: _Fail) -> dict[str, Any]:
    if obj.get("format") != FORMAT:
        raise fail(lineno, f'not a trace header: expected "format": {FORMAT!r}')
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise fail(lineno, f'header "version" must be a positive integer, not {version!r}')
    if version > VERSION:
        raise fail(
            lineno,
            f"trace format version {version} is newer than this reader (version {VERSION}); "
            "upgrade pgsansio to read it",
        )
    conn = obj.get("connection")
    if not isinstance(conn, int) or isinstance(conn, bool) or conn < 1:
        raise fail(lineno, f'header "connection" must be an integer >= 1, not {conn!r}')
    return obj


def _check_chunk(obj: dict[str, Any], lineno: int, fail: _Fail) -> Chunk:
    d = obj.get("d")
    if d not in _DIRECTIONS:
        raise fail(lineno, f'"d" must be "F" or "B", not {d!r}')
    direction: Direction = FRONTEND if d == FRONTEND else BACKEND
    t_us = obj.get("t_us")
    if not isinstance(t_us, int) or isinstance(t_us, bool) or t_us < 0:
        raise fail(lineno, f'"t_us" must be a non-negative integer, not {t_us!r}')
    has_data = "b64" in obj
    eof = obj.get("eof", False)
    if eof is not True and eof is not False:
        raise fail(lineno, f'"eof" must be true or false, not {eof!r}')
    if has_data == eof:
        raise fail(lineno, 'a chunk line needs exactly one of "b64" and "eof": true')
    if eof:
        return Chunk(direction, t_us, b"", True)
    b64 = obj["b64"]
    if not isinstance(b64, str) or not b64:
        raise fail(lineno, '"b64" must be a non-empty base64 string')
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise fail(lineno, f'"b64" is not valid base64 ({e})') from e
    return Chunk(direction, t_us, data, False)


def iter_corpus(root: str | os.PathLike[str]) -> Iterator[tuple[pathlib.Path, list[Trace]]]:
    """Yield ``(scenario_dir, traces)`` for every scenario directory under ``root``.

    Scenario directories are the direct subdirectories of ``root`` holding at least one
    ``c<N>.jsonl`` or ``c<N>.jsonl.gz`` file; they come in name order and their traces in
    connection order, so test ids and failure messages are stable. Hidden directories
    (a leading ``.``, such as a recording still being staged) are skipped.
    """
    base = pathlib.Path(root)
    for sub in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        numbered: list[tuple[int, pathlib.Path]] = []
        for f in sub.iterdir():
            m = _TRACE_NAME.match(f.name)
            if m and f.is_file():
                numbered.append((int(m.group(1)), f))
        if not numbered:
            continue
        numbered.sort()
        yield sub, [read_trace(f) for _, f in numbered]
