"""Finding the automatic_sharding_key in SQL text (pgsansio.routing.find_keys): pure."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgsansio.routing import NO_KEYS, KeyFinder, ShardKeys, find_keys

V = ShardKeys  # for the table's readability

# (sql, values, params) for the key data.id
CASES: list[tuple[str, tuple[str, ...], tuple[int, ...]]] = [
    # WHERE, the column unqualified (one table), qualified, aliased, schema-qualified
    ("SELECT * FROM data WHERE id = 5", ("5",), ()),
    ("select * from DATA where ID = 5", ("5",), ()),
    ('SELECT * FROM "data" WHERE "id" = 5', ("5",), ()),
    ("SELECT * FROM data WHERE data.id = 5", ("5",), ()),
    ("SELECT * FROM data AS d WHERE d.id = 5", ("5",), ()),
    ("SELECT * FROM public.data d WHERE d.id = 5", ("5",), ()),
    ("SELECT * FROM public.data WHERE public.data.id = 5", ("5",), ()),
    ("SELECT * FROM data WHERE 5 = id", ("5",), ()),
    ("SELECT * FROM data WHERE id = 0", ("0",), ()),
    ("SELECT * FROM data WHERE id = -5", ("-5",), ()),
    ("SELECT * FROM data WHERE id = 9223372036854775807", ("9223372036854775807",), ()),
    ("SELECT * FROM data WHERE id = '42'", ("42",), ()),
    ("SELECT * FROM data WHERE id = 42::bigint", ("42",), ()),
    ("SELECT * FROM data WHERE id = '42'::int8", ("42",), ()),
    ("SELECT * FROM data WHERE id = 'abc'::text", ("abc",), ()),  # text keys
    ("SELECT * FROM data WHERE id = $1::uuid", (), (1,)),  # uuid keys
    ("SELECT * FROM data WHERE id = 'x'::varchar", ("x",), ()),
    ("SELECT * FROM data WHERE id = CAST($1 AS integer)", (), (1,)),
    ("SELECT * FROM data WHERE id = $1", (), (1,)),
    ("SELECT * FROM data WHERE id = $2 AND v = $1", (), (2,)),
    ("SELECT * FROM data WHERE 1.5 = id", ("1.5",), ()),  # found; not an integer (engine)
    # AND keeps every key; OR needs one in every branch; IN is an OR
    ("SELECT * FROM data WHERE v = 'x' AND id = 5 AND w > 3", ("5",), ()),
    ("SELECT * FROM data WHERE id = 5 AND id = 6", ("5", "6"), ()),
    ("SELECT * FROM data WHERE (id = 5 OR id = 6) AND v = 1", ("5", "6"), ()),
    ("SELECT * FROM data WHERE id = 5 OR (id = $1 AND v = 2)", ("5",), (1,)),
    ("SELECT * FROM data WHERE id IN (5, $1, '7')", ("5", "7"), (1,)),
    ("SELECT * FROM data WHERE (id = 5 OR v = 1) AND id = 6", ("6",), ()),
    ("SELECT * FROM data WHERE id = 5 OR id = 5", ("5",), ()),  # no repeats
    # joins: INNER JOIN ... ON, and the WHERE of a join
    ("SELECT * FROM data JOIN o ON o.a = data.id AND data.id = 3", ("3",), ()),
    ("SELECT * FROM data d INNER JOIN o ON d.id = $1", (), (1,)),
    ("SELECT * FROM o JOIN data d USING (x) WHERE d.id = 4", ("4",), ()),
    ("SELECT * FROM o, data WHERE data.id = 4", ("4",), ()),
    ("SELECT * FROM (o JOIN data ON data.id = 1) JOIN p ON p.x = 1", ("1",), ()),
    # INSERT with a column list, one row or several
    ("INSERT INTO data (id, v) VALUES (5, 'a')", ("5",), ()),
    ("INSERT INTO data (v, id) VALUES ($1, $2)", (), (2,)),
    ("INSERT INTO data (v, id) VALUES ('a', 1), ('b', $3), ('c', 1)", ("1",), (3,)),
    (
        "INSERT INTO public.data AS t (id) VALUES (5) ON CONFLICT (id) DO UPDATE SET v = 1",
        ("5",),
        (),
    ),
    ("INSERT INTO data (id) VALUES (5) RETURNING *", ("5",), ()),
    # UPDATE and DELETE
    ("UPDATE data SET v = 'x' WHERE id = 5", ("5",), ()),
    ("UPDATE data d SET v = o.v FROM o WHERE d.id = 5 AND o.k = d.k", ("5",), ()),
    ("DELETE FROM data WHERE id = $1", (), (1,)),
    ("DELETE FROM data USING o WHERE data.id = 6", ("6",), ()),
    # EXPLAIN, a read-only WITH, several statements
    ("EXPLAIN ANALYZE SELECT * FROM data WHERE id = 5", ("5",), ()),
    ("WITH c AS (SELECT 1) SELECT * FROM data WHERE id = 5", ("5",), ()),
    ("BEGIN; INSERT INTO data (id) VALUES (5); COMMIT", ("5",), ()),
    ("SELECT * FROM data WHERE id = 1; SELECT * FROM data WHERE id = 2", ("1", "2"), ()),
    ("SELECT * FROM data WHERE id = 1; SELECT * FROM data", ("1",), ()),
    ("/* c */ SELECT * FROM data WHERE id = 1 -- id = 2", ("1",), ()),
]

NONE = [
    "SELECT 1",
    "",
    "SELECT * FROM data",
    "SELECT * FROM data WHERE id > 5",
    "SELECT * FROM data WHERE id <> 5",
    "SELECT * FROM data WHERE id BETWEEN 5 AND 5",
    "SELECT * FROM data WHERE NOT id = 5",
    "SELECT * FROM data WHERE id NOT IN (5)",
    "SELECT * FROM data WHERE id = 5 OR v = 1",
    "SELECT * FROM data WHERE id = 2 + 3",
    "SELECT * FROM data WHERE id = v",
    "SELECT * FROM data WHERE id = NULL",
    "SELECT * FROM data WHERE id = true",
    "SELECT * FROM data WHERE id = 5::varchar(1)",  # a length may cut the value
    "SELECT * FROM data WHERE id = 5::numeric",
    "SELECT * FROM data WHERE id = (SELECT 5)",
    "SELECT * FROM data WHERE id IN (SELECT k FROM o)",
    "SELECT * FROM data WHERE id IN (5, v)",
    "SELECT * FROM data WHERE id = ANY($1)",
    "SELECT * FROM data, o WHERE id = 5",  # unqualified, two tables
    "SELECT * FROM data JOIN o ON id = 5",
    "SELECT * FROM data d WHERE x.id = 5",  # another qualifier
    "SELECT * FROM o WHERE id = 5",  # another table
    "SELECT * FROM o WHERE o.id = 5",
    "SELECT * FROM data WHERE o.id = 5",
    "SELECT * FROM data LEFT JOIN o ON data.id = 5",  # not an inner join
    "SELECT * FROM (SELECT * FROM data WHERE id = 5) s",  # only the top level is read
    "SELECT * FROM (data JOIN o ON data.id = 5) AS j",
    "SELECT * FROM data WHERE id = 5 UNION SELECT * FROM data WHERE id = 5",
    "VALUES (5)",
    "WITH x AS (DELETE FROM data WHERE id = 9 RETURNING *) SELECT * FROM data WHERE id = 5",
    "INSERT INTO data VALUES (5)",  # no column list
    "INSERT INTO data (v) VALUES (5)",
    "INSERT INTO data (id) VALUES (DEFAULT)",
    "INSERT INTO data (id) VALUES (5), (nextval('s'))",
    "INSERT INTO data (id) SELECT 5",
    "INSERT INTO o (id) VALUES (5)",
    "UPDATE o SET id = 5",
    "UPDATE data SET id = 5",
    "DELETE FROM data",
    "SET SHARD TO '1'",
    "SELEKT * FROM data WHERE id = 5",
    "SELECT * FROM data WHERE id = 5\x00",
    "COPY data FROM STDIN",
]


@pytest.mark.parametrize(("sql", "values", "params"), CASES)
def test_recognised_shapes(sql: str, values: tuple[str, ...], params: tuple[int, ...]) -> None:
    assert find_keys(sql, "data", "id") == V(values, params)


@pytest.mark.parametrize("sql", NONE)
def test_shapes_that_name_no_key(sql: str) -> None:
    got = find_keys(sql, "data", "id")
    assert got == NO_KEYS and not got


def test_star_takes_the_column_of_any_table() -> None:
    assert find_keys("SELECT * FROM a, b WHERE b.id = 4", "*", "id") == V(("4",))
    assert find_keys("SELECT * FROM a, b WHERE id = 4", "*", "id") == V(("4",))
    assert find_keys("INSERT INTO anything (id) VALUES ($1)", "*", "id") == V((), (1,))
    assert not find_keys("SELECT * FROM a WHERE b.uid = 4", "*", "id")


def test_names_are_compared_as_postgresql_resolves_them() -> None:
    assert find_keys('SELECT * FROM "Data" WHERE "Id" = 1', "Data", "Id") == V(("1",))
    assert not find_keys("SELECT * FROM Data WHERE Id = 1", "Data", "Id")  # folded
    assert find_keys("SELECT * FROM Data WHERE Id = 1", "data", "id") == V(("1",))
    # A Unicode-escaped name is still found (the quick text check steps aside).
    assert find_keys('SELECT * FROM data WHERE U&"\\0069d" = 1', "data", "id") == V(("1",))


# --- properties -------------------------------------------------------------------------

_keys = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_others = st.sampled_from(["v = 'x'", "w > 3", "v IS NULL", "o.k = data.k", "true"])


@settings(max_examples=60, deadline=None)
@given(
    key=_keys,
    style=st.sampled_from(["id", "data.id", "d.id", "ID"]),
    reverse=st.booleans(),
    others=st.lists(_others, max_size=3),
    where=st.integers(min_value=0, max_value=3),
)
def test_a_key_among_other_conditions(
    key: int, style: str, reverse: bool, others: list[str], where: int
) -> None:
    table = "data d" if style == "d.id" else "data"
    if "o.k = data.k" in others:
        others = [o for o in others if o != "o.k = data.k"]  # one table, for bare "id"
    cond = f"{key} = {style}" if reverse else f"{style} = {key}"
    conds = [*others]
    conds.insert(min(where, len(conds)), cond)
    sql = f"SELECT * FROM {table} WHERE " + " AND ".join(conds)
    assert find_keys(sql, "data", "id") == V((str(key),))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.one_of(_keys, st.integers(1, 20).map(lambda n: f"${n}")), min_size=1, max_size=5)
)
def test_or_and_in_list_every_value(items: list[int | str]) -> None:
    ors = " OR ".join(f"id = {v}" for v in items)
    ins = ", ".join(str(v) for v in items)
    values = tuple(dict.fromkeys(str(v) for v in items if isinstance(v, int)))
    params = tuple(dict.fromkeys(int(v[1:]) for v in items if isinstance(v, str)))
    assert find_keys(f"SELECT * FROM data WHERE {ors}", "data", "id") == V(values, params)
    assert find_keys(f"SELECT * FROM data WHERE id IN ({ins})", "data", "id") == V(values, params)
    rows = ", ".join(f"({v}, 'x')" for v in items)
    got = find_keys(f"INSERT INTO data (id, v) VALUES {rows}", "data", "id")
    assert got == V(values, params)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=80))
def test_never_raises(text: str) -> None:
    got = find_keys("SELECT * FROM data WHERE id = " + text, "data", "id")
    assert isinstance(got, ShardKeys)
    assert isinstance(find_keys(text, "data", "id"), ShardKeys)


# --- KeyFinder: the cache -----------------------------------------------------------------


def test_key_finder_caches_by_text_and_respects_max_length() -> None:
    finder = KeyFinder("data.id")
    sql = "SELECT * FROM data WHERE id = 5"
    assert finder.find(sql) == V(("5",))
    assert finder.find(sql) == V(("5",))
    hits, misses, _, size = finder.cache_info()
    assert (hits, misses, size) == (1, 1, 1)
    long_sql = sql + " " * 9000
    assert finder.find(long_sql) == V(("5",))  # beyond the cached length: read, not kept
    assert finder.cache_info()[3] == 1
    short = KeyFinder("data.id", max_length=20)
    assert short.find(sql) == NO_KEYS  # longer than query_parser_max_length
    assert KeyFinder("*.id", cache_size=0).find(sql) == V(("5",))
    for bad in ("id", "a.b.c", ".id", "data."):
        with pytest.raises(ValueError, match=r"table\.column"):
            KeyFinder(bad)
    with pytest.raises(ValueError, match="max_length"):
        KeyFinder("data.id", max_length=-1)
    with pytest.raises(ValueError, match="cache_size"):
        KeyFinder("data.id", cache_size=-1)
