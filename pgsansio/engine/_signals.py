"""What the operator's signals mean, and what a reload cannot change while running.

A frontend only catches a signal and hands its name to ``Engine.signal(name, now)``;
the meaning lives here, once for every runtime:

- **SIGHUP** re-reads the configuration file: the answer is the ``Reload()`` effect
  (the same the console's RELOAD emits), and the frontend, which owns the file system,
  answers with ``reload(config, now)`` or ``reload_failed(error, now)``.
- **SIGUSR1** pauses and **SIGUSR2** resumes every database (PgBouncer's PAUSE and
  RESUME).
- **SIGINT** shuts down without waiting for clients; **SIGTERM** refuses new clients
  and exits when the last one has left (PgBouncer 1.23's meaning).
- A **second SIGINT or SIGTERM** during a shutdown exits at once, closing every
  connection without flushing: ``Exit(128 + signum, at_once=True)``, the code a shell
  reports for a process killed by that signal. Only a shutdown a signal began counts
  (a console SHUTDOWN followed by SIGINT gets the SIGINT shutdown, as before).
- Any other name is ignored: a frontend may catch more signals than the engine knows.

:class:`Signals` works on any object with the engine's ``pause``/``resume``/``shutdown``
inputs, so a test's fake engine can run the real policy.

:func:`listen_changes` says which listening settings a reload changed: a running pooler
keeps its sockets (PgCat and PgBouncer need a restart too), and the operator is told.
"""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING, Protocol

from ._effects import Exit, Log, Reload

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pgsansio.config.model import General

    from ._effects import Effect

__all__ = ["Signals", "listen_changes"]


class _Inputs(Protocol):
    """The engine inputs a signal may turn into."""

    def pause(self, now: float) -> Iterable[Effect]: ...
    def resume(self, now: float) -> Iterable[Effect]: ...
    # ``reason`` has no default here: a Protocol's ``= ...`` is evaluated when the class
    # is built once compiled with mypyc (a TypeError at import), and every call below
    # passes it anyway.
    def shutdown(
        self, now: float, *, wait_for_clients: bool = False, reason: str
    ) -> Iterable[Effect]: ...


class Signals:
    """The signal policy, and the one piece of state it needs: a shutdown under way."""

    __slots__ = ("shutting_down",)

    def __init__(self) -> None:
        self.shutting_down = False

    def handle(self, engine: _Inputs, name: str, now: float) -> list[Effect]:
        """The effects of signal ``name`` ("SIGHUP", ...) on ``engine`` at ``now``."""
        if name == "SIGHUP":
            return [Reload()]
        if name == "SIGUSR1":
            return [Log(logging.INFO, "SIGUSR1: pausing; SIGUSR2 resumes"), *engine.pause(now)]
        if name == "SIGUSR2":
            return [Log(logging.INFO, "SIGUSR2: resuming"), *engine.resume(now)]
        if name not in ("SIGINT", "SIGTERM"):
            return []
        if self.shutting_down:
            return [
                Log(
                    logging.WARNING,
                    f"pgsansio stopped: {name} during shutdown, so at once: every connection "
                    "was closed",
                ),
                Exit(128 + signal.Signals[name].value, at_once=True),
            ]
        self.shutting_down = True
        if name == "SIGINT":
            return [
                Log(logging.INFO, "SIGINT: shutting down; send it again to exit at once"),
                *engine.shutdown(now, reason="SIGINT"),
            ]
        return [
            Log(
                logging.INFO,
                "SIGTERM: shutting down once every client has left; send it again to exit at once",
            ),
            *engine.shutdown(now, wait_for_clients=True, reason="SIGTERM"),
        ]


def listen_changes(old: General, new: General) -> list[str]:
    """A warning for each listening setting that differs between ``old`` and ``new``."""
    return [
        f"{what} changed, but the pooler keeps listening as before until it is "
        f"restarted (was {before}, now {after})"
        for what, before, after in (
            ("host/port", (old.host, old.port), (new.host, new.port)),
            (
                "the Prometheus exporter",
                (old.enable_prometheus_exporter, old.prometheus_exporter_port),
                (new.enable_prometheus_exporter, new.prometheus_exporter_port),
            ),
            ("listen_backlog", old.listen_backlog, new.listen_backlog),
            ("workers", old.workers, new.workers),
        )
        if before != after
    ]
