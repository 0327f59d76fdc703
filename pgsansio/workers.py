"""Worker processes: ``general.workers = N`` runs the pooler as N processes on one port.

PgBouncer is one thread; its users run several PgBouncers on one port with
``so_reuseport`` and make cancel requests find their way with ``[peers]``. PgCat and
PgDog use threads, which Python's GIL would serialise. pgsansio does what those
PgBouncer fleets do, in one command: ``pgsansio run`` with ``workers = N`` (N > 1)
becomes a small **supervisor** that forks N workers, each a complete pooler (its own
engine, its own frontend, any runtime), all listening on the same address with
SO_REUSEPORT, so the kernel spreads new connections between them. With ``workers = 1``
(the default) nothing here runs: one process, as before. docs/workers.md is the
operator's page; the decisions:

* **fork, not a new interpreter.** A worker starts from the configuration the
  supervisor already loaded and checked, in a few milliseconds, and inherits the
  listening sockets the workers share. The supervisor has no event loop and no threads
  (a plain ``select`` on a signal pipe), so forking it is safe; each worker starts its
  runtime after the fork and leaves with ``os._exit``, so nothing of the supervisor's
  (its pidfile, its ``finally`` blocks) runs twice.
* **The supervisor only relays.** SIGHUP, SIGINT, SIGTERM, SIGUSR1 and SIGUSR2 go to
  every worker, which does with each what a lone pooler does (the engine decides:
  reload, shutdown, second signal = exit at once, pause, resume). The supervisor exits
  once every worker has, with the first non-zero exit status among them (a worker
  killed by a signal counts as 128 + its number, as a shell says), else 0. pidfile,
  logfile and syslog stay the supervisor's; workers write to the same log, each line
  starting ``worker K:``.
* **A worker that dies is restarted.** Its clients lose their connections at once (the
  kernel closes the sockets of a dead process: a client sees "server closed the
  connection unexpectedly", never a hang), and the kernel sends new connections to
  the other workers until the new one listens. A worker that dies again within
  :data:`STABLE_SECONDS` of its start waits twice as long as the last time before it is
  started again, from :data:`FIRST_DELAY` up to :data:`MAX_DELAY`, so a crash loop does
  not spin; each death and restart is logged with its reason. A worker that exits on
  its own with status 0 was shut down from the admin console (``SHUTDOWN``), which
  passed the command to every worker (see :mod:`pgsansio.engine._admin`): the
  supervisor restarts nobody and exits when the others have.
* **Start-up is all or nothing.** If a worker cannot start (the address is taken, a
  TLS file is missing), the supervisor stops the others and exits 1, as a lone pooler
  that cannot listen does; ``ready`` (tests, embedders) is called once every worker
  listens.
* **Port 0** (tests) is resolved once by the supervisor, which keeps the port bound
  (not listening, so it never receives a connection) so that every worker, restarted
  ones too, binds the same port.
* **Cancel requests** carry their worker in the key and are forwarded between workers
  over Unix sockets in a private directory the supervisor makes (mode 0700) and removes
  at exit; see :mod:`pgsansio.engine._peers` and :mod:`pgsansio.frontends._peers`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import select
import shutil
import signal
import socket
import tempfile
import time
import traceback
from typing import TYPE_CHECKING, Final

from pgsansio.engine import WorkerInfo
from pgsansio.frontends import EX_SOFTWARE, FrontendError, Ready, chosen, listen_failed
from pgsansio.frontends._driver import OPERATOR_SIGNALS, listen_unix
from pgsansio.frontends._peers import WorkerProcess, become_worker

if TYPE_CHECKING:
    from pgsansio.config.model import Config

__all__ = ["FIRST_DELAY", "MAX_DELAY", "STABLE_SECONDS", "supervise"]

log = logging.getLogger("pgsansio.workers")

FIRST_DELAY: Final = 0.5
"""Seconds before a worker that died is started again, the first time."""

MAX_DELAY: Final = 30.0
"""The longest wait before restarting a worker that keeps dying."""

STABLE_SECONDS: Final = 30.0
"""A worker that ran this long before dying is restarted after :data:`FIRST_DELAY`."""

EX_STARTUP: Final = 1
"""Exit status when a worker cannot start (as ``run`` exits when it cannot listen)."""


@dataclasses.dataclass
class _Worker:
    index: int
    pid: int = 0
    started: float = 0.0
    delay: float = 0.0  # the wait before the last restart
    restart_at: float | None = None
    ready: bool = False


class _Supervisor:
    """The supervisor's state: the workers, the signal pipe, the shared sockets."""

    def __init__(
        self, frontend: str, config: Config, config_path: str | None, ready: Ready | None
    ) -> None:
        self.frontend = frontend
        self.config = config
        self.config_path = config_path
        self.ready = ready
        self.count = config.general.workers
        self.workers = {i: _Worker(i) for i in range(1, self.count + 1)}
        self.by_pid: dict[int, _Worker] = {}
        self.directory = tempfile.mkdtemp(prefix="pgsansio-workers-")
        self.shared: list[socket.socket] = []  # the Unix listener every worker accepts on
        self.reserved: list[socket.socket] = []  # port 0 kept bound, see the module
        self.unix_path: str | None = None
        self.stopping = False
        self.all_ready = False
        self.code: int | None = None  # the first non-zero exit status, or 0
        self.pipe_r, self.pipe_w = os.pipe()  # worker readiness: one byte each
        self.sig_r, self.sig_w = socket.socketpair()

    # ------------------------------------------------------------------ the workers

    def spawn(self, w: _Worker) -> None:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; its coverage is its own process
            os._exit(self._child(w.index))
        w.pid, w.started, w.ready, w.restart_at = pid, time.monotonic(), False, None
        self.by_pid[pid] = w

    def _child(self, index: int) -> int:
        """Worker ``index``'s life, in the forked process; its exit status."""
        try:
            # Its own process group: Ctrl-C in a terminal signals the whole foreground
            # group, and a worker would take the supervisor's copy as a second SIGINT.
            os.setpgid(0, 0)
            _die_with_parent()
            # Until its runtime catches them: SIGINT and SIGTERM end a worker still
            # starting; a reload or pause means nothing yet (it reads the file anyway).
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
                signal.signal(signum, signal.SIG_IGN)
            signal.set_wakeup_fd(-1)
            self.sig_r.close()
            self.sig_w.close()
            os.close(self.pipe_r)
            for sock in self.reserved:
                sock.close()
            _tag_log_lines(index)
            info = WorkerInfo(index, self.count, self.directory)
            become_worker(WorkerProcess(info, list(self.shared)))
            from pgsansio.frontends import run  # noqa: PLC0415 - after the fork

            def listening(address: tuple[str, int]) -> None:
                os.write(self.pipe_w, bytes([index]))

            return run(self.frontend, self.config, config_path=self.config_path, ready=listening)
        except FrontendError as exc:
            log.error("cannot start: %s", exc)
            return EX_STARTUP
        except KeyboardInterrupt:
            # A second SIGINT as the runtime was closing (asyncio puts Python's own
            # handler back as it stops): it asked for an exit at once, which this is.
            return 128 + signal.SIGINT
        except BaseException:  # a worker must never return into the supervisor
            log.critical("stopped by an error, which is a bug in pgsansio:\n%s", _trace())
            return EX_SOFTWARE

    def reaped(self, pid: int, status: int) -> None:
        w = self.by_pid.pop(pid, None)
        if w is None:
            return
        code = os.waitstatus_to_exitcode(status)
        w.pid = 0
        if self.stopping:
            self._record(128 - code if code < 0 else code)
            return
        if not self.all_ready:
            # All or nothing at start: the worker has said why it could not start.
            log.error("worker %d could not start; stopping the other workers", w.index)
            self._record(code if code > 0 else EX_STARTUP)
            self.stop(signal.SIGTERM)  # no clients yet; kills one still starting up
            return
        if code == 0:
            # SHUTDOWN on the console: the worker told the others itself (a signal now
            # would be their second, which exits at once); wait for them.
            log.info(
                "worker %d was shut down from the admin console, which told the other "
                "workers; waiting for them to finish",
                w.index,
            )
            self._record(0)
            self.stopping = True
            for other in self.workers.values():
                other.restart_at = None
            return
        ran = time.monotonic() - w.started
        w.delay = (
            FIRST_DELAY if ran >= STABLE_SECONDS else min(MAX_DELAY, 2 * w.delay or FIRST_DELAY)
        )
        w.restart_at = time.monotonic() + w.delay
        if not w.ready:
            log.error(
                "worker %d (pid %d) could not start (%s); starting it again in %.1f s",
                w.index,
                pid,
                _how_it_ended(code),
                w.delay,
            )
            return
        log.error(
            "worker %d (pid %d) %s after %.0f s; its clients were disconnected, the other "
            "workers take the new connections; starting it again in %.1f s",
            w.index,
            pid,
            _how_it_ended(code),
            ran,
            w.delay,
        )

    def _record(self, code: int) -> None:
        if not self.code:
            self.code = code

    def stop(self, signum: int) -> None:
        """Stop restarting; pass ``signum`` on to every worker."""
        self.stopping = True
        for w in self.workers.values():
            w.restart_at = None
        self.relay(signum)

    def relay(self, signum: int) -> None:
        for pid in list(self.by_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    # ------------------------------------------------------------------- the loop

    def run(self) -> int:
        try:
            self._listen_shared()
        except BaseException:
            self._cleanup()  # the directory and anything bound: nothing is left behind
            raise
        previous = {s: signal.signal(s, _no_op) for s in (*OPERATOR_SIGNALS, signal.SIGCHLD)}
        self.sig_w.setblocking(False)
        old_fd = signal.set_wakeup_fd(self.sig_w.fileno(), warn_on_full_buffer=False)
        try:
            for w in self.workers.values():
                self.spawn(w)
            self._loop()
        finally:
            signal.set_wakeup_fd(old_fd)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._cleanup()
        return self.code or 0

    def _loop(self) -> None:
        readers = [self.sig_r.fileno(), self.pipe_r]
        while self.by_pid or (not self.stopping and self._restarts_due()):
            self._reap()
            now = time.monotonic()
            for w in self.workers.values():
                if w.restart_at is not None and w.restart_at <= now and not self.stopping:
                    log.info("starting worker %d again", w.index)
                    self.spawn(w)
            if not self.by_pid and (self.stopping or not self._restarts_due()):
                break
            due = [w.restart_at for w in self.workers.values() if w.restart_at is not None]
            timeout = max(0.0, min(due) - now) if due else None
            ready, _, _ = select.select(readers, [], [], timeout)
            if self.pipe_r in ready:
                self._readiness()
            if self.sig_r.fileno() in ready:
                for signum in self.sig_r.recv(256):
                    self._signal(signum)

    def _restarts_due(self) -> bool:
        return any(w.restart_at is not None for w in self.workers.values())

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.reaped(pid, status)

    def _readiness(self) -> None:
        data = os.read(self.pipe_r, 256)
        for index in data:
            self.workers[index].ready = True
        if not self.all_ready and all(w.ready for w in self.workers.values()):
            self.all_ready = True
            log.info(
                "%d worker processes listening on %s:%d (pids %s)",
                self.count,
                self.config.general.host,
                self.config.general.port,
                ", ".join(str(w.pid) for w in self.workers.values()),
            )
            if self.ready is not None:
                self.ready((self.config.general.host, self.config.general.port))

    def _signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            return  # reaped at the top of the loop
        if signum in (signal.SIGINT, signal.SIGTERM):
            if not self.stopping:
                log.info(
                    "%s: passing it on to the %d workers", signal.Signals(signum).name, self.count
                )
            self.stop(signum)
            return
        self.relay(signum)  # SIGHUP, SIGUSR1, SIGUSR2: each worker does what a lone one does

    # --------------------------------------------------------- shared sockets, files

    def _listen_shared(self) -> None:
        """Resolve port 0 once for every worker; make the Unix socket they share."""
        general = self.config.general
        if general.port == 0:
            general = dataclasses.replace(general, port=self._reserve(0))
            self.config = dataclasses.replace(self.config, general=general)
        bound = listen_unix(general, general.port)
        if bound is not None:
            sock, self.unix_path = bound
            self.shared.append(sock)

    def _reserve(self, port: int) -> int:
        host = next((h.strip() for h in self.config.general.host.split(",") if h.strip()), "")
        host = "" if host == "*" else host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise listen_failed(host or "*", port, exc) from None
        self.reserved.append(sock)
        bound_port: int = sock.getsockname()[1]
        return bound_port

    def _cleanup(self) -> None:
        for sock in (*self.shared, *self.reserved):
            sock.close()
        if self.unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.unix_path)
        for fd in (self.pipe_r, self.pipe_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.sig_r.close()
        self.sig_w.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def supervise(
    frontend: str, config: Config, *, config_path: str | None, ready: Ready | None = None
) -> int:
    """Run the pooler as ``config.general.workers`` processes; the exit status.

    Blocks until every worker has exited (see the module docstring). Must be called
    from the main thread of a process with no other threads (it forks).

    Raises:
        FrontendError: the shared address or Unix socket cannot be bound.
    """
    if not hasattr(socket, "SO_REUSEPORT"):  # pragma: no cover - Linux and the BSDs have it
        raise FrontendError("workers > 1 needs SO_REUSEPORT, which this system lacks")
    return _Supervisor(chosen(frontend), config, config_path, ready).run()


def _no_op(signum: int, frame: object) -> None:
    """A handler, so the signal is delivered (through the wakeup fd) and not fatal."""


def _die_with_parent() -> None:
    """Ask Linux to send this worker SIGTERM if the supervisor dies (killed with
    SIGKILL, say), rather than leave it serving on its own; elsewhere, nothing."""
    with contextlib.suppress(Exception):
        import ctypes  # noqa: PLC0415 - Linux only, and only in a worker

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def _how_it_ended(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    if code == EX_SOFTWARE:
        return "stopped on an internal error (its log says which)"
    return f"exited with status {code}"


def _trace() -> str:
    return traceback.format_exc().rstrip()


class _WorkerTag(logging.Filter):
    """Start each log line with ``worker K:``, so an operator knows which process."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.prefix = f"worker {index}: "

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_worker_tagged", False):
            record.msg = self.prefix + record.getMessage()
            record.args = None
            record._worker_tagged = True
        return True


def _tag_log_lines(index: int) -> None:
    tag = _WorkerTag(index)
    for handler in logging.getLogger().handlers:
        handler.addFilter(tag)
