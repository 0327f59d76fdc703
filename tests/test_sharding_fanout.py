"""Cross-shard reads (``cross_shard = "fan_out"``) against real PostgreSQL, differentially.

Three shard databases each hold their REMAINDER of a hash-partitioned ``fdata`` table
(PostgreSQL refuses any other row), and a fourth, unsharded, holds every row. The same
query runs through the pooler (on the three shards, merged) and directly on the
unsharded database; the answers must be equal. hypothesis makes the rows and the
queries (ORDER BY, LIMIT/OFFSET, aggregates, GROUP BY). The default run is short (8
examples); ``make fanout-soak`` runs 300 (``FANOUT_EXAMPLES``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from _pooler import make_config, running
from _shard_databases import create_partitioned, drop_shards
from _wire import error_fields, login, message, query, read_messages
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgsansio.config.model import Config, ServerAddress, ShardConfig
from pgsansio.sharding import shard_for_key
from pgsansio.testing.cluster import Cluster

pytestmark = pytest.mark.postgres
pytest.importorskip("pglast", reason="cross_shard needs the routing extra (pglast)")

SHARDS = 3
NAMES = tuple(f"pgsansio_fan_{r}" for r in range(SHARDS))
WHOLE = "pgsansio_fan_all"
USER = "md5_user"
EXAMPLES = int(os.environ.get("FANOUT_EXAMPLES", "8"))
COLUMNS = 'id bigint NOT NULL, g int, n numeric(12,2), f float8, t text COLLATE "C"'


def _connect(cluster: Cluster, name: str) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host="127.0.0.1", port=cluster.port, user=cluster.superuser, dbname=name, autocommit=True
    )


@pytest.fixture(scope="module")
def fan(pg15: Cluster) -> Iterator[Cluster]:
    create_partitioned(pg15, NAMES, [("fdata", COLUMNS, "id")])
    pg15.execute(f"DROP DATABASE IF EXISTS {WHOLE} WITH (FORCE);")
    pg15.create_database(WHOLE)
    pg15.execute(f"CREATE TABLE fdata ({COLUMNS}); GRANT ALL ON fdata TO PUBLIC;", dbname=WHOLE)
    yield pg15
    drop_shards(pg15, (*NAMES, WHOLE))


def fan_config(cluster: Cluster, auth_type: str = "md5") -> Config:
    base = make_config(cluster, users=(USER,), auth_type=auth_type)
    (pool,) = base.pools.values()
    server = (ServerAddress("127.0.0.1", cluster.port, "primary"),)
    pool = replace(
        pool,
        shards=tuple(ShardConfig(r, NAMES[r], server) for r in range(SHARDS)),
        query_parser_enabled=True,
        automatic_sharding_key="fdata.id",
        cross_shard="fan_out",
    )
    return replace(base, pools={pool.name: pool})


Row = tuple[int, int | None, Decimal | None, float | None, str | None]


def load(cluster: Cluster, rows: list[Row]) -> None:
    conns = [_connect(cluster, name) for name in (*NAMES, WHOLE)]
    try:
        for conn in conns:
            conn.execute("TRUNCATE fdata")
        insert = "INSERT INTO fdata VALUES (%s, %s, %s, %s, %s)"
        for row in rows:
            conns[shard_for_key(row[0], SHARDS) or 0].execute(insert, row)
        with conns[-1].cursor() as cur:
            cur.executemany(insert, rows)
    finally:
        for conn in conns:
            conn.close()


rows_strategy = st.lists(
    st.tuples(
        st.integers(-(2**40), 2**40),
        st.one_of(st.none(), st.integers(-3, 3)),
        st.one_of(st.none(), st.decimals(-(10**6), 10**6, places=2)),
        st.one_of(st.none(), st.integers(-1000, 1000).map(lambda i: i / 4)),
        st.one_of(st.none(), st.text("abcXYZ é", max_size=3)),
    ),
    max_size=60,
    unique_by=lambda r: r[0],
)

_WHERE = st.sampled_from(["", " WHERE g IS NOT NULL", " WHERE id > 0", " WHERE t < 'b'"])
_LIMIT = st.sampled_from(["", " LIMIT 0", " LIMIT 3", " LIMIT 7 OFFSET 2", " OFFSET 5"])
_ORDER = st.sampled_from(
    [
        "id",
        "id DESC",
        "g NULLS FIRST, id",
        "g DESC, id",
        "n DESC NULLS LAST, id",
        "f, id DESC",
        't COLLATE "C" DESC, id',
    ]
)
_AGG = st.sampled_from(
    [
        "count(*)",
        "count(g)",
        "sum(g)",
        "sum(n)",
        "min(n)",
        "max(f)",
        "avg(g)",
        "avg(n)",
        "sum(id)",
        "avg(id)",
        "min(id)",
        "sum(f)",
    ]
)


@st.composite
def queries(draw: st.DrawFn) -> tuple[str, bool]:
    """A query text, and whether its row order is defined (else compared as a set)."""
    where = draw(_WHERE)
    kind = draw(st.sampled_from(["plain", "ordered", "aggregate", "grouped"]))
    if kind == "plain":
        return f"SELECT id, g, t FROM fdata{where}", False
    if kind == "ordered":
        order = draw(_ORDER)
        return f"SELECT id, g, n, f, t FROM fdata{where} ORDER BY {order}{draw(_LIMIT)}", True
    aggs = ", ".join(draw(st.lists(_AGG, min_size=1, max_size=4)))
    if kind == "aggregate":
        return f"SELECT {aggs} FROM fdata{where}", True
    key = draw(st.sampled_from(["g", "t"]))
    desc = draw(st.sampled_from(["", " DESC"]))
    collate = ' COLLATE "C"' if key == "t" else ""
    order = f" ORDER BY {key}{collate}{desc}"
    return f"SELECT {key}, {aggs} FROM fdata{where} GROUP BY {key}{order}{draw(_LIMIT)}", True


def _close(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    return a == b


def _same(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]], ordered: bool) -> bool:
    if not ordered:
        got, want = sorted(got, key=repr), sorted(want, key=repr)
    return len(got) == len(want) and all(
        len(g) == len(w) and all(_close(x, y) for x, y in zip(g, w, strict=True))
        for g, w in zip(got, want, strict=True)
    )


def test_cross_shard_reads_equal_one_database(fan: Cluster) -> None:
    with running(fan_config(fan), frontend="asyncio") as p:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(rows=rows_strategy, qs=st.lists(queries(), min_size=4, max_size=8))
        def check(rows: list[Row], qs: list[tuple[str, bool]]) -> None:
            load(fan, rows)
            with (
                psycopg.connect(p.dsn(USER), autocommit=True) as pooled,
                _connect(fan, WHOLE) as direct,
            ):
                for sql, ordered in qs:
                    want = direct.execute(sql).fetchall()
                    got = pooled.execute(sql, prepare=False).fetchall()
                    assert _same(got, want, ordered), (sql, got, want)
                    # the extended protocol: a prepared statement (Parse, Sync; then
                    # Bind, Describe, Execute, Sync), and unnamed with a parameter
                    got = pooled.execute(sql, prepare=True).fetchall()
                    assert _same(got, want, ordered), ("prepared", sql, got, want)
                    with_param = sql.replace(" FROM fdata", " FROM fdata, (SELECT %s) p", 1)
                    got = pooled.execute(with_param, (1,), prepare=False).fetchall()
                    assert _same(got, want, ordered), ("bound", sql, got, want)

        check()


def test_what_is_not_merged_is_refused(fan: Cluster) -> None:
    load(fan, [(1, 1, Decimal(1), 1.0, "a"), (2, 2, Decimal(2), 2.0, "b")])
    with (
        running(fan_config(fan), frontend="asyncio") as p,
        psycopg.connect(p.dsn(USER), autocommit=True) as conn,
    ):
        for sql, words in [
            ("SELECT DISTINCT g FROM fdata", "DISTINCT"),
            ("SELECT g, count(*) FROM fdata GROUP BY g HAVING count(*) > 1", "HAVING"),
            ("SELECT id, row_number() OVER () FROM fdata", "window"),
            ("SELECT string_agg(t, ',') FROM fdata", "string_agg"),
            ("SELECT sum(g) + 1 FROM fdata", "inside an expression"),
            ("SELECT id FROM fdata ORDER BY g", "not a result column"),
            ("SELECT t FROM fdata ORDER BY t", 'COLLATE "C"'),
            ("SELECT id FROM fdata UNION SELECT id FROM fdata", "UNION"),
            ("SELECT id FROM fdata WHERE g = (SELECT max(g) FROM fdata)", "subquery"),
            ("WITH x AS (SELECT id FROM fdata LIMIT 1) SELECT id FROM x", "WITH query"),
            ("INSERT INTO fdata (g) VALUES (1)", "write with no sharding key"),
            ("UPDATE fdata SET g = 2", "write with no sharding key"),
            ("DELETE FROM fdata", "write with no sharding key"),
        ]:
            with pytest.raises(psycopg.errors.FeatureNotSupported, match=words):
                conn.execute(sql, prepare=False)
        # The session goes on; keyed statements and statements with no table still work.
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.execute("INSERT INTO fdata (id, g) VALUES (3, 3)")
        assert conn.execute("SELECT g FROM fdata WHERE id = 3").fetchall() == [(3,)]
        assert conn.execute("SELECT count(*) FROM fdata").fetchone() == (3,)
        assert conn.execute("SELECT id FROM fdata ORDER BY id DESC LIMIT 2").fetchall() == [
            (3,),
            (2,),
        ]


def test_large_results_stream_in_order(fan: Cluster) -> None:
    """60,000 rows merged in order (the shard ahead of the others waits, paused past
    a bound, and is read again as the merge goes on): nothing is lost or reordered,
    and the pool's servers are usable afterwards (not left unread)."""
    for r, name in enumerate(NAMES):
        with _connect(fan, name) as conn:
            conn.execute("TRUNCATE fdata")
            conn.execute(
                "INSERT INTO fdata (id, g) SELECT i, i % 7 FROM generate_series(1, 60000) i"
                f" WHERE satisfies_hash_partition('fdata'::regclass, {SHARDS}, {r}, i::bigint)"
            )
    with (
        running(fan_config(fan), frontend="asyncio") as p,
        psycopg.connect(p.dsn(USER), autocommit=True) as conn,
    ):
        with conn.cursor() as cur:
            cur.execute("SELECT id, g FROM fdata ORDER BY id DESC", prepare=False)
            got = []
            while batch := cur.fetchmany(5000):
                got.extend(row[0] for row in batch)
        assert got == list(range(60000, 0, -1))
        total = conn.execute("SELECT count(*), sum(id), avg(g) FROM fdata").fetchone()
        assert total is not None
        assert total[:2] == (60000, 60000 * 60001 // 2)
        rows = conn.execute(
            "SELECT g, count(*) FROM fdata GROUP BY g ORDER BY g", prepare=False
        ).fetchall()
        assert rows == [(g, sum(1 for i in range(1, 60001) if i % 7 == g)) for g in range(7)]
        first = conn.execute("SELECT id FROM fdata ORDER BY id LIMIT 3").fetchall()
        assert first == [(1,), (2,), (3,)]  # the legs still sending were cancelled
        threes = sum(1 for i in range(1, 60001) if i % 7 == 3)
        assert conn.execute("SELECT count(*) FROM fdata WHERE g = 3").fetchone() == (threes,)
        # A client that leaves in the middle: its job ends, the legs' queries are
        # cancelled, and the servers serve the next queries.
        for _ in range(3):
            gone = psycopg.connect(p.dsn(USER), autocommit=True)
            gone.pgconn.send_query(b"SELECT id, g FROM fdata ORDER BY id")
            time.sleep(0.05)
            gone.close()
        deadline = time.monotonic() + 10
        while p.engine.fanout.jobs and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.engine.fanout.jobs == 0
        for _ in range(5):
            assert conn.execute("SELECT count(*) FROM fdata").fetchone() == (60000,)


def test_a_multi_row_insert_is_split_per_shard_all_or_nothing(fan: Cluster) -> None:
    """A multi-row INSERT with rows for several shards runs as one INSERT per shard
    (PostgreSQL refuses a misplaced row), committed only once every shard inserted;
    a row one shard refuses rolls the others back."""
    load(fan, [])
    keys = list(range(1000, 1030))
    assert len({shard_for_key(k, SHARDS) for k in keys}) == SHARDS
    values = ", ".join(f"({k}, {k % 5}, 't{k}')" for k in keys)
    with (
        running(fan_config(fan), frontend="asyncio") as p,
        psycopg.connect(p.dsn(USER), autocommit=True) as conn,
    ):
        cur = conn.execute(f"INSERT INTO fdata (id, g, t) VALUES {values}", prepare=False)
        assert cur.rowcount == len(keys)
        for r, name in enumerate(NAMES):  # each shard holds its own rows, directly
            with _connect(fan, name) as direct:
                ids = [row[0] for row in direct.execute("SELECT id FROM fdata ORDER BY id")]
            assert ids == [k for k in keys if shard_for_key(k, SHARDS) == r]
        # One shard refuses its row (numeric(12,2) overflows): nothing is inserted.
        bad = next(k for k in range(2000, 2100) if shard_for_key(k, SHARDS) == 2)
        rows = ", ".join(f"({k}, 1)" for k in range(3000, 3010))
        with pytest.raises(psycopg.errors.NumericValueOutOfRange):
            conn.execute(f"INSERT INTO fdata (id, n) VALUES {rows}, ({bad}, 1e20)", prepare=False)
        assert conn.execute("SELECT count(*) FROM fdata").fetchone() == (len(keys),)
        assert conn.execute("SELECT count(*) FROM fdata WHERE id >= 2000").fetchone() == (0,)
        # The session goes on, and single-shard INSERTs are not split.
        conn.execute("INSERT INTO fdata (id) VALUES (5000), (5000)")
        assert conn.execute("SELECT count(*) FROM fdata WHERE id = 5000").fetchone() == (2,)


def test_fan_out_on_every_frontend(fan: Cluster, pooler_frontend: str) -> None:
    """The legs' effects (reads paused and resumed, answers to ids no socket has)
    are the frontends' too: the same merges on each of them."""
    for r, name in enumerate(NAMES):
        with _connect(fan, name) as conn:
            conn.execute("TRUNCATE fdata")
            conn.execute(
                "INSERT INTO fdata (id, g) SELECT i, i % 3 FROM generate_series(1, 9000) i"
                f" WHERE satisfies_hash_partition('fdata'::regclass, {SHARDS}, {r}, i::bigint)"
            )
    with (
        running(fan_config(fan)) as p,
        psycopg.connect(p.dsn(USER), autocommit=True) as conn,
    ):
        rows = conn.execute("SELECT id FROM fdata ORDER BY id DESC", prepare=False).fetchall()
        assert [row[0] for row in rows] == list(range(9000, 0, -1))
        assert conn.execute("SELECT g, count(*) FROM fdata GROUP BY g ORDER BY g").fetchall() == [
            (0, 3000),
            (1, 3000),
            (2, 3000),
        ]
        conn.execute("INSERT INTO fdata (id) VALUES (10001), (10002), (10003), (10004)")
        assert conn.execute("SELECT max(id), count(*) FROM fdata").fetchone() == (10004, 9004)
        with conn.cursor() as cur:
            with cur.copy("COPY fdata (id) FROM STDIN") as copy:
                copy.write("".join(f"{k}\n" for k in range(20001, 20301)).encode())
            assert cur.rowcount == 300
        assert conn.execute("SELECT max(id), count(*) FROM fdata").fetchone() == (20300, 9304)


def test_a_cancel_request_cancels_every_shard_s_part(fan: Cluster) -> None:
    load(fan, [(k, 1, None, None, None) for k in range(1, 10)])
    with (
        running(fan_config(fan), frontend="asyncio") as p,
        psycopg.connect(p.dsn(USER), autocommit=True) as conn,
    ):
        outcome: list[BaseException | None] = []

        def sleeper() -> None:
            try:
                conn.execute("SELECT pg_sleep(5), id FROM fdata", prepare=False)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=sleeper)
        started = time.monotonic()
        thread.start()
        time.sleep(0.5)  # (conn.cancel() would hold the GIL: the pooler could not run)
        conn.cancel_safe(timeout=5)
        thread.join(5)
        assert not thread.is_alive(), "the query was not cancelled"
        assert time.monotonic() - started < 4
        assert len(outcome) == 1 and isinstance(outcome[0], psycopg.errors.QueryCanceled)
        assert conn.execute("SELECT count(*) FROM fdata").fetchone() == (9,)


