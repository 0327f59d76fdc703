"""SASLprep (RFC 4013), the stringprep profile SCRAM applies to passwords.

RFC 5802 says a SCRAM password is normalized with SASLprep before it is hashed,
so that a password typed on two keyboards ("I\\u00adX" with a soft hyphen, or
the Roman numeral "\\u2168") yields the same key. This module is the RFC
algorithm only; PostgreSQL's fallback to the raw password when SASLprep fails
lives in :func:`normalize_password`.

The tables come from :mod:`stringprep`, which carries RFC 3454's own data
(Unicode 3.2), so that code points unassigned in 3.2 stay prohibited as the RFC
demands for stored strings. NFKC uses the interpreter's current Unicode data,
as PostgreSQL does with its own, current, normalization tables; since Unicode's
normalization stability policy freezes the decomposition of every character
assigned by 3.2 (bar a handful of corrigenda), this choice only matters for
those few characters, where we agree with the server.
"""

from __future__ import annotations

import stringprep
import unicodedata
from collections.abc import Callable

__all__ = ["normalize_password", "saslprep"]

# RFC 4013 section 2.3: the prohibited output, plus A.1 (unassigned code
# points, section 2.5: SCRAM passwords are "stored strings"). Each entry names
# its table so that an error can say which rule failed without quoting the
# offending character (the input is usually a password).
_PROHIBITED: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("C.1.2 non-ASCII space", stringprep.in_table_c12),
    ("C.2 control character", stringprep.in_table_c21_c22),
    ("C.3 private use", stringprep.in_table_c3),
    ("C.4 non-character code point", stringprep.in_table_c4),
    ("C.5 surrogate code", stringprep.in_table_c5),
    ("C.6 inappropriate for plain text", stringprep.in_table_c6),
    ("C.7 inappropriate for canonical representation", stringprep.in_table_c7),
    ("C.8 change display property or deprecated", stringprep.in_table_c8),
    ("C.9 tagging character", stringprep.in_table_c9),
    ("A.1 unassigned code point", stringprep.in_table_a1),
)


def saslprep(text: str) -> str:
    """Prepare a string with the SASLprep profile for stored strings.

    Why: SCRAM hashes the prepared form, so two spellings of the same password
    must map to the same bytes; and characters that cannot be typed reliably
    (controls, unassigned code points) must be refused rather than hashed.

    Args:
        text: the string to prepare, typically a password.

    Returns:
        The mapped and NFKC-normalized string. It may be empty when every
        character maps to nothing (RFC 4013 does not forbid that; PostgreSQL
        does, see :func:`normalize_password`).

    Raises:
        ValueError: the output holds a prohibited or unassigned character, or
            breaks the bidirectional rules of RFC 3454 section 6. The message
            names the rule, never the character.
    """
    # Section 2.1, mapping: non-ASCII spaces (C.1.2) become U+0020, the
    # "commonly mapped to nothing" characters (B.1) disappear.
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch)
    )
    # Section 2.2, normalization: Unicode form KC.
    prepared = unicodedata.normalize("NFKC", mapped)
    # Sections 2.3 and 2.5, prohibited output and unassigned code points.
    for ch in prepared:
        for rule, in_table in _PROHIBITED:
            if in_table(ch):
                raise ValueError(f"SASLprep: prohibited character ({rule})")
    # Section 2.4 and RFC 3454 section 6, bidirectional characters: a string
    # with any RandALCat character holds no LCat character and begins and ends
    # with a RandALCat character.
    if any(stringprep.in_table_d1(ch) for ch in prepared):
        if any(stringprep.in_table_d2(ch) for ch in prepared):
            raise ValueError("SASLprep: mixes right-to-left and left-to-right characters")
        if not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1])):
            raise ValueError(
                "SASLprep: right-to-left string does not begin and end with "
                "a right-to-left character"
            )
    return prepared


def normalize_password(password: str | bytes) -> bytes:
    """Return the bytes PostgreSQL feeds to SCRAM's Hi() for a password.

    Why not plain SASLprep: PostgreSQL (``pg_saslprep``) applies SASLprep,
    but when that fails (prohibited or unassigned characters, invalid UTF-8,
    or a result that maps to nothing) it hashes the raw bytes instead, so any
    password the server accepted can still log in. Pure ASCII is used as is,
    which gives the same result as SASLprep-or-raw.

    Args:
        password: the password; ``bytes`` for one that is not valid UTF-8
            (PostgreSQL then hashes it verbatim).

    Returns:
        The UTF-8 SASLprep form, or the raw bytes when SASLprep fails.

    Raises:
        ValueError: a ``str`` holding lone surrogates outside the
            surrogateescape range, which have no byte representation.
    """
    # surrogateescape round-trips bytes that were decoded the same way (a
    # password read from a non-UTF-8 file) back to those bytes.
    raw = password if isinstance(password, bytes) else password.encode("utf-8", "surrogateescape")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
    if text.isascii():
        return raw
    try:
        prepared = saslprep(text)
    except ValueError:
        return raw
    return prepared.encode("utf-8") if prepared else raw
