"""Where a running pooler's process leaves traces: PgBouncer's logfile, pidfile, syslog.

Used by the ``run`` command only: the engine does no I/O, and the frontends serve
sockets. Decisions, compared with PgBouncer:

* ``logfile``: records go to the file *and* to stderr, as PgBouncer does when it is not
  daemonized (pgsansio never daemonizes). The file is opened for appending, so nothing
  of an earlier run is lost, and with the same format as stderr (``--log-format``).
  PgBouncer reopens its log on SIGHUP so that logrotate can move it; here the file is
  reopened as soon as it has been moved or deleted (``WatchedFileHandler`` compares the
  file's inode before each record), which serves logrotate's default ``create`` mode
  without a signal, and ``copytruncate`` works as it does with any appending writer.
* ``pidfile``: written at start, removed at exit. As in PgBouncer, a file that names a
  running process stops the start (two poolers on one pidfile is a mistake to report),
  and a file left behind by a dead process is replaced. The file is removed only if it
  still holds our pid, so a second pooler that took the file over keeps it.
* ``syslog``: records also go to the local syslog daemon through ``/dev/log``, tagged
  ``<syslog_ident>[<pid>]:`` with ``syslog_facility``, the level mapped to syslog's
  priority, and no timestamp (syslog adds its own). Where ``/dev/log`` does not exist
  (a container without a syslog daemon) PgBouncer's messages are silently lost; here
  a warning says so at start and logging goes on to stderr and the logfile.
* All are read at start; a RELOAD that changes them takes effect at the next start.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
from collections.abc import Iterator

from pgsansio.config.model import General
from pgsansio.logconfig import JsonFormatter, TextFormatter

__all__ = ["ProcFileError", "process_files"]


class ProcFileError(Exception):
    """A logfile or pidfile that cannot be used; the message names the file and why."""


@contextlib.contextmanager
def process_files(
    general: General, log_format: str = "text", *, syslog_address: str = "/dev/log"
) -> Iterator[None]:
    """Log to ``general.logfile`` (and syslog) and hold ``general.pidfile`` meanwhile.

    ``syslog_address`` is the syslog daemon's datagram socket (another path in tests).

    Raises:
        ProcFileError: the log file cannot be opened, or the pidfile cannot be written
            or names a running process.
    """
    with (
        _logfile(general.logfile, log_format),
        _syslog(general, syslog_address),
        _pidfile(general.pidfile),
    ):
        yield


@contextlib.contextmanager
def _handler(handler: logging.Handler) -> Iterator[None]:
    """``handler`` on the root logger for the ``with`` body, then closed."""
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def _logfile(path: str, log_format: str) -> Iterator[None]:
    if not path:
        yield
        return
    try:
        handler = logging.handlers.WatchedFileHandler(path, mode="a", encoding="utf-8")
    except OSError as e:
        raise ProcFileError(f"cannot open logfile {path!r}: {e.strerror or e}") from None
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    with _handler(handler):
        yield


@contextlib.contextmanager
def _syslog(general: General, address: str) -> Iterator[None]:
    if not general.syslog:
        yield
        return
    if not os.path.exists(address):
        logging.getLogger("pgsansio").warning(
            "syslog is on, but %s does not exist (no syslog daemon on this machine?): "
            "logging to stderr%s only",
            address,
            " and the logfile" if general.logfile else "",
        )
        yield
        return
    facility = logging.handlers.SysLogHandler.facility_names[general.syslog_facility]
    try:
        handler = logging.handlers.SysLogHandler(address, facility)
    except OSError as e:
        raise ProcFileError(f"cannot reach syslog at {address!r}: {e.strerror or e}") from None
    handler.ident = f"{general.syslog_ident}[{os.getpid()}]: "
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    with _handler(handler):
        yield


def _running_pid(path: str) -> int | None:
    """The pid in an existing pidfile if that process is alive (not us), else None."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            pid = int(f.read().strip() or "0")
    except (OSError, ValueError):
        return None  # missing, unreadable or not a pid: treated as stale
    if pid <= 0 or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, owned by another user
    return pid


@contextlib.contextmanager
def _pidfile(path: str) -> Iterator[None]:
    if not path:
        yield
        return
    other = _running_pid(path)
    if other is not None:
        raise ProcFileError(
            f"pidfile {path!r} names process {other}, which is running: is another "
            "pooler using this pidfile? Stop it, or remove the file if that process is "
            "not a pooler"
        )
    mine = f"{os.getpid()}\n"
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write(mine)
    except OSError as e:
        raise ProcFileError(f"cannot write pidfile {path!r}: {e.strerror or e}") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            with open(path, encoding="ascii") as f:
                still_ours = f.read() == mine
            if still_ours:
                os.unlink(path)
