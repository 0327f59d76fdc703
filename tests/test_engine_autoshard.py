"""automatic_sharding_key through the engine, against one fake cluster per shard.

The fake servers do not know WHERE clauses or INSERT column lists, so they answer
the keyed statements with a syntax error; which shard a statement went to is read
from what each server received, not from its answer.
"""

from __future__ import annotations

import struct

import pytest

from pgsansio.protocol import Bind, Event, Execute, Parse, Query, Sync
from pgsansio.sharding import shard_for_key
from tests.test_engine import World, logged_in, ready, rows
from tests.test_engine_sharding import HOSTS, sharded_config, world

pytest.importorskip("pglast", reason="automatic_sharding_key needs the routing extra (pglast)")

DEFAULT = 2  # default_shard = shard_2 below, so that "no key" is not shard 0


def auto_world(**kw: object) -> World:
    options: dict[str, object] = {
        "pool_query_parser_enabled": True,
        "pool_automatic_sharding_key": "data.id",
        "pool_default_shard": f"shard_{DEFAULT}",
    }
    options.update(kw)
    return world(sharded_config(**options))


def key_on(shard: int, function: str = "pg_bigint_hash", skip: int = 0) -> int:
    """A key on ``shard`` (the ``skip``-th such key)."""
    keys = (k for k in range(1000) if shard_for_key(k, 3, function) == shard)
    for _ in range(skip):
        next(keys)
    return next(keys)


def landed(w: World, c: object, *events: Event) -> int:
    """The one shard whose server received what ``c`` sends now."""
    before = {sid: len(log) for sid, log in w.server_log.items()}
    c.send(*events)  # type: ignore[attr-defined]
    c.events()  # type: ignore[attr-defined]
    got = {
        HOSTS.index(w.where[sid][0])
        for sid, log in w.server_log.items()
        if len(log) > before.get(sid, 0)
    }
    assert len(got) == 1, got
    return got.pop()


def q(w: World, c: object, sql: str) -> int:
    return landed(w, c, Query(sql))


def extended(
    sql: str, *params: bytes | None, formats: tuple[int, ...] = (), types: tuple[int, ...] = ()
) -> tuple[Event, ...]:
    """Parse, Bind, Execute, Sync of the unnamed statement."""
    return (Parse("", sql, types), Bind("", "", formats, params), Execute(), Sync())


# --- the simple protocol ------------------------------------------------------------


def test_each_recognised_shape_goes_to_the_key_s_shard() -> None:
    w = auto_world()
    c = logged_in(w)
    for shard in (0, 1, 2, 0, 1):
        k = key_on(shard)
        k2 = key_on(shard, skip=1)
        for sql in (
            f"SELECT * FROM data WHERE id = {k}",
            f"select v from data where v = 'x' and ID = {k}",
            f"SELECT * FROM public.data d WHERE {k} = d.id",
            f"SELECT * FROM data WHERE data.id = '{k}'",
            f"SELECT * FROM data WHERE id = {k}::bigint",
            f"SELECT * FROM data WHERE id IN ({k}, {k2})",
            f"SELECT * FROM data WHERE id = {k} OR id = {k2}",
            f"SELECT * FROM other o JOIN data ON data.id = {k} AND o.x = data.v",
            f"INSERT INTO data (v, id) VALUES ('a', {k}), ('b', {k2})",
            f"UPDATE data SET v = 'y' WHERE id = {k}",
            f"DELETE FROM data WHERE id = {k}",
            f"BEGIN; INSERT INTO data (id) VALUES ({k}); COMMIT",
        ):
            assert q(w, c, sql) == shard, sql
        c.query("ROLLBACK")  # the fake refused the INSERT after BEGIN: end that block


