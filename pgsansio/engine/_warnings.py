"""What the operator is told about a configuration before the pooler acts on it.

One function, :func:`config_warnings`, is the whole list: ``pgsansio check`` prints it
and the engine logs it at start and at every reload, so ``check`` never says "OK" to
something ``run`` then warns about. It is the reader's warnings (unknown keys, PgCat
keys accepted but not acted on, each with what happens instead; see
:mod:`pgsansio.config.pgcat`), plus what depends on this installation rather than on
the file: a pool that asks for the query parser when pglast cannot be imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgsansio.config.model import Config

__all__ = ["config_warnings", "parser_missing"]


def parser_missing() -> str | None:
    """Why the SQL parser (the ``routing`` extra, pglast) cannot be loaded, or None."""
    try:
        importlib.import_module("pgsansio.routing")
    except ImportError as exc:
        return str(exc)
    return None


def config_warnings(config: Config) -> list[str]:
    """Every warning about ``config``, in the order the operator should read them."""
    warnings = list(config.warnings)
    pools = [p.name for p in config.pools.values() if p.query_parser_enabled]
    if pools:
        missing = parser_missing()
        if missing is not None:
            warnings.append(
                f"query_parser_enabled is set (pool {', '.join(pools)}) but the SQL parser "
                f"cannot be loaded: {missing}. Until it is, servers are chosen by "
                "default_role alone, and automatic_sharding_key finds no key"
            )
    return warnings
