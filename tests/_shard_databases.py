"""Shard databases on one throwaway cluster, as tests/test_sharding_postgres.py lays them out.

Database ``r`` of ``n`` holds only its REMAINDER of a hash-partitioned ``data`` table
(``PARTITION BY HASH (id) ... MODULUS n, REMAINDER r``, the layout of PgCat's
``tests/sharding/query_routing_setup.sql``), so PostgreSQL itself refuses a row the
pooler sends to the wrong shard: "no partition of relation "data" found for row"
(SQLSTATE 23514). ``id`` is the primary key, so a write may be an upsert.

Each database also has ``shard_info``: one row naming the shard (``shard``), a counter
(``hits``) and ``seen``, which must equal ``shard`` (a CHECK): a transaction that sets
``seen`` to the shard it thinks it is on fails on any other shard.
"""

from __future__ import annotations

import psycopg
from psycopg.rows import TupleRow

from pgsansio.testing.cluster import Cluster

__all__ = [
    "create_partitioned",
    "create_shards",
    "drop_shards",
    "partition_sql",
    "reset_shards",
    "shard_rows",
]


def partition_sql(table: str, columns: str, key: str, r: int, n: int) -> str:
    """SQL creating ``table (columns)``, hash-partitioned by ``key``, holding only its
    REMAINDER ``r`` of ``n`` (any other row is refused), open to every user."""
    return (
        f"CREATE TABLE {table} ({columns}) PARTITION BY HASH ({key});"
        f"CREATE TABLE {table}_{r} PARTITION OF {table}"
        f" FOR VALUES WITH (MODULUS {n}, REMAINDER {r});"
        f"GRANT ALL ON {table}, {table}_{r} TO PUBLIC;"
    )


def create_shards(cluster: Cluster, names: tuple[str, ...]) -> None:
    """(Re)create the databases ``names``, shard ``r`` being ``names[r]``."""
    n = len(names)
    for r, name in enumerate(names):
        cluster.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")
        cluster.create_database(name)
        cluster.execute(
            "CREATE TABLE data (id bigint PRIMARY KEY, v text, writes int NOT NULL DEFAULT 1)"
            " PARTITION BY HASH (id);"
            f"CREATE TABLE data_{r} PARTITION OF data"
            f" FOR VALUES WITH (MODULUS {n}, REMAINDER {r});"
            "CREATE TABLE shard_info (shard int PRIMARY KEY, hits bigint NOT NULL,"
            " seen int NOT NULL, CHECK (seen = shard));"
            f"INSERT INTO shard_info VALUES ({r}, 0, {r});"
            f"GRANT ALL ON data, data_{r}, shard_info TO PUBLIC;",
            dbname=name,
        )


def create_partitioned(
    cluster: Cluster, names: tuple[str, ...], tables: list[tuple[str, str, str]]
) -> None:
    """(Re)create the databases ``names``, each with ``tables`` (name, columns, key)
    holding only its partition (:func:`partition_sql`)."""
    for r, name in enumerate(names):
        cluster.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")
        cluster.create_database(name)
        sql = "".join(partition_sql(t, columns, key, r, len(names)) for t, columns, key in tables)
        cluster.execute(sql, dbname=name)


def drop_shards(cluster: Cluster, names: tuple[str, ...]) -> None:
    for name in names:
        cluster.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")


def _connect(cluster: Cluster, name: str) -> psycopg.Connection[TupleRow]:
    return psycopg.connect(
        host="127.0.0.1", port=cluster.port, user=cluster.superuser, dbname=name, autocommit=True
    )


def reset_shards(cluster: Cluster, names: tuple[str, ...]) -> None:
    """Empty ``data`` and zero the counters, directly (not through a pooler)."""
    for name in names:
        with _connect(cluster, name) as conn:
            conn.execute("TRUNCATE data")
            conn.execute("UPDATE shard_info SET hits = 0")


def shard_rows(cluster: Cluster, name: str) -> tuple[int, dict[int, int]]:
    """``(hits, {id: writes})`` of one shard database, read directly."""
    with _connect(cluster, name) as conn:
        row = conn.execute("SELECT hits FROM shard_info").fetchone()
        assert row is not None
        rows = conn.execute("SELECT id, writes FROM data").fetchall()
    return int(row[0]), {int(i): int(w) for i, w in rows}
