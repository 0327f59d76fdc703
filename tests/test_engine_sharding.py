"""Sharding, scenario by scenario, against one fake cluster per shard.

Each shard's fake cluster numbers its backends from its own base (10001, 20001,
30001), so ``select pg_backend_pid()`` says which shard answered. No query parser is
needed: PgCat's shard commands and comment routing are plain regexes.
"""

from __future__ import annotations

from dataclasses import replace

from pgsansio.config.model import Config, ServerAddress, ShardConfig
from pgsansio.protocol import Bind, CommandComplete, Execute, Parse, Sync
from pgsansio.sharding import shard_for_key
from pgsansio.testing.fakepg import Database, FakeUser
from tests.test_admin import admin as admin_client
from tests.test_engine import DB, World, config, errors, logged_in, ready, rows

HOSTS = ("sh0", "sh1", "sh2")


def sharded_config(shards: int = 3, **kw: object) -> Config:
    base = config(pool_size=2, **kw)
    pool = replace(
        base.pools[DB],
        shards=tuple(
            ShardConfig(i, DB, (ServerAddress(HOSTS[i], 5432, "primary"),)) for i in range(shards)
        ),
    )
    return replace(base, pools={DB: pool})


def world(cfg: Config) -> World:
    dbs = {
        (h, 5432): Database(
            users={"alice": FakeUser("pw", "md5"), "bob": FakeUser("pw", "md5")},
            databases=[DB],
            name=h,
            first_pid=10000 * (i + 1),
        )
        for i, h in enumerate(HOSTS)
    }
    return World(cfg, dbs=dbs)


def shard_of(events: list[object]) -> int:
    """Which shard answered ``select pg_backend_pid()``."""
    assert not errors(events), errors(events)  # type: ignore[arg-type]
    ((pid,),) = rows(events)  # type: ignore[arg-type]
    assert pid is not None
    return int(pid) // 10000 - 1


def where(c: object) -> int:
    return shard_of(c.query("select pg_backend_pid()"))  # type: ignore[attr-defined]


def error_of(events: list[object]) -> tuple[str | None, str]:
    (e,) = errors(events)  # type: ignore[arg-type]
    assert ready(events) == ["I"] or ready(events) == ["T"]  # type: ignore[arg-type]
    return e.sqlstate, e.message or ""


def tags(events: list[object]) -> list[str]:
    return [e.tag for e in events if isinstance(e, CommandComplete)]


# --- the commands --------------------------------------------------------------------


def test_set_shard_routes_every_later_transaction_to_that_shard() -> None:
    w = world(sharded_config())
    c = logged_in(w)
    assert rows(c.query("SHOW SHARD")) == [("unset",)]
    assert where(c) == 0  # default_shard = shard_0
    got = c.query("SET SHARD TO '2'")
    assert tags(got) == ["SET SHARD"] and ready(got) == ["I"] and not errors(got)
    assert rows(c.query("show shard;")) == [("2",)]
    for _ in range(3):  # transaction mode: a new checkout each time, same shard
        assert where(c) == 2
    assert ready(c.query("begin")) == ["T"]
    assert where(c) == 2
    c.query("commit")
    assert tags(c.query("  set   shard to 1 ; ")) == ["SET SHARD"]  # quotes optional
    assert where(c) == 1


def test_set_sharding_key_hashes_the_key_with_the_pool_function() -> None:
    for function in ("pg_bigint_hash", "sha1"):
        w = world(sharded_config(pool_sharding_function=function))
        c = logged_in(w)
        for key in (1, 2, 3, 14, 1234567890123):
            got = c.query(f"SET SHARDING KEY TO '{key}'")
            assert tags(got) == ["SET SHARDING KEY"], got
            assert where(c) == shard_for_key(key, 3, function)
            assert rows(c.query("SHOW SHARD")) == [(str(shard_for_key(key, 3, function)),)]


def test_set_shard_any_picks_one_shard_for_the_session() -> None:
    w = world(sharded_config())
    c = logged_in(w)
    assert tags(c.query("SET SHARD TO 'ANY'")) == ["SET SHARD"]
    ((chosen,),) = rows(c.query("SHOW SHARD"))
    assert chosen is not None
    assert {where(c) for _ in range(5)} == {int(chosen)}


