"""COPY FROM STDIN splitting, the pure half: which COPY is split, and how its stream is
cut into rows and keys (the engine half runs against real shards in
test_sharding_fanout.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("pglast", reason="COPY splitting needs the routing extra (pglast)")

from pgsansio.routing import CopyRows, plan_copy

KEY = "fdata.id"


def cut(sql: str, *chunks: bytes) -> tuple[list[bytes], list[tuple[str | None, bytes]]]:
    plan = plan_copy(sql, KEY)
    assert plan is not None and not isinstance(plan, str)
    rows = CopyRows(plan)
    headers: list[bytes] = []
    out: list[tuple[str | None, bytes]] = []
    for chunk in chunks:
        header, got = rows.feed(chunk)
        headers += [header] if header else []
        out += got
    header, got = rows.finish()
    headers += [header] if header else []
    return headers, out + got


def test_which_copy_is_split() -> None:
    assert plan_copy("COPY fdata TO STDOUT", KEY) is None
    assert plan_copy("COPY other (id) FROM STDIN", KEY) is None
    assert plan_copy("COPY fdata (id) FROM '/tmp/x'", KEY) is None
    assert plan_copy("SELECT 1", KEY) is None
    assert plan_copy("COPY fdata (id) FROM STDIN; SELECT 1", KEY) is None
    refused = plan_copy("COPY fdata FROM STDIN", KEY)
    assert isinstance(refused, str) and "column list" in refused
    refused = plan_copy("COPY fdata (g) FROM STDIN", KEY)
    assert isinstance(refused, str) and '"id"' in refused
    refused = plan_copy("COPY fdata (id) FROM STDIN (FORMAT binary)", KEY)
    assert isinstance(refused, str) and "binary" in refused
    plan = plan_copy("COPY s.fdata (g, id) FROM STDIN CSV HEADER DELIMITER ';' NULL 'n'", "*.id")
    assert not isinstance(plan, str) and plan is not None
    assert (plan.csv, plan.key_index, plan.delimiter, plan.null, plan.header) == (
        True,
        1,
        b";",
        b"n",
        True,
    )


def test_text_rows_cut_anywhere_with_escapes() -> None:
    data = b"1\t10\n2\t\\N\n3\t1\\\\2\n4\t\\x31\\0632\r\n5\t7\\\n8\n\\.\n9\t9\n"
    whole = cut("COPY fdata (g, id) FROM STDIN", data)
    assert whole == (
        [],
        [
            ("10", b"1\t10\n"),
            (None, b"2\t\\N\n"),
            ("1\\2", b"3\t1\\\\2\n"),
            ("132", b"4\t\\x31\\0632\r\n"),
            ("7\n8", b"5\t7\\\n8\n"),
        ],
    )
    for size in (1, 2, 3, 7):
        pieces = [data[i : i + size] for i in range(0, len(data), size)]
        assert cut("COPY fdata (g, id) FROM STDIN", *pieces) == whole


def test_csv_rows_quotes_newlines_header_and_escape() -> None:
    data = b'id,t\n"1""2",x\n,"a\nb"\n"",z\n3,"q\nr\n'
    headers, rows = cut("COPY fdata (id, t) FROM STDIN (FORMAT csv, HEADER)", data, b'"')
    assert headers == [b"id,t\n"]
    assert rows == [
        ('1"2', b'"1""2",x\n'),
        (None, b',"a\nb"\n'),
        ("", b'"",z\n'),
        ("3", b'3,"q\nr\n"\n'),
    ]
    sql = "COPY fdata (t, id) FROM STDIN (FORMAT csv, ESCAPE '\\', DELIMITER '|')"
    _, rows = cut(sql, b'"a\\"\n|b"|"4\\\\2"\n', b"x|5")
    assert rows == [("4\\2", b'"a\\"\n|b"|"4\\\\2"\n'), ("5", b"x|5\n")]


def test_a_row_without_its_key_field_is_named() -> None:
    plan = plan_copy("COPY fdata (g, id) FROM STDIN", KEY)
    assert plan is not None and not isinstance(plan, str)
    with pytest.raises(ValueError, match="fewer fields"):
        CopyRows(plan).feed(b"1\n")
