"""Cross-shard reads: one query run on every shard, the answers merged into one.

The ``FanOut`` part of the engine, below the Relay (which hands it a request when the
pool has ``cross_shard = "fan_out"`` and the request names no shard) and above
Lending, Shards and Sessions. PgCat has no such thing (a query without a key goes to
one shard); PgDog merges cross-shard results. Decisions:

- **When.** A simple-protocol Query, in transaction mode, from a client that holds
  no server and chose no shard (``SET SHARD``), on a pool with more than one shard,
  when no automatic key and no comment names a shard. What the query is, and how its
  answers merge, is :func:`pgsansio.routing.plan_fan_out`'s to say (pglast): a read of
  a table runs on every shard; a write is refused (0A000: it needs a key); a
  statement that reads no table, or is not a SELECT, goes to ``default_shard`` as
  before. In the extended protocol, a request of [Parse (unnamed)], Bind, [Describe
  of the portal], Execute (all rows), Sync on the unnamed portal, its statement
  parsed with it or prepared earlier (cached): each leg runs the rewritten text
  unnamed, and the client gets ParseComplete / BindComplete / the RowDescription in
  their places. Binary results are refused (0A000). Other extended requests go to
  ``default_shard``.
- **How.** One *leg* per shard: a Client of our own (negative id, never in the
  client table) carrying the client's user, settings and parameters, whose shard is
  fixed, checked out through Lending like any client (so it waits for a server,
  times out, syncs the settings and is released as any client is). What the Relay
  would send to a leg's client socket goes to its :class:`_LegConn`, which hands the
  messages to the job; nothing reaches a socket (the frontends drop effects for ids
  they do not know).
- **Merging** (streamed, never a whole result in memory): rows as they come
  (concatenation); ORDER BY: a k-way merge of the shards' sorted streams, one row per
  shard needed in hand; GROUP BY: the same merge on the group key (each shard sorts
  its groups), equal groups combined as they meet; aggregates without GROUP BY: one
  row per shard, combined (count and sum add, min and max compare, avg is sum over
  count with PostgreSQL's numeric division scale); LIMIT/OFFSET after the merge.
  Values are compared by the column's type in the RowDescription: integers,
  numeric, float, bool and uuid; text only where the ORDER BY says ``COLLATE "C"``
  (byte order; the pooler does not know the database's collation). Anything else is
  an ErrorResponse (0A000) naming the column, sent before any row.
- **Memory and backpressure.** A leg whose rows wait (its shard is ahead of the
  others in a merge, or the client reads slowly) stops being read past
  ``_PAUSE_ROWS`` rows and is read again below ``_RESUME_ROWS``; a client that cannot
  take more stops the merge until it can.
- **Errors.** The first error of any shard (or of getting a server for it) is the
  answer: the client gets it (severity ERROR: its session goes on), and the other
  legs are abandoned as a leaving client's would be (their queries cancelled). Rows
  already sent stay sent, as when a query fails mid-result on one server. A LIMIT
  reached early ends the job the same way.
- **A multi-row INSERT** (simple protocol) whose literal keys land on several shards
  (:func:`pgsansio.routing.split_insert`) runs as ``BEGIN; INSERT <its rows>`` on
  each of those shards (an :class:`InsertJob`); once all have answered, ``COMMIT``
  everywhere if all inserted, else ``ROLLBACK`` everywhere and the first error. A
  COMMIT failing after another succeeded (no two-phase commit: PgDog uses one) is
  40003 naming the shards that committed: never a success for rows not written.
- **COPY ... FROM STDIN** (text or CSV) into the table of ``automatic_sharding_key``,
  naming the key column (:func:`pgsansio.routing.plan_copy`), is a :class:`CopyJob`:
  ``BEGIN; COPY ...`` on every shard; once every shard is in copy mode the client
  gets one CopyInResponse. Its CopyData is framed here (big messages arrive in
  pieces), cut into rows (:class:`pgsansio.routing.CopyRows`; a row may span
  messages) and each row sent to its key's shard. The client's CopyDone ends every
  shard's COPY; then COMMIT or ROLLBACK everywhere as for the INSERT split (same
  40003 story), the client's tag the sum of the shards' ``COPY n``. A key that cannot
  be read (22P02, as PostgreSQL words it), a NULL key (22004), a shard's error or the
  client's CopyFail aborts every shard's COPY (CopyFail) and rolls back everywhere;
  the client's remaining CopyData is dropped and it gets the first error once it ends
  its COPY (PostgreSQL answers at once; a client must end its COPY either way). A
  shard whose server reads slowly stops the client being read until it catches up.
- **Meanwhile** the client's next requests wait; its cancel request cancels every
  leg (Login reaches them through ``Client.fanout``).
"""

from __future__ import annotations

import logging
import math
import struct
from collections import deque
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from typing import TYPE_CHECKING, cast

from pgsansio.protocol import (
    SERVER,
    Bind,
    BindComplete,
    CommandComplete,
    Connection,
    CopyData,
    CopyDone,
    CopyFail,
    CopyInResponse,
    DataRow,
    Describe,
    ErrorResponse,
    Event,
    Execute,
    NoData,
    NoticeResponse,
    Parse,
    ParseComplete,
    Query,
    ReadyForQuery,
    RowDescription,
    Span,
    Sync,
)
from pgsansio.sharding import shard_for_typed_key

from ._effects import ReadClient, ReadServer, SendClient
from ._objects import Client
from ._states import C_CLOSED, ClientState

if TYPE_CHECKING:
    from collections.abc import Callable

    from pgsansio.routing import CopyRows, FanOutPlan, Unmergeable

    from ._context import Context
    from ._lending import Lending
    from ._shards import Shards

__all__ = ["CopyJob", "CrossShardJob", "FanOut", "InsertJob"]

