"""The read/write classifier (pgsansio.routing): every rule, hints, commands, the cache."""

from __future__ import annotations

import ast
import json
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast.parser import parse_sql_json

from pgsansio.routing import Decision, Router, _router, _tree

R = True  # read_only values, for the table's readability
W = False

# (sql, write, begin, read_only, ends)
CASES: list[tuple[str, bool, bool, bool | None, bool]] = [
    # plain reads
    ("SELECT 1", False, False, None, False),
    ("select * from users where id = 42", False, False, None, False),
    ("SELECT a, b FROM t JOIN u USING (id) WHERE a > 1 ORDER BY b", False, False, None, False),
    ("VALUES (1, 'a'), (2, 'b')", False, False, None, False),
    ("TABLE users", False, False, None, False),
    ("SELECT * FROM t WHERE x IN (SELECT y FROM u)", False, False, None, False),
    ("SELECT 1 UNION ALL SELECT 2", False, False, None, False),
    ("WITH c AS (SELECT 1 AS x) SELECT x FROM c", False, False, None, False),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5)\n"
     "SELECT * FROM r", False, False, None, False),
    ("SELECT $1::int", False, False, None, False),
    ("select ';' as semicolon", False, False, None, False),
    ("SELECT 'FuncCall' AS x, '\"lockingClause\":' AS y", False, False, None, False),
    ("SELECT CURRENT_TIMESTAMP, current_user, COALESCE(a, b), GREATEST(1, 2),"
     " NULLIF(a, 0) FROM t", False, False, None, False),
    ("", False, False, None, False),
    ("   ", False, False, None, False),
    ("-- just a comment", False, False, None, False),
    (";", False, False, None, False),
    # allowed functions
    ("SELECT now()", False, False, None, False),
    ("SELECT pg_catalog.now()", False, False, None, False),
    ("SELECT count(*), sum(total), avg(total), max(total) FROM orders", False, False, None, False),
    ("SELECT lower(name), upper(name), length(name) FROM users", False, False, None, False),
    ("SELECT version()", False, False, None, False),
    ("SELECT current_setting('search_path')", False, False, None, False),
    ("SELECT inet_server_port(), pg_is_in_recovery()", False, False, None, False),
    ("SELECT extract(year FROM now()), date_trunc('day', now())", False, False, None, False),
    ("SELECT trim(x), substring(x FROM 2), position('a' IN x) FROM t", False, False, None, False),
    ("SELECT row_number() OVER (PARTITION BY a ORDER BY b) FROM t", False, False, None, False),
    ("SELECT * FROM generate_series(1, 10)", False, False, None, False),
    ("SELECT jsonb_build_object('a', 1), to_json(t) FROM t", False, False, None, False),
    ("SELECT pg_sleep(0.1)", False, False, None, False),
    ("SELECT random(), gen_random_uuid()", False, False, None, False),
    ("SELECT count(*) FILTER (WHERE x > 1) FROM t", False, False, None, False),
    # functions that write, or that we cannot see into
    ("SELECT nextval('order_id_seq')", True, False, None, False),
    ("SELECT setval('order_id_seq', 100)", True, False, None, False),
    ("SELECT currval('order_id_seq')", True, False, None, False),
    ("SELECT pg_advisory_lock(42)", True, False, None, False),
    ("SELECT pg_try_advisory_xact_lock(42)", True, False, None, False),
    ("SELECT pg_notify('chan', 'payload')", True, False, None, False),
    ("SELECT set_config('search_path', 'public', false)", True, False, None, False),
    ("SELECT txid_current()", True, False, None, False),
    ("SELECT my_function(1)", True, False, None, False),
    ("SELECT public.lower('x')", True, False, None, False),
    ("SELECT pg_catalog.nextval('s')", True, False, None, False),
    ("SELECT * FROM my_set_returning_function()", True, False, None, False),
    ("SELECT id FROM t WHERE x = (SELECT nextval('s'))", True, False, None, False),
    ("SELECT lower(my_udf(x)) FROM t", True, False, None, False),
    ("SELECT 1 UNION SELECT nextval('s')", True, False, None, False),
    ("SELECT a.b.c()", True, False, None, False),
    ("VALUES (nextval('s'))", True, False, None, False),
    ("SELECT * FROM t ORDER BY random_udf()", True, False, None, False),
    ('SELECT "now"()', False, False, None, False),
    ('SELECT "my""fn"()', True, False, None, False),
    # locking reads, SELECT INTO, writable CTEs
    ("SELECT * FROM t WHERE id = 1 FOR UPDATE", True, False, None, False),
    ("SELECT * FROM t FOR SHARE", True, False, None, False),
    ("SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED", True, False, None, False),
    ("SELECT * FROM t FOR KEY SHARE NOWAIT", True, False, None, False),
    ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", True, False, None, False),
    ("SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u FOR UPDATE)", True, False, None, False),
    ("SELECT * INTO new_table FROM t", True, False, None, False),
    ("WITH d AS (DELETE FROM t WHERE old RETURNING *) SELECT * FROM d", True, False, None, False),
    ("WITH i AS (INSERT INTO t VALUES (1) RETURNING a) SELECT a FROM i", True, False, None, False),
    ("WITH u AS (UPDATE t SET x = 1 RETURNING x) SELECT sum(x) FROM u", True, False, None, False),
    # DML
    ("INSERT INTO t (a) VALUES (1)", True, False, None, False),
    ("insert into t values (1);", True, False, None, False),
    ("INSERT INTO t VALUES ('a;b')", True, False, None, False),
    ("INSERT INTO t SELECT * FROM u RETURNING id", True, False, None, False),
    ("UPDATE accounts SET balance = balance + 1 WHERE id = 1", True, False, None, False),
    ("DELETE FROM t WHERE id = 1", True, False, None, False),
    ("MERGE INTO t USING u ON t.a = u.a WHEN MATCHED THEN DELETE", True, False, None, False),
    ("/* leading */ INSERT INTO t VALUES (1)", True, False, None, False),
    # DDL and utility statements
    ("CREATE TABLE t (id int primary key)", True, False, None, False),
    ("CREATE TABLE t2 AS SELECT * FROM t", True, False, None, False),
    ("ALTER TABLE t ADD COLUMN x int", True, False, None, False),
    ("DROP TABLE IF EXISTS t", True, False, None, False),
    ("TRUNCATE t", True, False, None, False),
    ("CREATE INDEX CONCURRENTLY i ON t (x)", True, False, None, False),
    ("GRANT SELECT ON t TO app", True, False, None, False),
    ("COMMENT ON TABLE t IS 'x'", True, False, None, False),
    ("REFRESH MATERIALIZED VIEW mv", True, False, None, False),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", True, False, None, False),
    ("LISTEN chan", True, False, None, False),
    ("NOTIFY chan, 'hi'", True, False, None, False),
    ("UNLISTEN *", True, False, None, False),
    ("COPY t FROM STDIN", True, False, None, False),
    ("COPY t (a, b) FROM STDIN WITH (FORMAT csv)", True, False, None, False),
    ("COPY t TO '/tmp/t.csv'", True, False, None, False),
    ("COPY t TO PROGRAM 'cat'", True, False, None, False),
    ("COPY t TO STDOUT", False, False, None, False),
    ("COPY (SELECT * FROM t WHERE x > 1) TO STDOUT WITH (FORMAT csv)", False, False, None, False),
    ("COPY (DELETE FROM t RETURNING *) TO STDOUT", True, False, None, False),
    ("CALL my_procedure(1)", True, False, None, False),
    ("DO $$ BEGIN PERFORM 1; END $$", True, False, None, False),
    ("VACUUM t", True, False, None, False),
    ("VACUUM (ANALYZE) t", True, False, None, False),
    ("ANALYZE t", True, False, None, False),
    ("CHECKPOINT", True, False, None, False),
    ("PREPARE q AS SELECT 1", True, False, None, False),
    ("EXECUTE q", True, False, None, False),
    ("DEALLOCATE q", True, False, None, False),
    ("DEALLOCATE ALL", True, False, None, False),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t", True, False, None, False),
    ("DECLARE c CURSOR FOR SELECT * FROM t", False, False, None, False),
    ("DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE", True, False, None, False),
    ("FETCH 10 FROM c", True, False, None, False),
    ("CLOSE c", True, False, None, False),
    ("MOVE FORWARD 5 IN c", True, False, None, False),
    ("CLOSE ALL", True, False, None, False),
    # session state
    ("SET search_path TO public", False, False, None, False),
    ("SET LOCAL statement_timeout = '5s'", False, False, None, False),
    ("set application_name = 'app'", False, False, None, False),
    ("RESET search_path", False, False, None, False),
    ("RESET ALL", False, False, None, False),
    ("DISCARD ALL", False, False, None, False),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", False, False, None, False),
    ("SET TRANSACTION READ ONLY", False, False, R, False),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE", False, False, W, False),
    ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", False, False, None, False),
    ("SET transaction_read_only = on", False, False, R, False),
    ("SET LOCAL transaction_read_only TO 'off'", False, False, W, False),
    ("set transaction_read_only = t", False, False, R, False),
    ("SET transaction_read_only = 0", False, False, W, False),
    ("SET transaction_read_only = maybe", False, False, None, False),
    ("SET transaction_read_only = 1.5", False, False, None, False),
    ("SET default_transaction_read_only = on", False, False, None, False),
    ("SHOW search_path", False, False, None, False),
    ("SHOW ALL", False, False, None, False),
    # EXPLAIN
    ("EXPLAIN SELECT * FROM t", False, False, None, False),
    ("EXPLAIN ANALYZE SELECT * FROM t", False, False, None, False),
    ("EXPLAIN (ANALYZE, BUFFERS) SELECT count(*) FROM t", False, False, None, False),
    ("EXPLAIN ANALYZE DELETE FROM t", True, False, None, False),
    ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", True, False, None, False),
    ("EXPLAIN UPDATE t SET x = 1", True, False, None, False),
    ("EXPLAIN ANALYZE SELECT nextval('s')", True, False, None, False),
    # transactions
    ("BEGIN", True, True, None, False),
    ("begin;", True, True, None, False),
    ("BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ", True, True, None, False),
    ("BEGIN READ ONLY", False, True, R, False),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE", False, True, R, False),
    ("BEGIN READ WRITE", True, True, W, False),
    ("START TRANSACTION", True, True, None, False),
    ("START TRANSACTION READ ONLY", False, True, R, False),
    ("START TRANSACTION READ WRITE", True, True, W, False),
    ("COMMIT", False, False, None, True),
    ("commit;", False, False, None, True),
    ("ROLLBACK", False, False, None, True),
    ("END", False, False, None, True),
    ("ABORT", False, False, None, True),
    ("COMMIT AND CHAIN", False, True, None, True),
    ("PREPARE TRANSACTION 'tx1'", True, False, None, True),
    ("COMMIT PREPARED 'tx1'", True, False, None, True),
    ("ROLLBACK PREPARED 'tx1'", True, False, None, True),
    ("SAVEPOINT s1", False, False, None, False),
    ("RELEASE SAVEPOINT s1", False, False, None, False),
    ("ROLLBACK TO SAVEPOINT s1", False, False, None, False),
    # several statements in one text
    ("BEGIN; SELECT 1; COMMIT", True, True, None, True),
    ("BEGIN READ ONLY; SELECT 1; COMMIT", False, True, R, True),
    ("BEGIN READ ONLY; SET TRANSACTION READ WRITE", False, True, W, False),
    ("BEGIN; SET TRANSACTION READ ONLY; SELECT 1", True, True, R, False),
    ("BEGIN READ ONLY; COMMIT; BEGIN", True, True, None, True),
    ("SELECT 1; SELECT 2", False, False, None, False),
    ("SELECT 1; INSERT INTO t VALUES (1)", True, False, None, False),
    ("INSERT INTO t VALUES (1); COMMIT", True, False, None, True),
    ("UPDATE t SET x = 1; SELECT 1", True, False, None, False),
    ("SET search_path TO s; SELECT * FROM t", False, False, None, False),
    ("SELECT 1; SELECT nextval('s')", True, False, None, False),
    # not SQL
    ("SELEC 1", True, False, None, False),
    ("SELECT FROM WHERE", True, False, None, False),
    ("SELECT 'unterminated", True, False, None, False),
    ("/* unterminated comment SELECT 1", True, False, None, False),
    ("insert garbage here", True, False, None, False),
    ("SELECT 1\x00; DROP TABLE t", True, False, None, False),
    ("SELECT '\ud800'", True, False, None, False),
]  # fmt: skip


