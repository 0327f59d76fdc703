"""The recorded corpus replayed through the pooler engine, against a fake server.

The engine gets each recorded client's bytes at the recorded chunk boundaries (minus its
password messages: the pool trusts it). A fake server logs the engine in with the
recorded startup parameters, answers the queries the engine sends on its own (parameter
sync, reset) itself, and answers every forwarded request with the recorded answer to it,
cut at the recorded chunk boundaries, and never before the engine has forwarded what the
client had sent before that chunk in the recording.

Which recorded server message answers which request is worked out once per trace by
:func:`attribute` (PostgreSQL answers in order; an error skips to the next Sync; Syncs
sent during COPY IN are ignored; a message with no request due is unsolicited). In
transaction mode that lets the fake drop the answers to requests the engine answers
itself (a client's Close of a shared statement, the Parse of one already prepared) and
answer the Parse/Close the engine injects, where a real server would.
"""

from __future__ import annotations

import bisect
import json
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_corpus import replay as read_both

import pgsansio.engine as pe
import pgsansio.protocol as pg
from pgsansio.config import model as cm
from pgsansio.conformance.trace import Trace, iter_corpus
from pgsansio.engine._params import TRACKED

CORPUS = Path(__file__).parent / "corpus"
CID = 1
INTERNAL = re.compile(r"PGSANSIO_\d+")
AUTH = (pg.PasswordMessage, pg.SASLInitialResponse, pg.SASLResponse, pg.GSSResponse)
ASKS = (pg.Query, pg.FunctionCall, pg.Parse, pg.Bind, pg.Describe, pg.Execute, pg.Close, pg.Sync)
EXTENDED = (pg.Parse, pg.Bind, pg.Describe, pg.Execute, pg.Close)
ENDS: dict[type[pg.Event], tuple[type[pg.Event], ...]] = {
    pg.Parse: (pg.ParseComplete,),
    pg.Bind: (pg.BindComplete,),
    pg.Close: (pg.CloseComplete,),
    pg.Describe: (pg.RowDescription, pg.NoData),
    pg.Execute: (pg.CommandComplete, pg.EmptyQueryResponse, pg.PortalSuspended),
}
_OWN_QUERY = re.compile(r"^((SET|RESET) [^;]+)(;(SET|RESET) [^;]+)*$|^(DISCARD ALL|ROLLBACK)$")
_CLEARS = re.compile(r"^\s*(DEALLOCATE\s+(PREPARE\s+)?ALL|DISCARD\s+ALL)\s*;?\s*$", re.I)
_TRACKED_LOWER = {name.lower(): name for name in TRACKED}
Key = tuple[str, tuple[int, ...]]  # a prepared statement: its text and parameter types


@dataclass
class Msg:
    event: pg.Event | None  # None: a DataRow or CopyData (framed, not kept)
    start: int  # offsets in the direction's joined stream
    end: int
    chunk: int  # index in trace.chunks of the chunk holding the message's last byte


@dataclass
class Rec:
    """One recorded connection, split into messages, with the answers attributed."""

    case_id: str
    meta: dict[str, object]
    trace: Trace
    streams: dict[str, bytes]
    bounds: list[tuple[int, int]]  # per chunk: (start, end) in its direction's stream
    msgs: dict[str, list[Msg]] = field(default_factory=lambda: {"F": [], "B": []})
    encrypted: bool = False
    startup: pg.StartupMessage | None = None
    qf: list[Msg] = field(default_factory=list)  # client messages after the login
    qb: list[Msg] = field(default_factory=list)  # server messages after the first Z
    owner: list[int] = field(default_factory=list)  # per qb: its request in qf, -1 unsolicited
    silent: set[int] = field(default_factory=set)  # qf requests the server did not answer

    @property
    def kind(self) -> str:
        if self.encrypted:
            return "encrypted"
        if isinstance(self.msgs["F"][0].event, pg.CancelRequest):
            return "cancel"
        assert self.startup is not None
        if self.startup.params.get("replication", "false") != "false":
            return "replication"
        return "regular" if self.qb or self.qf else "login-fails"


