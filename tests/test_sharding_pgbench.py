"""Manual sharding driven the way PgCat's own CI drives it: pgbench and psql scripts.

The pooler is configured like PgCat's ``.circleci/pgcat.toml`` (parsed from TOML, as a
user would write it): a pool ``sharded_db`` of three shards (``sharding_function =
"pg_bigint_hash"``, the query parser on, each shard a primary and a "replica" that is
the same server under another name), whose ``md5_user`` runs in transaction mode and
``scram_user`` in session mode, and a session-mode pool ``simple_db`` of one shard.

The shards are three databases on the ``pg15`` cluster, each holding only its
REMAINDER of a hash-partitioned ``data`` table (:mod:`_shard_databases`), so a row
the pooler sends to the wrong shard is refused by PostgreSQL and the client fails.

* pgbench runs a script modelled on PgCat's ``tests/pgbench/simple.sql``: ``SET SHARD
  TO :shard``, ``SET SERVER ROLE TO 'auto'``, a transaction on that shard (which fails
  unless it runs on the shard it named), then ``SET SHARDING KEY TO :aid`` and an
  upsert of row ``:aid``. Every client must finish every transaction, and afterwards
  every write is found on the shard :func:`shard_for_key` names for its key. In
  session mode (one session per transaction, ``-C``) the key alone picks the shard
  and ``SHOW SHARD`` tells the script which; with ``-M prepared`` (no shard command
  then) ``default_shard = "random"`` spreads the named statements over the shards.
  The same script with a row sent to the wrong shard must abort.
* psql runs scripts like PgCat's ``tests/sharding/query_routing_test_*.sql`` with
  ``ON_ERROR_STOP``: inserts and selects by sharding key, primary/replica selection,
  and session mode's one shard per session.

Every test runs on every frontend (a pgbench run is about half a second).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
from collections.abc import Iterator
from dataclasses import replace

import pytest
from _pooler import Pooler, running
from _shard_databases import create_shards, drop_shards, reset_shards, shard_rows

from pgsansio.config import parse_config
from pgsansio.config.model import Config
from pgsansio.sharding import shard_for_key
from pgsansio.testing.cluster import TEST_DATABASE, TEST_USERS, Cluster

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("pooler_frontend")]

SHARDS = 3
NAMES = tuple(f"pgsansio_pgbench_shard_{r}" for r in range(SHARDS))
TXN_USER = "md5_user"  # transaction mode
SESSION_USER = "scram_user"  # session mode (a per-user pool_mode)
SIMPLE_USER = "password_user"  # the session-mode pool simple_db

# Shaped like PgCat's .circleci/pgcat.toml. Its 100 ms connect and health check
# timeouts are raised: this machine is shared and the pooler is Python.
PGCAT_TOML = """
[general]
host = "127.0.0.1"
port = 0
connect_timeout = 5000
healthcheck_timeout = 1000
healthcheck_delay = 30000
shutdown_timeout = 5000
ban_time = 60
admin_username = "admin_user"
admin_password = "admin_pass"

[pools.sharded_db]
pool_mode = "transaction"
default_role = "any"
query_parser_enabled = true
primary_reads_enabled = true
sharding_function = "pg_bigint_hash"

[pools.sharded_db.users.0]
username = "{txn_user}"
password = "{txn_password}"
pool_size = 2
statement_timeout = 0

[pools.sharded_db.users.1]
username = "{session_user}"
password = "{session_password}"
pool_size = 3
pool_mode = "session"
statement_timeout = 30000
{shards}
[pools.simple_db]
pool_mode = "session"
default_role = "primary"
query_parser_enabled = true
primary_reads_enabled = true
sharding_function = "pg_bigint_hash"

[pools.simple_db.users.0]
username = "{simple_user}"
password = "{simple_password}"
pool_size = 1
statement_timeout = 30000

[pools.simple_db.shards.0]
servers = [["127.0.0.1", {port}, "primary"], ["localhost", {port}, "replica"]]
database = "{test_database}"
"""

SHARD_TOML = """
[pools.sharded_db.shards.{r}]
servers = [["127.0.0.1", {port}, "primary"], ["localhost", {port}, "replica"]]
database = "{name}"
"""

# Modelled on PgCat's tests/pgbench/simple.sql. The transaction's UPDATE sets
# shard_info.seen to the shard the script asked for, which its CHECK refuses anywhere
# else; the upsert's row is refused by every shard but the one holding its key.
TRANSACTION_SCRIPT = """
\\set aid random(1, 100000)
\\set shard random(0, 2)

SET SHARD TO :shard;

SET SERVER ROLE TO 'auto';

BEGIN;

