"""What every frontend does the same way and that needs no runtime: no sockets, no tasks.

* :func:`feed` is the one place a frontend calls the engine: it stamps the input with
  ``time.monotonic()`` (the clock every frontend reads, whatever its runtime's own clock
  is: trio's, for one, starts at a random offset) and turns an exception inside the
  engine into ``None`` after logging it, so the frontend can stop with
  :data:`EX_SOFTWARE`.
* :class:`Control` is the operator's side: what each signal means (one table for every
  frontend), re-reading the configuration file, and the TLS contexts built from it.
* :class:`Outbox` is the write buffer of a frontend whose runtime offers only "send
  this and wait until it is gone" (anyio, curio) rather than asyncio's transports,
  which buffer and report ``pause_writing``. It buffers what the engine sends while an
  earlier send is still in progress, and says when the amount crosses the same high
  and low water marks asyncio uses, which is when the frontend tells the engine the
  peer is (not) writable. So backpressure starts at the same point in every frontend.
"""

from __future__ import annotations

import functools
import logging
import signal
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from pgsansio.frontends import FrontendError
from pgsansio.frontends._tls import tls_contexts

if TYPE_CHECKING:
    from pgsansio.config_model import Config
    from pgsansio.engine import Effect
    from pgsansio.frontends import EngineAPI

__all__ = [
    "DRAIN_SECONDS",
    "HIGH_WATER",
    "LOW_WATER",
    "OPERATOR_SIGNALS",
    "Control",
    "EngineInput",
    "Outbox",
    "error_text",
    "feed",
]

log = logging.getLogger("pgsansio.frontend")

DRAIN_SECONDS: Final = 2.0
"""How long an exit waits for the last bytes to reach clients and servers."""

HIGH_WATER: Final = 64 * 1024
"""Bytes waiting to be sent to one peer at which it counts as not writable (asyncio's)."""

LOW_WATER: Final = HIGH_WATER // 4
"""Bytes waiting at or below which a peer that was not writable is writable again."""

