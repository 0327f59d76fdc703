"""Worker processes, as one engine sees them: its share of the limits, its cancel keys,
and the cancel requests it forwards to the worker they belong to.

With ``general.workers = N`` (N > 1) the pooler is N processes, each running its own
engine and listening on the same port (SO_REUSEPORT: the kernel spreads new
connections between them); see :mod:`pgsansio.workers` and docs/workers.md. An engine
knows its place through :class:`WorkerInfo` (its number, 1..N, and the directory of
the workers' Unix sockets) and nothing else about the others. Decisions:

* **Limits are split, as PgBouncer's threaded mode splits them per thread.** Each
  worker gets its share of every user's ``pool_size``, ``min_pool_size`` and
  ``max_user_connections``, of each pool's ``reserve_pool_size`` and
  ``max_db_connections``, and of ``max_client_conn`` (:func:`split_config`), so the
  servers the whole pooler opens stay within what the file says: a worker cannot
  borrow another's idle server, and a shared counter would put a round trip between
  processes on every checkout. Shares differ by at most one (the first workers get
  the remainder). A share is never 0 where the total is not: a worker with no server
  at all would make its clients wait forever, so with ``pool_size`` below N each
  worker keeps one and the total is N (said in docs/workers.md). A limit of 0 (no
  limit) stays 0.
* **The worker is in the cancel key's secret, in its low bits** (:meth:`Peers.secret`).
  Not in the process ID: in session mode that is the server's real one (so
  ``pg_backend_pid()`` agrees with the client). The secret stays 4 bytes (protocol
  3.0's clients expect that) and loses only the bits N needs: 1 with two workers, 6
  at most (:data:`~pgsansio.config.model.MAX_WORKERS` = 64), so 26 to 31 random bits
  remain beside the 31 of the process ID in transaction mode. PgBouncer's peering
  spends 14 bits of its 8-byte key on ``peer_id`` the same way.
* **The admin console and /metrics speak for the whole pooler, one row (one series)
  per worker.** A console connection or a scrape lands on one worker, which asks the
  others (:meth:`Peers.ask`) over the same Unix sockets: it logs in to each one's
  console as PgBouncer's ``pgbouncer`` user over a Unix socket of our own OS user (so
  no password), with ``application_name`` :data:`PEER_APPLICATION`, runs the same
  command, and the answers are merged above (see ._admin and ._metrics). A worker that
  does not answer within :data:`ASK_SECONDS` (being restarted) is left out and named
  in the log. A console session marked as a peer's is answered by its own worker
  alone, so a question never travels further.
* **A CancelRequest for another worker is forwarded to it**, as PgBouncer forwards a
  foreign key to its ``[peers]``: over a connection to that worker's Unix socket
  (``<directory>/.s.PGSQL.<worker>``), opened with the ordinary ``OpenServer`` effect
  (a host that is a directory means a Unix socket, as in libpq), carrying the same 16
  bytes. The worker that owns the key cancels as it would a request of its own. A key
  that names this worker is never forwarded (so a request cannot go round in
  circles), and one naming a worker that does not exist is dropped, as PostgreSQL
  drops a key it does not know. A forward that cannot connect (the worker is being
  restarted: its clients are gone anyway) is dropped silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from pgsansio.config.model import ServerAddress
from pgsansio.protocol import (
    NEED_DATA,
    PAUSED,
    Authentication,
    AuthenticationOk,
    DataRow,
    ErrorResponse,
    ProtocolError,
    Query,
    ReadyForQuery,
    RowDescription,
    StartupMessage,
    Terminate,
)

from ._effects import OpenServer
from ._objects import P_FORWARD, P_PEER, ServerConn

if TYPE_CHECKING:
    from collections.abc import Callable

    from pgsansio.config.model import Config

    from ._context import Context
    from ._pooling import Pools

__all__ = [
    "ASK_SECONDS",
    "PEER_APPLICATION",
    "Answer",
    "Peers",
    "WorkerInfo",
    "share",
    "split_config",
]

PEER_APPLICATION = "pgsansio worker"
"""The ``application_name`` a worker logs in to another's console with."""

ASK_SECONDS = 5.0
"""How long a question to the other workers waits for their answers."""


@dataclass(frozen=True)
class WorkerInfo:
    """Which worker an engine is: ``index`` 1..``count``; ``directory`` holds the
    workers' Unix sockets (``.s.PGSQL.<index>``), which forwarded cancels reach."""

    index: int
    count: int
    directory: str


