"""Sharding functions: a sharding key in, a shard number out (pure, bit-exact).

PgCat's two functions (``src/sharding.rs``), chosen per pool by ``sharding_function``:

- ``pg_bigint_hash`` (the default): what PostgreSQL's ``PARTITION BY HASH (col)`` does
  for a ``bigint`` column, so that ``shard_for_key(k, n)`` is the REMAINDER of the
  partition ``FOR VALUES WITH (MODULUS n, REMAINDER r)`` that accepts ``k``:
  ``hashint8extended(k, HASH_PARTITION_SEED)`` combined into 0 by ``hash_combine64``,
  modulo the shard count. The key must be a 64-bit signed integer.
- ``sha1``: the SHA-1 of the key's decimal text; its last 8 hex digits read as an
  unsigned 32-bit integer, modulo the shard count.
"""

from __future__ import annotations

import hashlib

__all__ = ["SHARDING_FUNCTIONS", "pg_bigint_hash", "shard_for_key"]

SHARDING_FUNCTIONS = ("pg_bigint_hash", "sha1")

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF
_HASH_PARTITION_SEED = 0x7A5B22367996DCFD  # PostgreSQL's partition.h
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def _hash_uint32_extended(k: int, seed: int) -> int:
    """PostgreSQL's ``hash_uint32_extended`` (Bob Jenkins' lookup3, common/hashfn.c)."""
    a = b = c = (0x9E3779B9 + 4 + 3923095) & _M32
    if seed:
        a = (a + (seed >> 32)) & _M32
        b = (b + (seed & _M32)) & _M32
        # mix(a, b, c)
        a = (a - c) & _M32
        a ^= _rot(c, 4)
        c = (c + b) & _M32
        b = (b - a) & _M32
        b ^= _rot(a, 6)
        a = (a + c) & _M32
        c = (c - b) & _M32
        c ^= _rot(b, 8)
        b = (b + a) & _M32
        a = (a - c) & _M32
        a ^= _rot(c, 16)
        c = (c + b) & _M32
        b = (b - a) & _M32
        b ^= _rot(a, 19)
        a = (a + c) & _M32
        c = (c - b) & _M32
        c ^= _rot(b, 4)
        b = (b + a) & _M32
    a = (a + k) & _M32
    # final(a, b, c)
    c ^= b
    c = (c - _rot(b, 14)) & _M32
    a ^= c
    a = (a - _rot(c, 11)) & _M32
    b ^= a
    b = (b - _rot(a, 25)) & _M32
    c ^= b
    c = (c - _rot(b, 16)) & _M32
    a ^= c
    a = (a - _rot(c, 4)) & _M32
    b ^= a
    b = (b - _rot(a, 14)) & _M32
    c ^= b
    c = (c - _rot(b, 24)) & _M32
    return (b << 32) | c


def pg_bigint_hash(key: int) -> int:
    """The unsigned 64-bit value PostgreSQL's hash partitioning computes for a bigint
    partition key: ``hash_combine64(0, hashint8extended(key, HASH_PARTITION_SEED))``.

    Raises ValueError if ``key`` is not a 64-bit signed integer.
    """
    if not _INT64_MIN <= key <= _INT64_MAX:
        raise ValueError(f"{key} is not a 64-bit signed integer")
    val = key & _M64
    lo = val & _M32
    hi = val >> 32
    # hashint8extended: fold the high half into the low one (complemented if negative)
    lo ^= hi if key >= 0 else (~hi & _M32)
    h = _hash_uint32_extended(lo, _HASH_PARTITION_SEED)
    # hash_combine64(0, h): a ^= h + 0x49a0f4dd15e5a8e3 + (a << 54) + (a >> 7), a = 0
    return (h + 0x49A0F4DD15E5A8E3) & _M64


def _sha1(text: str) -> int:
    return int(hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[-8:], 16)


def shard_for_key(key: str | int, shards: int, function: str = "pg_bigint_hash") -> int | None:
    """The shard (0 to ``shards - 1``) holding ``key``, or None when ``key`` is not a
    valid key for ``function`` (``pg_bigint_hash`` takes 64-bit signed integers, as an
    int or its decimal text).

    Raises ValueError for an unknown function or a shard count below 1.
    """
    if shards < 1:
        raise ValueError(f"shards must be at least 1, not {shards}")
    if function not in SHARDING_FUNCTIONS:
        raise ValueError(
            f"unknown sharding function {function!r}: use one of {', '.join(SHARDING_FUNCTIONS)}"
        )
    number: int | None
    if isinstance(key, int):
        number = key
    else:
        try:
            number = int(key.strip(), 10)
        except ValueError:
            number = None
    if function == "sha1":
        return _sha1(str(number) if number is not None else str(key)) % shards
    if number is None or not _INT64_MIN <= number <= _INT64_MAX:
        return None
    return pg_bigint_hash(number) % shards