UPDATE shard_info SET hits = hits + 1, seen = :shard;

SELECT hits FROM shard_info;

SELECT count(*) FROM data;

END;

SET SHARDING KEY TO :aid;

INSERT INTO data (id, v) VALUES (:aid, 'pgbench')
    ON CONFLICT (id) DO UPDATE SET writes = data.writes + 1;

-- Read load balancing
SELECT writes FROM data WHERE id = :aid;

SET SERVER ROLE TO 'replica';

-- Read load balancing
SELECT v FROM data WHERE id = :aid;
"""

# Session mode keeps one server, so one shard, for the whole session: pgbench runs
# with -C (a new session per transaction), the key picks the shard before the first
# query and SHOW SHARD tells the script which one it is. The keys are drawn from
# +-2**62 (pgbench's random() takes no wider range): negative and far above 2**32,
# where a hash that agreed with PostgreSQL's only on small keys would send rows to
# shards that refuse them.
SESSION_SCRIPT = """
\\set aid random(-4611686018427387903, 4611686018427387903)

SET SHARDING KEY TO :aid;

SET SERVER ROLE TO 'auto';

SHOW SHARD \\gset

BEGIN;

UPDATE shard_info SET hits = hits + 1, seen = :shard;

INSERT INTO data (id, v) VALUES (:aid, 'pgbench')
    ON CONFLICT (id) DO UPDATE SET writes = data.writes + 1;

SELECT writes FROM data WHERE id = :aid;

END;
"""


@pytest.fixture(scope="module")
def shards(pg15: Cluster) -> Iterator[Cluster]:
    create_shards(pg15, NAMES)
    yield pg15
    drop_shards(pg15, NAMES)


def shard_of(key: int) -> int:
    shard = shard_for_key(key, SHARDS)
    assert shard is not None
    return shard


def pgcat_config(cluster: Cluster) -> Config:
    port = cluster.port
    text = PGCAT_TOML.format(
        txn_user=TXN_USER,
        txn_password=TEST_USERS[TXN_USER][1],
        session_user=SESSION_USER,
        session_password=TEST_USERS[SESSION_USER][1],
        simple_user=SIMPLE_USER,
        simple_password=TEST_USERS[SIMPLE_USER][1],
        shards="".join(
            SHARD_TOML.format(r=r, port=port, name=name) for r, name in enumerate(NAMES)
        ),
        port=port,
        test_database=TEST_DATABASE,
    )
    return parse_config(text, "pgcat.toml")


def client_env(user: str) -> dict[str, str]:
    """No inherited PG* settings, no pgpass file: the password of ``user``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C", PGCONNECT_TIMEOUT="10", PGPASSFILE="/nonexistent/pgpass")
    env["PGPASSWORD"] = TEST_USERS[user][1] or ""
    return env


def run_client(
    cluster: Cluster, program: str, p: Pooler, user: str, dbname: str, *args: str
) -> subprocess.CompletedProcess[str]:
    argv = [str(cluster.bindir / program), "-h", "127.0.0.1", "-p", str(p.port), "-U", user]
    argv += [*args, dbname]
    return subprocess.run(
        argv, env=client_env(user), capture_output=True, text=True, timeout=60, check=False
    )


def check_pgbench(result: subprocess.CompletedProcess[str], expected: int) -> None:
    """pgbench exited 0, no client aborted, every transaction ran and none failed."""
    out, err = result.stdout, result.stderr
    assert result.returncode == 0, f"{out}\n{err}"
    assert "aborted" not in out + err, f"{out}\n{err}"
    processed = re.search(r"number of transactions actually processed: (\d+)/(\d+)", out)
    assert processed is not None, out
    assert int(processed.group(1)) == int(processed.group(2)) == expected, out
    failed = re.search(r"number of failed transactions: (\d+)", out)
    assert failed is None or int(failed.group(1)) == 0, out


def check_shards(cluster: Cluster, transactions: int) -> None:
    """Every shard saw transactions, the transactions add up, and every row written by
    key is on the shard that key hashes to."""
    hits = []
    writes = 0
    for r, name in enumerate(NAMES):
        shard_hits, rows = shard_rows(cluster, name)
        hits.append(shard_hits)
        wrong = [key for key in rows if shard_of(key) != r]
        assert not wrong, f"shard {r} holds rows of other shards: {wrong[:10]}"
        writes += sum(rows.values())
    assert sum(hits) == transactions and all(hits), hits
    assert writes == transactions


# A run is about half a second (400 transactions), so pgbench runs on every frontend
# (the pooler_frontend fixture) and the module stays well under the 15 s it may cost.


