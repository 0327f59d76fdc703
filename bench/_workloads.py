"""The benchmark workloads, shared by the pytest-benchmark suite and ``report.py``.

Each workload is measured beside a plain memory copy of the same bytes
(``bytearray(chunk)`` per chunk, what any recv loop pays at least), so figures
from a noisy machine still compare: the ratio to the copy moves far less than
the absolute MB/s.

Streams:

* **rows**: a 100,000-row result of ~100-byte DataRows, the proxy's hot path.
  Taken from the recorded corpus (``tests/corpus/*100k*``, server direction,
  at its recorded recv() boundaries) when present, otherwise synthesized and
  cut into 64 KiB chunks like a real recv loop.
* **mix**: pgbench -S with -M prepared: per transaction the client sends
  Bind/Execute/Sync and the server answers BindComplete, one DataRow,
  CommandComplete, ReadyForQuery. Small messages, so per-message cost rules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import struct
from collections.abc import Callable, Iterator

import pgsansio as pg
from pgsansio.conformance.trace import read_trace

__all__ = ["Workload", "mix_streams", "rows_stream", "workloads"]

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHUNK = 65536
ROWS = 100_000
TRANSACTIONS = 10_000

_hdr = struct.Struct("!ci").unpack_from


@dataclasses.dataclass(frozen=True)
class Stream:
    """One direction of traffic, chunked as a recv loop would see it."""

    chunks: list[bytes]
    messages: int
    source: str
    replies: int = 0  # ReadyForQuery messages in it: requests the reader must have sent

    @property
    def nbytes(self) -> int:
        return sum(map(len, self.chunks))


def _walk(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(type, start, end) of each whole typed message: a header-only scan."""
    pos, size = 0, len(data)
    while size - pos >= 5:
        code, length = _hdr(data, pos)
        end = pos + 1 + length
        if end > size:
            return
        yield code, pos, end
        pos = end


def _chunk(data: bytes, size: int = CHUNK) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _corpus_rows() -> Stream | None:
    """The recorded 100k-row result, cut to its query phase, if the corpus has one."""
    for path in sorted((ROOT / "tests" / "corpus").glob("*100k*/c*.jsonl*")):
        trace = read_trace(path)
        back = trace.stream("B")
        # An SSLRequest first: the server's one-byte answer precedes its messages.
        skip = 1 if trace.stream("F")[4:8] == b"\x04\xd2\x16\x2f" else 0
        codes = [(c, s + skip, e + skip) for c, s, e in _walk(back[skip:])]
        # The query phase starts after the ReadyForQuery that ends startup.
        first_z = next((e for c, _, e in codes if c == b"Z"), None)
        if first_z is None:
            continue
        rows = sum(1 for c, s, _ in codes if c == b"D" and s >= first_z)
        if rows < ROWS // 2:
            continue
        # Keep the recorded recv() boundaries, shifted to the query phase.
        chunks, pos = [], 0
        for chunk in trace.chunks_of("B"):
            end = pos + len(chunk)
            if end > first_z:
                chunks.append(chunk[max(first_z - pos, 0) :])
            pos = end
        messages = sum(1 for _, s, _ in codes if s >= first_z)
        replies = sum(1 for c, s, _ in codes if c == b"Z" and s >= first_z)
        return Stream(chunks, messages, f"corpus {path.parent.name}", replies)
    return None


def _synthetic_values() -> list[list[bytes | None]]:
    # psql "select g, md5(g::text), repeat('x', 40) ..." : 99-100 bytes a row.
    out: list[list[bytes | None]] = []
    for i in range(ROWS):
        digest = hashlib.md5(str(i).encode(), usedforsecurity=False).hexdigest().encode()
        out.append([str(i).encode(), digest, b"x" * (45 - len(str(i)))])
    return out


_ROWS_CACHE: dict[str, tuple[Stream, list[list[bytes | None]]]] = {}