_PAUSE_ROWS = 1000
_WATCH_SECONDS = 1.0
_RESUME_ROWS = 200

_INTS = frozenset({20, 21, 23, 26})  # int8, int2, int4, oid
_FLOATS = frozenset({700, 701})
_NUMERIC = 1700
_BOOL = 16
_UUID = 2950
_TEXTS = frozenset({25, 1043, 19})  # text, varchar, name
_TYPE_NAMES = {20: "bigint", 21: "smallint", 23: "integer", 700: "real", 701: "double precision"}

Value = bytes | None
# Stands for the RowDescription among the answers of an extended request.
_DESCRIBE: Event = NoData()
SortValue = object


def _sort_value(oid: int, raw: bytes) -> SortValue:
    """``raw`` (text format) as something Python orders as PostgreSQL orders the type."""
    if oid in _INTS:
        return int(raw)
    if oid == _NUMERIC:
        return (1, Decimal(0)) if raw == b"NaN" else (0, Decimal(raw.decode()))
    if oid in _FLOATS:
        return (1, 0.0) if raw == b"NaN" else (0, float(raw))
    if oid == _BOOL:
        return raw == b"t"
    return raw  # uuid (lower-case hex), or text compared as bytes (COLLATE "C")


def _comparable(oid: int, c_collation: bool) -> bool:
    return (
        oid in _INTS
        or oid in _FLOATS
        or oid in (_NUMERIC, _BOOL, _UUID)
        or (c_collation and oid in _TEXTS)
    )


def _float_text(x: float, oid: int) -> bytes:
    """``x`` as float8out / float4out write it (shortest exact digits, exponent form
    below 1e-4 and from 1e15 for float8, 1e6 for float4)."""
    if math.isnan(x):
        return b"NaN"
    if x in (float("inf"), float("-inf")):
        return b"Infinity" if x > 0 else b"-Infinity"
    if oid == 700:
        f32 = struct.unpack("f", struct.pack("f", x))[0]
        for digits in range(1, 10):
            text = f"{f32:.{digits}g}"
            if struct.unpack("f", struct.pack("f", float(text)))[0] == f32:
                break
        limit = 6
    else:
        text = repr(x)
        limit = 15
    d = Decimal(text)
    if d == 0:
        return b"-0" if text.startswith("-") else b"0"
    exponent = d.adjusted()
    if exponent < -4 or exponent >= limit:
        parts = d.as_tuple()
        mantissa = "".join(str(digit) for digit in parts.digits).rstrip("0") or "0"
        body = mantissa[0] + ("." + mantissa[1:] if len(mantissa) > 1 else "")
        sign = "-" if parts.sign else ""
        power = f"{'+' if exponent >= 0 else '-'}{abs(exponent):02d}"
        return f"{sign}{body}e{power}".encode()
    out = format(d, "f")
    if "." in out:
        out = out.rstrip("0").rstrip(".")
    return out.encode()


def _numeric_weight(d: Decimal) -> tuple[int, int]:
    """PostgreSQL's base-10000 weight and first digit of ``d`` (0, 0 for zero)."""
    d = abs(d)
    if d == 0:
        return 0, 0
    if d >= 1:
        whole = int(d)
        weight = (len(str(whole)) - 1) // 4
        return weight, whole // 10000**weight
    weight = 0
    while d < 1:
        d *= 10000
        weight -= 1
    return weight, int(d)


def _avg_text(total: Decimal, count: int) -> bytes:
    """``total / count`` as numeric_div prints it (select_div_scale's scale)."""
    divisor = Decimal(count)
    weight1, first1 = _numeric_weight(total)
    weight2, first2 = _numeric_weight(divisor)
    qweight = weight1 - weight2
    if first1 <= first2:
        qweight -= 1
    exponent = total.as_tuple().exponent
    dscale = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    rscale = min(max(16 - qweight * 4, dscale, 0), 1000)
    with localcontext() as ctx:
        ctx.prec = 1100
        q = (total / divisor).quantize(Decimal(1).scaleb(-rscale), rounding=ROUND_HALF_UP)
    return format(q, "f").encode()


class _LegConn(Connection):
    """A leg's client side: what would go to a client socket goes to the job."""

    def __init__(self, job: CrossShardJob | InsertJob, index: int) -> None:
        super().__init__(SERVER)
        self.job = job
        self.index = index

    def send(self, event: Event) -> bytes:
        self.job.owner.leg_events(self.job, self.index, [event], b"")
        return b""

    def send_span(self, span: Span) -> bytes:
        self.job.owner.leg_events(self.job, self.index, span.events, span.data)
        return b""


class CrossShardJob:
    """One cross-shard query of one client."""

    def __init__(self, owner: FanOut, client: Client, plan: FanOutPlan, n: int) -> None:
        self.owner = owner
        self.client = client
        self.plan = plan
        self.legs: list[Client] = []
        self.rows: list[deque[tuple[list[Value], tuple[SortValue, ...] | None]]] = [
            deque() for _ in range(n)
        ]
        self.finished = [False] * n  # the leg's CommandComplete (or error) came
        self.descriptions: list[RowDescription | None] = [None] * n
        self.paused: dict[int, int] = {}  # leg -> the server id not being read
        self.started = False  # the RowDescription went to the client
        self.oids: list[int] = []
        self.sort_columns: list[int] = []
        self.sent = 0  # rows sent
        self.skipped = 0  # rows skipped for OFFSET
        self.group: list[Value] | None = None  # the group being combined
        self.group_key: tuple[SortValue, ...] | None = None
        self.waiting: list[Span] = []  # what the client sent meanwhile
        # Extended protocol: the answers due before the rows (_DESCRIBE: the
        # RowDescription); None: a simple Query.
        self.answers: list[Event] | None = None
        self.over = False