def share(total: int, index: int, count: int) -> int:
    """Worker ``index``'s (1-based) part of a limit of ``total`` split ``count`` ways.

    The parts add up to ``total`` and differ by at most one; 0 (no limit) stays 0, and
    a part is at least 1 where the total is not 0 (see the module docstring).
    """
    if total <= 0:
        return total
    part = total // count + (1 if index <= total % count else 0)
    return max(part, 1)


def split_config(config: Config, worker: WorkerInfo) -> Config:
    """``config`` with every limit cut to worker ``worker``'s share (module docstring)."""
    i, n = worker.index, worker.count
    if n <= 1:
        return config
    pools = {}
    for name, pool in config.pools.items():
        users = {
            key: replace(
                u,
                pool_size=share(u.pool_size, i, n),
                min_pool_size=min(share(u.min_pool_size, i, n), share(u.pool_size, i, n)),
                max_user_connections=share(u.max_user_connections, i, n),
            )
            for key, u in pool.users.items()
        }
        pools[name] = replace(
            pool,
            users=users,
            reserve_pool_size=share(pool.reserve_pool_size, i, n),
            max_db_connections=share(pool.max_db_connections, i, n),
        )
    general = replace(config.general, max_client_conn=share(config.general.max_client_conn, i, n))
    return replace(config, general=general, pools=pools)


class Answer:
    """One worker's answer to a console command: its columns (name, type OID) and
    rows as text, or why there is none (``error``)."""

    __slots__ = ("columns", "error", "rows")

    def __init__(self) -> None:
        self.columns: list[tuple[str, int]] = []
        self.rows: list[tuple[str | None, ...]] = []
        self.error: str | None = None


class _Question:
    """A console command put to every other worker, and the answers so far."""

    __slots__ = ("answers", "done", "expected", "sql")

    def __init__(self, sql: str, expected: int, done: Callable[[dict[int, Answer]], None]) -> None:
        self.sql = sql
        self.expected = expected
        self.done = done
        self.answers: dict[int, Answer] = {}


class _Talk:
    """One console session with another worker, for one question."""

    __slots__ = ("answer", "asked", "question", "worker")

    def __init__(self, question: _Question, worker: int) -> None:
        self.question = question
        self.worker = worker
        self.answer = Answer()
        self.asked = False


