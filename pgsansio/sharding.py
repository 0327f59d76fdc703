"""Shard hash functions, bit-exact with PostgreSQL's hash partitioning and PgCat.

A sharded pool sends a query to the shard that holds its key. Where the shards are the
partitions of ``PARTITION BY HASH (key)`` (or were loaded with the same rule), the
pooler must compute exactly the partition PostgreSQL would pick; a different answer
sends a query to a shard that does not have the row. This module is that computation:
pure functions, no I/O, no clock, no parser, standard library only (``hashlib`` for
SHA-1, ``uuid`` to parse UUID text), so it stays under pgsansio's MIT licence and can
be imported anywhere.

What is reproduced (PostgreSQL 11 and later, where these have not changed):

* ``hash_bytes_extended`` and ``hash_bytes_uint32_extended`` of
  ``src/common/hashfn.c``: Bob Jenkins' lookup3 hash (``mix`` and ``final``) as
  PostgreSQL adapted it, with the 64-bit seed mixed in first and the 64-bit result
  ``(b << 32) | c``. See :func:`hash_bytes_extended` and
  :func:`hash_uint32_extended`.
* ``hashint8extended`` of ``src/backend/access/hash/hashfunc.c``: an int8 is folded to
  32 bits (low half XOR high half, the high half complemented for negative values, so
  that an int8 hashes like the int4 of the same value) and hashed with
  ``hash_uint32_extended``. See :func:`int8_hash`.
* ``hashtextextended`` (same file): ``hash_any_extended`` over the text's bytes. See
  :func:`text_hash`.
* ``uuid_hash_extended`` of ``src/backend/utils/adt/uuid.c``: ``hash_any_extended``
  over the 16 bytes of the UUID. See :func:`uuid_hash`.
* ``compute_partition_hash_value`` and ``hash_combine64`` of
  ``src/backend/partitioning/partbounds.c`` and ``src/include/common/hashfn.h``: each
  key column is hashed with ``HASH_PARTITION_SEED`` (``0x7A5B22367996DCFD``,
  ``src/include/catalog/partition.h``) and folded into a row hash that starts at 0
  with ``hash_combine64``; a row belongs to the partition ``FOR VALUES WITH (MODULUS
  n, REMAINDER r)`` where ``row_hash % n == r`` in unsigned 64-bit arithmetic. With one
  key column ``hash_combine64(0, h)`` is ``h + 0x49A0F4DD15E5A8E3`` modulo 2**64. See
  :func:`partition_hash`.

PgCat's two ``sharding_function`` values (its ``src/sharding.rs``):

* ``pg_bigint_hash``: the partition hash of an int8 key modulo the shard count, so
  shard ``k`` of ``n`` holds exactly the rows of the partition with ``MODULUS n,
  REMAINDER k``. :func:`pg_bigint_hash` returns the 64-bit partition hash (before the
  modulo).
* ``sha1``: SHA-1 of the key's decimal text; the last 8 hex digits (the digest's last
  four bytes, big-endian) read as an unsigned 32-bit integer, modulo the shard count.
  This matches no PostgreSQL function; it only agrees with PgCat.

PgDog also shards ``text`` (``varchar``) and ``uuid`` keys with PostgreSQL's partition
hash; :func:`shard_for_text` and :func:`shard_for_uuid` do the same here.

Decisions:

* Python integers are unbounded, so every step masks to 32 or 64 bits, as the C
  ``uint32``/``uint64`` arithmetic wraps. The int8 path (:func:`int8_hash`,
  :func:`pg_bigint_hash`, :func:`shard_for_key` with an int) is plain arithmetic on
  small ints: no bytes object, no struct, no call per mixing step. The seed is
  constant there, so the seeded ``mix`` and the first two steps of ``final`` (which
  depend only on the seeded state) are computed once at import.
* Bytes are read as little-endian 32-bit words. PostgreSQL reads them in the
  machine's byte order, so a big-endian server (s390x, old POWER) computes other hash
  values and other partitions for text and uuid keys. Integer keys are not affected:
  they are hashed as a value, not as bytes.
* Text is hashed as its UTF-8 bytes, which is what the server hashes when the database
  encoding is UTF8 (or SQL_ASCII fed UTF-8). A column with a nondeterministic (ICU)
  collation hashes a sort key instead; that is not reproduced. A ``str`` that cannot
  be UTF-8 (a lone surrogate) raises :class:`ValueError`, as no PostgreSQL text can
  hold it. PostgreSQL text cannot hold NUL either; a NUL is hashed like any byte.
* A UUID is accepted in every spelling :class:`uuid.UUID` reads (braces, no hyphens,
  upper case, ``urn:uuid:``). That is a superset of what ``uuid_in`` accepts; a string
  neither accepts raises :class:`ValueError`.
* :func:`shard_for_key` follows PgCat, whose keys are Rust ``i64``. For
  ``pg_bigint_hash`` a ``str`` key must be what Rust's ``str::parse::<i64>`` accepts
  (an optional ``+`` or ``-`` and ASCII digits, nothing else: no spaces, no
  underscores), and an ``int`` key must fit in an int64; otherwise the answer is
  ``None``, not a guess. For ``sha1`` PgCat hashes ``i64::to_string()``; an ``int``
  key is hashed as its decimal text (any size), a ``str`` key as given (its UTF-8
  bytes, lone surrogates passed through), so no key makes it fail.
* A shard count below 1 and an unknown function name raise :class:`ValueError`: they
  are configuration errors, to be caught when the configuration is loaded.
"""