@pytest.fixture(scope="module")
def router() -> Router:
    return Router()


def test_the_table_is_large_and_unique() -> None:
    texts = [case[0] for case in CASES]
    assert len(texts) >= 80
    assert len(set(texts)) == len(texts)


@pytest.mark.parametrize(("sql", "expected"), [(case[0], case[1:]) for case in CASES])
def test_rule(router: Router, sql: str, expected: tuple[bool, bool, bool | None, bool]) -> None:
    d = router.classify(sql)
    assert (d.write, d.begin, d.read_only, d.ends) == expected
    assert d.hint is None
    assert d.command is None


@pytest.mark.parametrize("sql", [case[0] for case in CASES])
def test_every_shortcut_agrees_with_the_tree_walk(sql: str) -> None:
    """The keyword pre-check and the JSON-text shortcut answer what the walk answers."""
    try:
        js = parse_sql_json(sql)
    except Exception:
        assert _router.classify_text(sql).write
        return
    expected = _tree.classify_statements(json.loads(js)["stmts"])
    got = _router.classify_text(sql)
    if "\x00" not in sql:  # the NUL case is decided before parsing, on purpose
        assert (got.write, got.begin, got.read_only, got.ends) == expected
    shortcut = _router._select_writes_from_json(js, sql)
    if shortcut is not None:
        assert shortcut == expected[0]