def test_admin_console_shows_a_pool_row_per_shard(fan: Cluster) -> None:
    """SHOW POOLS: the pool's row, then one per shard named as SHOW DATABASES names it;
    a client in a transaction on shard 1 counts there, with its server."""
    with (
        running(fan_config(fan), frontend="asyncio") as p,
        psycopg.connect(p.dsn(USER), autocommit=True) as conn,
        psycopg.connect(p.dsn("admin", "admin", dbname="pgbouncer"), autocommit=True) as admin,
    ):
        conn.execute("SET SHARD TO '1'")
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM fdata").fetchall()  # on shard 1, in a transaction
        (name,) = fan_config(fan).pools
        shards = [f"{name}_shard_{r}_primary" for r in range(SHARDS)]
        databases = admin.execute("SHOW DATABASES").fetchall()
        assert [(r[0], r[3]) for r in databases] == list(zip(shards, NAMES, strict=True))
        cur = admin.execute("SHOW POOLS")
        columns = [d.name for d in cur.description or ()]
        pools = {(r[0], r[1]): dict(zip(columns, r, strict=True)) for r in cur.fetchall()}
        assert sorted(pools) == sorted([(name, USER)] + [(s, USER) for s in shards])
        assert pools[name, USER]["cl_active"] == 1 and pools[name, USER]["sv_active"] == 1
        held = pools[shards[1], USER]
        assert (held["cl_active"], held["sv_active"], held["pool_mode"]) == (1, 1, "transaction")
        for other in (shards[0], shards[2]):
            assert (pools[other, USER]["cl_active"], pools[other, USER]["sv_active"]) == (0, 0)
        conn.execute("ROLLBACK")
        pools = {r[0]: r for r in admin.execute("SHOW POOLS").fetchall()}
        assert pools[shards[1]][columns.index("sv_idle")] == 1
        assert pools[shards[1]][columns.index("cl_active")] == 0


