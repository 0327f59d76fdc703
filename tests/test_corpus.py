"""Byte-for-byte conformance over the recorded corpus (``tests/corpus``).

Every trace is a real conversation between a real client and a real server.
For each one:

1. Both roles replay it at the recorded chunk boundaries: a server-role
   Connection reads the client's bytes and a client-role Connection reads the
   server's; every event one side reads is handed to the other side's
   ``send``, which must accept it and give back exactly the recorded bytes.
   Both sides must reach the end of the conversation without an error.
2. Each direction is read again at other chunk boundaries (whole, byte by
   byte, every 2-way split for short streams, seeded random splits), with the
   other direction's events sent in their recorded order; the events must be
   the same.
3. The proxy fast path reads the same bytes as spans; their data joined is the
   stream, and their events are the non-bulk events.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import pgsansio as pg
from pgsansio.conformance.trace import Trace, iter_corpus

CORPUS = Path(__file__).parent / "corpus"
BYTE_BY_BYTE_LIMIT = 64 * 1024
ALL_SPLITS_LIMIT = 2048
RANDOM_SPLITS = 24


def _load() -> list[tuple[str, dict[str, object], Trace]]:
    out = []
    for scenario_dir, traces in iter_corpus(CORPUS):
        meta = json.loads((scenario_dir / "meta.json").read_text())
        for trace in traces:
            out.append((f"{scenario_dir.name}/c{trace.connection}", meta, trace))
    return out


CASES = _load()
IDS = [case[0] for case in CASES]


@dataclass
class Reference:
    """What one replay at the recorded boundaries read, in global order."""

    events: dict[str, list[pg.Event]] = field(default_factory=lambda: {"F": [], "B": []})
    order: dict[str, list[int]] = field(default_factory=lambda: {"F": [], "B": []})
    sent: dict[str, list[bytes]] = field(default_factory=lambda: {"F": [], "B": []})
    consumed: dict[str, int] = field(default_factory=lambda: {"F": 0, "B": 0})
    tls: bool = False  # TLS or GSSAPI encryption was accepted: the rest is ciphertext
    truncated: set[str] = field(default_factory=set)

    def catch_up(self, conn: pg.Connection, direction: str, i: int, j: int) -> int:
        """Send the other side's events recorded before our event ``i``; return the new ``j``.

        DataRows change no state and replay() already sent each one, so they
        are left out: that keeps re-reading the 10 MB traces cheap.
        """
        other, other_order = self.events[_other(direction)], self.order[_other(direction)]
        limit = self.order[direction][i]
        while j < len(other) and other_order[j] < limit:
            if type(other[j]) is not pg.DataRow:
                conn.send(other[j])
            j += 1
        return j

    def add(self, direction: str, event: pg.Event, data: bytes) -> None:
        self.events[direction].append(event)
        self.order[direction].append(sum(len(v) for v in self.events.values()))
        self.sent[direction].append(data)
        self.consumed[direction] += len(data)


def _other(direction: str) -> str:
    return "B" if direction == "F" else "F"


def replay(trace: Trace, truncated: Iterable[str] = ()) -> Reference:
    """Replay at the recorded chunk boundaries through both roles."""
    readers = {"F": pg.Connection(pg.SERVER), "B": pg.Connection(pg.CLIENT)}
    ref = Reference()

    closed: set[str] = set()

    def drain() -> bool:
        progress = False
        for direction, conn in readers.items():
            while not ref.tls and direction not in closed:
                event = conn.next_event()
                if event is pg.NEED_DATA or event is pg.PAUSED:
                    break
                assert isinstance(event, pg.Event)
                data = readers[_other(direction)].send(event)
                ref.add(direction, event, data)
                progress = True
                if isinstance(event, (pg.SSLResponse, pg.GSSENCResponse)) and event.accepted:
                    ref.tls = True  # what follows is encrypted
                if isinstance(event, pg.ConnectionClosed):
                    closed.add(direction)
        return progress

    for chunk in trace.chunks:
        if ref.tls:
            break
        readers[chunk.direction].receive_data(b"" if chunk.eof else chunk.data)
        try:
            while drain():
                pass
        except pg.RemoteProtocolError as exc:
            # A stream cut inside a message (meta "truncated") must end like this.
            assert f"c{trace.connection}:{chunk.direction}" in truncated, exc
            assert "in the middle of a message" in str(exc)
            ref.truncated.add(chunk.direction)
            break
    return ref


@pytest.fixture(scope="module")
def references() -> dict[str, Reference]:
    return {}


def _reference(
    cache: dict[str, Reference], case_id: str, meta: dict[str, object], trace: Trace
) -> Reference:
    if case_id not in cache:
        truncated = meta.get("truncated", [])
        assert isinstance(truncated, list)
        cache[case_id] = replay(trace, truncated)
    return cache[case_id]


def test_corpus_is_broad() -> None:
    """At least 40 scenarios from at least 5 real clients, on PostgreSQL 15 and 18."""
    scenarios = {case[0].split("/")[0]: case[1] for case in CASES}
    clients = {str(meta["client"]).split()[0].lower() for meta in scenarios.values()}
    servers = {str(meta["server"]).split()[1].split(".")[0] for meta in scenarios.values()}
    assert len(scenarios) >= 40, sorted(scenarios)
    assert len(clients) >= 5, clients
    assert {"15", "18"} <= servers, servers


@pytest.mark.parametrize(("case_id", "meta", "trace"), CASES, ids=IDS)
def test_meta_checksums(case_id: str, meta: dict[str, object], trace: Trace) -> None:
    sums = meta.get("sha256")
    assert isinstance(sums, dict)
    for direction in "FB":
        key = f"c{trace.connection}:{direction}"
        if key in sums:
            assert hashlib.sha256(trace.stream(direction)).hexdigest() == sums[key]


@pytest.mark.parametrize(("case_id", "meta", "trace"), CASES, ids=IDS)
def test_replay_recorded_chunks(
    references: dict[str, Reference], case_id: str, meta: dict[str, object], trace: Trace
) -> None:
    ref = _reference(references, case_id, meta, trace)
    for direction in "FB":
        stream = trace.stream(direction)
        sent = b"".join(ref.sent[direction])
        # Re-encoding every event gives back the recorded bytes exactly.
        assert sent == stream[: len(sent)]
        if not ref.tls and direction not in ref.truncated:
            assert len(sent) == len(stream), (
                f"{len(stream) - len(sent)} bytes of {direction} unread"
            )
    if ref.tls and isinstance(ref.events["B"][-1], pg.SSLResponse):
        assert meta.get("tls"), "TLS was accepted in a scenario not marked tls"
    elif not ref.truncated and not ref.tls:
        # Both sides saw the whole conversation, to the close of whoever closed.
        closed = [
            d for d in "FB" if ref.events[d] and isinstance(ref.events[d][-1], pg.ConnectionClosed)
        ]
        assert closed == [d for d in "FB" if trace.eof(d)]


def _splits(stream: bytes, rng: random.Random) -> Iterator[list[bytes]]:
    """Whole; byte by byte and every 2-way split for short streams; seeded random splits.

    Long streams get fewer random splits: each split is a full replay, and the
    long traces (10 MB of DataRows) are about throughput more than framing.
    """
    n = len(stream)
    yield [stream]
    if n < 2:
        return
    small = n <= BYTE_BY_BYTE_LIMIT
    if small:
        yield [stream[i : i + 1] for i in range(n)]
    if n <= ALL_SPLITS_LIMIT:
        points: Iterable[int] = range(1, n)
    else:
        points = rng.sample(range(1, n), min(n - 1, 64 if small else 4))
    for p in points:
        yield [stream[:p], stream[p:]]
    for _ in range(RANDOM_SPLITS if small else 2):
        cuts = sorted(rng.sample(range(1, n), min(n - 1, rng.randint(2, 40))))
        yield [stream[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=True)]


def read_direction(ref: Reference, direction: str, chunks: list[bytes], eof: bool) -> None:
    """Read one direction at the given boundaries; the other side's events go in recorded order."""
    conn = pg.Connection(pg.SERVER if direction == "F" else pg.CLIENT)
    feed = iter([*chunks, b""] if eof else chunks)
    j = 0
    for i, expected in enumerate(ref.events[direction]):
        j = ref.catch_up(conn, direction, i, j)
        while True:
            event = conn.next_event()
            if event is not pg.NEED_DATA and event is not pg.PAUSED:
                break
            conn.receive_data(next(feed))
        assert event == expected, f"event {i}"


