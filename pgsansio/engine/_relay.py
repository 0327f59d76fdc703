"""Moving a linked client's requests to its server and the answers back.

The hot path. A client's bytes go to the server unchanged unless a named prepared
statement must be renamed (transaction mode shares statements between clients under
``PGSANSIO_<n>`` names); a server's bytes go to the client unchanged unless we must
swallow an answer to our own request or insert one of ours.

Every request whose answer is still due is an :class:`Entry` in ``ServerConn.queue``,
in the order sent; PostgreSQL answers in that order, so each answer is matched to its
request by looking at the queue's head:

- Parse/Bind/Close/Describe/Execute end with one known message each; Sync, Query and
  FunctionCall with ReadyForQuery;
- an ErrorResponse to an extended-protocol message makes the server skip everything up
  to the next Sync, so those entries are dropped unanswered (an injected Parse that
  never ran is forgotten, an eviction Close that never ran is remembered again);
- ``FAKE`` entries (answers we give ourselves) are emitted as soon as everything ahead
  of them has been answered, so they land exactly where the server's would have;
- what a client pipelines past the Sync of a pipeline that renamed its statements
  (a named Parse or Close, transaction mode) waits for that pipeline's answer, which
  says whether the renaming stood (_hold).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pgsansio.protocol import NEED_DATA as _NEED_DATA
from pgsansio.protocol import PAUSED as _PAUSED
from pgsansio.protocol import (
    Bind,
    BindComplete,
    Close,
    CloseComplete,
    CommandComplete,
    Connection,
    CopyBothResponse,
    CopyInResponse,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Event,
    Execute,
    FunctionCall,
    MalformedMessage,
    NoData,
    NotificationResponse,
    ParameterStatus,
    Parse,
    ParseComplete,
    PortalSuspended,
    Query,
    ReadyForQuery,
    RowDescription,
    Span,
    Sync,
    Terminate,
)

from ._buffers import SMALL
from ._effects import ReadClient, SendClient, SendServer
from ._errors import fatal
from ._objects import (
    EXTENDED,
    FAKE,
    FWD,
    K_BIND,
    K_CLOSE,
    K_DESCRIBE,
    K_EXECUTE,
    K_PARSE,
    K_QUERY,
    K_SYNC,
    SKIP,
    Client,
    Entry,
    ServerConn,
)
from ._params import TRACKED, parse_simple_set, restore_sql, strip_comments
from ._pinning import inert, may_pin
from ._readonly import take_lsn_answer
from ._shards import HOLD, SHARD_COMMAND_BYTES
from ._states import (
    C_CLOSED,
    C_READY,
    S_CLOSED,
)

if TYPE_CHECKING:
    from ._context import Context
    from ._fanout import FanOut
    from ._lending import Lending
    from ._listen import Listen
    from ._pinning import Pinning
    from ._pooling import Pools
    from ._prepared import Statements
    from ._routing import Routes
    from ._sessions import Sessions
    from ._shards import Shards
    from ._stats import Stats

__all__ = ["Relay"]

_TERMINAL: dict[int, tuple[type[Event], ...]] = {
    K_PARSE: (ParseComplete,),
    K_BIND: (BindComplete,),
    K_CLOSE: (CloseComplete,),
    K_DESCRIBE: (RowDescription, NoData),
    K_EXECUTE: (CommandComplete, EmptyQueryResponse, PortalSuspended),
    K_SYNC: (),
    K_QUERY: (),
}
# The same, as the type bytes of those replies (for the fast lane).
_TERMINAL_CODES: dict[int, frozenset[int]] = {
    kind: frozenset(t.type_code[0] for t in types) for kind, types in _TERMINAL.items()
}
_CLEARS_PREPARED = re.compile(r"^\s*(DEALLOCATE\s+(PREPARE\s+)?ALL|DISCARD\s+ALL)\s*;?\s*$", re.I)
_RESETS_ALL = re.compile(r"^\s*(RESET\s+ALL|DISCARD\s+ALL)\s*;?\s*$", re.I)
_SET_CONFIG = re.compile("set_config", re.I)  # scanned in place: no copy of the query
# Every pattern below needs one of these words (case-folded as re.I folds them); a
# query without any is answered by one scan. Comments only ever become spaces, so
# looking before strip_comments misses nothing.
_SESSION_WORDS = re.compile("set|discard|deallocate", re.I)
_INTERNAL_NAME = re.compile(r"PGSANSIO_U?\d+")
# Messages that need the full loop of _to_client, unless the span's last one.
_NOT_PLAIN = frozenset(
    {
        ErrorResponse,
        ParameterStatus,
        CopyInResponse,
        CopyBothResponse,
        ReadyForQuery,
        NotificationResponse,
    }
)
# A batch's plain requests (the client's, unnamed or renamed in place): nothing ever
# writes to such an entry (errors are noted on Sync and Query entries, bindings on the
# named Parses Statements makes), so _send_batch queues these shared ones.
_PLAIN_BIND = Entry(K_BIND)
_PLAIN_EXECUTE = Entry(K_EXECUTE)
_PLAIN_PARSE = Entry(K_PARSE)
_PLAIN_DESCRIBE = Entry(K_DESCRIBE)
# The ``sent`` of a span forwarded untouched: never appended to (see _forward).
_NOTHING_SENT: list[Event] = []
_TRACKED_LOWER = frozenset(name.lower() for name in TRACKED)
_MALFORMED_KIND = {b"P": K_PARSE, b"B": K_BIND, b"D": K_DESCRIBE, b"E": K_EXECUTE, b"C": K_CLOSE}
# How a LISTEN or UNLISTEN query text may start (fast_query leaves those to client_span).
# The Parse texts _parse_seen remembers, and the longest it remembers.
_QUIET_KEPT = 256
_QUIET_MAX_TEXT = 4096
# How an extended batch for the lane starts: a Parse, or a Bind of a prepared statement.
_BATCH_HEADS = frozenset({b"P", b"B"})
_LISTEN_HEADS = frozenset({b"LI", b"li", b"Li", b"lI", b"UN", b"un", b"Un", b"uN"})


def _splice_statement(raw: bytes, name: str) -> bytes:
    """A Bind with another statement name; the parameters are copied, not decoded."""
    body = raw[5:]
    end_portal = body.index(0)
    end_statement = body.index(0, end_portal + 1)
    new = body[: end_portal + 1] + name.encode() + b"\0" + body[end_statement + 1 :]
    return b"B" + (len(new) + 4).to_bytes(4, "big") + new


def _bind_statement(body: bytes) -> str | None:
    """The statement a Bind body names, if its first two strings are whole."""
    end_portal = body.find(0)
    end_statement = body.find(0, end_portal + 1) if end_portal >= 0 else -1
    if end_statement < 0:
        return None
    return body[end_portal + 1 : end_statement].decode("utf-8", "surrogateescape")


def _message_end(data: bytes, offset: int) -> int:
    return offset + 1 + int.from_bytes(data[offset + 1 : offset + 5], "big")


class Relay:
    """Owns no tables: moves a linked pair's bytes (the hot path)."""

    def __init__(
        self,
        ctx: Context,
        *,
        stats: Stats,
        pools: Pools,
        router: Routes,
        lending: Lending,
        sessions: Sessions,
        statements: Statements,
        pinning: Pinning,
        listen: Listen,
        shards: Shards,
        fanout: FanOut,
    ) -> None:
        self.ctx = ctx
        self.shards = shards
        self.fanout = fanout
        self.stats = stats
        self.pools = pools
        self.router = router
        self.lending = lending
        self.sessions = sessions
        self.statements = statements
        self.pinning = pinning
        self.listen = listen
        # Parse texts that neither dirty nor pin a session (see _parse_seen).
        self._quiet: dict[str, bool] = {}
        # False: a waiting client's batch goes through _to_server too (the lane's other
        # half, fast_query, is the Engine's to skip); tests compare the two paths.
        self.fast_lane = True

    # --- client -> server ------------------------------------------------------------

    def _to_server(self, c: Client, s: ServerConn, span: Span) -> None:
        """Forward one span of client messages, renaming prepared statements."""
        q = s.queue
        data = span.data
        events = span.events
        offsets = span.offsets
        rewrite = self.statements.cache_size(c) > 0
        st = c.stats
        self._count_request(c, len(data))
        out: list[bytes] | None = None
        sent = _NOTHING_SENT  # replaced by a list of its own before anything is added
        copied = 0
        for i, e in enumerate(events):
            t = type(e)
            new: list[Event | bytes] | None = None
            if t is Sync:
                if c.rebinding:
                    c.rebinding = False
                    c.rebound = Entry(K_SYNC, tag="rebound")
                    q.append(c.rebound)
                    if _more_to_hold(span, i):  # what the client pipelined after it waits
                        if out is not None:
                            sent.append(e)
                        span = self._hold_rest(c, span, i + 1)
                        break
                else:
                    q.append(Entry(K_SYNC))
            elif t is Execute:
                q.append(Entry(K_EXECUTE))
            elif t is Query:
                assert isinstance(e, Query)
                entry = self._query_entry(c, s, e.sql)
                q.append(entry)
                c.unnamed_pending = False
                if entry.tag:
                    if entry is c.rebound and _more_to_hold(span, i):
                        if out is not None:
                            sent.append(e)
                        span = self._hold_rest(c, span, i + 1)
                        break
                    restore = self._restore(c, s, entry)
                    if restore is not None:
                        new = [data[offsets[i] : _end(data, offsets, i)], restore]
                if not e.sql and _message_end(data, offsets[i]) > len(data):
                    s.dirty = True  # streamed, its text unseen (_buffers): reset after
            elif t is Bind:
                assert isinstance(e, Bind)
                if e.statement and rewrite:
                    new = self._bind_to(
                        c, s, data[offsets[i] : _end(data, offsets, i)], e.statement
                    )
                elif not e.statement:
                    c.unnamed_pending = False
                st.bind_count += 1
                q.append(Entry(K_BIND))
            elif t is Parse:
                assert isinstance(e, Parse)
                self._parse_seen(c, s, e)
                if e.name and rewrite:
                    new = self.statements.client_parse(c, s, e)
                    c.rebinding = True
                else:
                    st.server_parse_count += 1
                    if not e.name:
                        c.unnamed_pending = True
                    q.append(Entry(K_PARSE))
            elif t is Describe:
                assert isinstance(e, Describe)
                if e.kind == "S" and e.name and rewrite:
                    p = c.prepared.get(e.name)
                    if p is None:
                        new = [Describe("S", self.statements.alias(c, e.name))]
                    else:
                        new = self.statements.ensure(s, p)
                        new.append(Describe("S", p.name))
                q.append(Entry(K_DESCRIBE))
            elif t is Close:
                assert isinstance(e, Close)
                if e.kind == "S" and e.name and rewrite:
                    self.statements.client_close(c, s, e.name)
                    c.rebinding = True
                    new = []
                else:
                    q.append(Entry(K_CLOSE))
            elif t is FunctionCall:
                q.append(Entry(K_QUERY))
            elif t is Terminate:
                new = []  # the client is leaving; the server stays ours to reuse
            elif t is MalformedMessage:
                # Forwarded as it came: PostgreSQL answers it (ERROR 08P01, then skips
                # to Sync) exactly as it would a direct client, aborting what it must.
                # A Bind names its statement before what is wrong with it, and
                # PostgreSQL looks that up first: it gets the server's name for it.
                assert isinstance(e, MalformedMessage)
                name = _bind_statement(e.body) if e.code == b"B" and rewrite else None
                if name:
                    new = self._bind_to(c, s, data[offsets[i] : _end(data, offsets, i)], name)
                q.append(Entry(_MALFORMED_KIND[e.code]))
            if new is not None:
                if out is None:
                    out = []
                    sent = list(events[:i])
                out.append(data[copied : offsets[i]])
                for item in new:
                    if isinstance(item, Event):
                        out.append(bytes(item))
                        sent.append(item)
                    else:
                        out.append(item)
                        sent.append(e)
                copied = _message_end(data, offsets[i])
            elif out is not None:
                sent.append(e)
        payload = _forward(s.conn, span, out, copied, sent)
        if payload:
            self.ctx.out.append(SendServer(s.sid, payload))

    def _parse_seen(self, c: Client, s: ServerConn, e: Parse) -> None:
        """What any Parse on its way to a server tells: session state it may leave."""
        query = e.query
        quiet = self._quiet.get(query)
        if quiet is None:
            # A client parses the same few texts again and again (pgbench -M extended
            # every time): whether one says anything is found once per text.
            quiet = _SET_CONFIG.search(query) is None and inert(query)
            if len(query) <= _QUIET_MAX_TEXT:
                if len(self._quiet) >= _QUIET_KEPT:
                    self._quiet.clear()
                self._quiet[query] = quiet
        if not quiet:
            if _SET_CONFIG.search(query):
                s.dirty = True
            self.pinning.query(c, s, query, simple=False, reused=bool(e.name))
        c.stats.client_parse_count += 1

    def _bind_to(
        self, c: Client, s: ServerConn, raw: bytes, statement: str
    ) -> list[Event | bytes]:
        """A client's Bind of its named statement, as ``s`` must get it: under the
        shared name (prepared on ``s`` first if need be)."""
        p = c.prepared.get(statement)
        if p is None:  # let the server say it does not exist, as it would
            return [_splice_statement(raw, self.statements.alias(c, statement))]
        new = self.statements.ensure(s, p)
        new.append(_splice_statement(raw, p.name))
        return new

    def _count_request(self, c: Client, size: int) -> None:
        """Statistics of client bytes on their way to a server: the bytes, and the
        query (and transaction) now running, if none was."""
        c.stats.received += size
        if c.query_start is None:
            c.query_start = self.ctx.now
            if c.xact_start is None:
                c.xact_start = self.ctx.now

    def _query_entry(self, c: Client, s: ServerConn, sql: str) -> Entry:
        if sql.isascii():
            # ASCII text folds by lower() exactly as re.I folds it, ten times faster
            # than a case-insensitive scan.
            low = sql.lower()
            if "set" not in low and "discard" not in low and "deallocate" not in low:
                if may_pin(low):
                    self.pinning.query(c, s, sql)
                return Entry(K_QUERY)  # the common query: nothing below can apply
        elif _SESSION_WORDS.search(sql) is None:
            self.pinning.query(c, s, sql)
            return Entry(K_QUERY)
        self.pinning.query(c, s, sql)
        sql = strip_comments(sql)
        if _SET_CONFIG.search(sql):
            s.dirty = True  # set_config(..., false) leaves no SET tag to notice
        rebound = False
        if _CLEARS_PREPARED.match(sql):
            for p in c.prepared.values():
                self.statements.unref(p)
            c.prepared.clear()
            rebound = self.statements.cache_size(c) > 0
        head = sql[:64].upper()
        if s.conn.transaction_status == "I" and ("SET" in head or "DISCARD" in head):
            if _RESETS_ALL.match(sql):
                return Entry(K_QUERY, tag="resetall")
            parsed = parse_simple_set(sql)
            if parsed is not None:
                return Entry(K_QUERY, tag="set", name=parsed[0], value=parsed[1])
        if rebound:
            # What the client pipelines after its DEALLOCATE ALL waits for the answer
            # (see _hold): then our record of the server's statements is true again.
            c.rebound = Entry(K_QUERY, tag="rebound")
            return c.rebound
        return Entry(K_QUERY)

    # --- server -> client ------------------------------------------------------------

    def _to_client(self, s: ServerConn, span: Span) -> None:
        """Forward one span of server messages to the linked client, if any."""
        c = s.client
        q = s.queue
        events = span.events
        if c is not None and len(q) == 1 and events and type(events[-1]) is ReadyForQuery:
            head = q[0]
            if head.mode == FWD and head.kind >= K_SYNC and not head.tag:
                for k in range(len(events) - 1):
                    if type(events[k]) in _NOT_PLAIN:
                        break
                else:
                    self._plain_answer(c, s, span, head)
                    return
        if q and q[0].tag == "lsn":
            rest = take_lsn_answer(s, span, self.sessions.internal_done)
            if rest is None:
                return
            span = rest
            events = span.events
        data = span.data
        offsets = span.offsets
        out: list[bytes] | None = None
        sent = _NOTHING_SENT  # replaced by a list of its own before anything is added
        copied = 0
        done: list[Entry] | None = None
        rebound = False  # the answer to a pipeline that renamed: what waits may go
        prefix: list[Event] | None = None  # to send before the current message
        for i, e in enumerate(events):
            t = type(e)
            entry = q[0] if q else None
            drop = c is None or (entry is not None and entry.mode == SKIP)
            replacement: Event | None = None
            if entry is not None and t in _TERMINAL[entry.kind]:
                q.popleft()
                if t is CommandComplete:
                    self._command_tag(s, e, entry)
            elif t is ReadyForQuery:
                while q:
                    x = q.popleft()
                    if x.kind >= K_SYNC:
                        if x.mode == SKIP:
                            if done is None:
                                done = []
                            done.append(x)
                        drop = c is None or x.mode == SKIP
                        if not drop and c is not None:
                            assert isinstance(e, ReadyForQuery)
                            self.stats.count_query(c, e.status)
                        if x.tag == "set" and c is not None and x.error is None:
                            if x.value is None:
                                prefix = self._back_to_startup(c, x.name)
                            self._commit_set(c, s, x)
                        elif x.tag == "rebound" and c is not None and c.rebound is x:
                            c.rebound = None
                            rebound = True
                        elif x.tag == "resetall" and c is not None and x.error is None:
                            # Back to the startup settings (our restore query follows).
                            c.settings = dict(c.startup[1])
                            s.applied = dict(c.startup[1])
                            c.sync_key = s.sync_key = None
                            prefix = self._back_to_startup(c, None)
                        break
                    self._unanswered(s, x)
            elif t is ErrorResponse:
                assert isinstance(e, ErrorResponse)
                if c is not None and c.pin is not None:
                    self.pinning.failed(c)
                if drop and c is not None and e.severity in ("FATAL", "PANIC"):
                    # Even in the answer to a request of ours (a settings sync just
                    # after linking): the server is ending the client's session, and
                    # its reason (57P01 ...) is the client's error, not our 08006.
                    drop = False
                skipped: list[Entry] | None = None
                if entry is not None:
                    if entry.kind in EXTENDED:
                        skipped = [q.popleft()]
                        self._unanswered(s, entry, failed=True)
                        while q and q[0].kind != K_SYNC:
                            skipped.append(q.popleft())
                            self._unanswered(s, skipped[-1])
                        if c is not None:
                            self._undo(c, skipped)
                    else:
                        entry.error = e
                if not drop and c is not None and (c.prepared or c.aliases or skipped):
                    replacement = self._client_names(c, e, skipped)
                if e.severity in ("FATAL", "PANIC"):
                    # The server is ending the session (administrator command, idle
                    # timeout ...): the client has been told; nothing more to add.
                    s.close_needed = True
                    s.fatal_forwarded = not drop and c is not None
            elif t is NotificationResponse:
                if c is not None and c.listens:
                    drop = True  # the pool's listener delivers it (see _listen)
            elif t is ParameterStatus:
                assert isinstance(e, ParameterStatus)
                s.params[e.name] = e.value
                s.sync_key = None
                if (
                    not drop
                    and entry is not None
                    and c is not None
                    and e.name in c.startup[0]
                    and _resets(entry)
                    and (entry.tag == "resetall" or entry.name == e.name.lower())
                ):
                    # The pooled connection's startup value: the client's own takes its
                    # place (reported only if it changes what the client saw; one the
                    # server did not report comes with the ReadyForQuery).
                    value = c.startup[0][e.name]
                    if c.params.get(e.name) == value:
                        drop = True
                    else:
                        replacement = ParameterStatus(e.name, value)
                        c.params[e.name] = value
                        c.sync_key = None
                if not drop and c is not None and replacement is None:
                    c.params[e.name] = e.value
                    c.sync_key = None
            elif t is CommandComplete:
                self._command_tag(s, e, entry)
            elif (t is CopyInResponse or t is CopyBothResponse) and (
                entry is not None and entry.kind == K_EXECUTE
            ):
                # "the backend will ignore Flush and Sync messages received during
                # copy-in mode": libpq's Sync sent before the data is eaten.
                for x in [x for x in q if x.kind == K_SYNC]:
                    q.remove(x)
            fakes: list[Event] | None = None
            if q and q[0].mode == FAKE:
                fakes = []
                while q and q[0].mode == FAKE:
                    fake = q.popleft().fake
                    assert fake is not None
                    fakes.append(fake)
            if drop or fakes is not None or replacement is not None or prefix is not None:
                if out is None:
                    out = []
                    sent = list(events[:i])
                out.append(data[copied : offsets[i]])
                end = _message_end(data, offsets[i])
                if prefix is not None:
                    for extra in prefix:
                        out.append(bytes(extra))
                        sent.append(extra)
                    prefix = None
                if not drop:
                    if replacement is not None:
                        out.append(bytes(replacement))
                        sent.append(replacement)
                    else:
                        out.append(data[offsets[i] : end])
                        sent.append(e)
                for fake in fakes or ():
                    if c is not None:
                        out.append(bytes(fake))
                        sent.append(fake)
                copied = end
            elif out is not None:
                sent.append(e)
        if c is not None:
            payload = _forward(c.conn, span, out, copied, sent)
            if payload:
                c.stats.sent += len(payload)
                self.ctx.out.append(SendClient(c.cid, payload))
        if done is not None:
            for entry in done:
                self.sessions.internal_done(s, entry)
        if rebound and c is not None and c.pending and s.client is c and c.state is not C_CLOSED:
            self.flush_pending(c, s)
        if s.client is not None:
            self.sessions.release_if_done(s)
            if c is not None and c.notes:
                self.listen.deliver(c)
        elif s.close_needed and not q and s.conn.idle and s.state is not S_CLOSED:
            # An abandoned server whose cancelled query has answered.
            self.pools.close_server(s)
            if s.pool is not None:
                self.pools.refill(s.pool)

    def _plain_answer(self, c: Client, s: ServerConn, span: Span, entry: Entry) -> None:
        """The common answer, in one span: the whole answer to the client's one
        outstanding Query (or Sync), with nothing to drop, fake, rename or note but its
        CommandComplete tags. What the loop of _to_client does for it, without the
        per-message tests."""
        events = span.events
        rfq = events[-1]
        assert isinstance(rfq, ReadyForQuery)
        c.conn.send_span(span)
        self._answered(
            c,
            s,
            entry,
            [e for e in events if type(e) is CommandComplete],
            status=rfq.status,
            data=span.data,
        )

    def _answered(
        self,
        c: Client,
        s: ServerConn,
        entry: Entry,
        tags: Sequence[Event],
        *,
        status: str,
        data: bytes,
    ) -> None:
        """What both kinds of plain answer end with (see _plain_answer)."""
        s.queue.clear()  # all answered: nothing sent after a DEALLOCATE ALL is pending
        for e in tags:
            self._command_tag(s, e, entry)
        self.stats.count_query(c, status)
        if data:
            c.stats.sent += len(data)
            self.ctx.out.append(SendClient(c.cid, data))
        self.sessions.release_if_done(s)
        if c.notes:
            self.listen.deliver(c)

    # --- the fast lane ---------------------------------------------------------------
    #
    # One simple Query or one extended batch closed by a Sync from a client, and a
    # whole answer (rows, CommandComplete, ReadyForQuery) in one read, to a Query or to
    # extended messages up to one Sync: most of what a transaction pooler does (pgbench
    # -S and TPC-B, psql, drivers' Parse/Bind/Describe/Execute/Sync and their answers).
    # A batch's named statements are renamed here too when they are prepared on the
    # server already (nothing to send first); anything else about a batch goes to
    # _to_server with the events take_batch read. When everything about the client,
    # the server and the bytes is ordinary, they take these two methods instead of the
    # general path (spans, the pending list, checkout, _to_server/_to_client), which
    # cost about three times as much. "Ordinary" is checked before anything changes,
    # so declining is free; the effects and the state afterwards are the general
    # path's (tests/test_fastlane.py runs the same traffic both ways and compares).
    # Each half reads with the ``take_`` call of the connection the bytes came from
    # and forwards with the ``pass_`` call of the other; each call keeps to its own
    # connection, and a ``pass_`` call is ``send_span`` where its short cut does not fit.

    def fast_query(self, c: Client, data: bytes) -> bool:
        """``data`` from ``c`` sent on, if it is the ordinary case: one simple Query
        (Connection.take_query) or one extended batch closed by a Sync
        (Connection.take_batch) that client_span would send straight to a server, or
        queue while the client waits for one; False if not."""
        group = c.group
        head = data[:1]
        query = head == b"Q"
        if (
            not (query or head in _BATCH_HEADS)
            or c.state is not C_READY
            or c.pending
            or c.admin
            or c.blocked
            or c.waiting_since is not None
            or group is None
            or group.cfg.query_parser_enabled
        ):
            return False
        if query:
            if (
                SHARD_COMMAND_BYTES.match(data, 5) is not None
                or data[5:7] in _LISTEN_HEADS  # maybe LISTEN/UNLISTEN: see _listen
            ):
                return False
        elif (
            c.fanout is not None
            or c.unkeyed is not None
            or c.held_begin is not None
            or group.cfg.cross_shard != "off"
        ):
            return False  # client_span's other turns for a batch
        s = c.server
        if s is None:
            s = self.lending.ready_server(c, group)
            if s is None and len(data) >= SMALL:
                # It would wait holding that much: the general path has Buffers check
                # client_buffer_limit and total_buffer_limit (the Engine asks after it).
                return False
        elif s.syncing or s.queue or s.blocked or s.fatal_forwarded or not s.conn.idle:
            return False
        sql: str | None = None
        batch: tuple[list[Event], list[int]] | None = None
        if query:
            sql = c.conn.take_query(data)
            if sql is None:
                return False
        else:
            batch = c.conn.take_batch(data)
            if batch is None:
                return False
        if s is None:  # it waits for a server, as client_span would have made it wait
            if batch is None:
                assert sql is not None
                batch = [Query(sql)], [0]
            c.pending.append((data, batch[0], batch[1]))
            self.lending.checkout(c)
            return True
        if c.server is None:
            self.lending.take(c, s)
            self.sessions.attach(c, s)
        if sql is not None:
            self._send_query(c, s, data, sql)
        else:
            assert batch is not None
            self._send_batch(c, s, Span(data, batch[0], batch[1]))
        self.sessions.after_client_data(c, s)
        return True

    def _send_batch(self, c: Client, s: ServerConn, span: Span) -> None:
        """What _to_server does for an extended batch (Parse, Bind, Describe,
        Execute, Sync) whose named statements are all the client's and prepared on
        ``s`` already (renamed, nothing to send first), for less; anything else
        goes to _to_server."""
        events = span.events
        rewrite = self.statements.cache_size(c) > 0
        if rewrite:
            for e in events:
                t = type(e)
                if t is Bind:
                    assert isinstance(e, Bind)
                    name = e.statement
                elif t is Describe:
                    assert isinstance(e, Describe)
                    name = e.name if e.kind == "S" else ""
                elif t is Parse:
                    assert isinstance(e, Parse)
                    if e.name:
                        self._to_server(c, s, span)  # a named Parse: shared, renamed
                        return
                    continue
                else:
                    continue
                if name:
                    p = c.prepared.get(name)
                    if p is None or p.name not in s.prepared:
                        self._to_server(c, s, span)  # an alias, or a Parse goes first
                        return
        q = s.queue
        data = span.data
        offsets = span.offsets
        st = c.stats
        self._count_request(c, len(data))
        out: list[bytes] | None = None
        sent = events
        copied = 0
        for i, e in enumerate(events):
            t = type(e)
            piece: bytes | None = None
            if t is Bind:
                assert isinstance(e, Bind)
                if e.statement and rewrite:
                    p = c.prepared[e.statement]
                    s.prepared.move_to_end(p.name)  # Statements.ensure, when it is there
                    piece = _splice_statement(data[offsets[i] : offsets[i + 1]], p.name)
                elif not e.statement:
                    c.unnamed_pending = False
                st.bind_count += 1
                q.append(_PLAIN_BIND)
            elif t is Execute:
                q.append(_PLAIN_EXECUTE)
            elif t is Sync:
                q.append(Entry(K_SYNC))
            elif t is Parse:
                assert isinstance(e, Parse)
                self._parse_seen(c, s, e)
                st.server_parse_count += 1
                if not e.name:
                    c.unnamed_pending = True
                q.append(_PLAIN_PARSE)
            else:
                assert isinstance(e, Describe)
                if e.kind == "S" and e.name and rewrite:
                    p = c.prepared[e.name]
                    s.prepared.move_to_end(p.name)
                    described = Describe("S", p.name)
                    piece = bytes(described)
                    if sent is events:
                        sent = list(events)
                    sent[i] = described
                q.append(_PLAIN_DESCRIBE)
            if piece is not None:
                if out is None:
                    out = []
                out.append(data[copied : offsets[i]])
                out.append(piece)
                copied = offsets[i + 1]
        if out is not None:
            out.append(data[copied:])
            data = b"".join(out)
        self.ctx.out.append(SendServer(s.sid, s.conn.pass_batch(data, sent)))

    def _send_query(self, c: Client, s: ServerConn, data: bytes, sql: str) -> None:
        """What _to_server does for a span of one Query, for less."""
        self._count_request(c, len(data))
        entry = self._query_entry(c, s, sql)
        s.queue.append(entry)
        c.unnamed_pending = False
        payload = s.conn.pass_query(data, sql)
        if entry.tag:
            restore = self._restore(c, s, entry)
            if restore is not None:  # in the same write, as _to_server sends it
                payload = payload + s.conn.send(restore)
        self.ctx.out.append(SendServer(s.sid, payload))

    def _restore(self, c: Client, s: ServerConn, entry: Entry) -> Query | None:
        """After the client's RESET ALL, DISCARD ALL or RESET name, our query that puts
        back what its startup packet set (the server went back to the pooled
        connection's own startup values); None when there is nothing to put back."""
        if not _resets(entry):
            return None
        sql = restore_sql(c.startup, None if entry.tag == "resetall" else entry.name)
        if not sql:
            return None
        s.queue.append(Entry(K_QUERY, SKIP, tag="restore"))
        return Query(sql)

    def _back_to_startup(self, c: Client, name: str | None) -> list[Event] | None:
        """The ParameterStatus messages PostgreSQL sends when a reset puts the
        client's startup values back (only those that differ from what it last saw)."""
        out: list[Event] = []
        for n, v in c.startup[0].items():
            if (name is None or n.lower() == name) and c.params.get(n) != v:
                c.params[n] = v
                c.sync_key = None
                out.append(ParameterStatus(n, v))
        return out or None

    def fast_answer(self, s: ServerConn, data: bytes) -> bool:
        """``data`` from ``s`` sent to its client, if it is the whole ordinary answer
        to everything the client asked (one Query, or extended messages up to one
        Sync, all its own); False if not."""
        c = s.client
        q = s.queue
        if c is None or not q:
            return False
        last = q[-1]
        if last.kind < K_SYNC or last.mode != FWD or last.tag:
            return False
        check = None
        if len(q) > 1:
            kinds: list[int] = []
            for x in q:
                if x is not last:
                    if x.mode != FWD or x.kind >= K_SYNC:
                        return False
                    kinds.append(x.kind)

            def check(codes: bytes) -> bool:
                # _to_client's matching: a reply that ends the request at the head
                # of the queue takes it off; every request must be answered so.
                i = 0
                for code in codes:
                    if i < len(kinds) and code in _TERMINAL_CODES[kinds[i]]:
                        i += 1
                return i == len(kinds)

        answer = s.conn.take_answer(data, check)
        if answer is None:
            return False
        status, tags = answer
        self._answered(c, s, last, tags, status=status, data=c.conn.pass_answer(data, status))
        return True

    def _undo(self, c: Client, skipped: list[Entry]) -> None:
        """The client's statement names as the refused and skipped requests left them
        (see Statements.undo)."""
        bindings = [x.binding for x in reversed(skipped) if x.binding is not None]
        if bindings:
            self.statements.undo(c, bindings)

    def _unanswered(self, s: ServerConn, x: Entry, *, failed: bool = False) -> None:
        """A request skipped after an error (or the failed one itself)."""
        if x.kind == K_PARSE and x.name is not None and x.mode != FAKE:
            s.prepared.pop(x.name, None)
        elif x.kind == K_CLOSE and x.name is not None and x.mode == SKIP and not failed:
            # The eviction never ran: the statement is still there, least recent.
            s.prepared[x.name] = None
            s.prepared.move_to_end(x.name, last=False)

    def _command_tag(self, s: ServerConn, e: Event, entry: Entry | None) -> None:
        """Note session state a statement left on the server (see _params)."""
        assert isinstance(e, CommandComplete)
        tag = e.tag
        ours = entry is not None and entry.mode == SKIP
        if tag in {"SET", "RESET"}:
            if not ours and (entry is None or entry.tag not in ("set", "resetall")):
                s.dirty = True
        elif tag == "DISCARD ALL":
            self._deallocated(s)
            s.applied.clear()
            s.sync_key = None
            s.dirty = False
        elif tag == "DEALLOCATE ALL":
            self._deallocated(s)
        elif (tag in {"PREPARE", "LISTEN"}) and not ours:
            s.dirty = True

    @staticmethod
    def _deallocated(s: ServerConn) -> None:
        """The server dropped every prepared statement: only those our requests sent
        after it (still in the queue, answered in order) prepare are there now. A
        client pipelining past its DEALLOCATE ALL has had them parsed already; were they
        forgotten, our next silent Parse of one would fail with 42P05."""
        keep: dict[str, None] = {}
        for x in s.queue:
            if x.name is not None and x.mode != FAKE:
                if x.kind == K_PARSE:
                    keep[x.name] = None
                elif x.kind == K_CLOSE:
                    keep.pop(x.name, None)
        if not keep:
            s.prepared.clear()
            return
        for name in [n for n in s.prepared if n not in keep]:
            del s.prepared[name]

    def _commit_set(self, c: Client, s: ServerConn, x: Entry) -> None:
        assert x.name is not None
        if x.name in _TRACKED_LOWER and any(k.lower() == x.name for k in s.params):
            return  # reported: its ParameterStatus already updated both sides
        c.sync_key = s.sync_key = None
        startup = c.startup[1].get(x.name) if x.value is None else None
        if startup is not None:  # RESET name: back to the startup value (restored)
            c.settings[x.name] = s.applied[x.name] = startup
        elif x.value is None:
            c.settings.pop(x.name, None)
            s.applied.pop(x.name, None)
        else:
            c.settings[x.name] = x.value
            s.applied[x.name] = x.value

    def _client_names(
        self, c: Client, e: ErrorResponse, skipped: list[Entry] | None = None
    ) -> ErrorResponse | None:
        """The error with our shared statement names replaced by the client's own.

        The requests the error refused or skipped say best which client name stood for
        a shared one (the failed request itself first): two client names may share a
        statement, and a later pipeline may already have rebound the name."""
        if not any(_INTERNAL_NAME.search(v) for k, v in e.fields if k in "MDH"):
            return None
        names = {p.name: name for name, p in c.prepared.items()}
        names.update(c.aliases)
        for x in reversed(skipped or ()):
            if x.binding is not None:
                name, before, after = x.binding
                for p in (before, after):
                    if p is not None:
                        names[p.name] = name

        def fix(m: re.Match[str]) -> str:
            return names.get(m.group(0), m.group(0))

        return ErrorResponse(
            [(k, _INTERNAL_NAME.sub(fix, v) if k in "MDH" else v) for k, v in e.fields]
        )

    def read_server(self, s: ServerConn) -> None:
        conn = s.conn
        while s.state is not S_CLOSED:
            span = conn.next_span()
            if span is _NEED_DATA or span is _PAUSED:
                return
            if not isinstance(span, Span):
                self.ctx.server_gone(
                    s,
                    fatal("08006", "the server closed the connection unexpectedly"),
                    closed=True,
                )
                return
            self._to_client(s, span)
            # In the query phase a span holds every whole message received; what is
            # left is part of a message, so asking again would only say NEED_DATA.
            return

    def flush_pending(self, c: Client, s: ServerConn) -> None:
        unkeyed = c.unkeyed
        if unkeyed is not None and unkeyed.shard is not None:
            # Moved here by a keyed Bind: what the client prepared on the server it
            # left goes first, silently (it has had those answers).
            c.unkeyed = None
            for parse in unkeyed.parses.values():
                s.queue.append(Entry(K_PARSE, SKIP))
                self.ctx.send_server(s, s.conn.send(parse))
        if c.held_begin is not None:  # answered by us earlier (see _readonly): send it now
            self.pools.send_internal(s, c.held_begin, "begin")
            c.held_begin = None
        if c.stream_wait:
            c.stream_wait = False
            if not s.blocked:
                self.ctx.out.append(ReadClient(c.cid, True))
        pending, c.pending = c.pending, []
        if len(pending) == 1:
            data, events, offsets = pending[0]
            first = events[0] if len(events) == 1 else None
            if (
                isinstance(first, Query)
                and first.sql
                and c.state is not C_CLOSED
                and c.server is s
            ):
                # One Query (the fast lane's waiting client): _to_server's work, for less.
                self._send_query(c, s, data, first.sql)
                self.sessions.after_client_data(c, s)
                return
            if (
                self.fast_lane
                and _is_batch(data, events, offsets)
                and c.state is not C_CLOSED
                and c.server is s
            ):
                # One extended batch (the lane's waiting client): the same, for less.
                self._send_batch(c, s, Span(data, events, offsets))
                self.sessions.after_client_data(c, s)
                return
        for k, (data, events, offsets) in enumerate(pending):
            if c.state is C_CLOSED or c.server is not s:
                return
            if c.rebound is not None and self._rebound_due(c, s):
                c.pending.extend(pending[k:])  # they wait again (see _hold)
                break
            self._to_server(c, s, Span(data, events, offsets))
        if pending and c.state is not C_CLOSED and c.server is s:
            self.sessions.after_client_data(c, s)

    def client_span(self, c: Client, span: Span) -> None:
        s = c.server
        events = span.events
        if s is not None and s.fatal_forwarded:
            # The server ended this session with a FATAL the client already has.
            # PostgreSQL reads nothing after it, so neither do we (not even a command
            # the pooler would answer itself); the server's EOF ends the client.
            if events and type(events[-1]) is Terminate:
                self.ctx.drop_client(c)
            return
        group = c.group
        if group is not None and self.router.custom_command(c, span):
            return
        if s is None and self.listen.client_query(c, span):
            return  # a LISTEN served by the pool's listener
        leaving = bool(events) and type(events[-1]) is Terminate
        if c.fanout is not None and not leaving:
            self.fanout.wait(c, span)  # after the cross-shard query running
            return
        if s is not None and c.unkeyed is not None and not s.syncing and self._rekey(c, s, span):
            return
        if s is not None and not s.syncing:
            if c.rebound is not None:  # (a pending of another kind is not ours to hold)
                if not leaving and c.unkeyed is None and self._hold(c, s, span):
                    return
                if c.pending:  # leaving: what waited goes first, on the first guess
                    c.rebound = None
                    self.flush_pending(c, s)
                    if c.state is C_CLOSED or c.server is not s:
                        return
            self._to_server(c, s, span)
            if leaving:
                self.ctx.drop_client(c)  # PostgreSQL closes after Terminate; so do we
            else:
                self.sessions.after_client_data(c, s)
            return
        if leaving:
            # Nothing of it reached a server yet: what came before Terminate is dropped.
            self.ctx.drop_client(c)
            return
        if (
            s is None
            and group is not None
            and group.cfg.cross_shard != "off"
            and not c.pending
            and c.waiting_since is None
            and self.fanout.start(c, span)
        ):
            return
        if (
            s is None
            and group is not None
            and not c.pending
            and not c.blocked
            and c.waiting_since is None
            and c.held_begin is None
        ):
            ready = self.lending.ready_server(c, group)
            if ready is not None:  # what checkout would do, without the pending list
                self.lending.take(c, ready)
                self.sessions.attach(c, ready)
                self._to_server(c, ready, span)
                self.sessions.after_client_data(c, ready)
                return
        c.pending.append((span.data, events, span.offsets))
        if c.conn.streaming and not c.stream_wait:
            c.stream_wait = True  # read the rest once a server takes it (flush_pending)
            self.ctx.out.append(ReadClient(c.cid, False))
        if s is None and c.waiting_since is None:
            self.lending.checkout(c)

    @staticmethod
    def _rebound_due(c: Client, s: ServerConn) -> bool:
        """Whether the answer ``c.rebound`` waits for will still come from ``s``; if
        not (the server was lost, the client moved), nothing waits for it any more."""
        if c.rebound in s.queue:
            return True
        c.rebound = None
        return False

    def _hold_rest(self, c: Client, span: Span, cut: int) -> Span:
        """Split ``span`` before its message ``cut``: the rest waits in ``pending``
        (_hold), the head returned goes now."""
        data = span.data
        at = span.offsets[cut]
        c.stats.received -= len(data) - at  # counted again when it is sent
        c.pending.insert(0, (data[at:], span.events[cut:], [o - at for o in span.offsets[cut:]]))
        return Span(data[:at], span.events[:cut], span.offsets[:cut])

    def _hold(self, c: Client, s: ServerConn, span: Span) -> bool:
        """Keep ``span`` back while the client's last pipeline that renamed (a named
        Parse or Close) is unanswered: an error there makes the server skip the change
        and the client's names mean what they meant before, which this span's names
        must be read with. Sent by flush_pending once that ReadyForQuery is back.
        Drivers rarely pipeline past a new statement; those that do wait one round
        trip once. False: nothing is due (the span goes now)."""
        if c.rebound is not None and not self._rebound_due(c, s) and c.pending:
            self.flush_pending(c, s)
        if c.rebound is None and not c.pending:
            return False
        c.pending.append((span.data, span.events, span.offsets))
        if c.conn.streaming and not c.stream_wait:
            c.stream_wait = True  # read the rest once it is sent (flush_pending)
            self.ctx.out.append(ReadClient(c.cid, False))
        return True

    def _rekey(self, c: Client, s: ServerConn, span: Span) -> bool:
        """Move ``c``, placed on ``s`` with no key and having run nothing there, to
        the shard its Binds' keys name (Shards.rekey): ``s`` is let go (after a
        silent Sync if the client's batch there is still open) and the request waits
        for a server of that shard. False: ``span`` goes to ``s`` as usual."""
        u = c.unkeyed
        assert u is not None
        held = u.held
        events = span.events
        if held:
            events = [e for h in held for e in h.events]
            events.extend(span.events)
        shard = self.shards.rekey(c, s, events)
        if shard == HOLD:
            held.append(span)
            return True
        u.held = []
        if shard is None:
            for h in held:
                self._to_server(c, s, h)
            return False
        self.sessions.unlink(c, s)
        if s.conn.idle:
            self.pools.server_free(s)
        else:
            s.queue.append(Entry(K_SYNC, SKIP, tag="unkeyed"))
            self.ctx.send_server(s, s.conn.send(Sync()))
        c.pending.extend((h.data, h.events, h.offsets) for h in held)
        c.pending.append((span.data, span.events, span.offsets))
        self.lending.checkout(c)
        return True