def _shard_ids(cluster: Cluster) -> list[list[int]]:
    out = []
    for name in NAMES:
        with _connect(cluster, name) as direct:
            out.append([row[0] for row in direct.execute("SELECT id FROM fdata ORDER BY id")])
    return out


def _by_shard(keys: list[int]) -> list[list[int]]:
    return [sorted(k for k in keys if shard_for_key(k, SHARDS) == r) for r in range(SHARDS)]


def test_copy_from_stdin_sends_each_row_to_its_shard(fan: Cluster) -> None:
    """COPY FROM STDIN, text and CSV: each row lands on its key's shard (PostgreSQL
    refuses a misplaced row), rows cut across CopyData messages, the client's tag the
    total; a big row passes in pieces."""
    load(fan, [])
    keys = list(range(5000, 5200))
    with (
        running(fan_config(fan), frontend="asyncio") as p,
        psycopg.connect(p.dsn(USER), autocommit=True) as conn,
        conn.cursor() as cur,
    ):
        with cur.copy("COPY fdata (g, id, t) FROM STDIN") as copy:
            data = "".join(f"{k % 7}\t{k}\tt\\t{k}\n" for k in keys[:100]).encode()
            for i in range(0, len(data), 37):  # rows cut anywhere between messages
                copy.write(data[i : i + 37])
        assert cur.rowcount == 100
        with cur.copy("COPY fdata (id, t) FROM STDIN WITH (FORMAT csv, HEADER)") as copy:
            copy.write(b"id,t\n")
            for k in keys[100:199]:
                copy.write(f'"{k}","a,""b""\nc"\n'.encode())
            copy.write(f"{keys[199]},{'x' * 1_500_000}".encode())  # no newline at the end
        assert cur.rowcount == 100
        assert _shard_ids(fan) == _by_shard(keys)
        assert conn.execute("SELECT count(*), sum(length(t)) FROM fdata").fetchone() == (
            200,
            sum(len(f"t\t{k}") for k in keys[:100]) + 99 * len('a,"b"\nc') + 1_500_000,
        )