from __future__ import annotations

import hashlib
import re
import struct
import uuid
from typing import Final

__all__ = [
    "HASH_PARTITION_SEED",
    "INT64_MAX",
    "INT64_MIN",
    "SHARDING_FUNCTIONS",
    "SHARDING_KEY_TYPES",
    "hash_bytes_extended",
    "hash_uint32_extended",
    "int8_hash",
    "parse_int64",
    "partition_hash",
    "pg_bigint_hash",
    "sha1_hash",
    "shard_for_key",
    "shard_for_text",
    "shard_for_typed_key",
    "shard_for_uuid",
    "text_hash",
    "uuid_hash",
]

#: The ``sharding_function`` names PgCat accepts, in its order.
SHARDING_FUNCTIONS: Final = ("pg_bigint_hash", "sha1")

#: ``HASH_PARTITION_SEED`` of PostgreSQL's ``src/include/catalog/partition.h``.
HASH_PARTITION_SEED: Final = 0x7A5B22367996DCFD

#: The constant of ``hash_combine64`` (``src/include/common/hashfn.h``).
_COMBINE64: Final = 0x49A0F4DD15E5A8E3

_M32: Final = 0xFFFFFFFF
_M64: Final = 0xFFFFFFFFFFFFFFFF

#: The range of PostgreSQL's int8 (and Rust's i64, PgCat's key type).
INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1

#: lookup3's initial state is ``0x9e3779b9 + length + 3923095``.
_INIT: Final = 0x9E3779B9 + 3923095

_WORDS: Final = struct.Struct("<3I")
_PAD: Final = bytes(12)
_INT64_TEXT: Final = re.compile(r"([+-]?)0*([0-9]+)", re.ASCII)


