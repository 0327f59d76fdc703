"""What every part of the engine shares: the effects being built, time, timers.

The :class:`~._engine.Engine` owns one :class:`Context` and hands it to each part it
builds. A part appends effects to ``out``, reads ``now`` (set by the engine on every
input; no part reads a clock), arms timers with :meth:`Context.at` and draws
randomness from ``rng`` (seeded, so a run replays exactly). The tables of client and
server connections live here too: every part looks connections up by id, and the
engine's inputs are dispatched through them. Whoever creates or ends a connection
(:mod:`._login` and :mod:`._pooling` create, :mod:`._leaving` and
:mod:`._pooling` end) is the only writer of these tables.
"""

from __future__ import annotations

import heapq
import logging
import random
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ._effects import Log, SendClient, SendServer
from ._eventlog import LogBudget

if TYPE_CHECKING:
    from pgsansio.config.model import Config
    from pgsansio.protocol import ErrorResponse, Event

    from ._effects import Effect
    from ._objects import Client, ServerConn

__all__ = ["Context", "Lifecycle"]


class DropClient(Protocol):
    def __call__(
        self, c: Client, error: ErrorResponse | None = None, *, closed: bool = False
    ) -> None: ...


class ServerGone(Protocol):
    def __call__(self, s: ServerConn, error: ErrorResponse, *, closed: bool = False) -> None: ...


def _unwired(*args: object, **kw: object) -> None:
    raise RuntimeError("the engine has not wired this upcall yet")


class Lifecycle:
    """Where the pooler is in its life: what PAUSE, DISABLE and a shutdown set.

    :mod:`._control` changes it (and :mod:`._leaving` marks the end of the run);
    every part may read it. A part that turns new work away while a database is
    paused or the pooler is going down needs these flags, not the Control part.
    """

    __slots__ = (
        "disabled",
        "exited",
        "paused",
        "pausing",
        "shutting_down",
        "stop_reason",
        "wait_for_clients",
    )

    def __init__(self) -> None:
        self.shutting_down = False  # SIGINT/SIGTERM or SHUTDOWN: no new clients
        self.wait_for_clients = False  # ... and exit only once the last client has left
        self.stop_reason = ""  # why: the pooler's last log line says it
        self.exited = False  # Exit() has been emitted
        self.paused: set[str] = set()  # databases under PAUSE
        self.pausing = False  # any database paused (the hot path checks only this)
        self.disabled: set[str] = set()  # databases under DISABLE: no new clients


class Context:
    """The engine's shared state: see the module docstring."""

    __slots__ = (
        "_seq",
        "budget",
        "clients",
        "config",
        "drop_client",
        "life",
        "link",
        "maybe_exit",
        "next_sid",
        "now",
        "out",
        "rng",
        "server_gone",
        "servers",
        "timers",
    )

    def __init__(self, config: Config, seed: int | None) -> None:
        self.config = config
        self.rng = random.Random(seed)
        self.out: list[Effect] = []
        self.now = 0.0
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.clients: dict[int, Client] = {}
        self.servers: dict[int, ServerConn] = {}
        self.next_sid = 0
        self.life = Lifecycle()
        self.budget = LogBudget()
        # The upcalls: the four things a part may ask of the parts above it (see the
        # engine's package docstring). The Engine points each at its owner once.
        self.drop_client: DropClient = _unwired  # end a client's session (Leaving)
        self.server_gone: ServerGone = _unwired  # a server connection failed (Leaving)
        self.maybe_exit: Callable[[], None] = _unwired  # something closed (Control)
        # ``s`` is now ``c``'s: sync its settings, send what waits (Relay)
        self.link: Callable[[Client, ServerConn], None] = _unwired

    def at(self, when: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` at ``when`` (the engine's ``tick`` runs what is due)."""
        self._seq += 1
        heapq.heappush(self.timers, (when, self._seq, fn))

    def log(self, level: int, message: str) -> None:
        self.out.append(Log(level, message))

    def event(self, kind: str, level: int, message: str) -> None:
        """Log a line of a ``kind`` that can flood (logins, failures), within its budget
        (see :mod:`._eventlog`)."""
        if self.budget.admit(kind, self.now, self.log, self.at):
            self.log(level, message)

    def admits(self, kind: str) -> bool:
        """``event``'s budget alone, asked before the line is written: for the lines
        of every login and logout, which a login storm would format by the thousand
        only for the budget to count them."""
        return self.budget.admit(kind, self.now, self.log, self.at)

    def internal_error(self, where: str) -> None:
        detail = "".join(traceback.format_exc(limit=8))
        self.log(logging.ERROR, f"internal error on {where} (a pgsansio bug):\n{detail}")

    def send_server(self, s: ServerConn, data: bytes) -> None:
        if data:
            self.out.append(SendServer(s.sid, data))

    def send_client(self, c: Client, event: Event) -> None:
        self.out.append(SendClient(c.cid, c.conn.send(event)))

    @staticmethod
    def where(s: ServerConn) -> str:
        return f"{s.address.host}:{s.address.port}"
