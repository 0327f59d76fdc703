"""The Prometheus exporter: a tiny sans-IO HTTP/1.x server for ``GET /metrics``.

The ``Metrics`` part of the engine (its Prometheus endpoint). The frontend listens on
``prometheus_exporter_port`` and reports each connection with
``metrics_connected(cid, peer, now)``; its bytes then come as ``client_data`` and its
end as ``client_closed``, like a client's. One request per connection (no keep-alive):

- ``GET /metrics`` (or HEAD) -> 200 ``text/plain; version=0.0.4`` with PgCat's metric
  families ``pgcat_stats_*`` (per pool: SHOW STATS), ``pgcat_pools_*`` (per pool and
  user: SHOW POOLS), ``pgcat_servers_*`` and ``pgcat_databases_*`` (per server address);
- with several workers (``general.workers``), the worker that is scraped asks the
  others for their samples (see ._peers) and answers for all: every sample has a
  ``worker`` label, one series per worker (``sum without (worker)`` adds them up);
- another path -> 404; another method -> 405; a request head over 8 KiB or one that is
  not HTTP/1.x -> 400. The connection is closed after the answer.

The text format is written here by hand (label values escaped as the format asks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ._effects import CloseClient, SendClient
from ._states import ServerState
from ._stats import STATS_COLUMNS

if TYPE_CHECKING:
    from ._context import Context
    from ._health import Health
    from ._listen import Listen
    from ._peers import Answer, Peers
    from ._pooling import Pools
    from ._show import Show
    from ._stats import Stats

__all__ = ["MAX_REQUEST", "SAMPLES_ITEM", "Metrics"]

SAMPLES_ITEM = "PGSANSIO_WORKER_SAMPLES"
"""The console item a worker asks the others for their samples with (see ._peers)."""

MAX_REQUEST = 8192
"""Bytes of request head we accept before answering 400."""

_HELP = {
    "stats_total_xact_count": ("counter", "Transactions run by clients"),
    "stats_total_query_count": ("counter", "Queries run by clients"),
    "stats_total_received": ("counter", "Bytes received from clients"),
    "stats_total_sent": ("counter", "Bytes sent to clients"),
    "stats_total_xact_time": ("counter", "Microseconds spent in transactions"),
    "stats_total_query_time": ("counter", "Microseconds spent in queries"),
    "stats_total_wait_time": ("counter", "Microseconds clients waited for a server"),
    "stats_total_server_assignment_count": ("counter", "Server connections assigned"),
    "stats_total_client_parse_count": ("counter", "Parse messages from clients"),
    "stats_total_server_parse_count": ("counter", "Parse messages sent to servers"),
    "stats_total_bind_count": ("counter", "Bind messages from clients"),
    "stats_total_client_login_count": ("counter", "Client logins"),
}
_AVG_HELP = "Average over the last stats period (per second, or µs per event for times)"
_POOL_GAUGES = (
    ("cl_idle", "Clients logged in with no server linked"),
    ("cl_active", "Clients logged in and not waiting"),
    ("cl_waiting", "Clients waiting for a server connection"),
    ("sv_active", "Server connections linked to a client"),
    ("sv_idle", "Server connections idle in the pool"),
    ("sv_used", "Server connections idle and due for a check"),
    ("sv_tested", "Server connections running the pooler's own queries"),
    ("sv_login", "Server connections logging in"),
    ("maxwait", "Seconds the oldest waiting client has waited"),
    ("maxwait_us", "Microseconds part of maxwait"),
    ("cl_pinned", "Clients keeping their server for session state they hold"),
)
_SERVER_STATES = {
    ServerState.ACTIVE: "active_count",
    ServerState.IDLE: "idle_count",
    ServerState.INTERNAL: "tested_count",
    ServerState.CONNECTING: "login_count",
    ServerState.LOGIN: "login_count",
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Mapping[str, object]) -> str:
    return ",".join(f'{k}="{_escape(str(v))}"' for k, v in pairs.items())


def _response(status: str, body: bytes, *, content_type: str, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class Metrics:
    """Owns the Prometheus connections and their request buffers."""

    def __init__(
        self,
        ctx: Context,
        *,
        stats: Stats,
        pools: Pools,
        health: Health,
        show: Show,
        listen: Listen,
        peers: Peers,
    ) -> None:
        self.ctx = ctx
        self.stats = stats
        self.pools = pools
        self.health = health
        self.show = show
        self.listen = listen
        self.peers = peers
        self.http: dict[int, bytearray] = {}
        self.asking: set[int] = set()  # scrapes waiting for the other workers' samples

    _http: dict[int, bytearray]

    def connected(self, cid: int) -> None:
        """A connection to the Prometheus port (its data comes as ``client_data``)."""
        self.http[cid] = bytearray()

    def serves(self, cid: int) -> bool:
        """Whether ``cid`` is a connection to the Prometheus port."""
        return cid in self.http or cid in self.asking

    def disconnected(self, cid: int) -> None:
        self.http.pop(cid, None)
        self.asking.discard(cid)

    def http_data(self, cid: int, data: bytes) -> None:
        buf = self.http.get(cid)
        if buf is None:
            return
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            end = buf.find(b"\n\n")
        if end < 0:
            if len(buf) > MAX_REQUEST or not data:
                self._http_answer(cid, "400 Bad Request", b"request too large or incomplete\n")
            return
        if end > MAX_REQUEST:
            self._http_answer(cid, "400 Bad Request", b"request head too large\n")
            return
        line = bytes(buf[: buf.find(b"\n")]).rstrip(b"\r").decode("latin-1")
        parts = line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._http_answer(cid, "400 Bad Request", b"not an HTTP/1.x request\n")
            return
        method, target, _ = parts
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            self._http_answer(
                cid, "405 Method Not Allowed", b"only GET\n", extra="Allow: GET, HEAD\r\n"
            )
        elif path != "/metrics":
            self._http_answer(cid, "404 Not Found", b"metrics are at /metrics\n")
        else:
            families, types = self.families()
            head_only = method == "HEAD"
            if not self.peers.others:
                self._metrics_answer(cid, families, types, head_only)
                return
            del self.http[cid]  # answered once the other workers' samples are in
            self.asking.add(cid)
            self.peers.ask(
                f"SHOW {SAMPLES_ITEM}",
                lambda answers: self._merged(cid, families, types, head_only, answers),
            )

    def _merged(
        self,
        cid: int,
        families: dict[str, list[str]],
        types: dict[str, tuple[str, str]],
        head_only: bool,
        answers: dict[int, Answer],
    ) -> None:
        """Every worker's samples, in one answer (see ._peers: one series per worker)."""
        if cid not in self.asking:
            return  # the scraper left meanwhile
        self.asking.discard(cid)
        for _, answer in sorted(answers.items()):
            if answer.error is not None or len(answer.columns) != 4:
                continue
            for name, kind, help_text, line in answer.rows:
                if name is None or kind is None or help_text is None or line is None:
                    continue
                types.setdefault(name, (kind, help_text))
                families.setdefault(name, []).append(line)
        self.http[cid] = bytearray()
        self._metrics_answer(cid, families, types, head_only)

    def _metrics_answer(
        self,
        cid: int,
        families: dict[str, list[str]],
        types: dict[str, tuple[str, str]],
        head_only: bool,
    ) -> None:
        self._http_answer(
            cid,
            "200 OK",
            _render(families, types).encode(),
            content_type="text/plain; version=0.0.4; charset=utf-8",
            head_only=head_only,
        )

    def samples(self) -> list[tuple[str, str, str, str]]:
        """This worker's samples as rows (family, type, help, line), for the worker
        that was scraped (``SHOW`` :data:`SAMPLES_ITEM`, asked by a peer only)."""
        families, types = self.families()
        return [(name, *types[name], line) for name, lines in families.items() for line in lines]

    def _http_answer(
        self,
        cid: int,
        status: str,
        body: bytes,
        *,
        content_type: str = "text/plain; charset=utf-8",
        extra: str = "",
        head_only: bool = False,
    ) -> None:
        data = _response(status, body, content_type=content_type, extra=extra)
        if head_only:
            data = data[: len(data) - len(body)]
        del self.http[cid]
        self.ctx.out.append(SendClient(cid, data))
        self.ctx.out.append(CloseClient(cid))

    def close_http(self) -> None:
        for cid in [*self.http, *self.asking]:
            self.ctx.out.append(CloseClient(cid))
        self.http.clear()
        self.asking.clear()

    # === the text format =============================================================

    def families(self) -> tuple[dict[str, list[str]], dict[str, tuple[str, str]]]:
        """This worker's samples: the lines of each family, and its (type, help).

        With several workers each sample has a ``worker`` label (see ._peers)."""
        families: dict[str, list[str]] = {}
        types: dict[str, tuple[str, str]] = {}
        worker = self.peers.worker
        tag = {"worker": worker.index} if worker is not None and worker.count > 1 else {}

        def add(name: str, kind: str, text: str, labels: Mapping[str, object], v: int) -> None:
            full = f"pgcat_{name}"
            types.setdefault(full, (kind, text))
            line = f"{full}{{{_labels({**labels, **tag})}}} {v}"
            families.setdefault(full, []).append(line)

        for pool_name, pool_cfg in self.ctx.config.pools.items():
            st = self.stats.by_db.get(pool_name)
            if st is None:
                continue
            database = pool_cfg.shards[0].database
            labels: dict[str, object] = {"pool": pool_name, "database": database}
            totals = st.totals()
            for attr, total, avg in STATS_COLUMNS:
                kind, help_text = _HELP[f"stats_{total}"]
                add(f"stats_{total}", kind, help_text, labels, totals[attr])
                add(f"stats_{avg}", "gauge", _AVG_HELP, labels, st.averages[attr])
        for db, user, counts, _, _ in self.show.pool_rows():
            for name, help_text in _POOL_GAUGES:
                add(f"pools_{name}", "gauge", help_text, {"pool": db, "user": user}, counts[name])
        pinned: dict[tuple[str, str, str], int] = {}
        for x in self.ctx.clients.values():
            if x.pin is not None and x.pin.pinned and x.group is not None:
                for kind in x.pin.kinds():
                    why = (x.group.name, x.group.user.username, kind)
                    pinned[why] = pinned.get(why, 0) + 1
        for (db, user), (connected, delivered) in sorted(self.listen.counts().items()):
            labels = {"pool": db, "user": user}
            add(
                "listen_connected",
                "gauge",
                "1 if the LISTEN fan-out connection is up",
                labels,
                connected,
            )
            add(
                "listen_notifications_delivered",
                "counter",
                "Notifications the LISTEN fan-out handed to clients",
                labels,
                delivered,
            )
        for (db, user, kind), count in sorted(pinned.items()):
            add(
                "clients_pinned",
                "gauge",
                "Clients keeping their server, by the kind of session state they hold",
                {"pool": db, "user": user, "reason": kind},
                count,
            )
        for group in self.pools.groups.values():
            for pool in group.all_pools():
                a = pool.address
                index = group.cfg.shards[pool.shard].servers.index(a)
                labels = {
                    "host": a.host,
                    "port": a.port,
                    "shard": pool.shard,
                    "role": self.health.role(a) or "unknown",
                    "pool": group.name,
                    "index": index,
                    "database": group.cfg.shards[pool.shard].database,
                    "username": group.user.username,
                }
                counts = dict.fromkeys(
                    ("active_count", "idle_count", "tested_count", "login_count"), 0
                )
                for s in pool.servers:
                    counts[_SERVER_STATES.get(s.state, "login_count")] += 1
                for key, value in counts.items():
                    add(
                        f"servers_{key}",
                        "gauge",
                        f"Server connections in state {key[:-6]}",
                        labels,
                        value,
                    )
                add(
                    "servers_is_banned", "gauge", "1 if banned", labels, int(self.health.banned(a))
                )
                add(
                    "servers_is_paused",
                    "gauge",
                    "1 if paused",
                    labels,
                    int(group.name in self.ctx.life.paused),
                )
                add(
                    "databases_pool_size",
                    "gauge",
                    "Maximum server connections",
                    labels,
                    group.user.pool_size,
                )
                add(
                    "databases_current_connections",
                    "gauge",
                    "Open server connections",
                    labels,
                    len(pool.servers),
                )
        return families, types


def _render(families: Mapping[str, list[str]], types: Mapping[str, tuple[str, str]]) -> str:
    """The text format: each family's HELP and TYPE once, then its samples."""
    out: list[str] = []
    for name, lines in families.items():
        kind, help_text = types[name]
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(lines)
    return "\n".join(out) + "\n"