# Rotations are written out as ``(x << k) | (x >> (32 - k))`` without masking the
# left shift: the bits above 32 it leaves are removed by the ``& _M32`` that ends
# every step, because subtraction and XOR modulo 2**32 only look at the low 32 bits
# (Python's bit operations on negative ints act on an infinite two's complement).


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    """lookup3's ``mix(a, b, c)``: mix three 32-bit values reversibly."""
    a = ((a - c) ^ ((c << 4) | (c >> 28))) & _M32
    c = (c + b) & _M32
    b = ((b - a) ^ ((a << 6) | (a >> 26))) & _M32
    a = (a + c) & _M32
    c = ((c - b) ^ ((b << 8) | (b >> 24))) & _M32
    b = (b + a) & _M32
    a = ((a - c) ^ ((c << 16) | (c >> 16))) & _M32
    c = (c + b) & _M32
    b = ((b - a) ^ ((a << 19) | (a >> 13))) & _M32
    a = (a + c) & _M32
    c = ((c - b) ^ ((b << 4) | (b >> 28))) & _M32
    b = (b + a) & _M32
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    """lookup3's ``final(a, b, c)``, returning ``(b << 32) | c`` as PostgreSQL does."""
    c = ((c ^ b) - ((b << 14) | (b >> 18))) & _M32
    a = ((a ^ c) - ((c << 11) | (c >> 21))) & _M32
    b = ((b ^ a) - ((a << 25) | (a >> 7))) & _M32
    c = ((c ^ b) - ((b << 16) | (b >> 16))) & _M32
    a = ((a ^ c) - ((c << 4) | (c >> 28))) & _M32
    b = ((b ^ a) - ((a << 14) | (a >> 18))) & _M32
    c = ((c ^ b) - ((b << 24) | (b >> 8))) & _M32
    return (b << 32) | c


def _seeded_state(length: int, seed: int) -> tuple[int, int, int]:
    a = b = c = (_INIT + length) & _M32
    if seed:
        # PostgreSQL treats the seed as a 12-byte chunk of data: high half, low half, 0.
        a = (a + (seed >> 32)) & _M32
        b = (b + seed) & _M32
        a, b, c = _mix(a, b, c)
    return a, b, c


def hash_bytes_extended(data: bytes, seed: int = 0) -> int:
    """PostgreSQL's ``hash_bytes_extended`` (``hash_any_extended``): a uint64.

    ``seed`` is a uint64 (0: unseeded). Words are read little-endian (see the module
    notes on big-endian servers).
    """
    if not 0 <= seed <= _M64:
        raise ValueError(f"seed {seed} is not an unsigned 64-bit integer")
    length = len(data)
    a, b, c = _seeded_state(length, seed)
    whole = length - length % 12
    for wa, wb, wc in _WORDS.iter_unpack(data[:whole]):
        a, b, c = _mix((a + wa) & _M32, (b + wb) & _M32, (c + wc) & _M32)
    # The last 0-11 bytes, zero-padded; the lowest byte of c is the length's, so the
    # bytes 8-10 go in one byte higher.
    ta, tb, tc = _WORDS.unpack((data[whole:] + _PAD)[:12])
    return _final((a + ta) & _M32, (b + tb) & _M32, (c + (tc << 8)) & _M32)


def hash_uint32_extended(value: int, seed: int = 0) -> int:
    """PostgreSQL's ``hash_uint32_extended`` (``hash_bytes_uint32_extended``): a uint64.

    Equal to ``hash_bytes_extended(value.to_bytes(4, "little"), seed)``.
    """
    if not 0 <= value <= _M32:
        raise ValueError(f"{value} is not an unsigned 32-bit integer")
    if not 0 <= seed <= _M64:
        raise ValueError(f"seed {seed} is not an unsigned 64-bit integer")
    a, b, c = _seeded_state(4, seed)
    return _final((a + value) & _M32, b, c)


# The int8 path: with the partition seed the state before ``a += k`` is constant, and
# so are the first step of final() (it reads only b and c) and the constants of the
# second. Only what depends on the key is left for each call.
_A0, _B0, _C0 = _seeded_state(4, HASH_PARTITION_SEED)
_C1: Final = ((_C0 ^ _B0) - ((_B0 << 14) | (_B0 >> 18))) & _M32
_C1_ROT11: Final = ((_C1 << 11) | (_C1 >> 21)) & _M32


def _check_int64(key: int) -> None:
    if not INT64_MIN <= key <= INT64_MAX:
        raise ValueError(f"{key} is out of range for an int64")


