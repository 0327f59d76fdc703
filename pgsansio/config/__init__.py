"""Configuration: one validated model, read from the formats operators already have.

* :mod:`pgsansio.config.model`: the resolved :class:`~pgsansio.config.model.Config` the
  engine runs on; every reader produces it, and nothing downstream knows which file
  format it came from.
* :mod:`pgsansio.config.pgcat`: PgCat's ``pgcat.toml`` (with pgsansio's extensions).
* :mod:`pgsansio.config.pgbouncer`: PgBouncer's ``pgbouncer.ini`` and its auth_file.
* :mod:`pgsansio.config.errors`: :class:`ConfigError`, naming file, key and problem.

:func:`load_config` picks the reader by the file's content, not its name (operators
name their files as they like): a file with a ``[pgbouncer]`` or ``[databases]``
section is PgBouncer's, anything else is read as pgcat.toml. ``parse_config`` stays the
pgcat.toml text parser, as callers have always used it.
"""

from __future__ import annotations

import os

from pgsansio.config import pgcat
from pgsansio.config.errors import ConfigError
from pgsansio.config.model import Config
from pgsansio.config.pgbouncer import is_pgbouncer_ini, load_pgbouncer
from pgsansio.config.pgcat import effective_config_toml, parse_config

__all__ = ["ConfigError", "effective_config_toml", "load_config", "parse_config"]


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the configuration at ``path``, pgcat.toml or pgbouncer.ini.

    Raises:
        ConfigError: the file cannot be read or used; the message says where and why.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            head = f.read(1 << 20)
    except OSError:
        return pgcat.load_config(name)  # it words the error
    if is_pgbouncer_ini(head.decode("utf-8", "replace")):
        return load_pgbouncer(name)
    return pgcat.load_config(name)
