"""Frontends: the runtimes that carry out what :class:`pgsansio.engine.Engine` decides.

A frontend owns exactly what the engine cannot: sockets, tasks, the one timer, signals.
It feeds every event to the engine with the current ``time.monotonic()`` and carries out
the effects it gets back, in order. It never parses a message, never imports ``struct``
or :mod:`pgsansio.protocol`, and never makes a decision the engine could make (a test
enforces the imports). So every frontend behaves the same, and a difference between two
of them is a bug in one of them.

This module holds what all frontends share and that is not pooling logic: the engine's
interface as a frontend sees it (:class:`EngineAPI`, so tests can drive a frontend with
a fake engine), socket tuning from the ``[general]`` section, and :func:`run`, which
picks a frontend by name and imports it lazily (as hypercorn's ``run.py`` picks its
worker), so a missing optional runtime only matters when it is asked for.
:mod:`._driver` is what runs inside every frontend alike (the id tables, applying a
batch of effects, the timer, signals, reload, shutdown); each runtime package is a
small adapter on it (connections, listening, connecting, TLS, one timer). anyio on
trio and curio, whose connections are tasks (a reader, and a writer while bytes wait),
share those loops in :mod:`._tasks` and keep only the runtime calls.

The frontends: ``asyncio`` (the standard library's loop), ``uvloop`` (the same code on
uvloop's faster loop), ``anyio`` (anyio on asyncio), ``trio`` (the same anyio code on
trio) and ``curio``. ``auto`` is uvloop when it is installed, else asyncio.

Choices a frontend makes the same way everywhere:

* exit codes: what the engine's ``Exit(code)`` says (``Exit(128 + signum,
  at_once=True)`` when a second SIGINT/SIGTERM cuts a shutdown short: nothing more is
  flushed); :data:`EX_SOFTWARE` when the engine raised, which is a bug: its state
  is unknown afterwards, so the frontend logs the traceback and stops rather than limp
  on with a pooler that may hand one client's server to another;
* signals: SIGHUP, SIGINT, SIGTERM, SIGUSR1 and SIGUSR2 are caught and handed to
  ``engine.signal(name, now)``, which decides what each means (see
  :mod:`pgsansio.engine._signals`); on its ``Reload`` the frontend re-reads the file the
  pooler was started with (a file that does not load is logged, handed to
  ``reload_failed``, and the running configuration stays);
* listening: with ``general.listen_backlog`` (PgBouncer's key; the kernel caps it at
  ``net.core.somaxconn``) as the queue of connections not accepted yet, which a
  connect storm fills (a dropped SYN costs the client a 1 s retransmission);
  ``general.host``:``general.port`` for clients, and, when
  ``enable_prometheus_exporter`` is set, ``general.host``:``prometheus_exporter_port``
  for scrapers, whose connections the engine learns of through ``metrics_connected``
  and then handles like any client (it speaks the HTTP; the frontend only moves bytes);
* backpressure: when more than :data:`._driver.HIGH_WATER` bytes wait to be written to
  a peer, the frontend feeds ``client_writable``/``server_writable`` False, and True
  again at :data:`._driver.LOW_WATER` (asyncio's transports report exactly that; the
  other frontends count their own buffer); ``ReadClient``/``ReadServer`` stop and
  resume reading, and no data reaches the engine from a connection while it is paused;
* ids: client (and scraper) ids come from one counter in the frontend; server ids come
  from the engine's ``OpenServer``. A close the engine asked for is never reported back;
  an input that arrives while a batch of effects is applied is fed after the batch;
* TLS: on ``StartTls`` the frontend stops reading the connection, sends what the
  engine wrote before (the ``S``), does the handshake with a context from
  :mod:`._tls` and reports ``client_tls``/``server_tls``; on failure it closes the
  connection and reports nothing else for it.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from pgsansio.config.model import Config, General
    from pgsansio.engine import Effect

__all__ = [
    "EX_SOFTWARE",
    "FRONTENDS",
    "EngineAPI",
    "FrontendError",
    "Ready",
    "chosen",
    "listen_failed",
    "missing",
    "peer_text",
    "real_engine",
    "run",
    "tune_socket",
    "uvloop_available",
]

EX_SOFTWARE: Final = 70
"""Exit code after an exception inside the engine (``sysexits.h``: internal software error)."""

FRONTENDS: Final = ("auto", "asyncio", "uvloop", "anyio", "trio", "curio")
"""Names :func:`run` accepts; ``auto`` is uvloop when it is installed, else asyncio."""

_NEEDS: Final = {
    "uvloop": ("uvloop",),
    "anyio": ("anyio",),
    "trio": ("anyio", "trio"),
    "curio": ("curio",),
}
"""The packages each optional frontend imports; the extra to install has its name."""

Ready = Callable[[tuple[str, int]], None]
"""Called once with the bound (host, port) when the pooler accepts connections."""


class FrontendError(Exception):
    """The pooler cannot start: a missing optional package, an address already in use.

    ``str()`` is a complete message for the operator.
    """


def listen_failed(host: str, port: int, exc: OSError) -> FrontendError:
    """The operator's message for an address the pooler cannot listen on.

    Said once, in words: each runtime wraps the errno in its own text (asyncio's
    "error while attempting to bind on address (...): address already in use"), so
    the text is rebuilt from the errno.
    """
    if exc.errno:
        why = os.strerror(exc.errno)
        why = why[:1].lower() + why[1:]
    else:
        why = str(exc)
    hint = ""
    if exc.errno == errno.EADDRINUSE:
        hint = " (another program, perhaps a PostgreSQL, already listens there)"
    elif exc.errno == errno.EACCES and 0 < port < 1024:
        hint = " (ports below 1024 need privileges: use a higher port)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        hint = " (no interface of this machine has that address: change host)"
    return FrontendError(f"cannot listen on {host}:{port}: {why}{hint}")


class EngineAPI(Protocol):
    """What a frontend calls on the engine (see :mod:`pgsansio.engine` for the meaning).

    Every method takes the current monotonic time last and returns effects to carry
    out in order.
    """

    def start(self, now: float) -> Iterable[Effect]: ...
    def client_connected(self, cid: int, peer: str, now: float) -> Iterable[Effect]: ...
    def client_data(self, cid: int, data: bytes, now: float) -> Iterable[Effect]: ...
    def client_closed(self, cid: int, now: float) -> Iterable[Effect]: ...
    def server_connected(self, sid: int, now: float) -> Iterable[Effect]: ...
    def server_failed(self, sid: int, error: str, now: float) -> Iterable[Effect]: ...
    def server_data(self, sid: int, data: bytes, now: float) -> Iterable[Effect]: ...
    def server_closed(self, sid: int, now: float) -> Iterable[Effect]: ...
    def client_writable(self, cid: int, writable: bool, now: float) -> Iterable[Effect]: ...
    def server_writable(self, sid: int, writable: bool, now: float) -> Iterable[Effect]: ...
    def tick(self, now: float) -> Iterable[Effect]: ...
    def reload(self, config: Config, now: float) -> Iterable[Effect]: ...
    def reload_failed(self, error: str, now: float) -> Iterable[Effect]: ...
    def shutdown(self, now: float, *, wait_for_clients: bool = False) -> Iterable[Effect]: ...
    def pause(self, now: float) -> Iterable[Effect]: ...
    def resume(self, now: float) -> Iterable[Effect]: ...
    def metrics_connected(self, cid: int, peer: str, now: float) -> Iterable[Effect]: ...
    def client_tls(self, cid: int, error: str | None, now: float) -> Iterable[Effect]: ...
    def server_tls(self, sid: int, error: str | None, now: float) -> Iterable[Effect]: ...
    def signal(self, name: str, now: float) -> Iterable[Effect]: ...


class _SockOpts(Protocol):
    """The part of a socket (or asyncio's TransportSocket, uvloop's PseudoSocket) we use."""

    @property
    def family(self) -> int: ...
    def setsockopt(self, level: int, optname: int, value: int, /) -> None: ...


def tune_socket(
    sock: _SockOpts | None, general: General, *, server: bool, nodelay: bool = True
) -> None:
    """Set TCP_NODELAY and keepalives on a connected TCP socket, a client's or a server's.

    TCP_NODELAY because the protocol is request/response in small messages, where
    Nagle's algorithm only adds latency. SO_KEEPALIVE on both sides, so a peer that
    vanished without a FIN (a crashed host, a dropped NAT entry) is noticed in the end.

    The two sides get different settings (see docs/reliability.md). Servers get PgCat's
    ``tcp_keepalives_*`` and ``tcp_user_timeout`` (5 s, 5 s, 5 probes, 10 s): a dead
    server must free its pool slot quickly. Clients get ``client_tcp_*``, by default 0 =
    the operating system's defaults (keepalive probes after two hours, no user timeout):
    with PgCat's values a client that stopped reading a big result for 10 s (a zero
    receive window) or missed one probe in a network hiccup was reset without a word,
    where PostgreSQL and PgBouncer keep it. A value of 0 leaves the option alone;
    options the platform lacks are skipped; a socket that is not TCP is left alone.
    ``nodelay=False`` leaves TCP_NODELAY to a runtime that sets it itself (asyncio's and
    uvloop's transports do).
    """
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    if nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    g = general
    if server:
        idle, interval = g.tcp_keepalives_idle, g.tcp_keepalives_interval
        count, user_timeout = g.tcp_keepalives_count, g.tcp_user_timeout
    else:
        idle, interval = g.client_tcp_keepalives_idle, g.client_tcp_keepalives_interval
        count, user_timeout = g.client_tcp_keepalives_count, g.client_tcp_user_timeout
    # TCP_KEEPIDLE is TCP_KEEPALIVE on macOS; getattr keeps this portable.
    for name, value in (
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPALIVE", idle),
        ("TCP_KEEPINTVL", interval),
        ("TCP_KEEPCNT", count),
        ("TCP_USER_TIMEOUT", user_timeout),
    ):
        option = getattr(socket, name, None)
        if option is not None and value > 0:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def peer_text(peer: object) -> str:
    """A peer address as the engine logs it: ``host:port``, ``[v6]:port``, a path."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = str(peer[0]), peer[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(peer or "unknown")


def uvloop_available() -> bool:
    """Whether uvloop is installed, without importing it."""
    return importlib.util.find_spec("uvloop") is not None


def missing(name: str) -> str | None:
    """Why frontend ``name`` cannot run here (a message naming what to install), or None."""
    for package in _NEEDS.get(name, ()):
        if importlib.util.find_spec(package) is None:
            alternative = "asyncio" if name != "asyncio" else "auto"
            return (
                f"the {name} frontend was asked for, but the {package!r} package is not "
                f"installed; install it with: pip install {' '.join(_NEEDS[name])} "
                f"(pgsansio's '{name}' extra), or choose --frontend {alternative}"
            )
    return None


def chosen(name: str) -> str:
    """The frontend ``name`` stands for (``auto`` resolved), checked to be runnable.

    Raises:
        FrontendError: its runtime is not installed (the message says what to install).
        ValueError: ``name`` is not one of :data:`FRONTENDS`.
    """
    if name not in FRONTENDS:
        raise ValueError(f"unknown frontend {name!r}; choose one of {', '.join(FRONTENDS)}")
    if name == "auto":
        name = "uvloop" if uvloop_available() else "asyncio"
    problem = missing(name)
    if problem is not None:
        raise FrontendError(problem)
    return name


def run(
    name: str,
    config: Config,
    *,
    config_path: str | None,
    ready: Ready | None = None,
) -> int:
    """Run the pooler on the frontend called ``name`` until it exits; return the exit code.

    Raises:
        FrontendError: the frontend cannot start (see its message).
        ValueError: ``name`` is not one of :data:`FRONTENDS`.
    """
    name = chosen(name)
    # Lazy imports: only the runtime asked for is loaded.
    if name in ("anyio", "trio"):
        from pgsansio.frontends.anyio import run as run_anyio  # noqa: PLC0415

        return run_anyio(config, config_path=config_path, backend=name, ready=ready)
    if name == "curio":
        from pgsansio.frontends.curio import run as run_curio  # noqa: PLC0415

        return run_curio(config, config_path=config_path, ready=ready)
    from pgsansio.frontends.asyncio import run as run_asyncio  # noqa: PLC0415

    return run_asyncio(config, config_path=config_path, use_uvloop=name == "uvloop", ready=ready)


def real_engine(config: Config) -> EngineAPI:
    """The pooler's engine for ``config``, imported only when a real run needs it (in a
    worker process, that worker's: see :mod:`._peers`)."""
    from pgsansio.engine import Engine  # noqa: PLC0415
    from pgsansio.frontends._peers import current_worker  # noqa: PLC0415

    worker = current_worker()
    if worker is None:
        return Engine(config, seed=None)
    return Engine(config, seed=None, worker=worker.info)
