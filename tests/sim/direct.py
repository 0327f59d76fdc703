"""A one-to-one proxy with the engine's interface: the simulation's control experiment.

Every client gets its own server connection and every byte passes through unchanged,
so with this "engine" the fake servers answer the clients directly. If a scenario
fails here, the scenario (or the fake server) is wrong, not the pooler; if it passes
here and fails with :class:`pgsansio.engine.Engine`, the difference is the pooler's.
"""

from __future__ import annotations

from pgsansio.config.model import Config
from pgsansio.engine import CloseClient, CloseServer, Effect, OpenServer, SendClient, SendServer
from pgsansio.protocol import ErrorResponse


class DirectProxy:
    def __init__(self, config: Config, *, seed: int | None = None) -> None:
        pool = next(iter(config.pools.values()))
        address = pool.shards[0].servers[0]
        self.host, self.port = address.host, address.port
        self.pending: dict[int, list[bytes] | None] = {}  # None once connected
        self.closed: set[int] = set()

    def start(self, now: float) -> list[Effect]:
        return []

    def client_connected(self, cid: int, peer: str, now: float) -> list[Effect]:
        self.pending[cid] = []
        return [OpenServer(cid, self.host, self.port)]

    def client_data(self, cid: int, data: bytes, now: float) -> list[Effect]:
        buffered = self.pending.get(cid)
        if buffered is not None:
            buffered.append(data)
            return []
        return [SendServer(cid, data)]

    def client_closed(self, cid: int, now: float) -> list[Effect]:
        self.closed.add(cid)
        if self.pending.get(cid) is not None:
            return []  # not connected yet: send what the client sent, then close
        return [CloseServer(cid)]

    def server_connected(self, sid: int, now: float) -> list[Effect]:
        buffered = self.pending.get(sid) or []
        self.pending[sid] = None
        out: list[Effect] = [SendServer(sid, data) for data in buffered]
        if sid in self.closed:
            out.append(CloseServer(sid))
        return out

    def server_failed(self, sid: int, error: str, now: float) -> list[Effect]:
        self.pending[sid] = None
        if sid in self.closed:
            return []
        self.closed.add(sid)
        fatal = ErrorResponse.build("08001", f"could not connect: {error}", "FATAL")
        return [SendClient(sid, bytes(fatal)), CloseClient(sid)]

    def server_data(self, sid: int, data: bytes, now: float) -> list[Effect]:
        return [] if sid in self.closed else [SendClient(sid, data)]

    def server_closed(self, sid: int, now: float) -> list[Effect]:
        if sid in self.closed:
            return []
        self.closed.add(sid)
        # As a pooler does (the fake servers only ever send whole messages, so this
        # cannot land inside one): say why before closing.
        lost = ErrorResponse.build("08006", "the server closed the connection", "FATAL")
        return [SendClient(sid, bytes(lost)), CloseClient(sid)]

    def tick(self, now: float) -> list[Effect]:
        return []


class CrossedProxy(DirectProxy):
    """A broken pooler, to show the checks bite: after ``after`` seconds, simple
    queries of odd client 2k-1 go to client 2k's server once both have logged in
    (and the answers come back to 2k).

    Both clients' statements then run on one backend, inside each other's
    transactions, which is exactly what a pooler handing one server to two clients
    at once would do.
    """

    after = 0.5

    def __init__(self, config: Config, *, seed: int | None = None) -> None:
        super().__init__(config, seed=seed)
        self.ready: set[int] = set()

    def server_data(self, sid: int, data: bytes, now: float) -> list[Effect]:
        if b"Z\x00\x00\x00\x05" in data:
            self.ready.add(sid)
        return super().server_data(sid, data, now)

    def client_data(self, cid: int, data: bytes, now: float) -> list[Effect]:
        partner = cid + 1 if cid % 2 else 0
        crossed = (
            now >= self.after
            and _only_queries(data)
            and {cid, partner} <= self.ready
            and partner not in self.closed
        )
        if crossed:
            return [SendServer(partner, data)]
        return super().client_data(cid, data, now)


def _only_queries(data: bytes) -> bool:
    """``data`` is one or more whole Query messages (and nothing else)."""
    pos = 0
    while pos < len(data):
        if data[pos : pos + 1] != b"Q" or pos + 5 > len(data):
            return False
        pos += 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")
    return pos == len(data) and bool(data)
