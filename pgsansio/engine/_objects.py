"""The engine's bookkeeping: clients, server connections, pools.

Plain slotted classes with no behaviour beyond small helpers; the decisions live in
:mod:`._engine` and :mod:`._relay`. Keeping them here lets the simulation tests and the
admin console read the same objects the engine acts on.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import TYPE_CHECKING

from pgsansio.protocol import CLIENT, SERVER, Connection, Event

from ._states import ClientState, ServerState
from ._stats import NOWHERE

if TYPE_CHECKING:
    from pgsansio.config.model import PoolConfig, ServerAddress, UserConfig
    from pgsansio.protocol import ErrorResponse, NotificationResponse, ScramServer

    from ._fanout import Job
    from ._pinning import PinState
    from ._shards import Unkeyed

__all__ = [
    "Client",
    "Entry",
    "Pool",
    "PoolGroup",
    "Prepared",
    "ServerConn",
]

# --- what a server connection is for ---------------------------------------------------
P_POOL = 0
P_CANCEL = 1
P_AUTH_QUERY = 2
P_PROBE = 3  # the health/role/lag probe of one address (see _health)
P_LISTEN = 4  # the LISTEN connection of one (pool, user) (see _listen)
P_FORWARD = 5  # a CancelRequest on its way to the worker that owns it (see _peers)
P_PEER = 6  # a console session with another worker (see _peers)

# --- response-queue entry kinds: which server message ends the request's answer ---------
K_PARSE = 0  # ParseComplete
K_BIND = 1  # BindComplete
K_CLOSE = 2  # CloseComplete
K_DESCRIBE = 3  # RowDescription or NoData (after ParameterDescription for a statement)
K_EXECUTE = 4  # CommandComplete, EmptyQueryResponse or PortalSuspended
K_SYNC = 5  # ReadyForQuery
K_QUERY = 6  # ReadyForQuery (simple Query, FunctionCall)

EXTENDED = frozenset({K_PARSE, K_BIND, K_CLOSE, K_DESCRIBE, K_EXECUTE})

# --- entry modes -----------------------------------------------------------------------
FWD = 0  # the client's request: forward the answer
SKIP = 1  # our own request: swallow the answer
FAKE = 2  # answered by us: emit ``Entry.fake`` when its turn comes


# A client's statement name, what it meant before a request and what it means after
# (None: not prepared); see Entry.binding.
Binding = tuple[str, "Prepared | None", "Prepared | None"]


class Entry:
    """One request sent to a server (or answered by us) whose answer is still due.

    PostgreSQL answers requests strictly in order, so a FIFO of these tells, for every
    message coming back, whose answer it is: the client's (forward), ours (swallow,
    e.g. the re-Parse of a shared prepared statement or a parameter-sync ``SET``), or
    a gap where we must insert an answer ourselves (a client's Close of a statement
    that stays prepared on the server).
    """

    __slots__ = ("binding", "error", "fake", "kind", "mode", "name", "tag", "value")

    def __init__(
        self,
        kind: int,
        mode: int = FWD,
        *,
        name: str | None = None,
        fake: Event | None = None,
        tag: str = "",
        value: str | None = None,
    ) -> None:
        self.kind = kind
        self.mode = mode
        self.name = name  # the shared statement name a Parse/Close carries
        self.fake = fake
        self.tag = tag  # what an internal query was for, for logs and callbacks
        self.value = value  # a tracked SET's value (SQL), committed when it succeeds
        self.error: Event | None = None
        # A client's Parse or Close of a named statement: (its name, what the name
        # meant before, what it means now), undone if the server skips the request.
        self.binding: Binding | None = None


class Prepared:
    """A statement shared by every client that prepared the same text and types."""

    __slots__ = ("key", "name", "parse", "refs")

    def __init__(self, key: tuple[str, tuple[int, ...]], name: str, parse: Event) -> None:
        self.key = key
        self.name = name  # e.g. PGSANSIO_12
        self.parse = parse  # the Parse to send, already carrying ``name``
        self.refs = 0


class Client:
    __slots__ = (
        "active_at",
        "admin",
        "aliases",
        "auth",
        "blocked",
        "cancel_key",
        "checkout_failures",
        "checkout_shard",
        "cid",
        "conn",
        "connected",
        "database",
        "fanout",
        "group",
        "held_begin",
        "listens",
        "login_deadline",
        "notes",
        "params",
        "peer",
        "pending",
        "pin",
        "pool",
        "prepared",
        "primary_reads",
        "query_start",
        "rebinding",
        "rebound",
        "refusal",
        "route_role",
        "ryw_lsn",
        "ryw_wait_until",
        "ryw_wrote",
        "server",
        "settings",
        "shard",
        "startup",
        "state",
        "stats",
        "stats_only",
        "stream_wait",
        "sync_key",
        "tls",
        "tried",
        "unkeyed",
        "unnamed_pending",
        "user",
        "username",
        "wait_deadline",
        "wait_gen",
        "waiting_since",
        "xact_start",
    )

    def __init__(
        self, cid: int, peer: str, now: float, state: ClientState = ClientState.STARTUP
    ) -> None:
        self.cid = cid
        self.peer = peer
        self.conn = Connection(SERVER)
        self.state = state  # READY only for a cross-shard leg (_fanout), born logged in
        self.username = ""
        self.database = ""
        self.user: UserConfig | None = None
        self.group: PoolGroup | None = None
        self.pool: Pool | None = None  # the address pool it waits on or holds a server of
        self.admin = False
        self.stats_only = False  # a console user of stats_users: SHOW only
        self.blocked = False  # its socket's send buffer is full: don't read its server
        self.tls = False  # the frontend completed a TLS handshake with it
        self.auth: tuple[str, bytes | ScramServer | None] | None = None
        self.cancel_key: tuple[int, bytes] = (0, b"")
        # Reported parameters as the client should see them (startup + ParameterStatus).
        self.params: dict[str, str] = {}
        # Other settings from the startup packet or a plain session SET: re-applied.
        self.settings: dict[str, str] = {}
        # What its startup packet set (reported values; other settings as SQL): what
        # RESET ALL, DISCARD ALL and RESET name go back to, as on a direct connection.
        self.startup: tuple[dict[str, str], dict[str, str]] = ({}, {})
        # What the session should look like, as a comparable key (None: recompute).
        self.sync_key: tuple[object, ...] | None = None
        self.server: ServerConn | None = None
        # Data that arrived while no server was linked: (bytes, events) in order.
        self.pending: list[tuple[bytes, list[Event], list[int]]] = []
        self.prepared: dict[str, Prepared] = {}
        # Names we made up for statements the client never prepared (see _relay).
        self.aliases: dict[str, str] = {}
        # A named Parse or Close since the last Sync changed what the client's names
        # mean; ``rebound`` is that pipeline's Sync while its answer is due. What the
        # client sends meanwhile waits in ``pending`` (see Relay.client_span): an
        # error may yet skip the change, and the names must mean then what they mean
        # to PostgreSQL.
        self.rebinding = False
        self.rebound: Entry | None = None
        self.unnamed_pending = False
        self.waiting_since: float | None = None
        self.wait_gen = 0
        self.wait_deadline: float | None = None  # connect_timeout, while waiting
        self.checkout_failures = 0
        self.login_deadline = now
        self.active_at = now  # when it last sent anything (client_idle_timeout)
        # Set when the client is to be refused before its startup packet was read (see
        # Login.connected): it is refused with this error once that packet arrives.
        self.refusal: ErrorResponse | None = None
        # Not read while the long message it is sending in pieces waits for a server
        # (see _relay.client_span): PgBouncer's backpressure, rather than holding it.
        self.stream_wait = False
        # Statistics (see _stats): where it counts, and when its query / transaction
        # started (None: none running).
        self.connected = now
        self.stats = NOWHERE
        self.query_start: float | None = None
        self.xact_start: float | None = None
        # Routing (see _routing): SET SERVER ROLE / SET PRIMARY READS, and the
        # addresses already tried for the request being placed after a failure.
        self.route_role: str | None = None
        self.primary_reads: bool | None = None
        self.tried: set[tuple[str, int]] | None = None
        # Sharding (see _routing): the session's shard (SET SHARD / SET SHARDING KEY;
        # None: not chosen), and the shard of the request being placed.
        self.shard: int | None = None
        self.checkout_shard = 0
        # Session state that keeps it on its server in transaction mode (see _pinning).
        self.pin: PinState | None = None
        # A plain BEGIN answered by the pooler, sent with the first statement (_readonly).
        self.held_begin: str | None = None
        # LISTEN served by the pool's listener (see _listen): its channels, and the
        # notifications waiting for it to be idle.
        self.listens: set[str] | None = None
        self.notes: list[NotificationResponse] | None = None
        # Read-your-writes (see _routing): its last write's transaction is ending; the
        # WAL position its reads must wait for (None: none); until when its read waits
        # for a probe to find a replica caught up (read_your_writes_wait_ms).
        self.ryw_wrote = False
        self.ryw_lsn: int | None = None
        self.ryw_wait_until: float | None = None
        # The server was placed with no key and has run nothing yet: the statements
        # prepared on it since, so that a keyed Bind may move (see _shards.Unkeyed).
        self.unkeyed: Unkeyed | None = None
        # Its cross-shard query running (see _fanout), if any.
        self.fanout: Job | None = None


class ServerConn:
    __slots__ = (
        "address",
        "applied",
        "backend_key",
        "blocked",
        "client",
        "close_needed",
        "conn",
        "created",
        "dirty",
        "fatal_forwarded",
        "group",
        "last_used",
        "link_gen",
        "login",
        "params",
        "pool",
        "prepared",
        "purpose",
        "query_gen",
        "queue",
        "sid",
        "state",
        "sync_key",
        "syncing",
        "tls",
    )

    def __init__(
        self,
        sid: int,
        pool: Pool | None,
        address: ServerAddress,
        now: float,
        purpose: int = P_POOL,
    ) -> None:
        self.sid = sid
        self.pool = pool
        self.group = pool.group if pool is not None else None
        self.address = address
        self.purpose = purpose
        self.conn = Connection(CLIENT)
        self.state = ServerState.CONNECTING
        self.client: Client | None = None
        self.created = now
        self.last_used = now
        self.params: dict[str, str] = {}
        self.applied: dict[str, str] = {}  # non-reported settings we SET on it
        self.backend_key: tuple[int, bytes] | None = None
        self.prepared: OrderedDict[str, None] = OrderedDict()
        self.queue: deque[Entry] = deque()
        self.dirty = False  # a session-level SET/PREPARE we could not track: reset it
        self.close_needed = False
        self.fatal_forwarded = False
        self.link_gen = 0
        self.query_gen = 0
        self.login: object = None  # the login exchange in progress (ScramClient...)
        self.blocked = False  # its send buffer is full: don't read its client
        self.syncing = False  # our SET is running; the client's data waits for it
        self.tls = False  # the frontend completed a TLS handshake with it
        # The client session key this server was last made to match (None: unknown).
        self.sync_key: tuple[object, ...] | None = None


class Pool:
    """The server connections of one (pool, user, shard, address), as PgCat keys them."""

    __slots__ = (
        "address",
        "group",
        "idle",
        "opening",
        "reap_at",
        "reserve_at",
        "servers",
        "shard",
        "waiters",
    )

    def __init__(self, group: PoolGroup, shard: int, address: ServerAddress) -> None:
        self.group = group
        self.shard = shard
        self.address = address
        self.servers: set[ServerConn] = set()
        self.idle: deque[ServerConn] = deque()
        self.waiters: deque[Client] = deque()
        self.opening = 0
        self.reap_at: float | None = None  # when the reaper next looks at idle servers
        self.reserve_at: float | None = None  # when the reserve pool is next looked at

    @property
    def busy(self) -> int:
        return len(self.servers) - len(self.idle)


class PoolGroup:
    """Everything of one (pool name, user): its address pools and what they share."""

    __slots__ = (
        "auth_secret",
        "cfg",
        "fetch_waiters",
        "login_waiters",
        "name",
        "pools",
        "removed",
        "scram_keys",
        "server_params",
        "user",
    )

    def __init__(self, cfg: PoolConfig, user: UserConfig) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.user = user
        self.removed = False
        self.pools: list[list[Pool]] = [
            [Pool(self, shard.index, address) for address in shard.servers] for shard in cfg.shards
        ]
        # ParameterStatus of the first server login, shown to clients as they log in.
        self.server_params: dict[str, str] | None = None
        self.login_waiters: list[Client] = []
        self.fetch_waiters: list[Client] = []  # clients waiting for auth_query
        # auth_query pass-through: the secret fetched, and SCRAM keys a client proved.
        self.auth_secret: str | None = None
        self.scram_keys: tuple[bytes, bytes] | None = None

    def all_pools(self) -> list[Pool]:
        return [pool for shard in self.pools for pool in shard]
