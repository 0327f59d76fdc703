"""The trace format (pgsansio.conformance.trace): round trips, compression, the corpus."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from pathlib import Path

import pytest

from pgsansio.conformance.trace import (
    Chunk,
    Trace,
    TraceWriter,
    iter_corpus,
    read_trace,
    trace_filename,
)

CORPUS = Path(__file__).parent / "corpus"


def write_sample(path: Path, **kwargs: object) -> Path:
    with TraceWriter(path, 3, {"scenario": "sample", "note": "é"}, **kwargs) as w:  # type: ignore[arg-type]
        w.chunk("F", b"\x00\x00\x00\x08\x04\xd2\x16\x2f", 10)
        w.chunk("B", b"N", 12)
        w.chunk("F", bytearray(b"hello"), 12)
        w.chunk("F", memoryview(b"world"), 20)
        w.eof("F", 30)
        w.chunk("B", b"bye", 31)
        w.eof("B", 31)
    return w.path


def test_round_trip(tmp_path: Path) -> None:
    path = write_sample(tmp_path / "c3.jsonl")
    assert path == tmp_path / "c3.jsonl"
    trace = read_trace(path)
    assert trace.header == {
        "format": "pgsansio-trace",
        "version": 1,
        "connection": 3,
        "scenario": "sample",
        "note": "é",
    }
    assert trace.connection == 3
    assert trace.path == path
    assert trace.chunks == [
        Chunk("F", 10, b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),
        Chunk("B", 12, b"N"),
        Chunk("F", 12, b"hello"),
        Chunk("F", 20, b"world"),
        Chunk("F", 30, b"", eof=True),
        Chunk("B", 31, b"bye"),
        Chunk("B", 31, b"", eof=True),
    ]
    assert trace.stream("F") == b"\x00\x00\x00\x08\x04\xd2\x16\x2fhelloworld"
    assert trace.stream("B") == b"Nbye"
    assert trace.chunks_of("F") == [b"\x00\x00\x00\x08\x04\xd2\x16\x2f", b"hello", b"world"]
    assert trace.chunks_of("B") == [b"N", b"bye"]
    assert trace.eof("F") and trace.eof("B")


def test_file_is_plain_ascii_json_lines(tmp_path: Path) -> None:
    lines = write_sample(tmp_path / "c3.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert all(line.isascii() for line in lines)
    objs = [json.loads(line) for line in lines[:-1]]
    assert objs[0]["format"] == "pgsansio-trace"
    assert objs[1] == {
        "d": "F",
        "t_us": 10,
        "b64": base64.b64encode(b"\0\0\0\x08\x04\xd2\x16/").decode(),
    }
    assert objs[5] == {"d": "F", "t_us": 30, "eof": True}


def test_gzip_by_suffix_is_reproducible(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write_sample(tmp_path / "a" / "c3.jsonl.gz")
    b = write_sample(tmp_path / "b" / "c3.jsonl.gz")
    plain = write_sample(tmp_path / "c3.jsonl")
    assert a.read_bytes()[:2] == b"\x1f\x8b"
    assert a.read_bytes() == b.read_bytes(), "gzip output must not embed time or name"
    assert gzip.decompress(a.read_bytes()) == plain.read_bytes()
    assert read_trace(a).chunks == read_trace(plain).chunks


def test_compress_above_threshold(tmp_path: Path) -> None:
    small = write_sample(tmp_path / "c1.jsonl", compress_above=100)
    assert small.name == "c1.jsonl" and small.exists()
    with TraceWriter(tmp_path / "c2.jsonl", 2, compress_above=100) as w:
        w.chunk("B", b"x" * 101, 0)
    assert w.path == tmp_path / "c2.jsonl.gz"
    assert not (tmp_path / "c2.jsonl").exists()
    assert read_trace(w.path).stream("B") == b"x" * 101
    assert w.payload_bytes == 101


def test_reader_sniffs_gzip_regardless_of_name(tmp_path: Path) -> None:
    plain = write_sample(tmp_path / "c3.jsonl").read_bytes()
    renamed = tmp_path / "c3.jsonl"
    renamed.write_bytes(gzip.compress(plain))
    assert read_trace(renamed).stream("B") == b"Nbye"


def test_chunk_repr_is_short() -> None:
    text = repr(Chunk("B", 5, b"D" * 100_000))
    assert len(text) < 120 and "+99968" in text
    assert repr(Chunk("F", 7, b"", eof=True)) == "Chunk('F', t_us=7, eof=True)"


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda w: w.chunk("X", b"a", 0), "direction must be"),
        (lambda w: w.chunk("F", b"", 0), "empty chunk"),
        (lambda w: (w.chunk("F", b"a", 5), w.chunk("B", b"a", 4)), "backwards"),
        (lambda w: (w.eof("F", 1), w.chunk("F", b"a", 2)), "already reached EOF"),
        (lambda w: (w.close(), w.chunk("F", b"a", 2)), "closed"),
    ],
)
def test_writer_rejects_misuse(tmp_path: Path, action: object, message: str) -> None:
    with TraceWriter(tmp_path / "c1.jsonl", 1) as w, pytest.raises(ValueError, match=message):
        action(w)  # type: ignore[operator]


def test_writer_rejects_bad_header(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="start at 1"):
        TraceWriter(tmp_path / "c0.jsonl", 0)
    with pytest.raises(ValueError, match="reserved"):
        TraceWriter(tmp_path / "c1.jsonl", 1, {"version": 2})


HEADER = '{"format":"pgsansio-trace","version":1,"connection":1}'


@pytest.mark.parametrize(
    ("lines", "line_no", "message"),
    [
        ([], 1, "empty file"),
        (["[1]"], 1, "expected a JSON object"),
        (["{not json"], 1, "not valid JSON"),
        (['{"format":"other","version":1,"connection":1}'], 1, "not a trace header"),
        (['{"format":"pgsansio-trace","version":2,"connection":1}'], 1, "newer than this"),
        (['{"format":"pgsansio-trace","version":"1","connection":1}'], 1, "version"),
        (['{"format":"pgsansio-trace","version":1,"connection":0}'], 1, "connection"),
        (['{"format":"pgsansio-trace","version":1}'], 1, "connection"),
        ([HEADER, ""], 2, "empty line"),
        ([HEADER, '{"d":"X","t_us":0,"b64":"YQ=="}'], 2, '"d" must be'),
        ([HEADER, '{"d":"F","t_us":-1,"b64":"YQ=="}'], 2, "t_us"),
        ([HEADER, '{"d":"F","t_us":1.5,"b64":"YQ=="}'], 2, "t_us"),
        ([HEADER, '{"d":"F","t_us":true,"b64":"YQ=="}'], 2, "t_us"),
        ([HEADER, '{"d":"F","t_us":0}'], 2, "exactly one of"),
        ([HEADER, '{"d":"F","t_us":0,"b64":"YQ==","eof":true}'], 2, "exactly one of"),
        ([HEADER, '{"d":"F","t_us":0,"eof":1}'], 2, '"eof" must be'),
        ([HEADER, '{"d":"F","t_us":0,"b64":""}'], 2, "non-empty"),
        ([HEADER, '{"d":"F","t_us":0,"b64":"Y!=="}'], 2, "not valid base64"),
        (
            [HEADER, '{"d":"F","t_us":5,"b64":"YQ=="}', '{"d":"B","t_us":4,"b64":"YQ=="}'],
            3,
            "earlier",
        ),
        (
            [HEADER, '{"d":"F","t_us":1,"eof":true}', '{"d":"F","t_us":2,"b64":"YQ=="}'],
            3,
            "after its eof",
        ),
    ],
)
def test_reader_rejects_invalid_files(
    tmp_path: Path, lines: list[str], line_no: int, message: str
) -> None:
    path = tmp_path / "c1.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(ValueError, match=message) as info:
        read_trace(path)
    assert str(info.value).startswith(f"{path}: line {line_no}: ")


def test_reader_ignores_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "c1.jsonl"
    path.write_text(HEADER + "\n" + '{"d":"B","t_us":0,"b64":"YQ==","x_note":"later"}\n')
    assert read_trace(path).stream("B") == b"a"


def test_reader_rejects_broken_gzip(tmp_path: Path) -> None:
    path = tmp_path / "c1.jsonl.gz"
    path.write_bytes(gzip.compress((HEADER + "\n").encode())[:-6])
    with pytest.raises(ValueError, match="unreadable trace file"):
        read_trace(path)


def test_iter_corpus_orders_and_skips(tmp_path: Path) -> None:
    for name in ("b-scenario", "a-scenario", ".staging-x", "empty"):
        (tmp_path / name).mkdir()
    for cid in (10, 2):
        with TraceWriter(tmp_path / "b-scenario" / trace_filename(cid), cid) as w:
            w.chunk("F", b"x", 0)
    with TraceWriter(tmp_path / "a-scenario" / trace_filename(1, compressed=True), 1) as w:
        w.eof("B", 0)
    with TraceWriter(tmp_path / ".staging-x" / "c1.jsonl", 1):
        pass
    (tmp_path / "b-scenario" / "meta.json").write_text("{}")
    (tmp_path / "README.md").write_text("not a scenario")
    found = [(d.name, [t.connection for t in ts]) for d, ts in iter_corpus(tmp_path)]
    assert found == [("a-scenario", [1]), ("b-scenario", [2, 10])]


# ---------------------------------------------------------------------------------------
# The committed corpus: every file readable, meta.json consistent with the traces.

META_KEYS = {
    "scenario",
    "description",
    "client",
    "server",
    "auth",
    "protocol",
    "tls",
    "recorder",
    "connections",
    "sha256",
}


def _corpus() -> list[tuple[Path, list[Trace]]]:
    return list(iter_corpus(CORPUS)) if CORPUS.is_dir() else []


@pytest.mark.parametrize(
    ("scenario_dir", "traces"), _corpus(), ids=lambda v: getattr(v, "name", "")
)
def test_corpus_meta_matches_traces(scenario_dir: Path, traces: list[Trace]) -> None:
    meta = json.loads((scenario_dir / "meta.json").read_text())
    assert meta.keys() >= META_KEYS, META_KEYS - meta.keys()
    assert meta["scenario"] == scenario_dir.name
    assert meta["connections"] == len(traces)
    assert [t.connection for t in traces] == list(range(1, len(traces) + 1))
    assert meta["server"].startswith("PostgreSQL ")
    expected = {}
    for t in traces:
        assert t.header.get("scenario") == scenario_dir.name
        for d in ("F", "B"):
            expected[f"c{t.connection}:{d}"] = hashlib.sha256(t.stream(d)).hexdigest()
    assert meta["sha256"] == expected