def test_a_copy_that_fails_anywhere_writes_nothing(fan: Cluster) -> None:
    """A bad key, a shard refusing a row, or the client's CopyFail: every shard rolls
    back, the client gets the error, and its session goes on."""
    load(fan, [])
    good = list(range(6000, 6030))
    overflow = next(k for k in range(7000, 7100) if shard_for_key(k, SHARDS) == 2)
    with (
        running(fan_config(fan), frontend="asyncio") as p,
        psycopg.connect(p.dsn(USER), autocommit=True) as conn,
        conn.cursor() as cur,
    ):
        with (
            pytest.raises(psycopg.errors.InvalidTextRepresentation, match='"abc"'),
            cur.copy("COPY fdata (id) FROM STDIN") as copy,
        ):
            copy.write("".join(f"{k}\n" for k in good).encode())
            copy.write(b"abc\n")
            copy.write(b"6100\n")
        with (
            pytest.raises(psycopg.errors.NullValueNotAllowed, match="NULL"),
            cur.copy("COPY fdata (g, id) FROM STDIN (FORMAT csv)") as copy,
        ):
            copy.write("".join(f"1,{k}\n" for k in good).encode())
            copy.write(b"2,\n")
        with (
            pytest.raises(psycopg.errors.NumericValueOutOfRange),
            cur.copy("COPY fdata (id, n) FROM STDIN (FORMAT csv)") as copy,
        ):
            copy.write("".join(f"{k},1\n" for k in good).encode())
            copy.write(f"{overflow},1e20\n".encode())
        with (
            pytest.raises(ZeroDivisionError),
            cur.copy("COPY fdata (id) FROM STDIN") as copy,
        ):
            copy.write("".join(f"{k}\n" for k in good).encode())
            1 / 0  # noqa: B018 (the client's CopyFail)
        with (
            pytest.raises(psycopg.errors.FeatureNotSupported, match="column list"),
            cur.copy("COPY fdata FROM STDIN") as copy,
        ):
            copy.write(b"1\n")
        assert _shard_ids(fan) == [[], [], []]
        assert conn.execute("SELECT count(*) FROM fdata").fetchone() == (0,)
        with cur.copy("COPY fdata (id) FROM STDIN") as copy:
            copy.write("".join(f"{k}\n" for k in good).encode())
        assert _shard_ids(fan) == _by_shard(good)


