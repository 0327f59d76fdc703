"""What the engine's parts share: its state, and the methods they call on each other.

The Engine is one object assembled from mixins (:mod:`._relay`, :mod:`._login`,
:mod:`._pooling` and :mod:`._engine` itself) so that no module grows past a few hundred
lines. This base declares, once, the attributes and the cross-module methods, so each
mixin type-checks alone; the real methods override these stubs through the MRO.
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

    def _log(self, level: int, message: str) -> None:
        raise NotImplementedError

    def _at(self, when: float, fn: Callable[[], None]) -> None:
        raise NotImplementedError

    def _send_client(self, c: Client, event: Event) -> None:
        raise NotImplementedError

    def _send_server(self, s: ServerConn, data: bytes) -> None:
        raise NotImplementedError

    def _where(self, s: ServerConn) -> str:
        raise NotImplementedError

    def _drop_client(
        self, c: Client, error: ErrorResponse | None = None, *, closed: bool = False
    ) -> None:
        raise NotImplementedError

    def _maybe_exit(self, *, force: bool = False) -> None:
        raise NotImplementedError

    def _link(self, c: Client, s: ServerConn) -> None:
        raise NotImplementedError

    def _internal_query(self, s: ServerConn, sql: str, tag: str) -> None:
        raise NotImplementedError

    def _internal_done(self, s: ServerConn, entry: Entry) -> None:
        raise NotImplementedError

    def _release_if_done(self, s: ServerConn) -> None:
        raise NotImplementedError

    def _cache_size(self, c: Client) -> int:
        raise NotImplementedError

    def _welcome(self, c: Client) -> None:
        raise NotImplementedError

    def _choose_pool(self, c: Client) -> Pool:
        raise NotImplementedError

    def _open_server(self, pool: Pool) -> ServerConn:
        raise NotImplementedError

    def _close_server(self, s: ServerConn, *, send: bool = True) -> None:
        raise NotImplementedError

    def _refill(self, pool: Pool) -> None:
        raise NotImplementedError

    def _server_free(self, s: ServerConn) -> None:
        raise NotImplementedError

    def _fail_requests(
        self, c: Client, pending: list[tuple[bytes, list[Event], list[int]]], error: ErrorResponse
    ) -> None:
        raise NotImplementedError

    def _server_gone(self, s: ServerConn, error: ErrorResponse, *, closed: bool = False) -> None:
        raise NotImplementedError

    def _auth_query_failed(self, s: ServerConn, error: ErrorResponse) -> None:
        raise NotImplementedError