def test_no_key_or_conflicting_keys_go_to_default_shard() -> None:
    w = auto_world()
    c = logged_in(w)
    a, b = key_on(0), key_on(1)
    for sql in (
        "SELECT * FROM data",
        f"SELECT * FROM data WHERE id > {a}",
        f"SELECT * FROM data WHERE id = {a} OR v = 'x'",  # a branch without the key
        f"SELECT * FROM data WHERE id = {a} OR id = {b}",  # two shards
        f"SELECT * FROM data WHERE id IN ({a}, {b})",
        f"SELECT * FROM data WHERE id = {a}; SELECT * FROM data WHERE id = {b}",
        f"INSERT INTO data (id) VALUES ({a}), ({b})",
        f"INSERT INTO data VALUES ({a})",  # no column list
        f"SELECT * FROM data, other WHERE id = {a}",  # unqualified, two tables
        f"SELECT * FROM other WHERE id = {a}",  # another table
        "SELECT * FROM data WHERE id = 'abc'",  # not an integer
        "SELECT * FROM data WHERE id = 99999999999999999999",  # beyond int8
        f"SELECT * FROM data WHERE id = {a}.5",
        f"SELECT * FROM data WHERE id = {a} UNION SELECT * FROM data WHERE id = {a}",
        "SELEKT * FROM data WHERE id = 1",  # not SQL
    ):
        assert q(w, c, sql) == DEFAULT, sql


def test_star_table_and_sha1() -> None:
    w = auto_world(pool_automatic_sharding_key="*.id", pool_sharding_function="sha1")
    c = logged_in(w)
    for shard in range(3):
        k = key_on(shard, "sha1")
        assert q(w, c, f"SELECT * FROM a, b WHERE b.id = {k}") == shard
        assert q(w, c, f"SELECT * FROM anything WHERE id = '{k}'") == shard


def test_without_the_parser_the_key_is_not_looked_for() -> None:
    w = auto_world(pool_query_parser_enabled=False)
    c = logged_in(w)
    assert q(w, c, f"SELECT * FROM data WHERE id = {key_on(0)}") == DEFAULT
    assert w.engine.shards.key_readers == 0  # nothing was parsed


def test_a_transaction_stays_on_the_shard_of_its_first_request() -> None:
    w = auto_world()
    c = logged_in(w)
    k1 = key_on(1)
    assert q(w, c, f"BEGIN; SELECT * FROM data WHERE id = {k1}") == 1
    # The server is held until COMMIT: the next key does not move the transaction.
    assert q(w, c, f"SELECT * FROM data WHERE id = {key_on(0)}") == 1
    assert q(w, c, "COMMIT") == 1
    assert q(w, c, f"SELECT * FROM data WHERE id = {key_on(0)}") == 0


def test_session_mode_first_query_chooses_the_shard() -> None:
    w = auto_world(pool_mode="session")
    c = logged_in(w)
    assert q(w, c, f"SELECT * FROM data WHERE id = {key_on(1)}") == 1
    assert q(w, c, f"SELECT * FROM data WHERE id = {key_on(0)}") == 1


# --- precedence ---------------------------------------------------------------------


def test_a_key_wins_over_a_comment_and_set_shard_as_in_pgcat() -> None:
    w = auto_world(pool_shard_id_regex=r"/\* shard_id: (\d+) \*/")
    c = logged_in(w)
    k1 = key_on(1)
    assert q(w, c, f"/* shard_id: 0 */ SELECT * FROM data WHERE id = {k1}") == 1
    assert q(w, c, "/* shard_id: 0 */ SELECT * FROM data") == 0  # no key: the comment
    c.query("SET SHARD TO '0'")
    assert q(w, c, f"SELECT * FROM data WHERE id = {k1}") == 1
    assert q(w, c, "SELECT * FROM data") == 0  # no key: the session's choice
    # Keys on two shards are no key: the comment, then the session's choice, decide.
    two = f"SELECT * FROM data WHERE id IN ({k1}, {key_on(2)})"
    assert q(w, c, "/* shard_id: 2 */ " + two) == 2
    assert q(w, c, two) == 0
    assert rows(c.query("SHOW SHARD")) == [("0",)]  # the key chose for one checkout only


# --- the extended protocol ----------------------------------------------------------


