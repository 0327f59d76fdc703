"""Read-only transactions on replicas, with psycopg against a real primary and replica.

psycopg in its default (non-autocommit) mode sends a plain ``BEGIN`` before the first
statement of every transaction; what the pooler makes of it depends on
``begin_routing`` (pgsansio.engine._readonly). ``inet_server_port()`` says which
server ran a statement.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import psycopg
import psycopg.errors
import pytest

from pgsansio.config.model import Config, ServerAddress
from pgsansio.testing.cluster import TEST_DATABASE, Cluster
from tests._pooler import make_config, running

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("pooler_frontend")]
pytest.importorskip("pglast", reason="read/write splitting needs the routing extra (pglast)")

USER = "md5_user"
PORT = "SELECT inet_server_port()"


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Cluster, Cluster]]:
    primary = Cluster(version=15)
    made = [primary]
    try:
        primary.init()
        primary.start()
        primary.add_test_users()
        primary.create_database(TEST_DATABASE)
        primary.execute(
            "CREATE TABLE ro_items (id serial PRIMARY KEY, v int);"
            "GRANT ALL ON ro_items, ro_items_id_seq TO PUBLIC;",
            dbname=TEST_DATABASE,
        )
        replica = primary.make_replica(start=False)
        made.append(replica)
        # Replays WAL 2 s late: reads on it are stale unless read-your-writes waits.
        with open(replica.datadir / "postgresql.auto.conf", "a") as conf:
            conf.write("\nrecovery_min_apply_delay = '2s'\n")
        replica.start()
        yield primary, replica
    finally:
        for c in reversed(made):
            c.cleanup()


def splitting(
    pair: tuple[Cluster, Cluster], begin_routing: str = "declared", **pool: object
) -> Config:
    primary, replica = pair
    return make_config(
        primary,
        replicas=(replica,),
        pool_size=3,
        users=(USER,),
        pool={
            "query_parser_enabled": True,
            "query_parser_read_write_splitting": True,
            "begin_routing": begin_routing,
            **pool,
        },
        general={"healthcheck_interval": 200},
    )


def port(conn: psycopg.Connection[tuple[int]], *before: str) -> int:
    """Which server ran ``before`` and then ``SELECT inet_server_port()``, in one
    transaction (psycopg opens it with a plain BEGIN unless autocommit)."""
    for sql in before:
        conn.execute(sql)
    row = conn.execute(PORT).fetchone()
    assert row is not None
    if not conn.autocommit:
        conn.commit()
    return row[0]


def test_declared_read_only_transactions_reach_the_replica(pair: tuple[Cluster, Cluster]) -> None:
    primary, replica = pair
    with running(splitting(pair, "declared")) as p:
        with psycopg.connect(p.dsn(USER)) as conn:
            assert port(conn) == primary.port  # a plain BEGIN: what follows is unknown
            assert port(conn, "SET TRANSACTION READ ONLY") == replica.port
            conn.read_only = True  # psycopg: BEGIN READ ONLY
            assert port(conn) == replica.port
            conn.read_only = False
            conn.execute("INSERT INTO ro_items (v) VALUES (1)")
            conn.commit()
        with psycopg.connect(p.dsn(USER), autocommit=True) as conn:
            assert port(conn, "START TRANSACTION READ ONLY") == replica.port
            conn.execute("COMMIT")
            # A BEGIN and COMMIT with nothing between: answered by the pooler.
            conn.execute("BEGIN")
            conn.execute("COMMIT")
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            # PgJDBC's setReadOnly(true) with readOnlyMode=always: a read-only session.
            conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            conn.autocommit = False
            assert port(conn) == replica.port
            assert port(conn) == replica.port  # followed, in every transaction
            conn.autocommit = True
            conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
            conn.autocommit = False
            assert port(conn) == primary.port


def test_first_statement_strategy_and_its_failure_mode(pair: tuple[Cluster, Cluster]) -> None:
    primary, replica = pair
    with running(splitting(pair, "first_statement")) as p, psycopg.connect(p.dsn(USER)) as conn:
        assert port(conn) == replica.port  # the first statement reads
        conn.execute("INSERT INTO ro_items (v) VALUES (2)")
        assert port(conn) == primary.port  # ... writes: the primary, to the end
        conn.execute("SELECT count(*) FROM ro_items")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):  # 25006
            conn.execute("INSERT INTO ro_items (v) VALUES (3)")
        conn.rollback()


def test_primary_strategy_is_pgcats(pair: tuple[Cluster, Cluster]) -> None:
    primary, _ = pair
    with running(splitting(pair, "primary")) as p, psycopg.connect(p.dsn(USER)) as conn:
        assert port(conn, "SET TRANSACTION READ ONLY") == primary.port


def _insert_then_read(conn: psycopg.Connection[tuple[int]], tries: int) -> tuple[int, set[int]]:
    """(stale reads, servers that answered the reads) for ``tries`` insert-then-read."""
    stale = 0
    ports: set[int] = set()
    for _ in range(tries):
        row = conn.execute("INSERT INTO ro_items (v) VALUES (7) RETURNING id").fetchone()
        assert row is not None
        seen = conn.execute(
            "SELECT count(*), inet_server_port() FROM ro_items WHERE id = %s", row
        ).fetchone()
        assert seen is not None
        stale += seen[0] == 0
        ports.add(seen[1])
    return stale, ports


def test_read_your_writes(pair: tuple[Cluster, Cluster]) -> None:
    """With it on, a client reads its own rows every time although the replica
    replays 2 s late, and a client that wrote nothing still reads from the replica;
    with it off, the same reads are stale (so the test proves something)."""
    primary, replica = pair
    tries = 1000
    with running(splitting(pair, read_your_writes=True)) as p:
        with psycopg.connect(p.dsn(USER), autocommit=True) as writer:
            stale, ports = _insert_then_read(writer, tries)
            assert stale == 0, f"{stale} stale reads of {tries} with read-your-writes"
            assert ports == {primary.port}  # the replica had not replayed them yet
        with psycopg.connect(p.dsn(USER), autocommit=True) as reader:
            assert port(reader) == replica.port  # no write of its own: the replica
    off = splitting(pair, read_your_writes=False)
    with running(off) as p, psycopg.connect(p.dsn(USER), autocommit=True) as writer:
        stale, ports = _insert_then_read(writer, 20)
        assert stale == 20 and ports == {replica.port}, (stale, ports)


def test_sqlalchemy_read_only_session_and_default_mode(pair: tuple[Cluster, Cluster]) -> None:
    """SQLAlchemy over psycopg, in its default (non-autocommit) mode. A plain Session
    opens a plain ``BEGIN``, which "first_statement" routes by its first statement. A
    Session whose engine says ``postgresql_readonly=True`` makes psycopg open every
    transaction with ``BEGIN READ ONLY`` (a replica under any strategy but "primary").
    Once SQLAlchemy has set that option it resets it to False, not to unset, when the
    connection returns to its pool: psycopg then opens ``BEGIN READ WRITE``, a
    declaration the pooler follows (the primary)."""
    sqlalchemy = pytest.importorskip(
        "sqlalchemy", reason="SQLAlchemy is a dev dependency (pgsansio[dev])"
    )
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    primary, replica = pair

    def server(session: Session, *before: str) -> int:
        for sql in before:
            session.execute(text(sql))
        port = int(session.execute(text(PORT)).scalar_one())
        session.commit()
        return port

    for strategy, plain_read in (("first_statement", replica.port), ("declared", primary.port)):
        with running(splitting(pair, strategy)) as p:
            dsn = p.dsn(USER)
            engine = sqlalchemy.create_engine(
                "postgresql+psycopg://", creator=lambda dsn=dsn: psycopg.connect(dsn)
            )
            try:
                with Session(engine) as session:
                    assert server(session) == plain_read, strategy
                    assert server(session, "SELECT count(*) FROM ro_items") == plain_read
                    # A transaction that writes first: the primary, to its end.
                    written = server(session, "INSERT INTO ro_items (v) VALUES (5)")
                    assert written == primary.port, strategy
                read_only = engine.execution_options(postgresql_readonly=True)
                with Session(read_only) as session:
                    assert server(session) == replica.port, strategy
                    assert server(session, "SELECT count(*) FROM ro_items") == replica.port
                    with pytest.raises(sqlalchemy.exc.InternalError, match="read-only"):
                        session.execute(text("INSERT INTO ro_items (v) VALUES (4)"))
                    session.rollback()
                with Session(engine) as session:  # BEGIN READ WRITE now
                    assert server(session) == primary.port, strategy
            finally:
                engine.dispose()


def test_read_your_writes_wait_bound(pair: tuple[Cluster, Cluster]) -> None:
    """With read_your_writes_wait_ms, a read after the client's own write waits for a
    probe to find the replica caught up (2 s late here) and reads there, rows included;
    with a bound shorter than the replica's delay the primary serves it at the bound."""
    primary, replica = pair
    for bound, reader in ((100, primary.port), (5000, replica.port)):
        cfg = splitting(pair, read_your_writes=True, read_your_writes_wait_ms=bound)
        with running(cfg) as p, psycopg.connect(p.dsn(USER), autocommit=True) as conn:
            # Until the first probe has answered, the replica's role is not known
            # and reads go to the primary: wait for that (a few hundred ms at most).
            deadline = time.monotonic() + 5
            while port(conn) != replica.port:
                assert time.monotonic() < deadline, "the replica was never probed"
                time.sleep(0.05)
            row = conn.execute("INSERT INTO ro_items (v) VALUES (8) RETURNING id").fetchone()
            # A read sent at once may still find the primary's connection linked to
            # this client while the pooler asks it for the WAL position: let it go.
            time.sleep(0.1)
            seen = conn.execute(
                "SELECT count(*), inet_server_port() FROM ro_items WHERE id = %s", row
            ).fetchone()
            assert seen == (1, reader), bound


def test_listener_connects_to_the_probed_primary(pair: tuple[Cluster, Cluster]) -> None:
    """With role = "auto" and the replica listed first, the LISTEN listener waits for
    the probes and connects to the server they found to be the primary (a standby
    refuses LISTEN), so a NOTIFY sent through the pooler reaches the listening client."""
    primary, replica = pair
    cfg = splitting(pair)
    (shard,) = cfg.pools[TEST_DATABASE].shards
    auto = tuple(ServerAddress("127.0.0.1", c.port, "auto") for c in (replica, primary))
    pool = replace(cfg.pools[TEST_DATABASE], shards=(replace(shard, servers=auto),))
    cfg = replace(cfg, pools={TEST_DATABASE: pool})
    with (
        running(cfg) as p,
        psycopg.connect(p.dsn(USER), autocommit=True) as listener,
        psycopg.connect(p.dsn(USER), autocommit=True) as sender,
    ):
        listener.execute("LISTEN auto_chan")
        sender.execute("NOTIFY auto_chan, 'hello'")
        got = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
        assert got == ["hello"]
