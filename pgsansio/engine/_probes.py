"""Probes: a monitoring connection per address, and what each round finds.

The ``Probes`` part of the engine (an extension of PgCat's health checks, see
:mod:`._health` for the rules). With ``general.healthcheck_interval`` (or an ``"auto"``
server or a replica lag bound, then every second unless set), every address gets its
own connection, logged in as the first user of the first pool listing it, that runs
``SELECT pg_is_in_recovery()`` and then the WAL position each interval, on a deadline
(``max(healthcheck_timeout, connect_timeout)``). A connection lost between two rounds
is replaced at the next; one lost during a round is retried once before the round
counts as failed.

What a round finds goes to :class:`~._health.Health` (roles, WAL positions, lag);
what it means for clients goes to :class:`~._routing.Routes`: a failed replica is
banned there (and its waiting clients moved), and clients waiting for a primary to be
found are routed again after each answer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pgsansio.protocol import NEED_DATA as _NEED_DATA
from pgsansio.protocol import PAUSED as _PAUSED
from pgsansio.protocol import DataRow, ErrorResponse, Query, ReadyForQuery

from ._effects import OpenServer
from ._health import Key, lsn_to_int
from ._lending import Lending
from ._objects import P_PROBE, Pool, ServerConn
from ._states import S_CLOSED, ServerInput, ServerState, server_to

if TYPE_CHECKING:
    from ._context import Context
    from ._health import Health
    from ._lending import Lending
    from ._pooling import Pools

__all__ = ["DEFAULT_PROBE_INTERVAL", "Probes"]

DEFAULT_PROBE_INTERVAL = 1.0  # seconds, when probes are needed but no interval is set
_RECOVERY_SQL = "SELECT pg_is_in_recovery()"
_PRIMARY_LSN_SQL = "SELECT pg_current_wal_lsn()"
_REPLICA_LSN_SQL = "SELECT pg_last_wal_replay_lsn()"


class Probe:
    """The monitoring connection of one address and what its last round found."""

    __slots__ = (
        "conn",
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
        self.retried = False  # this round already replaced a lost connection


class Probes:
    """Owns the probe connections; see the module docstring."""

    def __init__(self, ctx: Context, *, pools: Pools, health: Health, lending: Lending) -> None:
        self.ctx = ctx
        self.pools = pools
        self.health = health
        self.lending = lending
        self._probes: dict[Key, Probe] = {}
        self._probe_interval = 0.0

    def start_probes(self) -> None:
        """(Re)build the probe of every address; called on start and reload."""
        for probe in self._probes.values():
            if probe.conn is not None:
                self.pools.close_server(probe.conn)
        self._probes = {}
        self.health.down.clear()
        general = self.ctx.config.general
        needed = (
            any(
                a.role == "auto"
                for p in self.ctx.config.pools.values()
                for s in p.shards
                for a in s.servers
            )
            or self.health.lag_bounds()
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
            if self.health.lag_bounds():
                sql = _REPLICA_LSN_SQL if probe.in_recovery else _PRIMARY_LSN_SQL
                self._probe_send(s, probe, "lsn", sql)
                return
        elif probe.phase == "lsn" and isinstance(answer, str):
            try:
                self.health.record_lsn(probe.key, lsn_to_int(answer))
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
        health = self.health
        health.role_lost(key, reason)
        if not health.is_primary(key):
            self.health.ban(key, None, f"failed health check ({reason})")
        elif not health.probe_down(key):
            self.ctx.log(logging.WARNING, f"primary {key[0]}:{key[1]} failed its probe: {reason}")
        health.down.add(key)
        health.lag_changed(key)

    def _probe_ok(self, probe: Probe) -> None:
        self.health.role_found(probe.key, probe.in_recovery)
        self.lending.retry_role_waiters()
