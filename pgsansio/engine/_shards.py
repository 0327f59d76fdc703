"""Which shard a request goes to: PgCat's sharding, per client.

The ``Shards`` part of the engine, below :class:`~._routing.Routes`, which asks it
for the shard of every checkout and hands it the shard commands. Decisions:

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
- **A key that arrives after its statement** (transaction mode): drivers prepare
  before they bind -- asyncpg sends Parse, Describe, Flush and binds once it has the
  answer; pg8000 syncs in between; psycopg's ``prepare=True`` sends Parse, Sync --
  so the checkout sees no key and the statement is prepared on ``default_shard``.
  Such a client is *unkeyed* (:class:`Unkeyed`) while it has run nothing there:
  when its Bind names a key on another shard, and the server has answered
  everything with no transaction open and no failed batch, the client lets that
  server go (after a silent Sync if its batch is open) and the request is placed on
  the key's shard, preceded by silent re-Parses of what the new server lacks
  (unnamed statements; named ones the prepared statement cache does not re-Parse
  itself). A span that only prepares and asks for no answer (no Flush or Sync) is
  held back until its Bind comes (asyncpg re-sends an unnamed statement's Parse just
  before the Bind, and the two may arrive apart). Where this cannot apply (session
  mode, a Bind pipelined before the Parse's answer, an open transaction) the first
  execution stays where the Parse went, as in PgCat.
- **Key types** (beyond PgCat; PgDog has a data type per sharded column): the pool's
  ``sharding_key_type`` (``bigint``, the default and PgCat's only one; ``text``;
  ``uuid``) says what every key is -- a comment's, ``SET SHARDING KEY``'s, a
  literal's and a Bind parameter's -- and
  :func:`pgsansio.sharding.shard_for_typed_key` hashes it: ``pg_bigint_hash`` is then
  PostgreSQL's partition hash of a column of that type (``hashtextextended``,
  ``uuid_hash_extended``), ``sha1`` the SHA-1 of its text (a uuid's canonical text).
  A Bind parameter is read as text in text format; in binary, as int2 / int4 / int8
  for bigint, as UTF-8 for text (type text, varchar or unspecified) and as 16 bytes
  for uuid. A value that is not of the type (``'abc'`` for bigint, ``'x'`` for uuid)
  is no key.
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
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, NamedTuple

from pgsansio.protocol import (
    Bind,
    Close,
    CommandComplete,
    Describe,
    Flush,
    Parse,
    Query,
    ReadyForQuery,
    State,
    Sync,
)
from pgsansio.sharding import shard_for_typed_key

from ._answers import command_error, show_one
from ._health import key_of
from ._objects import Pool

if TYPE_CHECKING:
    from pgsansio.config.model import PoolConfig
    from pgsansio.protocol import Event, Span
    from pgsansio.routing import KeyFinder, ShardKeys

    from ._context import Context
    from ._health import Health
    from ._objects import Client, ServerConn

__all__ = ["HOLD", "SHARD_COMMAND_BYTES", "SHARD_LEAD", "Refusal", "Shards", "Unkeyed"]

# The start of a shard command. A dotted name (``SET shard.x TO 1``, a custom setting)
# is SQL and is not taken.
SHARD_LEAD = re.compile(r"\s*(set|show)\s+(shard|sharding\s+key)(?![\w.$])", re.I | re.A)
# The same on a raw Query message, for the fast lane: b"Q", the length, the text.
SHARD_COMMAND_BYTES = re.compile(rb"\s*(?:set|show)\s+shard(?:ing\s+key)?(?![\w.$])", re.I)
_SET_VALUE = re.compile(r"\s+to\s+(?:'([^']*)'|([^\s';]+))", re.I | re.A)
_SHARD_SYNTAX = "SET SHARD TO takes a shard number or 'ANY', e.g. SET SHARD TO '1'"
_KEY_SYNTAX = "SET SHARDING KEY TO takes a key, e.g. SET SHARDING KEY TO '1234'"
_KEY_TYPE_NAMES = {"bigint": "a 64-bit integer", "text": "text", "uuid": "a UUID"}


def _shard_range(n: int) -> str:
    return "its only shard is 0" if n == 1 else f"its shards are 0 to {n - 1}"


# The binary integer types a Bind parameter may carry a key in: OID -> size.
_BINARY_INTS = {20: 8, 23: 4, 21: 2}  # int8, int4, int2
# The types whose binary form is the text's UTF-8 bytes: text, varchar (0: unsaid).
_BINARY_TEXTS = frozenset({0, 25, 1043})
_UUID_OID = 2950


def _bind_key(bind: Bind, parse: Parse, number: int, key_type: str) -> str | int | None:
    """Parameter ``$number`` of ``bind`` as a key of ``key_type``, if it can be one:
    text format, or binary int2 / int4 / int8 for a bigint key (by the type the
    Parse gives it, else by its length), text / varchar for a text key, uuid for a
    uuid key."""
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
    types = parse.param_types
    oid = types[i] if i < len(types) else 0
    if not binary or (key_type == "text" and oid in _BINARY_TEXTS):
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return None
    if key_type == "uuid":
        if oid in (0, _UUID_OID) and len(raw) == 16:
            return str(uuid.UUID(bytes=raw))
        return None
    if key_type != "bigint":
        return None
    if oid:
        if _BINARY_INTS.get(oid) != len(raw):
            return None  # another type, or a malformed value
    elif len(raw) not in (2, 4, 8):
        return None
    return int.from_bytes(raw, "big", signed=True)


def _keys_shard(
    keys: ShardKeys, bind: Bind | None, parse: Parse | None, n: int, cfg: PoolConfig
) -> int | None:
    """The one shard all ``keys`` land on (literals, and parameters read from
    ``bind``), else None: keys on different shards, or one that is not of the
    pool's sharding_key_type."""
    shard = -1
    function = cfg.sharding_function
    key_type = cfg.sharding_key_type
    for value in keys.values:
        s = shard_for_typed_key(value, n, function, key_type)
        if s is None or (shard >= 0 and s != shard):
            return None
        shard = s
    for number in keys.params:
        key = (
            _bind_key(bind, parse, number, key_type)
            if bind is not None and parse is not None
            else None
        )
        s = shard_for_typed_key(key, n, function, key_type) if key is not None else None
        if s is None or (shard >= 0 and s != shard):
            return None
        shard = s
    return shard if shard >= 0 else None


