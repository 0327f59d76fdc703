"""The pooler as one sans-IO state machine: inputs in, effects out.

A frontend (asyncio, anyio, curio...) owns the sockets and the clock, and only ever
calls these methods of :class:`Engine`, each returning a list of effects to carry out
in order::

    engine = Engine(config, seed=None)
    Engine(config, seed=None, worker=WorkerInfo(k, n, directory))  # worker k of n
                                            # (general.workers; see ._peers)
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
    engine.shutdown(now, reason="SIGINT")    # reason: for the last log line ("stopped: ...")
    engine.pause(now) / engine.resume(now)   # SIGUSR1 / SIGUSR2: PAUSE / RESUME everything
    engine.signal(name, now)                 # an operator's signal ("SIGHUP", "SIGINT"...):
                                             # the engine decides (see ._signals)
    engine.reload_failed(error, now)         # answer to Reload() when the file does not load
    engine.metrics_connected(cid, peer, now)  # a Prometheus scrape; then client_data/closed
    config_warnings(config)                  # what `check` prints and start/reload log

``now`` is monotonic seconds. Effects are in :mod:`pgsansio.engine._effects`.

Inside, the engine is a set of parts, each owning its state in its own module, each
given at construction the parts below it that it calls. Nothing is wired afterwards,
so the calls form this DAG (bottom to top; every part also gets the Context)::

    Engine        inputs -> dispatch; owns the Context, the signal policy, the Wakeup
     |
    Admin         the console: parse, answer   -> Control Metrics Show Leaving Lending Health
                                                   Peers Pools
    Control       PAUSE, RELOAD, KILL, shutdown -> Leaving Metrics Lending Pools
    Metrics       the /metrics endpoint         -> Show Stats Health Peers Pools
    Show          SHOW rows                     -> Stats Health Pools
    Leaving       clients leaving, servers lost -> Login Sessions Statements Probes
                                                   Listen Lending Pools
    Login         client auth, server login,    -> Peers Probes Listen Lending Routes Tls
                  cancel keys, auth_query          Stats Pools
    Relay         requests out, answers back    -> FanOut Sessions Pinning Listen
                  (the hot path, the fast lane)    Statements Lending Routes Shards Stats
                                                   Pools
    FanOut        cross-shard reads: one leg    -> Lending Shards
                  per shard, merged answers
    Probes        probe connections, roles      -> Lending Health Pools
    Sessions      link, settings sync, release  -> Pinning Lending Pools
    Pinning       session state that keeps a    -> Listen
                  client on its server
    Listen        LISTEN fan-out: a listener    -> Health Pools
                  connection per (pool, user)
    Lending       checkout, waiting, bans that  -> Routes Shards Health Pools
                  move clients, PAUSE parking
    Routes        which pool: role, balancing,  -> Shards Health
                  PgCat's role commands, held
                  BEGINs (_readonly)
    Shards        which shard: automatic key,   -> Health
                  comments, SET SHARD, default
    Health  Pools  Stats  Statements  Tls         (the Context only)
    Peers         worker processes: cancel keys, -> Pools
                  forwarding foreign cancels,
                  asking the others' consoles
    Buffers       caps on unfinished messages   (the Context only; the Engine asks)
     |
    Context       effects being built (``out``), ``now``, timers, rng, config, the
                  client and server tables, the Lifecycle flags (shutdown, PAUSE,
                  DISABLE)

Four things must still reach upward, and each is named where it is handed over:

- The Context's four upcalls, set once by the Engine: ``drop_client`` and
  ``server_gone`` (Leaving: end a client's session; a server connection failed),
  ``maybe_exit`` (Control: something closed, a shutdown or PAUSE may be complete) and
  ``link`` (Sessions: give this server to that client). Any part may end a
  connection; the consequences belong to the parts above it.
- ``Sessions(send_pending=...)``: once a server is linked and its settings applied,
  the Relay sends what the client queued meanwhile.
- ``Control(resume_console=...)``: a console command that had to wait (PAUSE, RELOAD)
  is answered, and the console goes on with what the admin client sent meanwhile.
- ``FanOut(resume=...)``: a request that waited for a cross-shard query goes on
  through the Relay.

Client and server states are enums with one transition table (:mod:`._states`); every
state change goes through :func:`~._states.client_to` / :func:`~._states.server_to`.
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
from ._login import UNIX_OWNER_PEER
from ._peers import WorkerInfo
from ._warnings import config_warnings

__all__ = [
    "UNIX_OWNER_PEER",
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
    "WorkerInfo",
    "config_warnings",
]
