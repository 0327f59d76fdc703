"""PgBouncer's connection limits across pools: ``max_db_connections``,
``max_user_connections`` and the reserve pool.

Pure functions over the pool groups, used by :class:`~._pooling.Pools` (which owns the
connections and so decides when one may be opened). PgBouncer's semantics:

* ``max_db_connections`` caps the server connections of one database (every user's
  pools together); ``max_user_connections`` those of one user (every database). A pool
  that is under its own ``pool_size`` but over one of these waits; an idle connection
  of another pool under the same cap is closed to make room (PgBouncer's eviction), and
  a connection released while such a pool waits goes the same way.
* ``reserve_pool_size`` more connections are allowed once the pool's first waiting
  client has waited ``reserve_pool_timeout`` (0 turns the reserve off), and the pooler
  logs that it took one, as PgBouncer does.

Counting walks the groups, which is only done when a limit is set and a connection is
about to be opened, never on the checkout of an idle connection.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._objects import Pool, PoolGroup

__all__ = ["capped", "pool_limit", "sharing"]


def pool_limit(pool: Pool, now: float, reserve_timeout_ms: int) -> int:
    """How many connections ``pool`` may have now: pool_size, plus the reserve while
    its first waiter has waited ``reserve_timeout_ms``."""
    user = pool.group.user
    reserve = pool.group.cfg.reserve_pool_size
    if reserve and reserve_timeout_ms and pool.waiters:
        since = pool.waiters[0].waiting_since
        if since is not None and now - since >= reserve_timeout_ms / 1000:
            return user.pool_size + reserve
    return user.pool_size


def sharing(group: PoolGroup, groups: Iterable[PoolGroup]) -> list[PoolGroup]:
    """The groups whose connections count against one of ``group``'s caps."""
    max_db = group.cfg.max_db_connections
    max_user = group.user.max_user_connections
    if not max_db and not max_user:
        return []
    return [
        g
        for g in groups
        if (max_db and g.name == group.name)
        or (max_user and g.user.username == group.user.username)
    ]


def capped(group: PoolGroup, groups: Iterable[PoolGroup]) -> str | None:
    """The cap (``max_db_connections`` or ``max_user_connections``) that ``group`` has
    reached, or None when it may open one more connection."""
    max_db = group.cfg.max_db_connections
    max_user = group.user.max_user_connections
    if not max_db and not max_user:
        return None
    db = user = 0
    for g in groups:
        n = sum(len(p.servers) for p in g.all_pools())
        if g.name == group.name:
            db += n
        if g.user.username == group.user.username:
            user += n
    if max_db and db >= max_db:
        return "max_db_connections"
    if max_user and user >= max_user:
        return "max_user_connections"
    return None
