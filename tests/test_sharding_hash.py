"""Tests of pgsansio.sharding: PgCat's vectors, real PostgreSQL, and properties.

The PostgreSQL test is the one that matters: it puts tens of thousands of keys into
``PARTITION BY HASH`` tables (MODULUS 3, 5 and 12, for int8, text and uuid keys) and
compares the partition each row landed in, and the 64-bit hash the server computes,
with this module's answer for every key.
"""

from __future__ import annotations

import random
import re
import string
import struct
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgsansio.sharding import (
    HASH_PARTITION_SEED,
    INT64_MAX,
    INT64_MIN,
    SHARDING_FUNCTIONS,
    hash_bytes_extended,
    hash_uint32_extended,
    int8_hash,
    parse_int64,
    partition_hash,
    pg_bigint_hash,
    sha1_hash,
    shard_for_key,
    shard_for_text,
    shard_for_uuid,
    text_hash,
    uuid_hash,
)
from pgsansio.testing.cluster import TEST_DATABASE, Cluster

MODULI = (3, 5, 12)
M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF
PROPS = settings(max_examples=100, deadline=None, database=None)

int64s = st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
shard_counts = st.integers(min_value=1, max_value=1000)


# --------------------------------------------------------------------- PgCat's vectors

# PgCat's src/sharding.rs, test_pg_bigint_hash: Sharder::new(5, PgBigintHash).
PGCAT_BIGINT_5 = {
    0: [1, 4, 5, 14, 19, 39, 40, 46, 47, 53],
    1: [2, 3, 11, 17, 21, 23, 30, 49, 51, 54],
    2: [6, 7, 15, 16, 18, 20, 25, 28, 34, 35],
    3: [8, 12, 13, 22, 29, 31, 33, 36, 41, 43],
    4: [9, 10, 24, 26, 27, 32, 37, 38, 42, 45],
}

# PgCat's src/sharding.rs, test_sha1_hash: Sharder::new(12, Sha1), ids 0..19.
PGCAT_SHA1_12 = [4, 7, 8, 3, 6, 0, 0, 10, 3, 11, 1, 7, 4, 4, 11, 2, 5, 0, 8, 3]


@pytest.mark.parametrize("shard", sorted(PGCAT_BIGINT_5))
def test_pgcat_pg_bigint_hash_vectors(shard: int) -> None:
    for key in PGCAT_BIGINT_5[shard]:
        assert shard_for_key(key, 5) == shard
        assert shard_for_key(str(key), 5, "pg_bigint_hash") == shard
        assert pg_bigint_hash(key) % 5 == shard


def test_pgcat_sha1_vectors() -> None:
    assert [shard_for_key(key, 12, "sha1") for key in range(20)] == PGCAT_SHA1_12
    assert [shard_for_key(str(key), 12, "sha1") for key in range(20)] == PGCAT_SHA1_12


def test_pgcat_two_shards() -> None:
    # An older PgCat test: with two shards, 1 and 2 go to shard 0 and 3 to shard 1.
    assert [shard_for_key(key, 2) for key in (1, 2, 3)] == [0, 0, 1]


def test_sharding_functions_are_pgcats() -> None:
    assert SHARDING_FUNCTIONS == ("pg_bigint_hash", "sha1")
    for function in SHARDING_FUNCTIONS:
        assert shard_for_key(7, 4, function) is not None


# --------------------------------------------------------------------- real PostgreSQL


def _int8_keys(rng: random.Random) -> list[int]:
    keys = {0, 1, -1, INT64_MIN, INT64_MAX, INT64_MIN + 1, INT64_MAX - 1}
    keys.update(range(-2000, 2001))
    for bit in range(64):
        for base in (1 << bit, -(1 << bit)):
            keys.update(base + delta for delta in (-1, 0, 1))
    # Every pairing of these halves: equal or complementary halves fold to 0 or ~0.
    halves = (0, 1, 0x7FFFFFFE, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, M32)
    keys.update(
        struct.unpack("<q", struct.pack("<II", lo, hi))[0] for lo in halves for hi in halves
    )
    keys.update(rng.randint(INT64_MIN, INT64_MAX) for _ in range(12000))
    keys.update(rng.randint(-(1 << 40), 1 << 40) for _ in range(4000))
    keys.update(rng.randint(-(10**6), 10**6) for _ in range(2000))
    return sorted(key for key in keys if INT64_MIN <= key <= INT64_MAX)


_ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \t\n\\'\"" + "éßж€中😀𝄞"


def _text_keys(rng: random.Random) -> list[str]:
    keys = {"", "a", "ab", "abc", "abcd", "'", "\\", "NULL", "ünïcødé", "😀" * 7}
    # Every length from 0 to 40 so every tail length (0-11) and 0-3 whole chunks occur.
    keys.update("x" * n for n in range(41))
    keys.update(string.printable[:n] for n in range(41))
    keys.update(str(n) for n in range(-500, 2500))
    while len(keys) < 12000:
        length = rng.choice((rng.randint(0, 12), rng.randint(0, 40), rng.randint(0, 200)))
        keys.add("".join(rng.choice(_ALPHABET) for _ in range(length)))
    return sorted(keys)


def _uuid_keys(rng: random.Random) -> list[str]:
    keys = {str(uuid.UUID(int=0)), str(uuid.UUID(int=(1 << 128) - 1))}
    keys.update(str(uuid.UUID(int=1 << bit)) for bit in range(128))
    keys.update(str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(10000))
    return sorted(keys)


def _signed(value: int) -> int:
    return value - (1 << 64) if value >> 63 else value


# type -> (key generator, the server's extended hash function, this module's hash)
_TYPES: dict[str, tuple[Any, str, Any]] = {
    "int8": (_int8_keys, "hashint8extended", int8_hash),
    "text": (_text_keys, "hashtextextended", text_hash),
    "uuid": (_uuid_keys, "uuid_hash_extended", uuid_hash),
}


@pytest.fixture(scope="module")
def pg_conn(pg15: Cluster) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg15.dsn(dbname=TEST_DATABASE), autocommit=True) as conn:
        encoding = conn.execute("SHOW server_encoding").fetchone()
        assert encoding == ("UTF8",)
        yield conn


def _server_partitions(
    conn: psycopg.Connection[Any], sqltype: str, keys: Sequence[Any]
) -> tuple[list[int], dict[int, list[int]]]:
    """The server's hash of each key, and the partition each key lands in per modulus.

    Temporary tables, so nothing outlives the connection; one INSERT per modulus and
    one SELECT for everything.
    """
    hashfn = _TYPES[sqltype][1]
    ddl = []
    for modulus in MODULI:
        parent = f"shard_{sqltype}_{modulus}"
        ddl.append(f"DROP TABLE IF EXISTS {parent}")
        ddl.append(f"CREATE TEMP TABLE {parent} (ord int8, k {sqltype}) PARTITION BY HASH (k)")
        ddl += [
            f"CREATE TEMP TABLE {parent}_r{rem} PARTITION OF {parent} "
            f"FOR VALUES WITH (MODULUS {modulus}, REMAINDER {rem})"
            for rem in range(modulus)
        ]
    conn.execute("; ".join(ddl))
    unnest = f"unnest(%s::{sqltype}[]) WITH ORDINALITY AS u(k, ord)"
    for modulus in MODULI:
        conn.execute(f"INSERT INTO shard_{sqltype}_{modulus} SELECT ord, k FROM {unnest}", [keys])
    # The remainder is the number after the last "_r" of the partition's name.
    part = "substring(tableoid::regclass::text from '_r([0-9]+)$')::int"
    tables = [f"shard_{sqltype}_{modulus}" for modulus in MODULI]
    query = (
        f"SELECT t0.ord, {hashfn}(t0.k, {_signed(HASH_PARTITION_SEED)}), "
        + ", ".join(f"{part.replace('tableoid', f't{i}.tableoid')}" for i in range(len(tables)))
        + f" FROM {tables[0]} t0 "
        + " ".join(f"JOIN {table} t{i} USING (ord)" for i, table in enumerate(tables) if i)
        + " ORDER BY t0.ord"
    )
    rows = conn.execute(query).fetchall()
    assert [row[0] for row in rows] == list(range(1, len(keys) + 1))
    hashes = [row[1] & M64 for row in rows]
    partitions = {modulus: [row[2 + i] for row in rows] for i, modulus in enumerate(MODULI)}
    return hashes, partitions


