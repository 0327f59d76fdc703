"""SHOW for the admin console: PgBouncer 1.25's column sets, built from the engine's state.

The ``Show`` part of the engine, called by :class:`~._admin.Admin`; see that module
for the console's rules (column types, ``connect_time`` as an age, row naming).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from pgsansio import __version__
from pgsansio.config.model import PoolConfig, ServerAddress
from pgsansio.protocol import (
    CommandComplete,
    DataRow,
    NoticeResponse,
    ReadyForQuery,
    RowDescription,
)

from ._objects import (
    Client,
    ServerConn,
)
from ._states import C_READY, ClientState, ServerState
from ._stats import STATS_COLUMNS, TOTAL_COLUMNS, DbStats

if TYPE_CHECKING:
    from ._context import Context
    from ._health import Health
    from ._pooling import Pools
    from ._stats import Stats

__all__ = ["INT8", "NUMERIC", "TEXT", "Show"]

TEXT, INT8, NUMERIC, INT4 = 25, 20, 1700, 23
Columns = Sequence[tuple[str, int]]
Row = Sequence[object]

_POOL_COUNTS = (
    *("cl_idle", "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "sv_tested"),
    *("sv_login", "maxwait", "maxwait_us", "cl_pinned"),
)
_NOT_SECRET = ("admin_username", "auth_query_user")
_RESTART_ONLY = frozenset({"host", "port", "worker_threads"})

HELP = """\
SHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION|STATE|BANS
SHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS|LISTS
SHOW SOCKETS|ACTIVE_SOCKETS|FDS|MEM|DNS_HOSTS|DNS_ZONES|PEERS|PEER_POOLS
SET key = arg (accepted and ignored)
PAUSE [<db>]
RESUME [<db>]
DISABLE <db>
ENABLE <db>
RECONNECT [<db>]
WAIT_CLOSE [<db>]
KILL [<db>]
KILL_CLIENT <id>
BAN <host>[:<port>] <seconds>
UNBAN <host>[:<port>]
RELOAD
SHUTDOWN
SHUTDOWN WAIT_FOR_SERVERS
SHUTDOWN WAIT_FOR_CLIENTS"""

_SOCKET_COLUMNS: Columns = (
    ("type", TEXT),
    ("user", TEXT),
    ("database", TEXT),
    ("replication", TEXT),
    ("state", TEXT),
    ("addr", TEXT),
    ("port", INT8),
    ("local_addr", TEXT),
    ("local_port", INT8),
    ("connect_time", TEXT),
    ("request_time", TEXT),
    ("wait", INT8),
    ("wait_us", INT8),
    ("close_needed", INT8),
    ("ptr", TEXT),
    ("link", TEXT),
    ("remote_pid", INT8),
    ("tls", TEXT),
    ("application_name", TEXT),
    ("prepared_statements", INT8),
    ("id", INT8),
)
# pgsansio: why a client keeps its server in transaction mode (see _pinning), or "".
_CLIENT_COLUMNS: Columns = (*_SOCKET_COLUMNS, ("pinned", TEXT))
_SERVER_STATES = {
    ServerState.ACTIVE: "active",
    ServerState.IDLE: "idle",
    ServerState.INTERNAL: "tested",
}


def _split_peer(peer: str) -> tuple[str, int | None]:
    host, _, port = peer.rpartition(":")
    if host and port.isdigit():
        return host.strip("[]"), int(port)
    return peer, None


def _ago(now: float, then: float) -> str:
    return f"{max(0.0, now - then):.3f} s ago"


def _wait(now: float, since: float | None) -> tuple[int, int]:
    if since is None:
        return 0, 0
    waited = max(0.0, now - since)
    return int(waited), int((waited - int(waited)) * 1_000_000)


class Show:
    """Owns no tables: builds SHOW rows from the parts' state."""

    def __init__(self, ctx: Context, *, stats: Stats, pools: Pools, health: Health) -> None:
        self.ctx = ctx
        self.stats = stats
        self.pools = pools
        self.health = health
        self._taken: list[tuple[Columns, list[Row], str]] | None = None  # see table()
        self.hidden: int | None = None
        """A client left out of CLIENTS and SOCKETS: another worker's console session
        asking this one (see ._peers), which is not the operator's business."""

    def table(self, item: str, c: Client) -> tuple[Columns, list[Row], str] | None:
        """``SHOW item``'s columns, rows and tag, answering nobody (the console of a
        pooler of several workers merges them with the others'; see ._peers). None
        for an unknown item and for HELP, which is no table."""
        show = _SHOW.get(item)
        if show is None or item == "HELP":
            return None
        self._taken = []
        try:
            show(self, c)
            taken = self._taken
        finally:
            self._taken = None
        return taken[0] if taken else None

    def rows(self, c: Client, columns: Columns, rows: Sequence[Row], tag: str = "SHOW") -> None:
        if self._taken is not None:
            self._taken.append((columns, list(rows), tag))
            return
        self.ctx.send_client(c, RowDescription([(n, 0, 0, oid, -1, -1, 0) for n, oid in columns]))
        for row in rows:
            self.ctx.send_client(c, DataRow([None if v is None else str(v).encode() for v in row]))
        self.ctx.send_client(c, CommandComplete(tag))
        self.ctx.send_client(c, ReadyForQuery("I"))

    def _show_help(self, c: Client) -> None:
        self.ctx.send_client(c, NoticeResponse.build("00000", "Console usage", "NOTICE", D=HELP))
        self.ctx.send_client(c, CommandComplete("SHOW"))
        self.ctx.send_client(c, ReadyForQuery("I"))

    def _show_version(self, c: Client) -> None:
        # Exporters look for "PgBouncer X.Y.Z" to pick the columns they expect.
        version = f"pgsansio {__version__} (console of PgBouncer 1.25.0)"
        self.rows(c, (("version", TEXT),), [(version,)])

    def _show_state(self, c: Client) -> None:
        every = bool(self.ctx.config.pools) and all(
            p in self.ctx.life.paused for p in self.ctx.config.pools
        )
        rows = [
            ("active", "no" if every else "yes"),
            ("paused", "yes" if every else "no"),
            ("suspended", "no"),
        ]
        self.rows(c, (("key", TEXT), ("value", TEXT)), rows)

    def _show_config(self, c: Client) -> None:
        general = self.ctx.config.general
        rows = []
        for f in dataclasses.fields(general):
            value = getattr(general, f.name)
            default = f.default
            if ("password" in f.name or "secret" in f.name) and f.name not in _NOT_SECRET:
                value = "********" if value else ""
                default = ""
            rows.append(
                (
                    f.name,
                    _text(value),
                    _text(default),
                    "no" if f.name in _RESTART_ONLY else "yes",
                )
            )
        columns = (("key", TEXT), ("value", TEXT), ("default", TEXT), ("changeable", TEXT))
        self.rows(c, columns, rows)

    def _show_databases(self, c: Client) -> None:
        client_counts: dict[str, int] = {}
        for x in self.ctx.clients.values():
            if x.group is not None:
                client_counts[x.group.name] = client_counts.get(x.group.name, 0) + 1
        rows: list[Row] = []
        for name, pool_cfg in self.ctx.config.pools.items():
            users = list(pool_cfg.users.values())
            for (shard_index, a), row_name in self.address_names(pool_cfg).items():
                current = sum(
                    len(p.servers)
                    for g in self.pools.groups.values()
                    if g.name == name
                    for p in g.all_pools()
                    if p.address == a and p.shard == shard_index
                )
                forced = {u.server_username for u in users}
                rows.append(
                    (
                        row_name,
                        a.host,
                        a.port,
                        pool_cfg.shards[shard_index].database,
                        forced.pop() if len(forced) == 1 else None,
                        max((u.pool_size for u in users), default=0),
                        max((u.min_pool_size for u in users), default=0),
                        pool_cfg.reserve_pool_size,
                        max((u.server_lifetime for u in users), default=0) // 1000,
                        pool_cfg.pool_mode,
                        pool_cfg.load_balancing_mode,
                        pool_cfg.max_db_connections,
                        current,
                        0,
                        client_counts.get(name, 0),
                        int(name in self.ctx.life.paused),
                        int(name in self.ctx.life.disabled),
                    )
                )
        columns = (
            ("name", TEXT),
            ("host", TEXT),
            ("port", INT8),
            ("database", TEXT),
            ("force_user", TEXT),
            ("pool_size", INT8),
            ("min_pool_size", INT8),
            ("reserve_pool_size", INT8),
            ("server_lifetime", INT8),
            ("pool_mode", TEXT),
            ("load_balance_hosts", TEXT),
            ("max_connections", INT8),
            ("current_connections", INT8),
            ("max_client_connections", INT8),
            ("current_client_connections", INT8),
            ("paused", INT8),
            ("disabled", INT8),
        )
        self.rows(c, columns, rows)

    def address_names(self, pool_cfg: PoolConfig) -> dict[tuple[int, ServerAddress], str]:
        """PgCat's name for each (shard, address) of a pool: ``<pool>_shard_<n>_primary``
        or ``_replica_<i>``; a pool of one address keeps its own name."""
        addresses = [(sh.index, a) for sh in pool_cfg.shards for a in sh.servers]
        if len(addresses) == 1:
            return {addresses[0]: pool_cfg.name}
        names: dict[tuple[int, ServerAddress], str] = {}
        replica_index: dict[int, int] = {}
        for shard_index, a in addresses:
            if self.health.role(a) == "primary":
                names[shard_index, a] = f"{pool_cfg.name}_shard_{shard_index}_primary"
            else:
                i = replica_index.get(shard_index, 0)
                replica_index[shard_index] = i + 1
                names[shard_index, a] = f"{pool_cfg.name}_shard_{shard_index}_replica_{i}"
        return names

    def pool_rows(self) -> list[tuple[str, str, dict[str, int], str, str]]:
        """Per (database, user): the SHOW POOLS counts (shared with /metrics)."""
        counts: dict[tuple[str, str], dict[str, int]] = {}
        oldest: dict[tuple[str, str], float] = {}
        for key, g in self.pools.groups.items():
            n = counts[key] = dict.fromkeys(_POOL_COUNTS, 0)
            for p in g.all_pools():
                _count_servers(n, p.servers)
        for x in self.ctx.clients.values():
            if x.group is None or x.admin:
                continue
            key = (x.group.name, x.group.user.username)
            found = counts.get(key)
            if found is None:
                continue
            n = found
            if x.waiting_since is not None:
                n["cl_waiting"] += 1
                oldest[key] = min(oldest.get(key, x.waiting_since), x.waiting_since)
            elif x.state is ClientState.READY:
                n["cl_active"] += 1
                if x.server is None:
                    n["cl_idle"] += 1
            if x.pin is not None and x.pin.pinned:
                n["cl_pinned"] += 1
        for key, since in oldest.items():
            counts[key]["maxwait"], counts[key]["maxwait_us"] = _wait(self.ctx.now, since)
        return [
            (key[0], key[1], counts[key], g.user.pool_mode, g.cfg.load_balancing_mode)
            for key, g in self.pools.groups.items()
        ]

    def shard_pool_rows(self) -> list[tuple[str, str, dict[str, int], str, str]]:
        """One row per (shard, address) of each pool with more than one address, as PgCat
        lists them, named as SHOW DATABASES names them. A client counts on the address
        whose server it holds (a cross-shard query's legs count as one client on each
        shard), or waits on; an idle client holds no shard and shows only in its pool's
        row, so the shard rows add up to the pool row's servers, not its clients."""
        out: list[tuple[str, str, dict[str, int], str, str]] = []
        for g in self.pools.groups.values():
            names = self.address_names(g.cfg)
            if len(names) == 1:
                continue
            for p in g.all_pools():
                name = names.get((p.shard, p.address))
                if name is None:  # an address a reload is removing
                    continue
                n = dict.fromkeys(_POOL_COUNTS, 0)
                _count_servers(n, p.servers)
                holders = {s.client for s in p.servers if s.client is not None}
                n["cl_active"] = len(holders)
                n["cl_pinned"] = sum(1 for x in holders if x.pin is not None and x.pin.pinned)
                n["cl_waiting"] = len(p.waiters)
                since = [x.waiting_since for x in p.waiters if x.waiting_since is not None]
                if since:
                    n["maxwait"], n["maxwait_us"] = _wait(self.ctx.now, min(since))
                out.append((name, g.user.username, n, g.user.pool_mode, g.cfg.load_balancing_mode))
        return out

    def _show_pools(self, c: Client) -> None:
        rows = [
            (
                db,
                user,
                n["cl_active"],
                n["cl_waiting"],
                0,
                0,
                n["sv_active"],
                0,
                0,
                n["sv_idle"],
                n["sv_used"],
                n["sv_tested"],
                n["sv_login"],
                n["maxwait"],
                n["maxwait_us"],
                mode,
                balance,
                n["cl_pinned"],
            )
            for db, user, n, mode, balance in self.pool_rows() + self.shard_pool_rows()
        ]
        columns = (
            ("database", TEXT),
            ("user", TEXT),
            ("cl_active", INT8),
            ("cl_waiting", INT8),
            ("cl_active_cancel_req", INT8),
            ("cl_waiting_cancel_req", INT8),
            ("sv_active", INT8),
            ("sv_active_cancel", INT8),
            ("sv_being_canceled", INT8),
            ("sv_idle", INT8),
            ("sv_used", INT8),
            ("sv_tested", INT8),
            ("sv_login", INT8),
            ("maxwait", INT8),
            ("maxwait_us", INT8),
            ("pool_mode", TEXT),
            ("load_balance_hosts", TEXT),
            ("cl_pinned", INT8),  # pgsansio: clients keeping their server (see _pinning)
        )
        self.rows(c, columns, rows)

    def _show_clients(self, c: Client) -> None:
        self.rows(c, _CLIENT_COLUMNS, self._client_rows(pinned=True))

    def _client_rows(self, *, pinned: bool = False) -> list[Row]:
        """CLIENTS' rows; ``pinned`` adds pgsansio's last column (SOCKETS has none)."""
        general = self.ctx.config.general
        rows: list[Row] = []
        for x in sorted(self.ctx.clients.values(), key=lambda x: x.cid):
            if x.cid == self.hidden:
                continue
            if x.waiting_since is not None:
                state = "waiting"
            elif x.state is not ClientState.READY:
                state = "login"
            elif x.server is None:
                state = "idle"
            else:
                state = "active"
            host, port = _split_peer(x.peer)
            wait, wait_us = _wait(self.ctx.now, x.waiting_since)
            request = x.query_start if x.query_start is not None else x.connected
            rows.append(
                (
                    "C",
                    x.username,
                    x.database,
                    "none",
                    state,
                    host,
                    port,
                    general.host,
                    general.port,
                    _ago(self.ctx.now, x.connected),
                    _ago(self.ctx.now, request),
                    wait,
                    wait_us,
                    0,
                    f"c{x.cid}",
                    f"s{x.server.sid}" if x.server is not None else None,
                    x.cancel_key[0] or None,
                    "",
                    x.params.get("application_name", ""),
                    len(x.prepared),
                    x.cid,
                )
            )
            if pinned:
                why = x.pin.describe() if x.pin is not None and x.pin.pinned else ""
                rows[-1] = (*rows[-1], why)
        return rows

    def _show_servers(self, c: Client) -> None:
        self.rows(c, _SOCKET_COLUMNS, self._server_rows())

    def _server_rows(self) -> list[Row]:
        rows = []
        for s in sorted(self.ctx.servers.values(), key=lambda s: s.sid):
            if s.group is None or s.pool is None:
                continue  # a cancel request or an auth_query lookup in flight
            rows.append(self._server_row(s))
        return rows

    def _show_sockets(self, c: Client, *, active: bool = False) -> None:
        """PgBouncer's SOCKETS: CLIENTS and SERVERS with its buffer columns, which
        have no counterpart here (pgsansio's buffers are the runtime's): 0."""
        state = _SOCKET_COLUMNS.index(("state", TEXT))
        rows = [
            (*row, 0, 0, 0, 0, 0, 0, 0)
            for row in [*self._client_rows(), *self._server_rows()]
            if not active or row[state] in ("active", "waiting")
        ]
        self.rows(c, (*_SOCKET_COLUMNS, *_BUFFER_COLUMNS), rows)

    def _show_active_sockets(self, c: Client) -> None:
        self._show_sockets(c, active=True)

    def _show_empty(self, c: Client, item: str) -> None:
        """Views of what pgsansio does not have (its own DNS cache, peers, slab
        allocator, descriptors to hand over): PgBouncer's columns, no rows."""
        self.rows(c, _EMPTY_VIEWS[item], [])

    def _server_row(self, s: ServerConn) -> Row:
        assert s.group is not None
        state = _SERVER_STATES.get(s.state, "new")
        return (
            "S",
            s.group.user.backend_username,
            s.group.name,
            "none",
            state,
            s.address.host,
            s.address.port,
            None,
            None,
            _ago(self.ctx.now, s.created),
            _ago(self.ctx.now, s.last_used),
            0,
            0,
            int(s.close_needed),
            f"s{s.sid}",
            f"c{s.client.cid}" if s.client is not None else None,
            s.backend_key[0] if s.backend_key is not None else None,
            "",
            s.params.get("application_name", ""),
            len(s.prepared),
            s.sid,
        )

    def _show_users(self, c: Client) -> None:
        users: dict[str, list[int]] = {}
        modes: dict[str, tuple[int, str, int]] = {}
        for g in self.pools.groups.values():
            u = g.user
            entry = users.setdefault(u.username, [0, 0])
            entry[0] += sum(len(p.servers) for p in g.all_pools())
            modes.setdefault(u.username, (u.pool_size, u.pool_mode, u.max_user_connections))
        for x in self.ctx.clients.values():
            if x.group is not None and x.username in users:
                users[x.username][1] += 1
        rows = [
            (name, modes[name][0], 0, modes[name][1], modes[name][2], servers, 0, clients)
            for name, (servers, clients) in sorted(users.items())
        ]
        columns = (
            ("name", TEXT),
            ("pool_size", INT8),
            ("reserve_pool_size", INT8),
            ("pool_mode", TEXT),
            ("max_user_connections", INT8),
            ("current_connections", INT8),
            ("max_user_client_connections", INT8),
            ("current_client_connections", INT8),
        )
        self.rows(c, columns, rows)

    def _show_lists(self, c: Client) -> None:
        users = {u for p in self.ctx.config.pools.values() for u in p.users}
        ready = sum(1 for x in self.ctx.clients.values() if x.state is C_READY)
        rows = [
            ("databases", len(self.ctx.config.pools)),
            ("users", len(users)),
            ("peers", 0),
            ("pools", len(self.pools.groups)),
            ("peer_pools", 0),
            ("free_clients", 0),
            ("used_clients", ready),
            ("login_clients", len(self.ctx.clients) - ready),
            ("free_servers", 0),
            ("used_servers", len(self.ctx.servers)),
            ("dns_names", 0),
            ("dns_zones", 0),
            ("dns_queries", 0),
            ("dns_pending", 0),
        ]
        self.rows(c, (("list", TEXT), ("items", INT8)), rows)

    def _stats_rows(self) -> list[tuple[str, DbStats]]:
        names = list(self.ctx.config.pools) + [
            n for n in self.stats.by_db if n not in self.ctx.config.pools
        ]
        return [(n, self.stats.by_db.get(n) or DbStats()) for n in names]

    def _show_stats(self, c: Client) -> None:
        columns: list[tuple[str, int]] = [("database", TEXT)]
        columns += [(total, NUMERIC) for _, total, _ in STATS_COLUMNS]
        columns += [(avg, NUMERIC) for _, _, avg in STATS_COLUMNS]
        rows = []
        for name, st in self._stats_rows():
            totals = st.totals()
            rows.append(
                (
                    name,
                    *(totals[a] for a, _ in TOTAL_COLUMNS),
                    *(st.averages[a] for a, _ in TOTAL_COLUMNS),
                )
            )
        self.rows(c, columns, rows)

    def _show_stats_totals(self, c: Client) -> None:
        columns = [("database", TEXT), *((col, NUMERIC) for _, col in TOTAL_COLUMNS)]
        rows = [
            (name, *(st.totals()[a] for a, _ in TOTAL_COLUMNS)) for name, st in self._stats_rows()
        ]
        self.rows(c, columns, rows)

    def _show_stats_averages(self, c: Client) -> None:
        columns = [("database", TEXT), *((col, NUMERIC) for _, col in TOTAL_COLUMNS)]
        rows = [
            (name, *(st.averages[a] for a, _ in TOTAL_COLUMNS)) for name, st in self._stats_rows()
        ]
        self.rows(c, columns, rows)

    def _show_totals(self, c: Client) -> None:
        total = DbStats()
        for st in self.stats.by_db.values():
            total.absorb(st)
        totals = total.totals()
        rows: list[Row] = [(name, totals[a]) for a, name, _ in STATS_COLUMNS]
        rows += [(name, total.averages[a]) for a, _, name in STATS_COLUMNS]
        self.rows(c, (("name", TEXT), ("value", NUMERIC)), rows)

    def _show_bans(self, c: Client) -> None:
        rows = []
        for (host, port), ban in sorted(self.health.bans.items()):
            until, reason, since = ban.until, ban.reason, ban.at
            for g in self.pools.groups.values():
                for p in g.all_pools():
                    a = p.address
                    if (a.host, a.port) == (host, port):
                        rows.append(
                            (
                                g.name,
                                g.user.username,
                                self.health.role(a) or "unknown",
                                f"{host}:{port}",
                                reason,
                                _ago(self.ctx.now, since),
                                round(until - since),
                                round(until - self.ctx.now),
                            )
                        )
        columns = (
            ("db", TEXT),
            ("user", TEXT),
            ("role", TEXT),
            ("host", TEXT),
            ("reason", TEXT),
            ("ban_time", TEXT),
            ("ban_duration_seconds", INT8),
            ("ban_remaining_seconds", INT8),
        )
        self.rows(c, columns, rows)

    def run(self, item: str, c: Client) -> bool:
        """Answer ``SHOW item``; False if there is no such item."""
        show = _SHOW.get(item)
        if show is None:
            return False
        show(self, c)
        return True


