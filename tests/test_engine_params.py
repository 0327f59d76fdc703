"""Session-state helpers: startup options, plain SET parsing, the sync query."""

from __future__ import annotations

import pytest

from pgsansio.engine._params import (
    canonical_name,
    param_sql,
    parse_options,
    parse_simple_set,
    quote_literal,
    sync_sql,
    valid_name,
)


@pytest.mark.parametrize(
    "options,expected",
    [
        ("-c statement_timeout=5s", {"statement_timeout": "5s"}),
        ("-cgeqo=off --work-mem=4MB", {"geqo": "off", "work_mem": "4MB"}),
        (r"-c search_path=a\ b", {"search_path": "a b"}),
        ("  ", {}),
    ],
)
def test_parse_options(options: str, expected: dict[str, str]) -> None:
    assert parse_options(options) == expected


@pytest.mark.parametrize("options", ["-D /tmp", "-c", "-c =x", "-c bad;name=1", "--x"])
def test_parse_options_refuses_anything_but_settings(options: str) -> None:
    with pytest.raises(ValueError):
        parse_options(options)


@pytest.mark.parametrize(
    "sql,expected",
    [
        ("SET statement_timeout = '5s'", ("statement_timeout", "'5s'")),
        ('set search_path to a, "B";', ("search_path", 'a, "B"')),
        ("SET SESSION work_mem TO 1024", ("work_mem", "1024")),
        ("RESET work_mem", ("work_mem", None)),
        ("SET LOCAL work_mem = 1", None),
        ("SET ROLE bob", None),
        ("SET SESSION AUTHORIZATION bob", None),
        ("SET TRANSACTION READ ONLY", None),
        ("RESET ALL", None),
        ("SET a = 1; SET b = 2", None),
        ("SET a = (select 1)", None),
        ("SELECT 1", None),
    ],
)
def test_parse_simple_set(sql: str, expected: tuple[str, str | None] | None) -> None:
    assert parse_simple_set(sql) == expected


def test_quoting() -> None:
    assert quote_literal("it's") == "'it''s'"
    assert quote_literal("a\\b") == "E'a\\\\b'"
    assert param_sql("search_path", '"$user", public') == '"$user", public'
    assert param_sql("search_path", "x; drop table t") == "'x; drop table t'"
    assert param_sql("TimeZone", "UTC") == "'UTC'"
    assert canonical_name("datestyle") == "DateStyle" and canonical_name("Foo") == "foo"
    assert valid_name("myext.setting") and not valid_name("a b")


def test_sync_sql_sets_and_resets_only_the_difference() -> None:
    assert sync_sql({"TimeZone": "UTC"}, {"TimeZone": "utc"}, {}, {}) == ""
    assert sync_sql({"TimeZone": "UTC"}, {"TimeZone": "GMT"}, {}, {}) == "SET TimeZone = 'UTC'"
    assert (
        sync_sql({}, {}, {"work_mem": "'4MB'"}, {"geqo": "off"})
        == "SET work_mem = '4MB';RESET geqo"
    )
    assert sync_sql({}, {}, {"work_mem": "'4MB'"}, {"work_mem": "'4MB'"}) == ""


@pytest.mark.parametrize(
    "sql,expected",
    [
        ("SET work_mem = '8MB' /* app=web */", ("work_mem", "'8MB'")),
        ("/* a */ SET work_mem TO 1 -- trailing", ("work_mem", "1")),
        ("SET work_mem = '/* not a comment */'", ("work_mem", "'/* not a comment */'")),
        ("SET a = 1 /* x; y */", ("a", "1")),
    ],
)
def test_parse_simple_set_ignores_comments(sql: str, expected: tuple[str, str]) -> None:
    assert parse_simple_set(sql) == expected