def rows_stream() -> tuple[Stream, list[list[bytes | None]]]:
    """The 100k-row stream and its rows' values (for the encoding benchmarks)."""
    if "rows" in _ROWS_CACHE:
        return _ROWS_CACHE["rows"]
    stream = _corpus_rows()
    if stream is not None:
        data = b"".join(stream.chunks)
        values = [_decode_row(data[s + 5 : e]) for c, s, e in _walk(data) if c == b"D"]
    else:
        values = _synthetic_values()
        desc = pg.RowDescription([pg.Field("g", 0, 0, 23, 4), pg.Field("md5"), pg.Field("pad")])
        data = b"".join(
            [bytes(desc)]
            + [bytes(pg.DataRow(v)) for v in values]
            + [bytes(pg.CommandComplete(f"SELECT {ROWS}")), bytes(pg.ReadyForQuery("I"))]
        )
        stream = Stream(_chunk(data), ROWS + 3, "synthetic, 64 KiB chunks", 1)
    _ROWS_CACHE["rows"] = (stream, values)
    return stream, values


def _decode_row(body: bytes) -> list[bytes | None]:
    (n,) = struct.unpack_from("!h", body)
    pos, out = 2, list[bytes | None]()
    for _ in range(n):
        (size,) = struct.unpack_from("!i", body, pos)
        pos += 4
        if size < 0:
            out.append(None)
        else:
            out.append(body[pos : pos + size])
            pos += size
    return out


def mix_events() -> tuple[list[pg.Event], list[pg.Event]]:
    """pgbench -S -M prepared: (client events, server events) for the whole run."""
    front: list[pg.Event] = []
    back: list[pg.Event] = []
    for i in range(TRANSACTIONS):
        aid = str(1 + (i * 7919) % 100_000).encode()
        front += [pg.Bind("", "P_0", (), (aid,), ()), pg.Execute("", 0), pg.Sync()]
        back += [
            pg.BindComplete(),
            pg.DataRow([str(-i % 5000).encode()]),
            pg.CommandComplete("SELECT 1"),
            pg.ReadyForQuery("I"),
        ]
    return front, back


def mix_streams() -> tuple[Stream, Stream]:
    """The mix as (client->server, server->client) streams, in 64 KiB chunks."""
    front, back = mix_events()
    f = b"".join(map(bytes, front))
    b = b"".join(map(bytes, back))
    return (
        Stream(_chunk(f), len(front), "pgbench -S -M prepared", 0),
        Stream(_chunk(b), len(back), "pgbench -S -M prepared", TRANSACTIONS),
    )


# --- connections ready to read or write the streams ---------------------------------------


def client_reader(replies: int) -> pg.Connection:
    """A CLIENT-role connection in the query phase, ``replies`` requests in flight."""
    conn = pg.Connection(pg.CLIENT)
    conn.send(pg.StartupMessage({"user": "bench"}))
    conn.receive_data(bytes(pg.AuthenticationOk()) + bytes(pg.ReadyForQuery("I")))
    while conn.next_event() is not pg.NEED_DATA:
        pass
    for _ in range(max(replies, 1)):
        conn.send(pg.Sync())
    return conn


def server_reader() -> pg.Connection:
    """A SERVER-role connection in the query phase (reading client messages)."""
    conn = pg.Connection(pg.SERVER)
    conn.receive_data(bytes(pg.StartupMessage({"user": "bench"})))
    conn.next_event()
    for event in (pg.AuthenticationOk(), pg.ReadyForQuery("I")):
        conn.send(event)
    return conn


def server_writer(requests: int) -> pg.Connection:
    """A SERVER-role connection with ``requests`` Syncs received: it may send replies."""
    conn = server_reader()
    conn.receive_data(bytes(pg.Sync()) * requests)
    while conn.next_event() is not pg.NEED_DATA:
        pass
    return conn


# --- the measured loops -------------------------------------------------------------------


def copy_loop(chunks: list[bytes]) -> Callable[[], object]:
    """The floor: one copy of each chunk, what buffering the bytes costs."""

    def run() -> object:
        for chunk in chunks:
            bytearray(chunk)
        return None

    return run


def span_loop(conn: pg.Connection, chunks: list[bytes]) -> Callable[[], object]:
    """The proxy fast path: whole messages forwarded as spans."""

    def run() -> object:
        forwarded = 0
        receive, next_span, need = conn.receive_data, conn.next_span, pg.NEED_DATA
        for chunk in chunks:
            receive(chunk)
            while (span := next_span()) is not need:
                forwarded += len(span.data)
        return forwarded

    return run