class Peers:
    """This engine's place among the workers: cancel keys, forwarding the cancel
    requests that belong to another worker, and questions to the other workers'
    consoles. Owns the forwards and the console sessions under way."""

    def __init__(self, ctx: Context, worker: WorkerInfo | None, *, pools: Pools) -> None:
        self.ctx = ctx
        self.pools = pools
        self.worker = worker
        self._talks: dict[int, _Talk] = {}  # sid -> the console session on it
        bits = (worker.count - 1).bit_length() if worker is not None else 0
        self._mask = (1 << bits) - 1
        self._forwards: dict[int, bytes] = {}  # sid -> the CancelRequest to pass on

    def secret(self) -> bytes:
        """A new client's 4-byte cancel secret: random, with this worker in its low bits."""
        raw = self.ctx.rng.randbytes(4)
        worker = self.worker
        if worker is None or worker.count <= 1:
            return raw
        value = (int.from_bytes(raw, "big") & ~self._mask) | (worker.index - 1)
        return value.to_bytes(4, "big")

    def forward(self, secret: bytes, request: bytes) -> bool:
        """Whether a CancelRequest with ``secret`` belongs to another worker; if so it
        is on its way there (``request``: its bytes, as the client sent them)."""
        worker = self.worker
        if worker is None or worker.count <= 1 or len(secret) < 4:
            return False
        owner = (int.from_bytes(secret[-4:], "big") & self._mask) + 1
        if owner == worker.index:
            return False
        if owner > worker.count:
            return True  # no such worker: dropped, as an unknown key is
        ctx = self.ctx
        ctx.next_sid += 1
        address = ServerAddress(worker.directory, owner, "primary")
        s = ServerConn(ctx.next_sid, None, address, ctx.now, purpose=P_FORWARD)
        ctx.servers[s.sid] = s
        self._forwards[s.sid] = request
        ctx.out.append(OpenServer(s.sid, worker.directory, owner))
        ctx.log(logging.INFO, f"cancel request for worker {owner}: forwarded to it")
        return True

    @property
    def others(self) -> list[int]:
        """The other workers' numbers (none when the pooler is one process)."""
        worker = self.worker
        if worker is None:
            return []
        return [k for k in range(1, worker.count + 1) if k != worker.index]

    def ask(self, sql: str, done: Callable[[dict[int, Answer]], None]) -> None:
        """Run console command ``sql`` on every other worker; ``done`` gets the answers
        by worker number once all are in or :data:`ASK_SECONDS` have passed (a missing
        worker's answer then has ``error`` set)."""
        others = self.others
        question = _Question(sql, len(others), done)
        worker = self.worker
        if worker is None or not others:
            done(question.answers)
            return
        ctx = self.ctx
        for k in others:
            ctx.next_sid += 1
            address = ServerAddress(worker.directory, k, "primary")
            s = ServerConn(ctx.next_sid, None, address, ctx.now, purpose=P_PEER)
            ctx.servers[s.sid] = s
            self._talks[s.sid] = _Talk(question, k)
            ctx.out.append(OpenServer(s.sid, worker.directory, k))
        ctx.at(ctx.now + ASK_SECONDS, lambda: self._expire(question))

    def connected(self, s: ServerConn) -> None:
        """Forward or console session ``s`` is connected: send what it is for."""
        request = self._forwards.pop(s.sid, None)
        if request is not None:
            self.ctx.send_server(s, request)
            self.pools.close_server(s)
            return
        if s.sid in self._talks:
            startup = StartupMessage(
                {
                    "user": "pgbouncer",
                    "database": "pgbouncer",
                    "application_name": PEER_APPLICATION,
                }
            )
            self.ctx.send_server(s, s.conn.send(startup))

    def read(self, s: ServerConn) -> None:
        """What another worker's console answered on ``s``."""
        talk = self._talks.get(s.sid)
        if talk is None:
            return
        answer = talk.answer
        try:
            while True:
                event = s.conn.next_event()
                if event is NEED_DATA or event is PAUSED:
                    return
                if isinstance(event, ReadyForQuery):
                    if talk.asked:
                        self._finish(s, None)
                        return
                    talk.asked = True
                    self.ctx.send_server(s, s.conn.send(Query(talk.question.sql)))
                elif isinstance(event, RowDescription):
                    answer.columns = [(f.name, f.type_oid) for f in event.fields]
                elif isinstance(event, DataRow):
                    answer.rows.append(
                        tuple(None if v is None else bytes(v).decode() for v in event.values)
                    )
                elif isinstance(event, ErrorResponse):
                    answer.error = event.message or "error"
                    if not talk.asked:  # refused at login: no ReadyForQuery will come
                        self._finish(s, answer.error)
                        return
                elif isinstance(event, Authentication) and not isinstance(event, AuthenticationOk):
                    self._finish(s, "it asks for a password (is admin_users set up?)")
                    return
        except ProtocolError as exc:
            self._finish(s, f"it answered with something that is not PostgreSQL's: {exc}")

    def gone(self, s: ServerConn, error: str) -> bool:
        """``s``, a forward or a console session, failed or closed; whether it was one
        of ours (a forward is then dropped, a question answered with ``error``)."""
        if self._forwards.pop(s.sid, None) is not None:
            self.pools.close_server(s, send=False)
            self.ctx.log(
                logging.INFO, f"a cancel request for worker {s.address.port} was dropped: {error}"
            )
            return True
        if s.sid in self._talks:
            self._finish(s, error, send=False)
            return True
        return False

    def _finish(self, s: ServerConn, error: str | None, *, send: bool = True) -> None:
        talk = self._talks.pop(s.sid, None)
        if send:
            self.ctx.send_server(s, s.conn.send(Terminate()) if error is None else b"")
        self.pools.close_server(s, send=send)
        if talk is None:
            return
        if error is not None:
            talk.answer.error = error
        question = talk.question
        question.answers[talk.worker] = talk.answer
        if len(question.answers) == question.expected:
            self._answered(question)

    def _expire(self, question: _Question) -> None:
        if len(question.answers) >= question.expected:
            return
        for sid, talk in list(self._talks.items()):
            if talk.question is question:
                s = self.ctx.servers.get(sid)
                if s is not None:
                    self._finish(s, f"no answer within {ASK_SECONDS:g} s", send=True)
                else:
                    del self._talks[sid]
        for k in self.others:
            if k not in question.answers:
                missing = question.answers[k] = Answer()
                missing.error = f"no answer within {ASK_SECONDS:g} s"
        self._answered(question)

    def _answered(self, question: _Question) -> None:
        if question.expected < 0:
            return  # already answered (the deadline came first)
        question.expected = -1
        for k, answer in sorted(question.answers.items()):
            if answer.error is not None:
                self.ctx.log(
                    logging.WARNING,
                    f"worker {k} could not run {question.sql!r} for the console of "
                    f"worker {self.worker.index if self.worker else 1}: {answer.error}",
                )
        question.done(question.answers)
