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
monotonic seconds); ``engine._ban(address, seconds, "admin ban")`` returns False for a
primary (never banned) and ``engine._unban((host, port))`` False if it was not banned.
``engine.roles`` holds what probes found for ``"auto"`` servers.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

from pgsansio.protocol import NEED_DATA as _NEED_DATA
from pgsansio.protocol import PAUSED as _PAUSED
from pgsansio.protocol import DataRow, ErrorResponse, Query, ReadyForQuery

from ._effects import OpenServer
from ._objects import (
    P_PROBE,
    Pool,
    ServerConn,
)
from ._states import S_CLOSED, ClientState, ServerInput, ServerState, server_to

if TYPE_CHECKING:
    from pgsansio.config_model import ServerAddress

    from ._context import Context
    from ._objects import Client
    from ._pooling import Pools
    from ._routing import Routes

__all__ = ["Ban", "Health", "Key", "lsn_to_int"]

Key = tuple[str, int]  # an address: (host, port)

DEFAULT_PROBE_INTERVAL = 1.0  # seconds, when probes are needed but no interval is set
_HISTORY = 256  # primary WAL positions kept per primary for the time lag
_RECOVERY_SQL = "SELECT pg_is_in_recovery()"
_PRIMARY_LSN_SQL = "SELECT pg_current_wal_lsn()"
_REPLICA_LSN_SQL = "SELECT pg_last_wal_replay_lsn()"


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


class Probe:
    """The monitoring connection of one address and what its last round found."""

    __slots__ = (
        "conn",
        "down",
        "gen",
        "in_recovery",
        "key",
        "phase",
        "pool",
        "retried",
        "started",
    )

    def __init__(self, key: Key, pool: Pool) -> None:
        self.key = key
        self.pool = pool  # whose user and database the probe logs in with
        self.conn: ServerConn | None = None
        self.gen = 0
        self.started: float | None = None  # a round is running since then
        self.phase = ""
        self.in_recovery: bool | None = None
        self.down = False  # the last round failed (say so once, not every interval)
        self.retried = False  # this round already replaced a lost connection