OPERATOR_SIGNALS: Final = (
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
"""The signals a frontend handles, all through :meth:`Control.on_signal`."""

EngineInput = Callable[[float], Iterable["Effect"]]
"""An engine input with every argument bound except ``now``."""


def feed(method: Callable[..., Iterable[Effect]], *args: Any) -> Iterable[Effect] | None:
    """Call one engine input with the time; ``None`` (logged) when the engine raised.

    An exception inside the engine is a bug: its state is unknown afterwards, so the
    caller stops the pooler (exit code :data:`EX_SOFTWARE`) rather than go on with one
    that may hand one client's server to another.
    """
    try:
        return method(*args, time.monotonic())
    except Exception:
        log.critical(
            "the engine raised an exception, which is a bug in pgsansio; exiting",
            exc_info=True,
        )
        return None


def error_text(exc: BaseException) -> str:
    """The reason a connection attempt failed, for ``server_failed`` and the client.

    anyio reports a refused connection as "All connection attempts failed" with the
    real errors in its cause; the first of those says what happened, as asyncio does.
    """
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        return error_text(cause.exceptions[0])
    return str(exc) or type(exc).__name__


class Control:
    """The operator's side of a frontend: signals and reloading the configuration.

    It decides nothing about pooling; it maps a signal to the engine input the
    frontend feeds (or to an exit code), and keeps the running configuration.
    """

    def __init__(self, engine: EngineAPI, config: Config, config_path: str | None) -> None:
        """Raises :class:`FrontendError` if a TLS file does not load."""
        self.engine = engine
        self.config = config
        self.config_path = config_path
        self.shutting_down = False
        self.tls = tls_contexts(config.general)

    def on_signal(self, signum: int) -> EngineInput | int | None:
        """What ``signum`` asks for: an engine input, an exit code (now), or nothing.

        SIGHUP reloads; SIGUSR1 pauses and SIGUSR2 resumes (PgBouncer's PAUSE and
        RESUME); SIGINT shuts down without waiting for clients, SIGTERM waits for them
        (PgBouncer 1.23); a second SIGINT or SIGTERM during a shutdown exits at once
        with ``128 + signum``, as a shell reports a process killed by that signal.
        """
        engine = self.engine
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            return self.reload()
        if signum == signal.SIGUSR1:
            log.info("SIGUSR1: pausing; SIGUSR2 resumes")
            return engine.pause
        if signum == signal.SIGUSR2:
            log.info("SIGUSR2: resuming")
            return engine.resume
        if signum not in (signal.SIGINT, signal.SIGTERM):
            return None
        if self.shutting_down:
            log.warning("%s during shutdown: exiting now, closing every connection", name)
            return 128 + signum
        self.shutting_down = True
        if signum == signal.SIGINT:
            log.info("SIGINT: shutting down; send it again to exit at once")
            return engine.shutdown
        log.info(
            "SIGTERM: shutting down once every client has left; send it again to exit at once"
        )
        return functools.partial(engine.shutdown, wait_for_clients=True)

    def reload(self, *, asked_by_engine: bool = False) -> EngineInput | None:
        """Re-read the configuration file; the engine input that hands it over, if any.

        A file that does not load is logged and the running configuration stays, so a
        typo in an edit never takes a running pooler down. When the admin console asked
        (the engine's ``Reload`` effect), a failure is handed to the engine too
        (``reload_failed``), so the console can answer with it. Listening addresses
        change only with a restart (as in PgCat and PgBouncer), and the log says so.
        """
        path = self.config_path
        if path is None:
            log.warning("reload asked for, but the pooler was not started from a file")
            return self._failed(
                "the pooler was not started from a configuration file", asked_by_engine
            )
        from pgsansio.config import ConfigError, load_config  # noqa: PLC0415 - lazy

        log.info("reloading the configuration from %s", path)
        try:
            new = load_config(path)
        except ConfigError as exc:
            log.error("reload failed; the running configuration stays in force:\n%s", exc)
            return self._failed(str(exc), asked_by_engine)
        try:
            tls = tls_contexts(new.general)
        except FrontendError as exc:
            log.error("reload failed; the running configuration stays in force:\n%s", exc)
            return self._failed(str(exc), asked_by_engine)
        for warning in new.warnings:
            log.warning("%s", warning)
        old = self.config.general
        for what, before, after in (
            ("host/port", (old.host, old.port), (new.general.host, new.general.port)),
            (
                "the Prometheus exporter",
                (old.enable_prometheus_exporter, old.prometheus_exporter_port),
                (new.general.enable_prometheus_exporter, new.general.prometheus_exporter_port),
            ),
        ):
            if before != after:
                log.warning(
                    "%s changed, but the pooler keeps listening as before until it is "
                    "restarted (was %s, now %s)",
                    what,
                    before,
                    after,
                )
        self.config = new
        self.tls = tls
        return functools.partial(self.engine.reload, new)

    def _failed(self, error: str, asked_by_engine: bool) -> EngineInput | None:
        return functools.partial(self.engine.reload_failed, error) if asked_by_engine else None


class Outbox:
    """Bytes the engine sent to one peer that the runtime has not taken yet.

    ``put`` and ``sent`` return ``True`` exactly when writability changes; the frontend
    then feeds ``client_writable``/``server_writable``.
    """

    __slots__ = ("_buf", "blocked", "pending")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.pending = 0
        """Bytes put and not yet reported sent (the buffer and the send in progress)."""
        self.blocked = False

    def put(self, data: bytes) -> bool:
        self._buf += data
        self.pending += len(data)
        if not self.blocked and self.pending > HIGH_WATER:
            self.blocked = True
            return True
        return False

    def take(self) -> bytes:
        """Everything buffered, as one piece to send."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def sent(self, n: int) -> bool:
        self.pending -= n
        if self.blocked and self.pending <= LOW_WATER:
            self.blocked = False
            return True
        return False

    def __bool__(self) -> bool:
        return bool(self._buf)