def test_pgbench_transaction_mode(shards: Cluster, tmp_path: pathlib.Path) -> None:
    reset_shards(shards, NAMES)
    script = tmp_path / "sharded.sql"
    script.write_text(TRANSACTION_SCRIPT)
    clients, per_client = 8, 50
    with running(pgcat_config(shards)) as p:
        result = run_client(
            shards, "pgbench", p, TXN_USER, "sharded_db", "-n", "-f", str(script),
            "-c", str(clients), "-j", "2", "-t", str(per_client),
        )  # fmt: skip
        # Both names of each shard's server served: the primary the writes, both the
        # reads ('auto' with primary_reads_enabled, then 'replica').
        used = {(s.pool.shard, s.address.host) for s in list(p.engine.servers.values()) if s.pool}
    check_pgbench(result, clients * per_client)
    check_shards(shards, clients * per_client)
    assert used == {(r, host) for r in range(SHARDS) for host in ("127.0.0.1", "localhost")}


def test_pgbench_session_mode(shards: Cluster, tmp_path: pathlib.Path) -> None:
    reset_shards(shards, NAMES)
    script = tmp_path / "sharded_session.sql"
    script.write_text(SESSION_SCRIPT)
    clients, per_client = 8, 50
    with running(pgcat_config(shards)) as p:
        result = run_client(
            shards, "pgbench", p, SESSION_USER, "sharded_db", "-n", "-C", "-f", str(script),
            "-c", str(clients), "-j", "2", "-t", str(per_client),
        )  # fmt: skip
    check_pgbench(result, clients * per_client)
    check_shards(shards, clients * per_client)


# No shard command (they are simple protocol only): default_shard = "random" spreads
# the transactions, so every named statement is prepared again on each shard's servers.
PREPARED_SCRIPT = """
\\set aid random(1, 100000)
BEGIN;
UPDATE shard_info SET hits = hits + 1;
SELECT hits, shard FROM shard_info;
SELECT count(*) FROM data WHERE id = :aid;
END;
"""


def test_pgbench_prepared_on_a_random_shard(shards: Cluster, tmp_path: pathlib.Path) -> None:
    reset_shards(shards, NAMES)
    script = tmp_path / "prepared.sql"
    script.write_text(PREPARED_SCRIPT)
    config = pgcat_config(shards)
    pool = replace(config.pools["sharded_db"], default_shard="random")
    # One thread per client: pgbench prepares a statement with a blocking PQprepare,
    # which stalls every other client of its thread. With two clients a thread, one
    # waiting for a server held by the other (in a transaction, and so never let go)
    # is a deadlock that ends in connect_timeout (seen: "all 2 are busy").
    clients, per_client = 4, 50
    with running(replace(config, pools={**config.pools, pool.name: pool})) as p:
        result = run_client(
            shards, "pgbench", p, TXN_USER, "sharded_db", "-n", "-M", "prepared",
            "-f", str(script), "-c", str(clients), "-j", str(clients), "-t", str(per_client),
        )  # fmt: skip
    check_pgbench(result, clients * per_client)
    hits = [shard_rows(shards, name)[0] for name in NAMES]
    assert sum(hits) == clients * per_client and all(hits), hits


def test_pgbench_aborts_on_a_misrouted_row(shards: Cluster, tmp_path: pathlib.Path) -> None:
    """The checks above mean something: the same script with the keyed write sent to
    shard 0 whatever its key fails (PostgreSQL has no partition there for the row)."""
    reset_shards(shards, NAMES)
    script = tmp_path / "misrouted.sql"
    script.write_text(TRANSACTION_SCRIPT.replace("SET SHARDING KEY TO :aid;", "SET SHARD TO 0;"))
    with running(pgcat_config(shards)) as p:
        result = run_client(
            shards, "pgbench", p, TXN_USER, "sharded_db", "-n", "-f", str(script),
            "-c", "2", "-t", "20",
        )  # fmt: skip
    assert result.returncode != 0
    assert 'no partition of relation "data" found for row' in result.stderr
    assert "aborted" in result.stderr


# --- psql scripts, like PgCat's tests/sharding/query_routing_test_*.sql --------------

KEYS = range(1, 19)
# PgCat's scripts spell the commands in every case; so do these.
SPELLINGS = {17: "set sharding key to", 18: "SeT SHaRDInG KeY to"}


def insert_script() -> str:
    return "".join(
        f"{SPELLINGS.get(k, 'SET SHARDING KEY TO')} '{k}';\n"
        f"INSERT INTO data (id, v) VALUES ({k}, 'value_{k}');\n\n"
        for k in KEYS
    )


def select_script() -> str:
    return "\\set ON_ERROR_STOP on\n\n" + "".join(
        f"SET SHARDING KEY TO '{k}';\nSELECT id, v FROM data WHERE id = {k};\n\n" for k in KEYS
    )


