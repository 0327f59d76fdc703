"""The engine, scenario by scenario, against fake PostgreSQL servers, with no sockets.

A tiny synchronous world: every effect is delivered at once, so each test reads as a
conversation. Clients are :class:`pgsansio.protocol.Connection` objects in the client
role; servers are :mod:`pgsansio.testing.fakepg` backends. (The randomized, timed
version of this world is tests/test_simulation.py.)
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import replace

import pytest

from pgsansio.config.model import (
    Config,
    General,
    PoolConfig,
    ServerAddress,
    ShardConfig,
    UserConfig,
)
from pgsansio.engine import (
    CloseClient,
    CloseServer,
    Effect,
    Engine,
    Exit,
    Log,
    OpenServer,
    ReadClient,
    ReadServer,
    SendClient,
    SendServer,
    Wakeup,
)
from pgsansio.protocol import (
    CLIENT,
    NEED_DATA,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    BackendKeyData,
    Bind,
    CancelRequest,
    Close,
    CommandComplete,
    Connection,
    ConnectionClosed,
    Describe,
    ErrorResponse,
    Event,
    Execute,
    NoticeResponse,
    ParameterStatus,
    Parse,
    PasswordMessage,
    Query,
    ReadyForQuery,
    SASLInitialResponse,
    SASLResponse,
    ScramClient,
    StartupMessage,
    Sync,
    Terminate,
    md5_response,
)
from pgsansio.testing.fakepg import Database, FakeServer, FakeUser

DB = "app"


def config(**user_kw: object) -> Config:
    pool_kw = {
        k[5:]: user_kw.pop(k)
        for k in list(user_kw)
        if k.startswith("pool_") and k not in ("pool_size", "pool_mode")
    }
    general_kw = {k[8:]: user_kw.pop(k) for k in list(user_kw) if k.startswith("general_")}
    user = UserConfig(username="alice", password="pw", pool_size=1, auth_type="trust")
    user = replace(user, **user_kw)  # type: ignore[arg-type]
    bob = replace(user, username="bob")
    pool = PoolConfig(
        name=DB,
        users={"alice": user, "bob": bob},
        shards=(ShardConfig(0, DB, (ServerAddress("pg", 5432, "primary"),)),),
        pool_mode=user.pool_mode,
    )
    pool = replace(pool, **pool_kw)  # type: ignore[arg-type]
    general = replace(General(admin_username="admin", admin_password="admin"), **general_kw)  # type: ignore[arg-type]
    return Config(general=general, pools={DB: pool})


class World:
    def __init__(
        self,
        cfg: Config,
        db: Database | None = None,
        dbs: dict[tuple[str, int], Database] | None = None,
    ) -> None:
        self.engine = Engine(cfg, seed=7)
        self.db = db or Database(
            users={"alice": FakeUser("pw", "md5"), "bob": FakeUser("pw", "md5")}, databases=[DB]
        )
        self.dbs = dbs or {}  # one fake cluster per address (replica tests); else self.db
        self.where: dict[int, tuple[str, int]] = {}
        self.now = 0.0
        self.servers: dict[int, FakeServer] = {}
        self.server_log: dict[int, list[bytes]] = {}
        self.inbox: dict[int, bytearray] = {}
        self.closed_clients: set[int] = set()
        self.logs: list[str] = []
        self.wakeup: float | None = None
        self.exited = False
        self.refuse_connect = False
        self.paused: set[tuple[str, int]] = set()
        self._next_cid = 0
        self.apply(self.engine.start(self.now))

    def apply(self, effects: Iterable[Effect]) -> None:
        queue = list(effects)
        while queue:
            e = queue.pop(0)
            more: list[Effect] = []
            if isinstance(e, SendClient):
                self.inbox.setdefault(e.cid, bytearray()).extend(e.data)
            elif isinstance(e, SendServer):
                fake = self.servers.get(e.sid)
                if fake is not None and not fake.closed:
                    self.server_log.setdefault(e.sid, []).append(e.data)
                    reply = fake.receive(e.data, self.now)
                    more += self._server_reply(e.sid, fake, reply)
            elif isinstance(e, OpenServer):
                db = self.dbs.get((e.host, e.port), self.db)
                if self.refuse_connect or not db.accepting:
                    more += self.engine.server_failed(e.sid, "Connection refused", self.now)
                else:
                    self.servers[e.sid] = db.connect(self.now)
                    self.where[e.sid] = (e.host, e.port)
                    more += self.engine.server_connected(e.sid, self.now)
            elif isinstance(e, CloseServer):
                fake = self.servers.pop(e.sid, None)
                if fake is not None:
                    fake.receive(b"", self.now)
            elif isinstance(e, CloseClient):
                self.closed_clients.add(e.cid)
            elif isinstance(e, Wakeup):
                self.wakeup = e.at
            elif isinstance(e, Log):
                self.logs.append(e.message)
            elif isinstance(e, Exit):
                self.exited = True
            elif isinstance(e, (ReadServer, ReadClient)):
                kind = "server" if isinstance(e, ReadServer) else "client"
                ident = e.sid if isinstance(e, ReadServer) else e.cid
                if e.on:
                    self.paused.discard((kind, ident))
                else:
                    self.paused.add((kind, ident))
            queue.extend(more)  # later, as a network would deliver them

    def _server_reply(self, sid: int, fake: FakeServer, reply: bytes) -> list[Effect]:
        out: list[Effect] = []
        if reply:
            out += self.engine.server_data(sid, reply, self.now)
        if fake.closed and sid in self.servers:
            del self.servers[sid]
            out += self.engine.server_closed(sid, self.now)
        return out

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for sid, fake in list(self.servers.items()):
            if fake.deadline is not None and fake.deadline <= self.now:
                self.apply(self._server_reply(sid, fake, fake.tick(self.now)))
        if self.wakeup is not None and self.wakeup <= self.now:
            self.wakeup = None
            self.apply(self.engine.tick(self.now))

    def crash(self, host: str, port: int) -> None:
        """The server at host:port dies (``pg_ctl stop -m immediate``); connections drop."""
        self.dbs[host, port].crash_all()
        for sid, fake in list(self.servers.items()):
            if fake.closed:
                del self.servers[sid]
                self.apply(self.engine.server_closed(sid, self.now))

    def backend_pids(self) -> set[int]:
        return {f.pid for f in self.servers.values() if f.logged_in}


class Client:
    """A scripted client: send events, then read what came back."""

    def __init__(
        self, world: World, user: str = "alice", database: str = DB, **params: str
    ) -> None:
        self.world = world
        world._next_cid += 1
        self.cid = world._next_cid
        self.conn = Connection(CLIENT)
        self.user = user
        world.apply(world.engine.client_connected(self.cid, "test", world.now))
        self.send(StartupMessage({"user": user, "database": database, **params}))

    def send(self, *events: Event) -> None:
        data = b"".join(self.conn.send(e) for e in events)
        self.world.apply(self.world.engine.client_data(self.cid, data, self.world.now))

    def send_raw(self, data: bytes) -> None:
        self.world.apply(self.world.engine.client_data(self.cid, data, self.world.now))

    def events(self) -> list[Event]:
        buf = self.world.inbox.pop(self.cid, bytearray())
        if buf:
            self.conn.receive_data(bytes(buf))
        if self.cid in self.world.closed_clients and not self.conn.their_closed:
            self.conn.receive_data(b"")
        out = []
        while True:
            e = self.conn.next_event()
            if e is NEED_DATA or isinstance(e, ConnectionClosed):
                if isinstance(e, ConnectionClosed):
                    out.append(e)
                return out
            assert isinstance(e, Event)
            out.append(e)

    def query(self, sql: str) -> list[Event]:
        self.send(Query(sql))
        return self.events()

    def close(self) -> None:
        self.world.closed_clients.add(self.cid)
        self.world.apply(self.world.engine.client_closed(self.cid, self.world.now))

    @property
    def closed(self) -> bool:
        return self.cid in self.world.closed_clients


def rows(events: list[Event]) -> list[tuple[str | None, ...]]:
    from pgsansio.protocol import DataRow

    return [
        tuple(None if v is None else v.decode() for v in e.values)
        for e in events
        if isinstance(e, DataRow)
    ]


def errors(events: list[Event]) -> list[ErrorResponse]:
    return [e for e in events if isinstance(e, ErrorResponse)]


def ready(events: list[Event]) -> list[str]:
    return [e.status for e in events if isinstance(e, ReadyForQuery)]


def logged_in(world: World, user: str = "alice", **params: str) -> Client:
    c = Client(world, user, **params)
    got = c.events()
    assert any(isinstance(e, AuthenticationOk) for e in got), got
    assert ready(got) == ["I"]
    return c


# --- login ------------------------------------------------------------------------


def test_trust_login_shows_server_parameters_and_our_own_cancel_key() -> None:
    w = World(config())
    c = Client(w)
    got = c.events()
    names = {e.name for e in got if isinstance(e, ParameterStatus)}
    assert {"server_version", "client_encoding", "DateStyle", "TimeZone"} <= names
    (key,) = [e for e in got if isinstance(e, BackendKeyData)]
    assert key.process_id not in w.backend_pids()
    assert ready(got) == ["I"]


def test_md5_login_and_wrong_password() -> None:
    w = World(config(auth_type="md5"))
    c = Client(w)
    (challenge,) = c.events()
    assert isinstance(challenge, AuthenticationMD5Password)
    c.send(PasswordMessage(md5_response("alice", "pw", challenge.salt)))
    assert ready(c.events()) == ["I"]
    bad = Client(w)
    (challenge,) = bad.events()
    assert isinstance(challenge, AuthenticationMD5Password)
    bad.send(PasswordMessage(md5_response("alice", "nope", challenge.salt)))
    (err, closed) = bad.events()
    assert isinstance(err, ErrorResponse) and err.sqlstate == "28P01" and bad.closed
    assert isinstance(closed, ConnectionClosed)


def scram_login(c: Client, password: str) -> list[Event]:
    (sasl,) = c.events()
    assert isinstance(sasl, AuthenticationSASL) and "SCRAM-SHA-256" in sasl.mechanisms
    scram = ScramClient(password)
    c.send(SASLInitialResponse("SCRAM-SHA-256", scram.client_first()))
    (cont,) = c.events()
    assert isinstance(cont, AuthenticationSASLContinue)
    c.send(SASLResponse(scram.client_final(cont.data)))
    got = c.events()
    if isinstance(got[0], AuthenticationSASLFinal):
        scram.verify_server_final(got[0].data)
    return got


def test_scram_login_and_wrong_password() -> None:
    w = World(config(auth_type="scram-sha-256"))
    assert ready(scram_login(Client(w), "pw")) == ["I"]
    got = scram_login(Client(w), "wrong")
    assert errors(got)[0].sqlstate == "28P01"


@pytest.mark.parametrize("user,database", [("mallory", DB), ("alice", "nodb")])
def test_unknown_user_or_database_fails_like_a_wrong_password(user: str, database: str) -> None:
    w = World(config(auth_type="md5"))
    c = Client(w, user, database)
    (challenge,) = c.events()
    assert isinstance(challenge, AuthenticationMD5Password)  # same challenge as a real user
    c.send(PasswordMessage(md5_response(user, "pw", challenge.salt)))
    (err, _) = c.events()
    assert isinstance(err, ErrorResponse)
    assert err.sqlstate == "28P01"
    assert err.message == f'password authentication failed for user "{user}"'


def test_replication_connections_are_refused() -> None:
    w = World(config())
    c = Client(w, replication="database")
    assert errors(c.events())[0].sqlstate == "0A000"


def test_max_client_conn() -> None:
    w = World(config(general_max_client_conn=1))
    logged_in(w)
    c = Client(w)
    assert errors(c.events())[0].sqlstate == "53300" and c.closed


def test_a_client_that_does_not_log_in_within_the_login_timeout_is_dropped() -> None:
    LIMIT = 60.0  # client_login_timeout's default, in seconds

    w = World(config())
    silent = Client.__new__(Client)  # connects and never sends its startup packet
    silent.world, silent.cid, silent.conn = w, 100, Connection(CLIENT)
    w.apply(w.engine.client_connected(100, "test", w.now))
    fine = Client(w)
    assert ready(fine.events()) == ["I"]
    w.advance(LIMIT / 2)
    halfway = Client(w, user="nobody")  # unknown: stuck in the password exchange
    assert not errors(halfway.events())
    w.advance(LIMIT / 2 + 0.1)
    assert w.inbox.get(100) and 100 in w.closed_clients
    assert b"client login timeout" in w.inbox[100] and b"08006" in w.inbox[100]
    assert not halfway.closed and not fine.closed
    assert ready(fine.query("select 1")) == ["I"]  # logged in: no timeout applies
    w.advance(LIMIT / 2)
    assert halfway.closed and errors(halfway.events())[0].sqlstate == "08006"
    assert not fine.closed


def test_logins_leave_no_timer_behind() -> None:
    """A client that has logged in (or left) leaves nothing in the timer heap: one
    sweep timer serves every login in progress, however many connect."""
    w = World(config())
    for _ in range(500):
        c = Client(w)
        assert ready(c.events()) == ["I"]
        w.advance(0.01)
    for _ in range(500):
        Client(w).close()
    assert len(w.engine.ctx.timers) < 10
    assert not w.engine.login.logging_in


# --- transaction pooling ----------------------------------------------------------


def test_transaction_mode_shares_one_server_between_clients() -> None:
    w = World(config())
    a, b = logged_in(w), logged_in(w)
    assert rows(a.query("select pg_backend_pid()")) == rows(b.query("select pg_backend_pid()"))
    assert len(w.servers) == 1


def test_a_transaction_keeps_the_server_and_others_wait() -> None:
    w = World(config())
    a, b = logged_in(w), logged_in(w)
    assert ready(a.query("begin")) == ["T"]
    b.send(Query("select 1"))
    assert b.events() == []  # waiting: the only server is in A's transaction
    assert ready(a.query("commit")) == ["I"]
    got = b.events()
    assert rows(got) == [("1",)] and ready(got) == ["I"]


def test_checkout_timeout_answers_53300_and_the_client_can_retry() -> None:
    w = World(config(connect_timeout=500))
    a, b = logged_in(w), logged_in(w)
    a.query("begin")
    b.send(Query("select 1"))
    w.advance(0.6)
    got = b.events()
    assert errors(got)[0].sqlstate == "53300" and ready(got) == ["I"] and not b.closed
    a.query("commit")
    assert rows(b.query("select 2")) == [("2",)]


def test_connect_timeouts_of_different_pools_each_apply_at_their_own_deadline() -> None:
    # One sweep timer serves every waiting client: bob's shorter connect_timeout arms
    # it earlier than alice's, and alice's still applies afterwards, exactly once.
    cfg = config(connect_timeout=2000)
    pool = cfg.pools[DB]
    bob = replace(pool.users["bob"], connect_timeout=500)
    cfg = replace(cfg, pools={DB: replace(pool, users={**pool.users, "bob": bob})})
    w = World(cfg)
    a1, a2 = logged_in(w), logged_in(w)
    b1, b2 = logged_in(w, "bob"), logged_in(w, "bob")
    a1.query("begin")
    b1.query("begin")
    a2.send(Query("select 1"))
    b2.send(Query("select 2"))
    w.advance(0.6)
    assert errors(b2.events())[0].sqlstate == "53300"
    assert a2.events() == []  # still waiting: its deadline is 2 s
    w.advance(1.5)
    got = a2.events()
    assert [e.sqlstate for e in errors(got)] == ["53300"] and ready(got) == ["I"]
    w.advance(3.0)
    assert a2.events() == [] and b2.events() == []


def test_non_ascii_queries_are_checked_for_session_state_too() -> None:
    w = World(config(pool_size=1))
    a, b = logged_in(w), logged_in(w)
    assert rows(a.query("select 'ünïcode'")) == [("ünïcode",)]
    a.query("SET application_name = 'äpp'")  # followed like an ASCII SET
    assert rows(b.query("show application_name")) == [("",)]
    assert rows(a.query("show application_name")) == [("äpp",)]


def test_pipelined_extended_batches_keep_the_link_until_the_last_sync() -> None:
    w = World(config())
    a, b = logged_in(w), logged_in(w)
    a.send(
        Parse("", "select 1"),
        Bind("", ""),
        Execute(),
        Sync(),
        Parse("", "select 2"),
        Bind("", ""),
        Execute(),
        Sync(),
    )
    assert ready(a.events()) == ["I", "I"]
    assert rows(b.query("select 3")) == [("3",)]


def test_pg8000_unnamed_statement_round_trips_stay_on_one_server() -> None:
    w = World(config(pool_size=2))
    a, b = logged_in(w), logged_in(w)
    a.send(Parse("", "select $1::int"), Sync())
    assert ready(a.events()) == ["I"]
    # B runs meanwhile; it must not get A's server (A's statement is waiting).
    b_pid = rows(b.query("select pg_backend_pid()"))
    a.send(Describe("S", ""), Sync())
    a.events()
    a.send(Bind("", "", (), [b"5"]), Execute(), Sync())
    got = a.events()
    assert rows(got) == [("5",)], got
    assert rows(a.query("select pg_backend_pid()")) != b_pid or len(w.servers) == 2


def test_client_leaving_idle_in_transaction_gets_rollback_and_the_server_is_reused() -> None:
    w = World(config())
    a = logged_in(w)
    a.query("insert into t values (0)")  # commits: the table exists
    a.query("begin")
    a.query("insert into t values (1)")
    a.close()
    b = logged_in(w)
    assert rows(b.query("select count(*) from t")) == [("1",)]
    assert ready(b.query("select 1")) == ["I"]
    assert len(w.servers) == 1


def test_client_leaving_with_a_query_running_cancels_and_closes_that_server() -> None:
    w = World(config())
    a = logged_in(w)
    a.send(Query("select pg_sleep(30)"))
    (fake,) = w.servers.values()
    a.close()
    assert w.db.stats["cancels"] == 1
    w.advance(0.01)  # the backend answers the cancel; the pooler closes it
    assert fake.closed and fake not in w.servers.values()
    b = logged_in(w)
    assert rows(b.query("select 1")) == [("1",)]


def test_server_dying_mid_transaction_tells_the_client() -> None:
    w = World(config())
    a = logged_in(w)
    a.query("begin")
    (sid, fake) = next(iter(w.servers.items()))
    fake.crash()
    w.apply(w.engine.server_closed(sid, w.now))
    del w.servers[sid]
    got = a.events()
    assert errors(got)[0].sqlstate == "08006" and a.closed
    b = logged_in(w)
    assert rows(b.query("select 1")) == [("1",)]


def test_unreachable_server_fails_the_client_fast() -> None:
    w = World(config())
    w.refuse_connect = True
    c = Client(w)
    got = c.events()
    err = errors(got)[0]
    assert err.sqlstate == "08001" and c.closed
    # The client is not told the server's address; the operator's log line is.
    assert err.message == "could not connect to the server: Connection refused"
    assert any("@pg:5432 closing because: could not connect" in line for line in w.logs)


def test_server_refusing_login_passes_its_own_error() -> None:
    db = Database(users={"alice": FakeUser("other", "md5")}, databases=[DB])
    w = World(config(), db)
    c = Client(w)
    err = errors(c.events())[0]
    assert err.sqlstate == "28P01" and c.closed


def test_copy_error_while_the_client_still_sends_rows_is_swallowed() -> None:
    from pgsansio.protocol import CopyData, CopyDone

    w = World(config())
    a, b = logged_in(w), logged_in(w)
    a.send(Query("select error"))
    assert errors(a.events())
    assert rows(b.query("select 1")) == [("1",)]
    del CopyData, CopyDone  # COPY is covered against real PostgreSQL


# --- session state ----------------------------------------------------------------


def test_tracked_parameters_follow_the_client_to_another_server() -> None:
    w = World(config(pool_size=2))
    a = logged_in(w, application_name="app-a", TimeZone="Asia/Tokyo")
    b = logged_in(w)
    a.query("begin")
    # B lands on the second server, whose session has nobody's settings yet.
    assert rows(b.query("show application_name")) == [("",)]
    assert rows(b.query("show TimeZone")) != [("Asia/Tokyo",)]
    a.query("commit")
    assert rows(a.query("show application_name")) == [("app-a",)]
    assert rows(a.query("show TimeZone")) == [("Asia/Tokyo",)]


def test_plain_session_set_follows_the_client_and_does_not_leak() -> None:
    w = World(config(pool_size=1))
    a, b = logged_in(w), logged_in(w)
    a.query("SET statement_timeout = '5s'")
    assert rows(b.query("show statement_timeout")) == [("0",)]
    assert rows(a.query("show statement_timeout")) == [("5s",)]
    a.query("RESET statement_timeout")
    assert rows(a.query("show statement_timeout")) == [("0",)]


def test_startup_options_are_applied() -> None:
    w = World(config())
    a = logged_in(w, options="-c statement_timeout=1234")
    b = logged_in(w)
    assert rows(a.query("show statement_timeout")) == [("1234",)]
    assert rows(b.query("show statement_timeout")) == [("0",)]


def test_untracked_set_makes_the_server_dirty_and_it_is_reset() -> None:
    # pin_session_state off: PgBouncer's behaviour, the SET is lost, not leaked.
    w = World(config(pool_size=1, pool_pin_session_state=False))
    a, b = logged_in(w), logged_in(w)
    a.query("begin")
    a.query("set statement_timeout = 99")  # inside a transaction: not followed
    a.query("commit")
    assert rows(b.query("show statement_timeout")) == [("0",)]


def test_untracked_set_pins_the_client_until_reset_all() -> None:
    w = World(config(pool_size=1))
    a, b = logged_in(w), logged_in(w)
    a.query("begin")
    a.query("set statement_timeout = 99")  # inside a transaction: not followed, so pinned
    a.query("commit")
    b.send(Query("show statement_timeout"))
    assert b.events() == []  # A keeps the only server
    assert rows(a.query("show statement_timeout")) == [("99",)]
    a.query("reset all")  # the state is gone: B gets the server, clean
    assert rows(b.events()) == [("0",)]
    assert any("pinned to server" in line and "set statement_timeout" in line for line in w.logs)


def test_session_mode_resets_the_server_when_the_client_leaves() -> None:
    w = World(config(pool_mode="session"))
    a = logged_in(w)
    a.query("set statement_timeout = 77")
    pid = rows(a.query("select pg_backend_pid()"))
    b = Client(w)
    got = b.events()
    # session mode: A keeps the only server, and B is welcomed once it has one (its
    # BackendKeyData carries that server's process ID)
    assert any(isinstance(e, AuthenticationOk) for e in got) and ready(got) == []
    a.send(Terminate())
    got = b.events()
    (key,) = [e for e in got if isinstance(e, BackendKeyData)]
    assert [(str(key.process_id),)] == pid
    assert ready(got) == ["I"]
    assert rows(b.query("select pg_backend_pid()")) == pid
    assert rows(b.query("show statement_timeout")) == [("0",)]


# --- prepared statements ----------------------------------------------------------


def prepare(c: Client, name: str, sql: str) -> list[Event]:
    c.send(Parse(name, sql), Sync())
    return c.events()


def execute(c: Client, name: str, *params: bytes) -> list[Event]:
    c.send(Bind("", name, (), list(params)), Execute(), Sync())
    return c.events()


def test_named_statements_are_shared_and_renamed() -> None:
    w = World(config(pool_size=1))
    a, b = logged_in(w), logged_in(w)
    assert ready(prepare(a, "s1", "select $1::int")) == ["I"]
    assert rows(execute(a, "s1", b"1")) == [("1",)]
    assert ready(prepare(b, "mine", "select $1::int")) == ["I"]
    assert rows(execute(b, "mine", b"2")) == [("2",)]
    sent = b"".join(b"".join(v) for v in w.server_log.values())
    assert b"PGSANSIO_1" in sent and b"s1" not in sent and b"mine" not in sent
    # One Parse on the server for both clients.
    assert sent.count(b"select $1::int") == 1


def test_statement_missing_on_another_server_is_parsed_again_silently() -> None:
    w = World(config(pool_size=2))
    a, b = logged_in(w), logged_in(w)
    prepare(a, "s1", "select $1::int")
    b.query("begin")  # B holds server 1 or 2; A may land on the other
    for i in range(3):
        got = execute(a, "s1", str(i).encode())
        assert rows(got) == [(str(i),)] and not errors(got)
    b.query("commit")


def test_cache_size_one_evicts_with_close() -> None:
    w = World(config(pool_prepared_statements_cache_size=1))
    a = logged_in(w)
    prepare(a, "s1", "select 1")
    prepare(a, "s2", "select 2")
    assert rows(execute(a, "s1")) == [("1",)]
    assert rows(execute(a, "s2")) == [("2",)]
    sent = b"".join(b"".join(v) for v in w.server_log.values())
    # Close('S', 'PGSANSIO_<n>'): evictions from the size-1 cache.
    assert re.search(rb"C\x00\x00\x00.SPGSANSIO_\d+\x00", sent, re.S)


def test_client_close_is_answered_and_errors_name_the_clients_statement() -> None:
    w = World(config())
    a = logged_in(w)
    prepare(a, "s1", "select error")
    got = prepare(a, "s2", "select 1")
    assert ready(got) == ["I"]
    a.send(Close("S", "s2"), Sync())
    got = a.events()
    from pgsansio.protocol import CloseComplete

    assert isinstance(got[0], CloseComplete) and ready(got) == ["I"]
    # A Bind of a statement the client never prepared ends the session, with its name.
    a.send(Bind("", "nope", (), []), Execute(), Sync())
    err = errors(a.events())[0]
    assert err.sqlstate == "26000" and '"nope"' in (err.message or "")


def test_deallocate_all_forgets_the_clients_names() -> None:
    w = World(config())
    a = logged_in(w)
    prepare(a, "s1", "select 1")
    assert ready(a.query("deallocate all")) == ["I"]
    assert ready(prepare(a, "s1", "select 2")) == ["I"]
    assert rows(execute(a, "s1")) == [("2",)]


class SlowWorld(World):
    """A World whose servers' answers wait until released: a client pipelines its
    next requests before the answers to its last ones are back, as over a network."""

    def __init__(self, cfg: Config) -> None:
        self.held: list[tuple[int, FakeServer, bytes]] = []
        self.holding = False
        super().__init__(cfg)

    def _server_reply(self, sid: int, fake: FakeServer, reply: bytes) -> list[Effect]:
        if self.holding and reply:
            self.held.append((sid, fake, reply))
            return []
        return super()._server_reply(sid, fake, reply)

    def release(self) -> None:
        self.holding = False
        held, self.held = self.held, []
        for sid, fake, reply in held:
            self.apply(super()._server_reply(sid, fake, reply))


def answers(events: list[Event]) -> list[tuple[str, ...]]:
    return [
        (type(e).__name__, e.sqlstate or "", e.message or "")
        if isinstance(e, ErrorResponse)
        else (type(e).__name__,)
        for e in events
        if not isinstance(e, (ParameterStatus, NoticeResponse))
    ]


@pytest.mark.parametrize("one_read", [False, True], ids=["two-reads", "one-read"])
def test_pipelined_past_a_failed_close_errors_keep_the_clients_name(one_read: bool) -> None:
    """tests/test_session_fidelity.py's flaky script, its answers held back: a client
    sends its next pipelines before an error skips its Close of ``b``. The server's
    42P05 names our shared statement: the client must read its own name. Its next
    pipeline waits for that answer, so that ``b`` means there what it means to
    PostgreSQL (still prepared: a second Parse fails)."""
    w = SlowWorld(config(pool_size=1))
    a = logged_in(w)
    w.holding = True
    a.send(Query("DEALLOCATE ALL"), Sync())
    failing = [Parse("b", "SELECT 1"), Parse("b", "SELECT 2"), Close("S", "a"), Close("S", "b")]
    after = [Parse("b", "SELECT 1"), Sync()]  # before the error comes back
    if one_read:  # both pipelines in one read: the second waits all the same
        a.send(*failing, Sync(), *after)
    else:
        a.send(*failing, Sync())
        a.send(*after)
    w.release()
    exists = ("ErrorResponse", "42P05", 'prepared statement "b" already exists')
    got = answers(a.events())
    assert got == [
        ("CommandComplete",),
        ("ReadyForQuery",),
        ("ReadyForQuery",),
        ("ParseComplete",),
        exists,  # the Close of b after it is skipped: b is still SELECT 1
        ("ReadyForQuery",),
        exists,
        ("ReadyForQuery",),
    ]
    a.send(Close("S", "b"), Sync())
    a.send(Parse("b", "SELECT 3"), Bind("", "b", (), []), Execute(), Sync())
    assert rows(a.events()) == [("3",)]


def test_a_client_leaving_sends_what_waited_for_its_renaming_pipeline() -> None:
    """PostgreSQL runs what a client sent before its Terminate: what waited for the
    answer to a named Parse goes to the server too (on the first guess)."""
    w = SlowWorld(config(pool_size=1))
    a, other = logged_in(w), logged_in(w)
    w.holding = True
    a.send(Parse("b", "SELECT 1"), Sync())
    a.send(Bind("", "b", (), []), Execute(), Sync())  # waits for the Parse's answer
    sent = b"".join(b"".join(v) for v in w.server_log.values())
    assert sent.count(b"B\x00") == 0
    a.send(Query("SELECT 2"), Terminate())
    w.release()
    sent = b"".join(b"".join(v) for v in w.server_log.values())
    assert re.search(rb"B\x00\x00\x00.\x00PGSANSIO_\d+\x00", sent, re.S), sent
    assert sent.index(b"PGSANSIO_") < sent.index(b"SELECT 2")
    assert rows(other.query("SELECT 3")) == [("3",)]  # the server went back to the pool


def test_statements_parsed_after_a_pipelined_deallocate_all_stay_noted() -> None:
    """DEALLOCATE ALL drops what the server had when it ran, not what the client's
    pipelined Parse sent after it prepared: forgetting that one made our next silent
    Parse of it fail with 42P05 (and the client's request with it)."""
    w = SlowWorld(config(pool_size=1))
    a, other = logged_in(w), logged_in(w)
    assert ready(prepare(other, "o", "SELECT 1")) == ["I"]  # shared, on the server
    w.holding = True
    a.send(Query("DEALLOCATE ALL"), Sync())
    a.send(Parse("b", "SELECT 2"), Sync())
    w.release()
    assert ready(a.events()) == ["I", "I", "I"]
    for c in (a, other):  # one server: each Bind finds its statement there
        got = execute(c, "b" if c is a else "o")
        assert not errors(got), answers(got)
        assert rows(got) == [("2",) if c is a else ("1",)]


@pytest.mark.parametrize("one_read", [False, True], ids=["two-reads", "one-read"])
def test_a_statement_prepared_right_after_deallocate_all_is_parsed_again(one_read: bool) -> None:
    """The text is shared and on the server, but the client's DEALLOCATE ALL, ahead
    of its Parse, drops it there: answering that Parse ourselves made the Bind after
    it fail with 26000. What follows the DEALLOCATE ALL waits for its answer."""
    w = SlowWorld(config(pool_size=1))
    a, other = logged_in(w), logged_in(w)
    assert ready(prepare(other, "o", "SELECT 1")) == ["I"]
    w.holding = True
    use = [Parse("b", "SELECT 1"), Bind("", "b", (), []), Execute(), Sync()]
    if one_read:
        a.send(Query("DEALLOCATE ALL"), *use)
    else:
        a.send(Query("DEALLOCATE ALL"))
        a.send(*use)
    w.release()
    got = a.events()
    assert not errors(got), answers(got)
    assert rows(got) == [("1",)]
    assert rows(execute(other, "o")) == [("1",)]


def test_session_mode_does_not_rename() -> None:
    w = World(config(pool_mode="session"))
    a = logged_in(w)
    prepare(a, "s1", "select 1")
    assert rows(execute(a, "s1")) == [("1",)]
    sent = b"".join(b"".join(v) for v in w.server_log.values())
    assert b"s1\x00" in sent and b"PGSANSIO_" not in sent


# --- cancel -----------------------------------------------------------------------


def test_cancel_reaches_the_running_query_with_the_servers_key() -> None:
    w = World(config())
    got_key = None
    a2 = Client(w)
    for e in a2.events():
        if isinstance(e, BackendKeyData):
            got_key = e
    assert got_key is not None
    a2.send(Query("select pg_sleep(10)"))
    canceller = w._next_cid + 1
    w._next_cid = canceller
    w.apply(w.engine.client_connected(canceller, "test", w.now))
    w.apply(
        w.engine.client_data(
            canceller, bytes(CancelRequest(got_key.process_id, got_key.secret_key)), w.now
        )
    )
    assert canceller in w.closed_clients
    w.advance(0.01)
    got = a2.events()
    assert errors(got)[0].sqlstate == "57014" and ready(got) == ["I"]


def test_cancel_for_an_idle_client_is_dropped() -> None:
    w = World(config())
    a = Client(w)
    key = next(e for e in a.events() if isinstance(e, BackendKeyData))
    before = w.db.stats["cancels"]
    cid = 99
    w.apply(w.engine.client_connected(cid, "test", w.now))
    w.apply(w.engine.client_data(cid, bytes(CancelRequest(key.process_id, key.secret_key)), w.now))
    assert w.db.stats["cancels"] == before and cid in w.closed_clients


# --- timeouts, backpressure, shutdown, reload ---------------------------------------


def test_statement_timeout_is_57014() -> None:
    w = World(config(statement_timeout=200))
    a = logged_in(w)
    a.send(Query("select pg_sleep(5)"))
    w.advance(0.3)
    err = errors(a.events())[0]
    assert err.sqlstate == "57014" and a.closed


def test_idle_in_transaction_timeout_is_25p03() -> None:
    w = World(config(general_idle_client_in_transaction_timeout=200))
    a = logged_in(w)
    a.query("begin")
    w.advance(0.3)
    assert errors(a.events())[0].sqlstate == "25P03" and a.closed
    b = logged_in(w)
    assert ready(b.query("select 1")) == ["I"]


def test_backpressure_pauses_the_linked_server() -> None:
    w = World(config())
    a = logged_in(w)
    a.query("begin")
    (sid,) = w.servers
    w.apply(w.engine.client_writable(a.cid, False, w.now))
    assert ("server", sid) in w.paused
    w.apply(w.engine.client_writable(a.cid, True, w.now))
    assert ("server", sid) not in w.paused


def test_shutdown_lets_the_open_transaction_finish_then_exits() -> None:
    w = World(config())
    a, idle = logged_in(w), logged_in(w)
    a.query("begin")
    w.apply(w.engine.shutdown(w.now))
    assert idle.closed and errors(idle.events())[0].sqlstate == "57P01"
    late = Client(w)
    assert errors(late.events())[0].sqlstate == "57P01"
    assert not w.exited
    assert ready(a.query("commit")) == ["I"]
    assert a.closed and w.exited


def test_reload_keeps_unchanged_pools_and_rebuilds_changed_ones() -> None:
    cfg = config()
    w = World(cfg)
    a = logged_in(w)
    a.query("select 1")
    (sid,) = w.servers
    w.apply(w.engine.reload(cfg, w.now))
    assert sid in w.servers  # unchanged: the idle connection stays
    w.apply(w.engine.reload(config(pool_size=2), w.now))
    assert sid not in w.servers  # changed: the idle connection is closed
    assert rows(a.query("select 1")) == [("1",)]


def test_idle_servers_close_after_idle_timeout() -> None:
    w = World(config(idle_timeout=1000))
    a = logged_in(w)
    a.query("select 1")
    assert len(w.servers) == 1
    w.advance(1.5)
    assert len(w.servers) == 0
    assert rows(a.query("select 1")) == [("1",)]


def test_protocol_garbage_from_a_client_is_an_error_not_a_crash() -> None:
    w = World(config())
    a = logged_in(w)
    a.send_raw(b"Z\x00\x00\x00\x05I")  # a server message from a client
    err = errors(a.events())[0]
    assert err.sqlstate == "08P01" and a.closed
    assert ready(logged_in(w).query("select 1")) == ["I"]


def test_effects_are_plain_tuples() -> None:
    e = SendClient(1, b"x")
    assert e == (1, b"x") and CommandComplete("SELECT 1")


def test_checkout_failure_limit_disconnects_the_client() -> None:
    w = World(config(connect_timeout=100, pool_checkout_failure_limit=2))
    a, b = logged_in(w), logged_in(w)
    a.query("begin")
    b.send(Query("select 1"))
    w.advance(0.2)
    assert errors(b.events())[0].sqlstate == "53300" and not b.closed
    b.send(Query("select 1"))
    w.advance(0.2)
    got = b.events()
    assert errors(got)[0].severity == "FATAL" and b.closed


def test_server_lifetime_closes_idle_servers_and_min_pool_size_refills() -> None:
    w = World(config(server_lifetime=1000, idle_timeout=0, min_pool_size=1))

    def alices() -> list[int]:
        return [sid for sid, f in w.servers.items() if f.user == "alice"]

    (first,) = alices()  # pre-warmed at start
    w.advance(1.1)
    assert first not in w.servers and len(alices()) == 1
    a = logged_in(w)
    assert rows(a.query("select 1")) == [("1",)]


class FailingRandom(random.Random):
    """A random source that fails, standing in for a bug deep inside a checkout.

    The engine's parts are compiled classes in the compiled build, whose methods cannot
    be replaced on an instance; the random source is an ordinary object they call.
    """

    def randrange(self, *args: object, **kw: object) -> int:
        raise RuntimeError("simulated bug")


def test_a_bug_costs_one_client_not_the_pooler(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(pool_size=2)
    # Two servers, so that each checkout picks one at random (Routes._balance).
    servers = (ServerAddress("pg", 5432, "primary"), ServerAddress("pg2", 5432, "replica"))
    w = World(
        replace(cfg, pools={DB: replace(cfg.pools[DB], shards=(ShardConfig(0, DB, servers),))})
    )
    a, b = logged_in(w), logged_in(w)
    monkeypatch.setattr(w.engine.ctx, "rng", FailingRandom())
    a.send(Query("select 1"))
    err = errors(a.events())[0]
    assert err.sqlstate == "XX000" and a.closed
    assert any("simulated bug" in line for line in w.logs)
    monkeypatch.undo()
    assert rows(b.query("select 1")) == [("1",)]


def test_error_mid_pipeline_with_a_late_sync_names_the_clients_statement() -> None:
    from pgsansio.protocol import Flush

    w = World(config())
    a = logged_in(w)
    prepare(a, "one", "select $1::int")
    a.send(
        Bind("", "one", (), [b"1"]),
        Execute(),
        Bind("", "one", (), []),
        Execute(),  # wrong parameter count: an error
        Parse("three", "select 3"),
        Bind("", "three"),
        Execute(),  # skipped by the server
        Flush(),
    )
    got = a.events()
    assert rows(got) == [("1",)]
    (err,) = errors(got)
    assert "PGSANSIO" not in (err.message or "") and ready(got) == []
    a.send(Sync())
    assert ready(a.events()) == ["I"]
    # The pooler still serves "one"; the server skipped the Parse of "three", so, as
    # on a direct connection, "three" was never prepared.
    assert rows(execute(a, "one", b"7")) == [("7",)]
    (missing,) = errors(execute(a, "three"))
    assert missing.sqlstate == "26000" and '"three"' in (missing.message or "")


@pytest.mark.parametrize("round_robin", [True, False])
def test_server_round_robin_picks_fifo_or_lifo(round_robin: bool) -> None:
    w = World(config(pool_size=2, general_server_round_robin=round_robin))
    a, b = logged_in(w), logged_in(w)
    a.query("begin")
    b.query("begin")
    pid_a = rows(a.query("select pg_backend_pid()"))
    pid_b = rows(b.query("select pg_backend_pid()"))
    a.query("commit")  # A's server goes back first
    b.query("commit")
    c = logged_in(w)
    got = rows(c.query("select pg_backend_pid()"))
    assert got == (pid_a if round_robin else pid_b)


def test_unimplemented_pgcat_features_are_logged_not_ignored() -> None:
    # The reader names them (tests/test_ops_check.py); the engine logs its list at start.
    w = World(replace(config(), warnings=("pgcat.toml: general.autoreload: ignored",)))
    assert any("general.autoreload: ignored" in line for line in w.logs)
    # automatic_sharding_key is implemented (tests/test_engine_autoshard.py): no word.
    w = World(config(pool_query_parser_enabled=True, pool_automatic_sharding_key="data.id"))
    assert not any("not implemented" in line for line in w.logs)


def test_idle_reaping_keeps_min_pool_size_without_spinning() -> None:
    w = World(config(idle_timeout=1000, min_pool_size=1, pool_size=3))
    clients = [logged_in(w) for _ in range(3)]
    for c in clients:
        c.query("begin")
    for c in clients:
        c.query("commit")
    alices = [f for f in w.servers.values() if f.user == "alice"]
    assert len(alices) == 3
    w.advance(1.5)
    assert len([f for f in w.servers.values() if f.user == "alice"]) == 1
    # Nothing left to reap: no timer armed for the kept server, and no busy loop.
    timers = len(w.engine.ctx.timers)
    w.advance(100)
    assert len(w.engine.ctx.timers) <= timers
    assert rows(clients[0].query("select 1")) == [("1",)]


def test_many_transactions_do_not_grow_the_timer_heap() -> None:
    w = World(config())
    a = logged_in(w)
    for _ in range(200):
        a.query("select 1")
    assert len(w.engine.ctx.timers) < 10


def test_a_late_cancel_never_reaches_the_next_clients_query() -> None:
    w = World(config())
    a = Client(w)
    key = next(e for e in a.events() if isinstance(e, BackendKeyData))
    b = logged_in(w)
    a.send(Query("select pg_sleep(1)"))
    # The cancel connection is asked for while A's query runs...
    w.apply(w.engine.client_connected(50, "test", w.now))
    effects = w.engine.client_data(50, bytes(CancelRequest(key.process_id, key.secret_key)), w.now)
    (open_cancel,) = [e for e in effects if isinstance(e, OpenServer)]
    w.apply([e for e in effects if not isinstance(e, OpenServer)])
    # ...but connects only after A's query ended and B took the server.
    w.advance(1.1)
    assert ready(a.events()) == ["I"]
    b.send(Query("select pg_sleep(1)"))
    before = w.db.stats["cancels"]
    w.servers[open_cancel.sid] = w.db.connect(w.now)
    w.apply(w.engine.server_connected(open_cancel.sid, w.now))
    assert w.db.stats["cancels"] == before  # dropped: B's query is not A's
    w.advance(1.1)
    got = b.events()
    assert not errors(got) and ready(got) == ["I"]


@pytest.mark.parametrize("method", ["trust", "password", "md5", "scram-sha-256"])
def test_server_login_with_each_method(method: str) -> None:
    db = Database(users={"alice": FakeUser("pw", method)}, databases=[DB])
    w = World(config(), db)
    a = logged_in(w)
    assert rows(a.query("select 1")) == [("1",)]


@pytest.mark.parametrize("method", ["password", "md5", "scram-sha-256"])
def test_server_asking_a_password_we_do_not_have(method: str) -> None:
    db = Database(users={"alice": FakeUser("pw", method)}, databases=[DB])
    w = World(config(password=None, auth_type="trust"), db)
    c = Client(w)
    err = errors(c.events())[0]
    assert err.sqlstate == "28P01" and "no password configured" in (err.message or "")


def test_server_username_and_password_override_the_clients() -> None:
    db = Database(users={"backend": FakeUser("secret", "scram-sha-256")}, databases=[DB])
    w = World(config(server_username="backend", server_password="secret"), db)
    a = logged_in(w)
    assert rows(a.query("select 1")) == [("1",)]
    assert {f.user for f in w.servers.values()} == {"backend"}


def test_every_client_waiting_for_the_first_server_login_gets_its_error() -> None:
    """All of them, not every other one (found by the simulation's soak)."""
    w = World(config())
    w.db.stall_logins = True
    clients = [Client(w) for _ in range(5)]
    for c in clients:
        c.events()
    w.advance(6)  # the login deadline: 5 x connect_timeout
    for c in clients:
        got = c.events()
        assert errors(got) and errors(got)[0].sqlstate == "08001" and c.closed, got