class Health:
    """Owns its state; see the module docstring."""

    # The parts it calls, wired by the Engine.
    pools: Pools
    router: Routes

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
        self._probes: dict[Key, Probe] = {}
        self._probe_interval = 0.0
        self.role_waiters: list[Client] = []

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

    def _is_primary(self, key: Key) -> bool:
        for pool in self.ctx.config.pools.values():
            for shard in pool.shards:
                for a in shard.servers:
                    if (a.host, a.port) == key and self.role(a) == "primary":
                        return True
        return False

    # === bans ======================================================================

    def ban(self, target: Pool | ServerAddress | Key, seconds: float | None, reason: str) -> bool:
        """Ban an address for ``seconds`` (default ``ban_time``); False for a primary.

        Also the admin console's ``BAN`` (reason ``"admin ban"``).
        """
        if isinstance(target, Pool):
            key: Key = (target.address.host, target.address.port)
        elif isinstance(target, tuple):
            key = target
        else:
            key = (target.host, target.port)
        if self._is_primary(key):
            return False
        duration = self.ctx.config.general.ban_time if seconds is None else seconds
        until = self.ctx.now + duration
        old = self.bans.get(key)
        if old is not None and old.until >= until:
            return True
        self.bans[key] = ban = Ban(key, reason, self.ctx.now, until)
        if old is None:
            self.ctx.log(
                logging.WARNING,
                f"server {key[0]}:{key[1]} banned for {duration:g} s: {reason}; "
                "it gets no new clients until then",
            )
        self.ctx.at(until, lambda: self._ban_expired(key, ban))
        self.router._route_waiters_away(key)
        return True

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
        probe = self._probes.get(key)
        return probe is not None and probe.down

    def banned(self, address: ServerAddress) -> bool:
        return (address.host, address.port) in self.bans

    # === losing a server ===========================================================

    # === health check before use ===================================================

    # === probes ====================================================================

    def start_probes(self) -> None:
        """(Re)build the probe of every address; called on start and reload."""
        for probe in self._probes.values():
            if probe.conn is not None:
                self.pools.close_server(probe.conn)
        self._probes = {}
        general = self.ctx.config.general
        needed = any(
            a.role == "auto"
            for p in self.ctx.config.pools.values()
            for s in p.shards
            for a in s.servers
        ) or any(
            p.replica_max_lag_ms or p.replica_max_lag_bytes for p in self.ctx.config.pools.values()
        )
        interval = general.healthcheck_interval / 1000
        if not interval and needed:
            interval = DEFAULT_PROBE_INTERVAL
        self._probe_interval = interval
        if not interval:
            return
        for group in self.pools.groups.values():
            if group.user.backend_password is None:
                continue  # auth_query users have no password of their own to log in with
            for pool in group.all_pools():
                key = (pool.address.host, pool.address.port)
                if key not in self._probes:
                    self._probes[key] = Probe(key, pool)
        missing = {
            (a.host, a.port)
            for p in self.ctx.config.pools.values()
            for s in p.shards
            for a in s.servers
        } - set(self._probes)
        for host, port in sorted(missing):
            self.ctx.log(
                logging.WARNING,
                f"server {host}:{port} cannot be probed: no user of a pool listing it has a "
                "password configured (auth_query users cannot log in on their own)",
            )
        self._probe_round()

    def _probe_round(self) -> None:
        if self.ctx.life.shutting_down or self.ctx.life.exited or not self._probes:
            return
        probes = self._probes
        for probe in probes.values():
            if probe.started is None:
                self._probe_start(probe)
        self.ctx.at(self.ctx.now + self._probe_interval, lambda: self._probe_next(probes))

    def _probe_next(self, probes: dict[Key, Probe]) -> None:
        if probes is self._probes:  # not replaced by a reload meanwhile
            self._probe_round()

    def _probe_start(self, probe: Probe) -> None:
        probe.gen += 1
        probe.started = self.ctx.now
        probe.retried = False
        gen = probe.gen
        general = self.ctx.config.general
        user = probe.pool.group.user
        timeout = max(general.healthcheck_timeout, user.connect_timeout) / 1000
        self.ctx.at(self.ctx.now + timeout, lambda: self._probe_timeout(probe, gen))
        s = probe.conn
        if s is None or s.state is ServerState.CLOSED:
            self._probe_connect(probe)
        elif s.state is ServerState.IDLE:
            self._probe_send(s, probe, "recovery", _RECOVERY_SQL)

    def _probe_connect(self, probe: Probe) -> None:
        self.ctx.next_sid += 1
        s = ServerConn(self.ctx.next_sid, probe.pool, probe.pool.address, self.ctx.now, P_PROBE)
        probe.conn = s
        self.ctx.servers[s.sid] = s
        self.ctx.out.append(OpenServer(s.sid, s.address.host, s.address.port))

    def _probe_of(self, s: ServerConn) -> Probe | None:
        probe = self._probes.get((s.address.host, s.address.port))
        return probe if probe is not None and probe.conn is s else None

    def probe_ready(self, s: ServerConn) -> None:
        """The probe connection has logged in."""
        s.login = None
        server_to(s, ServerInput.IDLED)
        probe = self._probe_of(s)
        if probe is None:
            self.pools.close_server(s)
        elif probe.started is not None:
            self._probe_send(s, probe, "recovery", _RECOVERY_SQL)

    def _probe_send(self, s: ServerConn, probe: Probe, phase: str, sql: str) -> None:
        probe.phase = phase
        server_to(s, ServerInput.QUERIED)
        s.login = None
        self.ctx.send_server(s, s.conn.send(Query(sql)))

    def read_probe(self, s: ServerConn) -> None:
        probe = self._probe_of(s)
        while s.state is not ServerState.CLOSED:
            event = s.conn.next_event()
            if event is _NEED_DATA or event is _PAUSED:
                return
            if probe is None:
                continue
            if isinstance(event, DataRow):
                value = event.values[0] if event.values else None
                s.login = value.decode("ascii", "replace") if value is not None else None
            elif isinstance(event, ErrorResponse):
                s.login = event
            elif isinstance(event, ReadyForQuery):
                server_to(s, ServerInput.IDLED)
                self._probe_answer(s, probe)  # may close it: the loop's test ends the read

    def _probe_answer(self, s: ServerConn, probe: Probe) -> None:
        answer = s.login
        s.login = None
        if isinstance(answer, ErrorResponse) or probe.started is None:
            if probe.started is not None:
                message = answer.message if isinstance(answer, ErrorResponse) else ""
                self._probe_failed(probe, f"probe query failed: {message}")
            return
        if probe.phase == "recovery":
            probe.in_recovery = answer == "t"
            if self._lag_bounds():
                sql = _REPLICA_LSN_SQL if probe.in_recovery else _PRIMARY_LSN_SQL
                self._probe_send(s, probe, "lsn", sql)
                return
        elif probe.phase == "lsn" and isinstance(answer, str):
            try:
                self._lsn[probe.key] = (lsn_to_int(answer), self.ctx.now)
            except ValueError:
                pass
        probe.started = None
        self._probe_ok(probe)

    def _probe_timeout(self, probe: Probe, gen: int) -> None:
        if probe.gen == gen and probe.started is not None and self._probes.get(probe.key) is probe:
            self._probe_failed(probe, "no answer to the probe in time")

    def probe_lost(self, s: ServerConn, error: ErrorResponse) -> None:
        probe = self._probe_of(s)
        if probe is not None:
            probe.conn = None
            if probe.started is None:
                return  # lost between rounds: the next round connects again
            if error.sqlstate == "08006" and not probe.retried:
                # The connection broke after it was made (one backend killed, say):
                # that is not yet the server being down. Try once more in this round.
                probe.retried = True
                self._probe_connect(probe)
                return
            self._probe_failed(probe, error.message or "connection lost")

    def _probe_failed(self, probe: Probe, reason: str) -> None:
        probe.started = None
        s, probe.conn = probe.conn, None
        if s is not None and s.state is not S_CLOSED:
            self.pools.close_server(s)
        key = probe.key
        was = self.roles.get(key)
        if self._auto(key):
            self.roles[key] = None
            self._primary_since.pop(key, None)
            if was == "primary":
                self.ctx.log(
                    logging.ERROR,
                    f"primary {key[0]}:{key[1]} failed its probe ({reason}): no primary is "
                    "known, writes fail until one is found",
                )
        if not self._is_primary(key):
            self.ban(key, None, f"failed health check ({reason})")
        elif not probe.down:
            self.ctx.log(logging.WARNING, f"primary {key[0]}:{key[1]} failed its probe: {reason}")
        probe.down = True
        self._lag_changed(key)

    def _probe_ok(self, probe: Probe) -> None:
        key = probe.key
        probe.down = False
        if self._auto(key):
            role = "replica" if probe.in_recovery else "primary"
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
        if lsn is not None and probe.in_recovery is False:
            history = self._primary_history.setdefault(key, deque(maxlen=_HISTORY))
            if not history or history[-1][1] != lsn:
                history.append((self.ctx.now, lsn))
        self._lag_changed(key)
        waiters, self.role_waiters = self.role_waiters, []
        for c in waiters:
            if (
                c.state is not ClientState.CLOSED
                and c.waiting_since is not None
                and c.server is None
            ):
                c.waiting_since = None
                self.router.checkout(c)

    def _auto(self, key: Key) -> bool:
        return any(
            (a.host, a.port) == key and a.role == "auto"
            for p in self.ctx.config.pools.values()
            for s in p.shards
            for a in s.servers
        )

    # === replica lag ===============================================================

    def _lag_bounds(self) -> bool:
        return any(
            p.replica_max_lag_ms or p.replica_max_lag_bytes for p in self.ctx.config.pools.values()
        )

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

    def _lag_changed(self, key: Key) -> None:
        """Re-evaluate which replicas are too far behind, per pool bound."""
        if not self._lag_bounds():
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