# What a client may send to a server it was placed on without a key, and still move.
_PREPARING = (Describe, Flush, Sync)


def _keep_preparing(e: Event, parses: dict[str, Parse], cached: bool) -> bool:
    """Whether ``e`` only prepares (then note in ``parses`` the statement a new server
    would lack: unnamed, or named with no cache to re-Parse it), or runs something."""
    t = type(e)
    if t is Parse:
        assert isinstance(e, Parse)
        if not e.name or not cached:
            parses[e.name] = e
        return True
    if t is Close:
        assert isinstance(e, Close)
        if e.kind == "S":
            parses.pop(e.name, None)
        return True
    return t in _PREPARING


class Refusal(NamedTuple):
    """Why a request cannot be placed, for an ErrorResponse with this SQLSTATE."""

    sqlstate: str
    message: str


class Unkeyed:
    """A transaction-mode client whose server was placed with no key and has run
    nothing since its checkout (only Parse, Describe, Close, Flush, Sync): the
    statements it prepared there that a new server would lack (unnamed ones, and named
    ones when no prepared statement cache renames them), by name. ``shard``: where a
    keyed Bind is moving it (the next checkout goes there and replays ``parses``)."""

    __slots__ = ("held", "parses", "shard")

    def __init__(self, parses: dict[str, Parse]) -> None:
        self.parses = parses
        self.shard: int | None = None
        # Spans that only prepare and ask for no answer yet (no Flush, no Sync: the
        # server would not answer them before one), kept back until the request they
        # begin shows its Bind: asyncpg sends an unnamed statement's Parse again
        # before its Bind, and the two may arrive apart.
        self.held: list[Span] = []


HOLD = -1  # Shards.rekey: keep the span back (see Unkeyed.held)


