"""Health checks, bans, primary detection and replica lag.

The ``Health`` part of the engine. PgCat's rules, then pgsansio's extensions:

- **Health check before use** (PgCat): a server connection idle longer than
  ``healthcheck_delay`` gets ``;`` before a client has it; no answer within
  ``healthcheck_timeout``, or an error, bans its address and the client is served
  from another one. The client waits at the head of the pool's queue meanwhile, so a
  good answer simply hands it the connection.
- **Bans** (PgCat): an address is banned for ``ban_time`` seconds after a failed
  health check, a failed connect or login, a server lost under a client, a statement
  timeout, or an admin ``BAN``. Banned addresses get no new clients; a ban ends on its
  deadline. The primary is never banned (it is the only place writes can go); when
  every replica of a shard is banned they are all unbanned (a guard against a
  false alarm emptying the read pool), as PgCat does. Bans are per address
  (``host:port``), shared by every pool and user that lists it: a dead server is dead
  for all of them.
- **Probes** (extension, ``general.healthcheck_interval``): every address gets its own
  connection, logged in as the first user of the first pool listing it, that runs
  ``SELECT pg_is_in_recovery()`` and then the WAL position each interval, on a
  deadline (``max(healthcheck_timeout, connect_timeout)``). A failed probe bans a
  replica, so a dead server is found without a client hitting it.
- **Primary detection** (extension, role ``"auto"``): the auto server not in recovery
  is the primary. When it fails its probe no primary is known and writes fail at once
  with 57P03 (never a hang); when a replica is promoted its next probe makes it the
  primary. If two auto servers both claim to be primary (an old primary restarted
  without being turned into a standby), the incumbent keeps the role and the other is
  used for nothing, with a warning.
- **Replica lag** (extension, ``replica_max_lag_bytes`` / ``replica_max_lag_ms``): the
  byte lag is the primary's ``pg_current_wal_lsn()`` minus the replica's
  ``pg_last_wal_replay_lsn()``; the time lag is how long ago the primary was at a
  position the replica has not replayed yet, from the primary's probe history (so an
  idle primary never makes its replicas look late, the trap of comparing
  ``pg_last_xact_replay_timestamp()`` with ``now()``). It is exact to one probe
  interval. A lagging replica gets no reads until a probe finds it caught up.

Probes run only when asked for: ``healthcheck_interval`` > 0, or an ``"auto"`` server
or a lag bound is configured (then every 1000 ms unless set).

For the admin console (``SHOW BANS``, ``BAN``, ``UNBAN``): ``engine.bans`` maps
``(host, port)`` to a :class:`Ban` (``reason``, ``at`` and ``until`` in the engine's
monotonic seconds); ``Lending.ban(address, seconds, "admin ban")`` returns False for
a primary (never banned) and :meth:`Health.unban` False if it was not banned.
``engine.roles`` holds what probes found for ``"auto"`` servers. Health keeps the
state; :mod:`._probes` runs the probe connections and :mod:`._lending` acts on bans.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

from ._objects import (
    Pool,
)

if TYPE_CHECKING:
    from pgsansio.config.model import ServerAddress

    from ._context import Context

__all__ = ["BANNED", "KEPT", "NOT_BANNED", "Ban", "Health", "Key", "key_of", "lsn_to_int"]

NOT_BANNED, KEPT, BANNED = 0, 1, 2  # what Health.ban did

Key = tuple[str, int]  # an address: (host, port)

_HISTORY = 256  # primary WAL positions kept per primary for the time lag


def key_of(target: Pool | ServerAddress | Key) -> Key:
    """The address (host, port) of a pool, a configured server or an address."""
    if isinstance(target, Pool):
        return (target.address.host, target.address.port)
    if isinstance(target, tuple):
        return target
    return (target.host, target.port)


def lsn_to_int(text: str) -> int:
    """``16/B374D848`` -> a byte position (PostgreSQL's pg_lsn text form)."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


class Ban:
    """One banned address: why, since when, until when (monotonic seconds)."""

    __slots__ = ("address", "at", "reason", "until")

    def __init__(self, address: Key, reason: str, at: float, until: float) -> None:
        self.address = address
        self.reason = reason
        self.at = at
        self.until = until


class Health:
    """Owns the bans, the roles probes found, the WAL positions and which replicas lag."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        # bans: by address; roles: what probes found ("primary", "replica", None: down)
        self.bans: dict[Key, Ban] = {}
        self.roles: dict[Key, str | None] = {}
        self._primary_since: dict[Key, float] = {}
        # last WAL position seen (current or replayed), when
        self._lsn: dict[Key, tuple[int, float]] = {}
        self._primary_history: dict[Key, deque[tuple[float, int]]] = {}
        self.lagging: set[tuple[str, Key]] = set()
        self.down: set[Key] = set()  # addresses whose last probe round failed

    # === roles =====================================================================

    def role(self, address: ServerAddress) -> str | None:
        """``primary`` / ``replica`` as configured or found; None: not known (down)."""
        if address.role != "auto":
            return address.role
        role = self.roles.get((address.host, address.port))
        if role == "primary" and not self._incumbent((address.host, address.port)):
            return None  # a second server claiming to be primary: used for nothing
        return role

    def _incumbent(self, key: Key) -> bool:
        since = self._primary_since.get(key)
        if since is None:
            return False
        return all(
            other == key or t > since or (t == since and other > key)
            for other, t in self._primary_since.items()
        )

    def is_primary(self, key: Key) -> bool:
        for pool in self.ctx.config.pools.values():
            for shard in pool.shards:
                for a in shard.servers:
                    if (a.host, a.port) == key and self.role(a) == "primary":
                        return True
        return False

    # === bans ======================================================================

    def ban(self, key: Key, seconds: float | None, reason: str) -> int:
        """Ban an address for ``seconds`` (default ``ban_time``): NOT_BANNED for a
        primary (never banned), KEPT if a longer ban already runs, else BANNED.

        Moving the address's waiting clients elsewhere is the caller's (Routes.ban).
        """
        if self.is_primary(key):
            return NOT_BANNED
        duration = self.ctx.config.general.ban_time if seconds is None else seconds
        until = self.ctx.now + duration
        old = self.bans.get(key)
        if old is not None and old.until >= until:
            return KEPT
        self.bans[key] = ban = Ban(key, reason, self.ctx.now, until)
        if old is None:
            self.ctx.log(
                logging.WARNING,
                f"server {key[0]}:{key[1]} banned for {duration:g} s: {reason}; "
                "it gets no new clients until then",
            )
        self.ctx.at(until, lambda: self._ban_expired(key, ban))
        return BANNED

    def unban(self, address: Key, why: str = "unbanned by the admin") -> bool:
        ban = self.bans.pop(address, None)
        if ban is None:
            return False
        self.ctx.log(logging.INFO, f"server {address[0]}:{address[1]} {why}")
        return True

    def _ban_expired(self, key: Key, ban: Ban) -> None:
        if self.bans.get(key) is ban:
            self.unban(key, "is no longer banned (ban_time is over)")

    def probe_down(self, key: Key) -> bool:
        """Our probe of ``key`` failed its last round (so a ban is no false alarm)."""
        return key in self.down

    def banned(self, address: ServerAddress) -> bool:
        return (address.host, address.port) in self.bans

    # === what probes find (see :mod:`._probes`) =====================================

    def record_lsn(self, key: Key, lsn: int) -> None:
        """The WAL position (current or replayed) a probe just read at ``key``."""
        self._lsn[key] = (lsn, self.ctx.now)

    def role_lost(self, key: Key, reason: str) -> None:
        """The probe of ``key`` failed: an ``"auto"`` server's role is no longer known."""
        was = self.roles.get(key)
        if self.auto(key):
            self.roles[key] = None
            self._primary_since.pop(key, None)
            if was == "primary":
                self.ctx.log(
                    logging.ERROR,
                    f"primary {key[0]}:{key[1]} failed its probe ({reason}): no primary is "
                    "known, writes fail until one is found",
                )

    def role_found(self, key: Key, in_recovery: bool | None) -> None:
        """The probe of ``key`` answered: its role (``"auto"`` servers) and WAL history."""
        self.down.discard(key)
        if self.auto(key):
            role = "replica" if in_recovery else "primary"
            was = self.roles.get(key)
            self.roles[key] = role
            if role == "primary":
                self._primary_since.setdefault(key, self.ctx.now)
                if not self._incumbent(key):
                    self.ctx.log(
                        logging.WARNING,
                        f"server {key[0]}:{key[1]} is not in recovery but another server "
                        "is the primary: it gets no clients until one of them goes away",
                    )
                elif was != "primary":
                    self.ctx.log(logging.WARNING, f"server {key[0]}:{key[1]} is the primary")
                    self.bans.pop(key, None)  # never banned as primary
            else:
                self._primary_since.pop(key, None)
                if was != role:
                    self.ctx.log(logging.INFO, f"server {key[0]}:{key[1]} is a replica")
        sample = self._lsn.get(key)
        lsn = sample[0] if sample is not None else None
        if lsn is not None and in_recovery is False:
            history = self._primary_history.setdefault(key, deque(maxlen=_HISTORY))
            if not history or history[-1][1] != lsn:
                history.append((self.ctx.now, lsn))
        self.lag_changed(key)

    def auto(self, key: Key) -> bool:
        return any(
            (a.host, a.port) == key and a.role == "auto"
            for p in self.ctx.config.pools.values()
            for s in p.shards
            for a in s.servers
        )

    # === replica lag ===============================================================

    def lag_bounds(self) -> bool:
        """Whether probes must read WAL positions (lag bounds, or read-your-writes)."""
        return any(
            p.replica_max_lag_ms or p.replica_max_lag_bytes or p.read_your_writes
            for p in self.ctx.config.pools.values()
        )

    def replayed(self, key: Key) -> int | None:
        """The WAL position ``key`` last reported (replayed, for a replica)."""
        sample = self._lsn.get(key)
        return sample[0] if sample is not None else None

    def _lag(self, primary: Key, replica: Key) -> tuple[float, int] | None:
        """(seconds, bytes) ``replica`` was behind ``primary`` when last probed; None if
        not known. Both are measured against the primary's position at that moment (not
        a later one), so writes between the two probes do not count as lag."""
        sample = self._lsn.get(replica)
        history = self._primary_history.get(primary)
        if sample is None or not history:
            return None
        replayed, seen = sample
        then = [lsn for at, lsn in history if at <= seen]
        if not then:
            return None
        behind = max(0, then[-1] - replayed)
        if not behind:
            return 0.0, 0
        # The oldest primary position the replica has not replayed: it is that late.
        at = next(at for at, lsn in history if lsn > replayed)
        return seen - at, behind

    def lag_changed(self, key: Key) -> None:
        """Re-evaluate which replicas are too far behind, per pool bound."""
        if not self.lag_bounds():
            return
        for pool_cfg in self.ctx.config.pools.values():
            max_ms, max_bytes = pool_cfg.replica_max_lag_ms, pool_cfg.replica_max_lag_bytes
            if not max_ms and not max_bytes:
                continue
            for shard in pool_cfg.shards:
                primary = next((a for a in shard.servers if self.role(a) == "primary"), None)
                for a in shard.servers:
                    k = (a.host, a.port)
                    if self.role(a) != "replica":
                        self.lagging.discard((pool_cfg.name, k))
                        continue
                    lag = self._lag((primary.host, primary.port), k) if primary else None
                    late = lag is not None and (
                        (max_ms and lag[0] * 1000 > max_ms) or (max_bytes and lag[1] > max_bytes)
                    )
                    tag = (pool_cfg.name, k)
                    if late and tag not in self.lagging:
                        assert lag is not None
                        self.lagging.add(tag)
                        self.ctx.log(
                            logging.WARNING,
                            f"replica {k[0]}:{k[1]} is {lag[0] * 1000:.0f} ms / {lag[1]} bytes "
                            f'behind its primary: no reads from pool "{pool_cfg.name}" until '
                            "it catches up",
                        )
                    elif not late and tag in self.lagging:
                        self.lagging.discard(tag)
                        self.ctx.log(logging.INFO, f"replica {k[0]}:{k[1]} has caught up")