# --- hints -----------------------------------------------------------------------------

HINTS = [
    ("/* pgsansio_role: replica */ SELECT 1", False, "replica"),
    ("/* pgsansio_role: primary */ SELECT 1", False, "primary"),
    ("/*pgsansio_role:replica*/SELECT 1", False, "replica"),
    ("/* PGSANSIO_ROLE: Replica */ SELECT 1", False, "replica"),
    ("/* app=web, pgsansio_role: primary, route=x */ SELECT 1", False, "primary"),
    ("-- pgsansio_role: replica\nSELECT 1", False, "replica"),
    ("  -- pgsansio_role: primary\n  SELECT now()", False, "primary"),
    ("/* first */ /* pgsansio_role: replica */ SELECT 1", False, "replica"),
    ("-- first line\n/* pgsansio_role: primary */\nSELECT 1", False, "primary"),
    ("/* outer /* nested */ pgsansio_role: replica */ SELECT 1", False, "replica"),
    ("/* a /* b /* c */ */ */ /* pgsansio_role: primary */ SELECT 1", False, "primary"),
    ("/* pgsansio_role: replica */ INSERT INTO t VALUES (1)", True, "replica"),
    ("/* pgsansio_role: replica */ SELECT nextval('s')", True, "replica"),
    ("/* pgsansio_role: primary */ SELEC garbage", True, "primary"),
    ("/* pgsansio_role: replica */ SELECT 1\x00", True, "replica"),
    ("/* pgsansio_role: primary */ SELECT 1; SELECT 2", False, "primary"),
]
NOT_HINTS = [
    "SELECT 1 /* pgsansio_role: replica */",  # not before the first token
    "SELECT /* pgsansio_role: replica */ 1",
    "/* pgsansio_role: standby */ SELECT 1",  # unknown value
    "/* pgsansio_role replica */ SELECT 1",  # no colon
    "/* pgsansio_role: replica SELECT 1",  # unterminated comment
    "-- nothing here\nSELECT 1",
    "/* a /* b */ SELECT 1 /* pgsansio_role: replica */",  # inside the unclosed outer one
]