@pytest.mark.parametrize("sqltype", sorted(_TYPES))
def test_matches_postgresql_hash_partitioning(
    pg_conn: psycopg.Connection[Any], sqltype: str
) -> None:
    make_keys, _, ours = _TYPES[sqltype]
    keys = make_keys(random.Random(f"pgsansio-sharding-{sqltype}"))
    assert len(keys) >= 10000
    params = [uuid.UUID(key) for key in keys] if sqltype == "uuid" else keys
    hashes, partitions = _server_partitions(pg_conn, sqltype, params)

    mismatched = [(k, h) for k, h in zip(keys, hashes, strict=True) if ours(k) != h]
    assert mismatched[:5] == []

    shard_of = {
        "int8": shard_for_key,
        "text": shard_for_text,
        "uuid": shard_for_uuid,
    }[sqltype]
    for modulus in MODULI:
        expected = partitions[modulus]
        got = [shard_of(key, modulus) for key in keys]
        wrong = [(k, g, e) for k, g, e in zip(keys, got, expected, strict=True) if g != e]
        assert wrong[:5] == [], f"MODULUS {modulus}"
        assert set(expected) == set(range(modulus))
        if sqltype == "int8":
            assert [shard_for_key(str(key), modulus) for key in keys] == expected


# --------------------------------------------------------------------- properties


def _fold_reference(key: int) -> int:
    """hashint8extended's fold, from the bytes of the int64 rather than by arithmetic."""
    lohalf, hihalf = struct.unpack("<II", struct.pack("<q", key))
    return lohalf ^ (hihalf if key >= 0 else ~hihalf & M32)


@PROPS
@given(int64s, shard_counts)
def test_pg_bigint_hash_properties(key: int, shards: int) -> None:
    h = pg_bigint_hash(key)
    assert 0 <= h <= M64
    assert h == partition_hash(int8_hash(key)) == pg_bigint_hash(key)
    assert int8_hash(key) == hash_uint32_extended(_fold_reference(key), HASH_PARTITION_SEED)
    shard = shard_for_key(key, shards)
    assert shard == h % shards
    assert shard is not None and 0 <= shard < shards
    assert shard_for_key(str(key), shards) == shard
    assert shard_for_key(("+" if key >= 0 else "-") + "000" + str(abs(key)), shards) == shard


@PROPS
@given(st.integers(min_value=-(1 << 31), max_value=(1 << 31) - 1))
def test_int8_hashes_like_int4(key: int) -> None:
    # hashint8extended folds so that an int8 in int4 range hashes as hashint4extended
    # does, which is hash_uint32_extended of the value's 32 bits.
    assert int8_hash(key) == hash_uint32_extended(key & M32, HASH_PARTITION_SEED)


@PROPS
@given(st.integers(min_value=0, max_value=M32), st.integers(min_value=0, max_value=M64))
def test_uint32_hash_is_the_bytes_hash(value: int, seed: int) -> None:
    # hashfn.c: hash_bytes_uint32 has the same result as hash_bytes(&k, sizeof(k)).
    expected = hash_bytes_extended(value.to_bytes(4, "little"), seed)
    assert hash_uint32_extended(value, seed) == expected
    assert 0 <= expected <= M64


@PROPS
@given(st.one_of(st.integers(max_value=INT64_MIN - 1), st.integers(min_value=INT64_MAX + 1)))
def test_out_of_range_ints(key: int) -> None:
    assert shard_for_key(key, 3) is None
    assert shard_for_key(str(key), 3) is None
    assert shard_for_key(key, 3, "sha1") == sha1_hash(str(key)) % 3
    for function in (int8_hash, pg_bigint_hash):
        with pytest.raises(ValueError):
            function(key)


_RUST_I64 = re.compile(r"[+-]?[0-9]+")