def _forward(
    conn: Connection, span: Span, out: list[bytes] | None, copied: int, sent: list[Event]
) -> bytes:
    """The bytes to write for ``span``: itself untouched (no copy), or the rewritten
    pieces plus its rest; ``conn`` (the receiving side's state) sees what is sent."""
    if out is None:
        conn.send_span(span)
        return span.data
    out.append(span.data[copied:])
    payload = b"".join(out)
    conn.send_span(Span(payload, sent, []))
    return payload


_BATCHED = (Parse, Bind, Describe, Execute)


def _is_batch(data: bytes, events: Sequence[Event], offsets: list[int]) -> bool:
    """Whether a span is one batch _send_batch takes: Parse, Bind, Describe and
    Execute messages, back to back, closed by a Sync that ends ``data`` (what
    Connection.take_batch reads)."""
    last = len(events) - 1
    if last < 1 or type(events[last]) is not Sync or offsets[last] != len(data) - 5:
        return False
    at = 0
    for i in range(last):
        if offsets[i] != at or type(events[i]) not in _BATCHED:
            return False
        at = _message_end(data, at)
    return at == offsets[last]


def _more_to_hold(span: Span, i: int) -> bool:
    """Whether messages follow message ``i`` of a client's span that may wait in
    ``pending`` (Relay._hold): not past a Terminate, nor a span with CopyData in it."""
    events = span.events
    return i + 1 < len(events) and not span.bulk and type(events[-1]) is not Terminate


def _end(data: bytes, offsets: list[int], i: int) -> int:
    return _message_end(data, offsets[i])


def _resets(entry: Entry) -> bool:
    """The client's RESET ALL, DISCARD ALL or RESET name (see _query_entry)."""
    return entry.tag == "resetall" or (entry.tag == "set" and entry.value is None)