@pytest.mark.parametrize(("sql", "write", "hint"), HINTS)
def test_hint(router: Router, sql: str, write: bool, hint: str) -> None:
    d = router.classify(sql)
    assert (d.write, d.hint) == (write, hint)


@pytest.mark.parametrize("sql", NOT_HINTS)
def test_not_a_hint(router: Router, sql: str) -> None:
    assert router.classify(sql).hint is None


# --- PgCat custom commands ---------------------------------------------------------

_ROLE_ERROR = _router._ROLE_ERROR
_READS_ERROR = _router._READS_ERROR

COMMANDS = [
    ("SET SERVER ROLE TO 'primary'", ("set_server_role", "primary")),
    ("set server role to 'replica';", ("set_server_role", "replica")),
    ("  SET SERVER ROLE TO 'ANY' ; ", ("set_server_role", "any")),
    ("SET SERVER ROLE TO 'auto'", ("set_server_role", "auto")),
    ("Set Server Role To 'Default'", ("set_server_role", "default")),
    ("SET  SERVER\tROLE\nTO 'primary'", ("set_server_role", "primary")),
    ("SHOW SERVER ROLE", ("show_server_role", None)),
    ("show server role;", ("show_server_role", None)),
    ("SET PRIMARY READS TO 'on'", ("set_primary_reads", "on")),
    ("SET PRIMARY READS TO off", ("set_primary_reads", "off")),
    ("set primary reads to 'DEFAULT';", ("set_primary_reads", "default")),
    ("SHOW PRIMARY READS", ("show_primary_reads", None)),
    ("SHOW PRIMARY READS ;", ("show_primary_reads", None)),
    ("SET SERVER ROLE TO primary", ("error", _ROLE_ERROR)),  # PgCat wants the quotes
    ("SET SERVER ROLE TO 'standby'", ("error", _ROLE_ERROR)),
    ("SET SERVER ROLE = 'primary'", ("error", _ROLE_ERROR)),
    ("SET SERVER ROLE TO ''", ("error", _ROLE_ERROR)),
    ("SET SERVER ROLE", ("error", _ROLE_ERROR)),
    ("SET PRIMARY READS TO 'maybe'", ("error", _READS_ERROR)),
    ("SET PRIMARY READS TO true", ("error", _READS_ERROR)),
    ("SHOW SERVER ROLE now", ("error", "SHOW SERVER ROLE takes no value")),
]


