"""Choosing the server for a client: read/write splitting, roles, load balancing.

The ``Routes`` part of the engine (DESIGN.md's Router). PgCat's semantics, decided
when a client with no server sends something (transaction mode) or logs in (session mode):

- **The role.** In transaction mode with ``query_parser_enabled`` and
  ``query_parser_read_write_splitting``, every Query text and Parse text waiting to be
  sent is classified (:mod:`pgsansio.routing`, cached by text); a Bind of a named
  statement is classified by the text it was prepared with. Any write sends the whole
  span to the primary, and the server then stays for the transaction (it is released
  only at ReadyForQuery ``I``), so reads after a write in a transaction stay on the
  primary. ``BEGIN`` goes to the primary (what follows is unknown), ``BEGIN READ
  ONLY`` may go to a replica. A ``/* pgsansio_role: replica */``-style hint (see
  :mod:`pgsansio.routing`) wins for its statement. Reads go to the replicas, or to
  replicas and primary with ``primary_reads_enabled``. What the parser cannot decide,
  and everything in session mode or without the parser, goes where ``default_role``
  says (``any``: every server).
- **Per-client overrides**, PgCat's custom commands (simple protocol, with the parser
  on), answered by the pooler itself: ``SET SERVER ROLE TO 'primary' | 'replica' |
  'any' | 'auto' | 'default'`` and ``SET PRIMARY READS TO on | off | default``, and
  their ``SHOW`` forms (one row).
- **Candidates.** Servers with that role, minus banned ones (:mod:`._health`), lagging
  replicas and, when a client is being moved after a failure, the addresses it already
  tried. If every replica is banned they are unbanned (PgCat); if no replica is left
  (all lagging, say) reads go to the primary. A write with no primary known fails
  at once with 57P03.
- **The shard** (PgCat's sharding, per client): every checkout takes its server from
  one shard of the pool. In order: the shard the ``automatic_sharding_key`` names
  (below); a ``shard_id_regex`` / ``sharding_key_regex`` match
  (capture group 1) in the first ``regex_search_limit`` characters of a Query or Parse
  text waiting to be sent (the first match among them; the text is forwarded as it is)
  decides for that checkout only -- PgCat's router keeps the last match as the
  client's shard for later queries too, here a query without a comment goes where the
  session's choice says; else the session's choice (``SET SHARD`` / ``SET SHARDING
  KEY``, below); else ``default_shard``: ``shard_<n>``; ``random`` (a shard drawn
  from the engine's seeded rng for each checkout); ``random_healthy`` (random among
  the shards with the fewest addresses banned or found down by the probes; PgCat
  counts recent errors). In transaction mode the server then stays for the
  transaction, so a transaction never spans shards; a retry after a failure stays on
  the shard it was placed on. A shard number out of range (a comment, or a session's
  choice after a reload shrank the pool) fails the request with 22023.
- **The automatic sharding key** (PgCat's ``automatic_sharding_key = "table.column"``
  or ``"*.column"``, with ``query_parser_enabled``; PgCat also wants
  ``query_parser_read_write_splitting``, we do not): every Query text waiting to be
  sent, and the text of every Bind's statement (a Parse waiting with it, or one
  prepared earlier through the prepared statement cache), is read by
  :class:`pgsansio.routing.KeyFinder` (cached by text; the shapes it knows are in
  :mod:`pgsansio.routing._keys`), which gives the literals and ``$n`` parameters the
  key is compared to. A parameter is read from the Bind: text, or binary int2 / int4
  / int8 (big-endian; the size the Parse's type for it says, else 2, 4 or 8 bytes).
  Each value must be a 64-bit integer and all of them, over everything waiting, must
  land on one shard (``sharding_function``); if not (keys on two shards, a NULL or
  non-integer value), no key decides and the order above goes on. As in PgCat, a key
  found wins over a comment and over the session's ``SET SHARD`` (PgCat's router
  reads the comment first and then lets the parser's shard replace it). Departures:
  the key decides for that checkout only (PgCat keeps it as the client's shard for
  later queries, and ``SHOW SHARD`` shows it); keys on different shards are no key
  here, also across the statements of one text (PgCat stops at "multiple shards in
  query" and keeps the first statement's shard); Binds of named statements are read
  too (PgCat reads a Bind only after its Parse). Nothing is parsed on a pool without
  the key, or with one shard.
- **Shard commands** (PgCat's ``CUSTOM_SQL_REGEXES``): ``SET SHARD TO 'n' | 'ANY'``
  (``ANY``: a random shard, drawn once), ``SET SHARDING KEY TO 'k'`` (the shard
  holding ``k`` by the pool's ``sharding_function``, see :mod:`pgsansio.sharding`) and
  ``SHOW SHARD`` (one row, column ``shard``: the number, or ``unset``). Simple
  protocol, case-insensitive, the whole Query text (quotes optional, a trailing ``;``
  allowed), answered by the pooler (``SET SHARD`` / ``SET SHARDING KEY``), and the
  choice lasts for the session. **They need no query parser**: PgCat matches them
  with regexes on every Query sent while the client holds no server, whatever
  ``query_parser_enabled`` says, and so do we (on every pool, sharded or not: none
  of them is valid SQL, so nothing a server would accept is taken). Departures, each
  an error the session survives: an out-of-range shard is 22023 naming the valid
  range (PgCat: "shard n is not configured", the choice unchanged, as here); inside a
  transaction (the client holds a server whose transaction is open) a SET is refused
  with 25001, as a transaction cannot move shards (PgCat forwards it to the server,
  which fails); in a multi-statement string, 0A000; in session mode once the session
  has its server (taken at its first query), moving to another shard is 0A000; a
  malformed value is 42601; a sharding key that is not a 64-bit integer is 22023.
  While earlier requests of the client are still running on its server, the text
  goes to that server (as the role commands do).
- **Load balancing** among the candidates: ``random`` (PgCat's default; weighted by
  the optional 4th item of a ``servers`` entry), ``loc`` (least outstanding
  connections: busy plus waiting, divided by the weight) and ``round_robin``
  (extension: each candidate in turn, as many turns as its weight). As in PgCat, the
  choice does not favour an address with an idle connection (that would send all the
  traffic to whichever replica warmed up first).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, NamedTuple

from pgsansio.protocol import (
    Bind,
    Close,
    CommandComplete,
    DataRow,
    Describe,
    ErrorResponse,
    Execute,
    Field,
    Parse,
    Query,
    ReadyForQuery,
    RowDescription,
    Span,
)
from pgsansio.sharding import parse_int64, shard_for_key

from ._objects import Client, Pool

if TYPE_CHECKING:
    from pgsansio.config_model import PoolConfig
    from pgsansio.routing import KeyFinder, Router, ShardKeys

    from ._context import Context
    from ._health import Health, Key

__all__ = ["SHARD_COMMAND_BYTES", "WAIT_FOR_PRIMARY", "Refusal", "Routes"]

WAIT_FOR_PRIMARY = ""  # what route() says while no probe has answered yet

_TEXT_OID = 25
_EXTENDED = (Parse, Bind, Describe, Execute, Close)
_ROLES = ("primary", "replica", "any", "auto", "default")

# The start of a shard command. A dotted name (``SET shard.x TO 1``, a custom setting)
# is SQL and is not taken.
_SHARD_LEAD = re.compile(r"\s*(set|show)\s+(shard|sharding\s+key)(?![\w.$])", re.I | re.A)
# The same on a raw Query message, for the fast lane: b"Q", the length, the text.
SHARD_COMMAND_BYTES = re.compile(rb"\s*(?:set|show)\s+shard(?:ing\s+key)?(?![\w.$])", re.I)
_SET_VALUE = re.compile(r"\s+to\s+(?:'([^']*)'|([^\s';]+))", re.I | re.A)
_SHARD_SYNTAX = "SET SHARD TO takes a shard number or 'ANY', e.g. SET SHARD TO '1'"
_KEY_SYNTAX = "SET SHARDING KEY TO takes an integer key, e.g. SET SHARDING KEY TO '1234'"


class Refusal(NamedTuple):
    """Why a request cannot be placed, for an ErrorResponse with this SQLSTATE."""

    sqlstate: str
    message: str


def _shard_range(n: int) -> str:
    return "its only shard is 0" if n == 1 else f"its shards are 0 to {n - 1}"


# The binary integer types a Bind parameter may carry a key in: OID -> size.
_BINARY_INTS = {20: 8, 23: 4, 21: 2}  # int8, int4, int2


def _bind_key(bind: Bind, parse: Parse, number: int) -> int | None:
    """Parameter ``$number`` of ``bind`` as an int64, if it is one: text, or binary
    int2 / int4 / int8 (by the type the Parse gives it, else by its length)."""
    i = number - 1
    params = bind.params
    if i >= len(params):
        return None
    raw = params[i]
    if raw is None:
        return None  # NULL
    formats = bind.param_formats
    if not formats:
        binary = False
    elif len(formats) == 1:
        binary = formats[0] == 1
    elif i < len(formats):
        binary = formats[i] == 1
    else:
        return None
    if not binary:
        try:
            return parse_int64(raw.decode().strip())
        except UnicodeDecodeError:
            return None
    types = parse.param_types
    oid = types[i] if i < len(types) else 0
    if oid:
        if _BINARY_INTS.get(oid) != len(raw):
            return None  # another type, or a malformed value
    elif len(raw) not in (2, 4, 8):
        return None
    return int.from_bytes(raw, "big", signed=True)


def _keys_shard(
    keys: ShardKeys, bind: Bind | None, parse: Parse | None, n: int, function: str
) -> int | None:
    """The one shard all ``keys`` land on (literals, and parameters read from
    ``bind``), else None: keys on different shards, or one that is not an int64."""
    shard = -1
    for value in keys.values:
        key = parse_int64(value.strip())
        s = shard_for_key(key, n, function) if key is not None else None
        if s is None or (shard >= 0 and s != shard):
            return None
        shard = s
    for number in keys.params:
        key = _bind_key(bind, parse, number) if bind is not None and parse is not None else None
        s = shard_for_key(key, n, function) if key is not None else None
        if s is None or (shard >= 0 and s != shard):
            return None
        shard = s
    return shard if shard >= 0 else None


def _key(pool: Pool) -> Key:
    return (pool.address.host, pool.address.port)


class Routes:
    """Owns its state; see the module docstring."""

    def __init__(self, ctx: Context, *, health: Health) -> None:
        self.ctx = ctx
        self.health = health
        self._routers: dict[int, Router] = {}
        self._finders: dict[tuple[str, int], KeyFinder] = {}
        self._rr: dict[tuple[str, str, int, str], int] = {}
        self._parser_missing: str | None = None
        self._regexes: dict[str, re.Pattern[str]] = {}

    def _router(self, max_length: int | None) -> Router | None:
        """The classifier, or None when pglast is not installed (said once at start)."""
        size = max_length or 0
        router = self._routers.get(size)
        if router is None:
            if self._parser_missing is not None:
                return None
            try:
                # Imported on first use: pglast is an optional extra (GPL), and a pool
                # without the query parser must run without it.
                from pgsansio.routing import Router  # noqa: PLC0415
            except ImportError as exc:
                self._parser_missing = str(exc)
                return None
            router = self._routers[size] = Router(max_length=size)
        return router

    def _finder(self, cfg: PoolConfig) -> KeyFinder | None:
        """The reader of ``cfg``'s automatic_sharding_key, or None without pglast."""
        spec = cfg.automatic_sharding_key
        assert spec is not None
        size = cfg.query_parser_max_length or 0
        finder = self._finders.get((spec, size))
        if finder is None:
            if self._router(None) is None:
                return None  # pglast is missing (said at start)
            from pgsansio.routing import KeyFinder  # noqa: PLC0415 - see _router

            finder = self._finders[spec, size] = KeyFinder(spec, max_length=size)
        return finder

    def check_parser(self) -> None:
        """At start and reload: say plainly if the query parser cannot run here."""
        pools = [p.name for p in self.ctx.config.pools.values() if p.query_parser_enabled]
        if pools and self._router(None) is None:
            self.ctx.log(
                logging.ERROR,
                f"query_parser_enabled is set (pool {', '.join(pools)}) but the SQL parser "
                f"cannot be loaded ({self._parser_missing}): install pgsansio[routing] "
                "(pglast); until then servers are chosen by default_role alone, and "
                "automatic_sharding_key finds no key",
            )

    # === the role a client's pending requests need =================================

    def _wanted_role(self, c: Client) -> str:
        """``primary``, ``replica`` or ``any`` for what ``c`` is about to send."""
        group = c.group
        assert group is not None and c.user is not None
        cfg = group.cfg
        override = c.route_role
        if override in ("primary", "replica", "any"):
            role = override
        else:
            role = cfg.default_role
            parse = cfg.query_parser_enabled and (
                cfg.query_parser_read_write_splitting or override == "auto"
            )
            if parse and c.user.pool_mode == "transaction":
                write = self._classify_pending(c)
                if write is not None:
                    role = "primary" if write else "replica"
        if role == "replica" and self._primary_reads(c):
            role = "any"
        return role

    def _primary_reads(self, c: Client) -> bool:
        if c.primary_reads is not None:
            return c.primary_reads
        assert c.group is not None
        return c.group.cfg.primary_reads_enabled

    def _classify_pending(self, c: Client) -> bool | None:
        """True: a write among the pending statements; False: reads only; None: none
        the parser could look at."""
        assert c.group is not None
        router = self._router(c.group.cfg.query_parser_max_length)
        if router is None:
            return None
        found: bool | None = None
        for _, events, _ in c.pending:
            for e in events:
                t = type(e)
                if t is Query:
                    assert isinstance(e, Query)
                    sql = e.sql
                elif t is Parse:
                    assert isinstance(e, Parse)
                    sql = e.query
                elif t is Bind:
                    assert isinstance(e, Bind)
                    p = c.prepared.get(e.statement) if e.statement else None
                    if p is None:
                        continue
                    assert isinstance(p.parse, Parse)
                    sql = p.parse.query
                else:
                    continue
                d = router.classify(sql)
                if d.hint is not None:
                    write = d.hint == "primary"
                elif d.begin:
                    write = d.read_only is not True
                else:
                    write = d.write
                if write:
                    return True
                found = False
        return found

    # === choosing an address ========================================================

    def route(self, c: Client, *, retry: bool = False) -> Pool | str | Refusal:
        """The pool ``c`` should take a server from; else why no server can serve it
        (a message for the client, or a Refusal with its SQLSTATE), or WAIT_FOR_PRIMARY
        while the probes have not yet found which server is the primary."""
        group = c.group
        assert group is not None
        if retry:
            index = c.checkout_shard
        else:
            c.tried = None
            chosen = self._choose_shard(c)
            if isinstance(chosen, Refusal):
                return chosen
            index = c.checkout_shard = chosen
        if index >= len(group.pools):
            return Refusal("22023", self._gone_shard(c, index))
        shard = group.pools[index]
        if len(shard) == 1:
            return shard[0]
        want = self._wanted_role(c)
        candidates = self._candidates(c, shard, want)
        if (
            not candidates
            and want == "primary"
            and not retry
            and any(
                p.address.role == "auto"
                and (p.address.host, p.address.port) not in self.health.roles
                for p in shard
            )
        ):
            return WAIT_FOR_PRIMARY  # not probed yet (the pooler just started)
        if not candidates:
            if want == "primary":
                return f'no primary server is available in pool "{group.name}" for writes' + (
                    self.why_no_primary(shard)
                )
            return f'no server is available in pool "{group.name}": ' + self._why_no_server(
                c, shard
            )
        if len(candidates) == 1:
            return candidates[0]
        return self._balance(c, candidates, want)

    # === choosing a shard ==============================================================

    def _choose_shard(self, c: Client) -> int | Refusal:
        """The shard of the request being placed (see the module docstring)."""
        group = c.group
        assert group is not None
        cfg = group.cfg
        n = len(group.pools)
        if cfg.automatic_sharding_key is not None and cfg.query_parser_enabled and n > 1:
            automatic = self._automatic_shard(c, n)
            if automatic is not None:
                return automatic
        if cfg.shard_id_regex is not None or cfg.sharding_key_regex is not None:
            found = self._comment_shard(c, n)
            if found is not None:
                return found
        if c.shard is not None:
            if c.shard < n:
                return c.shard
            return Refusal("22023", self._gone_shard(c, c.shard))
        default = cfg.default_shard
        if default == "random":
            return self.ctx.rng.randrange(n) if n > 1 else 0
        if default == "random_healthy":
            return self._healthy_shard(group.pools)
        return int(default[6:])  # shard_<n>, checked against the shards when loaded

    def fixed_shard(self, c: Client) -> int | None:
        """The shard ``c``'s next checkout will use whatever it sends, or None when
        that depends on the request (a comment, a key in the SQL, a random default)
        or is an error."""
        group = c.group
        assert group is not None
        cfg = group.cfg
        if (
            cfg.shard_id_regex is not None
            or cfg.sharding_key_regex is not None
            or (cfg.automatic_sharding_key is not None and cfg.query_parser_enabled)
        ):
            return None
        shard = c.shard
        if shard is not None:
            return shard if shard < len(group.pools) else None
        default = cfg.default_shard
        if default[:6] == "shard_":
            return int(default[6:])
        return 0 if len(group.pools) == 1 else None

    def _healthy_shard(self, shards: list[list[Pool]]) -> int:
        """random_healthy: a random shard among those with the fewest addresses banned
        or down."""
        health = self.health
        scores = [
            sum(1 for p in pools if health.banned(p.address) or health.probe_down(_key(p)))
            for pools in shards
        ]
        best = min(scores)
        ties = [i for i, score in enumerate(scores) if score == best]
        return ties[self.ctx.rng.randrange(len(ties))] if len(ties) > 1 else ties[0]

    def _regex(self, pattern: str) -> re.Pattern[str]:
        compiled = self._regexes.get(pattern)
        if compiled is None:
            compiled = self._regexes[pattern] = re.compile(pattern)
        return compiled

    def _comment_shard(self, c: Client, n: int) -> int | Refusal | None:
        """The shard named by ``shard_id_regex`` or ``sharding_key_regex`` in the first
        pending Query or Parse text that has one (PgCat tries the shard id first)."""
        assert c.group is not None
        cfg = c.group.cfg
        limit = cfg.regex_search_limit
        id_re = self._regex(cfg.shard_id_regex) if cfg.shard_id_regex is not None else None
        key_re = (
            self._regex(cfg.sharding_key_regex) if cfg.sharding_key_regex is not None else None
        )
        for _, events, _ in c.pending:
            for e in events:
                if type(e) is Query:
                    assert isinstance(e, Query)
                    head = e.sql[:limit]
                elif type(e) is Parse:
                    assert isinstance(e, Parse)
                    head = e.query[:limit]
                else:
                    continue
                if id_re is not None and id_re.groups:
                    m = id_re.search(head)
                    if m is not None and m.group(1) is not None and m.group(1).isdigit():
                        shard = int(m.group(1))
                        if shard >= n:
                            return Refusal(
                                "22023",
                                f"shard {shard} (named by shard_id_regex in the query) does "
                                f'not exist: pool "{cfg.name}" has {n} shard(s), '
                                f"{_shard_range(n)}",
                            )
                        return shard
                if key_re is not None and key_re.groups:
                    m = key_re.search(head)
                    if m is not None and m.group(1) is not None:
                        shard_or_none = shard_for_key(m.group(1), n, cfg.sharding_function)
                        if shard_or_none is not None:
                            return shard_or_none
        return None

    def _automatic_shard(self, c: Client, n: int) -> int | None:
        """The shard that the automatic_sharding_key values of ``c``'s pending
        statements (Query texts, and Parse texts with their Bind parameters) land on;
        None if they name no key, or keys on different shards, or a value that is
        not a 64-bit integer."""
        assert c.group is not None
        cfg = c.group.cfg
        finder = self._finder(cfg)
        if finder is None:
            return None
        function = cfg.sharding_function
        found: int | None = None
        parsed: dict[str, Parse] | None = None  # Parse messages pending, by name
        for _, events, _ in c.pending:
            for e in events:
                t = type(e)
                if t is Query:
                    assert isinstance(e, Query)
                    keys = finder.find(e.sql)
                    if not keys:
                        continue
                    # ($n in a simple Query is an error: no shard, the server says so)
                    shard = _keys_shard(keys, None, None, n, function)
                elif t is Parse:
                    assert isinstance(e, Parse)
                    if parsed is None:
                        parsed = {}
                    parsed[e.name] = e
                    continue
                elif t is Bind:
                    assert isinstance(e, Bind)
                    parse = parsed.get(e.statement) if parsed is not None else None
                    if parse is None and e.statement:
                        p = c.prepared.get(e.statement)
                        if p is not None:
                            assert isinstance(p.parse, Parse)
                            parse = p.parse
                    if parse is None:
                        continue  # an unnamed statement parsed in an earlier request
                    keys = finder.find(parse.query)
                    if not keys:
                        continue
                    shard = _keys_shard(keys, e, parse, n, function)
                else:
                    continue
                if shard is None or (found is not None and shard != found):
                    return None
                found = shard
        return found

    def _gone_shard(self, c: Client, shard: int) -> str:
        assert c.group is not None
        n = len(c.group.pools)
        return (
            f'shard {shard} chosen for this session does not exist (any more): pool "'
            f'{c.group.name}" has {n} shard(s), {_shard_range(n)}; choose one with SET SHARD'
        )

    def why_no_primary(self, shard: list[Pool]) -> str:
        if any(p.address.role == "auto" for p in shard):
            return (
                " (none of its servers answered our probe as being out of recovery; "
                "retry once a replica has been promoted)"
            )
        return " (its primary could not be reached)"

    def _why_no_server(self, c: Client, shard: list[Pool]) -> str:
        """What keeps each address of ``shard`` from serving ``c``'s read, for the
        error the client gets and the log: an operator must see whether servers are
        down, banned, behind, or only not probed yet."""
        assert c.group is not None
        name = c.group.cfg.name
        tried = c.tried or ()
        parts = []
        for p in shard:
            k = _key(p)
            role = self.health.role(p.address)
            ban = self.health.bans.get(k)
            if k in tried:
                why = "failed for this request"
            elif ban is not None:
                why = f"banned ({ban.reason})"
            elif role is None:
                why = "down" if self.health.probe_down(k) else "role not known yet (not probed)"
            elif (name, k) in self.health.lagging:
                why = "lagging behind the primary"
            else:
                why = role  # pragma: no cover - a usable server: _candidates took it
            parts.append(f"{k[0]}:{k[1]} {why}")
        return "; ".join(parts)

    def _candidates(self, c: Client, shard: list[Pool], want: str) -> list[Pool]:
        tried = c.tried or ()
        primary: list[Pool] = []
        replicas: list[Pool] = []
        for p in shard:
            role = self.health.role(p.address)
            if role == "primary":
                if not tried or _key(p) not in tried:
                    primary.append(p)
            elif role == "replica":
                replicas.append(p)
        if want == "primary":
            return primary
        bans = self.health.bans
        if bans and not tried and replicas and all(_key(p) in bans for p in replicas):
            # PgCat: every replica banned is more likely a false alarm than a fact --
            # unless our own probe says it is down right now (or this client has just
            # found out for itself: it is being moved after a failure).
            for p in replicas:
                if not self.health.probe_down(_key(p)):
                    self.health.unban(_key(p), "unbanned: every replica was banned")
        if bans or tried or self.health.lagging:
            assert c.group is not None
            name = c.group.cfg.name
            lagging = self.health.lagging
            replicas = [
                p
                for p in replicas
                if (k := _key(p)) not in bans and k not in tried and (name, k) not in lagging
            ]
        if want == "any":
            return replicas + primary
        return replicas or primary  # no replica left: the primary serves the reads

    def _balance(self, c: Client, candidates: list[Pool], want: str) -> Pool:
        assert c.group is not None
        mode = c.group.cfg.load_balancing_mode
        if mode == "round_robin":
            total = sum(p.address.weight for p in candidates)
            key = (c.group.name, c.group.user.username, candidates[0].shard, want)
            turn = self._rr.get(key, 0)
            self._rr[key] = turn + 1
            point = turn % total
            for p in candidates:
                point -= p.address.weight
                if point < 0:
                    return p
        rng = self.ctx.rng
        if mode == "random" and all(p.address.weight == 1 for p in candidates):
            return candidates[rng.randrange(len(candidates))]  # the common case, cheaply
        # A weighted shuffle (Efraimidis-Spirakis): weight w sorts first w times as often.
        ordered = sorted(candidates, key=lambda p: -(rng.random() ** (1 / p.address.weight)))
        if mode == "loc":
            ordered.sort(key=lambda p: (p.busy + len(p.waiters)) / p.address.weight)
        return ordered[0]

    def choose_pool(self, c: Client) -> Pool:
        """Where a group's first login goes (for the server's parameters): any server
        that is up, whatever its role."""
        group = c.group
        assert group is not None
        index = self.fixed_shard(c)
        shard = group.pools[index if index is not None and index < len(group.pools) else 0]
        for pool in shard:
            if not self.health.banned(pool.address) and self.health.role(pool.address) is not None:
                return pool
        return next((p for p in shard if not self.health.banned(p.address)), shard[0])

    # === moving and failing clients ================================================

    # === PgCat's custom commands ===================================================

    def custom_command(self, c: Client, span: Span) -> bool:
        """Answer ``SET SERVER ROLE`` & co. ourselves; True if ``span`` was one."""
        events = span.events
        if len(events) != 1 or type(events[0]) is not Query:
            return False
        query = events[0]
        assert isinstance(query, Query) and c.group is not None
        s = c.server
        lead = _SHARD_LEAD.match(query.sql)
        if lead is not None:
            if s is not None and (s.queue or s.syncing):
                return False  # earlier requests still running: the server answers in turn
            self._shard_command(c, query.sql, lead)
            return True
        if not c.group.cfg.query_parser_enabled:
            return False
        if s is not None and (s.queue or not s.conn.idle or s.syncing):
            return False
        router = self._router(c.group.cfg.query_parser_max_length)
        if router is None:
            return False
        command = router.classify(query.sql).command
        if command is None:
            return False
        name, value = command
        status = s.conn.transaction_status if s is not None else "I"
        if name == "set_server_role":
            role = (value or "").lower()
            if role not in _ROLES:
                self._command_error(c, f"unknown server role {value!r}", status)
                return True
            c.route_role = None if role == "default" else role
            self.ctx.send_client(c, CommandComplete("SET"))
        elif name == "set_primary_reads":
            flag = (value or "").lower()
            if flag not in ("on", "off", "default"):
                self._command_error(
                    c, f"PRIMARY READS must be on, off or default, not {value!r}", status
                )
                return True
            c.primary_reads = None if flag == "default" else flag == "on"
            self.ctx.send_client(c, CommandComplete("SET"))
        elif name == "show_server_role":
            role = c.route_role or (
                "auto"
                if c.group.cfg.query_parser_read_write_splitting
                else c.group.cfg.default_role
            )
            self._show(c, "server_role", role)
        elif name == "show_primary_reads":
            self._show(c, "primary_reads", "on" if self._primary_reads(c) else "off")
        else:
            self._command_error(c, value or "invalid command", status)
            return True
        self.ctx.send_client(c, ReadyForQuery(status))
        return True

    def _shard_command(self, c: Client, sql: str, lead: re.Match[str]) -> None:
        """Answer SET SHARD, SET SHARDING KEY or SHOW SHARD (see the module docstring)."""
        group = c.group
        assert group is not None
        s = c.server
        status = s.conn.transaction_status if s is not None else "I"
        verb = lead.group(1).lower()
        key = lead.group(2)[:6].lower() == "shardi"
        what = "SHARDING KEY" if key else "SHARD"
        rest = sql[lead.end() :].rstrip()
        if rest.endswith(";"):
            rest = rest[:-1].rstrip()
        if ";" in rest:
            self._command_error(
                c,
                f"{verb.upper()} {what} must be sent alone, not in a multi-statement query",
                status,
                "0A000",
            )
            return
        if verb == "show":
            if key or rest:
                message = (
                    "SHOW SHARD takes no value"
                    if not key
                    else "SHOW SHARDING KEY is not a command: SHOW SHARD shows the shard"
                )
                self._command_error(c, message, status)
                return
            self._show(c, "shard", "unset" if c.shard is None else str(c.shard))
            self.ctx.send_client(c, ReadyForQuery(status))
            return
        m = _SET_VALUE.fullmatch(rest)
        value = (m.group(1) if m.group(1) is not None else m.group(2)) if m else None
        # The configuration as it is now: after a reload this client moves to its
        # pool's new version at its next checkout, but its choice is for that one.
        cfg = self.ctx.config.pools.get(group.name, group.cfg)
        n = len(cfg.shards)
        shard: int | None
        if key:
            if value is None:
                self._command_error(c, _KEY_SYNTAX, status)
                return
            shard = shard_for_key(value, n, cfg.sharding_function)
            if shard is None:
                self._command_error(
                    c,
                    f"sharding key {value!r} is not a 64-bit integer "
                    f"({cfg.sharding_function} shards by integer keys)",
                    status,
                    "22023",
                )
                return
        elif value is not None and value.isdigit():
            shard = int(value)
        elif value is not None and value.lower() == "any":
            shard = self.ctx.rng.randrange(n) if n > 1 else 0
        else:
            self._command_error(c, _SHARD_SYNTAX, status)
            return
        if shard >= n:
            staying = "no shard chosen yet" if c.shard is None else f"staying on shard {c.shard}"
            self._command_error(
                c,
                f'shard {shard} does not exist: pool "{cfg.name}" has {n} shard(s), '
                f"{_shard_range(n)} ({staying})",
                status,
                "22023",
            )
            return
        if status != "I":
            self._command_error(
                c,
                f"SET {what} cannot run inside a transaction: a transaction cannot move to "
                "another shard; COMMIT or ROLLBACK first",
                status,
                "25001",
            )
            return
        if s is not None and s.pool is not None and s.pool.shard != shard:
            self._command_error(
                c,
                f"this session already has its server on shard {s.pool.shard} (session "
                f"mode keeps it until the client leaves): SET {what} must come before "
                "the first query, or use transaction mode",
                status,
                "0A000",
            )
            return
        c.shard = shard
        self.ctx.send_client(c, CommandComplete(f"SET {what}"))
        self.ctx.send_client(c, ReadyForQuery(status))

    def _show(self, c: Client, column: str, value: str) -> None:
        self.ctx.send_client(c, RowDescription([Field(column, 0, 0, _TEXT_OID, -1, -1, 0)]))
        self.ctx.send_client(c, DataRow([value.encode()]))
        self.ctx.send_client(c, CommandComplete("SHOW"))

    def _command_error(
        self, c: Client, message: str, status: str, sqlstate: str = "42601"
    ) -> None:
        # The server's transaction is untouched by our error: its status stands.
        self.ctx.send_client(c, ErrorResponse.build(sqlstate, message))
        self.ctx.send_client(c, ReadyForQuery(status))