def test_a_slow_shard_holds_the_copy_s_client_back(fan: Cluster) -> None:
    """A shard that reads its COPY slowly (a trigger sleeps on each row) stops the
    pooler reading the client, rather than the pooler buffering what the shard has
    not taken."""
    load(fan, [])
    slow = NAMES[1]
    fan.execute(
        "CREATE FUNCTION nap() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(0.001); RETURN NEW; END $$; "
        "CREATE TRIGGER nap BEFORE INSERT ON fdata FOR EACH ROW EXECUTE FUNCTION nap();",
        dbname=slow,
    )
    keys = [k for k in range(20000, 24000) if shard_for_key(k, SHARDS) == 1][:800]
    try:
        with (
            running(fan_config(fan), frontend="asyncio") as p,
            psycopg.connect(p.dsn(USER), autocommit=True) as conn,
            conn.cursor() as cur,
        ):
            with cur.copy("COPY fdata (id, t) FROM STDIN") as copy:
                for k in keys:
                    copy.write(f"{k}\t{'y' * 10_000}\n".encode())
            assert cur.rowcount == len(keys)
            assert p.engine.fanout.copy_holds > 0
        assert _shard_ids(fan) == [[], sorted(keys), []]
    finally:
        fan.execute("DROP TRIGGER nap ON fdata; DROP FUNCTION nap();", dbname=slow)