def analyze(case_id: str, meta: dict[str, object], trace: Trace) -> Rec:
    """Both directions as messages, read at the recorded boundaries by test_corpus."""
    truncated = meta.get("truncated", [])
    assert isinstance(truncated, list)
    ref = read_both(trace, truncated)
    bounds: list[tuple[int, int]] = []
    ends: dict[str, list[tuple[int, int]]] = {"F": [], "B": []}
    totals = {"F": 0, "B": 0}
    for k, chunk in enumerate(trace.chunks):
        start = totals[chunk.direction]
        totals[chunk.direction] += 0 if chunk.eof else len(chunk.data)
        bounds.append((start, totals[chunk.direction]))
        if not chunk.eof:
            ends[chunk.direction].append((totals[chunk.direction], k))
    rec = Rec(case_id, meta, trace, {d: trace.stream(d) for d in "FB"}, bounds, encrypted=ref.tls)
    for d in "FB":
        pos = 0
        for event, data in zip(ref.events[d], ref.sent[d], strict=True):
            if isinstance(event, pg.ConnectionClosed):
                continue
            k = ends[d][bisect.bisect_left(ends[d], (pos + len(data), -1))][1]
            bulk = isinstance(event, (pg.DataRow, pg.CopyData))
            rec.msgs[d].append(Msg(None if bulk else event, pos, pos + len(data), k))
            pos += len(data)
            if isinstance(event, pg.StartupMessage):
                rec.startup = event
    f, b = rec.msgs["F"], rec.msgs["B"]
    first_z = next((i for i, m in enumerate(b) if isinstance(m.event, pg.ReadyForQuery)), None)
    if rec.startup is not None and first_z is not None:
        i = next(i for i, m in enumerate(f) if m.event is rec.startup) + 1
        while i < len(f) and isinstance(f[i].event, AUTH):
            i += 1
        rec.qf, rec.qb = f[i:], b[first_z + 1 :]
        attribute(rec)
    return rec


def attribute(rec: Rec) -> None:
    """Which request each recorded server message answers (see the module docstring)."""
    qf, owner, silent = rec.qf, rec.owner, rec.silent
    i, cur = 0, -1
    for m in rec.qb:
        e = m.event
        if cur < 0:
            r = i
            while r < len(qf) and (r in silent or not isinstance(qf[r].event, ASKS)):
                r += 1
            if r < len(qf) and qf[r].chunk < m.chunk:  # it had arrived: this answers it
                cur, i = r, r + 1
        owner.append(cur)
        if cur < 0:
            continue
        req = qf[cur].event
        assert req is not None
        if isinstance(e, pg.CopyInResponse):  # Syncs sent during COPY IN are ignored
            r = cur + 1
            while r < len(qf) and not isinstance(qf[r].event, (pg.CopyDone, pg.CopyFail)):
                silent.add(r)
                r += 1
        if isinstance(e, pg.ErrorResponse) and isinstance(req, EXTENDED):
            r = cur + 1
            while r < len(qf) and not isinstance(qf[r].event, pg.Sync):
                silent.add(r)  # skipped until Sync
                r += 1
            cur = -1
        elif isinstance(e, (pg.ReadyForQuery, *ENDS.get(type(req), ()))):
            cur = -1


def _load() -> list[Rec]:
    out = []
    for scenario_dir, traces in iter_corpus(CORPUS):
        meta = json.loads((scenario_dir / "meta.json").read_text())
        out += [analyze(f"{scenario_dir.name}/c{t.connection}", meta, t) for t in traces]
    return out


RECS = _load()


# === the fake server ==================================================================


def _stmt(e: pg.Event | None) -> str | None:
    """The prepared statement name a request carries, if any."""
    if isinstance(e, pg.Parse):
        return e.name
    if isinstance(e, pg.Bind):
        return e.statement
    if isinstance(e, (pg.Describe, pg.Close)) and e.kind == "S":
        return e.name
    return None


def _named(e: pg.Event, name: str) -> pg.Event:
    if isinstance(e, pg.Parse):
        return pg.Parse(name, e.query, e.param_types)
    if isinstance(e, pg.Bind):
        return pg.Bind(e.portal, name, e.param_formats, e.params, e.result_formats)
    assert isinstance(e, (pg.Describe, pg.Close))
    return type(e)("S", name)