@PROPS
@given(st.one_of(st.text(), st.from_regex(r"\A[+-]?[0-9_ ]{0,24}\Z"), int64s.map(str)))
def test_parse_int64_is_rusts(text: str) -> None:
    # str::parse::<i64>: sign, ASCII digits, nothing else, in range.
    expected = None
    if _RUST_I64.fullmatch(text) and INT64_MIN <= int(text) <= INT64_MAX:
        expected = int(text)
    assert parse_int64(text) == expected
    shard = shard_for_key(text, 7)
    assert shard == (None if expected is None else shard_for_key(expected, 7))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "+",
        "-",
        " 1",
        "1 ",
        "1_000",
        "0x10",
        "١٢",
        "1.0",
        "9223372036854775808",
        "-9223372036854775809",
        "99999999999999999999999",
    ],
)
def test_not_int64_text(text: str) -> None:
    assert parse_int64(text) is None
    assert shard_for_key(text, 5) is None


def test_int64_edges() -> None:
    assert parse_int64("9223372036854775807") == INT64_MAX
    assert parse_int64("-9223372036854775808") == INT64_MIN
    assert parse_int64("-0") == 0
    assert parse_int64("0" * 5000 + "42") == 42
    assert shard_for_key(True, 5) == shard_for_key(1, 5)


@PROPS
@given(st.one_of(st.text(), int64s), shard_counts)
def test_sha1_properties(key: str | int, shards: int) -> None:
    shard = shard_for_key(key, shards, "sha1")
    assert shard is not None and 0 <= shard < shards
    text = key if isinstance(key, str) else str(key)
    assert shard == shard_for_key(text, shards, "sha1") == sha1_hash(text) % shards
    assert 0 <= sha1_hash(text) <= M32


def test_sha1_takes_any_str() -> None:
    # No str makes the sha1 function fail, not even a lone surrogate.
    assert shard_for_key("\ud800", 4, "sha1") in range(4)


@PROPS
@given(st.text(), shard_counts)
def test_text_properties(key: str, shards: int) -> None:
    h = text_hash(key)
    assert 0 <= h <= M64
    assert h == hash_bytes_extended(key.encode(), HASH_PARTITION_SEED)
    assert shard_for_text(key, shards) == partition_hash(h) % shards


def test_text_without_utf8_form() -> None:
    with pytest.raises(ValueError):
        text_hash("\udc80")
    with pytest.raises(ValueError):
        shard_for_text("a\ud800b", 3)


@PROPS
@given(st.uuids(), shard_counts)
def test_uuid_properties(value: uuid.UUID, shards: int) -> None:
    h = uuid_hash(str(value))
    assert 0 <= h <= M64
    assert h == hash_bytes_extended(value.bytes, HASH_PARTITION_SEED)
    # Every spelling uuid_in accepts hashes alike.
    for spelling in (str(value).upper(), value.hex, "{" + str(value) + "}"):
        assert uuid_hash(spelling) == h
    assert shard_for_uuid(str(value), shards) == partition_hash(h) % shards


@pytest.mark.parametrize("text", ["", "not-a-uuid", "0" * 31, "0" * 33, "g" * 32])
def test_not_a_uuid(text: str) -> None:
    with pytest.raises(ValueError):
        uuid_hash(text)
    with pytest.raises(ValueError):
        shard_for_uuid(text, 3)


@pytest.mark.parametrize("shards", [0, -1])
def test_shard_count_below_one(shards: int) -> None:
    for call in (
        lambda: shard_for_key(1, shards),
        lambda: shard_for_key(1, shards, "sha1"),
        lambda: shard_for_text("a", shards),
        lambda: shard_for_uuid(str(uuid.UUID(int=1)), shards),
    ):
        with pytest.raises(ValueError, match="shard count"):
            call()


@PROPS
@given(st.text().filter(lambda name: name not in SHARDING_FUNCTIONS))
def test_unknown_function(name: str) -> None:
    with pytest.raises(ValueError, match="unknown sharding function"):
        shard_for_key(1, 3, name)


@pytest.mark.parametrize("seed", [-1, 1 << 64])
def test_seed_out_of_range(seed: int) -> None:
    with pytest.raises(ValueError):
        hash_bytes_extended(b"x", seed)
    with pytest.raises(ValueError):
        hash_uint32_extended(1, seed)
    with pytest.raises(ValueError):
        hash_uint32_extended(1 << 32)


def test_shard_one_is_always_zero() -> None:
    assert shard_for_key(INT64_MIN, 1) == 0
    assert shard_for_key("x", 1, "sha1") == 0
    assert shard_for_text("x", 1) == 0
    assert shard_for_uuid(str(uuid.UUID(int=5)), 1) == 0
