"""Simulated PostgreSQL clients, scripted as generators.

A client's behaviour is written as straight-line code: a generator that sends with
``self.send(...)`` and waits with ``reply = yield from self.replies(n)``. The driver
resumes it when the network delivers an event (or a timeout fires), so thousands of
clients interleave on one simulated clock without threads.

The client speaks through the protocol library's ``Connection(CLIENT)``: if the pooler
ever sends something a real server could not have sent in that state, the client's
state machine raises and the run fails right there.
"""

from __future__ import annotations

import random
import traceback
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pgsansio.protocol import (
    CLIENT,
    NEED_DATA,
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    BackendKeyData,
    CancelRequest,
    CommandComplete,
    Connection,
    ConnectionClosed,
    DataRow,
    ErrorResponse,
    Event,
    NoticeResponse,
    ParameterStatus,
    PasswordMessage,
    ProtocolError,
    ReadyForQuery,
    SASLInitialResponse,
    SASLResponse,
    ScramClient,
    StartupMessage,
    md5_response,
)

from .world import SimFailure, brief

if TYPE_CHECKING:
    from .world import World


class Wait:
    """Yielded by a script: resume me with the next event, or None after ``timeout``."""

    __slots__ = ("timeout",)

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout


class Pause:
    """Yielded by a script: resume me (with None) after ``seconds``."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


Script = Generator[Wait | Pause, Event | None, Any]


class Gone(Exception):
    """The connection closed (the pooler dropped us, usually after a FATAL)."""


class Abort(Exception):
    """An error the run allows (pool timeout, a killed server): give up this scenario."""


@dataclass
class Reply:
    """Everything received up to the awaited ReadyForQuery messages."""

    events: list[Event]
    sent_at: float
    received_at: float

    @property
    def latency(self) -> float:
        return self.received_at - self.sent_at

    @property
    def errors(self) -> list[ErrorResponse]:
        return [e for e in self.events if isinstance(e, ErrorResponse)]

    @property
    def codes(self) -> list[str | None]:
        return [e.sqlstate for e in self.errors]

    @property
    def rows(self) -> list[tuple[bytes | None, ...]]:
        return [e.values for e in self.events if isinstance(e, DataRow)]

    @property
    def tags(self) -> list[str]:
        return [e.tag for e in self.events if isinstance(e, CommandComplete)]

    @property
    def statuses(self) -> list[str]:
        return [e.status for e in self.events if isinstance(e, ReadyForQuery)]

    @property
    def status(self) -> str | None:
        s = self.statuses
        return s[-1] if s else None

    @property
    def closed(self) -> bool:
        return any(isinstance(e, ConnectionClosed) for e in self.events)

    def kinds(self) -> list[str]:
        """Event class names, without asynchronous ParameterStatus/Notice messages."""
        return [
            type(e).__name__
            for e in self.events
            if not isinstance(e, (ParameterStatus, NoticeResponse))
        ]

    def brief(self) -> str:
        parts = []
        for e in self.events:
            if isinstance(e, ErrorResponse):
                parts.append(f"Error({e.sqlstate} {e.message!r})")
            elif isinstance(e, DataRow):
                parts.append(f"Row{e.values!r}")
            elif isinstance(e, ReadyForQuery):
                parts.append(f"Z{e.status}")
            elif isinstance(e, CommandComplete):
                parts.append(f"C({e.tag})")
            elif isinstance(e, ParameterStatus):
                parts.append(f"S({e.name}={e.value})")
            else:
                parts.append(type(e).__name__)
        return " ".join(parts)


@dataclass
class Session:
    """What one connection of a client knows."""

    cid: int
    conn: Connection
    number: int
    key: BackendKeyData | None = None
    params: dict[str, str] = field(default_factory=dict)  # from ParameterStatus
    prepared: dict[str, str] = field(default_factory=dict)  # our statement name -> text
    status: str = "I"
    closed: bool = False


class SimClient:
    """The driver and the protocol helpers; subclasses write ``main``."""

    def __init__(
        self, world: World, number: int, user: str, password: str, rng: random.Random
    ) -> None:
        self.world = world
        self.number = number
        self.name = f"c{number}"
        self.user = user
        self.password = password
        self.rng = rng
        self.session: Session | None = None
        self.sessions = 0
        self.events: deque[Event] = deque()
        self.waiting: Wait | None = None
        self.waiting_since = 0.0
        self._token = 0
        self._gen: Script | None = None
        self.done = False
        self.failed = False
        self.last_step = "not started"

    # --- the driver ------------------------------------------------------------------

    def start(self, at: float) -> None:
        self.world.sched.at(at, self._begin)

    def _begin(self) -> None:
        self._gen = self.main()
        self._drive(None)

    def main(self) -> Script:
        raise NotImplementedError
        yield  # pragma: no cover

    def _drive(self, value: Event | None) -> None:
        gen = self._gen
        assert gen is not None
        while True:
            try:
                request = gen.send(value)
            except StopIteration:
                self.done = True
                return
            except (SimFailure, ProtocolError) as exc:
                self.failed = self.done = True
                self.world.fail(f"client {self.name} during {self.last_step}: {exc}")
                return
            except Exception as exc:  # a bug in the script itself: say where
                self.failed = self.done = True
                trace = traceback.format_exc()
                self.world.fail(f"client {self.name} script crashed: {exc!r}\n{trace}")
                return
            self._token += 1
            if isinstance(request, Pause):
                self.world.sched.after(request.seconds, self._wake, self._token)
                return
            if self.events:
                value = self.events.popleft()
                continue
            self.waiting = request
            self.waiting_since = self.world.now
            self.world.sched.after(request.timeout, self._wake, self._token)
            return

    def _wake(self, token: int) -> None:
        if token == self._token and not self.done:
            self.waiting = None
            self._drive(None)

    def _receive(self, session: Session, data: bytes) -> None:
        if session is not self.session or session.closed:
            return
        conn = session.conn
        conn.receive_data(data)
        while True:
            try:
                event = conn.next_event()
            except ProtocolError as exc:
                self.world.fail(f"client {self.name}: the pooler broke the protocol: {exc}")
                session.closed = True
                event = ConnectionClosed()
            if event is NEED_DATA:
                break
            assert isinstance(event, Event)
            if self.world.verbose:
                self.world.log(f"{self.name}/{session.cid} got {brief(event)}")
            if isinstance(event, ParameterStatus):
                session.params[event.name] = event.value
            elif isinstance(event, ReadyForQuery):
                session.status = event.status
            elif isinstance(event, ConnectionClosed):
                session.closed = True
            self.events.append(event)
            if session.closed:
                break
        if self.waiting is not None and self.events:
            self.waiting = None
            self._token += 1
            self._drive(self.events.popleft())

    # --- connections ------------------------------------------------------------------

    def connect(self) -> Session:
        self.sessions += 1
        self.events.clear()
        holder: list[Session] = []
        cid = self.world.connect_client(self, lambda data: self._receive(holder[0], data))
        session = Session(cid, Connection(CLIENT), self.sessions)
        holder.append(session)
        self.session = session
        return session

    def close(self) -> None:
        """Close our socket (with or without a Terminate first: the caller decides)."""
        s = self.session
        if s is not None and not s.closed:
            s.closed = True
            self.world.client_close(s.cid)

    def send(self, *events: Event) -> None:
        s = self.session
        assert s is not None
        if s.closed or s.conn.state.name in ("CLOSED", "ERROR"):
            # The pooler already said goodbye (e.g. FATAL 57P01 mid-login during a
            # shutdown): a real client's write would fail the same way.
            raise Gone()
        data = b"".join(s.conn.send(e) for e in events)
        if self.world.verbose:
            self.world.log(f"{self.name}/{s.cid} sends {', '.join(brief(e) for e in events)}")
        self.world.client_send(s.cid, data)

    def login(self, database: str, **params: str) -> Script:
        """Log in; returns the Reply (AuthenticationOk ... ReadyForQuery) or raises Gone."""
        self.last_step = "login"
        sent = self.world.now
        self.send(StartupMessage({"user": self.user, "database": database, **params}))
        got: list[Event] = []
        scram: ScramClient | None = None
        while True:
            event = yield Wait(60.0)
            if event is None:
                raise SimFailure(f"login: no answer within 60 s; got {got}")
            got.append(event)
            if isinstance(event, AuthenticationMD5Password):
                self.send(PasswordMessage(md5_response(self.user, self.password, event.salt)))
            elif isinstance(event, AuthenticationCleartextPassword):
                self.send(PasswordMessage(self.password))
            elif isinstance(event, AuthenticationSASL):
                scram = ScramClient(self.password)
                self.send(SASLInitialResponse("SCRAM-SHA-256", scram.client_first()))
            elif isinstance(event, AuthenticationSASLContinue):
                assert scram is not None
                self.send(SASLResponse(scram.client_final(event.data)))
            elif isinstance(event, AuthenticationSASLFinal):
                assert scram is not None
                scram.verify_server_final(event.data)
            elif isinstance(event, BackendKeyData):
                assert self.session is not None
                self.session.key = event
            elif isinstance(event, (ReadyForQuery, ConnectionClosed)):
                break
            elif not isinstance(
                event, (AuthenticationOk, ParameterStatus, NoticeResponse, ErrorResponse)
            ):
                raise SimFailure(f"login: unexpected {event!r}")
        return Reply(got, sent, self.world.now)

    def replies(
        self, n: int = 1, timeout: float = 60.0, until: tuple[type[Event], ...] | None = None
    ) -> Script:
        """Collect events until ``n`` ReadyForQuery messages (or ``n`` events of the
        types in ``until``), or until the connection closes."""
        sent = self.world.now
        got: list[Event] = []
        ready = 0
        stop = until or (ReadyForQuery,)
        while ready < n:
            event = yield Wait(timeout)
            if event is None:
                raise SimFailure(
                    f"hang: no answer within {timeout} s of simulated time during "
                    f"{self.last_step}; got so far: {Reply(got, sent, sent).brief()}"
                )
            got.append(event)
            if isinstance(event, stop):
                ready += 1
            elif isinstance(event, ConnectionClosed):
                break
        return Reply(got, sent, self.world.now)

    def cancel(self) -> None:
        """Send a CancelRequest for our session over a new connection, as libpq does."""
        s = self.session
        if s is None or s.key is None:
            return
        key = s.key
        canceller = _Canceller(self.world, f"{self.name}-cancel")
        cid = self.world.connect_client(canceller, canceller.receive)  # type: ignore[arg-type]
        self.world.client_send(cid, bytes(CancelRequest(key.process_id, key.secret_key)))
        self.world.client_close(cid)


class _Canceller:
    """The throwaway connection that carries a CancelRequest; it expects no answer."""

    def __init__(self, world: World, name: str) -> None:
        self.world = world
        self.name = name

    def receive(self, data: bytes) -> None:
        if data:
            self.world.fail(f"{self.name}: the pooler answered a CancelRequest with {data!r}")