def _int8_hash(key: int) -> int:
    # hashint8extended's fold to 32 bits: the low half XOR the high half, the high half
    # complemented for a negative key (Python's >> and ~ act on the signed value, and
    # the final mask takes the low 32 bits), then hash_uint32_extended from the
    # precomputed seeded state.
    hihalf = key >> 32
    a = (_A0 + ((key ^ (hihalf if hihalf >= 0 else ~hihalf)) & _M32)) & _M32
    c = _C1
    a = ((a ^ c) - _C1_ROT11) & _M32
    b = ((_B0 ^ a) - ((a << 25) | (a >> 7))) & _M32
    c = ((c ^ b) - ((b << 16) | (b >> 16))) & _M32
    a = ((a ^ c) - ((c << 4) | (c >> 28))) & _M32
    b = ((b ^ a) - ((a << 14) | (a >> 18))) & _M32
    c = ((c ^ b) - ((b << 24) | (b >> 8))) & _M32
    return (b << 32) | c


def int8_hash(key: int) -> int:
    """``hashint8extended(key, HASH_PARTITION_SEED)`` as a uint64.

    PostgreSQL's SQL function returns it as a signed bigint; this is the same 64 bits
    read unsigned. Raises :class:`ValueError` if ``key`` is not an int64.
    """
    _check_int64(key)
    return _int8_hash(key)


def partition_hash(column_hash: int) -> int:
    """The row hash of a one-column hash partition key: ``hash_combine64(0, h)``.

    ``column_hash`` is the column type's extended hash with the partition seed
    (:func:`int8_hash`, :func:`text_hash`, :func:`uuid_hash`); the row goes to the
    partition whose remainder is ``partition_hash(h) % modulus``.
    """
    return (column_hash + _COMBINE64) & _M64


def pg_bigint_hash(key: int) -> int:
    """The 64-bit partition hash PostgreSQL computes for an int8 key (a uint64).

    ``pg_bigint_hash(key) % n`` is the remainder of the partition of ``PARTITION BY
    HASH`` with ``MODULUS n`` that holds ``key``, and PgCat's shard for it. Raises
    :class:`ValueError` if ``key`` is not an int64.
    """
    _check_int64(key)
    return (_int8_hash(key) + _COMBINE64) & _M64


def text_hash(key: str) -> int:
    """``hashtextextended(key, HASH_PARTITION_SEED)`` as a uint64 (UTF-8, deterministic
    collation). Raises :class:`ValueError` for a ``str`` that has no UTF-8 form."""
    return hash_bytes_extended(key.encode("utf-8"), HASH_PARTITION_SEED)


def uuid_hash(key: str) -> int:
    """``uuid_hash_extended(key::uuid, HASH_PARTITION_SEED)`` as a uint64.

    Raises :class:`ValueError` if ``key`` is not a UUID.
    """
    return hash_bytes_extended(uuid.UUID(key).bytes, HASH_PARTITION_SEED)


def sha1_hash(text: str) -> int:
    """PgCat's ``sha1`` function before the modulo: the SHA-1 digest's last four bytes
    of ``text``'s UTF-8 form, big-endian (its last 8 hex digits), as a uint32."""
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass"), usedforsecurity=False)
    return int.from_bytes(digest.digest()[-4:], "big")


def parse_int64(text: str) -> int | None:
    """An int64 from decimal text as Rust's ``str::parse::<i64>`` reads it, else None.

    An optional ``+`` or ``-``, then ASCII digits (leading zeros allowed); no spaces,
    underscores or other digits.
    """
    match = _INT64_TEXT.fullmatch(text)
    if match is None:
        return None
    sign, digits = match.groups()
    if len(digits) > 19:
        return None
    value = -int(digits) if sign == "-" else int(digits)
    return value if INT64_MIN <= value <= INT64_MAX else None


def _check_shards(shards: int) -> None:
    if shards < 1:  # also the caller's test in shard_for_key, to save a call
        raise ValueError(f"the shard count must be at least 1, not {shards}")