def test_command_errors_name_the_problem_and_the_session_goes_on() -> None:
    w = world(sharded_config())
    c = logged_in(w)
    c.query("SET SHARD TO '1'")
    state, message = error_of(c.query("SET SHARD TO '3'"))
    assert state == "22023" and "0 to 2" in message and "staying on shard 1" in message
    state, message = error_of(c.query("SET SHARDING KEY TO 'abc'"))
    assert state == "22023" and "64-bit integer" in message
    state, _ = error_of(c.query("SET SHARD TO 'most'"))
    assert state == "42601"
    state, message = error_of(c.query("SET SHARD TO '2'; SELECT 1"))
    assert state == "0A000" and "multi-statement" in message
    assert rows(c.query("SHOW SHARD")) == [("1",)]
    assert where(c) == 1


def test_set_shard_is_refused_inside_a_transaction() -> None:
    w = world(sharded_config())
    c = logged_in(w)
    assert ready(c.query("begin")) == ["T"]
    assert where(c) == 0
    got = c.query("SET SHARD TO '1'")
    state, message = error_of(got)
    assert state == "25001" and "transaction" in message and ready(got) == ["T"]
    state, _ = error_of(c.query("SET SHARDING KEY TO '7'"))
    assert state == "25001"
    assert rows(c.query("SHOW SHARD")) == [("unset",)]  # SHOW is fine anywhere
    assert where(c) == 0  # the transaction goes on, on its shard
    assert ready(c.query("commit")) == ["I"]
    assert tags(c.query("SET SHARD TO '1'")) == ["SET SHARD"]
    assert where(c) == 1


def test_session_mode_chooses_before_the_first_query_and_cannot_move_after() -> None:
    w = world(sharded_config(pool_mode="session"))
    c = logged_in(w)
    assert tags(c.query("SET SHARD TO '2'")) == ["SET SHARD"]
    assert where(c) == 2
    state, message = error_of(c.query("SET SHARD TO '1'"))
    assert state == "0A000" and "session mode" in message
    assert tags(c.query("SET SHARD TO '2'")) == ["SET SHARD"]  # where it is: fine
    assert where(c) == 2


def test_the_commands_work_on_a_single_shard_pool_without_the_parser() -> None:
    w = world(sharded_config(shards=1))
    c = logged_in(w)
    assert tags(c.query("SET SHARD TO '0'")) == ["SET SHARD"]
    state, message = error_of(c.query("SET SHARD TO '1'"))
    assert state == "22023" and "only shard is 0" in message
    assert where(c) == 0
    # A dotted name is a custom setting: SQL for the server, not ours.
    got = c.query("SET shard.x TO '1'")
    assert "SET SHARD" not in tags(got)


# --- comments ------------------------------------------------------------------------


def test_shard_id_comment_routes_that_request_only() -> None:
    w = world(sharded_config(pool_shard_id_regex=r"/\* shard_id: (\d+) \*/"))
    c = logged_in(w)
    assert shard_of(c.query("/* shard_id: 2 */ select pg_backend_pid()")) == 2
    assert where(c) == 0  # no comment: the session's choice (none: default_shard)
    c.query("SET SHARD TO '1'")
    assert shard_of(c.query("/* shard_id: 2 */ select pg_backend_pid()")) == 2
    assert where(c) == 1
    got = c.query("/* shard_id: 9 */ select pg_backend_pid()")
    state, message = error_of(got)
    assert state == "22023" and "shard 9" in message and "0 to 2" in message


def test_sharding_key_comment_and_the_search_limit() -> None:
    w = world(
        sharded_config(
            pool_sharding_key_regex=r"/\* sharding_key: (\d+) \*/", pool_regex_search_limit=40
        )
    )
    c = logged_in(w)
    for key in (1, 2, 3, 4, 5):
        sql = f"/* sharding_key: {key} */ select pg_backend_pid()"
        assert shard_of(c.query(sql)) == shard_for_key(key, 3)
    far = " " * 50 + "/* sharding_key: 2 */ select pg_backend_pid()"
    assert shard_of(c.query(far)) == 0  # past regex_search_limit: not seen
    # The extended protocol: the Parse text carries the comment.
    key = next(k for k in range(100) if shard_for_key(k, 3) == 2)
    c.send(
        Parse("", f"/* sharding_key: {key} */ select pg_backend_pid()"),
        Bind("", ""),
        Execute(),
        Sync(),
    )
    assert shard_of(c.events()) == 2


