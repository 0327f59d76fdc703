"""Sharding against real PostgreSQL: three databases on the session's cluster, each
holding only its REMAINDER of a hash-partitioned ``data`` table, so PostgreSQL itself
refuses a row the pooler sends to the wrong shard (``pg_bigint_hash`` must be its
partition hash, bit for bit). One frontend: routing is the engine's.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from _pooler import make_config, running
from _shard_databases import create_partitioned, drop_shards

from pgsansio.config.model import Config, ServerAddress, ShardConfig
from pgsansio.sharding import shard_for_key, shard_for_typed_key
from pgsansio.testing.cluster import TEST_DATABASE, TEST_USERS, Cluster

pytestmark = pytest.mark.postgres

SHARDS = 3
NAMES = tuple(f"pgsansio_shard_{r}" for r in range(SHARDS))
USER = "md5_user"


@pytest.fixture(scope="module")
def shards(pg15: Cluster) -> Iterator[Cluster]:
    create_partitioned(
        pg15,
        NAMES,
        [
            ("data", "id bigint NOT NULL, v text", "id"),
            # text and uuid keys (sharding_key_type)
            ("tdata", "k text NOT NULL, v text", "k"),
            ("udata", "k uuid NOT NULL, v text", "k"),
        ],
    )
    yield pg15
    drop_shards(pg15, NAMES)


def sharded(cluster: Cluster, **pool_kw: object) -> Config:
    base = make_config(cluster, users=(USER,))
    (pool,) = base.pools.values()
    server = (ServerAddress("127.0.0.1", cluster.port, "primary"),)
    pool = replace(
        pool,
        shards=tuple(ShardConfig(r, NAMES[r], server) for r in range(SHARDS)),
        **pool_kw,  # type: ignore[arg-type]
    )
    return replace(base, pools={pool.name: pool})


def test_rows_land_on_the_shard_postgresql_partitions_them_to(shards: Cluster) -> None:
    cfg = sharded(shards, sharding_key_regex=r"/\* sharding_key: (\d+) \*/")
    with (
        running(cfg, frontend="asyncio") as p,
        psycopg.connect(p.dsn(USER), autocommit=True) as conn,
    ):
        for key in range(30):
            conn.execute(f"SET SHARDING KEY TO '{key}'")
            conn.execute("INSERT INTO data VALUES (%s, 'set')", (key,))
        for key in range(30, 60):  # the comment, in the extended protocol
            conn.execute(f"/* sharding_key: {key} */ INSERT INTO data VALUES (%s, 'c')", (key,))
        counts = []
        for r in range(SHARDS):
            conn.execute(f"SET SHARD TO '{r}'")
            cur = conn.execute("SELECT id FROM data ORDER BY id")
            ids = [row[0] for row in cur.fetchall()]
            assert all(shard_for_key(i, SHARDS) == r for i in ids)
            counts.append(len(ids))
        assert sum(counts) == 60 and all(counts)
        # A misrouted row: PostgreSQL refuses it, so the check above means something.
        wrong = next(k for k in range(100) if shard_for_key(k, SHARDS) != 0)
        conn.execute("SET SHARD TO '0'")
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO data VALUES (%s, 'wrong')", (wrong,))
        cur = conn.execute("SHOW SHARD")
        assert cur.fetchall() == [("0",)]


def _ids_per_shard(conn: psycopg.Connection[tuple[int]], tag: str) -> list[list[int]]:
    per_shard = []
    for r in range(SHARDS):
        conn.execute(f"SET SHARD TO '{r}'")
        cur = conn.execute("SELECT id FROM data WHERE v = %s ORDER BY id", (tag,))
        per_shard.append([row[0] for row in cur.fetchall()])
    return per_shard


async def _asyncpg_connect(asyncpg: Any, port: int, **kw: object) -> Any:
    return await asyncpg.connect(
        host="127.0.0.1",
        port=port,
        user=USER,
        password=TEST_USERS[USER][1],
        database=TEST_DATABASE,
        ssl=False,
        **kw,
    )


def test_automatic_sharding_key_routes_psycopg_and_asyncpg(shards: Cluster) -> None:
    """The key found in the SQL and in the Bind parameters (text and binary), through
    two drivers: every row lands where PostgreSQL's partitioning puts it (it refuses
    any other), and every keyed statement finds its row."""
    pytest.importorskip("pglast", reason="automatic_sharding_key needs pglast")
    asyncpg = pytest.importorskip("asyncpg", reason="asyncpg is a dev dependency (pgsansio[dev])")
    cfg = sharded(shards, query_parser_enabled=True, automatic_sharding_key="data.id")
    scales = (1, 10**6, 10**9)  # psycopg sends them as int2, int4, int8
    binary = [k * scales[k % 3] for k in range(115, 130)]
    keys = [*range(100, 115), *binary, *range(130, 140)]
    with running(cfg, frontend="asyncio") as p:
        with psycopg.connect(p.dsn(USER), autocommit=True) as conn:
            for key in range(100, 115):  # text parameters; prepared after 5 (named)
                conn.execute("INSERT INTO data (id, v) VALUES (%s, 'auto')", (key,))
            for key in binary:  # binary parameters
                conn.execute("INSERT INTO data (v, id) VALUES ('auto', %b)", (key,))
            for key in range(130, 140):  # literals, in the simple protocol
                conn.execute(f"INSERT INTO data (id, v) VALUES ({key}, 'auto')")
                cur = conn.execute(f"UPDATE data SET v = 'auto' WHERE id = {key}")
                assert cur.rowcount == 1
            for key in keys:
                cur = conn.execute("SELECT id FROM data WHERE id = %s", (key,))
                assert cur.fetchall() == [(key,)], key
                cur = conn.execute("SELECT d.id FROM data d WHERE d.id = %b", (key,))
                assert cur.fetchall() == [(key,)], key
            per_shard = _ids_per_shard(conn, "auto")
            assert sorted(i for ids in per_shard for i in ids) == sorted(keys)
            for r, ids in enumerate(per_shard):
                assert ids and all(shard_for_key(i, SHARDS) == r for i in ids)
            # Keys on two shards: no key, so default_shard (shard_0) -- which refuses.
            a = next(k for k in range(200, 300) if shard_for_key(k, SHARDS) == 1)
            b = next(k for k in range(200, 300) if shard_for_key(k, SHARDS) == 2)
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute("INSERT INTO data (id, v) VALUES (%s, 'x'), (%s, 'x')", (a, b))

        insert = "INSERT INTO data (id, v) VALUES ($1, 'apg')"
        select = "SELECT id FROM data WHERE id = $1"
        first = next(k for k in range(300, 400) if shard_for_key(k, SHARDS) == 0)

        async def with_asyncpg() -> list[int]:
            apg = await _asyncpg_connect(asyncpg, p.port)
            try:
                # asyncpg prepares a text (Parse, Describe, Flush) and binds it in a
                # second step on the same server: that first execution goes where no
                # key is known yet, default_shard. Later ones are bound to the prepared
                # statement and routed by their binary int8 key.
                await apg.execute(insert, first)
                assert await apg.fetchval(select, first) == first
                for key in range(400, 420):
                    await apg.execute(insert, key)
                return [await apg.fetchval(select, key) for key in range(400, 420)]
            finally:
                await apg.close()

        assert asyncio.run(with_asyncpg()) == list(range(400, 420))
        with psycopg.connect(p.dsn(USER), autocommit=True) as conn:
            per_shard = _ids_per_shard(conn, "apg")
        assert sorted(i for ids in per_shard for i in ids) == [first, *range(400, 420)]
        assert all(per_shard)


def test_bind_keys_route_the_first_execution(shards: Cluster) -> None:
    """A statement whose key is a ``$n`` parameter is prepared before its Bind
    arrives (asyncpg: Parse, Describe, Flush; pg8000: Parse, Describe, Sync; psycopg's
    prepare=True: Parse, Sync). The Bind moves the client to the key's shard before
    the statement runs, so even the first execution lands where PostgreSQL's
    partitioning puts the row (it refuses any other), whichever shard the Parse met."""
    pytest.importorskip("pglast", reason="automatic_sharding_key needs pglast")
    asyncpg = pytest.importorskip("asyncpg", reason="asyncpg is a dev dependency (pgsansio[dev])")
    pg8000 = pytest.importorskip("pg8000.native", reason="pg8000 is a dev dependency")
    cfg = sharded(shards, query_parser_enabled=True, automatic_sharding_key="data.id")
    # Keys off the default shard (shard_0), where a misrouted first execution went.
    off = [k for k in range(10_000, 10_400) if shard_for_key(k, SHARDS) != 0]
    groups = [off[i * 12 : (i + 1) * 12] for i in range(4)]
    with running(cfg, frontend="asyncio") as p:

        async def with_asyncpg(keys: list[int], cache: int) -> list[int | None]:
            # statement_cache_size=0: unnamed statements
            apg = await _asyncpg_connect(asyncpg, p.port, statement_cache_size=cache)
            try:
                got: list[int | None] = []
                for key in keys:  # each text new: its first execution every time
                    await apg.execute(f"INSERT INTO data (id, v) VALUES ($1, 'b{key}')", key)
                    got.append(
                        await apg.fetchval(f"SELECT id /* {key} */ FROM data WHERE id = $1", key)
                    )
                return got
            finally:
                await apg.close()

        assert asyncio.run(with_asyncpg(groups[0], 100)) == groups[0]
        assert asyncio.run(with_asyncpg(groups[1], 0)) == groups[1]
        with psycopg.connect(p.dsn(USER), autocommit=True) as conn:
            for key in groups[2]:
                sql = f"INSERT INTO data (id, v) VALUES (%s, 'b{key}')"
                conn.execute(sql, (key,), prepare=True)
                cur = conn.execute("SELECT id FROM data WHERE id = %s", (key,), prepare=True)
                assert cur.fetchall() == [(key,)]
        con = pg8000.Connection(
            USER,
            host="127.0.0.1",
            port=p.port,
            database=TEST_DATABASE,
            password=TEST_USERS[USER][1],
        )
        try:
            for key in groups[3]:
                con.run(f"INSERT INTO data (id, v) VALUES (:k, 'b{key}')", k=key)
                assert con.run("SELECT id FROM data WHERE id = :k", k=key) == [[key]]
        finally:
            con.close()
        with psycopg.connect(p.dsn(USER), autocommit=True) as conn:
            per_shard = []
            for r in range(SHARDS):
                conn.execute(f"SET SHARD TO '{r}'")
                cur = conn.execute("SELECT id FROM data WHERE v LIKE 'b%' ORDER BY id")
                per_shard.append([row[0] for row in cur.fetchall()])
    assert sorted(i for ids in per_shard for i in ids) == sorted(k for g in groups for k in g)
    assert not per_shard[0]


@pytest.mark.parametrize("key_type", ["text", "uuid"])
def test_text_and_uuid_keys_land_where_postgresql_partitions_them(
    shards: Cluster, key_type: str
) -> None:
    """sharding_key_type = text / uuid: SET SHARDING KEY, the key comment and the
    automatic key (literals; Bind parameters in text and binary, through psycopg and
    asyncpg) put each row on the shard PostgreSQL's hash partitioning of a text or
    uuid column gives it; it refuses any other."""
    pytest.importorskip("pglast", reason="automatic_sharding_key needs pglast")
    asyncpg = pytest.importorskip("asyncpg", reason="asyncpg is a dev dependency (pgsansio[dev])")
    table = "tdata" if key_type == "text" else "udata"
    rng = random.Random(12)
    if key_type == "text":
        words = ["", "a", "é", "日本語", "key with spaces", "O'Brien"[:1], "x" * 300]
        keys = [*words, *(f"user-{rng.randrange(10**9)}" for _ in range(53))]
    else:
        keys = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(60)]
    cfg = sharded(
        shards,
        sharding_key_type=key_type,
        sharding_key_regex=r"/\* key: ([^ ]*) \*/",
        query_parser_enabled=True,
        automatic_sharding_key=f"{table}.k",
    )
    cast = "::uuid" if key_type == "uuid" else ""
    with running(cfg, frontend="asyncio") as p:
        with psycopg.connect(p.dsn(USER), autocommit=True) as conn:
            for i, key in enumerate(keys[:40]):
                how = i % 5
                if how == 0:
                    # (prepare=False: the shard commands are simple-protocol only,
                    # and psycopg prepares a text run five times)
                    conn.execute(f"SET SHARDING KEY TO '{key}'", prepare=False)
                    conn.execute(f"INSERT INTO {table} VALUES (%s{cast}, 'set')", (key,))
                    conn.execute("SET SHARD TO '0'", prepare=False)  # no key for the next
                elif how == 1:  # the comment; the statement has no key itself
                    conn.execute(
                        f"/* key: {key} */ INSERT INTO {table} SELECT %s{cast}, 'comment'",
                        (key,),
                    )
                elif how == 2:  # a literal (simple protocol)
                    lit = key.replace("'", "''")
                    conn.execute(f"INSERT INTO {table} (k, v) VALUES ('{lit}'{cast}, 'lit')")
                elif how == 3:  # a text-format parameter
                    conn.execute(f"INSERT INTO {table} (k, v) VALUES (%s{cast}, 'txt')", (key,))
                else:  # binary: text / uuid on the wire
                    value = key if key_type == "text" else uuid.UUID(key)
                    conn.execute(f"INSERT INTO {table} (k, v) VALUES (%b, 'bin')", (value,))
            for key in keys[:40]:  # every keyed read finds its row
                cur = conn.execute(f"SELECT v FROM {table} WHERE k = %s{cast}", (key,))
                assert len(cur.fetchall()) == 1, key

        async def with_asyncpg() -> None:
            apg = await _asyncpg_connect(asyncpg, p.port)
            try:
                for key in keys[40:]:  # binary parameters, first executions included
                    value = key if key_type == "text" else uuid.UUID(key)
                    await apg.execute(f"INSERT INTO {table} (k, v) VALUES ($1, 'apg')", value)
                    assert await apg.fetchval(f"SELECT v FROM {table} WHERE k = $1", value)
            finally:
                await apg.close()

        asyncio.run(with_asyncpg())
        with psycopg.connect(p.dsn(USER), autocommit=True) as conn:
            per_shard = []
            for r in range(SHARDS):
                conn.execute(f"SET SHARD TO '{r}'")
                cur = conn.execute(f"SELECT k::text FROM {table}")
                per_shard.append(sorted(row[0] for row in cur.fetchall()))
            conn.execute("SET SHARD TO '0'")
            wrong = next(k for k in keys if shard_for_typed_key(k, SHARDS, key_type=key_type))
            with pytest.raises(psycopg.errors.CheckViolation):  # the check means something
                conn.execute(f"INSERT INTO {table} VALUES (%s{cast}, 'wrong')", (wrong,))
    assert sorted(k for ids in per_shard for k in ids) == sorted(keys)
    for r, ids in enumerate(per_shard):
        assert ids and all(shard_for_typed_key(k, SHARDS, key_type=key_type) == r for k in ids)
