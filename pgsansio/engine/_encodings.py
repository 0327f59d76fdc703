"""PostgreSQL's names for character encodings, as it reports ``client_encoding``.

A client may ask for ``client_encoding=euc-jp``, ``utf-8`` or ``Unicode``; PostgreSQL
accepts any spelling of a name it knows (it compares names with everything but
letters and digits removed, case-folded) and reports its own (``EUC_JP``, ``UTF8``) in
the ParameterStatus it sends. Drivers map that reported name to a codec, so a pooler
that welcomes a client before any server has seen its setting must report the same
name PostgreSQL would: this table gives it. An unknown name is refused as PostgreSQL
refuses it (FATAL 22023, "invalid value for parameter").

The names are PostgreSQL's own (``src/common/encnames.c`` lists the same aliases):
every encoding a client may use, including the client-only ones (SJIS, BIG5, GBK,
UHC, GB18030, JOHAB, SHIFT_JIS_2004).
"""

from __future__ import annotations

__all__ = ["canonical_encoding"]

# Canonical name -> its aliases beyond the name itself (already "cleaned": lower case,
# letters and digits only).
_ALIASES: dict[str, tuple[str, ...]] = {
    "SQL_ASCII": (),
    "UTF8": ("unicode",),
    "EUC_JP": (),
    "EUC_CN": (),
    "EUC_KR": (),
    "EUC_TW": (),
    "EUC_JIS_2004": (),
    "MULE_INTERNAL": (),
    "LATIN1": ("iso88591",),
    "LATIN2": ("iso88592",),
    "LATIN3": ("iso88593",),
    "LATIN4": ("iso88594",),
    "LATIN5": ("iso88599",),
    "LATIN6": ("iso885910",),
    "LATIN7": ("iso885913",),
    "LATIN8": ("iso885914",),
    "LATIN9": ("iso885915",),
    "LATIN10": ("iso885916",),
    "ISO_8859_5": (),
    "ISO_8859_6": (),
    "ISO_8859_7": (),
    "ISO_8859_8": (),
    "WIN866": ("alt", "windows866"),
    "WIN874": ("windows874",),
    "WIN1250": ("windows1250",),
    "WIN1251": ("win", "windows1251"),
    "WIN1252": ("windows1252",),
    "WIN1253": ("windows1253",),
    "WIN1254": ("windows1254",),
    "WIN1255": ("windows1255",),
    "WIN1256": ("windows1256",),
    "WIN1257": ("windows1257",),
    "WIN1258": ("abc", "tcvn", "tcvn5712", "vscii", "windows1258"),
    "KOI8R": ("koi8",),
    "KOI8U": (),
    "SJIS": ("mskanji", "shiftjis", "win932", "windows932"),
    "SHIFT_JIS_2004": (),
    "BIG5": ("win950", "windows950"),
    "GBK": ("win936", "windows936"),
    "UHC": ("win949", "windows949"),
    "GB18030": (),
    "JOHAB": (),
}


def _clean(name: str) -> str:
    """What PostgreSQL compares: letters and digits only, lower case."""
    return "".join(ch for ch in name.lower() if ch.isascii() and ch.isalnum())


_BY_CLEAN: dict[str, str] = {}
for _name, _aliases in _ALIASES.items():
    for _alias in (_clean(_name), *_aliases):
        _BY_CLEAN[_alias] = _name


def canonical_encoding(name: str) -> str | None:
    """PostgreSQL's name for the encoding ``name`` spells, or None if it knows none."""
    return _BY_CLEAN.get(_clean(name))