def primary_replica_script() -> str:
    stanzas = [
        f"SET SERVER ROLE TO 'primary';\nSET SHARDING KEY TO '{k}';\n"
        f"INSERT INTO data (id, v) VALUES ({k}, 'value_{k}');\n\n"
        f"SET SERVER ROLE TO 'replica';\nSET SHARDING KEY TO '{k}';\n"
        f"SELECT id, v FROM data WHERE id = {k};\n\n---\n\n"
        for k in range(101, 115)
    ]
    return "".join(stanzas) + (
        "SET SERVER ROLE TO 'primary';\nSELECT 1;\n\n"
        "SET SERVER ROLE TO 'replica';\nSELECT 1;\n\n"
        "set server role to 'replica';\nSeT SeRver Role TO 'PrImARY';\nselect 1;\n"
        "SHOW SERVER ROLE;\nSHOW SHARD;\n"
    )


def psql_file(
    cluster: Cluster, p: Pooler, user: str, dbname: str, script: tuple[pathlib.Path, str]
) -> subprocess.CompletedProcess[str]:
    """psql runs ``script`` (its file, its text) with ON_ERROR_STOP; stdout unaligned."""
    path, text = script
    path.write_text(text)
    return run_client(
        cluster, "psql", p, user, dbname, "-XAtqw", "-v", "ON_ERROR_STOP=1", "-f", str(path)
    )


def test_psql_routing_scripts(shards: Cluster, tmp_path: pathlib.Path) -> None:
    reset_shards(shards, NAMES)
    with running(pgcat_config(shards)) as p:
        result = psql_file(
            shards, p, TXN_USER, "sharded_db", (tmp_path / "i.sql", insert_script())
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == "" and result.stderr == ""
        result = psql_file(
            shards, p, TXN_USER, "sharded_db", (tmp_path / "s.sql", select_script())
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [f"{k}|value_{k}" for k in KEYS]
        result = psql_file(
            shards, p, TXN_USER, "sharded_db", (tmp_path / "pr.sql", primary_replica_script())
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[:14] == [f"{k}|value_{k}" for k in range(101, 115)]
        # SELECT 1 three times, then SHOW SERVER ROLE and SHOW SHARD (key 114's).
        assert lines[14:] == ["1", "1", "1", "primary", str(shard_of(114))]
        # SET SHARD then a plain read: each shard holds exactly its keys.
        counts = "".join(f"SET SHARD TO '{r}';\nSELECT count(*) FROM data;\n" for r in range(3))
        result = psql_file(shards, p, TXN_USER, "sharded_db", (tmp_path / "c.sql", counts))
        assert result.returncode == 0, result.stderr
    keys = [*KEYS, *range(101, 115)]
    expected = [sum(1 for k in keys if shard_of(k) == r) for r in range(SHARDS)]
    assert [int(n) for n in result.stdout.split()] == expected
    for r, name in enumerate(NAMES):
        assert sorted(shard_rows(shards, name)[1]) == [k for k in keys if shard_of(k) == r]


def test_psql_session_mode(shards: Cluster, tmp_path: pathlib.Path) -> None:
    """Session mode: the shard is chosen before the first query, and the session stays
    there; psql stops at the refused move (0A000) with the pooler's message."""
    reset_shards(shards, NAMES)
    key = 7
    other = next(k for k in range(100) if shard_of(k) != shard_of(key))
    script = (
        f"SET SHARDING KEY TO '{key}';\n"
        f"INSERT INTO data (id, v) VALUES ({key}, 'session');\n"
        f"SET SHARDING KEY TO '{key}';\n"  # the same shard: fine
        "SHOW SHARD;\n"
        f"SET SHARDING KEY TO '{other}';\n"
        "SELECT 'not reached';\n"
    )
    with running(pgcat_config(shards)) as p:
        result = psql_file(shards, p, SESSION_USER, "sharded_db", (tmp_path / "s.sql", script))
        assert result.returncode == 3, result.stderr  # psql: ON_ERROR_STOP in a script
        assert result.stdout.splitlines() == [str(shard_of(key))]
        assert "this session already has its server on shard" in result.stderr
        # simple_db, the one-shard session pool: shard 0, primary.
        simple = "SET SHARD TO '0';\nSHOW SHARD;\nSET SERVER ROLE TO 'primary';\nSELECT 1;\n"
        result = psql_file(shards, p, SIMPLE_USER, "simple_db", (tmp_path / "p.sql", simple))
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == ["0", "1"]
    assert shard_rows(shards, NAMES[shard_of(key)])[1] == {key: 1}
