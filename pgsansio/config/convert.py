"""``pgsansio convert pgbouncer.ini``: the same configuration written as pgcat.toml.

For an operator who runs pgsansio on their pgbouncer.ini and wants to move to the
richer format (sharding, replicas, read/write splitting). The output is what the
pgbouncer.ini reader produced, written with every value spelled out and the secrets
in clear (it is a configuration to run with, not a report), so loading it back gives
the same :class:`~pgsansio.config.model.Config`. What could not be carried over is
said at the top, as TOML comments, and returned apart for the command to print.
"""

from __future__ import annotations

import os

from pgsansio.config._toml import effective_config_toml
from pgsansio.config.errors import ConfigError
from pgsansio.config.pgbouncer import is_pgbouncer_ini, load_pgbouncer

__all__ = ["convert_pgbouncer"]

_ALWAYS = (
    "auth_file: its users are written into every pool (with their secrets); later edits "
    "to the auth_file no longer apply",
    'the * fallback database, if any, is the pool named "*" (a pgsansio extension: '
    "PgCat itself does not have it)",
    "unix_socket_dir, query_wait_timeout, reserve_pool_*, max_*_connections, "
    "query_timeout and client_idle_timeout are pgsansio extensions: PgCat ignores them",
)


def convert_pgbouncer(path: str | os.PathLike[str]) -> tuple[str, list[str]]:
    """The pgcat.toml text for the pgbouncer.ini at ``path``, and what was not carried.

    Raises:
        ConfigError: the file is not a pgbouncer.ini, or cannot be used.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            head = f.read(1 << 20).decode("utf-8", "replace")
    except OSError as e:
        raise ConfigError(name, None, f"cannot read it ({e.strerror or e})") from None
    if not is_pgbouncer_ini(head):
        raise ConfigError(
            name, None, "is not a pgbouncer.ini (no [pgbouncer] or [databases] section)"
        )
    config = load_pgbouncer(name)
    lost = [*config.warnings, *_ALWAYS]
    header = [f"# Converted from {name} by pgsansio convert.", "# Not carried over as is:"]
    header += [f"#  - {line}" for line in lost]
    return "\n".join(header) + "\n" + effective_config_toml(config, mask=False), lost