def test_bind_parameters_text_and_binary() -> None:
    w = auto_world()
    c = logged_in(w)
    sql = "SELECT * FROM data WHERE id = $1"
    for shard in (0, 1, 2, 1, 0):
        k = key_on(shard)
        assert landed(w, c, *extended(sql, str(k).encode())) == shard
        assert landed(w, c, *extended(sql, f" {k} ".encode(), formats=(0,))) == shard
        # binary, the size given by the Parse's type, or read from the length
        int8 = struct.pack(">q", k)
        assert landed(w, c, *extended(sql, int8, formats=(1,))) == shard
        assert landed(w, c, *extended(sql, int8, formats=(1,), types=(20,))) == shard
        int4 = struct.pack(">i", k)
        assert landed(w, c, *extended(sql, int4, formats=(1,), types=(23,))) == shard
        assert landed(w, c, *extended(sql, struct.pack(">h", k), formats=(1,))) == shard
        # per-parameter formats: $1 text, $2 binary
        two = "INSERT INTO data (v, id) VALUES ($1, $2)"
        assert landed(w, c, *extended(two, b"x", int8, formats=(0, 1))) == shard
        # a literal and a parameter that agree
        both = f"SELECT * FROM data WHERE id = $1 AND id = {k}"
        assert landed(w, c, *extended(both, str(k).encode())) == shard
    negative = next(k for k in range(-1, -100, -1) if shard_for_key(k, 3) == 1)
    assert landed(w, c, *extended(sql, struct.pack(">q", negative), formats=(1,))) == 1


def test_bind_parameters_that_give_no_key() -> None:
    w = auto_world()
    c = logged_in(w)
    sql = "SELECT * FROM data WHERE id = $1"
    k = key_on(0)
    for events in (
        extended(sql, None),  # NULL
        extended(sql, b"abc"),
        extended(sql, b"\xff\xfe"),  # not UTF-8
        extended(sql),  # no parameter at all
        extended(sql, struct.pack(">i", k), formats=(1,), types=(20,)),  # int8, 4 bytes
        extended(sql, struct.pack(">d", 1.0)[:3], formats=(1,)),  # 3 bytes
        extended(sql, b"\x00" * 16, formats=(1,), types=(2950,)),  # a uuid
        extended(f"SELECT * FROM data WHERE id = $1 OR id = {key_on(1)}", str(k).encode()),
    ):
        assert landed(w, c, *events) == DEFAULT, events


def test_a_named_statement_is_bound_later_by_its_prepared_text() -> None:
    w = auto_world()
    c = logged_in(w)
    sql = "UPDATE data SET v = $2 WHERE id = $1"
    # Prepared alone: no parameters yet, so no key. (The fake server cannot parse a
    # WHERE clause: this Parse fails there, so, as on PostgreSQL, "upd" is not
    # prepared and its Bind has no text to find a key in: the default shard.)
    assert landed(w, c, Parse("upd", sql), Sync()) == DEFAULT
    k = key_on(1)
    bind = Bind("", "upd", (), (str(k).encode(), b"v"))
    assert landed(w, c, bind, Execute(), Sync()) == DEFAULT
    # Parse and Bind of a named statement in one request.
    k = key_on(1, skip=2)
    bind = Bind("", "sel", (), (str(k).encode(),))
    got = landed(w, c, Parse("sel", "SELECT * FROM data WHERE id = $1"), bind, Execute(), Sync())
    assert got == 1


def test_pipelined_binds_must_agree() -> None:
    w = auto_world()
    c = logged_in(w)
    sql = "INSERT INTO data (id) VALUES ($1)"
    a, a2, b = key_on(1), key_on(1, skip=1), key_on(2)

    def bound(k: int) -> tuple[Event, ...]:
        return (Bind("", "", (), (str(k).encode(),)), Execute())

    same = landed(w, c, Parse("", sql), *bound(a), *bound(a2), Sync())
    assert same == 1
    assert landed(w, c, Parse("", sql), *bound(a), *bound(b), Sync()) == DEFAULT
    # A second request sent before the first is answered follows it to its server.
    assert landed(w, c, Parse("", sql), *bound(a), Sync(), *bound(a2), Sync()) == 1
    got = c.query("SHOW SHARD")
    assert rows(got) == [("unset",)] and ready(got) == ["I"]