@pytest.mark.parametrize(("case_id", "meta", "trace"), CASES, ids=IDS)
def test_replay_other_boundaries(
    references: dict[str, Reference], case_id: str, meta: dict[str, object], trace: Trace
) -> None:
    ref = _reference(references, case_id, meta, trace)
    rng = random.Random(case_id)
    for direction in "FB":
        stream = trace.stream(direction)[: ref.consumed[direction]]
        if not stream:
            continue
        eof = trace.eof(direction) and not ref.tls and direction not in ref.truncated
        for chunks in _splits(stream, rng):
            read_direction(ref, direction, chunks, eof)


@pytest.mark.parametrize(("case_id", "meta", "trace"), CASES, ids=IDS)
def test_fast_path_spans(
    references: dict[str, Reference], case_id: str, meta: dict[str, object], trace: Trace
) -> None:
    ref = _reference(references, case_id, meta, trace)
    for direction in "FB":
        conn = pg.Connection(pg.SERVER if direction == "F" else pg.CLIENT)
        bulk_type = pg.CopyData if direction == "F" else (pg.DataRow, pg.CopyData)
        own = ref.events[direction]
        chunks = [
            c
            for c in trace.chunks
            if c.direction == direction and not (c.eof and direction in ref.truncated)
        ]
        data: list[bytes] = []
        seen: list[pg.Event] = []
        i = j = 0
        for chunk in chunks:
            if i >= len(own):
                break
            conn.receive_data(b"" if chunk.eof else chunk.data)
            while i < len(own):
                j = ref.catch_up(conn, direction, i, j)
                span = conn.next_span()
                if span is pg.NEED_DATA or span is pg.PAUSED:
                    break
                if isinstance(span, pg.ConnectionClosed):
                    seen.append(span)
                    i += 1
                    continue
                assert isinstance(span, pg.Span)
                data.append(span.data)
                seen.extend(span.events)
                # Every event of the span, and every bulk message skipped, is one of ours.
                i += len(span.events) + span.bulk
        expected = [e for e in own if not isinstance(e, bulk_type)]
        assert b"".join(data) == b"".join(ref.sent[direction])
        assert seen == expected
