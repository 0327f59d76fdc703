"""What real drivers see through the pooler, compared with PostgreSQL itself.

Each test runs the same driver program with the same assertions three ways: directly
against PostgreSQL 15, through pgsansio in session mode and through pgsansio in
transaction mode (``target``). A session pooler should be invisible; where transaction
mode must differ, the test says so and why (see ``docs/session-mode.md``).

Behaviour that lives in the engine alone runs on the asyncio frontend (two poolers for
the module, one per mode); behaviour where the frontend takes part (closing a socket
after Terminate, a server's FATAL reaching a client) runs on every frontend.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pg8000.native
import pytest
from _pooler import Pooler, make_config

from pgsansio.testing.cluster import TEST_DATABASE, Cluster

TIMEOUT = 20.0
USER, PASSWORD = "md5_user", "md5-secret"
MODES = ("session", "transaction")


@pytest.fixture(scope="module")
def poolers(pg15: Cluster) -> Iterator[dict[str, Pooler]]:
    """One pooler per pool mode on the asyncio frontend, shared by the module's tests."""
    started: dict[str, Pooler] = {}
    try:
        for mode in MODES:
            p = Pooler(make_config(pg15, pool_mode=mode, pool_size=2), frontend="asyncio")
            p.start()
            started[mode] = p
        yield started
    finally:
        for p in started.values():
            p.stop()


@pytest.fixture(params=("direct", *MODES))
def target(request: pytest.FixtureRequest, pg15: Cluster, poolers: dict[str, Pooler]) -> str:
    """``direct`` (PostgreSQL itself), ``session`` or ``transaction`` (through pgsansio)."""
    name: str = request.param
    return name


def port_of(target: str, pg15: Cluster, poolers: dict[str, Pooler]) -> int:
    return pg15.port if target == "direct" else poolers[target].port


def pg8000_connect(port: int, **kwargs: Any) -> pg8000.native.Connection:
    return pg8000.native.Connection(
        USER,
        host="127.0.0.1",
        port=port,
        password=PASSWORD,
        database=TEST_DATABASE,
        timeout=TIMEOUT,
        **kwargs,
    )


# --- item 2: up to 65,535 parameters ----------------------------------------------------


@pytest.mark.parametrize("n", [40_000, 60_000, 65_535])
def test_pg8000_many_parameters(
    target: str, pg15: Cluster, poolers: dict[str, Pooler], n: int
) -> None:
    """PostgreSQL reads the Int16 counts of Parse, Bind and ParameterDescription as
    unsigned: 65,535 parameters work, and through the pooler too."""
    con = pg8000_connect(port_of(target, pg15, poolers))
    try:
        # pg8000's own Parse/Bind/Execute/Sync (native.run's name mapping is quadratic
        # in the number of parameters: 15 s for 65,535 before a byte is sent).
        sql = (
            "SELECT cardinality(ARRAY[" + ",".join(f"${i}" for i in range(1, n + 1)) + "]::int[])"
        )
        context = con.execute_unnamed(sql, vals=[str(i) for i in range(n)], oids=[23] * n)
        assert context.rows == [[n]]
        # and the connection is still good for the next statement
        assert con.run("SELECT :a::int + 1", a=41) == [[42]]
    finally:
        con.close()
