"""What the simulated clients do, and what they check about every answer.

Each scenario is one "transaction" of a client, written against the fake server's
semantics (:mod:`pgsansio.testing.fakepg`), so the expected answer is known exactly.
Every statement carries the client's tag (``/* tag:cN */`` or a first parameter
``tag:cN``) so the fake servers can check server ownership, and a value unique to the
client, which must come back to this client and no other.

Errors the run allows (a pool timeout; a killed server's error in fault runs) abort
the scenario; anything else unexpected is a failure. Ledger rows written by the
scenarios let the end-of-run check compare what clients were told was committed with
what the database holds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from pgsansio.protocol import (
    Bind,
    Close,
    CommandComplete,
    Describe,
    ErrorResponse,
    Event,
    Execute,
    Flush,
    ParameterStatus,
    Parse,
    Query,
    Sync,
    Terminate,
)

from .client import Abort, Gone, Pause, Reply, Script, SimClient
from .world import SimFailure, World

CANCEL_SLEEP = 1.5  # seconds; shorter than the statement_timeout the fault runs use
TIMEZONES = ["UTC", "Europe/Paris", "Asia/Tokyo", "America/New_York"]
DATESTYLES = ["ISO, MDY", "ISO, DMY", "German, DMY", "SQL, YMD", "Postgres, MDY"]
# Named statements: texts shared by all clients (the pooler may share them on a server),
# names reused by many clients for different texts (it must keep them apart).
NAMED = {
    "s_text": "SELECT $1::text, $2::text",
    "s_int": "SELECT $1::text, $2::int AS n",
    "s_b": "SELECT $1::text, $2::text AS b",
}
# Parameters PostgreSQL does not report: the pooler has to remember the client's SET.
OTHER_SETTINGS = [
    ("work_mem", "NMB"),
    ("extra_float_digits", "N"),
    ("myapp.flag", "flag-N"),
    ("lock_timeout", "N"),
]
DEFAULTS = {"work_mem": "4MB", "extra_float_digits": "1", "lock_timeout": "0"}
NAMED_ALT = {"s_text": NAMED["s_b"], "s_b": NAMED["s_text"], "s_int": NAMED["s_int"]}


@dataclass
class Behaviour:
    """The knobs of one run's client population."""

    transactions: tuple[int, int] = (5, 15)  # per connection
    sessions: tuple[int, int] = (1, 3)  # connections per client, one after another
    think: float = 0.02  # mean pause between transactions
    arrival: float = 1.0  # clients arrive uniformly within this many seconds
    allowed: frozenset[str] = frozenset({"53300"})  # pooler errors that abort a scenario
    weights: dict[str, float] = field(default_factory=dict)
    reply_timeout: float = 60.0
    max_error_latency: float | None = None  # errors must come at least this fast
    ledger: dict[str, str] = field(default_factory=dict)  # key -> open/committing/...
    outcomes: dict[str, int] = field(default_factory=dict)
    started: set[str] = field(default_factory=set)  # long queries a server has started
    comment_sets: bool = True  # some SETs carry a comment
    recovered_at: float | None = None  # after this, allowed errors are failures too
    bind_unknown: bool = True  # named_close binds the closed statement (expects 26000)
    allow_refused: bool = False  # a connection may be refused (the pooler has exited)


DEFAULT_WEIGHTS = {
    "simple": 10,
    "txn_commit": 8,
    "txn_rollback": 2,
    "txn_error": 3,
    "multi": 3,
    "multi_error": 2,
    "unnamed": 6,
    "named": 8,
    "named_close": 1,
    "named_duplicate": 1,
    "pipeline": 4,
    "set_param": 3,
    "set_in_txn": 1,
    "show_params": 3,
    "sleep": 2,
    "cancel": 1,
    "portal": 2,
    "large": 1,
    "vanish": 0.5,
    "quit_in_txn": 0.5,
    "set_other": 2,
    "reset": 1,
    "discard": 1,
    "unnamed_split": 2,
    "flush": 2,
}