def own_answer(sql: str) -> list[pg.Event]:
    """What PostgreSQL answers to the engine's own SET/RESET, DISCARD ALL or ROLLBACK."""
    out: list[pg.Event] = []
    for stmt in sql.split(";"):
        words = stmt.split(None, 3)
        out.append(pg.CommandComplete(words[0] if words[0] in ("SET", "RESET") else stmt))
        name = _TRACKED_LOWER.get(words[1].lower()) if len(words) == 4 else None
        if words[0] == "SET" and name is not None:
            value = words[3]
            if value.startswith("'") and value.endswith("'"):
                value = value[1:-1].replace("''", "'")
            if name == "client_encoding":  # as PostgreSQL reports it
                value = re.sub("[^A-Za-z0-9]", "", value).upper()
            out.append(pg.ParameterStatus(name, value))
    return [*out, pg.ReadyForQuery("I")]


class FakeServer:
    """One server connection the engine opened: replays ``rec`` (see the docstring)."""

    def __init__(self, rec: Rec, rename: bool, login: bytes | None) -> None:
        self.rec, self.rename, self.login = rec, rename, login
        self.conn = pg.Connection(pg.SERVER)
        self.out: list[bytes] = []
        self.closed = self.logged_in = False
        self.cancel: pg.CancelRequest | None = None
        self.key = pg.BackendKeyData(0, b"\0" * 4)  # what we told the engine
        self.j = 0  # the next recorded request the engine should send
        self.p = 0  # the next recorded answer message to emit ...
        self.pb = rec.qb[0].start if rec.qb else 0  # ... and how much of it is out
        self.due = self.pb  # how far the recording's server chunks have got
        self.suppressed: set[int] = set()  # requests the engine answered itself
        self.injected: list[pg.Event] = []
        self.synth: deque[tuple[int, list[pg.Event]]] = deque()  # (after request, answer)
        self.client_stmts: dict[str, Key] = {}
        self.server_stmts: dict[str, Key] = {}
        self.names: dict[str, str] = {}  # client's statement name -> ours

    def receive(self, data: bytes) -> None:
        self.conn.receive_data(data)
        while True:
            e = self.conn.next_event()
            if e is pg.NEED_DATA or e is pg.PAUSED:
                return
            assert isinstance(e, pg.Event)
            if isinstance(e, pg.CancelRequest):
                self.cancel = e
            elif isinstance(e, pg.StartupMessage):
                self._log_in()
            elif not isinstance(e, pg.ConnectionClosed):
                self._request(e)

    def _log_in(self) -> None:
        self.logged_in = True
        if self.login is not None:
            self.out.append(self.login)
            return
        b = self.rec.msgs["B"][: len(self.rec.msgs["B"]) - len(self.rec.qb)]
        key = next(m.event for m in b if isinstance(m.event, pg.BackendKeyData))
        assert isinstance(key, pg.BackendKeyData)
        self.key = pg.BackendKeyData(key.process_id, key.secret_key[:4])  # we speak 3.0
        status = [m.event for m in b if isinstance(m.event, pg.ParameterStatus)]
        events = [pg.AuthenticationOk(), *status, self.key, pg.ReadyForQuery("I")]
        self.out += [self.conn.send(e) for e in events]

    def _suppressible(self, r: int) -> bool:
        e = self.rec.qf[r].event
        return isinstance(e, pg.Terminate) or (
            self.rename and isinstance(e, (pg.Parse, pg.Close)) and bool(_stmt(e))
        )

    def _request(self, e: pg.Event) -> None:
        raw, qf = bytes(e), self.rec.qf
        # Which statements exist on the server, to catch a Bind of one it lost.
        if isinstance(e, pg.Parse) and self.j not in self.rec.silent:
            self.server_stmts[e.name] = (e.query, e.param_types)
        elif isinstance(e, pg.Close) and e.kind == "S":
            self.server_stmts.pop(e.name, None)
        elif isinstance(e, pg.Query) and _CLEARS.match(e.sql):
            self.server_stmts.clear()
        while True:
            if self.j < len(qf) and self._matches(qf[self.j], e, raw):
                self.j += 1
                return
            name = _stmt(e)
            own = isinstance(e, pg.Query) and _OWN_QUERY.match(e.sql)
            if own or (self.rename and name and INTERNAL.fullmatch(name)):
                self.injected.append(e)
                if isinstance(e, pg.Query):
                    self.synth.append((self.j - 1, own_answer(e.sql)))
                elif self.j not in self.rec.silent:  # else skipped like what follows
                    done = pg.ParseComplete() if isinstance(e, pg.Parse) else pg.CloseComplete()
                    self.synth.append((self.j - 1, [done]))
                return
            if self.j < len(qf) and self._suppressible(self.j):
                r = qf[self.j].event
                if isinstance(r, pg.Parse):
                    self.client_stmts[r.name] = (r.query, r.param_types)
                self.suppressed.add(self.j)
                self.j += 1
                continue
            want = qf[self.j].event if self.j < len(qf) else "nothing more"
            raise AssertionError(f"request {self.j}: the server got {e!r}, recorded {want!r}")

    def _matches(self, rec: Msg, e: pg.Event, raw: bytes) -> bool:
        r, client = rec.event, _stmt(rec.event)
        if not self.rename or not client:
            return raw == self.rec.streams["F"][rec.start : rec.end]
        got = _stmt(e) if type(e) is type(r) else None
        if not got or not INTERNAL.fullmatch(got):
            return False
        assert r is not None
        if bytes(_named(r, got)) != raw:
            return False
        if isinstance(r, pg.Parse):
            self.client_stmts[client] = (r.query, r.param_types)
        elif self.client_stmts.get(client) != self.server_stmts.get(got):
            raise AssertionError(f"{e!r}: not the statement the client prepared as {client!r}")
        self.names[client] = got
        return True

    def caught_up(self, n: int) -> bool:
        """Has the engine sent (or answered) the first ``n`` recorded requests?"""
        j = self.j
        while j < n and self._suppressible(j):
            j += 1
        return j >= n

    def emit(self) -> bytes:
        """Answers that are due and whose requests have come, in order."""
        qb, owner, stream = self.rec.qb, self.rec.owner, self.rec.streams["B"]
        out, self.out = self.out, []
        run = self.pb  # stream[run:self.pb] is still to be appended to out
        while True:
            p = self.p
            if p < len(qb) and self.pb == qb[p].start and owner[p] in self.suppressed:
                out.append(stream[run : self.pb])
                self.p += 1  # answered by the engine already
                run = self.pb = qb[p].end
                continue
            if self.synth and (p == len(qb) or self.pb == qb[p].start):
                q = p
                while q < len(qb) and owner[q] < 0:
                    q += 1
                if q == len(qb) or owner[q] > self.synth[0][0]:
                    out.append(stream[run : self.pb])
                    out += [self.conn.send(e) for e in self.synth.popleft()[1]]
                    run = self.pb
                    continue
            if p == len(qb) or owner[p] >= self.j:
                break  # the engine has not sent that request (yet)
            m = qb[p]
            stop = min(m.end, self.due)
            if stop <= self.pb:
                break
            self.pb = stop
            if stop == m.end:
                self.p += 1
                if m.event is not None:
                    self.conn.send_span(pg.Span(b"", [m.event], []))
        out.append(stream[run : self.pb])
        return b"".join(out)