def _empty_view(item: str) -> Callable[[Show, Client], None]:
    return lambda show, c: show._show_empty(c, item)


# Built after the class, not in its body: a class compiled with mypyc cannot name its
# own methods while it is being built (docs/compiled.md).
_SHOW: dict[str, Callable[[Show, Client], None]] = {
    "HELP": Show._show_help,
    "VERSION": Show._show_version,
    "STATE": Show._show_state,
    "CONFIG": Show._show_config,
    "DATABASES": Show._show_databases,
    "POOLS": Show._show_pools,
    "CLIENTS": Show._show_clients,
    "SERVERS": Show._show_servers,
    "USERS": Show._show_users,
    "LISTS": Show._show_lists,
    "STATS": Show._show_stats,
    "STATS_TOTALS": Show._show_stats_totals,
    "STATS_AVERAGES": Show._show_stats_averages,
    "TOTALS": Show._show_totals,
    "BANS": Show._show_bans,
    "SOCKETS": Show._show_sockets,
    "ACTIVE_SOCKETS": Show._show_active_sockets,
    **{
        item: _empty_view(item)
        for item in ("FDS", "MEM", "DNS_HOSTS", "DNS_ZONES", "PEERS", "PEER_POOLS")
    },
}


_BUFFER_COLUMNS: Columns = tuple(
    (name, INT8)
    for name in (
        "recv_pos",
        "pkt_pos",
        "pkt_remain",
        "send_pos",
        "send_remain",
        "pkt_avail",
        "send_avail",
    )
)