class Scripted(SimClient):
    """A client that logs in, runs random scenarios, and checks every answer."""

    def __init__(
        self,
        world: World,
        number: int,
        user: str,
        password: str,
        rng: random.Random,
        *,
        behaviour: Behaviour,
        database: str,
    ) -> None:
        super().__init__(world, number, user, password, rng)
        self.b = behaviour
        self.database = database
        self.seq = 0
        self.cancel_pending = False
        self.settings: dict[str, str] = {}  # our SETs of parameters nobody reports
        weights = behaviour.weights or DEFAULT_WEIGHTS
        self.choices = [(name, w) for name, w in weights.items() if w > 0]

    # --- helpers ---------------------------------------------------------------------

    def uniq(self) -> str:
        self.seq += 1
        return f"{self.name}.{self.sessions}.{self.seq}"

    @property
    def tag(self) -> str:
        return f"/*tag:{self.name}*/"

    def outcome(self, what: str) -> None:
        self.b.outcomes[what] = self.b.outcomes.get(what, 0) + 1

    def expect(self, ok: bool, what: str, reply: Reply | None = None) -> None:
        if not ok:
            got = f"; got: {reply.brief()}" if reply is not None else ""
            raise SimFailure(f"{self.last_step}: expected {what}{got}")

    def ask(
        self, *events: object, n: int = 1, until: tuple[type[Event], ...] | None = None
    ) -> Script:
        """Send, wait for ``n`` ReadyForQuery, and sort out errors that are not ours.

        Raises Gone if the pooler closed us, Abort for an allowed pooler error, and
        SimFailure for a cancel we did not ask for or an error that came too slowly.
        """
        self.send(*events)  # type: ignore[arg-type,unused-ignore]
        reply: Reply = yield from self.replies(n, self.b.reply_timeout, until)
        allowed = []
        for err in reply.errors:
            code = err.sqlstate or ""
            if code == "57014" and "user request" in (err.message or ""):
                if not self.cancel_pending:
                    raise SimFailure(f"cancelled without asking: {reply.brief()}")
                continue  # what we asked for: the scenario checks it
            fatal = err.severity in ("FATAL", "PANIC")
            if code not in self.b.allowed:
                if fatal:
                    raise SimFailure(f"unexpected FATAL from the pooler: {reply.brief()}")
                continue  # an ordinary SQL error: the scenario checks it
            allowed.append(err)
            limit = self.b.max_error_latency
            if limit is not None and reply.latency > limit:
                raise SimFailure(
                    f"error {code} took {reply.latency:.3f} s to arrive (limit {limit} s)"
                )
        healed = self.b.recovered_at
        if allowed and healed is not None and reply.sent_at >= healed:
            raise SimFailure(
                f"the pool did not recover (faults ended by t={healed}): {reply.brief()}"
            )
        if allowed:
            self.outcome(f"error {allowed[0].sqlstate}")
            if reply.closed or any(e.severity in ("FATAL", "PANIC") for e in allowed):
                raise Gone()  # the pooler is closing this connection
            raise Abort(allowed[0].message)
        if reply.closed:
            raise SimFailure(f"the pooler closed the connection: {reply.brief()}")
        return reply

    def ok(
        self, reply: Reply, status: str = "I", rows: list[tuple[bytes | None, ...]] | None = None
    ) -> None:
        self.expect(not reply.errors, "no error", reply)
        self.expect(reply.status == status, f"ReadyForQuery {status}", reply)
        if rows is not None:
            self.expect(reply.rows == rows, f"rows {rows}", reply)

    def key(self) -> str:
        k = self.uniq()
        self.b.ledger[k] = "open"
        return k

    def settle(self, keys: list[str], state: str) -> None:
        for k in keys:
            if self.b.ledger.get(k) in ("open", "committing"):
                self.b.ledger[k] = state

    # --- the life of a client -----------------------------------------------------------

    def main(self) -> Script:
        """Connections one after another until the transaction budget is spent.

        A refused login or a dropped connection costs budget too and is followed by a
        pause, so a fault window ends with the clients retrying, not hammering.
        """
        rng = self.rng
        budget = rng.randint(*self.b.transactions) * rng.randint(*self.b.sessions)
        while budget > 0:
            session = self.connect()
            self.settings = {}
            params = {}
            if rng.random() < 0.5:
                params["application_name"] = f"{self.name}-start"
            budget -= 1
            try:
                reply = yield from self.login(self.database, **params)
                if reply.closed or reply.status != "I":
                    codes = reply.codes
                    refused = not codes and self.b.allow_refused
                    self.expect(
                        refused or (bool(codes) and (codes[0] or "") in self.b.allowed),
                        "a login, or an allowed error",
                        reply,
                    )
                    self.outcome(f"login error {codes[0] if codes else 'refused'}")
                    raise Gone()
                self.outcome("login")
                for _ in range(min(budget, rng.randint(*self.b.transactions))):
                    budget -= 1
                    yield Pause(rng.expovariate(1 / self.b.think))
                    name = rng.choices([c[0] for c in self.choices], [c[1] for c in self.choices])[
                        0
                    ]
                    self.last_step = name
                    try:
                        yield from getattr(self, "sc_" + name)()
                        self.outcome(name)
                    except Abort:
                        if session.status != "I" and not session.closed:
                            self.last_step = "rollback after abort"
                            reply = yield from self.ask(Query("ROLLBACK"))
                if rng.random() < 0.8:
                    self.send(Terminate())
                self.close()
                yield Pause(rng.expovariate(1 / 0.1))
            except (Gone, Abort):
                self.close()
                yield Pause(rng.uniform(0.1, 0.5))

    # --- scenarios ------------------------------------------------------------------------

    def sc_simple(self) -> Script:
        v = self.uniq()
        reply = yield from self.ask(Query(f"SELECT '{v}' AS v {self.tag}"))
        self.ok(reply, rows=[(v.encode(),)])

    def sc_txn_commit(self) -> Script:
        k, v = self.key(), self.uniq()
        try:
            self.ok((yield from self.ask(Query(f"BEGIN {self.tag}"))), "T")
            q = f"INSERT INTO ledger VALUES ('{k}', '{self.name}') {self.tag}; "
            reply = yield from self.ask(Query(q + f"SELECT pg_backend_pid() {self.tag}"))
            self.ok(reply, "T")
            pid = reply.rows
            if self.rng.random() < 0.3:
                q = f"SELECT pg_sleep({self.rng.uniform(0.001, 0.05):.4f}) {self.tag}"
                self.ok((yield from self.ask(Query(q))), "T")
            q = f"SELECT '{v}' {self.tag}; SELECT pg_backend_pid() {self.tag}"
            self.ok((yield from self.ask(Query(q))), "T", [(v.encode(),), *pid])
            self.b.ledger[k] = "committing"
            reply = yield from self.ask(Query(f"COMMIT {self.tag}"))
            self.ok(reply)
            self.expect(reply.tags == ["COMMIT"], "COMMIT", reply)
            self.b.ledger[k] = "committed"
        finally:
            self.settle([k], "unknown" if self.b.ledger[k] == "committing" else "aborted")

    def sc_txn_rollback(self) -> Script:
        k = self.key()
        try:
            self.ok((yield from self.ask(Query(f"BEGIN {self.tag}"))), "T")
            q = f"INSERT INTO ledger VALUES ('{k}', '{self.name}') {self.tag}"
            self.ok((yield from self.ask(Query(q))), "T")
            self.ok((yield from self.ask(Query(f"ROLLBACK {self.tag}"))))
        finally:
            self.settle([k], "aborted")

    def sc_txn_error(self) -> Script:
        k = self.key()
        try:
            q = f"BEGIN {self.tag}; INSERT INTO ledger VALUES ('{k}', '{self.name}') {self.tag}"
            self.ok((yield from self.ask(Query(q))), "T")
            reply = yield from self.ask(Query(f"SELECT error {self.tag}"))
            self.expect(reply.codes == ["42601"] and reply.status == "E", "42601, E", reply)
            reply = yield from self.ask(Query(f"SELECT 1 {self.tag}"))
            self.expect(reply.codes == ["25P02"] and reply.status == "E", "25P02, E", reply)
            reply = yield from self.ask(Query(f"COMMIT {self.tag}"))
            self.ok(reply)
            self.expect(reply.tags == ["ROLLBACK"], "ROLLBACK for COMMIT in E", reply)
        finally:
            self.settle([k], "aborted")

    def sc_multi(self) -> Script:
        k, v1, v2 = self.key(), self.uniq(), self.uniq()
        q = (
            f"INSERT INTO ledger VALUES ('{k}', '{self.name}') {self.tag}; "
            f"SELECT '{v1}' {self.tag}; SELECT '{v2}' {self.tag}"
        )
        self.b.ledger[k] = "committing"
        try:
            reply = yield from self.ask(Query(q))
            self.ok(reply, rows=[(v1.encode(),), (v2.encode(),)])
            self.b.ledger[k] = "committed"
        finally:
            self.settle([k], "unknown")

    def sc_multi_error(self) -> Script:
        k, v = self.key(), self.uniq()
        q = (
            f"INSERT INTO ledger VALUES ('{k}', '{self.name}') {self.tag}; "
            f"SELECT error {self.tag}; SELECT '{v}' {self.tag}"
        )
        try:
            reply = yield from self.ask(Query(q))
            self.expect(reply.codes == ["42601"] and reply.rows == [], "42601 only", reply)
            self.expect(reply.status == "I", "ReadyForQuery I", reply)
        finally:
            self.settle([k], "aborted")

    def sc_unnamed(self) -> Script:
        v = self.uniq()
        reply = yield from self.ask(
            Parse("", f"SELECT $1::text, $2::text {self.tag}"),
            Bind("", "", params=[f"tag:{self.name}".encode(), v.encode()]),
            Describe("P", ""),
            Execute("", 0),
            Sync(),
        )
        self.ok(reply, rows=[(f"tag:{self.name}".encode(), v.encode())])
        want = ["ParseComplete", "BindComplete", "RowDescription", "DataRow"]
        want += ["CommandComplete", "ReadyForQuery"]
        self.expect(reply.kinds() == want, str(want), reply)

    def _named_text(self, name: str) -> str:
        # Half the clients give each name the other text: same names, other queries.
        return (NAMED if self.number % 2 else NAMED_ALT)[name]

    def _prepare(self, name: str) -> Script:
        session = self.session
        assert session is not None
        if name in session.prepared:
            return
        text = self._named_text(name)
        reply = yield from self.ask(Parse(name, text), Sync())
        self.ok(reply)
        self.expect(reply.kinds() == ["ParseComplete", "ReadyForQuery"], "ParseComplete", reply)
        session.prepared[name] = text

    def _bind_named(self, name: str) -> tuple[list[object], tuple[bytes | None, ...]]:
        v = self.uniq()
        value = str(self.seq) if "int" in self._named_text(name) else v
        tag = f"tag:{self.name}".encode()
        events: list[object] = [Bind("", name, params=[tag, value.encode()]), Execute("", 0)]
        return events, (tag, value.encode())

    def sc_named(self) -> Script:
        name = self.rng.choice(sorted(NAMED))
        yield from self._prepare(name)
        events, row = self._bind_named(name)
        count = self.rng.randint(1, 3)
        batch: list[object] = []
        rows = []
        for _ in range(count):
            events, row = self._bind_named(name)
            batch += [*events, Sync()]
            rows.append(row)
        reply = yield from self.ask(*batch, n=count)
        self.expect(not reply.errors, "no error", reply)
        self.expect(reply.rows == rows, f"rows {rows}", reply)

    def sc_named_close(self) -> Script:
        session = self.session
        assert session is not None
        name = self.rng.choice(sorted(NAMED))
        yield from self._prepare(name)
        reply = yield from self.ask(Close("S", name), Sync())
        self.ok(reply)
        del session.prepared[name]
        if not self.b.bind_unknown:
            return
        events, _ = self._bind_named(name)
        reply = yield from self.ask(*events, Sync())
        self.expect(reply.codes == ["26000"], "26000 after Close", reply)
        message = reply.errors[0].message or ""
        self.expect(f'"{name}"' in message, f"our statement name {name!r} in the error", reply)

    def sc_named_duplicate(self) -> Script:
        name = self.rng.choice(sorted(NAMED))
        yield from self._prepare(name)
        reply = yield from self.ask(Parse(name, "SELECT 1"), Sync())
        self.expect(reply.codes == ["42P05"], "42P05 for a duplicate Parse", reply)
        message = reply.errors[0].message or ""
        self.expect(f'"{name}"' in message, f"our statement name {name!r} in the error", reply)
        # The original statement still works.
        events, row = self._bind_named(name)
        reply = yield from self.ask(*events, Sync())
        self.ok(reply, rows=[row])

    def sc_pipeline(self) -> Script:
        name = self.rng.choice(sorted(NAMED))
        yield from self._prepare(name)
        v1, v2, v3 = self.uniq(), self.uniq(), self.uniq()
        named, row = self._bind_named(name)
        tag = f"tag:{self.name}".encode()
        reply = yield from self.ask(
            Query(f"SELECT '{v1}' {self.tag}"),
            Parse("", f"SELECT $1::text, $2::text {self.tag}"),
            Bind("", "", params=[tag, v2.encode()]),
            Execute("", 0),
            Sync(),
            Parse("", f"SELECT error {self.tag}"),
            Bind("", ""),
            Execute("", 0),
            Sync(),
            *named,
            Sync(),
            Query(f"SELECT '{v3}' {self.tag}"),
            n=5,
        )
        want = [(v1.encode(),), (tag, v2.encode()), row, (v3.encode(),)]
        self.expect(reply.codes == ["42601"], "one 42601", reply)
        self.expect(reply.rows == want, f"rows {want}", reply)
        self.expect(reply.statuses == ["I"] * 5, "five ReadyForQuery I", reply)

    def _set(self, param: str, value: str, reply: Reply) -> None:
        self.ok(reply)
        self.expect(
            ParameterStatus(param, value) in reply.events, f"ParameterStatus {param}", reply
        )

    def _random_setting(self) -> tuple[str, str]:
        param = self.rng.choice(["application_name", "TimeZone", "DateStyle"])
        if param == "application_name":
            return param, f"{self.name}-{self.seq}"
        return param, self.rng.choice(TIMEZONES if param == "TimeZone" else DATESTYLES)

    def sc_set_param(self) -> Script:
        param, value = self._random_setting()
        session = self.session
        assert session is not None
        before = session.params.get(param)
        reply = yield from self.ask(Query(f"SET {param} = '{value}' {self.tag}"))
        if before == value:
            self.ok(reply)
        else:
            self._set(param, value, reply)
        yield from self.sc_show_params()

    def sc_set_in_txn(self) -> Script:
        param, value = self._random_setting()
        session = self.session
        assert session is not None
        before = session.params.get(param)
        self.ok((yield from self.ask(Query(f"BEGIN {self.tag}"))), "T")
        self.ok((yield from self.ask(Query(f"SET {param} = '{value}' {self.tag}"))), "T")
        self.ok((yield from self.ask(Query(f"ROLLBACK {self.tag}"))))
        self.expect(session.params.get(param) == before, f"{param} back to {before!r}")
        yield from self.sc_show_params()

    def sc_show_params(self) -> Script:
        """SHOW must agree with the last ParameterStatus we got, and with our SETs."""
        session = self.session
        assert session is not None
        names = ["application_name", "TimeZone", "DateStyle"]
        want = [(session.params.get(n, "").encode(),) for n in names]
        for name, value in sorted(self.settings.items()):
            names.append(name)
            want.append((value.encode(),))
        q = "; ".join(f"SHOW {n} {self.tag}" for n in names)
        reply = yield from self.ask(Query(q))
        self.ok(reply)
        self.expect(reply.rows == want, f"SHOW {names} = {want}", reply)

    def sc_set_other(self) -> Script:
        """A plain session SET of a parameter PostgreSQL does not report."""
        param, value = self.rng.choice(OTHER_SETTINGS)
        value = value.replace("N", str(self.seq % 50 + 1))
        # Half of them with our tag comment (ORMs add comments, see sqlcommenter).
        tag = self.tag if self.b.comment_sets and self.rng.random() < 0.5 else ""
        reply = yield from self.ask(Query(f"SET {param} = '{value}' {tag}"))
        self.ok(reply)
        self.settings[param] = value
        yield from self.sc_show_params()

    def sc_reset(self) -> Script:
        """RESET one parameter, or RESET ALL: back to the connection's defaults."""
        if self.settings and self.rng.random() < 0.5:
            param = self.rng.choice(sorted(self.settings))
            self.ok((yield from self.ask(Query(f"RESET {param} {self.tag}"))))
            self.settings[param] = DEFAULTS.get(param, "")
        else:
            self.ok((yield from self.ask(Query(f"RESET ALL {self.tag}"))))
            for param in self.settings:
                self.settings[param] = DEFAULTS.get(param, "")
        yield from self.sc_show_params()

    def sc_discard(self) -> Script:
        """DISCARD ALL / DEALLOCATE ALL forget our statements; preparing again works."""
        session = self.session
        assert session is not None
        name = self.rng.choice(sorted(NAMED))
        yield from self._prepare(name)
        if self.rng.random() < 0.5:
            reply = yield from self.ask(Query(f"DISCARD ALL {self.tag}"))
            self.ok(reply)
            for param in self.settings:
                self.settings[param] = DEFAULTS.get(param, "")
        else:
            self.ok((yield from self.ask(Query(f"DEALLOCATE ALL {self.tag}"))))
        session.prepared.clear()
        yield from self._prepare(name)
        events, row = self._bind_named(name)
        self.ok((yield from self.ask(*events, Sync())), rows=[row])
        yield from self.sc_show_params()

    def sc_unnamed_split(self) -> Script:
        """Parse and Bind of the unnamed statement in separate round trips (pg8000)."""
        v = self.uniq()
        q = f"SELECT $1::text, $2::text {self.tag}"
        reply = yield from self.ask(Parse("", q), Describe("S", ""), Sync())
        self.ok(reply)
        want = ["ParseComplete", "ParameterDescription", "RowDescription", "ReadyForQuery"]
        self.expect(reply.kinds() == want, str(want), reply)
        tag = f"tag:{self.name}".encode()
        reply = yield from self.ask(Bind("", "", params=[tag, v.encode()]), Execute(), Sync())
        self.ok(reply, rows=[(tag, v.encode())])

    def sc_flush(self) -> Script:
        """Extended query with Flush: the results come before any Sync."""
        v = self.uniq()
        tag = f"tag:{self.name}".encode()
        try:
            reply = yield from self.ask(
                Parse("", f"SELECT $1::text, $2::text {self.tag}"),
                Bind("", "", params=[tag, v.encode()]),
                Execute(),
                Flush(),
                until=(CommandComplete, ErrorResponse),
            )
        except Abort:
            # An error ends the batch early: the server now waits for our Sync.
            yield from self.ask(Sync())
            raise
        self.expect(reply.rows == [(tag, v.encode())] and not reply.errors, "a row", reply)
        self.ok((yield from self.ask(Sync())))

    def sc_sleep(self) -> Script:
        v, d = self.uniq(), self.rng.uniform(0.01, 0.3)
        in_txn = self.rng.random() < 0.5
        if in_txn:
            self.ok((yield from self.ask(Query(f"BEGIN {self.tag}"))), "T")
        reply = yield from self.ask(Query(f"SELECT pg_sleep({d:.4f}), '{v}' {self.tag}"))
        self.ok(reply, "T" if in_txn else "I", [(b"", v.encode())])
        self.expect(reply.latency >= d, f"a sleep of at least {d:.4f} s", reply)
        if in_txn:
            self.ok((yield from self.ask(Query(f"COMMIT {self.tag}"))))

    def sc_cancel(self) -> Script:
        """Cancel a long query; if it was running when we asked, it must stop."""
        v = self.uniq()
        q = f"SELECT pg_sleep({CANCEL_SLEEP}), '{v}' {self.tag}"
        self.cancel_pending = True
        try:
            self.send(Query(q))
            yield Pause(self.rng.uniform(0.05, 0.3))
            running = q in self.b.started
            self.cancel()
            reply: Reply = yield from self.ask(n=1)
        finally:
            self.cancel_pending = False
        if reply.errors:
            err = reply.errors[0]
            ok = err.sqlstate == "57014" and "user request" in (err.message or "")
            self.expect(ok and reply.status == "I", "57014 user request", reply)
            self.outcome("cancelled")
        else:
            self.ok(reply, rows=[(b"", v.encode())])
            self.expect(not running, "the cancel to stop a query that was running", reply)
            self.outcome("cancel missed (query still queued)")

    def sc_portal(self) -> Script:
        self.ok((yield from self.ask(Query(f"BEGIN {self.tag}"))), "T")
        reply = yield from self.ask(
            Parse("", f"SELECT generate_series(1, 7) {self.tag}"),
            Bind("cur", ""),
            Execute("cur", 3),
            Execute("cur", 3),
            Execute("cur", 0),
            Sync(),
        )
        self.ok(reply, "T", [(str(i).encode(),) for i in range(1, 8)])
        self.expect(reply.kinds().count("PortalSuspended") == 2, "two PortalSuspended", reply)
        self.ok((yield from self.ask(Query(f"COMMIT {self.tag}"))))

    def sc_large(self) -> Script:
        n = self.rng.randint(500, 3000)
        reply = yield from self.ask(Query(f"SELECT generate_series(1, {n}) {self.tag}"))
        self.ok(reply)
        self.expect(len(reply.rows) == n and reply.rows[-1] == (str(n).encode(),), f"{n} rows")

    def sc_vanish(self) -> Script:
        """Send a query and go away before the answer (a crashed client)."""
        k = self.key()
        if self.rng.random() < 0.5:
            q = f"BEGIN {self.tag}; INSERT INTO ledger VALUES ('{k}', '{self.name}') {self.tag}"
            self.send(Query(q))
            self.settle([k], "aborted")
        else:
            self.b.ledger[k] = "unknown"
            q = f"INSERT INTO ledger VALUES ('{k}', '{self.name}') {self.tag}"
            self.send(Query(f"{q}; SELECT pg_sleep({self.rng.uniform(0, 0.2):.3f})"))
        yield Pause(self.rng.uniform(0, 0.01))
        self.close()
        self.outcome("vanish")
        raise Gone()

    def sc_quit_in_txn(self) -> Script:
        """Leave in the middle of a transaction; it must be rolled back."""
        k = self.key()
        try:
            q = f"BEGIN {self.tag}; INSERT INTO ledger VALUES ('{k}', '{self.name}') {self.tag}"
            self.ok((yield from self.ask(Query(q))), "T")
        finally:
            self.settle([k], "aborted")
        if self.rng.random() < 0.5:
            self.send(Terminate())
        self.close()
        self.outcome("quit_in_txn")
        raise Gone()