def event_loop(conn: pg.Connection, chunks: list[bytes]) -> Callable[[], object]:
    """One event object per message."""

    def run() -> object:
        n = 0
        receive, next_event, need = conn.receive_data, conn.next_event, pg.NEED_DATA
        for chunk in chunks:
            receive(chunk)
            while next_event() is not need:
                n += 1
        return n

    return run


def encode_loop(events: list[list[bytes | None]]) -> Callable[[], object]:
    """``bytes(DataRow(values))`` per row: building and encoding, no checks."""

    def run() -> object:
        row = pg.DataRow
        return [bytes(row(v)) for v in events]

    return run


def send_loop(conn: pg.Connection, events: list[pg.Event]) -> Callable[[], object]:
    """``Connection.send`` per event: encoding plus the state machine's checks."""

    def run() -> object:
        send = conn.send
        return [send(e) for e in events]

    return run


def send_rows_loop(conn: pg.Connection, values: list[list[bytes | None]]) -> Callable[[], object]:
    def run() -> object:
        send, row = conn.send, pg.DataRow
        return [send(row(v)) for v in values]

    return run


@dataclasses.dataclass(frozen=True)
class Workload:
    """A named measurement: ``prepare()`` builds fresh state, the result runs once."""

    name: str
    group: str
    nbytes: int
    messages: int
    prepare: Callable[[], Callable[[], object]]
    baseline: bool = False


def _workloads() -> list[Workload]:
    rows, values = rows_stream()
    front, back = mix_streams()
    front_events, back_events = mix_events()
    r, f, b = rows.chunks, front.chunks, back.chunks
    row_bytes = sum(len(bytes(pg.DataRow(v))) for v in values)
    return [
        Workload(
            "rows: memory copy", "rows", rows.nbytes, rows.messages, lambda: copy_loop(r), True
        ),
        Workload(
            "rows: next_span (fast path)",
            "rows",
            rows.nbytes,
            rows.messages,
            lambda: span_loop(client_reader(rows.replies), r),
        ),
        Workload(
            "rows: next_event",
            "rows",
            rows.nbytes,
            rows.messages,
            lambda: event_loop(client_reader(rows.replies), r),
        ),
        Workload(
            "rows: bytes(DataRow(...))",
            "rows",
            row_bytes,
            len(values),
            lambda: encode_loop(values),
        ),
        Workload(
            "rows: Connection.send(DataRow)",
            "rows",
            row_bytes,
            len(values),
            lambda: send_rows_loop(server_writer(1), values),
        ),
        Workload(
            "mix F: memory copy", "mix-F", front.nbytes, front.messages, lambda: copy_loop(f), True
        ),
        Workload(
            "mix F: server next_span",
            "mix-F",
            front.nbytes,
            front.messages,
            lambda: span_loop(server_reader(), f),
        ),
        Workload(
            "mix F: server next_event",
            "mix-F",
            front.nbytes,
            front.messages,
            lambda: event_loop(server_reader(), f),
        ),
        Workload(
            "mix F: client send",
            "mix-F",
            front.nbytes,
            front.messages,
            lambda: send_loop(client_reader(0), front_events),
        ),
        Workload(
            "mix B: memory copy", "mix-B", back.nbytes, back.messages, lambda: copy_loop(b), True
        ),
        Workload(
            "mix B: client next_span",
            "mix-B",
            back.nbytes,
            back.messages,
            lambda: span_loop(client_reader(back.replies), b),
        ),
        Workload(
            "mix B: client next_event",
            "mix-B",
            back.nbytes,
            back.messages,
            lambda: event_loop(client_reader(back.replies), b),
        ),
        Workload(
            "mix B: server send",
            "mix-B",
            back.nbytes,
            back.messages,
            lambda: send_loop(server_writer(TRANSACTIONS), back_events),
        ),
    ]


_CACHE: list[Workload] = []


def workloads() -> list[Workload]:
    """Every workload, built once (building the streams takes a second or two)."""
    if not _CACHE:
        _CACHE.extend(_workloads())
    return _CACHE