_EMPTY_VIEWS: dict[str, Columns] = {
    "FDS": tuple(
        (name, INT8 if name in ("fd", "port", "cancel", "link") else TEXT)
        for name in [
            "fd",
            "task",
            "user",
            "database",
            "addr",
            "port",
            "cancel",
            "link",
            "client_encoding",
            "std_strings",
            "datestyle",
            "timezone",
            "password",
            "scram_client_key",
            "scram_server_key",
        ]
    ),
    "MEM": (("name", TEXT), ("size", INT8), ("used", INT8), ("free", INT8), ("memtotal", INT8)),
    "DNS_HOSTS": (("hostname", TEXT), ("ttl", INT8), ("addrs", TEXT)),
    "DNS_ZONES": (("zonename", TEXT), ("serial", INT8), ("count", INT8)),
    "PEERS": (("peer_id", INT8), ("host", TEXT), ("port", INT8), ("pool_size", INT8)),
    "PEER_POOLS": tuple(
        (name, INT8)
        for name in (
            "peer_id",
            "cl_active_cancel_req",
            "cl_waiting_cancel_req",
            "sv_active_cancel",
            "sv_login",
        )
    ),
}


def _count_servers(n: dict[str, int], servers: Iterable[ServerConn]) -> None:
    for s in servers:
        state = s.state
        if state is ServerState.ACTIVE:
            n["sv_active"] += 1
        elif state is ServerState.IDLE:
            n["sv_idle"] += 1
        elif state is ServerState.INTERNAL:
            n["sv_tested"] += 1
        elif state in (ServerState.CONNECTING, ServerState.LOGIN):
            n["sv_login"] += 1


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