def shard_for_key(key: str | int, shards: int, function: str = "pg_bigint_hash") -> int | None:
    """The shard (``0`` to ``shards - 1``) PgCat routes ``key`` to with ``function``.

    ``pg_bigint_hash``: the key is an int64 (a ``str`` is parsed with
    :func:`parse_int64`); None if it is not one. ``sha1``: the key's decimal text, a
    ``str`` as given; never None. Raises :class:`ValueError` for an unknown function
    or a shard count below 1.
    """
    if shards < 1:
        _check_shards(shards)
    if function == "pg_bigint_hash":
        if isinstance(key, str):
            parsed = parse_int64(key)
            if parsed is None:
                return None
            key = parsed
        elif not INT64_MIN <= key <= INT64_MAX:
            return None
        return ((_int8_hash(key) + _COMBINE64) & _M64) % shards
    if function == "sha1":
        text = key if isinstance(key, str) else str(int(key))
        return sha1_hash(text) % shards
    raise ValueError(
        f"unknown sharding function {function!r}; expected one of {', '.join(SHARDING_FUNCTIONS)}"
    )


def shard_for_text(key: str, shards: int) -> int:
    """The remainder of the ``MODULUS shards`` hash partition that holds text ``key``.

    Raises :class:`ValueError` for a shard count below 1 or a ``str`` with no UTF-8
    form.
    """
    _check_shards(shards)
    return partition_hash(text_hash(key)) % shards


def shard_for_uuid(key: str, shards: int) -> int:
    """The remainder of the ``MODULUS shards`` hash partition that holds uuid ``key``.

    Raises :class:`ValueError` for a shard count below 1 or a ``key`` that is not a
    UUID.
    """
    _check_shards(shards)
    return partition_hash(uuid_hash(key)) % shards


# The types a sharding key may have (a pool's ``sharding_key_type``).
SHARDING_KEY_TYPES: Final = ("bigint", "text", "uuid")


def shard_for_typed_key(
    key: str | int, shards: int, function: str = "pg_bigint_hash", key_type: str = "bigint"
) -> int | None:
    """The shard of ``key``, a value of the pool's ``sharding_key_type``.

    ``bigint``: :func:`shard_for_key` (a ``str`` may have spaces around the digits, as
    ``int8in`` allows). ``text``: ``pg_bigint_hash`` is PostgreSQL's partition hash of
    a text column (:func:`shard_for_text`), ``sha1`` hashes the text itself. ``uuid``:
    the text is read as a UUID (None if it is not one); ``pg_bigint_hash`` is the
    partition hash of a uuid column (:func:`shard_for_uuid`), ``sha1`` hashes its
    canonical text (lower case, hyphenated), so every spelling of a UUID lands on one
    shard. None when the key cannot be of that type. Raises :class:`ValueError` for
    an unknown function or type, or a shard count below 1.
    """
    if key_type == "bigint":
        return shard_for_key(key.strip() if isinstance(key, str) else key, shards, function)
    if function not in SHARDING_FUNCTIONS:
        shard_for_key(0, shards, function)  # raises, naming the functions
    text = key if isinstance(key, str) else str(key)
    if key_type == "text":
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            return None  # a lone surrogate: no PostgreSQL text is that
        _check_shards(shards)
        if function == "sha1":
            return sha1_hash(text) % shards
        return partition_hash(hash_bytes_extended(data, HASH_PARTITION_SEED)) % shards
    if key_type == "uuid":
        try:
            value = uuid.UUID(text.strip())
        except ValueError:
            return None
        _check_shards(shards)
        if function == "sha1":
            return sha1_hash(str(value)) % shards
        return partition_hash(hash_bytes_extended(value.bytes, HASH_PARTITION_SEED)) % shards
    raise ValueError(
        f"unknown sharding key type {key_type!r}; expected one of {', '.join(SHARDING_KEY_TYPES)}"
    )