# --- default_shard -------------------------------------------------------------------


def test_default_shard_n_random_and_random_healthy() -> None:
    w = world(sharded_config(pool_default_shard="shard_2"))
    assert where(logged_in(w)) == 2
    w = world(sharded_config(pool_default_shard="random"))
    c = logged_in(w)
    assert {where(c) for _ in range(30)} == {0, 1, 2}  # per checkout
    w = world(sharded_config(pool_default_shard="random_healthy"))
    c = logged_in(w)
    assert {where(c) for _ in range(30)} == {0, 1, 2}  # all healthy: any of them


def test_random_healthy_avoids_a_shard_found_down() -> None:
    w = world(
        sharded_config(pool_default_shard="random_healthy", general_healthcheck_interval=1000)
    )
    c = logged_in(w)
    w.dbs["sh1", 5432].accepting = False
    w.crash("sh1", 5432)
    for _ in range(3):
        w.advance(1.0)
    assert {where(c) for _ in range(30)} == {0, 2}


# --- reload ----------------------------------------------------------------------------


def test_reload_changes_the_shard_list() -> None:
    w = world(sharded_config())
    c = logged_in(w)
    c.query("SET SHARD TO '2'")
    assert where(c) == 2
    w.apply(w.engine.reload(sharded_config(shards=2), w.now))
    state, message = error_of(c.query("select pg_backend_pid()"))
    assert state == "22023" and "shard 2" in message and "0 to 1" in message
    state, _ = error_of(c.query("SET SHARD TO '2'"))
    assert state == "22023"
    assert tags(c.query("SET SHARD TO '1'")) == ["SET SHARD"]
    assert where(c) == 1
    w.apply(w.engine.reload(sharded_config(shards=3), w.now))
    assert tags(c.query("SET SHARD TO '2'")) == ["SET SHARD"]
    assert where(c) == 2


def test_no_sharding_warning_not_even_for_automatic_sharding_key() -> None:
    w = world(
        sharded_config(pool_query_parser_enabled=True, pool_automatic_sharding_key="data.id")
    )
    text = "\n".join(w.logs)
    assert "not implemented" not in text


def test_show_databases_names_each_shard_as_pgcat_does() -> None:
    w = world(sharded_config())
    got = admin_client(w, "pgcat").query("SHOW DATABASES")
    names = [r[0] for r in rows(got)]
    assert names == [f"{DB}_shard_{i}_primary" for i in range(3)]
    assert [r[1] for r in rows(got)] == list(HOSTS)


def test_after_a_forwarded_fatal_the_pooler_answers_nothing_more() -> None:
    # Found by the sharded simulation (seed 525): a session-mode client whose server
    # sent FATAL still got SHOW SHARD answered until the server's EOF arrived.
    # PostgreSQL reads nothing after a FATAL; neither does the pooler.
    from pgsansio.protocol import Query

    w = world(sharded_config(pool_mode="session"))
    c = logged_in(w)
    assert tags(c.query("SET SHARD TO '1'")) == ["SET SHARD"]
    assert where(c) == 1
    s = w.engine.clients[c.cid].server
    assert s is not None
    fake = w.servers[s.sid]
    fatal = fake.terminate()  # FATAL 57P01; the connection's end is delivered below
    w.apply(w.engine.server_data(s.sid, fatal, w.now))
    assert [e.sqlstate for e in errors(c.events())] == ["57P01"]
    c.send(Query("SHOW SHARD"))
    assert c.events() == [] and not c.closed  # nothing answered, nothing more sent
    del w.servers[s.sid]
    w.apply(w.engine.server_closed(s.sid, w.now))
    assert c.closed and not errors(c.events())  # closed, without a second error