# === driving the engine ===============================================================


def make_config(rec: Rec, mode: str, auth: str = "trust", password: str = "x") -> cm.Config:
    assert rec.startup is not None
    user = rec.startup.params["user"]
    db = rec.startup.params.get("database") or user
    u = cm.UserConfig(user, password, pool_size=1, auth_type=auth, pool_mode=mode)
    shard = cm.ShardConfig(0, db, (cm.ServerAddress("fake", 5432, "primary"),))
    cache = 500 if mode == "transaction" else 0
    pool = cm.PoolConfig(db, {user: u}, (shard,), mode, prepared_statements_cache_size=cache)
    return cm.Config(general=cm.General(), pools={db: pool})


@dataclass
class Run:
    rec: Rec
    client_left: bool = False  # by the client (its EOF)
    servers: dict[int, FakeServer] = field(default_factory=dict)
    got: dict[int, list[bytes]] = field(default_factory=dict)  # what each client got
    closed: set[int] = field(default_factory=set)  # clients the engine closed

    @property
    def client(self) -> bytes:
        return b"".join(self.got.get(CID, []))

    @property
    def main(self) -> FakeServer | None:
        return next((f for f in self.servers.values() if f.logged_in), None)


def replay(
    rec: Rec,
    mode: str,
    *,
    config: cm.Config | None = None,
    strip_auth: bool = True,
    login: bytes | None = None,
    cancel_at: int | None = None,
) -> Run:
    """Drive an engine with the recorded client, and a FakeServer for each server."""
    engine = pe.Engine(config or make_config(rec, mode), seed=0)
    run = Run(rec)
    pending: deque[pe.Effect] = deque(engine.start(0.0))
    now = 0.0

    def pump() -> None:
        while True:
            while pending:
                eff = pending.popleft()
                if isinstance(eff, pe.SendClient):
                    run.got.setdefault(eff.cid, []).append(eff.data)
                elif isinstance(eff, pe.SendServer):
                    run.servers[eff.sid].receive(eff.data)
                elif isinstance(eff, pe.OpenServer):
                    run.servers[eff.sid] = FakeServer(rec, mode == "transaction", login)
                    pending.extend(engine.server_connected(eff.sid, now))
                elif isinstance(eff, pe.CloseClient):
                    run.closed.add(eff.cid)
                elif isinstance(eff, pe.CloseServer):
                    run.servers[eff.sid].closed = True
            for sid, fake in list(run.servers.items()):
                data = b"" if fake.closed else fake.emit()
                if data:
                    pending.extend(engine.server_data(sid, data, now))
            if not pending:
                return

    qf_chunks = [m.chunk for m in rec.qf]
    # Password messages come alone in their chunks (clients wait for the challenge).
    auth = {m.chunk for m in rec.msgs["F"] if strip_auth and isinstance(m.event, AUTH)}
    pending.extend(engine.client_connected(CID, "corpus", now))
    for k, chunk in enumerate(rec.trace.chunks):
        now = chunk.t_us / 1e6
        if k == cancel_at:  # a second client cancels with the key the engine gave ours
            key = next(e for e in client_events(run)[0] if isinstance(e, pg.BackendKeyData))
            pending.extend(engine.client_connected(2, "canceller", now))
            cancel = pg.CancelRequest(key.process_id, key.secret_key)
            pending.extend(engine.client_data(2, bytes(cancel), now))
        start, end = rec.bounds[k]
        main = run.main
        if chunk.direction == "F" and not (CID in run.closed or run.client_left):
            if chunk.eof:
                run.client_left = True
                pending.extend(engine.client_closed(CID, now))
            elif k not in auth:  # the pool trusts the client: no password to pass
                pending.extend(engine.client_data(CID, rec.streams["F"][start:end], now))
        elif chunk.direction == "B" and main is not None and not main.closed:
            if chunk.eof:
                if not any(isinstance(m.event, pg.Terminate) for m in rec.qf if m.chunk < k):
                    main.closed = True  # the server went away by itself
                    sid = next(s for s, f in run.servers.items() if f is main)
                    pending.extend(engine.server_closed(sid, now))
            elif rec.qb and end > rec.qb[0].start:
                if not (CID in run.closed or run.client_left):
                    n = bisect.bisect_left(qf_chunks, k)
                    assert main.caught_up(n), (
                        f"chunk {k}: the engine has not forwarded request {main.j} "
                        f"({rec.qf[main.j].event!r}) that the client sent before"
                    )
                main.due = min(end, rec.qb[-1].end)
        pump()
    return run