@pytest.mark.parametrize(("sql", "command"), COMMANDS)
def test_custom_command(router: Router, sql: str, command: tuple[str, str | None]) -> None:
    d = router.classify(sql)
    assert d.command == command
    assert not d.write


@pytest.mark.parametrize(
    "sql",
    [
        "SET server_role TO 'primary'",  # a GUC name, not the command
        "SET primary_reads TO on",
        "SHOW server_version",
        "SET search_path TO server",
        "/* x */ SET SERVER ROLE TO 'primary'",  # PgCat matches from the start only
    ],
)
def test_not_a_custom_command(router: Router, sql: str) -> None:
    assert router.classify(sql).command is None


def test_error_messages_name_the_command_and_the_values() -> None:
    assert "SET SERVER ROLE" in _ROLE_ERROR
    for value in ("primary", "replica", "any", "auto", "default"):
        assert f"'{value}'" in _ROLE_ERROR
    assert "SET PRIMARY READS" in _READS_ERROR
    for value in ("on", "off", "default"):
        assert f"'{value}'" in _READS_ERROR


# --- cache and limits ------------------------------------------------------------------


def test_repeated_text_is_served_from_the_cache() -> None:
    router = Router()
    first = router.classify("SELECT * FROM t WHERE a = lower('X')")
    hits, misses, _, size = router.cache_info()
    assert (hits, misses, size) == (0, 1, 1)
    second = router.classify("SELECT * FROM t WHERE a = lower('X')")
    assert second is first
    assert router.cache_info()[:2] == (1, 1)


