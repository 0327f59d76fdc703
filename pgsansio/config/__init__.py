"""Configuration: one validated model, read from the formats operators already have.

* :mod:`pgsansio.config.model`: the resolved :class:`~pgsansio.config.model.Config` the
  engine runs on; every reader produces it, and nothing downstream knows which file
  format it came from.
* :mod:`pgsansio.config.pgcat`: PgCat's ``pgcat.toml`` (with pgsansio's extensions).
* :mod:`pgsansio.config.errors`: :class:`ConfigError`, naming file, key and problem.

``load_config`` and ``parse_config`` are re-exported here because that is where callers
have always imported them from.
"""

from __future__ import annotations

from pgsansio.config.errors import ConfigError
from pgsansio.config.pgcat import effective_config_toml, load_config, parse_config

__all__ = ["ConfigError", "effective_config_toml", "load_config", "parse_config"]
