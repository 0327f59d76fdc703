"""The pooler as one sans-IO state machine: inputs in, effects out.

A frontend (asyncio, anyio, curio...) owns the sockets and the clock, and only ever
calls these methods of :class:`Engine`, each returning a list of effects to carry out
in order::

    engine = Engine(config, seed=None)
    engine.start(now)                       # pre-warms min_pool_size
    engine.client_connected(cid, peer, now)  # cid: an int the frontend picks, unique
    engine.client_data(cid, data, now)
    engine.client_closed(cid, now)           # the client went away (not after CloseClient)
    engine.server_connected(sid, now)        # answer to OpenServer(sid, host, port)
    engine.server_failed(sid, error, now)    # could not connect (error: text for logs)
    engine.server_data(sid, data, now)
    engine.server_closed(sid, now)           # the server went away (not after CloseServer)
    engine.client_writable(cid, ok, now)     # the client's send buffer is full (False)
    engine.server_writable(sid, ok, now)     # ... or has drained again (True)
    engine.tick(now)                         # at or after the last Wakeup(at)
    engine.reload(config, now)               # a new, already validated Config
    engine.shutdown(now)                     # graceful drain (SIGINT); Exit() when done
    engine.shutdown(now, wait_for_clients=True)  # SIGTERM: exit when the last client leaves
    engine.pause(now) / engine.resume(now)   # SIGUSR1 / SIGUSR2: PAUSE / RESUME everything
    engine.signal(name, now)                 # an operator's signal ("SIGHUP", "SIGINT"...):
                                             # the engine decides (see ._signals)
    engine.reload_failed(error, now)         # answer to Reload() when the file does not load
    engine.metrics_connected(cid, peer, now)  # a Prometheus scrape; then client_data/closed

``now`` is monotonic seconds. Effects are in :mod:`pgsansio.engine._effects`.
"""

from __future__ import annotations

from ._effects import (
    CloseClient,
    CloseServer,
    Effect,
    Exit,
    Log,
    OpenServer,
    ReadClient,
    ReadServer,
    Reload,
    SendClient,
    SendServer,
    StartTls,
    Wakeup,
)
from ._engine import Engine

__all__ = [
    "CloseClient",
    "CloseServer",
    "Effect",
    "Engine",
    "Exit",
    "Log",
    "OpenServer",
    "ReadClient",
    "ReadServer",
    "Reload",
    "SendClient",
    "SendServer",
    "StartTls",
    "Wakeup",
]
