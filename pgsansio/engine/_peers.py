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

from ._effects import OpenServer
from ._objects import P_FORWARD, ServerConn

if TYPE_CHECKING:
    from pgsansio.config.model import Config

    from ._context import Context

__all__ = ["Peers", "WorkerInfo", "share", "split_config"]


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


class Peers:
    """This engine's place among the workers: cancel keys, and forwarding the cancel
    requests that belong to another worker. Owns the forwards under way."""

    def __init__(self, ctx: Context, worker: WorkerInfo | None) -> None:
        self.ctx = ctx
        self.worker = worker
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

    def connected(self, s: ServerConn) -> bytes | None:
        """The request to send on forward ``s``, now connected (None: not a forward)."""
        return self._forwards.pop(s.sid, None)

    def gone(self, s: ServerConn) -> None:
        """Forward ``s`` failed or closed before it was sent: forget it."""
        self._forwards.pop(s.sid, None)