class InsertJob:
    """One multi-row INSERT split across shards (see FanOut._split_insert)."""

    what = "INSERT"

    def __init__(self, owner: FanOut, client: Client, shards: list[int]) -> None:
        self.owner = owner
        self.client = client
        self.shards = shards  # the shard of each leg
        self.legs: list[Client] = []
        self.answered = [False] * len(shards)  # this phase's ReadyForQuery came
        self.phase = ""  # "" (BEGIN; INSERT), then "COMMIT" or "ROLLBACK"
        self.inserted = 0
        self.error: ErrorResponse | None = None
        self.committed: list[int] = []
        self.failed: list[tuple[int, str]] = []
        self.waiting: list[Span] = []
        self.over = False
        self.paused: dict[int, int] = {}

    @property
    def finished(self) -> list[bool]:
        return self.answered


class CopyJob(InsertJob):
    """One COPY FROM STDIN split across every shard (see FanOut._split_copy)."""

    what = "COPY"

    def __init__(self, owner: FanOut, client: Client, shards: list[int], rows: CopyRows) -> None:
        super().__init__(owner, client, shards)
        self.rows = rows
        self.copying = True  # the client's COPY is not over (CopyDone or CopyFail)
        self.in_copy = [False] * len(shards)  # the shard's COPY is open
        self.started = False  # the client got its CopyInResponse
        self.head = b""  # a message header in pieces
        self.code = 0  # the message being read, and the bytes of it still to come
        self.left = 0
        self.body = bytearray()  # a CopyFail's body (CopyData is fed as it comes)
        self.held = False  # the client is not read: a shard reads slowly


def _data_rows(data: bytes) -> list[list[Value]]:
    """The DataRow messages in ``data``, decoded (text format)."""
    rows: list[list[Value]] = []
    i = 0
    end = len(data)
    while i < end:
        code = data[i]
        length = int.from_bytes(data[i + 1 : i + 5], "big")
        if code == 0x44:  # 'D'
            j = i + 5
            count = int.from_bytes(data[j : j + 2], "big")
            j += 2
            values: list[Value] = []
            for _ in range(count):
                size = int.from_bytes(data[j : j + 4], "big", signed=True)
                j += 4
                if size < 0:
                    values.append(None)
                else:
                    values.append(data[j : j + size])
                    j += size
            rows.append(values)
        i += 1 + length
    return rows


Job = CrossShardJob | InsertJob