def client_events(run: Run) -> tuple[list[pg.Event], int]:
    """The client's view of the login (to its first Z or error), and its length.

    The recorded client's answers to challenges are fed to the reading connection, so
    that a client we made authenticate reads as it did.
    """
    rec, data = run.rec, run.client
    assert rec.startup is not None
    pos = 0
    for m in rec.msgs["F"]:
        if m.event is rec.startup:
            break
        assert isinstance(m.event, (pg.SSLRequest, pg.GSSENCRequest))
        assert data[pos : pos + 1] == b"N", "encryption must be refused"
        pos += 1
    conn = pg.Connection(pg.CLIENT)
    conn.send(rec.startup)
    conn.receive_data(data[pos:])
    answers = [m.event for m in rec.msgs["F"] if isinstance(m.event, AUTH)]
    events: list[pg.Event] = []
    while not events or not isinstance(events[-1], (pg.ReadyForQuery, pg.ErrorResponse)):
        e = conn.next_event()
        if e is pg.NEED_DATA or e is pg.PAUSED:
            break
        assert isinstance(e, pg.Event)
        events.append(e)
        pos += len(bytes(e))
        if isinstance(e, pg.Authentication) and e.auth_code not in (0, 12):  # a challenge
            conn.send(answers.pop(0))
    return events, pos


# === the tests ========================================================================

