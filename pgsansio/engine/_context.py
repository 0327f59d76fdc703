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
from typing import TYPE_CHECKING

from ._effects import Log, SendClient, SendServer

if TYPE_CHECKING:
    from pgsansio.config_model import Config
    from pgsansio.protocol import Event

    from ._effects import Effect
    from ._objects import Client, ServerConn

__all__ = ["Context"]


class Context:
    """The engine's shared state: see the module docstring."""

    __slots__ = ("_seq", "clients", "config", "next_sid", "now", "out", "rng", "servers", "timers")

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

    def at(self, when: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` at ``when`` (the engine's ``tick`` runs what is due)."""
        self._seq += 1
        heapq.heappush(self.timers, (when, self._seq, fn))

    def log(self, level: int, message: str) -> None:
        self.out.append(Log(level, message))

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
