"""A frontend inside one of the worker processes (``general.workers`` > 1).

The supervisor (:mod:`pgsansio.workers`) forks each worker and, before the runtime
starts, calls :func:`become_worker` with the worker's :class:`WorkerProcess`. A
process runs one frontend, so this is a per-process setting read once where the
frontend is built (the driver: ``Driver.worker``; :func:`pgsansio.frontends.real_engine`:
the engine's :class:`~pgsansio.engine.WorkerInfo`), rather than an argument threaded
through every runtime's ``run``. What differs in a worker, all of it here or in the
driver:

* TCP listeners set SO_REUSEPORT (``Driver.reuse_port``): each worker binds the same
  address, and the kernel spreads new connections between them;
* PgBouncer's Unix socket (``unix_socket_dir``) is the supervisor's, made once and
  inherited: Unix sockets have no SO_REUSEPORT, so the workers accept on the one socket;
* each worker also listens on its own Unix socket, ``<directory>/.s.PGSQL.<index>``
  (the directory is the supervisor's, mode 0700), where the others forward the cancel
  requests that belong to it (see :mod:`pgsansio.engine._peers`). A forward is an
  ordinary client connection that sends a CancelRequest, so nothing else is needed
  to receive one; the engine sends one with the ordinary ``OpenServer``.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass, field

from pgsansio.engine import WorkerInfo
from pgsansio.frontends import FrontendError

__all__ = ["WorkerProcess", "become_worker", "current_worker"]


@dataclass
class WorkerProcess:
    """What a worker process knows of its place (set by the supervisor at fork)."""

    info: WorkerInfo
    inherited: list[socket.socket] = field(default_factory=list)
    """Listening sockets made by the supervisor and shared by every worker."""

    @property
    def peer_path(self) -> str:
        """This worker's own Unix socket, where the others forward its cancels."""
        return os.path.join(self.info.directory, f".s.PGSQL.{self.info.index}")

    def peer_listener(self, backlog: int) -> tuple[socket.socket, str]:
        """This worker's own Unix socket, bound and listening (non-blocking), and its
        path. A file left by the worker this one replaces is removed first.

        Raises:
            FrontendError: the socket cannot be made (the message names the path).
        """
        path = self.peer_path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            why = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise FrontendError(
                f"cannot listen on {path}, the socket other workers forward cancel "
                f"requests to: {why}"
            ) from None
        sock.setblocking(False)
        return sock, path


_current: WorkerProcess | None = None


def become_worker(process: WorkerProcess) -> None:
    """Make this process worker ``process`` (the supervisor calls it after fork)."""
    global _current  # one setting per process (see the module docstring)
    _current = process


def current_worker() -> WorkerProcess | None:
    """This process's place among the workers; None when the pooler is one process."""
    return _current