class Shards:
    """Owns the readers of automatic sharding keys and the compiled comment regexes."""

    def __init__(self, ctx: Context, *, health: Health) -> None:
        self.ctx = ctx
        self.health = health
        self._finders: dict[tuple[str, int], KeyFinder] = {}
        self._regexes: dict[str, re.Pattern[str]] = {}
        self._parser_missing = False

    @property
    def key_readers(self) -> int:
        """How many automatic-key readers exist: none until a pool with the key asks."""
        return len(self._finders)

    def _finder(self, cfg: PoolConfig) -> KeyFinder | None:
        """The reader of ``cfg``'s automatic_sharding_key, or None without pglast."""
        spec = cfg.automatic_sharding_key
        assert spec is not None
        size = cfg.query_parser_max_length or 0
        finder = self._finders.get((spec, size))
        if finder is None:
            if self._parser_missing:
                return None
            try:
                # Imported on first use: pglast is an optional extra (GPL); Routes says
                # at start when it is missing.
                from pgsansio.routing import KeyFinder  # noqa: PLC0415
            except ImportError:
                self._parser_missing = True
                return None

            finder = self._finders[spec, size] = KeyFinder(spec, max_length=size)
        return finder

    def choose(self, c: Client) -> int | Refusal:
        """The shard of the request being placed (see the module docstring)."""
        group = c.group
        assert group is not None
        cfg = group.cfg
        n = len(group.pools)
        unkeyed = c.unkeyed
        if unkeyed is not None:
            if unkeyed.shard is not None and unkeyed.shard < n:
                return unkeyed.shard  # a keyed Bind is moving it (see rekey)
            c.unkeyed = None
        if cfg.automatic_sharding_key is not None and cfg.query_parser_enabled and n > 1:
            automatic = self._automatic_shard(c, n)
            if automatic is not None:
                return automatic
            c.unkeyed = self._unkeyed(c)
        if cfg.shard_id_regex is not None or cfg.sharding_key_regex is not None:
            found = self._comment_shard(c, n)
            if found is not None:
                return found
        if c.shard is not None:
            if c.shard < n:
                return c.shard
            return Refusal("22023", self.gone(c, c.shard))
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
        scores = [
            sum(
                1
                for p in pools
                if self.health.banned(p.address) or self.health.probe_down(key_of(p))
            )
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

    def keyed_shard(
        self, c: Client, pending: list[tuple[bytes, list[Event], list[int]]]
    ) -> int | Refusal | None:
        """The shard ``pending`` names itself (its automatic key or a comment), else
        None: what a cross-shard read must not have."""
        group = c.group
        assert group is not None
        cfg = group.cfg
        n = len(group.pools)
        if cfg.automatic_sharding_key is not None and cfg.query_parser_enabled:
            automatic = self._automatic_shard(c, n, pending)
            if automatic is not None:
                return automatic
        if cfg.shard_id_regex is not None or cfg.sharding_key_regex is not None:
            return self._comment_shard(c, n, pending)
        return None

    def _comment_shard(
        self,
        c: Client,
        n: int,
        pending: list[tuple[bytes, list[Event], list[int]]] | None = None,
    ) -> int | Refusal | None:
        """The shard named by ``shard_id_regex`` or ``sharding_key_regex`` in the first
        pending Query or Parse text that has one (PgCat tries the shard id first)."""
        assert c.group is not None
        cfg = c.group.cfg
        limit = cfg.regex_search_limit
        id_re = self._regex(cfg.shard_id_regex) if cfg.shard_id_regex is not None else None
        key_re = (
            self._regex(cfg.sharding_key_regex) if cfg.sharding_key_regex is not None else None
        )
        for _, events, _ in c.pending if pending is None else pending:
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
                        shard_or_none = shard_for_typed_key(
                            m.group(1), n, cfg.sharding_function, cfg.sharding_key_type
                        )
                        if shard_or_none is not None:
                            return shard_or_none
        return None

    def _automatic_shard(
        self,
        c: Client,
        n: int,
        pending: list[tuple[bytes, list[Event], list[int]]] | None = None,
    ) -> int | None:
        """The shard that the automatic_sharding_key values of ``c``'s pending
        statements (Query texts, and Parse texts with their Bind parameters) land on;
        None if they name no key, or keys on different shards, or a value that is
        not a 64-bit integer."""
        assert c.group is not None
        cfg = c.group.cfg
        finder = self._finder(cfg)
        if finder is None:
            return None
        found: int | None = None
        parsed: dict[str, Parse] | None = None  # Parse messages pending, by name
        for _, events, _ in c.pending if pending is None else pending:
            for e in events:
                t = type(e)
                if t is Query:
                    assert isinstance(e, Query)
                    keys = finder.find(e.sql)
                    if not keys:
                        continue
                    # ($n in a simple Query is an error: no shard, the server says so)
                    shard = _keys_shard(keys, None, None, n, cfg)
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
                    shard = _keys_shard(keys, e, parse, n, cfg)
                else:
                    continue
                if shard is None or (found is not None and shard != found):
                    return None
                found = shard
        return found

    def _unkeyed(self, c: Client) -> Unkeyed | None:
        """An Unkeyed for ``c`` if what it sends now only prepares statements, in
        transaction mode (a session-mode server never moves)."""
        assert c.user is not None and c.group is not None
        if c.user.pool_mode != "transaction":
            return None
        cached = c.group.cfg.prepared_statements_cache_size > 0
        parses: dict[str, Parse] = {}
        for _, events, _ in c.pending:
            for e in events:
                if not _keep_preparing(e, parses, cached):
                    return None
        return Unkeyed(parses)

    def rekey(self, c: Client, s: ServerConn, events: list[Event]) -> int | None:
        """The shard a client placed without a key (``c.unkeyed``) must move to
        before ``events`` go on: the one shard their Binds' keys land on, when that
        is not ``s``'s and ``s`` can be left (everything answered, no transaction,
        no failed extended batch). Else None, and the client stays; it stops being
        Unkeyed once something runs there. HOLD: ``events`` only prepare and ask
        for no answer yet."""
        u = c.unkeyed
        group = c.group
        assert u is not None and group is not None
        cfg = group.cfg
        n = len(group.pools)
        finder = self._finder(cfg)
        found: int | None = None
        cached = cfg.prepared_statements_cache_size > 0
        parses = dict(u.parses)  # with this span's, to read its Binds' statements
        for e in events:
            t = type(e)
            if t is Bind:
                assert isinstance(e, Bind)
                parse = parses.get(e.statement)
                if parse is None and e.statement:
                    p = c.prepared.get(e.statement)
                    if p is not None:
                        assert isinstance(p.parse, Parse)
                        parse = p.parse
                keys = finder.find(parse.query) if finder is not None and parse else None
                shard = _keys_shard(keys, e, parse, n, cfg) if keys else None
                if shard is None or (found is not None and shard != found):
                    c.unkeyed = None
                    return None
                found = shard
            elif found is None and not _keep_preparing(e, parses, False):
                c.unkeyed = None  # it runs something there: it stays
                return None
        if found is None:
            if not any(type(e) is Flush or type(e) is Sync for e in events):
                return HOLD
            for e in events:  # still only preparing: note what a new server would lack
                _keep_preparing(e, u.parses, cached)
            return None
        conn = s.conn
        if (
            s.pool is None
            or found == s.pool.shard
            or s.queue
            or s.syncing
            or conn.transaction_status != "I"
            or conn.state not in (State.READY, State.IN_QUERY)
        ):
            c.unkeyed = None
            return None
        u.shard = found
        return found

    def gone(self, c: Client, shard: int) -> str:
        assert c.group is not None
        n = len(c.group.pools)
        return (
            f'shard {shard} chosen for this session does not exist (any more): pool "'
            f'{c.group.name}" has {n} shard(s), {_shard_range(n)}; choose one with SET SHARD'
        )

    def command(self, c: Client, sql: str, lead: re.Match[str]) -> None:
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
            command_error(
                self.ctx,
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
                command_error(self.ctx, c, message, status)
                return
            show_one(self.ctx, c, "shard", "unset" if c.shard is None else str(c.shard))
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
                command_error(self.ctx, c, _KEY_SYNTAX, status)
                return
            shard = shard_for_typed_key(value, n, cfg.sharding_function, cfg.sharding_key_type)
            if shard is None:
                command_error(
                    self.ctx,
                    c,
                    f"sharding key {value!r} is not {_KEY_TYPE_NAMES[cfg.sharding_key_type]} "
                    f'(pool "{cfg.name}" has sharding_key_type = "{cfg.sharding_key_type}")',
                    status,
                    "22023",
                )
                return
        elif value is not None and value.isdigit():
            shard = int(value)
        elif value is not None and value.lower() == "any":
            shard = self.ctx.rng.randrange(n) if n > 1 else 0
        else:
            command_error(self.ctx, c, _SHARD_SYNTAX, status)
            return
        if shard >= n:
            staying = "no shard chosen yet" if c.shard is None else f"staying on shard {c.shard}"
            command_error(
                self.ctx,
                c,
                f'shard {shard} does not exist: pool "{cfg.name}" has {n} shard(s), '
                f"{_shard_range(n)} ({staying})",
                status,
                "22023",
            )
            return
        if status != "I":
            command_error(
                self.ctx,
                c,
                f"SET {what} cannot run inside a transaction: a transaction cannot move to "
                "another shard; COMMIT or ROLLBACK first",
                status,
                "25001",
            )
            return
        if s is not None and s.pool is not None and s.pool.shard != shard:
            command_error(
                self.ctx,
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
