"""What the engine's parts share: its state, and the methods they call on each other.

The Engine is one object assembled from mixins (:mod:`._relay`, :mod:`._login`,
:mod:`._pooling` and :mod:`._engine` itself) so that no module grows past a few hundred
lines. This base declares, once, the attributes and the cross-module methods, so each
mixin type-checks alone; the declarations exist for the type checker only.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgsansio.config_model import Config, ServerAddress
    from pgsansio.protocol import ErrorResponse, Event, Span

    from ._effects import Effect
    from ._health import Ban
    from ._objects import Client, Entry, Pool, PoolGroup, Prepared, ServerConn
    from ._stats import DbStats

__all__ = ["Base"]


class Base:
    config: Config
    rng: random.Random
    clients: dict[int, Client]
    servers: dict[int, ServerConn]
    groups: dict[tuple[str, str], PoolGroup]
    _out: list[Effect]
    _now: float
    _next_sid: int
    _mock_seed: bytes
    _cancel_keys: dict[tuple[int, bytes], Client]
    _scram_secrets: dict[tuple[str, str], str]
    _statements: dict[tuple[str, tuple[int, ...]], Prepared]
    _statement_counter: int
    _shutting_down: bool
    _exited: bool
    _timers: list[tuple[float, int, Callable[[], None]]]
    # Operating the pooler (see _control, _admin, _stats, _metrics).
    stats: dict[str, DbStats]
    paused: set[str]
    _pausing: bool
    disabled: set[str]
    _wait_for_clients: bool
    _http: dict[int, bytearray]
    # replicas (see _health and _routing)
    bans: dict[tuple[str, int], Ban]
    roles: dict[tuple[str, int], str | None]
    _lagging: set[tuple[str, tuple[str, int]]]
    _role_waiters: list[Client]
    # clients waiting for a server under connect_timeout (see _pooling._wait_until)
    _waiting: dict[Client, None]
    # a login's ParameterStatus messages, encoded, by (name, value) pairs (see _login)
    _welcomes: dict[tuple[tuple[str, str], ...], Span]
    _wait_sweep_at: float | None

    if TYPE_CHECKING:  # declarations only: the mixins define them

        def _log(self, level: int, message: str) -> None: ...

        def _count_query(self, c: Client, status: str) -> None: ...

        def _stats_for(self, database: str) -> DbStats: ...

        def _flush(self) -> list[Effect]: ...

        def _checkout(self, c: Client) -> None: ...

        def _prewarm(self, group: PoolGroup) -> None: ...

        def _hold(self, c: Client) -> bool: ...

        def _pause_progress(self) -> None: ...

        def _exit_leftovers(self) -> None: ...

        def _admin_resume(self, c: Client) -> None: ...

        def _admin_welcome(self, c: Client) -> None: ...

        def _close_http(self) -> None: ...

        def _shutdown_timeout(self) -> None: ...

        def _pool_rows(self) -> list[tuple[str, str, dict[str, int], str, str]]: ...

        def _unref(self, p: Prepared) -> None: ...

        def _unlink(self, c: Client, s: ServerConn) -> None: ...

        def _cancel_server(self, target: ServerConn) -> None: ...

        def _send_internal(self, s: ServerConn, sql: str, tag: str) -> None: ...

        def _at(self, when: float, fn: Callable[[], None]) -> None: ...

        def _send_client(self, c: Client, event: Event) -> None: ...

        def _send_server(self, s: ServerConn, data: bytes) -> None: ...

        def _where(self, s: ServerConn) -> str: ...

        def _drop_client(
            self, c: Client, error: ErrorResponse | None = None, *, closed: bool = False
        ) -> None: ...

        def _maybe_exit(self, *, force: bool = False) -> None: ...

        def _link(self, c: Client, s: ServerConn) -> None: ...

        def _internal_query(self, s: ServerConn, sql: str, tag: str) -> None: ...

        def _internal_done(self, s: ServerConn, entry: Entry) -> None: ...

        def _release_if_done(self, s: ServerConn) -> None: ...

        def _cache_size(self, c: Client) -> int: ...

        def _welcome(self, c: Client) -> None: ...

        def _choose_pool(self, c: Client) -> Pool: ...

        def _open_server(self, pool: Pool) -> ServerConn: ...

        def _close_server(self, s: ServerConn, *, send: bool = True) -> None: ...

        def _refill(self, pool: Pool) -> None: ...

        def _server_free(self, s: ServerConn) -> None: ...

        def _fail_requests(
            self,
            c: Client,
            pending: list[tuple[bytes, list[Event], list[int]]],
            error: ErrorResponse,
        ) -> None: ...

        def _server_gone(
            self, s: ServerConn, error: ErrorResponse, *, closed: bool = False
        ) -> None: ...

        def _auth_query_failed(self, s: ServerConn, error: ErrorResponse) -> None: ...

        # --- replicas: _routing and _health ---

        def _checkout(self, c: Client) -> None: ...

        def _checkout_timeout(self, c: Client) -> None: ...

        def _wait_until(self, c: Client, deadline: float) -> None: ...

        def _expired(self, s: ServerConn) -> bool: ...

        def _route(self, c: Client, *, retry: bool = False) -> Pool | None: ...

        def _reroute(self, c: Client, failed: Pool) -> None: ...

        def _hand_out(self, c: Client, s: ServerConn) -> None: ...

        def _role(self, address: ServerAddress) -> str | None: ...

        def _banned(self, address: ServerAddress) -> bool: ...

        def _probe_down(self, key: tuple[str, int]) -> bool: ...

        def _ban(
            self,
            target: Pool | ServerAddress | tuple[str, int],
            seconds: float | None,
            reason: str,
        ) -> bool: ...

        def _unban(self, address: tuple[str, int], why: str = ...) -> bool: ...

        def _server_lost(self, s: ServerConn, was: int, linked: bool) -> None: ...

        def _probe_lost(self, s: ServerConn, error: ErrorResponse) -> None: ...

        def _probe_ready(self, s: ServerConn) -> None: ...

        def _read_probe(self, s: ServerConn) -> None: ...

        def _health_done(self, s: ServerConn, entry: Entry) -> bool: ...

        def _start_probes(self) -> None: ...

        def _check_parser(self) -> None: ...

        def _custom_command(self, c: Client, span: Span) -> bool: ...
