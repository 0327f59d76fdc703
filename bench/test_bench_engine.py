"""pytest-benchmark figures for the pooler engine's hot path (``make bench-core``).

One transaction-mode round trip without sockets: a client's Query (or a prepared
Bind/Execute/Sync) in, the server's answer out, the server released and taken again,
as ``pgbench -S`` makes the pooler do it. Divide the mean by 1 round trip for the
engine's own cost per transaction (the frontend's socket calls come on top).
"""

from __future__ import annotations

from typing import Any

import pytest

from pgsansio.config.model import (
    Config,
    General,
    PoolConfig,
    ServerAddress,
    ShardConfig,
    UserConfig,
)
from pgsansio.engine import Engine, OpenServer, SendClient, SendServer
from pgsansio.protocol import (
    Bind,
    CommandComplete,
    DataRow,
    Execute,
    Field,
    Parse,
    Query,
    ReadyForQuery,
    RowDescription,
    StartupMessage,
    Sync,
)
from pgsansio.testing.fakepg import Database, FakeUser

ROUNDS = 2000


def _setup(prepared: bool) -> tuple[Engine, int, int, bytes, bytes]:
    user = UserConfig(username="u", password="pw", pool_size=1, auth_type="trust")
    pool = PoolConfig(
        name="db",
        users={"u": user},
        shards=(ShardConfig(0, "db", (ServerAddress("h", 1, "primary"),)),),
    )
    engine = Engine(Config(General(admin_username="a", admin_password="a"), {"db": pool}), seed=1)
    db = Database(users={"u": FakeUser("pw", "trust")}, databases=["db"])
    fakes = {}

    def run(effects: list[Any]) -> None:
        queue = list(effects)
        while queue:
            e = queue.pop(0)
            if isinstance(e, OpenServer):
                fakes[e.sid] = db.connect()
                queue += engine.server_connected(e.sid, 0.0)
            elif isinstance(e, SendServer):
                reply = fakes[e.sid].receive(e.data, 0.0)
                if reply:
                    queue += engine.server_data(e.sid, reply, 0.0)

    run(engine.client_connected(1, "bench", 0.0))
    run(engine.client_data(1, bytes(StartupMessage({"user": "u", "database": "db"})), 0.0))
    run(engine.client_data(1, bytes(Query("select 1")), 0.0))  # a server exists and is warm
    (sid,) = fakes
    answer = b"".join(
        bytes(m)
        for m in (
            RowDescription([Field("abalance", 0, 0, 23, 4, -1, 0)]),
            DataRow([b"0"]),
            CommandComplete("SELECT 1"),
            ReadyForQuery("I"),
        )
    )
    if prepared:
        run(engine.client_data(1, bytes(Parse("P_0", "select $1::int")) + bytes(Sync()), 0.0))
        request = bytes(Bind("", "P_0", (), [b"42"], (0,))) + bytes(Execute()) + bytes(Sync())
        answer = b"2\x00\x00\x00\x04" + answer[answer.index(b"D") :]
    else:
        request = bytes(Query("SELECT abalance FROM pgbench_accounts WHERE aid = 42;"))
    return engine, 1, sid, request, answer


@pytest.mark.parametrize("prepared", [False, True], ids=["simple", "prepared"])
def test_engine_round_trip(benchmark: Any, prepared: bool) -> None:
    engine, cid, sid, request, answer = _setup(prepared)
    benchmark.group = "engine"
    benchmark.extra_info["round_trips"] = ROUNDS

    def loop() -> int:
        sent = 0
        for _ in range(ROUNDS):
            for e in engine.client_data(cid, request, 0.0):
                if type(e) is SendServer:
                    sent += 1
            for e in engine.server_data(sid, answer, 0.0):
                if type(e) is SendClient:
                    sent += 1
        return sent

    result = benchmark.pedantic(loop, rounds=5, iterations=1)
    assert result == 2 * ROUNDS  # each request reached the server, each answer the client
