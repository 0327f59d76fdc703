"""The admin console, counters, pause/shutdown modes and /metrics, on fake backends.

Scenario tests in the synchronous World of tests/test_engine.py: every effect is
delivered at once, time moves only when a test says so, so counter values are exact.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine import DB, Client, World, config, errors, logged_in, ready, rows

from pgsansio.config.model import Config, ServerAddress, ShardConfig
from pgsansio.engine import Effect, Reload
from pgsansio.protocol import (
    AuthenticationMD5Password,
    AuthenticationOk,
    Bind,
    CancelRequest,
    CommandComplete,
    EmptyQueryResponse,
    ErrorResponse,
    Event,
    Execute,
    NoticeResponse,
    Parse,
    PasswordMessage,
    Query,
    RowDescription,
    Sync,
    md5_response,
)
from pgsansio.testing.fakepg import Database, FakeUser

from test_engine import scram_login  # isort: skip

SOCKET_COLUMNS = [
    "type", "user", "database", "replication", "state", "addr", "port", "local_addr",
    "local_port", "connect_time", "request_time", "wait", "wait_us", "close_needed", "ptr",
    "link", "remote_pid", "tls", "application_name", "prepared_statements", "id",
]  # fmt: skip


class RecordingWorld(World):
    """A World that also keeps the Reload effects the engine asks for."""

    def __init__(self, cfg: Config, db: Database | None = None) -> None:
        self.reloads = 0
        super().__init__(cfg, db)

    def apply(self, effects: Iterable[Effect]) -> None:
        effects = list(effects)
        self.reloads += sum(1 for e in effects if isinstance(e, Reload))
        super().apply(effects)


def admin(w: World, database: str = "pgbouncer") -> Client:
    c = Client(w, "admin", database)
    (challenge,) = c.events()
    assert isinstance(challenge, AuthenticationMD5Password)
    c.send(PasswordMessage(md5_response("admin", "admin", challenge.salt)))
    got = c.events()
    assert any(isinstance(e, AuthenticationOk) for e in got) and ready(got) == ["I"], got
    return c


def table(events: list[Event]) -> list[dict[str, str | None]]:
    (desc,) = [e for e in events if isinstance(e, RowDescription)]
    names = [f.name for f in desc.fields]
    return [dict(zip(names, r, strict=True)) for r in rows(events)]


def columns(events: list[Event]) -> list[str]:
    (desc,) = [e for e in events if isinstance(e, RowDescription)]
    return [f.name for f in desc.fields]


def tags(events: list[Event]) -> list[str]:
    return [e.tag for e in events if isinstance(e, CommandComplete)]


def show(c: Client, what: str) -> list[dict[str, str | None]]:
    got = c.query(f"SHOW {what}")
    assert not errors(got), errors(got)[0].message
    return table(got)


def stats(c: Client, database: str = DB) -> dict[str, str | None]:
    (row,) = [r for r in show(c, "STATS") if r["database"] == database]
    return row


# --- login and grammar ----------------------------------------------------------------


def test_admin_login_with_md5_on_both_database_names() -> None:
    w = World(config())
    for name in ("pgbouncer", "pgcat"):
        c = admin(w, name)
        assert rows(c.query("SHOW VERSION"))[0][0].startswith("pgsansio ")  # type: ignore[union-attr]


@pytest.mark.parametrize("user,password", [("admin", "wrong"), ("alice", "admin")])
def test_admin_login_refused_for_a_wrong_password_or_user(user: str, password: str) -> None:
    w = World(config())
    c = Client(w, user, "pgbouncer")
    (challenge,) = c.events()
    assert isinstance(challenge, AuthenticationMD5Password)
    c.send(PasswordMessage(md5_response(user, password, challenge.salt)))
    err = errors(c.events())[0]
    assert err.sqlstate == "28P01" and c.closed


def test_admin_trust_still_checks_the_user_name() -> None:
    w = World(config(general_admin_auth_type="trust"))
    c = Client(w, "mallory", "pgcat")
    assert errors(c.events())[0].sqlstate == "28P01" and c.closed
    ok = Client(w, "admin", "pgcat")
    assert ready(ok.events()) == ["I"]


def test_admin_scram_login() -> None:
    w = World(config(general_admin_auth_type="scram-sha-256"))
    assert ready(scram_login(Client(w, "admin", "pgbouncer"), "admin")) == ["I"]
    assert errors(scram_login(Client(w, "admin", "pgbouncer"), "nope"))[0].sqlstate == "28P01"


def test_grammar_select_alias_set_case_semicolon_and_errors() -> None:
    w = World(config())
    c = admin(w)
    assert columns(c.query("select pools;")) == columns(c.query("SHOW POOLS"))
    assert tags(c.query("SET client_encoding = 'UTF8'")) == ["SET"]
    got = c.query("FROB")
    assert errors(got)[0].sqlstate == "42601" and "FROB" in (errors(got)[0].message or "")
    assert ready(got) == ["I"]
    got = c.query("SHOW NOTHING")
    assert errors(got)[0].sqlstate == "42704" and "NOTHING" in (errors(got)[0].message or "")
    assert errors(c.query("SHOW POOLS; SHOW STATS"))[0].sqlstate == "42601"
    assert errors(c.query("PAUSE nodb"))[0].sqlstate == "42704"
    assert errors(c.query("KILL_CLIENT x"))[0].sqlstate == "42601"
    assert errors(c.query("RESUME"))[0].sqlstate == "55000"
    got = c.query("")
    assert any(isinstance(e, EmptyQueryResponse) for e in got) and ready(got) == ["I"]
    assert not c.closed


def test_extended_protocol_gets_one_error_per_batch_and_the_session_goes_on() -> None:
    w = World(config())
    c = admin(w)
    c.send(Parse("", "SHOW POOLS"), Bind("", ""), Execute(), Sync())
    got = c.events()
    (err,) = errors(got)
    assert err.sqlstate == "0A000" and "simple" in (err.message or "")
    assert ready(got) == ["I"]
    assert rows(c.query("SHOW VERSION"))


def test_show_help_is_a_notice_listing_every_command() -> None:
    w = World(config())
    got = admin(w).query("SHOW HELP")
    (notice,) = [e for e in got if isinstance(e, NoticeResponse)]
    detail = notice.get("D") or ""
    for command in ("SHOW", "PAUSE", "RESUME", "KILL_CLIENT", "RELOAD", "WAIT_FOR_CLIENTS"):
        assert command in detail


# --- column sets ----------------------------------------------------------------------


def test_columns_follow_pgbouncer() -> None:
    w = World(config())
    c = admin(w)
    assert columns(c.query("SHOW CLIENTS")) == SOCKET_COLUMNS
    assert columns(c.query("SHOW SERVERS")) == SOCKET_COLUMNS
    assert columns(c.query("SHOW POOLS"))[:4] == [
        "database", "user", "cl_active", "cl_waiting"
    ]  # fmt: skip
    assert columns(c.query("SHOW POOLS"))[-3:] == ["maxwait_us", "pool_mode", "load_balance_hosts"]
    stats_columns = columns(c.query("SHOW STATS"))
    assert stats_columns[:4] == ["database", "total_server_assignment_count", "total_xact_count",
                                 "total_query_count"]  # fmt: skip
    assert "avg_recv" in stats_columns and "total_received" in stats_columns
    assert len(stats_columns) == 25
    assert columns(c.query("SHOW STATS_TOTALS"))[1:6] == [
        "server_assignment_count", "xact_count", "query_count", "bytes_received", "bytes_sent"
    ]  # fmt: skip
    assert columns(c.query("SHOW DATABASES"))[-2:] == ["paused", "disabled"]
    assert columns(c.query("SHOW USERS"))[0] == "name"
    assert columns(c.query("SHOW CONFIG")) == ["key", "value", "default", "changeable"]
    assert columns(c.query("SHOW LISTS")) == ["list", "items"]
    assert columns(c.query("SHOW BANS"))[:4] == ["db", "user", "role", "host"]
    assert {r["key"]: r["value"] for r in show(c, "STATE")} == {
        "active": "yes", "paused": "no", "suspended": "no"
    }  # fmt: skip


def test_show_config_never_shows_a_password() -> None:
    w = World(config())
    cfg = {r["key"]: r["value"] for r in show(admin(w), "CONFIG")}
    assert cfg["admin_password"] == "********" and cfg["admin_username"] == "admin"
    assert cfg["port"] == "5432"


def test_show_pools_clients_servers_reflect_the_sessions() -> None:
    w = World(config(pool_size=1))
    a, b = logged_in(w), logged_in(w)
    a.query("begin")
    b.send(Query("select 1"))  # waits for A's server
    c = admin(w)
    (pool,) = [r for r in show(c, "POOLS") if r["user"] == "alice"]
    assert (pool["cl_active"], pool["cl_waiting"], pool["sv_active"], pool["sv_idle"]) == (
        "1", "1", "1", "0"
    )  # fmt: skip
    clients = {r["id"]: r for r in show(c, "CLIENTS")}
    assert clients[str(a.cid)]["state"] == "active" and clients[str(b.cid)]["state"] == "waiting"
    assert clients[str(c.cid)]["database"] == "pgbouncer"
    (server,) = show(c, "SERVERS")
    assert server["state"] == "active" and server["link"] == f"c{a.cid}"
    assert int(server["remote_pid"] or 0) in w.backend_pids()
    lists = {r["list"]: int(r["items"] or 0) for r in show(c, "LISTS")}
    assert lists["used_servers"] == 1 and lists["pools"] == 2
    (db,) = show(c, "DATABASES")
    assert db["name"] == DB and db["current_connections"] == "1"
    assert db["current_client_connections"] == "2"


# --- counters -------------------------------------------------------------------------


def test_three_transactions_count_exactly() -> None:
    w = World(config())
    a = logged_in(w)
    sent_bytes = 0
    received = 0
    for sql in ("select 1", "begin", "select 2", "commit", "select 3"):
        sent_bytes += len(bytes(Query(sql)))
        before = len(w.inbox.get(a.cid, b""))
        a.send(Query(sql))
        received += len(w.inbox.get(a.cid, b"")) - before
        a.events()
    st = stats(admin(w))
    assert st["total_xact_count"] == "3"
    assert st["total_query_count"] == "5"
    assert st["total_received"] == str(sent_bytes)
    assert st["total_sent"] == str(received)
    assert st["total_client_login_count"] == "1"
    assert st["total_server_assignment_count"] == "3"


def test_query_xact_and_wait_times_in_microseconds() -> None:
    w = World(config(pool_size=1, connect_timeout=5000))
    a, b = logged_in(w), logged_in(w)
    a.query("begin")
    b.send(Query("select 1"))
    w.advance(0.5)
    a.send(Query("select pg_sleep(1)"))
    w.advance(1.0)
    a.events()
    a.query("commit")
    b.events()
    st = stats(admin(w))
    assert st["total_wait_time"] == "1500000"  # B waited for A's transaction
    assert st["total_xact_time"] == "1500000"  # A's transaction: BEGIN at 0, COMMIT at 1.5
    assert st["total_query_time"] == "1000000"  # pg_sleep(1); the others took no time


def test_averages_per_stats_period() -> None:
    w = World(config())
    a = logged_in(w)
    for _ in range(120):
        a.query("select 1")
    w.advance(60.0)
    c = admin(w)
    st = stats(c)
    assert st["avg_xact_count"] == "2" and st["avg_query_count"] == "2"
    averages = {r["database"]: r for r in show(c, "STATS_AVERAGES")}
    assert averages[DB]["xact_count"] == "2"
    totals = {r["name"]: r["value"] for r in show(c, "TOTALS")}
    assert totals["total_xact_count"] == "120" and totals["avg_xact_count"] == "2"
    w.advance(60.0)  # a quiet period: averages fall back to 0
    assert stats(c)["avg_xact_count"] == "0"


# --- pause / resume / disable / reconnect / kill --------------------------------------


def test_pause_waits_for_the_transaction_then_resume_lets_waiters_go() -> None:
    w = World(config(pool_size=1))
    a, b = logged_in(w), logged_in(w)
    a.query("begin")
    c = admin(w)
    c.send(Query("PAUSE"))
    assert c.events() == []  # not before A's transaction ends
    b.send(Query("select 1"))
    assert b.events() == []
    assert ready(a.query("commit")) == ["I"]
    assert tags(c.events()) == ["PAUSE"]
    assert len(w.servers) == 0  # PAUSE closes servers as they are released
    assert b.events() == []  # still paused
    assert {r["key"]: r["value"] for r in show(c, "STATE")}["paused"] == "yes"
    assert tags(c.query("RESUME")) == ["RESUME"]
    assert rows(b.events()) == [("1",)]


def test_commands_sent_while_pause_waits_run_after_it() -> None:
    w = World(config())
    a = logged_in(w)
    a.query("begin")
    c = admin(w)
    c.send(Query("PAUSE"), Query("SHOW VERSION"))
    assert c.events() == []
    a.query("commit")
    got = c.events()
    assert tags(got) == ["PAUSE", "SHOW"] and ready(got) == ["I", "I"]


def test_pause_in_session_mode_waits_for_the_client_to_leave() -> None:
    w = World(config(pool_mode="session"))
    a = logged_in(w)
    a.query("select 1")
    c = admin(w)
    c.send(Query(f"PAUSE {DB}"))
    assert c.events() == []
    a.close()
    assert tags(c.events()) == ["PAUSE"]


def test_signal_pause_and_resume_inputs() -> None:
    w = World(config())
    a = logged_in(w)
    a.query("select 1")
    w.apply(w.engine.pause(w.now))
    assert "paused: no server connection is open" in w.logs
    a.send(Query("select 2"))
    assert a.events() == []
    w.apply(w.engine.resume(w.now))
    assert rows(a.events()) == [("2",)]


def test_disable_refuses_new_logins_and_enable_lets_them_in() -> None:
    w = World(config())
    c = admin(w)
    assert tags(c.query(f"DISABLE {DB}")) == ["DISABLE"]
    assert show(c, "DATABASES")[0]["disabled"] == "1"
    refused = Client(w)
    err = errors(refused.events())[0]
    assert err.sqlstate == "57P03" and "disabled" in (err.message or "")
    assert errors(c.query("DISABLE"))[0].sqlstate == "42601"
    assert tags(c.query(f"ENABLE {DB}")) == ["ENABLE"]
    logged_in(w)


def test_reconnect_replaces_server_connections() -> None:
    w = World(config(min_pool_size=1))
    a = logged_in(w)
    (pid,) = rows(a.query("select pg_backend_pid()"))
    c = admin(w)
    assert tags(c.query("RECONNECT")) == ["RECONNECT"]
    assert rows(a.query("select pg_backend_pid()")) != [pid]
    assert len(w.servers) == 2  # min_pool_size refilled (alice's and bob's pools)


def test_kill_drops_clients_and_servers_and_leaves_the_database_paused() -> None:
    w = World(config())
    a = logged_in(w)
    a.query("begin")
    c = admin(w)
    assert tags(c.query(f"KILL {DB}")) == ["KILL"]
    assert errors(a.events())[0].sqlstate == "57P01" and a.closed
    assert not w.servers and not c.closed
    b = logged_in(w)
    b.send(Query("select 1"))
    assert b.events() == []
    c.query(f"RESUME {DB}")
    assert rows(b.events()) == [("1",)]


def test_kill_client_by_id() -> None:
    w = World(config())
    a, b = logged_in(w), logged_in(w)
    c = admin(w)
    assert tags(c.query(f"KILL_CLIENT {a.cid}")) == ["KILL_CLIENT"]
    assert a.closed and not b.closed
    assert errors(c.query("KILL_CLIENT 999"))[0].sqlstate == "42704"


# --- bans -----------------------------------------------------------------------------


def replica_config() -> Config:
    cfg = config(pool_size=2)
    pool = cfg.pools[DB]
    servers = (ServerAddress("pg", 5432, "primary"), ServerAddress("pg2", 5433, "replica"))
    pool = replace(pool, shards=(ShardConfig(0, DB, servers),), default_role="replica")
    return replace(cfg, pools={DB: pool})


def test_ban_and_unban_a_replica() -> None:
    w = World(replica_config())
    c = admin(w)
    got = c.query("BAN pg2 30")
    assert tags(got) == ["BAN"] and {r[3] for r in rows(got)} == {"pg2:5433"}
    (ban,) = [r for r in show(c, "BANS") if r["user"] == "alice"]
    assert ban["reason"] == "admin ban" and ban["ban_remaining_seconds"] == "30"
    assert w.engine.health.banned(ServerAddress("pg2", 5433, "replica"))
    err = errors(c.query("BAN pg 30"))[0]
    assert err.sqlstate == "55000" and "primary" in (err.message or "")
    assert errors(c.query("BAN nowhere 30"))[0].sqlstate == "42704"
    assert errors(c.query("BAN pg2"))[0].sqlstate == "42601"
    assert tags(c.query("UNBAN pg2:5433")) == ["UNBAN"]
    assert show(c, "BANS") == []
    c.query("BAN pg2 10")
    w.advance(11)
    assert show(c, "BANS") == [] and not w.engine.bans


# --- reload ---------------------------------------------------------------------------


def test_reload_asks_the_frontend_and_answers_after() -> None:
    w = RecordingWorld(config())
    c = admin(w)
    c.send(Query("RELOAD"))
    assert w.reloads == 1 and c.events() == []
    w.apply(w.engine.reload(config(), w.now))
    assert tags(c.events()) == ["RELOAD"]
    c.send(Query("RELOAD"))
    w.apply(w.engine.reload_failed('pgcat.toml: general.port: "x" is not a number', w.now))
    got = c.events()
    err = errors(got)[0]
    assert err.sqlstate == "F0000" and "general.port" in (err.message or "")
    assert ready(got) == ["I"] and not c.closed


def two_pools(pool_size: int = 1) -> Config:
    cfg = config(min_pool_size=1)
    a = cfg.pools[DB]
    b = replace(a, name="other", shards=(ShardConfig(0, "other", a.shards[0].servers),))
    return replace(cfg, pools={DB: a, "other": b})


def test_reload_keeps_the_connections_of_pools_that_did_not_change() -> None:
    db = Database(
        users={"alice": FakeUser("pw", "md5"), "bob": FakeUser("pw", "md5")},
        databases=[DB, "other"],
    )
    w = World(two_pools(), db)
    a = logged_in(w)
    (pid,) = rows(a.query("select pg_backend_pid()"))
    cfg = two_pools()
    other = replace(cfg.pools["other"], pool_mode="session")
    w.apply(w.engine.reload(replace(cfg, pools={DB: cfg.pools[DB], "other": other}), w.now))
    assert rows(a.query("select pg_backend_pid()")) == [pid]


# --- shutdown -------------------------------------------------------------------------


def test_shutdown_wait_for_clients_keeps_serving_and_exits_when_the_last_leaves() -> None:
    w = World(config())
    a = logged_in(w)
    c = admin(w)
    c.query("SHUTDOWN WAIT_FOR_CLIENTS")
    assert rows(a.query("select 1")) == [("1",)]  # existing clients keep working
    refused = Client(w)
    assert errors(refused.events())[0].sqlstate == "57P01"
    late_admin = admin(w)  # the console still lets the operator in
    assert rows(late_admin.query("SHOW VERSION"))
    assert not w.exited
    a.close()
    assert w.exited and late_admin.closed


def test_signal_shutdown_wait_for_clients_then_sigint_drains() -> None:
    w = World(config())
    a = logged_in(w)
    w.apply(w.engine.shutdown(w.now, wait_for_clients=True))
    assert not a.closed and not w.exited
    w.apply(w.engine.shutdown(w.now))  # the stricter drain takes over
    assert a.closed and w.exited


def test_plain_shutdown_from_the_console_exits_at_once() -> None:
    w = World(config())
    a = logged_in(w)
    a.query("begin")
    got = admin(w).query("SHUTDOWN")
    assert tags(got) == ["SHUTDOWN"]
    assert w.exited and a.closed


def test_pgcat_shutdown_answers_one_row_then_drains() -> None:
    w = World(config())
    a = logged_in(w)
    a.query("begin")
    got = admin(w, "pgcat").query("SHUTDOWN")
    assert columns(got) == ["success"] and rows(got) == [("t",)] and tags(got) == ["SHUTDOWN"]
    assert not w.exited and not a.closed
    assert ready(a.query("commit")) == ["I"]
    assert w.exited


def test_shutdown_wait_for_servers_lets_the_transaction_finish() -> None:
    w = World(config())
    a = logged_in(w)
    a.query("begin")
    c = admin(w)
    assert tags(c.query("SHUTDOWN WAIT_FOR_SERVERS")) == ["SHUTDOWN"]
    assert not w.exited
    assert ready(a.query("commit")) == ["I"]
    assert w.exited


# --- logs -----------------------------------------------------------------------------


def test_connection_logs_are_one_line_per_event_and_never_hold_a_secret() -> None:
    alice_pw, bob_pw, admin_pw = "alice-Pa55", "bob-Scr4m", "admin-S3cret"
    cfg = config(
        auth_type="md5",
        password=alice_pw,
        general_log_client_connections=True,
        general_log_client_disconnections=True,
        general_admin_password=admin_pw,
    )
    bob = replace(cfg.pools[DB].users["bob"], password=bob_pw, auth_type="scram-sha-256")
    pool = replace(cfg.pools[DB], users={"alice": cfg.pools[DB].users["alice"], "bob": bob})
    cfg = replace(cfg, pools={DB: pool})
    db = Database(
        users={"alice": FakeUser(alice_pw, "md5"), "bob": FakeUser(bob_pw, "scram-sha-256")},
        databases=[DB],
    )
    w = World(cfg, db)

    def md5_login(user: str, database: str, password: str) -> Client:
        c = Client(w, user, database)
        (challenge,) = c.events()
        assert isinstance(challenge, AuthenticationMD5Password)
        c.send(PasswordMessage(md5_response(user, password, challenge.salt)))
        c.events()
        return c

    a = md5_login("alice", DB, alice_pw)
    a.query("select 1")
    md5_login("alice", DB, alice_pw + "-wrong")
    bob_client = Client(w, "bob")
    assert ready(scram_login(bob_client, bob_pw)) == ["I"]
    c = md5_login("admin", "pgbouncer", admin_pw)
    c.query("SHOW CONFIG")
    c.query("RELOAD")
    w.apply(w.engine.reload(cfg, w.now))
    a.close()
    c.close()
    bob_client.close()
    logins = [line for line in w.logs if "login attempt" in line]
    assert len(logins) == 3 and all("\n" not in line for line in logins)
    # The client refused for its password has its own line, with the cause.
    assert len([line for line in w.logs if "closing because" in line]) == 3
    assert len([line for line in w.logs if "login failed: wrong password" in line]) == 1
    for line in w.logs:
        for secret in (alice_pw, bob_pw, admin_pw):
            assert secret not in line, line
            assert md5_response("x", secret, b"salt")[3:] not in line


def test_an_error_response_names_the_command() -> None:
    w = World(config())
    c = admin(w)
    err: ErrorResponse = errors(c.query("UNBAN"))[0]
    assert "UNBAN" in (err.message or "")


def test_reload_changing_one_user_keeps_the_other_users_connections() -> None:
    w = World(config(min_pool_size=1))
    a = logged_in(w)
    (pid,) = rows(a.query("select pg_backend_pid()"))
    cfg = config(min_pool_size=1)
    pool = cfg.pools[DB]
    bob = replace(pool.users["bob"], pool_size=5)
    new = replace(cfg, pools={DB: replace(pool, users={**pool.users, "bob": bob})})
    bob_pids = {f.pid for f in w.servers.values() if f.user == "bob"}
    w.apply(w.engine.reload(new, w.now))
    assert rows(a.query("select pg_backend_pid()")) == [pid]
    assert not bob_pids & {f.pid for f in w.servers.values()}  # bob's pool was rebuilt


def test_a_cancel_for_a_client_held_by_pause_is_harmless() -> None:
    w = World(config())
    a = logged_in(w)
    a.query("select 1")  # a has taken (and released) a server: it knows its pool
    key = w.engine.clients[a.cid].cancel_key
    w.apply(w.engine.pause(w.now))
    a.send(Query("select 2"))
    canceller = Client.__new__(Client)
    canceller.world, canceller.user = w, "alice"
    w._next_cid += 1
    canceller.cid = w._next_cid
    w.apply(w.engine.client_connected(canceller.cid, "test", w.now))
    w.apply(w.engine.client_data(canceller.cid, bytes(CancelRequest(*key)), w.now))
    assert not [line for line in w.logs if "internal error" in line]
    w.apply(w.engine.resume(w.now))
    assert rows(a.events()) == [("2",)]


def test_show_databases_names_each_address_of_a_replicated_pool() -> None:
    w = World(replica_config())
    names = [r["name"] for r in show(admin(w), "DATABASES")]
    assert names == [f"{DB}_shard_0_primary", f"{DB}_shard_0_replica_0"]


def test_show_users() -> None:
    w = World(config(pool_size=4))
    logged_in(w)
    users = {r["name"]: r for r in show(admin(w), "USERS")}
    assert users["alice"]["pool_size"] == "4" and users["alice"]["pool_mode"] == "transaction"
    assert users["alice"]["current_client_connections"] == "1"
    assert users["alice"]["current_connections"] == "1"


# --- anything an operator (or a stray client) may type ---------------------------------

_WORDS = st.sampled_from(
    [
        "SHOW", "SELECT", "SET", "PAUSE", "RESUME", "DISABLE", "ENABLE", "RECONNECT", "KILL",
        "KILL_CLIENT", "BAN", "UNBAN", "RELOAD", "SHUTDOWN", "WAIT_FOR_CLIENTS", "POOLS",
        "STATS", "TOTALS", "CLIENTS", "SERVERS", "BANS", "HELP", DB, "pg", "pg:5432", "1",
        "-3", "1e309", "nan", '"app"', '""', ";", ",", "=", "'x'", "\\", "é",
    ]
)  # fmt: skip


@settings(max_examples=150, deadline=None, database=None)
@given(st.lists(st.lists(_WORDS | st.text(max_size=8), max_size=4), min_size=1, max_size=4))
def test_any_console_input_gets_an_answer_never_an_internal_error(
    queries: list[list[str]],
) -> None:
    w = World(config())
    a = logged_in(w)
    c = admin(w)
    for words in queries:
        sql = " ".join(words).replace("\0", "")
        c.send(Query(sql))
        got = c.events()
        if c.closed or w.exited:
            break
        # Either answered now (ReadyForQuery) or waiting for a PAUSE / RELOAD.
        assert ready(got) or w.engine.control.busy, (sql, got)
        if w.engine.control.busy:
            break
    assert not [line for line in w.logs if "internal error" in line], w.logs
    if not w.exited and not a.closed and not w.engine.paused:
        assert rows(a.query("select 1")) == [("1",)]
