"""Play conformance scenarios against a target as a client, and judge its answers.

The runner is a plain blocking-socket client: a conformance tester must be able to send
what a real client never would (a 1 GiB length claim, Terminate in the middle of a
pipeline, a CancelRequest with a stale key), so it does not go through the protocol
state machine of :class:`pgsansio.protocol.Connection`, which would refuse to. It encodes
frontend messages with the protocol library's events and decodes the answers with its
message readers, one message at a time, so that whatever the target sends, even out of
order, is shown decoded rather than rejected.

Decisions:

* **Authentication is redone for the target.** A scenario never holds a recorded
  password exchange (a SCRAM exchange cannot be replayed); the runner answers whatever
  the target asks: trust, cleartext, MD5 or SCRAM-SHA-256, with the credentials given.
* **Verdicts.** ``pass``; ``fail`` with the expected line and the first differing message
  decoded; ``n/a`` when the scenario does not apply (a session-state scenario against a
  transaction pooler, a server version it does not cover, a reference that itself
  disagrees with the scenario); ``known`` for a failure the scenario records as a known
  finding for this kind of target (``finding: LABEL: why``), which does not fail the run.
* **Differential mode.** With a reference (PostgreSQL, typically), each scenario runs
  against both and every answer a required (not ``<?``) line matched is compared message
  by message, in full, including what the scenario's ``*`` left open; only error and
  notice texts are left out (a pooler may word its own errors), severity and SQLSTATE
  are not.
* **Isolation.** A scenario whose SQL mentions ``{schema}`` gets a schema of its own,
  created before and dropped after through a separate administrative connection, even
  when the scenario fails half-way.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
import secrets
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from pgsansio import protocol as pg
from pgsansio.protocol._readers import BACKEND_READERS

from .scenario import (
    Directive,
    Expect,
    Scenario,
    Send,
    Token,
    differential_form,
    line_matches,
    quote,
    render_backend,
    tokenize,
)

__all__ = ["Result", "Target", "Wire", "run_scenario", "run_suite"]

_hdr = struct.Struct("!ci").unpack
_MAX_ANSWER: Final = 64 * 1024 * 1024
"""The largest backend message the runner reads; scenarios never need more."""

APPLICATION_NAME: Final = "pgsansio-conformance"


class ScenarioFailure(Exception):
    """Ends a scenario: what was expected, what came instead (decoded), and why."""

    def __init__(self, why: str, expected: str = "", got: str = "", decoded: str = "") -> None:
        super().__init__(why)
        self.why = why
        self.expected = expected
        self.got = got
        self.decoded = decoded


class NotApplicable(Exception):
    """The scenario does not apply to this target; the message says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """Where and as whom to connect, and what the target promises.

    ``pooling`` is ``session`` for a server or a session pooler and ``transaction`` for a
    transaction pooler (session-state scenarios are then not applicable). ``label`` names
    the kind of target for the scenarios' known findings (``pgbouncer``,
    ``pgsansio-transaction``, ...).
    """

    host: str
    port: int
    user: str
    password: str | None = None
    database: str = ""
    pooling: str = "session"
    label: str = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclasses.dataclass(slots=True)
class Received:
    """One backend message as received: canonical line, tokens and decoded form."""

    line: str
    tokens: list[Token]
    decoded: str
    event: pg.Event | None = None

    @property
    def name(self) -> str:
        return self.line.split(" ", 1)[0]


_EOF = Received("EOF", [Token("word", "EOF")], "the connection was closed by the target")


@dataclasses.dataclass(slots=True)
class Result:
    """A scenario's verdict against one target (and its reference, in differential mode)."""

    scenario: Scenario
    status: str
    """``pass``, ``fail``, ``n/a`` or ``known``."""
    why: str = ""
    expected: str = ""
    got: str = ""
    decoded: str = ""
    reference_got: str = ""
    reference_decoded: str = ""
    seconds: float = 0.0
    transcript: list[str] = dataclasses.field(default_factory=list)