_DIES_MID_COPY = """
import os, sys
import psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
with conn.cursor() as cur, cur.copy("COPY fdata (id, t) FROM STDIN") as copy:
    copy.write("".join(f"{k}\\tx\\n" for k in range(8000, 8100)).encode())
    conn.pgconn.flush()
    os._exit(0)  # the client's process dies mid-COPY: the kernel closes its socket
"""


def test_a_client_that_dies_mid_copy_writes_nothing(fan: Cluster) -> None:
    """A client gone in the middle of a split COPY: every shard rolls back, and the
    shards' servers serve the next COPY (none is left in copy-in mode)."""
    load(fan, [])
    keys = list(range(9000, 9060))
    with running(fan_config(fan), frontend="asyncio") as p:
        died = subprocess.run(
            [sys.executable, "-c", _DIES_MID_COPY, p.dsn(USER)], timeout=30, check=False
        )
        assert died.returncode == 0
        with psycopg.connect(p.dsn(USER), autocommit=True) as conn, conn.cursor() as cur:
            for _ in range(3):  # as many COPYs as there are servers per shard, and more
                with cur.copy("COPY fdata (id, t) FROM STDIN") as copy:
                    copy.write("".join(f"{k}\ty\n" for k in keys[:20]).encode())
                assert cur.rowcount == 20
                keys = keys[20:]
        assert _shard_ids(fan) == _by_shard(list(range(9000, 9060)))


def test_a_message_other_than_copy_data_ends_a_split_copy(fan: Cluster) -> None:
    """A Query in the middle of a split COPY gets PostgreSQL's 08P01, nothing is
    written, and the session answers what follows (raw protocol: drivers never do it)."""
    load(fan, [])
    config = fan_config(fan, auth_type="trust")
    (database,) = config.pools
    with running(config, frontend="asyncio") as p:
        sock = login(p.port, USER, database)
        try:
            sock.sendall(query("COPY fdata (id, t) FROM STDIN"))
            assert read_messages(sock, until=b"G")[-1][:1] == b"G"
            rows = "".join(f"{k}\tz\n" for k in range(9100, 9130)).encode()
            sock.sendall(message(b"d", rows) + query("SELECT 1") + query("SELECT 2"))
            answers = read_messages(sock) + read_messages(sock)
            kinds = [m[:1] for m in answers]
            assert kinds == [b"E", b"Z", b"T", b"D", b"C", b"Z"], kinds
            fields = error_fields(answers[0])
            assert fields["C"] == "08P01", fields
            assert "unexpected message type 0x51 during COPY" in fields["M"]
        finally:
            sock.close()
    assert _shard_ids(fan) == [[] for _ in range(SHARDS)]