class FanOut:
    """Owns the cross-shard jobs running (one per client at most)."""

    def __init__(
        self,
        ctx: Context,
        *,
        lending: Lending,
        shards: Shards,
        resume: Callable[[Client, Span], None],
    ) -> None:
        self.ctx = ctx
        self.lending = lending
        self.shards = shards
        # Upcall (the Relay's client_span): a request that waited for a job goes on.
        self._resume = resume
        self._next_leg = 0
        self._parser_missing = False
        self._refusal: type | None = None
        self.jobs = 0  # running, for tests
        self.copy_holds = 0  # times a slow shard stopped a COPY's client being read, for tests

    # --- starting ----------------------------------------------------------------

    def start(self, c: Client, span: Span) -> bool:
        """Run ``span`` on every shard if it is a cross-shard read (or refuse it if it
        cannot be one); False: route it as usual."""
        group = c.group
        events = span.events
        if (
            group is None
            or c.user is None
            or c.user.pool_mode != "transaction"
            or c.shard is not None
            or len(group.pools) < 2
        ):
            return False
        request = self._request(c, events)
        if request is None:
            return False
        sql, leg_events, answers = request
        pending = [(span.data, events, span.offsets)]
        if answers is None and self._split_copy(c, sql, pending):
            return True
        plan = self._plan(sql)
        if plan is None:
            return False
        if self.shards.keyed_shard(c, pending) is not None:
            return False  # the query names its shard
        if answers is None and self._split_insert(c, sql):
            return True
        message = None
        if self._refusal is not None and isinstance(plan, self._refusal):
            message = cast("Unmergeable", plan).message
        elif answers is not None and any(
            isinstance(e, Bind) and any(f != 0 for f in e.result_formats) for e in events
        ):
            message = "binary results are not merged across shards: ask for text results"
        if message is not None:
            self.lending.fail_requests(c, pending, ErrorResponse.build("0A000", message))
            return True
        plan = cast("FanOutPlan", plan)
        if answers is not None:  # extended: the rewritten statement, unnamed
            first = leg_events[0]
            assert isinstance(first, Parse)
            leg_events[0] = Parse("", plan.sql, first.param_types)
        else:
            leg_events = [Query(plan.sql)]
        self._launch(c, plan, leg_events, answers)
        return True

    def _request(
        self, c: Client, events: list[Event]
    ) -> tuple[str, list[Event], list[Event] | None] | None:
        """The statement text of a request that may run across shards, the messages a
        leg sends (to be rewritten), and in the extended protocol the answers the
        client gets before its rows (None: a simple Query). Simple: one Query.
        Extended: [Parse (unnamed)], Bind, [Describe of the portal], Execute (all
        rows), Sync, of the unnamed portal."""
        if len(events) == 1 and type(events[0]) is Query:
            query = events[0]
            assert isinstance(query, Query)
            return query.sql, [query], None
        kinds = [type(e) for e in events]
        parse: Parse | None = None
        answers: list[Event] = []
        if kinds and kinds[0] is Parse:
            parse = cast("Parse", events[0])
            if parse.name:
                return None  # a named statement the client keeps: not ours to take
            answers.append(ParseComplete())
            events = events[1:]
            kinds = kinds[1:]
        if kinds not in ([Bind, Describe, Execute, Sync], [Bind, Execute, Sync]):
            return None
        bind = cast("Bind", events[0])
        execute = cast("Execute", events[-2])
        if bind.portal or execute.portal or execute.max_rows:
            return None
        if len(kinds) == 4:
            describe = cast("Describe", events[1])
            if describe.kind != "P" or describe.name:
                return None
        if parse is None or bind.statement != parse.name:
            prepared = c.prepared.get(bind.statement) if bind.statement else None
            if prepared is None:
                return None
            parse = cast("Parse", prepared.parse)
        answers.append(BindComplete())
        if len(kinds) == 4:
            answers.append(_DESCRIBE)
        leg = [parse, Bind("", "", bind.param_formats, bind.params), Describe("P", ""), Execute()]
        leg.append(Sync())
        return parse.query, leg, answers

    def _split_insert(self, c: Client, sql: str) -> bool:
        """Run a multi-row INSERT whose rows belong to several shards as one INSERT
        per shard, each in a transaction committed only once all have inserted."""
        group = c.group
        assert group is not None
        cfg = group.cfg
        if cfg.automatic_sharding_key is None:
            return False
        from pgsansio.routing import split_insert  # noqa: PLC0415 (optional extra)

        split = split_insert(sql, cfg.automatic_sharding_key)
        if split is None:
            return False
        n = len(group.pools)
        by_shard: dict[int, list[int]] = {}
        for row, key in enumerate(split.keys):
            shard = shard_for_typed_key(key, n, cfg.sharding_function, cfg.sharding_key_type)
            if shard is None:
                return False  # a key not of the key's type: refused as a keyless write
            by_shard.setdefault(shard, []).append(row)
        job = InsertJob(self, c, sorted(by_shard))
        self._begin_legs(job, [f"BEGIN; {split.sql(by_shard[shard])}" for shard in job.shards])
        return True

    def _begin_legs(self, job: InsertJob, sqls: list[str]) -> None:
        """One leg per shard of ``job``, each sending its query; the job runs."""
        c = job.client
        c.fanout = job
        self.jobs += 1
        for shard, sql in zip(job.shards, sqls, strict=True):
            query = Query(sql)
            leg = self._leg(job, c, shard, len(job.legs))
            leg.pending = [(bytes(query), [query], [0])]
        for leg in list(job.legs):
            if not job.over:
                self.lending.checkout(leg)
        self._watch(job)

    def _split_copy(
        self, c: Client, sql: str, pending: list[tuple[bytes, list[Event], list[int]]]
    ) -> bool:
        """Run a COPY FROM STDIN into the sharded table as one COPY per shard, each
        row sent to its key's shard, committed only once every shard has copied."""
        group = c.group
        assert group is not None
        cfg = group.cfg
        if cfg.automatic_sharding_key is None or self._plan(sql) is None:
            return False  # (_plan: None also when the parser is missing)
        from pgsansio.routing import CopyRows, plan_copy  # noqa: PLC0415 (optional extra)

        plan = plan_copy(sql, cfg.automatic_sharding_key)
        if plan is None:
            return False
        if isinstance(plan, str):
            self.lending.fail_requests(c, pending, ErrorResponse.build("0A000", plan))
            return True
        if self.shards.keyed_shard(c, pending) is not None:
            return False  # a comment names the shard: all of it goes there
        n = len(group.pools)
        job = CopyJob(self, c, list(range(n)), CopyRows(plan))
        self._begin_legs(job, [f"BEGIN; {sql}"] * n)
        return True

    def _copy_events(self, job: CopyJob, i: int, events: list[Event]) -> bool:
        """A shard's COPY opened (CopyInResponse), or failed: once every shard has
        answered, the client gets its CopyInResponse, or the error. False: not
        handled here (the INSERT split's handling goes on)."""
        for e in events:
            if type(e) is CopyInResponse:
                job.in_copy[i] = True
            elif type(e) is ErrorResponse:
                job.in_copy[i] = False
        if not job.started and job.copying:
            if not all(a or b for a, b in zip(job.in_copy, job.answered, strict=True)):
                return False
            if job.error is None and all(job.in_copy):
                first = next(e for e in events if type(e) is CopyInResponse)
                job.started = True
                self._send(job, [first])
                return True
            job.copying = False  # a shard could not open its COPY: no copy at all
            self._copy_abort(job, "a shard could not start its COPY")
        return False

    def _copy_in(self, job: CopyJob, data: bytes, events: list[Event], offsets: list[int]) -> None:
        """The client's bytes during its COPY: framed here (a CopyData may come in
        pieces), each CopyData fed to the row cutter; after CopyDone or CopyFail
        what follows waits for the job like any request."""
        pos = 0
        size = len(data)
        while pos < size and job.copying:
            if job.left == 0:
                need = 5 - len(job.head)
                job.head += data[pos : pos + need]
                pos += min(need, size - pos)
                if len(job.head) < 5:
                    break
                job.code = job.head[0]
                job.left = int.from_bytes(job.head[1:5], "big") - 4
                job.head = b""
                job.body.clear()
                if job.left <= 0:
                    job.left = 0
                    self._copy_message(job)
                continue
            take = min(job.left, size - pos)
            piece = data[pos : pos + take]
            pos += take
            job.left -= take
            if job.code == 0x64:  # 'd'
                self._copy_rows(job, *job.rows.feed(piece))
            elif len(job.body) < 65536:
                job.body += piece
            if job.left == 0:
                self._copy_message(job)
        if pos < size:
            rest = [(e, o - pos) for e, o in zip(events, offsets, strict=True) if o >= pos]
            job.waiting.append(Span(data[pos:], [e for e, _ in rest], [o for _, o in rest]))
        self._insert_step(job)

    def _copy_message(self, job: CopyJob) -> None:
        code = job.code
        if code == 0x63:  # 'c' CopyDone
            self._copy_rows(job, *job.rows.finish())
            job.copying = False
            if job.error is None:
                self._to_legs(job, CopyDone())
            else:
                self._copy_abort(job, "the COPY failed on another shard")
        elif code == 0x66:  # 'f' CopyFail
            job.copying = False
            message = bytes(job.body).split(b"\0", 1)[0].decode("utf-8", "replace")
            self._copy_abort(job, message)
        elif code not in (0x64, 0x48, 0x53):  # CopyData; Flush and Sync are ignored
            # Anything else (a Query ...) ends the COPY with PostgreSQL's 08P01: dropped,
            # it would leave the client waiting for an answer that never comes.
            job.copying = False
            error = f"unexpected message type 0x{code:02X} during COPY from stdin"
            self._copy_fail(job, ErrorResponse.build("08P01", error))

    def _copy_rows(
        self, job: CopyJob, header: bytes | None, rows: list[tuple[str | None, bytes]]
    ) -> None:
        """Each row to its key's shard (the header to every shard), one CopyData per
        shard; a key that cannot be hashed aborts the COPY."""
        if job.error is not None:
            return
        cfg = job.client.group.cfg if job.client.group is not None else None
        if cfg is None:
            return
        n = len(job.legs)
        out: list[list[bytes]] = [[header] if header else [] for _ in range(n)]
        for key, row in rows:
            if key is None:
                error = ErrorResponse.build(
                    "22004",
                    f"a COPY row's sharding key ({cfg.automatic_sharding_key}) is NULL: "
                    "it belongs to no shard",
                )
                return self._copy_fail(job, error)
            shard = shard_for_typed_key(key, n, cfg.sharding_function, cfg.sharding_key_type)
            if shard is None:
                error = ErrorResponse.build(
                    "22P02", f'invalid input syntax for type {cfg.sharding_key_type}: "{key}"'
                )
                return self._copy_fail(job, error)
            out[shard].append(row)
        for i, chunks in enumerate(out):
            if chunks:
                self._to_leg(job, i, CopyData(b"".join(chunks)))
        return None

    def _copy_fail(self, job: CopyJob, error: ErrorResponse) -> None:
        if job.error is None:
            job.error = error
        self._copy_abort(job, error.message or "the COPY failed")

    def _copy_abort(self, job: CopyJob, message: str) -> None:
        """End every shard's open COPY with CopyFail (each rolls back after)."""
        self._to_legs(job, CopyFail(message))
        self._recheck_hold(job)

    def _to_legs(self, job: CopyJob, event: Event) -> None:
        for i in range(len(job.legs)):
            self._to_leg(job, i, event)

    def _to_leg(self, job: CopyJob, i: int, event: Event) -> None:
        leg = job.legs[i]
        if not job.in_copy[i] or leg.server is None or leg.state is C_CLOSED:
            return
        if type(event) is not CopyData:
            job.in_copy[i] = False
            span = Span(bytes(event), [event], [0])
        else:
            span = Span(bytes(event), [], [], 1)  # (a span holds no CopyData event)
        self._resume(leg, span)

    def leg_writable(self, leg: Client) -> None:
        """Backpressure for a split COPY: a shard whose server reads slowly stops the
        client being read, until every shard's server reads again."""
        conn = leg.conn
        if not isinstance(conn, _LegConn) or not isinstance(conn.job, CopyJob):
            return
        self._recheck_hold(conn.job)

    def _recheck_hold(self, job: CopyJob) -> None:
        """Hold the client while a shard's server is blocked; never after an error (its
        data is dropped then) or once a blocked server is gone (no writable comes)."""
        blocked = (
            not job.over
            and job.error is None
            and any(x.server is not None and x.server.blocked for x in job.legs)
        )
        self._hold(job, blocked)

    def _hold(self, job: CopyJob, held: bool) -> None:
        if held == job.held or job.client.state is C_CLOSED:
            return
        job.held = held
        self.copy_holds += held
        self.ctx.out.append(ReadClient(job.client.cid, not held))

    def _leg(self, job: CrossShardJob | InsertJob, c: Client, shard: int, index: int) -> Client:
        """A leg of ``job`` on ``shard``: a client of our own with ``c``'s session."""
        self._next_leg -= 1
        leg = Client(self._next_leg, c.peer, self.ctx.now, ClientState.READY)
        leg.conn = _LegConn(job, index)
        leg.username = c.username
        leg.database = c.database
        leg.user = c.user
        leg.group = c.group
        leg.params = dict(c.params)
        leg.settings = dict(c.settings)
        leg.sync_key = c.sync_key
        leg.route_role = c.route_role
        leg.primary_reads = c.primary_reads
        leg.shard = shard
        leg.stats = c.stats  # SHOW STATS counts each shard's part of the query
        job.legs.append(leg)
        return leg

    def _insert_events(self, job: InsertJob, i: int, events: list[Event]) -> None:
        """A leg of a split INSERT (or COPY) answered: BEGIN and INSERT, then COMMIT or
        ROLLBACK once every leg has (see the module docstring)."""
        for e in events:
            t = type(e)
            if t is CommandComplete:
                assert isinstance(e, CommandComplete)
                if e.tag.startswith(job.what):
                    job.inserted += int(e.tag.rsplit(" ", 1)[-1])
                elif e.tag == "COMMIT":
                    job.committed.append(job.shards[i])
            elif t is ErrorResponse:
                assert isinstance(e, ErrorResponse)
                if job.error is None:
                    job.error = e
                if job.phase == "COMMIT":
                    job.failed.append((job.shards[i], e.message or ""))
                if job.legs[i].server is None:
                    job.answered[i] = True  # it had no server, or lost it: no more
            elif t is ReadyForQuery:
                assert isinstance(e, ReadyForQuery)
                job.answered[i] = True
                if job.phase == "" and e.status != "T" and job.error is None:
                    job.error = ErrorResponse.build(
                        "XX000", "the shard did not open the transaction"
                    )
        if isinstance(job, CopyJob):
            if job.error is not None and job.copying:
                self._copy_abort(job, "the COPY failed on another shard")
            self._copy_events(job, i, events)
        self._insert_step(job)

    def _insert_step(self, job: InsertJob) -> None:
        if job.over or not all(job.answered) or (isinstance(job, CopyJob) and job.copying):
            return
        if job.client.state is C_CLOSED:
            self._end(job)
            return
        if job.phase == "":
            job.phase = "ROLLBACK" if job.error is not None else "COMMIT"
            job.answered = [leg.server is None for leg in job.legs]
            query = Query(job.phase)
            data = bytes(query)
            for leg, done in zip(job.legs, job.answered, strict=True):
                if not done:
                    self._resume(leg, Span(data, [query], [0]))
            self._insert_step(job)
            return
        if job.phase == "ROLLBACK" or (job.error is not None and not job.committed):
            assert job.error is not None
            self._fail(job, job.error)
        elif job.failed:
            committed = ", ".join(str(s) for s in job.committed) or "none"
            failed = "; ".join(f"shard {s}: {m}" for s, m in job.failed)
            self._fail(
                job,
                ErrorResponse.build(
                    "40003",
                    f"the {job.what} was split across shards and only partly committed: "
                    f"committed on shard(s) {committed}, not on {failed}",
                ),
            )
        else:
            tag = (
                f"COPY {job.inserted}" if isinstance(job, CopyJob) else f"INSERT 0 {job.inserted}"
            )
            self._send(job, [CommandComplete(tag), ReadyForQuery("I")])
            self._end(job)

    def _plan(self, sql: str) -> FanOutPlan | Unmergeable | None:
        if self._parser_missing:
            return None
        try:
            from pgsansio.routing import Unmergeable, plan_fan_out  # noqa: PLC0415
        except ImportError:  # (pglast is an optional extra)
            self._parser_missing = True
            self.ctx.log(
                logging.WARNING,
                'cross_shard = "fan_out" needs the query parser (pgsansio[routing], '
                "pglast); queries with no sharding key go to default_shard",
            )
            return None
        self._refusal = Unmergeable
        return plan_fan_out(sql)

    def _launch(
        self, c: Client, plan: FanOutPlan, events: list[Event], answers: list[Event] | None
    ) -> None:
        group = c.group
        assert group is not None
        n = len(group.pools)
        job = CrossShardJob(self, c, plan, n)
        job.answers = answers
        c.fanout = job
        self.jobs += 1
        chunks = [bytes(e) for e in events]
        data = b"".join(chunks)
        offsets = [0]
        for chunk in chunks[:-1]:
            offsets.append(offsets[-1] + len(chunk))
        for i in range(n):
            leg = self._leg(job, c, i, i)
            leg.pending = [(data, list(events), offsets)]
        for leg in list(job.legs):
            if job.over:
                break
            self.lending.checkout(leg)
        self._watch(job)

    def _watch(self, job: Job) -> None:
        """Once a second: a client that left (from any path: its socket closed, KILL,
        a timeout) ends its job, even while every leg is paused and says nothing."""
        if job.over:
            return
        if job.client.state is C_CLOSED:
            self._end(job)
            return
        if isinstance(job, InsertJob):  # a leg dropped (its server lost) says no more
            for i, leg in enumerate(job.legs):
                if leg.state is C_CLOSED:
                    job.answered[i] = True
            self._insert_step(job)
            if job.over:
                return
        if isinstance(job, CopyJob):
            self._recheck_hold(job)
        self.ctx.at(self.ctx.now + _WATCH_SECONDS, lambda: self._watch(job))

    # --- the legs' answers -------------------------------------------------------

    def leg_events(
        self, job: CrossShardJob | InsertJob, i: int, events: list[Event], data: bytes
    ) -> None:
        if job.over:
            return
        if isinstance(job, InsertJob):
            self._insert_events(job, i, events)
            return
        if job.client.state is C_CLOSED:
            self._end(job)
            return
        for e in events:
            t = type(e)
            if t is RowDescription:
                assert isinstance(e, RowDescription)
                job.descriptions[i] = e
            elif t is ReadyForQuery:
                # All of it is read: its server is released right after this, and
                # must be read again by whoever gets it next.
                job.finished[i] = True
                self._unpause(job, i)
            elif t is ErrorResponse:
                assert isinstance(e, ErrorResponse)
                self._fail(job, e)
                return
            elif t is NoticeResponse:
                self._send(job, [e])
        if data and b"D" in data:
            rows = _data_rows(data)
            if rows:
                self._add_rows(job, i, rows)
        self._pump(job)

    def _add_rows(self, job: CrossShardJob, i: int, rows: list[list[Value]]) -> None:
        buf = job.rows[i]
        if not job.started and not self._describe(job):
            # The descriptions are not all in yet: keep the rows undecoded for now.
            buf.extend((r, None) for r in rows)
        else:
            oids = job.oids
            cols = job.sort_columns
            for r in rows:
                buf.append((r, self._key(r, cols, oids)))
        if len(buf) > _PAUSE_ROWS and i not in job.paused and not job.finished[i]:
            s = job.legs[i].server
            if s is not None:
                job.paused[i] = s.sid
                self.ctx.out.append(ReadServer(s.sid, False))

    def _unpause(self, job: Job, i: int) -> None:
        sid = job.paused.pop(i, None)
        if sid is not None:
            self.ctx.out.append(ReadServer(sid, True))

    @staticmethod
    def _key(row: list[Value], cols: list[int], oids: list[int]) -> tuple[SortValue, ...] | None:
        if not cols:
            return None
        return tuple(
            None if row[c] is None else _sort_value(oids[c], row[c])  # type: ignore[arg-type]
            for c in cols
        )

    def _describe(self, job: CrossShardJob) -> bool:
        """Once every shard has described its rows: check them, and send the client
        its RowDescription. False while one is missing (or after an error)."""
        if job.started:
            return True
        descriptions = job.descriptions
        if any(d is None for d in descriptions):
            return False
        first = descriptions[0]
        assert first is not None
        oids = [f.type_oid for f in first.fields]
        for d in descriptions[1:]:
            assert d is not None
            if [f.type_oid for f in d.fields] != oids:
                self._fail(
                    job,
                    ErrorResponse.build(
                        "0A000",
                        "the shards answered with different column types; "
                        "cross-shard results cannot be merged",
                    ),
                )
                return False
        plan = job.plan
        names = [f.name for f in first.fields]
        sort_columns: list[int] = []
        for key in plan.order:
            column = key.column
            if column is None:
                matches = [i for i, name in enumerate(names) if name == key.name]
                if len(matches) != 1:
                    return self._refuse(
                        job, f"ORDER BY {key.name}: no single result column of that name"
                    )
                column = matches[0]
            oid = oids[column]
            if not _comparable(oid, key.c_collation):
                return self._refuse(job, self._why_not_comparable(names[column], oid))
            sort_columns.append(column)
        fields = list(first.fields)
        if plan.aggregates is not None:
            for column, agg in enumerate(plan.aggregates):
                oid = oids[column]
                if agg is None:
                    if column not in sort_columns:
                        return self._refuse(job, self._why_not_comparable(names[column], oid))
                    continue
                if agg.kind in ("min", "max") and not _comparable(oid, False):
                    return self._refuse(
                        job,
                        f'{agg.kind}() of column "{names[column]}" (type oid {oid}) is not '
                        "merged across shards: integers, numeric, float, bool and uuid are",
                    )
                if agg.kind in ("sum", "avg") and not (
                    oid in _INTS or oid in _FLOATS or oid == _NUMERIC
                ):
                    return self._refuse(
                        job,
                        f'{agg.kind}() of column "{names[column]}" (type oid {oid}) is not '
                        "merged across shards: integers, numeric and float are",
                    )
                if agg.kind == "avg":
                    avg_oid = 701 if oid in _FLOATS else _NUMERIC
                    fields[column] = fields[column]._replace(
                        type_oid=avg_oid, type_size=8 if avg_oid == 701 else -1, type_modifier=-1
                    )
        if plan.columns is not None:
            fields = fields[: plan.columns]
        if any(f.format != 0 for f in fields):
            return self._refuse(job, "binary results are not merged across shards")
        job.oids = oids
        job.sort_columns = sort_columns
        job.started = True
        description = RowDescription(fields)
        if job.answers is None:
            self._send(job, [description])
        else:  # what the client's Parse, Bind and Describe get, in order
            self._send(job, [description if e is _DESCRIBE else e for e in job.answers])
        for buf in job.rows:  # rows that came before every description did
            for k, (r, _) in enumerate(buf):
                buf[k] = (r, self._key(r, sort_columns, oids))
        return True

    @staticmethod
    def _why_not_comparable(name: str, oid: int) -> str:
        if oid in _TEXTS:
            return (
                f'ordering or grouping by text column "{name}" across shards needs '
                f'ORDER BY {name} COLLATE "C" (the pooler merges text in byte order; '
                "it does not know the database's collation)"
            )
        return (
            f'ordering or grouping by column "{name}" (type oid {oid}) is not merged across '
            'shards: integers, numeric, float, bool, uuid and text with COLLATE "C" are'
        )

    def _refuse(self, job: CrossShardJob, message: str) -> bool:
        self._fail(job, ErrorResponse.build("0A000", message))
        return False

    # --- the merge -----------------------------------------------------------------

    def _pump(self, job: CrossShardJob) -> None:
        """Send the client every row that can be sent now; finish when all is sent."""
        if job.over or not self._describe(job):
            return
        plan = job.plan
        out: list[Event] = []
        rows = job.rows
        if plan.aggregates is not None and not plan.grouped:
            if all(job.finished):
                combined = self._combine(job, [r for buf in rows for r, _ in buf])
                for buf in rows:
                    buf.clear()
                self._emit(job, combined, out)
        elif not plan.order:
            for buf in rows:
                while buf and not self._full(job) and not job.client.blocked:
                    self._emit(job, buf.popleft()[0], out)
        else:
            while not self._full(job) and not job.client.blocked:
                head = -1
                best: tuple[SortValue, ...] | None = None
                ready = True
                for i, buf in enumerate(rows):
                    if buf:
                        key = buf[0][1]
                        assert key is not None
                        if head < 0 or self._before(plan, key, best):
                            head, best = i, key
                    elif not job.finished[i]:
                        ready = False  # this shard's next row may come first
                        break
                if not ready or head < 0:
                    break
                row, key = rows[head].popleft()
                if plan.grouped:
                    if job.group is not None and key == job.group_key:
                        job.group = self._combine(job, [job.group, row])
                        continue
                    if job.group is not None:
                        self._emit(job, job.group, out)
                    job.group, job.group_key = row, key
                else:
                    self._emit(job, row, out)
            if (
                plan.grouped
                and job.group is not None
                and all(job.finished)
                and not any(rows)
                and not self._full(job)
            ):
                self._emit(job, job.group, out)
                job.group = None
        if out:
            self._send(job, out)
        for i in list(job.paused):
            if len(rows[i]) < _RESUME_ROWS:
                self._unpause(job, i)
        if self._full(job) or (all(job.finished) and not any(rows) and job.group is None):
            self._finish(job)

    @staticmethod
    def _before(
        plan: FanOutPlan, a: tuple[SortValue, ...], b: tuple[SortValue, ...] | None
    ) -> bool:
        """Whether a row keyed ``a`` comes before one keyed ``b`` in the ORDER BY."""
        assert b is not None
        for key, va, vb in zip(plan.order, a, b, strict=True):
            if va == vb:
                continue
            if va is None:
                return key.nulls_first
            if vb is None:
                return not key.nulls_first
            less: bool = va < vb  # type: ignore[operator]
            return less != key.descending
        return False

    def _full(self, job: CrossShardJob) -> bool:
        limit = job.plan.limit
        return limit is not None and job.sent >= limit

    def _emit(self, job: CrossShardJob, row: list[Value], out: list[Event]) -> None:
        if job.skipped < job.plan.offset:
            job.skipped += 1
            return
        if self._full(job):
            return
        columns = job.plan.columns
        job.sent += 1
        row = self._finalize(job, row)
        out.append(DataRow(row if columns is None else row[:columns]))

    def _combine(self, job: CrossShardJob, rows: list[list[Value]]) -> list[Value]:
        """One row from the shards' partial aggregates ``rows``."""
        aggregates = job.plan.aggregates
        assert aggregates is not None
        oids = job.oids
        width = len(oids)
        if not rows:
            return [None] * width
        out: list[Value] = list(rows[0])
        for column, agg in enumerate(aggregates):
            if agg is None:
                continue
            oid = oids[column]
            values = [r[column] for r in rows if r[column] is not None]
            kind = agg.kind
            if kind == "count":
                out[column] = str(sum(int(v) for v in values if v is not None)).encode()
            elif kind in ("min", "max"):
                if not values:
                    out[column] = None
                    continue
                pick = min if kind == "min" else max
                out[column] = pick(values, key=lambda v: _sort_value(oid, v))  # type: ignore[arg-type,return-value]
            else:
                out[column] = self._sum(oid, values)  # type: ignore[arg-type]
                if agg.count_column is not None:  # avg: its count too
                    count = sum(int(r[agg.count_column] or b"0") for r in rows)
                    out[agg.count_column] = str(count).encode()
        return out

    def _finalize(self, job: CrossShardJob, row: list[Value]) -> list[Value]:
        """A combined row as the client sees it: each avg is its sum over its count."""
        aggregates = job.plan.aggregates
        if aggregates is None:
            return row
        out = list(row)
        for column, agg in enumerate(aggregates):
            if agg is None or agg.count_column is None:
                continue
            total = row[column]
            count = int(row[agg.count_column] or b"0")
            if count == 0 or total is None:
                out[column] = None
            elif job.oids[column] in _FLOATS:
                out[column] = _float_text(float(total) / count, 701)
            else:
                out[column] = _avg_text(Decimal(total.decode()), count)
        return out

    @staticmethod
    def _sum(oid: int, values: list[bytes]) -> bytes | None:
        if not values:
            return None
        if oid in _INTS:
            return str(sum(int(v) for v in values)).encode()
        if oid in _FLOATS:
            return _float_text(sum(float(v) for v in values), oid)
        try:
            with localcontext() as ctx:
                ctx.prec = 1100
                total = sum((Decimal(v.decode()) for v in values), Decimal(0))
        except InvalidOperation:
            return b"NaN"
        return format(total, "f").encode()

    # --- the end -------------------------------------------------------------------

    def _send(self, job: Job, events: list[Event]) -> None:
        c = job.client
        if c.state is C_CLOSED or not events:
            return
        payload = b"".join([c.conn.send(e) for e in events])
        c.stats.sent += len(payload)
        self.ctx.out.append(SendClient(c.cid, payload))

    def _finish(self, job: CrossShardJob) -> None:
        if job.over:
            return
        self._send(job, [CommandComplete(f"SELECT {job.sent}"), ReadyForQuery("I")])
        self._end(job)

    def _fail(self, job: Job, error: ErrorResponse) -> None:
        if job.over:
            return
        fields = [
            (k, "ERROR" if k in "SV" and v in ("FATAL", "PANIC") else v) for k, v in error.fields
        ]
        self._send(job, [ErrorResponse(fields), ReadyForQuery("I")])
        self._end(job)

    def _end(self, job: Job) -> None:
        """The job is over: legs still running are abandoned (as a leaving client's
        server: its query cancelled), and what the client sent meanwhile goes on."""
        job.over = True
        self.jobs -= 1
        if isinstance(job, CopyJob):
            self._hold(job, False)
        c = job.client
        if c.fanout is job:
            c.fanout = None
        for i, leg in enumerate(job.legs):
            self._unpause(job, i)
            if leg.state is C_CLOSED or job.finished[i]:
                continue  # done: the Relay hands its server back
            self.ctx.drop_client(leg)
        waiting, job.waiting = job.waiting, []
        while waiting and c.state is not C_CLOSED:
            if c.fanout is not None:  # another cross-shard query began: the rest waits
                c.fanout.waiting.extend(waiting)
                break
            self._resume(c, waiting.pop(0))

    def wait(self, c: Client, span: Span) -> None:
        """``span`` arrived while ``c``'s cross-shard query runs: it waits for it."""
        job = c.fanout
        assert job is not None
        if isinstance(job, CopyJob) and job.copying and not job.waiting:
            self._copy_in(job, span.data, span.events, span.offsets)
            return
        job.waiting.append(span)

    def client_writable(self, c: Client) -> None:
        """The client can take more: merge on."""
        job = c.fanout
        if isinstance(job, CrossShardJob) and not c.blocked:
            self._pump(job)