class Wire:
    """One client connection to the target: send bytes, read one message at a time."""

    def __init__(self, target: Target, timeout: float) -> None:
        self.target = target
        self.timeout = timeout
        self.sock = socket.create_connection((target.host, target.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pushback: deque[Received] = deque()
        self.eof = False
        self.byte_answer = ""
        self.startup_sent = False
        self.logged_in = False
        self.key: tuple[int, bytes] | None = None
        self.server_version = ""

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            # The target may close first (after a FATAL); the answer shows that as EOF.
            self.eof = self.eof or isinstance(e, BrokenPipeError | ConnectionResetError)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:
            chunk = b""
        if not chunk:
            self.eof = True
            return True
        self.buf += chunk
        return True

    def unread(self, msg: Received) -> None:
        self.pushback.appendleft(msg)

    def next(self, timeout: float | None = None) -> Received | None:
        """The next message, :data:`_EOF` once closed, or None after ``timeout``."""
        if self.pushback:
            return self.pushback.popleft()
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            msg = self._parse()
            if msg is not None:
                return msg
            if self.eof:
                return _EOF
            if not self._fill(deadline):
                return None

    def _parse(self) -> Received | None:
        if self.byte_answer and self.buf:
            kind, self.byte_answer = self.byte_answer, ""
            if self.buf[0] in b"SNG":
                answer = self.buf[0] in b"SG"
                del self.buf[:1]
                event: pg.Event = (
                    pg.SSLResponse(answer) if kind == "ssl" else pg.GSSENCResponse(answer)
                )
                return _received(event)
        if len(self.buf) < 5:
            return None
        code, length = _hdr(bytes(self.buf[:5]))
        if length < 4 or length > _MAX_ANSWER:
            self.eof = True
            self.buf.clear()
            return Received(
                "Unframed",
                [Token("word", "Unframed")],
                f"a message {code!r} claiming {length} bytes: not a PostgreSQL answer",
            )
        if len(self.buf) < length + 1:
            return None
        body = bytes(self.buf[5 : length + 1])
        del self.buf[: length + 1]
        reader = BACKEND_READERS.get(code)
        if reader is None:
            text = f"Unknown {quote(code.decode('latin-1'))} x'{body[:64].hex()}'"
            return Received(text, tokenize(text), f"unknown message type {code!r}")
        try:
            event = reader(body)
        except pg.ProtocolError as e:
            text = f"Malformed {quote(code.decode('latin-1'))}"
            return Received(text, tokenize(text), f"malformed {code!r} message: {e}")
        return _received(event)


def _received(event: pg.Event) -> Received:
    line = render_backend(event)
    return Received(line, tokenize(line), repr(event), event)


# --- frontend messages -------------------------------------------------------------


class _Args:
    """Reads a Send line's arguments in order, with errors naming the scenario line."""

    def __init__(self, step: Send, subst: Callable[[str], str]) -> None:
        self.step = step
        self.tokens = list(step.args)
        self.subst = subst

    def fail(self, why: str) -> ScenarioFailure:
        return ScenarioFailure(f"line {self.step.lineno}: {self.step.name}: {why}")

    def text(self, default: str | None = None) -> str:
        if not self.tokens:
            if default is None:
                raise self.fail("missing argument")
            return default
        t = self.tokens.pop(0)
        if t.kind not in ("str", "word") or not isinstance(t.value, str):
            raise self.fail(f"expected a string, got {t.kind}")
        return self.subst(t.value)

    def number(self, default: int | None = None) -> int:
        value = self.text(None if default is None else str(default))
        try:
            return int(value)
        except ValueError:
            raise self.fail(f"expected a number, got {value!r}") from None

    def value(self) -> tuple[int, bytes | None]:
        """A parameter: (format, bytes): strings are text (0), x'..' binary (1)."""
        t = self.tokens.pop(0)
        if t.kind == "null":
            return 0, None
        if isinstance(t.value, bytes):
            return 1, t.value
        assert isinstance(t.value, str)
        return 0, self.subst(t.value).encode("utf-8", "surrogateescape")

    def formats(self) -> tuple[int, ...]:
        """A trailing ``results=0,1`` word, if any."""
        if self.tokens and self.tokens[-1].text.startswith("results="):
            spec = self.tokens.pop().text[len("results=") :]
            return tuple(int(x) for x in spec.split(",") if x)
        return ()

    def done(self) -> None:
        if self.tokens:
            raise self.fail(f"{len(self.tokens)} argument(s) too many")


def encode(step: Send, subst: Callable[[str], str], wire: Wire) -> bytes:
    """The bytes of one ``>`` line."""
    a = _Args(step, subst)
    name = step.name
    event: pg.Event
    if name == "Query":
        event = pg.Query(a.text())
    elif name == "Parse":
        stmt, sql = a.text(), a.text()
        types = []
        while a.tokens:
            types.append(a.number())
        event = pg.Parse(stmt, sql, types)
    elif name == "Bind":
        portal, stmt = a.text(), a.text()
        results = a.formats()
        pairs = [a.value() for _ in range(len(a.tokens))]
        fmts = [f for f, _ in pairs]
        event = pg.Bind(portal, stmt, fmts if any(fmts) else (), [v for _, v in pairs], results)
    elif name == "Execute":
        event = pg.Execute(a.text(""), a.number(0))
    elif name in ("Describe", "Close"):
        kind = a.text()
        if kind not in ("S", "P"):
            raise a.fail("the first argument is S (statement) or P (portal)")
        event = (pg.Describe if name == "Describe" else pg.Close)(kind, a.text(""))
    elif name in ("Sync", "Flush", "Terminate", "CopyDone"):
        event = {"Sync": pg.Sync, "Flush": pg.Flush, "Terminate": pg.Terminate}.get(
            name, pg.CopyDone
        )()
    elif name == "CopyData":
        event = pg.CopyData(a.value()[1] or b"")
    elif name == "CopyFail":
        event = pg.CopyFail(a.text())
    elif name == "FunctionCall":
        oid = a.number()
        result = a.formats()
        pairs = [a.value() for _ in range(len(a.tokens))]
        event = pg.FunctionCall(
            oid, [f for f, _ in pairs], [v for _, v in pairs], result[0] if result else 0
        )
    elif name == "Startup":
        version = a.text("3.0")
        major, _, minor = version.partition(".")
        params = []
        while a.tokens:
            key, eq, value = a.text().partition("=")
            if not eq:
                raise a.fail(f"startup parameters are key=value, not {key!r}")
            params.append((key, value))
        wire.startup_sent = True
        event = pg.StartupMessage(params, (int(major) << 16) | int(minor or 0))
    elif name in ("SSLRequest", "GSSENCRequest"):
        wire.byte_answer = "ssl" if name == "SSLRequest" else "gss"
        event = pg.SSLRequest() if name == "SSLRequest" else pg.GSSENCRequest()
    else:  # Raw
        t = a.tokens.pop(0) if a.tokens else None
        if t is None or not isinstance(t.value, bytes):
            raise a.fail("Raw takes one x'hex' token")
        a.done()
        return t.value
    a.done()
    return bytes(event)


# --- login ---------------------------------------------------------------------------


def login(
    wire: Wire, pre: Callable[[Received], None] | None = None, *, keep_error: bool = False
) -> None:
    """Start up (unless the scenario did) and authenticate, up to the first ReadyForQuery.

    With ``keep_error`` an ErrorResponse ends the login without failing: it is left for
    the scenario's next expectation (a scenario about a refused login expects it).
    """
    t = wire.target
    if not wire.startup_sent:
        params = [("user", t.user), ("database", t.database or t.user)]
        params.append(("application_name", APPLICATION_NAME))
        wire.send(bytes(pg.StartupMessage(params)))
        wire.startup_sent = True
    scram: pg.ScramClient | None = None
    while True:
        msg = wire.next()
        if msg is None:
            raise ScenarioFailure(f"login: no answer from {t.address} within {wire.timeout}s")
        if msg is _EOF:
            raise ScenarioFailure(f"login: {t.address} closed the connection")
        event = msg.event
        if isinstance(event, pg.ErrorResponse):
            if keep_error:
                wire.unread(msg)
                return
            raise ScenarioFailure(f"login refused by {t.address}: {msg.line}")
        if isinstance(event, pg.AuthenticationOk):
            continue
        if isinstance(event, pg.AuthenticationCleartextPassword | pg.AuthenticationMD5Password):
            if t.password is None:
                raise ScenarioFailure(f"login: {t.address} asks for a password; give --password")
            pw = (
                t.password
                if isinstance(event, pg.AuthenticationCleartextPassword)
                else pg.md5_response(t.user, t.password, event.salt)
            )
            wire.send(bytes(pg.PasswordMessage(pw)))
        elif isinstance(event, pg.AuthenticationSASL):
            if "SCRAM-SHA-256" not in event.mechanisms or t.password is None:
                raise ScenarioFailure(f"login: cannot answer {msg.line} (need a password)")
            scram = pg.ScramClient(t.password)
            wire.send(bytes(pg.SASLInitialResponse("SCRAM-SHA-256", scram.client_first())))
        elif isinstance(event, pg.AuthenticationSASLContinue) and scram is not None:
            wire.send(bytes(pg.SASLResponse(scram.client_final(event.data))))
        elif isinstance(event, pg.AuthenticationSASLFinal) and scram is not None:
            scram.verify_server_final(event.data)
        elif isinstance(event, pg.BackendKeyData):
            wire.key = (event.process_id, event.secret_key)
        elif isinstance(event, pg.ParameterStatus):
            if event.name == "server_version":
                wire.server_version = event.value
        elif isinstance(event, pg.ReadyForQuery):
            wire.logged_in = True
            return
        elif isinstance(event, pg.Authentication):
            raise ScenarioFailure(f"login: authentication method not supported: {msg.line}")
        elif pre is not None:
            pre(msg)
        else:
            raise ScenarioFailure(f"login: unexpected {msg.line}", decoded=msg.decoded)


# --- the scenario runner -------------------------------------------------------------


def _major(version: str) -> int:
    m = re.match(r"(\d+)", version)
    return int(m.group(1)) if m else 0


def _check_requires(s: Scenario, server_version: str) -> None:
    for req in s.requires:
        m = re.match(r"^server(>=|<)(\d+)$", req)
        if m is None:
            raise NotApplicable(f"unknown requirement {req!r}")
        major, want = _major(server_version), int(m.group(2))
        ok = major >= want if m.group(1) == ">=" else major < want
        if not ok:
            raise NotApplicable(f"needs {req}; the target reports server_version {server_version}")


class _Play:
    """The state of one scenario's run against one target."""

    def __init__(self, s: Scenario, target: Target, timeout: float = 5.0) -> None:
        self.s = s
        self.target = target
        self.timeout = s.timeout if s.timeout is not None else timeout
        self.wires: dict[str, Wire] = {}
        self.transcript: list[str] = []
        self.compare: list[tuple[str, str, str]] = []
        self.captured: list[tuple[int, str]] = []
        """(differential form, line, decoded) of each pinned message, for --reference."""

    def subst(self, text: str) -> str:
        t = self.target
        return (
            text.replace("{schema}", self.s.schema)
            .replace("{user}", t.user)
            .replace("{database}", t.database or t.user)
        )

    def wire(self, name: str) -> Wire:
        w = self.wires.get(name)
        if w is None:
            try:
                w = Wire(self.target, self.timeout)
            except OSError as e:
                raise ScenarioFailure(f"cannot connect to {self.target.address}: {e}") from None
            self.wires[name] = w
            if self.s.startup != "none" or name != "main":
                login(w)
        return w

    def run(self) -> None:
        pending: dict[str, list[bytes]] = {}
        i = 0
        steps = self.s.steps
        while i < len(steps):
            step = steps[i]
            if isinstance(step, Send):
                w = self.wire(step.conn)
                pending.setdefault(step.conn, []).append(encode(step, self.subst, w))
                if step.name in ("SSLRequest", "GSSENCRequest", "Startup"):
                    self._flush(pending)
                i += 1
                continue
            self._flush(pending)
            if isinstance(step, Directive):
                self.directive(step)
                i += 1
                continue
            j = i
            while j < len(steps) and isinstance(steps[j], Expect) and steps[j].conn == step.conn:
                j += 1
            block = [e for e in steps[i:j] if isinstance(e, Expect)]
            self.expect(self.wire(step.conn), block)
            i = j
        self._flush(pending)
        for name, w in self.wires.items():
            if w.pushback or (w.buf and not w.eof):
                msg = w.next(0)
                if msg is not None and msg is not _EOF:
                    raise ScenarioFailure(
                        f"[{name}] an answer no line of the scenario expects",
                        expected="(nothing more)",
                        got=msg.line,
                        decoded=msg.decoded,
                    )

    def _flush(self, pending: dict[str, list[bytes]]) -> None:
        for name, chunks in pending.items():
            if chunks:
                self.wires[name].send(b"".join(chunks))
        pending.clear()

    def directive(self, d: Directive) -> None:
        if d.name == "use":
            self.wire(d.conn)
        elif d.name == "sleep":
            time.sleep(float(d.args[0].text) if d.args else 0.1)
        elif d.name == "login":
            w = self.wire(d.conn)
            login(w, self._login_extra(d), keep_error=True)
        elif d.name == "close":
            self.wire(d.conn).close()
        elif d.name == "nothing":
            w = self.wire(d.conn)
            msg = w.next(float(d.args[0].text) if d.args else 0.3)
            if msg is not None:
                raise ScenarioFailure(
                    f"line {d.lineno}: expected no answer yet",
                    expected="(nothing)",
                    got=msg.line,
                    decoded=msg.decoded,
                )
        elif d.name == "cancel":
            self.cancel(d)
        elif d.name == "capture":
            self.capture(d)

    def capture(self, d: Directive) -> None:
        """Authoring aid: record whatever the target answers, as expectation lines."""
        w = self.wire(d.conn)
        while True:
            msg = w.next(0.4)
            if msg is None:
                return
            if isinstance(msg.event, pg.Authentication):
                w.unread(msg)
                return
            line = msg.line
            if msg.name in ("ErrorResponse", "NoticeResponse"):
                line = " ".join(line.split(" ")[:3]) + " *"
            self.captured.append((d.lineno, f"< {line}"))
            if msg.name == "EOF":
                return
            if msg.name == "ReadyForQuery":
                more = w.next(0.15)
                if more is None:
                    return
                w.unread(more)

    def _login_extra(self, d: Directive) -> Callable[[Received], None]:
        def extra(msg: Received) -> None:
            raise ScenarioFailure(
                f"line {d.lineno}: unexpected message during login",
                expected="the authentication exchange",
                got=msg.line,
                decoded=msg.decoded,
            )

        return extra

    def cancel(self, d: Directive) -> None:
        who = d.args[0].text if d.args else d.conn
        if who == "bogus":
            key: tuple[int, bytes] = (0x7FFF0001, secrets.token_bytes(4))
        else:
            w = self.wires.get(who)
            if w is None or w.key is None:
                raise ScenarioFailure(f"line {d.lineno}: connection {who!r} has no cancel key")
            key = w.key
        try:
            with socket.create_connection(
                (self.target.host, self.target.port), timeout=self.timeout
            ) as c:
                c.sendall(bytes(pg.CancelRequest(*key)))
                # The server closes the connection without an answer; wait for that, so
                # the cancel has been delivered before the scenario goes on.
                c.settimeout(self.timeout)
                while c.recv(1024):
                    pass
        except OSError as e:
            raise ScenarioFailure(f"line {d.lineno}: cancel request failed: {e}") from None

    def expect(self, w: Wire, block: list[Expect]) -> None:
        ordered = [e for e in block if e.name != "ParameterStatus"]
        params = [e for e in block if e.name == "ParameterStatus"]
        seen_params: list[Received] = []
        i = 0
        # ParameterStatus comes before the ReadyForQuery that ends an answer, so once the
        # ordered lines are matched, every expected ParameterStatus has come or never will.
        while i < len(ordered) or (
            not ordered and params and not self._params_ok(params, seen_params)
        ):
            if i < len(ordered) and all(e.optional for e in ordered[i:]) and not params:
                break
            msg = w.next()
            want = ordered[i] if i < len(ordered) else params[0]
            if msg is None:
                raise ScenarioFailure(
                    f"line {want.lineno}: no answer within {self.timeout:g}s",
                    expected=want.text,
                    got="(nothing)",
                )
            if msg.name == "ParameterStatus":
                seen_params.append(msg)
                continue
            while i < len(ordered) and ordered[i].optional:
                if line_matches(list(ordered[i].pattern), msg.tokens):
                    break
                i += 1
            if i >= len(ordered):
                w.unread(msg)
                break
            e = ordered[i]
            if not line_matches(list(e.pattern), msg.tokens):
                if (
                    isinstance(msg.event, pg.SSLResponse | pg.GSSENCResponse)
                    and msg.event.accepted
                ):
                    raise NotApplicable(
                        f"the target accepts encryption ({msg.line}); this scenario covers "
                        "its refusal"
                    )
                raise ScenarioFailure(
                    f"line {e.lineno}: [{e.conn}] the answer differs",
                    expected=e.text,
                    got=msg.line,
                    decoded=msg.decoded,
                )
            self.transcript.append(f"[{e.conn}] {msg.line}")
            if not e.optional:
                self.compare.append((differential_form(msg.line), msg.line, msg.decoded))
            i += 1
        for p in params:
            if not any(line_matches(list(p.pattern), g.tokens) for g in seen_params):
                got = "; ".join(g.line for g in seen_params) or "(no ParameterStatus)"
                raise ScenarioFailure(
                    f"line {p.lineno}: [{p.conn}] an expected ParameterStatus did not come",
                    expected=p.text,
                    got=got,
                )

    @staticmethod
    def _params_ok(params: list[Expect], seen: list[Received]) -> bool:
        return all(any(line_matches(list(p.pattern), g.tokens) for g in seen) for p in params)

    def close(self) -> None:
        for w in self.wires.values():
            if not w.eof:
                w.send(bytes(pg.Terminate()))
            w.close()


class _Admin:
    """The administrative connection: creates and drops the scenarios' own schemas.

    A statement that does not finish in time (a lock left behind by the scenario, say)
    costs this connection: it is closed and the next statement opens a new one, so one
    stuck cleanup does not shift every later answer by one.
    """

    def __init__(self, target: Target, timeout: float) -> None:
        self.target = target
        self.timeout = timeout
        self.wire: Wire | None = None
        self.server_version = self._connect().server_version

    def _connect(self) -> Wire:
        if self.wire is None:
            self.wire = Wire(self.target, self.timeout)
            login(self.wire)
        return self.wire

    def execute(self, sql: str) -> str | None:
        """Run one simple query; the error line if it failed."""
        wire = self._connect()
        wire.send(bytes(pg.Query(sql)))
        error = None
        while True:
            msg = wire.next()
            if msg is None or msg is _EOF:
                self.close()
                what = "closed" if msg is _EOF else f"gave no answer within {self.timeout:g}s"
                raise ScenarioFailure(
                    f"the administrative connection to {self.target.address} {what} "
                    f"(running {sql[:60]!r})"
                )
            if msg.name == "ErrorResponse":
                error = msg.line
            if msg.name == "ReadyForQuery":
                return error

    def close(self) -> None:
        if self.wire is not None:
            self.wire.send(bytes(pg.Terminate()))
            self.wire.close()
            self.wire = None


def _play(s: Scenario, target: Target, admin: _Admin) -> tuple[_Play, ScenarioFailure | None]:
    play = _Play(s, target, admin.timeout)
    failure: ScenarioFailure | None = None
    if s.uses_schema:
        err = admin.execute(f"DROP SCHEMA IF EXISTS {s.schema} CASCADE; CREATE SCHEMA {s.schema}")
        if err:
            return play, ScenarioFailure(f"cannot create the scenario's schema: {err}")
    try:
        play.run()
    except ScenarioFailure as e:
        failure = e
    finally:
        play.close()
    if s.uses_schema:
        try:
            err = admin.execute(
                "BEGIN; SET LOCAL lock_timeout = '1s'; "
                f"DROP SCHEMA IF EXISTS {s.schema} CASCADE; COMMIT"
            )
            if err:
                admin.execute("ROLLBACK")
                failure = failure or ScenarioFailure(f"cleanup: cannot drop the schema: {err}")
        except ScenarioFailure as e:
            # The scenario's own verdict comes first; a failed cleanup is one too.
            failure = failure or ScenarioFailure(f"cleanup: {e.why}")
    return play, failure


def run_scenario(
    s: Scenario, target: Target, admin: _Admin, reference: tuple[Target, _Admin] | None = None
) -> Result:
    """One scenario's verdict against ``target`` (compared with ``reference`` if given)."""
    started = time.monotonic()
    result = Result(s, "pass")
    try:
        if s.pooling == "session" and target.pooling == "transaction":
            raise NotApplicable("needs a dedicated server session; the target pools transactions")
        _check_requires(s, admin.server_version)
        ref_play = None
        if reference is not None:
            ref_target, ref_admin = reference
            _check_requires(s, ref_admin.server_version)
            ref_play, ref_fail = _play(s, ref_target, ref_admin)
            if ref_fail is not None:
                raise NotApplicable(
                    f"the reference itself fails it: {ref_fail.why}: got {ref_fail.got}"
                )
        play, failure = _play(s, target, admin)
        result.transcript = play.transcript
        if failure is not None:
            result.status, result.why = "fail", failure.why
            result.expected, result.got, result.decoded = (
                failure.expected,
                failure.got,
                failure.decoded,
            )
        elif ref_play is not None:
            _compare(result, ref_play, play)
    except NotApplicable as e:
        result.status, result.why = "n/a", str(e)
    except ScenarioFailure as e:
        result.status, result.why = "fail", e.why
    if result.status == "fail" and target.label:
        known = s.finding_for(target.label)
        if known is not None:
            result.status = "known"
            result.why = f"known finding ({known}); {result.why}"
    result.seconds = time.monotonic() - started
    return result


def _compare(result: Result, ref: _Play, got: _Play) -> None:
    for k in range(max(len(ref.compare), len(got.compare))):
        r = ref.compare[k] if k < len(ref.compare) else ("(nothing)", "(nothing)", "")
        g = got.compare[k] if k < len(got.compare) else ("(nothing)", "(nothing)", "")
        if r[0] != g[0]:
            result.status = "fail"
            result.why = f"answer {k + 1} differs from the reference"
            result.expected, result.reference_got, result.reference_decoded = r[0], r[1], r[2]
            result.got, result.decoded = g[1], g[2]
            return


def select(scenarios: Iterable[Scenario], only: Sequence[str] = ()) -> list[Scenario]:
    """The scenarios whose id or area matches one of the ``only`` glob patterns (all if none)."""
    if not only:
        return list(scenarios)
    return [
        s
        for s in scenarios
        if any(
            fnmatch.fnmatchcase(s.id, p) or fnmatch.fnmatchcase(s.area, p) or p in s.id
            for p in only
        )
    ]


def _connect_admin(target: Target, timeout: float) -> _Admin:
    try:
        return _Admin(target, timeout)
    except OSError as e:
        raise ScenarioFailure(f"cannot reach {target.address}: {e.strerror or e}") from None


def run_suite(
    scenarios: Iterable[Scenario],
    target: Target,
    reference: Target | None = None,
    *,
    timeout: float = 5.0,
    progress: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Run scenarios in order against ``target`` (and ``reference``).

    Raises ScenarioFailure, saying why, if either cannot be reached or refuses the login.
    """
    admin = _connect_admin(target, timeout)
    ref_admin = _connect_admin(reference, timeout) if reference is not None else None
    results: list[Result] = []
    try:
        for s in scenarios:
            ref = (
                (reference, ref_admin) if reference is not None and ref_admin is not None else None
            )
            r = run_scenario(s, target, admin, ref)
            results.append(r)
            if progress is not None:
                progress(r)
    finally:
        admin.close()
        if ref_admin is not None:
            ref_admin.close()
    return results


def default_user() -> str:
    """The user name libpq would pick: $PGUSER, else the login name."""
    return os.environ.get("PGUSER") or os.environ.get("USER") or "postgres"