def test_the_cache_is_bounded_and_drops_the_least_recently_used() -> None:
    router = Router(cache_size=3)
    for i in range(10):
        router.classify(f"SELECT {i}")
    assert router.cache_info()[3] == 3
    router.classify("SELECT 7")  # still cached
    assert router.cache_info()[0] == 1
    router.classify("SELECT 0")  # dropped long ago
    assert router.cache_info()[:2] == (1, 11)


def test_cache_size_zero_classifies_every_time() -> None:
    router = Router(cache_size=0)
    assert router.classify("SELECT 1") == Decision(write=False)
    assert router.classify("INSERT INTO t VALUES (1)").write
    assert router.cache_info()[3] == 0


def test_equal_decisions_are_one_object() -> None:
    router = Router()
    assert router.classify("SELECT 1") is router.classify("SELECT 2")
    assert router.classify("BEGIN READ ONLY") is router.classify("START TRANSACTION READ ONLY")


def test_long_texts_are_classified_but_not_cached() -> None:
    router = Router()
    long_read = "SELECT " + ", ".join(f"c{i}" for i in range(2000)) + " FROM t"
    assert len(long_read) > _router.CACHE_TEXT_LIMIT
    assert not router.classify(long_read).write
    assert router.classify(long_read + " FOR UPDATE").write
    assert router.cache_info()[3] == 0


@pytest.mark.parametrize("max_length", [20, 10_000])
def test_max_length(max_length: int) -> None:
    router = Router(max_length=max_length)
    short = "SELECT 1"
    too_long = "SELECT " + "1 + " * max_length + "1"
    assert not router.classify(short).write
    assert router.classify(too_long).write
    assert not Router().classify(too_long).write  # no limit: parsed, a read
    exactly = "SELECT " + "1" * (max_length - 7)
    assert len(exactly) == max_length
    assert not router.classify(exactly).write


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="max_length"):
        Router(max_length=-1)
    with pytest.raises(ValueError, match="cache_size"):
        Router(cache_size=-5)


def test_decision_is_immutable() -> None:
    d = Router().classify("SELECT 1")
    with pytest.raises(AttributeError):
        d.write = True  # type: ignore[misc]


# --- defensive paths -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("on", True), ("ON", True), ("off", False), ("of", False), ("true", True),
        ("t", True), ("tr", True), ("false", False), ("f", False), ("yes", True),
        ("y", True), ("no", False), ("n", False), ("1", True), ("0", False),
        (" on ", True), ("o", None), ("", None), ("2", None), ("maybe", None),
        ("truee", None), ("onn", None),
    ],
)  # fmt: skip
def test_postgresql_boolean_input(text: str, value: bool | None) -> None:
    assert _tree._pg_bool(text) is value


def test_a_function_call_the_json_pattern_cannot_read_goes_to_the_walk() -> None:
    js = (
        '{"version":1,"stmts":[{"stmt":{"SelectStmt":{"targetList":[{"ResTarget":{"val":'
        '{"FuncCall":{"args":[],"funcname":[{"String":{"sval":"now"}}]}}}}]}}}]}'
    )
    assert _router._select_writes_from_json(js, "SELECT now()") is None
    assert not _tree.classify_statements(json.loads(js)["stmts"])[0]


def test_a_tree_shape_the_rules_do_not_know_is_a_write(monkeypatch: pytest.MonkeyPatch) -> None:
    def unknown_shape(stmts: object) -> tuple[bool, bool, bool | None, bool]:
        raise KeyError("stmt")

    monkeypatch.setattr(_router, "classify_statements", unknown_shape)
    assert _router.classify_text("BEGIN") == Decision(write=True)
    assert _router.classify_text("/* pgsansio_role: replica */ BEGIN") == Decision(
        write=True, hint="replica"
    )