REGULAR = [r for r in RECS if r.kind == "regular"]
_IDLE_FATAL = "the server's FATAL comes while it idles in the pool: no client is linked to it"
NOT_TRANSACTION = {  # recordings a transaction pooler cannot reproduce, whatever it does
    "psycopg-listen-notify/c1": "LISTEN in transaction mode goes to the pool's listener "
    "connection (listen_fanout), which this one-server replay of the recording has not",
    "psql-idle-terminated/c1": _IDLE_FATAL,
    "psql-idle-terminated/c2": _IDLE_FATAL,
}


def _server_ended(rec: Rec) -> bool:
    """The recorded server ended the session itself (a FATAL), so it was closed."""
    return any(
        isinstance(m.event, pg.ErrorResponse) and m.event.severity == "FATAL" for m in rec.qb
    )


def _params(mode: str) -> list[object]:
    out: list[object] = []
    for rec in REGULAR:
        skip = NOT_TRANSACTION.get(rec.case_id) if mode == "transaction" else None
        marks = [pytest.mark.skip(reason=skip)] if skip else []
        out.append(pytest.param(rec, id=rec.case_id, marks=marks))
    return out


def _cancel_chunk(rec: Rec) -> int | None:
    """Where a CancelRequest connection of the same scenario came in, if there is one."""
    scenario = rec.case_id.split("/")[0]
    for other in RECS:
        if other.case_id.startswith(scenario + "/") and other.kind == "cancel":
            t = other.trace.chunks[0].t_us
            return next(k for k, c in enumerate(rec.trace.chunks) if c.t_us > t)
    return None


def check_login(rec: Rec, events: list[pg.Event]) -> None:
    """v if the client asked for more than 3.0, R0, the recorded S names, one K, Z."""
    assert rec.startup is not None
    pq = [k for k in rec.startup.params if k.startswith("_pq_.")]
    if rec.startup.protocol_version != pg.PROTOCOL_3_0 or pq:
        assert events.pop(0) == pg.NegotiateProtocolVersion(pg.PROTOCOL_3_0, pq)
    types = [type(e) for e in events]
    assert types[0] is pg.AuthenticationOk, types
    assert types[-2:] == [pg.BackendKeyData, pg.ReadyForQuery], types
    assert set(types[1:-2]) == {pg.ParameterStatus}, types
    login = rec.msgs["B"][: len(rec.msgs["B"]) - len(rec.qb)]
    recorded = {m.event.name for m in login if isinstance(m.event, pg.ParameterStatus)}
    shown = [e.name for e in events if isinstance(e, pg.ParameterStatus)]
    assert len(shown) == len(set(shown)) and set(shown) == recorded, sorted(set(shown) ^ recorded)
    key = events[-2]
    assert isinstance(key, pg.BackendKeyData) and len(key.secret_key) == 4
    assert events[-1] == pg.ReadyForQuery("I")


def check_replay(rec: Rec, mode: str) -> Run:
    cancel_at = _cancel_chunk(rec)
    run = replay(rec, mode, cancel_at=cancel_at)
    events, pos = client_events(run)
    main = run.main
    assert main is not None
    got, stream = run.client[pos:], rec.streams["B"]
    asked = pg.CancelRequest(main.key.process_id, main.key.secret_key)
    if run.client_left and main.p < len(rec.qb):
        # The client went away mid-result: what it got is a whole-message prefix, and
        # the query still running on the server was cancelled.
        ends = {m.end - rec.qb[0].start for m in rec.qb}
        assert stream[rec.qb[0].start :].startswith(got) and len(got) in ends
        assert any(f.cancel == asked for f in run.servers.values()), "no cancel sent"
    else:
        expected = stream[rec.qb[0].start : rec.qb[-1].end] if rec.qb else b""
        assert _first_difference(got, expected) is None, _first_difference(got, expected)
        assert main.caught_up(len(rec.qf)), f"request {main.j} never reached the server"
    server_ended = _server_ended(rec)
    if any(isinstance(m.event, pg.Terminate) for m in rec.qf) and not server_ended:
        assert not main.closed, "a client's Terminate must not close its server"
    if cancel_at is not None:
        assert 2 not in run.got and 2 in run.closed, "a cancel gets no answer"
        assert any(f.cancel == asked for f in run.servers.values()), "cancel not passed on"
    check_login(rec, events)
    return run


