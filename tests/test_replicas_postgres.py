"""Replicas and failover against real PostgreSQL: a primary and two streaming replicas.

Routing is checked on the servers themselves (``inet_server_port()`` says which one ran
a statement), for the simple and the extended protocol. The failover test runs psycopg
readers and a writer through the pooler while servers are stopped with
``pg_ctl stop -m immediate``, restarted and promoted, and measures what the clients
saw; ``-s`` prints the figures. It runs ~10 s by default; the ``slow`` version holds
each phase three times as long.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import psycopg
import pytest

from pgsansio.testing.cluster import TEST_DATABASE, Cluster
from tests._pooler import Pooler, make_config, running

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("pooler_frontend")]
pytest.importorskip("pglast", reason="read/write splitting needs the routing extra (pglast)")

USER = "md5_user"


def _primary_with_replicas() -> tuple[Cluster, Cluster, Cluster]:
    primary = Cluster(version=15)
    made = [primary]
    try:
        primary.init()
        primary.start()
        primary.add_test_users()
        primary.create_database(TEST_DATABASE)
        primary.execute(
            "CREATE TABLE items (id serial PRIMARY KEY, v int);"
            "GRANT ALL ON items, items_id_seq TO PUBLIC;",
            dbname=TEST_DATABASE,
        )
        made.append(primary.make_replica())
        made.append(primary.make_replica())
    except BaseException:
        for c in reversed(made):
            c.cleanup()
        raise
    return primary, made[1], made[2]


@pytest.fixture(scope="module")
def trio() -> Iterator[tuple[Cluster, Cluster, Cluster]]:
    clusters = _primary_with_replicas()
    yield clusters
    for c in reversed(clusters):
        c.cleanup()


def _splitting(primary: Cluster, replicas: tuple[Cluster, ...], **general: object) -> Pooler:
    cfg = make_config(
        primary,
        replicas=replicas,
        pool_size=4,
        pool={"query_parser_enabled": True, "query_parser_read_write_splitting": True},
        general=general or None,
    )
    return Pooler(cfg)


def _port(cur: psycopg.Cursor[tuple[int]], sql: str = "SELECT inet_server_port()") -> int:
    cur.execute(sql)
    row = cur.fetchone()
    assert row is not None
    return row[0]


def test_reads_reach_the_replicas_and_writes_the_primary(
    trio: tuple[Cluster, Cluster, Cluster],
) -> None:
    primary, r1, r2 = trio
    replicas = {r1.port, r2.port}
    pooler = _splitting(primary, (r1, r2))
    pooler.start()
    try:
        with psycopg.connect(pooler.dsn(USER), autocommit=True) as conn:
            cur = conn.cursor()
            assert {_port(cur) for _ in range(30)} == replicas  # simple protocol
            seen = set()
            for i in range(30):  # extended protocol, unnamed then named statements
                cur.execute("SELECT inet_server_port() WHERE %s = %s", (i, i), prepare=i > 10)
                row = cur.fetchone()
                assert row is not None
                seen.add(row[0])
            assert seen == replicas
            for i in range(10):
                cur.execute("INSERT INTO items (v) VALUES (%s)", (i,), prepare=i > 2)
            assert _port(cur, "INSERT INTO items (v) VALUES (0) RETURNING inet_server_port()") == (
                primary.port
            )
            cur.execute("SET SERVER ROLE TO 'primary'")
            cur.execute("SHOW SERVER ROLE")
            assert cur.fetchone() == ("primary",)
            assert {_port(cur) for _ in range(5)} == {primary.port}
            cur.execute("SET SERVER ROLE TO 'auto'")
            assert _port(cur) in replicas
        with psycopg.connect(pooler.dsn(USER)) as conn:
            cur = conn.cursor()
            with conn.transaction():  # BEGIN, a write, then a read: all on the primary
                cur.execute("INSERT INTO items (v) VALUES (42)")
                assert _port(cur) == primary.port
            conn.read_only = True  # BEGIN READ ONLY may use a replica
            with conn.transaction():
                assert _port(cur) in replicas
    finally:
        pooler.stop()


def test_asyncpg_statement_cache_is_routed_by_the_prepared_text(
    trio: tuple[Cluster, Cluster, Cluster],
) -> None:
    """asyncpg prepares every statement under a name and binds it later: each Bind
    goes where the text it was prepared with says."""
    asyncpg = pytest.importorskip("asyncpg", reason="asyncpg is a dev dependency (pgsansio[dev])")
    primary, r1, r2 = trio
    pooler = _splitting(primary, (r1, r2))
    pooler.start()

    async def main() -> tuple[set[int], set[int]]:
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=pooler.port,
            user=USER,
            password="md5-secret",
            database=TEST_DATABASE,
            ssl=False,
        )
        try:
            reads = {await conn.fetchval("SELECT inet_server_port()") for _ in range(20)}
            writes = {
                await conn.fetchval(
                    "INSERT INTO items (v) VALUES ($1) RETURNING inet_server_port()", i
                )
                for i in range(10)
            }
            return reads, writes
        finally:
            await conn.close()

    try:
        reads, writes = asyncio.run(main())
    finally:
        pooler.stop()
    assert reads == {r1.port, r2.port}
    assert writes == {primary.port}


@dataclass
class Load:
    """psycopg readers and a writer through the pooler, counting what they see."""

    dsn: str
    readers: int = 4
    stop: threading.Event = field(default_factory=threading.Event)
    reads: Counter[int] = field(default_factory=Counter)  # server port -> reads
    read_errors: list[tuple[float, str]] = field(default_factory=list)
    writes: list[float] = field(default_factory=list)
    write_errors: list[tuple[float, float, str]] = field(default_factory=list)  # at, took
    last_read_at: dict[int, float] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for _ in range(self.readers):
            self.threads.append(threading.Thread(target=self._reader, daemon=True))
        self.threads.append(threading.Thread(target=self._writer, daemon=True))
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _connect(self) -> psycopg.Connection[tuple[int]]:
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)

    def _reader(self) -> None:
        conn: psycopg.Connection[tuple[int]] | None = None
        while not self.stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = self._connect()
                port = _port(conn.cursor())
                self.reads[port] += 1
                self.last_read_at[port] = time.monotonic()
            except psycopg.Error as exc:
                self.read_errors.append((time.monotonic(), str(exc).strip()[:120]))
                time.sleep(0.05)
            time.sleep(0.005)
        if conn is not None:
            conn.close()

    def _writer(self) -> None:
        conn: psycopg.Connection[tuple[int]] | None = None
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                if conn is None or conn.closed:
                    conn = self._connect()
                conn.execute("INSERT INTO items (v) VALUES (1)")
                self.writes.append(time.monotonic())
            except psycopg.Error as exc:
                now = time.monotonic()
                self.write_errors.append((now, now - began, str(exc).strip()[:160]))
                time.sleep(0.05)
            time.sleep(0.02)
        if conn is not None:
            conn.close()


def _wait(what: str, predicate: object, timeout: float) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if callable(predicate) and predicate():
            return time.monotonic() - began
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def _failover(scale: float) -> dict[str, object]:
    primary, r1, r2 = _primary_with_replicas()
    figures: dict[str, object] = {}
    try:
        cfg = make_config(
            primary,
            replicas=(r1, r2),
            pool_size=4,
            pool={"query_parser_enabled": True, "query_parser_read_write_splitting": True},
            general={"ban_time": 2, "healthcheck_interval": 250, "connect_timeout": 2000},
        )
        # Every server "auto": the pooler finds the primary itself, and follows it.
        pool = cfg.pools[TEST_DATABASE]
        shard = pool.shards[0]
        auto = tuple(replace(a, role="auto") for a in shard.servers)
        pool = replace(pool, shards=(replace(shard, servers=auto),))
        cfg = replace(cfg, pools={TEST_DATABASE: pool})
        with running(cfg) as pooler:
            load = Load(pooler.dsn(USER))
            load.start()
            try:
                time.sleep(1.0 * scale)
                assert load.reads[r1.port] and load.reads[r2.port] and load.writes
                # Until the first probes have found a replica, the primary serves reads
                # (no replica is known yet, and reads are not refused); from then on the
                # primary gets none.
                warm = load.reads[primary.port]
                time.sleep(0.5 * scale)
                assert load.reads[primary.port] == warm

                # 1. A replica dies: reads go on; errors only for what ran on it.
                errors_before = len(load.read_errors)
                r1.stop("immediate")
                died = time.monotonic()
                time.sleep(0.5)
                only_r2_from = load.reads[r2.port]
                r1_reads = load.reads[r1.port]
                time.sleep(1.5 * scale)
                assert load.reads[r1.port] == r1_reads  # banned: nothing new goes there
                assert load.reads[r2.port] > only_r2_from
                figures["read errors when a replica died"] = len(load.read_errors) - errors_before
                assert len(load.read_errors) - errors_before <= load.readers

                # 2. It comes back: it gets reads once its ban is over.
                r1.start()
                figures["seconds until the restarted replica got reads"] = round(
                    _wait(
                        "reads on the restarted replica",
                        lambda: load.last_read_at.get(r1.port, 0) > died + 0.5,
                        15,
                    ),
                    2,
                )

                # 3. The primary dies: writes fail fast, with a clear message.
                writes_before = len(load.write_errors)
                primary.stop("immediate")
                time.sleep(1.0 * scale)
                failed = load.write_errors[writes_before:]
                assert failed, "no write failed while the primary was down"
                slowest = max(took for _, took, _ in failed)
                figures["write errors while no primary"] = len(failed)
                figures["slowest failed write (s)"] = round(slowest, 3)
                assert slowest < 3.0
                assert any("primary" in message for _, _, message in failed), failed[-3:]
                reads_now = sum(load.reads.values())
                time.sleep(0.5)
                assert sum(load.reads.values()) > reads_now  # reads go on meanwhile

                # 4. A replica is promoted: writes succeed again, no restart, no reload.
                writes_ok = len(load.writes)
                promoted_at = time.monotonic()
                r1.promote()  # pg_ctl promote -w: returns once the server is out of recovery
                figures["seconds pg_ctl promote took"] = round(time.monotonic() - promoted_at, 2)
                _wait("a write after the promotion", lambda: len(load.writes) > writes_ok, 15)
                figures["seconds from starting pg_ctl promote to a successful write"] = round(
                    time.monotonic() - promoted_at, 2
                )
                with psycopg.connect(pooler.dsn(USER), autocommit=True) as conn:
                    cur = conn.cursor()
                    assert _port(
                        cur, "INSERT INTO items (v) VALUES (2) RETURNING inet_server_port()"
                    ) == (r1.port)
                time.sleep(0.5 * scale)
            finally:
                load.finish()
            figures["reads per server"] = {
                name: load.reads[c.port]
                for name, c in (("primary", primary), ("r1", r1), ("r2", r2))
            }
            figures["read errors in all"] = len(load.read_errors)
            figures["writes ok"] = len(load.writes)
            figures["sample read errors"] = sorted({m for _, m in load.read_errors})[:3]
            figures["sample write errors"] = sorted({m for _, _, m in load.write_errors})[:3]
    finally:
        for c in (r2, r1, primary):
            c.cleanup()
    return figures


def test_failover_under_load() -> None:
    figures = _failover(scale=1.0)
    print("\nfailover figures:", figures)


@pytest.mark.slow
def test_failover_under_load_longer() -> None:
    figures = _failover(scale=3.0)
    print("\nfailover figures (longer):", figures)
