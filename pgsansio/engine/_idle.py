"""PgBouncer's ``client_idle_timeout``: a logged-in client that has sent nothing for that
long, and has nothing running or waiting, is closed with ``FATAL: client_idle_timeout``
(08P01), PgBouncer's words.

The ``ClientIdle`` part. Idle means: no request queued on a server, none waiting for
one, and no bytes from the client since ``Client.active_at`` (set by the engine on each
read, one attribute store, so the relay's fast lane is untouched, and by the sweep
while it has a request running, so a long query's end starts its idle time). PgBouncer
checks in
its once-a-second janitor; so do we: one sweep timer, armed only while the timeout is
set and clients are connected, looks at every client (no timer per client).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import fatal
from ._states import ClientState

if TYPE_CHECKING:
    from ._context import Context

__all__ = ["ClientIdle"]

_PERIOD = 1.0  # seconds between sweeps at most (PgBouncer: its janitor), else timeout/4


class ClientIdle:
    """Owns the sweep timer; reads the clients, closes the idle ones."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._armed = False

    def arm(self) -> None:
        """A client logged in: make sure a sweep will look at it (if the timeout is set)."""
        timeout = self.ctx.config.general.client_idle_timeout
        if timeout and not self._armed:
            self._armed = True
            self.ctx.at(self.ctx.now + min(_PERIOD, timeout / 4000), self._sweep)

    def _sweep(self) -> None:
        self._armed = False
        timeout = self.ctx.config.general.client_idle_timeout / 1000
        if not timeout:
            return
        now = self.ctx.now
        idle = []
        for c in self.ctx.clients.values():
            if c.state is not ClientState.READY or c.admin:
                continue
            if c.pending or (c.server is not None and c.server.queue):
                c.active_at = now  # busy: idle time counts from the end of its request
            elif now - c.active_at >= timeout:
                idle.append(c)
        for c in idle:
            self.ctx.drop_client(c, fatal("08P01", "client_idle_timeout"))
        if self.ctx.clients:
            self.arm()
