"""Replicas, scenario by scenario: routing, load balancing, bans, health checks, probes,
primary detection and replica lag, against one fake cluster per address.

Each fake cluster numbers its backends from its own base (10001, 20001, 30001...), so
``select pg_backend_pid()`` says which server answered. A fake standby refuses writes
with 25006 as a hot standby does, so a write routed to a replica cannot go unnoticed.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from pgsansio.config.model import Config, ServerAddress, ShardConfig
from pgsansio.engine._objects import P_PROBE
from pgsansio.protocol import (
    Bind,
    CommandComplete,
    Describe,
    Execute,
    Parse,
    Query,
    Sync,
)
from pgsansio.testing.fakepg import Database, FakeUser
from tests.test_engine import DB, World, config, errors, logged_in, ready, rows

pytest.importorskip("pglast", reason="read/write splitting needs the routing extra (pglast)")

HOSTS = ("pg0", "pg1", "pg2")


def cluster_config(
    roles: tuple[str, ...] = ("primary", "replica", "replica"), **kw: object
) -> Config:
    weights = kw.pop("weights", (1,) * len(roles))
    assert isinstance(weights, tuple)
    base = config(pool_size=2, **kw)
    servers = tuple(
        ServerAddress(h, 5432, r, w) for h, r, w in zip(HOSTS, roles, weights, strict=False)
    )
    pool = replace(base.pools[DB], shards=(ShardConfig(0, DB, servers),))
    return replace(base, pools={DB: pool})


def splitting(**kw: object) -> Config:
    return cluster_config(
        pool_query_parser_enabled=True, pool_query_parser_read_write_splitting=True, **kw
    )


def world(cfg: Config, *, standbys: tuple[int, ...] = (1, 2)) -> World:
    dbs = {
        (h, 5432): Database(
            users={"alice": FakeUser("pw", "md5"), "bob": FakeUser("pw", "md5")},
            databases=[DB],
            name=h,
            first_pid=10000 * (i + 1),
            in_recovery=i in standbys,
        )
        for i, h in enumerate(HOSTS)
    }
    return World(cfg, dbs=dbs)


def auto_world() -> World:
    """Three servers with role "auto" (found by probes every second), reads split."""
    return world(splitting(roles=("auto", "auto", "auto"), general_healthcheck_interval=1000))


def server_of(events: list[object]) -> str:
    """Which host answered ``select pg_backend_pid()``."""
    ((pid,),) = rows(events)  # type: ignore[arg-type]
    assert pid is not None
    return HOSTS[int(pid) // 10000 - 1]


# --- read/write splitting ---------------------------------------------------------


def test_reads_go_to_replicas_and_writes_to_the_primary() -> None:
    w = world(splitting())
    c = logged_in(w)
    seen = {server_of(c.query("select pg_backend_pid()")) for _ in range(20)}
    assert seen == {"pg1", "pg2"}
    got = c.query("insert into t values (1)")
    assert not errors(got) and ready(got) == ["I"]
    assert w.dbs["pg0", 5432].rows("t") == [("1",)]


def test_a_transaction_stays_on_the_primary_after_begin_and_read_only_may_use_a_replica() -> None:
    w = world(splitting())
    c = logged_in(w)
    assert ready(c.query("begin")) == ["T"]
    assert server_of(c.query("select pg_backend_pid()")) == "pg0"
    c.query("insert into t values (2)")
    assert server_of(c.query("select pg_backend_pid()")) == "pg0"
    assert ready(c.query("commit")) == ["I"]
    assert ready(c.query("begin read only")) == ["T"]
    assert server_of(c.query("select pg_backend_pid()")) in {"pg1", "pg2"}
    c.query("commit")


def test_extended_protocol_is_routed_by_the_parse_and_a_named_statement_remembers_it() -> None:
    w = world(splitting())
    c = logged_in(w)
    c.send(Parse("", "select pg_backend_pid()"), Bind("", ""), Execute(), Sync())
    assert server_of(c.events()) in {"pg1", "pg2"}
    c.send(Parse("ins", "insert into t values ($1)"), Sync())
    assert ready(c.events()) == ["I"]
    c.send(Parse("who", "select pg_backend_pid()"), Sync())
    assert ready(c.events()) == ["I"]
    for _ in range(5):
        c.send(Bind("", "ins", params=[b"7"]), Execute(), Sync())
        got = c.events()
        assert not errors(got), errors(got)
        c.send(Bind("", "who"), Describe("P", ""), Execute(), Sync())
        assert server_of(c.events()) in {"pg1", "pg2"}
    assert len(w.dbs["pg0", 5432].rows("t")) == 5


def test_hints_and_primary_reads() -> None:
    w = world(splitting())
    c = logged_in(w)
    got = c.query("/* pgsansio_role: primary */ select pg_backend_pid()")
    assert server_of(got) == "pg0"
    w2 = world(splitting(pool_primary_reads_enabled=True))
    c2 = logged_in(w2)
    seen = {server_of(c2.query("select pg_backend_pid()")) for _ in range(30)}
    assert seen == {"pg0", "pg1", "pg2"}


def test_custom_commands_are_answered_by_the_pooler_per_client() -> None:
    w = world(splitting())
    c = logged_in(w)
    other = logged_in(w)
    got = c.query("SET SERVER ROLE TO 'primary'")
    assert [e.tag for e in got if isinstance(e, CommandComplete)] == ["SET"]
    assert ready(got) == ["I"]
    assert rows(c.query("SHOW SERVER ROLE")) == [("primary",)]
    assert {server_of(c.query("select pg_backend_pid()")) for _ in range(10)} == {"pg0"}
    assert server_of(other.query("select pg_backend_pid()")) != "pg0"
    c.query("SET SERVER ROLE TO 'replica'")
    assert server_of(c.query("select pg_backend_pid()")) != "pg0"
    c.query("SET SERVER ROLE TO 'auto'")
    c.query("SET PRIMARY READS TO on")
    assert rows(c.query("SHOW PRIMARY READS")) == [("on",)]
    assert {server_of(c.query("select pg_backend_pid()")) for _ in range(30)} == {
        "pg0",
        "pg1",
        "pg2",
    }
    bad = c.query("SET SERVER ROLE TO 'leader'")
    assert errors(bad)[0].sqlstate == "42601" and ready(bad) == ["I"]
    assert not c.closed


def test_default_role_without_the_parser_and_in_session_mode() -> None:
    w = world(cluster_config(pool_default_role="replica"))
    c = logged_in(w)
    assert {server_of(c.query("select pg_backend_pid()")) for _ in range(20)} == {"pg1", "pg2"}
    w = world(cluster_config(pool_default_role="primary", pool_mode="session"))
    c = logged_in(w)
    assert server_of(c.query("select pg_backend_pid()")) == "pg0"


# --- load balancing -----------------------------------------------------------------


def test_round_robin_honours_weights() -> None:
    w = world(splitting(pool_load_balancing_mode="round_robin", weights=(1, 1, 3)))
    c = logged_in(w)
    seen = [server_of(c.query("select pg_backend_pid()")) for _ in range(8)]
    assert seen.count("pg2") == 6 and seen.count("pg1") == 2


def test_random_honours_weights() -> None:
    w = world(splitting(weights=(1, 1, 4)))
    c = logged_in(w)
    seen = [server_of(c.query("select pg_backend_pid()")) for _ in range(200)]
    assert seen.count("pg2") > 2 * seen.count("pg1") > 0


def test_loc_prefers_the_least_busy_replica() -> None:
    w = world(splitting(pool_load_balancing_mode="loc"))
    busy = logged_in(w)
    busy.send(Query("begin read only"))
    busy.events()
    held = server_of(busy.query("select pg_backend_pid()"))
    c = logged_in(w)
    assert {server_of(c.query("select pg_backend_pid()")) for _ in range(10)} == (
        {"pg1", "pg2"} - {held}
    )


# --- bans ---------------------------------------------------------------------------


def test_a_dead_replica_is_banned_its_reads_go_elsewhere_and_it_returns_after_ban_time() -> None:
    w = world(splitting(general_ban_time=60))
    c = logged_in(w)
    for _ in range(10):
        c.query("select pg_backend_pid()")
    w.crash("pg1", 5432)  # idle connections drop; nobody is hurt
    seen = [c.query("select pg_backend_pid()") for _ in range(20)]
    assert not any(errors(got) for got in seen)
    assert {server_of(got) for got in seen} == {"pg2"}
    assert ("pg1", 5432) in w.engine.bans
    assert any("pg1:5432 banned for 60 s" in line for line in w.logs)
    w.dbs["pg1", 5432].accepting = True
    w.advance(61)
    assert ("pg1", 5432) not in w.engine.bans
    assert "pg1" in {server_of(c.query("select pg_backend_pid()")) for _ in range(20)}


def test_a_query_running_on_a_replica_that_dies_gets_an_error_and_the_replica_is_banned() -> None:
    w = world(splitting())
    c = logged_in(w)
    for _ in range(20):
        c.send(Query("select pg_sleep(5)"))
        if c.world.servers and any(
            f.db.name == "pg1" and not f.closed and f.deadline for f in w.servers.values()
        ):
            break
        w.advance(5)
        c.events()
    w.crash("pg1", 5432)
    got = c.events()
    assert errors(got)[0].sqlstate == "08006"
    assert ("pg1", 5432) in w.engine.bans
    other = logged_in(w)
    assert server_of(other.query("select pg_backend_pid()")) == "pg2"


def test_the_primary_is_never_banned_and_writes_fail_fast_without_it() -> None:
    w = world(splitting())
    c = logged_in(w)
    w.crash("pg0", 5432)
    got = c.query("insert into t values (1)")
    (err,) = errors(got)
    assert err.sqlstate == "57P03" and "no primary server is available" in (err.message or "")
    assert ready(got) == ["I"] and not c.closed
    assert not w.engine.bans
    assert server_of(c.query("select pg_backend_pid()")) in {"pg1", "pg2"}


@pytest.mark.parametrize("interval", [0, 1000])
def test_with_its_only_replica_down_reads_go_to_the_primary(interval: int) -> None:
    """Without probes the lone replica is unbanned (PgCat's rule) and retried on each
    read, which then falls back to the primary; with probes it stays banned."""
    w = world(splitting(roles=("primary", "replica"), general_healthcheck_interval=interval))
    c = logged_in(w)
    w.crash("pg1", 5432)
    w.advance(1.0)
    for _ in range(5):
        got = c.query("select pg_backend_pid()")
        assert not errors(got) and server_of(got) == "pg0"
    unbans = sum("every replica was banned" in line for line in w.logs)
    assert unbans == (4 if interval == 0 else 0), w.logs[-6:]


def test_when_every_replica_is_banned_they_are_all_unbanned() -> None:
    w = world(splitting())
    c = logged_in(w)
    w.engine.lending.ban(("pg1", 5432), 600, "admin")
    assert not w.engine.lending.ban(("pg0", 5432), 600, "admin")  # the primary: refused
    assert server_of(c.query("select pg_backend_pid()")) == "pg2"
    w.engine.lending.ban(("pg2", 5432), 600, "admin")
    assert server_of(c.query("select pg_backend_pid()")) in {"pg1", "pg2"}
    assert not w.engine.bans
    assert any("every replica was banned" in line for line in w.logs)


def test_a_statement_timeout_bans_the_replica() -> None:
    w = world(splitting(statement_timeout=1000, pool_default_role="replica"))
    c = logged_in(w)
    c.send(Query("select pg_sleep(5)"))
    host = next(f.db.name for f in w.servers.values() if f.deadline)
    w.advance(1.5)
    assert errors(c.events())[0].sqlstate == "57014"
    assert (host, 5432) in w.engine.bans


# --- health checks ------------------------------------------------------------------


def test_a_server_idle_longer_than_healthcheck_delay_is_checked_before_use() -> None:
    w = world(cluster_config(general_healthcheck_delay=1000, pool_default_role="primary"))
    c = logged_in(w)
    assert server_of(c.query("select pg_backend_pid()")) == "pg0"
    check = b"Q\x00\x00\x00\x06;\x00"
    assert not any(check in b"".join(v) for v in w.server_log.values())
    w.advance(0.5)
    assert server_of(c.query("select pg_backend_pid()")) == "pg0"
    assert not any(check in b"".join(v) for v in w.server_log.values())
    w.advance(2)
    assert server_of(c.query("select pg_backend_pid()")) == "pg0"
    assert any(check in b"".join(v) for v in w.server_log.values())


def test_a_health_check_without_answer_bans_the_server_and_the_client_goes_elsewhere() -> None:
    w = world(splitting(general_healthcheck_delay=1000, general_healthcheck_timeout=500))
    c = logged_in(w)
    seen = {server_of(c.query("select pg_backend_pid()")) for _ in range(20)}
    assert seen == {"pg1", "pg2"}
    for fake in w.servers.values():
        if fake.db.name == "pg1":
            fake.stalled = True
    w.advance(2)
    answers = []
    for _ in range(10):
        c.send(Query("select pg_backend_pid()"))
        w.advance(0.6)
        answers.append(c.events())
    assert all(not errors(a) for a in answers)
    assert {server_of(a) for a in answers} == {"pg2"}
    assert ("pg1", 5432) in w.engine.bans
    assert "failed health check" in w.engine.bans["pg1", 5432].reason


# --- probes: periodic checks, primary detection, lag ----------------------------------


def test_periodic_probes_find_a_dead_replica_before_any_client_does() -> None:
    w = world(splitting(general_healthcheck_interval=1000))
    w.advance(0.1)
    w.crash("pg2", 5432)
    w.advance(1.0)
    assert ("pg2", 5432) in w.engine.bans


def test_auto_roles_follow_a_promotion() -> None:
    w = auto_world()
    assert w.engine.roles == {
        ("pg0", 5432): "primary",
        ("pg1", 5432): "replica",
        ("pg2", 5432): "replica",
    }
    c = logged_in(w)
    assert not errors(c.query("insert into t values (1)"))
    assert {server_of(c.query("select pg_backend_pid()")) for _ in range(10)} <= {"pg1", "pg2"}
    w.crash("pg0", 5432)
    w.advance(1.0)  # the next probe round notices
    assert w.engine.roles["pg0", 5432] is None
    got = c.query("insert into t values (2)")
    (err,) = errors(got)
    assert err.sqlstate == "57P03" and "promoted" in (err.message or "")
    assert not c.closed
    assert server_of(c.query("select pg_backend_pid()")) in {"pg1", "pg2"}  # reads go on
    w.dbs["pg1", 5432].in_recovery = False  # pg_ctl promote
    w.advance(1.0)
    assert w.engine.roles["pg1", 5432] == "primary"
    assert not errors(c.query("insert into t values (3)"))
    assert w.dbs["pg1", 5432].rows("t") == [("3",)]
    # The old primary comes back, not turned into a standby: it gets nothing.
    w.dbs["pg0", 5432].accepting = True
    w.advance(1.0)
    assert w.engine.health.role(ServerAddress("pg0", 5432, "auto")) is None
    assert any("another server is the primary" in line for line in w.logs)
    assert not errors(c.query("insert into t values (4)"))
    assert w.dbs["pg1", 5432].rows("t") == [("3",), ("4",)]


def test_a_lagging_replica_gets_no_reads_until_it_catches_up() -> None:
    w = world(splitting(pool_replica_max_lag_bytes=1000, general_healthcheck_interval=1000))
    primary, lagging = w.dbs["pg0", 5432], w.dbs["pg1", 5432]
    w.dbs["pg2", 5432].wal_lsn = lagging.wal_lsn = primary.wal_lsn
    c = logged_in(w)
    c.query("insert into t values " + ", ".join(["(1)"] * 50))  # 5000 bytes of WAL
    w.dbs["pg2", 5432].wal_lsn = primary.wal_lsn  # pg2 replays, pg1 does not
    w.advance(1.0)
    assert {server_of(c.query("select pg_backend_pid()")) for _ in range(20)} == {"pg2"}
    assert any("replica pg1:5432 is" in line and "behind" in line for line in w.logs)
    lagging.wal_lsn = primary.wal_lsn
    w.advance(1.0)
    assert "pg1" in {server_of(c.query("select pg_backend_pid()")) for _ in range(20)}


def test_the_time_lag_counts_from_when_the_primary_was_where_the_replica_is() -> None:
    w = world(splitting(pool_replica_max_lag_ms=1500, general_healthcheck_interval=1000))
    primary = w.dbs["pg0", 5432]
    for db in w.dbs.values():
        db.wal_lsn = primary.wal_lsn
    w.advance(5.0)  # an idle primary: nobody is late, however long ago the last write
    c = logged_in(w)
    assert "pg1" in {server_of(c.query("select pg_backend_pid()")) for _ in range(20)}
    c.query("insert into t values (1)")
    w.dbs["pg2", 5432].wal_lsn = primary.wal_lsn
    w.advance(2.0)  # one probe round: the primary's new position is first seen now
    assert "pg1" in {server_of(c.query("select pg_backend_pid()")) for _ in range(20)}
    w.advance(2.0)  # the next round: pg1 has not replayed what the primary had 2 s ago
    assert {server_of(c.query("select pg_backend_pid()")) for _ in range(20)} == {"pg2"}


def test_closed_clients_and_shutdown_leave_nothing_behind() -> None:
    w = world(cluster_config(("auto", "auto", "auto"), general_healthcheck_interval=1000))
    c = logged_in(w)
    c.query("select pg_backend_pid()")
    c.close()
    w.apply(w.engine.shutdown(w.now))
    assert w.exited
    assert not w.servers or all(f.closed for f in w.servers.values())


def test_losing_a_probe_connection_is_not_losing_the_primary() -> None:
    w = auto_world()
    (probe_sid,) = [
        sid
        for sid, s in w.engine.servers.items()
        if s.address.host == "pg0" and s.purpose == P_PROBE
    ]
    w.servers[probe_sid].crash()  # pg_terminate_backend on the monitoring connection
    w.apply(w.engine.server_closed(probe_sid, w.now))
    del w.servers[probe_sid]
    c = logged_in(w)
    assert not errors(c.query("insert into t values (1)"))
    w.advance(1.0)
    assert w.engine.roles["pg0", 5432] == "primary" and not w.engine.bans
    assert not errors(c.query("insert into t values (2)"))


def test_a_read_with_no_server_left_says_why_for_each_address() -> None:
    w = auto_world()
    c = logged_in(w)
    assert server_of(c.query("select pg_backend_pid()")) in {"pg1", "pg2"}
    for host in HOSTS:
        w.crash(host, 5432)
    w.advance(1.0)  # the next probe round finds all three down
    (err,) = errors(c.query("select 1"))
    assert err.message == f'no server is available in pool "{DB}": ' + "; ".join(
        f"{h}:5432 banned (failed health check (could not connect to the server: "
        "Connection refused))"
        for h in HOSTS
    )
    assert not c.closed
    w.engine.bans.clear()  # the operator's UNBAN: their probes still find them down
    (err,) = errors(c.query("select 1"))
    assert err.message == (
        f'no server is available in pool "{DB}": pg0:5432 down; pg1:5432 down; pg2:5432 down'
    )
    w.dbs["pg1", 5432].accepting = True  # a standby comes back: reads go to it
    w.advance(1.0)
    assert server_of(c.query("select pg_backend_pid()")) == "pg1"


# --- read-only transactions (pgsansio.engine._readonly) --------------------------------


def test_a_held_begin_commit_needs_no_server() -> None:
    w = world(splitting())
    c = logged_in(w)
    got = c.query("begin")
    assert ready(got) == ["T"] and not errors(got)
    assert ready(c.query("commit")) == ["I"]
    sent = b"".join(b"".join(log) for log in w.server_log.values())
    assert b"begin" not in sent and b"commit" not in sent  # answered by the pooler
    c.query("begin")
    c.query("select 1")
    sent = b"".join(b"".join(log) for log in w.server_log.values())
    assert b"begin" in sent  # sent with the first statement


def test_first_statement_strategy_sends_reading_transactions_to_a_replica() -> None:
    w = world(splitting(pool_begin_routing="first_statement"))
    c = logged_in(w)
    c.query("begin")
    assert server_of(c.query("select pg_backend_pid()")) in {"pg1", "pg2"}
    c.query("commit")
    c.query("begin")
    got = c.query("insert into t values (5)")
    assert not errors(got)
    assert server_of(c.query("select pg_backend_pid()")) == "pg0"
    assert ready(c.query("commit")) == ["I"]
    assert w.dbs["pg0", 5432].rows("t") == [("5",)]


def test_declared_and_primary_strategies_keep_a_plain_begin_on_the_primary() -> None:
    for strategy in ("declared", "primary"):
        w = world(splitting(pool_begin_routing=strategy))
        c = logged_in(w)
        c.query("begin")
        assert server_of(c.query("select pg_backend_pid()")) == "pg0"
        c.query("commit")


def test_a_read_only_session_sends_its_transactions_to_a_replica() -> None:
    w = world(splitting())
    c = logged_in(w)
    c.query("set default_transaction_read_only = on")
    for _ in range(3):
        c.query("begin")
        assert server_of(c.query("select pg_backend_pid()")) in {"pg1", "pg2"}
        c.query("commit")


def test_read_your_writes_query_is_never_seen_by_the_client() -> None:
    """The WAL-position query after a write runs on the client's server before it is
    released; its answer goes nowhere, and the client's next requests are answered as
    usual."""
    w = world(splitting(pool_read_your_writes=True))
    c = logged_in(w)
    for n in range(3):
        got = c.query(f"insert into t values ({n})")
        assert not errors(got) and ready(got) == ["I"], got
        got = c.query("select pg_backend_pid()")
        assert not errors(got) and ready(got) == ["I"], got
    sent = b"".join(b"".join(log) for log in w.server_log.values())
    assert sent.count(b"pg_current_wal_insert_lsn") == 3


def _ryw_world(wait_ms: int) -> tuple[World, Database]:
    """Read-your-writes over a primary and one replica (probed every second) that
    starts caught up; the primary's fake database to compare positions with."""
    w = world(
        splitting(
            roles=("primary", "replica"),
            pool_read_your_writes=True,
            pool_read_your_writes_wait_ms=wait_ms,
            general_healthcheck_interval=1000,
        ),
        standbys=(1,),
    )
    primary = w.dbs["pg0", 5432]
    w.dbs["pg1", 5432].wal_lsn = primary.wal_lsn
    w.advance(1.0)
    return w, primary


def test_read_your_writes_without_a_wait_bound_reads_on_the_primary_at_once() -> None:
    w, _ = _ryw_world(0)
    c = logged_in(w)
    assert server_of(c.query("select pg_backend_pid()")) == "pg1"
    assert not errors(c.query("insert into t values (1)"))
    assert server_of(c.query("select pg_backend_pid()")) == "pg0"  # not replayed yet


def test_read_your_writes_waits_up_to_its_bound_for_a_probe_to_find_the_replica() -> None:
    """With read_your_writes_wait_ms, a read that no replica can serve yet waits for the
    next probe: the replica when that probe finds it caught up, else, at the bound, the
    primary. Other clients' reads are not held up meanwhile."""
    w, primary = _ryw_world(1500)
    replica = w.dbs["pg1", 5432]
    c, other = logged_in(w), logged_in(w, "bob")
    assert not errors(c.query("insert into t values (1)"))
    c.send(Query("select pg_backend_pid()"))
    assert c.events() == []  # waiting for a probe
    assert server_of(other.query("select pg_backend_pid()")) == "pg1"
    replica.wal_lsn = primary.wal_lsn  # it replays the insert
    w.advance(1.0)  # the next probe round sees it
    assert server_of(c.events()) == "pg1"
    # Not replayed within the bound: the primary, 1.5 s after the read came.
    assert not errors(c.query("insert into t values (2)"))
    c.send(Query("select pg_backend_pid()"))
    w.advance(1.0)  # a probe: still behind
    assert c.events() == []
    w.advance(0.5)
    assert server_of(c.events()) == "pg0"
    # The next read waits afresh, and a caught-up replica ends the waiting.
    c.send(Query("select pg_backend_pid()"))
    assert c.events() == []
    replica.wal_lsn = primary.wal_lsn
    w.advance(1.0)
    assert server_of(c.events()) == "pg1"
    assert server_of(c.query("select pg_backend_pid()")) == "pg1"  # no wait now