def _first_difference(got: bytes, expected: bytes) -> str | None:
    """None if equal, else where they part (at the start of the first differing message)."""
    if got == expected:
        return None
    i = 0
    while got[i : i + 5] == expected[i : i + 5]:
        n = 1 + int.from_bytes(expected[i + 1 : i + 5], "big")
        if got[i : i + n] != expected[i : i + n]:
            break
        i += n
    return f"at {i}: got {got[i : i + 60]!r}, recorded {expected[i : i + 60]!r}"


@pytest.mark.parametrize("rec", _params("session"))
def test_session_mode(rec: Rec) -> None:
    """Everything passes through untouched but the parameter sync and Terminate."""
    main = check_replay(rec, "session").main
    assert main is not None
    assert all(isinstance(e, pg.Query) for e in main.injected)
    assert all(isinstance(rec.qf[r].event, pg.Terminate) for r in main.suppressed)
    server_ended = _server_ended(rec)
    if isinstance(rec.qf[-1].event, pg.Terminate) and not server_ended:
        assert main.injected[-1] == pg.Query("DISCARD ALL")  # left: the server is reset


@pytest.mark.parametrize("rec", _params("transaction"))
def test_transaction_mode(rec: Rec) -> None:
    """Shared statements renamed on the server side only; the client sees the recording."""
    main = check_replay(rec, "transaction").main
    assert main is not None
    assert set(main.names) == set(main.client_stmts) - {""}, "a named statement not renamed"


REFUSED = [pytest.param(r, id=f"{r.case_id}:{r.kind}") for r in RECS if r.kind != "regular"]


@pytest.mark.parametrize("rec", REFUSED)
def test_not_replayable(rec: Rec) -> None:
    """What the engine does with connections it cannot pool (or that fail to log in)."""
    first = rec.msgs["F"][0]
    if rec.kind in ("encrypted", "cancel"):
        # TLS and GSSAPI encryption are refused (the recording went on encrypted); a
        # cancel with a key the engine never gave out is closed without an answer.
        engine = pe.Engine(cm.Config(general=cm.General(), pools={}), seed=0)
        engine.client_connected(CID, "corpus", 0.0)
        effects = engine.client_data(CID, rec.streams["F"][first.start : first.end], 0.0)
        sent = [e.data for e in effects if isinstance(e, pe.SendClient)]
        if rec.kind == "encrypted":
            assert sent == [b"N"] and pe.CloseClient(CID) not in effects
        else:
            assert sent == [] and pe.CloseClient(CID) in effects
            assert not any(isinstance(e, pe.OpenServer) for e in effects)
        return
    assert rec.kind in ("replication", "login-fails"), rec.kind
    b = rec.msgs["B"]
    expected: list[type[pg.Event | None]]
    auth = next(m for m in b if isinstance(m.event, pg.Authentication))
    if rec.kind == "replication":
        run = replay(rec, "session")
        expected, sqlstates = [pg.ErrorResponse], {"0A000"}
        assert not run.servers, "nothing to open for a connection we refuse"
    elif isinstance(auth.event, pg.AuthenticationOk):
        # The server refuses the login (no such database or role): the client gets
        # our AuthenticationOk, then the server's error exactly as recorded.
        run = replay(rec, "session", login=rec.streams["B"][auth.start :])
        assert run.client.endswith(rec.streams["B"][auth.start :])
        expected = [pg.AuthenticationOk, pg.ErrorResponse]
        sqlstates = {str(m.event.sqlstate) for m in b if isinstance(m.event, pg.ErrorResponse)}
    else:
        # A wrong password: we challenge with the recorded method. The recorded SCRAM
        # proof answers the real server's nonce, not ours, so it fails as a protocol
        # violation (PostgreSQL: "Nonce does not match") rather than as 28P01.
        method = {"scram": "scram-sha-256"}.get(str(rec.meta["auth"]), str(rec.meta["auth"]))
        config = make_config(rec, "session", method, "not-the-recorded-password")
        run = replay(rec, "session", config=config, strip_auth=False)
        expected = [type(m.event) for m in b if not isinstance(m.event, pg.ErrorResponse)]
        expected.append(pg.ErrorResponse)
        sqlstates = {"28P01", "08P01"}
    assert CID in run.closed
    events = client_events(run)[0]
    assert [type(e) for e in events] == expected
    error = events[-1]
    assert isinstance(error, pg.ErrorResponse) and error.severity == "FATAL"
    assert error.sqlstate in sqlstates, error