# --- garbage ---------------------------------------------------------------------------


def _parses(sql: str) -> bool:
    try:
        parse_sql_json(sql)
    except Exception:
        return False
    return "\x00" not in sql


_SQLISH = st.lists(
    st.sampled_from(
        [
            "SELECT", "INSERT", "UPDATE", "DELETE", "BEGIN", "COMMIT", "WITH", "FROM", "t",
            "(", ")", ",", ";", "'", '"', "/*", "*/", "--", "\n", " ", "1", "now()",
            "nextval('s')", "FOR UPDATE", "INTO", "SET", "SERVER", "ROLE", "TO", "'primary'",
            "SHOW", "PRIMARY", "READS", "pgsansio_role:", "replica", "$1", "AS", "x",
        ]
    ),
    max_size=12,
).map(" ".join)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), _SQLISH))
def test_any_text_gives_a_decision(sql: str) -> None:
    d = Router(cache_size=0).classify(sql)
    assert isinstance(d, Decision)
    if d.command is None and not _parses(sql):
        assert d.write


_EXPRS = [
    "1", "a", "'x'", "now()", "count(*)", "lower(a)", "pg_catalog.upper(a)", "nextval('s')",
    "public.lower(a)", "my_udf(a)", '"my""fn"(a)', "a.b.c(1)", "coalesce(a, 0)",
    "'FuncCall'", "'\"lockingClause\":'", "'nextval(1)'", "$1", "jsonb_build_object('k', a)",
]  # fmt: skip
_TAILS = ["", " FOR UPDATE", " FOR KEY SHARE", " LIMIT 1", " ORDER BY 1", ";", "; SELECT 2"]


@st.composite
def _selects(draw: st.DrawFn) -> str:
    def select(depth: int) -> str:
        exprs = draw(st.lists(st.sampled_from(_EXPRS), min_size=1, max_size=3))
        if depth < 2 and draw(st.booleans()):
            exprs.append(f"({select(depth + 1)})")
        into = " INTO t2" if depth == 0 and draw(st.integers(0, 9)) == 0 else ""
        where = ""
        if depth < 2 and draw(st.booleans()):
            where = f" WHERE EXISTS ({select(depth + 1)})"
        return f"SELECT {', '.join(exprs)}{into} FROM t{where}"

    body = select(0)
    if draw(st.booleans()):
        cte = draw(
            st.sampled_from(
                ["SELECT 1", "DELETE FROM u RETURNING *", "INSERT INTO u VALUES (1) RETURNING *"]
            )
        )
        body = f"WITH c AS ({cte}) {body}"
    return body + draw(st.sampled_from(_TAILS))


@settings(max_examples=300, deadline=None)
@given(_selects())
def test_the_json_shortcut_agrees_with_the_walk_on_generated_selects(sql: str) -> None:
    js = parse_sql_json(sql)
    expected = _tree.classify_statements(json.loads(js)["stmts"])
    got = _router.classify_text(sql)
    assert (got.write, got.begin, got.read_only, got.ends) == expected
    shortcut = _router._select_writes_from_json(js, sql)
    if shortcut is not None:
        assert shortcut == expected[0]


# --- licence isolation -----------------------------------------------------------------


def test_only_the_routing_package_imports_pglast() -> None:
    root = pathlib.Path(__file__).resolve().parents[1] / "pgsansio"
    offenders = []
    for path in root.rglob("*.py"):
        if path.is_relative_to(root / "routing"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(name == "pglast" or name.startswith("pglast.") for name in names):
                offenders.append(str(path.relative_to(root)))
    assert offenders == []


def test_without_pglast_the_import_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "pglast.parser", None)  # makes the import fail
    for name in ("pgsansio.routing", "pgsansio.routing._router"):
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=r"pip install pglast \(pgsansio's 'routing' extra\)"):
        importlib.import_module("pgsansio.routing")
