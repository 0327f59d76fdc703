"""Sharding against real PostgreSQL: three databases on the session's cluster, each
holding only its REMAINDER of a hash-partitioned ``data`` table, so PostgreSQL itself
refuses a row the pooler sends to the wrong shard (``pg_bigint_hash`` must be its
partition hash, bit for bit). One frontend: routing is the engine's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest

from pgsansio.config_model import ServerAddress, ShardConfig
from pgsansio.sharding import shard_for_key
from pgsansio.testing.cluster import Cluster
from tests._pooler import make_config, running

pytestmark = pytest.mark.postgres

SHARDS = 3
NAMES = tuple(f"pgsansio_shard_{r}" for r in range(SHARDS))
USER = "md5_user"


@pytest.fixture(scope="module")
def shards(pg15: Cluster) -> Iterator[Cluster]:
    for r, name in enumerate(NAMES):
        pg15.execute(f"DROP DATABASE IF EXISTS {name};")
        pg15.create_database(name)
        pg15.execute(
            "CREATE TABLE data (id bigint NOT NULL, v text) PARTITION BY HASH (id);"
            f"CREATE TABLE data_{r} PARTITION OF data"
            f" FOR VALUES WITH (MODULUS {SHARDS}, REMAINDER {r});"
            "GRANT ALL ON data, data_" + str(r) + " TO PUBLIC;",
            dbname=name,
        )
    yield pg15
    for name in NAMES:
        pg15.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")


def test_rows_land_on_the_shard_postgresql_partitions_them_to(shards: Cluster) -> None:
    base = make_config(shards, users=(USER,))
    (pool,) = base.pools.values()
    server = (ServerAddress("127.0.0.1", shards.port, "primary"),)
    pool = replace(
        pool,
        shards=tuple(ShardConfig(r, NAMES[r], server) for r in range(SHARDS)),
        sharding_key_regex=r"/\* sharding_key: (\d+) \*/",
    )
    cfg = replace(base, pools={pool.name: pool})
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
