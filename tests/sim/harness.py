"""Build a simulated deployment, run it, and check the invariants at the end.

One call, :func:`simulate`, is a whole run: a config (one pool, three users with md5,
SCRAM and trust authentication), one fake cluster whose roles log in with md5, SCRAM
and cleartext, a few hundred scripted clients, optional faults, and the checks:

* every invariant the world, the fake servers and the clients checked on the way;
* every client finished its script (none waits forever);
* the ledger: every row a client saw committed is in the database, and no row of a
  transaction that was rolled back, failed or abandoned is;
* afterwards, no server connection is left inside a transaction or running a query;
* with replicas: no write ever reached a standby (a fake standby refuses writes as a hot
  standby does, and counts them).

Replicas are more fake clusters listed in the config's shard after the first; they
share the primary's tables (replication without lag), so the ledger checks hold
whichever server a read goes to.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pgsansio.config.model import (
    Config,
    General,
    PoolConfig,
    ServerAddress,
    ShardConfig,
    UserConfig,
)
from pgsansio.testing.fakepg import Database, FakeServer, FakeUser
from pgsansio.testing.fakesql import Plan

from .client import Pause
from .scenarios import CANCEL_SLEEP, Behaviour, Scripted
from .world import NetProfile, World

HOST, PORT, DATABASE = "pg1", 5432, "simdb"
# (pooler auth, server auth, password) per user: every login path on both sides.
USERS = {
    "md5u": ("md5", "md5", "md5-secret"),
    "scramu": ("scram-sha-256", "scram-sha-256", "scram-secret"),
    "trustu": ("trust", "password", "clear-secret"),
}


def make_users(pool_size: int, **settings: Any) -> dict[str, UserConfig]:
    """The three users of :data:`USERS` with ``pool_size`` and ``settings``."""
    return {
        name: UserConfig(name, password, pool_size, auth_type=client_auth, **settings)
        for name, (client_auth, _, password) in USERS.items()
    }


def make_config(
    pool_size: int = 6,
    connect_timeout: int = 5000,
    statement_timeout: int = 0,
    replicas: int = 0,
    role: str | None = None,
    **general: Any,
) -> Config:
    """One pool; ``replicas`` > 0 adds standbys and turns read/write splitting on
    (``role="auto"``: every server's role is found by probing)."""
    users = make_users(
        pool_size, connect_timeout=connect_timeout, statement_timeout=statement_timeout
    )
    servers = (
        ServerAddress(HOST, PORT, role or "primary"),
        *tuple(ServerAddress(HOST, PORT + i, role or "replica") for i in range(1, replicas + 1)),
    )
    shard = ShardConfig(0, DATABASE, servers)
    pool = PoolConfig(
        DATABASE,
        users,
        (shard,),
        connect_timeout=connect_timeout,
        query_parser_enabled=bool(replicas),
        query_parser_read_write_splitting=bool(replicas),
    )
    return Config(General(connect_timeout=connect_timeout, **general), {DATABASE: pool})


def make_database(seed: int, port: int = PORT, primary: Database | None = None) -> Database:
    users = {name: FakeUser(pw, server_auth) for name, (_, server_auth, pw) in USERS.items()}
    db = Database(
        users=users,
        databases=[DATABASE],
        seed=seed,
        name=f"{HOST}:{port}",
        first_pid=10000 * (port - PORT + 1),
        in_recovery=primary is not None,
    )
    if primary is not None:
        db.tables = primary.tables  # streaming replication without lag
    return db


@dataclass
class Run:
    """A finished simulation and what its checks found."""

    world: World
    clients: list[Scripted]
    behaviour: Behaviour
    db: Database
    problems: list[str] = field(default_factory=list)
    exit_within: float = 10.0  # after a shutdown, Exit must come this soon

    def summary(self) -> str:
        ledger = Counter(self.behaviour.ledger.values())
        outcomes = dict(sorted(self.behaviour.outcomes.items()))
        return (
            f"seed {self.world.seed}: {len(self.clients)} clients, t={self.world.now:.2f}s, "
            f"{self.world.sched.events} events, db {dict(self.db.stats)}, ledger {dict(ledger)}, "
            f"max server connections {dict(self.world.max_open_per_pool)}\n"
            f"outcomes {outcomes}"
        )

    def failure_report(self, limit: int = 12, tail: int | None = None) -> str:
        if tail is None:
            tail = int(os.environ.get("SIM_TAIL", "300" if self.world.verbose else "80"))
        shown = "\n".join(f"  - {p}" for p in self.problems[:limit])
        more = len(self.problems) - limit
        if more > 0:
            shown += f"\n  ... and {more} more"
        return (
            f"simulation failed; replay with SIM_SEED={self.world.seed}\n{self.summary()}\n"
            f"problems:\n{shown}\n{self.world.report(tail)}"
        )


Fault = Callable[[World, Database, random.Random], None]


def simulate(
    seed: int,
    *,
    clients: int = 200,
    config: Config | None = None,
    behaviour: Behaviour | None = None,
    net: NetProfile | None = None,
    faults: list[Fault] = (),  # type: ignore[assignment]
    engine_factory: Callable[..., Any] | None = None,
    horizon: float = 600.0,
    verbose: bool = os.environ.get("SIM_VERBOSE") == "1",
    trace_size: int = 600,
    probe: bool = True,
    stop_on_failure: bool = True,
) -> Run:
    """Run one simulation from ``seed`` and check it; ``Run.problems`` lists what broke."""
    rng = random.Random(seed)
    config = config or make_config()
    behaviour = behaviour or Behaviour()
    db = make_database(seed)
    kwargs: dict[str, Any] = {}
    if engine_factory is not None:
        kwargs = {"engine_factory": engine_factory, "check_pools": False}
    kwargs["verbose"] = verbose
    kwargs["stop_on_failure"] = stop_on_failure
    kwargs["trace_size"] = trace_size
    clusters = {(HOST, PORT): db}
    for address in next(iter(config.pools.values())).shards[0].servers[1:]:
        clusters[address.host, address.port] = make_database(seed, address.port, primary=db)
    world = World(seed, config, clusters, net or NetProfile(), **kwargs)

    def note_statement(server: FakeServer, plan: Plan) -> None:
        if f"pg_sleep({CANCEL_SLEEP})" in plan.text:
            behaviour.started.add(plan.text)

    db.on_statement = note_statement
    users = sorted(USERS)
    population = []
    for n in range(1, clients + 1):
        user = users[n % len(users)]
        client_rng = random.Random(rng.getrandbits(64))
        client = Scripted(
            world,
            n,
            user,
            USERS[user][2],
            client_rng,
            behaviour=behaviour,
            database=DATABASE,
        )
        client.start(rng.uniform(0, behaviour.arrival))
        population.append(client)
    for fault in faults:
        fault(world, db, random.Random(rng.getrandbits(64)))
    world.start()
    run = Run(world, population, behaviour, db)
    try:
        world.run(horizon)
        if not world.failures or not stop_on_failure:
            # Let the pooler finish what the last clients left behind (rollbacks...).
            world.run(world.now + 30.0)
    except AssertionError:
        pass  # recorded in world.failures
    run.problems = check(run)
    if not run.problems and world.shutdown_requested is None and probe:
        run.problems = probe_capacity(run)
    return run


def probe_capacity(run: Run) -> list[str]:
    """After the run, every user's pool must still serve ``pool_size`` clients at once.

    A server connection the pooler lost track of (neither usable nor closed) is
    invisible to the clients of a busy run, which just wait a little longer; here it
    shows: ``pool_size`` clients each hold a transaction open at the same time, so each
    needs a server of its own, and each must get one, on a distinct backend.
    """
    world = run.world
    start = world.now + 1.0
    results: dict[str, list[list[Any]]] = {}
    pool = world.config.pools[DATABASE]
    for name, user in sorted(pool.users.items()):
        results[name] = []
        for i in range(user.pool_size):
            out: list[Any] = []
            results[name].append(out)
            number = 10000 + len(results) * 100 + i
            tag = f"/*tag:c{number}*/"
            steps = [f"BEGIN {tag}", f"SELECT pg_backend_pid() {tag}", 1.0, f"COMMIT {tag}"]
            client = _OneScript(world, steps, out, user=name, number=number)
            client.start(start + i * 0.001)
    world.run(start + 120.0)
    problems = world.violations()
    for name, outs in sorted(results.items()):
        pids = []
        for out in outs:
            briefs = " | ".join(r.brief() for r in out)
            if len(out) != 4 or any(r.errors for r in out):
                problems.append(f"capacity probe: a client of {name} was not served: {briefs}")
            else:
                pids.append(out[2].rows[0][0])
        if len(set(pids)) != len(pids):
            problems.append(
                f"capacity probe: {len(pids)} clients of {name} holding a transaction at once "
                f"got only {len(set(pids))} distinct backends {pids}: the pool lost "
                f"{len(pids) - len(set(pids))} server connection(s) (neither usable nor closed)"
            )
    return problems


def check(run: Run) -> list[str]:
    world, db = run.world, run.db
    problems = world.violations()
    if problems:
        return problems
    for client in run.clients:
        if not client.done:
            waiting = f"waiting since t={client.waiting_since:.3f}" if client.waiting else "paused"
            problems.append(f"client {client.name} never finished ({waiting}, {client.last_step})")
    rows = db.rows("ledger")
    keys = Counter(row[0] for row in rows)
    ledger = run.behaviour.ledger
    for key, count in keys.items():
        state = ledger.get(key or "")
        if count > 1:
            problems.append(f"ledger row {key} is in the database {count} times")
        if state not in ("committed", "unknown"):
            problems.append(f"ledger row {key} is in the database but its transaction {state}")
    for key, state in ledger.items():
        if state == "committed" and key not in keys:
            problems.append(f"ledger row {key} was committed but is not in the database")
        if state in ("open", "committing"):
            problems.append(f"ledger row {key} still {state} at the end (scenario bug)")
    if world.shutdown_requested is not None:
        if world.exited is None or world.exited_at is None:
            problems.append("the engine never sent Exit after shutdown")
        elif world.exited_at - world.shutdown_requested > run.exit_within:
            took = world.exited_at - world.shutdown_requested
            problems.append(f"Exit came {took:.2f} s after shutdown (limit {run.exit_within} s)")
        still = [sid for sid, link in world.servers.items() if not link.engine_closed]
        if still:
            problems.append(f"server connections {still} still open after Exit")
    for cluster in world.clusters.values():
        if cluster.stats["read_only_refusals"]:
            problems.append(
                f"{cluster.stats['read_only_refusals']} write(s) reached {cluster.name} "
                "while it was a standby"
            )
    backends = [b for cluster in world.clusters.values() for b in cluster.backends.items()]
    for pid, server in backends:
        if server.in_txn or server._sleep is not None or server.status != "I":
            problems.append(
                f"backend {pid} left {'in a transaction' if server.in_txn else 'busy'} "
                f"(status {server.status}); recent: {list(server.history)[-4:]}"
            )
    return problems


# --- faults ----------------------------------------------------------------------------


def kill_servers(start: float, end: float, every: float) -> Fault:
    """Now and then a random backend dies, with a FATAL or silently."""

    def install(world: World, db: Database, rng: random.Random) -> None:
        def strike() -> None:
            links = [
                link
                for link in world.servers.values()
                if link.server is not None and not link.server.closed and link.server.logged_in
            ]
            if links:
                world.kill_server(rng.choice(links), fatal=rng.random() < 0.5)
            if world.now + every < end:
                world.sched.after(rng.expovariate(1 / every), strike)

        world.sched.at(start, strike)

    return install


def crash_cluster(port: int, at: float, back: float | None, *, standby: bool = True) -> Fault:
    """The server at ``port`` dies at ``at`` (every connection drops, connects are
    refused), and restarts at ``back`` (as a standby of the current primary when
    ``standby``)."""

    def install(world: World, db: Database, rng: random.Random) -> None:
        cluster = world.clusters[HOST, port]

        def die() -> None:
            world.log(f"FAULT: server {cluster.name} dies")
            cluster.accepting = False
            for link in list(world.servers.values()):
                if link.db is cluster and link.server is not None and not link.server.closed:
                    world.kill_server(link, fatal=False)

        def restart() -> None:
            world.log(f"FAULT over: server {cluster.name} restarts")
            cluster.in_recovery = cluster.in_recovery or standby
            cluster.accepting = True

        world.sched.at(at, die)
        if back is not None:
            world.sched.at(back, restart)

    return install


def promote(port: int, at: float) -> Fault:
    """``pg_ctl promote`` of the standby at ``port``."""

    def install(world: World, db: Database, rng: random.Random) -> None:
        cluster = world.clusters[HOST, port]

        def go() -> None:
            world.log(f"FAULT: {cluster.name} is promoted")
            cluster.in_recovery = False

        world.sched.at(at, go)

    return install


def refuse_logins(start: float, end: float, sqlstate: str, message: str) -> Fault:
    """Between ``start`` and ``end`` the server refuses logins; at ``start`` it also
    drops every connection, so the pooler has to log in again."""

    def install(world: World, db: Database, rng: random.Random) -> None:
        def begin() -> None:
            world.log(f"FAULT: logins refused with {sqlstate}")
            db.refuse_logins = (sqlstate, message)
            for link in list(world.servers.values()):
                if link.server is not None and not link.server.closed:
                    world.kill_server(link, fatal=True)

        def finish() -> None:
            world.log("FAULT over: logins accepted again")
            db.refuse_logins = None

        world.sched.at(start, begin)
        world.sched.at(end, finish)

    return install


def stall_servers(start: float, end: float, share: float, logins: bool = False) -> Fault:
    """At ``start`` some backends hang (and, with ``logins``, new ones never answer
    the startup packet); at ``end`` new backends behave again."""

    def install(world: World, db: Database, rng: random.Random) -> None:
        def begin() -> None:
            world.log(f"FAULT: stalling {share:.0%} of backends (logins: {logins})")
            db.stall_logins = logins
            for link in world.servers.values():
                if link.server is not None and not link.server.closed and rng.random() < share:
                    link.server.stalled = True

        def finish() -> None:
            world.log("FAULT over: new backends answer again")
            db.stall_logins = False

        world.sched.at(start, begin)
        world.sched.at(end, finish)

    return install


# --- one client, one script: minimal reproductions -------------------------------------


class _OneScript(Scripted):
    """Runs fixed steps; each step is a query string or a list of events."""

    def __init__(self, world: World, steps: list[Any], out: list[Any], **kw: Any) -> None:
        user = kw.pop("user", "md5u")
        self.params: dict[str, str] = kw.pop("params", {})
        super().__init__(
            world,
            kw.pop("number", 1),
            user,
            USERS[user][2],
            random.Random(0),
            behaviour=Behaviour(),
            database=DATABASE,
        )
        self.steps = steps
        self.out = out

    def main(self) -> Any:
        from pgsansio.protocol import Query, Sync

        self.connect()
        self.out.append((yield from self.login(self.database, **self.params)))
        for step in self.steps:
            if isinstance(step, float):
                yield Pause(step)
                continue
            if isinstance(step, tuple):
                kind = step[0]
                if kind in ("vanish", "send"):
                    self.send(*([Query(step[1])] if isinstance(step[1], str) else step[1]))
                    if kind == "vanish":
                        break  # and close at once, without waiting for the answer
                elif kind == "cancel":
                    self.cancel()
                elif kind == "wait":
                    self.out.append((yield from self.replies(step[1], 30.0)))
                continue
            events = [Query(step)] if isinstance(step, str) else list(step)
            n = sum(1 for e in events if isinstance(e, (Query, Sync)))
            if self.session is None or self.session.closed:
                break
            self.send(*events)
            self.out.append((yield from self.replies(n, 30.0)))
        self.close()


def run_scripts(
    *scripts: list[Any],
    config: Config | None = None,
    seed: int = 0,
    stagger: float = 0.0,
    net: NetProfile | None = None,
    params: list[dict[str, str]] | None = None,
    users: list[str] | None = None,
    faults: list[Fault] = (),  # type: ignore[assignment]
) -> tuple[list[list[Any]], World]:
    """Run one client per script (started ``stagger`` seconds apart) against the engine.

    Returns each client's replies (login first, then one per step) and the world.
    Steps are SQL strings, lists of protocol events, a float (a pause in seconds),
    ``("send", sql or events)`` (no waiting), ``("wait", n)`` (for n ReadyForQuery),
    ``("cancel",)``, or ``("vanish", sql or events)``: send, then close at once.
    ``params`` are each client's extra startup parameters, ``users`` their user names
    (default md5u).
    """
    db = make_database(seed)
    net = net or NetProfile()
    world = World(seed, config or make_config(pool_size=1), {(HOST, PORT): db}, net)
    outs: list[list[Any]] = []
    for i, steps in enumerate(scripts):
        out: list[Any] = []
        outs.append(out)
        extra = params[i] if params else {}
        user = users[i] if users else "md5u"
        _OneScript(world, steps, out, number=i + 1, params=extra, user=user).start(i * stagger)
    for fault in faults:
        fault(world, db, random.Random(seed))
    world.start()
    world.run(600.0)
    return outs, world


def shutdown_at(when: float) -> Fault:
    """The operator stops the pooler (SIGTERM): ``engine.shutdown`` at ``when``."""

    def install(world: World, db: Database, rng: random.Random) -> None:
        def stop() -> None:
            world.log("OPERATOR: shutdown")
            world.shutdown_requested = world.now
            world.call("shutdown", world.engine.shutdown)

        world.sched.at(when, stop)

    return install


def reload_at(when: float, config: Config, settle: float = 3.0) -> Fault:
    """The operator reloads a new configuration at ``when``.

    Until ``settle`` seconds later a pool may still hold connections under the old
    limits (they close when released); after that the new limits apply.
    """

    def install(world: World, db: Database, rng: random.Random) -> None:
        def reload() -> None:
            world.log("OPERATOR: reload")
            old = world.pool_limits
            world.config = config
            new = world._pool_limits()
            # Old and new pools may overlap while the old connections drain.
            world.pool_limits = Counter({k: old[k] + new[k] for k in old | new})
            world.call("reload", world.engine.reload, config)
            world.sched.after(settle, settled, new)

        def settled(new: Counter[tuple[str, int, str, str]]) -> None:
            if world.config is not config:
                return  # another reload came since: its own settle checks
            world.log("reload settled: new pool limits apply")
            world.pool_limits = new
            for key, count in world.open_per_pool.items():
                if count > new.get(key, 0):
                    world.fail(f"pool {key} still has {count} connections after the reload")

        world.sched.at(when, reload)

    return install
