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
    from pgsansio.config_model import Config
    from pgsansio.protocol import ErrorResponse, Event

    from ._effects import Effect
    from ._objects import Client, Entry, Pool, PoolGroup, Prepared, ServerConn

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

    if TYPE_CHECKING:  # declarations only: the mixins define them

        def _log(self, level: int, message: str) -> None: ...

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

        def _server_ssl_answer(self, s: ServerConn, accepted: bool) -> None: ...

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
