"""Deterministic simulation of the pooler: hundreds of clients, fake servers, faults.

Every run is a pure function of its seed (see ``tests/sim``). A failing run prints
``replay with SIM_SEED=n``; replay it alone with::

    SIM_SEED=n pytest tests/test_simulation.py -k <test name>

``SIM_CLIENTS`` changes the population (default 200). ``SIM_VERBOSE=1`` traces every
protocol message (client, engine -> server, server) and the failure report ends with
the last ``SIM_TAIL`` (default 300) trace lines. The long soak over many seeds and
random configurations runs with ``make soak`` (``pytest -m soak``; ``SIM_SOAK`` seeds,
default 40); the default run leaves it out.

The sharded runs (:mod:`tests.sim.shards`) check PgCat's sharding request by request:
three shard clusters, ``SET SHARD``, ``SET SHARDING KEY``, comment routing, a shard
dying and reloads changing the shard list (``SIM_SHARD_CLIENTS``, default 30; the soak
adds ``SIM_SOAK / 4`` random sharded runs).

Each scenario family also runs through :class:`tests.sim.direct.DirectProxy`, a
one-to-one proxy without pooling: the control experiment that shows the scenarios'
expectations are right about PostgreSQL (as modelled by the fake server), so a failure
with the real engine is the pooler's.

The ``test_bug_*`` tests at the end are minimal reproductions of pooler bugs the
simulation found; each says what PostgreSQL does. While they are open,
``SIM_AVOID_KNOWN=1`` leaves the scenarios they cover out of the random runs, so that
those can look for something new.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from dataclasses import replace
from typing import Any

import pytest
from sim.direct import CrossedProxy, DirectProxy
from sim.harness import (
    PORT,
    Run,
    crash_cluster,
    kill_servers,
    make_config,
    promote,
    refuse_logins,
    reload_at,
    run_scripts,
    shutdown_at,
    simulate,
    stall_servers,
)
from sim.scenarios import DEFAULT_WEIGHTS, Behaviour
from sim.shards import ShardRun, make_shard_config, simulate_shards
from sim.world import NetProfile

from pgsansio.config.model import Config
from pgsansio.protocol import Bind, Execute, Parse, Sync

SEEDS = [int(os.environ["SIM_SEED"])] if "SIM_SEED" in os.environ else [1, 2, 3]
ONE_SEED = SEEDS[:1] if "SIM_SEED" in os.environ else [7]
CLIENTS = int(os.environ.get("SIM_CLIENTS", "200"))
SOAK = int(os.environ.get("SIM_SOAK", "40"))
# The sharded runs check every request one by one: fewer clients do.
SHARD_CLIENTS = int(os.environ.get("SIM_SHARD_CLIENTS", "30"))
# Errors a pooler may answer with when servers misbehave.
INFRA = frozenset({"53300", "08006", "08001", "08P01", "57P01"})


# SIM_AVOID_KNOWN=1 leaves out what the test_bug_* tests already show is broken, so
# that the random runs can find something new meanwhile.
AVOID_KNOWN = os.environ.get("SIM_AVOID_KNOWN") == "1"
KNOWN_BROKEN_SCENARIOS = ("named_duplicate", "reset", "discard")
KNOWN_BROKEN_SESSION_SCENARIOS = ("vanish", "quit_in_txn")


def behaviour(*, session: bool = False, avoid: bool = AVOID_KNOWN, **kw: object) -> Behaviour:
    if not avoid:
        return Behaviour(**kw)  # type: ignore[arg-type]
    skip = KNOWN_BROKEN_SCENARIOS + (KNOWN_BROKEN_SESSION_SCENARIOS if session else ())
    weights = {k: (0 if k in skip else w) for k, w in DEFAULT_WEIGHTS.items()}
    return Behaviour(weights=weights, comment_sets=False, bind_unknown=False, **kw)  # type: ignore[arg-type]


def check(run: Run) -> None:
    if run.problems:
        pytest.fail(run.failure_report(), pytrace=False)


def with_pool(config: Config, **changes: object) -> Config:
    """The config with ``changes`` applied to the pool and (where they fit) its users."""
    pool = config.pools["simdb"]
    user_fields = set(next(iter(pool.users.values())).__dataclass_fields__)
    user_changes = {k: v for k, v in changes.items() if k in user_fields}
    pool_changes = {k: v for k, v in changes.items() if k in pool.__dataclass_fields__}
    users = {name: replace(u, **user_changes) for name, u in pool.users.items()}
    pool = replace(pool, users=users, **pool_changes)
    return replace(config, pools={"simdb": pool})


# --- the control experiment -------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_scenarios_hold_without_pooling(seed: int) -> None:
    check(simulate(seed, clients=CLIENTS, engine_factory=DirectProxy))


def test_faults_without_pooling() -> None:
    """The fault machinery and the clients' tolerance work on a plain proxy too."""
    check(
        simulate(
            ONE_SEED[0],
            clients=CLIENTS // 2,
            behaviour=Behaviour(allowed=INFRA, recovered_at=5.0),
            faults=[kill_servers(0.3, 3.0, 0.1)],
            engine_factory=DirectProxy,
        )
    )


@pytest.mark.parametrize("engine", ["direct", "engine"])
def test_runs_are_replayable(engine: str) -> None:
    """Same seed, same run: event for event (what makes SIM_SEED replays work)."""
    factory = DirectProxy if engine == "direct" else None
    runs = [
        simulate(11, clients=40, engine_factory=factory, behaviour=behaviour(avoid=True))
        for _ in "ab"
    ]
    first, second = (r.world for r in runs)
    assert first.sched.events == second.sched.events > 1000
    assert list(first.trace) == list(second.trace)
    assert runs[0].behaviour.ledger == runs[1].behaviour.ledger
    assert runs[0].db.rows("ledger") == runs[1].db.rows("ledger")


_DIGEST = """
import hashlib, sys
sys.path.insert(0, sys.argv[1])
from sim.harness import simulate
from sim.scenarios import Behaviour, DEFAULT_WEIGHTS
weights = {k: (0 if k in ("named_duplicate", "reset", "discard") else w)
           for k, w in DEFAULT_WEIGHTS.items()}
run = simulate(5, clients=30, behaviour=Behaviour(weights=weights, bind_unknown=False))
text = "\\n".join(run.world.trace) + repr(sorted(run.behaviour.ledger.items()))
print(run.world.sched.events, hashlib.sha256(text.encode()).hexdigest())
"""


def test_runs_are_replayable_across_processes() -> None:
    """A seed replays in another process too, whatever PYTHONHASHSEED is: nothing in
    the engine, the fake servers or the simulator may depend on set or hash order."""
    here = os.path.dirname(os.path.abspath(__file__))
    digests = set()
    for hash_seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", _DIGEST, here],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests


def test_the_checks_catch_a_pooler_that_shares_a_server() -> None:
    """The ownership check (fake servers) and the answer checks (clients) both fire
    when a broken pooler runs two clients' transactions on one backend."""
    weights = {name: 0.0 for name in DEFAULT_WEIGHTS} | {"txn_commit": 1.0}
    run = simulate(
        3,
        clients=20,
        engine_factory=CrossedProxy,
        behaviour=Behaviour(weights=weights, reply_timeout=5.0),
        net=NetProfile(split_chance=0.0),
        stop_on_failure=False,
    )
    assert any("ran inside a transaction of" in p for p in run.db.violations), run.problems
    assert any(p.startswith("t=") and "client c" in p for p in run.world.failures)


# --- the engine ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_transaction_pooling(seed: int) -> None:
    check(simulate(seed, clients=CLIENTS, behaviour=behaviour()))


@pytest.mark.parametrize("seed", ONE_SEED)
def test_tiny_pool_tiny_statement_cache_shredded_network(seed: int) -> None:
    """One server per user, two cached statements, TCP chunks cut almost everywhere."""
    config = with_pool(make_config(pool_size=1), prepared_statements_cache_size=2)
    net = NetProfile(split_chance=0.95, max_delay=0.01)
    check(simulate(seed, clients=CLIENTS // 2, config=config, net=net, behaviour=behaviour()))


@pytest.mark.parametrize("seed", ONE_SEED)
def test_session_pooling(seed: int) -> None:
    config = with_pool(make_config(pool_size=8), pool_mode="session")
    check(simulate(seed, clients=CLIENTS // 2, config=config, behaviour=behaviour(session=True)))


@pytest.mark.parametrize("seed", ONE_SEED)
def test_server_churn(seed: int) -> None:
    """Short server lifetime and idle timeout, a minimum pool: servers come and go."""
    config = with_pool(make_config(), server_lifetime=300, idle_timeout=50, min_pool_size=2)
    check(simulate(seed, clients=CLIENTS, config=config, behaviour=behaviour()))


@pytest.mark.parametrize("seed", ONE_SEED)
def test_replicas_share_the_reads_and_never_see_a_write(seed: int) -> None:
    """Read/write splitting over a primary and two standbys; a standby that received a
    write would refuse it, and the run's checks count that as a failure."""
    config = make_config(replicas=2)
    run = simulate(seed, clients=CLIENTS, config=config, behaviour=behaviour())
    check(run)
    statements = {
        port: run.world.clusters["pg1", port].stats["statements"]
        for port in (PORT, PORT + 1, PORT + 2)
    }
    assert all(statements.values()), statements


@pytest.mark.parametrize("seed", ONE_SEED)
def test_a_replica_dies_and_comes_back(seed: int) -> None:
    """A standby dies at 1 s: only the clients whose statement ran on it get an error,
    it is banned (new reads go to the other one), and it gets reads again after
    ban_time once it is back."""
    config = make_config(replicas=2, ban_time=2, healthcheck_interval=500)
    run = simulate(
        seed,
        clients=CLIENTS,
        config=config,
        behaviour=behaviour(allowed=INFRA, recovered_at=3.0, arrival=6.0),
        faults=[crash_cluster(PORT + 1, 1.0, 1.5)],
    )
    check(run)
    assert run.world.clusters["pg1", PORT + 1].stats["crashes"] > 0
    assert run.behaviour.outcomes.get("error 08006", 0) <= 10, run.behaviour.outcomes


@pytest.mark.parametrize("seed", ONE_SEED)
def test_the_primary_dies_and_a_standby_is_promoted(seed: int) -> None:
    """Every server "auto": the primary dies at 1 s; writes fail fast (57P03, never a
    hang) until a standby is promoted at 2 s, then go to it; the old primary comes
    back as a standby. No write ever reaches a standby."""
    config = make_config(replicas=2, role="auto", healthcheck_interval=250, ban_time=2)
    run = simulate(
        seed,
        clients=CLIENTS,
        config=config,
        behaviour=behaviour(
            allowed=INFRA | {"57P03"}, max_error_latency=3.0, recovered_at=4.0, arrival=6.0
        ),
        faults=[crash_cluster(PORT, 1.0, 3.0), promote(PORT + 1, 2.0)],
    )
    check(run)
    assert run.behaviour.outcomes.get("error 57P03", 0) > 0, run.behaviour.outcomes
    assert run.world.engine.roles[("pg1", PORT + 1)] == "primary"


# --- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", ONE_SEED)
def test_servers_die_mid_transaction(seed: int) -> None:
    """Backends die (FATAL or silently) for three seconds; clients on them get an error,
    everyone else carries on, and afterwards the pool serves everyone again."""
    run = simulate(
        seed,
        clients=CLIENTS,
        behaviour=behaviour(allowed=INFRA, recovered_at=5.0),
        faults=[kill_servers(0.3, 3.0, 0.1)],
    )
    check(run)
    assert run.db.stats["crashes"] + run.world.stats["server_kills"] > 5


@pytest.mark.parametrize(
    "sqlstate, message",
    [("53300", "sorry, too many clients already"), ("28P01", "password authentication failed")],
)
def test_refused_logins_fail_waiting_clients_fast(sqlstate: str, message: str) -> None:
    """While the server refuses logins, clients waiting for a connection get its error
    within a second (connect_timeout is 5 s), not a hang; afterwards all is well."""
    run = simulate(
        ONE_SEED[0],
        clients=CLIENTS // 2,
        behaviour=behaviour(allowed=INFRA | {sqlstate}, max_error_latency=1.0, recovered_at=4.0),
        faults=[refuse_logins(0.5, 2.0, sqlstate, message)],
    )
    check(run)
    assert run.behaviour.outcomes.get(f"error {sqlstate}", 0) > 0


@pytest.mark.parametrize("seed", ONE_SEED)
def test_stalled_servers_time_out(seed: int) -> None:
    """A third of the backends hang: their clients get the pooler's statement timeout
    (57014) within statement_timeout, others keep working."""
    config = make_config(statement_timeout=2000, connect_timeout=1000)
    run = simulate(
        seed,
        clients=CLIENTS // 2,
        config=config,
        behaviour=behaviour(allowed=INFRA | {"57014"}, max_error_latency=4.0, recovered_at=6.0),
        faults=[stall_servers(0.5, 1.5, 0.3)],
    )
    check(run)
    assert run.behaviour.outcomes.get("error 57014", 0) > 0


@pytest.mark.parametrize("seed", ONE_SEED)
def test_stalled_logins_time_out(seed: int) -> None:
    """New backends never answer their startup packet for a second while others die:
    waiting clients get an error after connect_timeout instead of hanging."""
    config = make_config(statement_timeout=2000, connect_timeout=1000)
    run = simulate(
        seed,
        clients=CLIENTS // 2,
        config=config,
        behaviour=behaviour(allowed=INFRA | {"57014"}, max_error_latency=8.0, recovered_at=9.0),
        faults=[stall_servers(0.5, 1.5, 0.5, logins=True), kill_servers(0.5, 1.0, 0.05)],
    )
    check(run)


@pytest.mark.parametrize("seed", ONE_SEED)
def test_shutdown_drains_and_exits(seed: int) -> None:
    """SIGTERM at t=1: open transactions finish, everyone else gets 57P01, new
    connections are refused, Exit follows within seconds and closes every server."""
    run = simulate(
        seed,
        clients=CLIENTS,
        behaviour=behaviour(allowed=INFRA, allow_refused=True),
        faults=[shutdown_at(1.0)],
    )
    check(run)
    assert run.world.exited == 0


@pytest.mark.parametrize("seed", ONE_SEED)
def test_reload_shrinking_the_pools(seed: int) -> None:
    """A reload at t=1 halves pool_size: clients keep working and, once the old
    connections have drained, no pool holds more than the new size."""
    run = simulate(
        seed,
        clients=CLIENTS,
        config=make_config(pool_size=6),
        behaviour=behaviour(),
        faults=[reload_at(1.0, make_config(pool_size=3))],
    )
    check(run)


# --- the soak -------------------------------------------------------------------------------


def _soak_case(seed: int) -> dict[str, object]:
    rng = random.Random(f"soak:{seed}")
    pool_mode = rng.choice(["transaction"] * 4 + ["session"])
    replicas = rng.choice([0, 0, 2])
    config = with_pool(
        make_config(
            pool_size=rng.choice([1, 2, 4, 8]),
            statement_timeout=rng.choice([0, 5000]),
            replicas=replicas,
            role=rng.choice([None, "auto"]) if replicas else None,
            ban_time=2,
        ),
        pool_mode=pool_mode,
        prepared_statements_cache_size=rng.choice([1, 2, 3, 500]),
        server_lifetime=rng.choice([300, 3600000]),
        idle_timeout=rng.choice([50, 600000]),
        min_pool_size=rng.choice([0, 0, 1]),
    )
    net = NetProfile(
        split_chance=rng.choice([0.1, 0.5, 0.95]), max_delay=rng.choice([0.001, 0.01, 0.05])
    )
    faults = []
    allowed = {"53300"}
    if replicas and rng.random() < 0.5:
        port = PORT + rng.choice([0, 1])  # the primary comes back as the primary
        faults.append(crash_cluster(port, 0.5, 2.0, standby=port != PORT))
        allowed |= INFRA | {"57P03"}
    if rng.random() < 0.3:
        faults.append(kill_servers(0.5, 2.0, 0.2))
        allowed |= INFRA
        if replicas:
            # A probe connection killed twice in one round takes its server out (for
            # the primary: writes get 57P03 until the next round).
            allowed |= {"57P03"}
    if rng.random() < 0.2:
        faults.append(stall_servers(0.5, 1.0, 0.2))
        allowed |= INFRA | {"57014"}
        # A hung backend holds its client's query forever unless a timeout says
        # otherwise (PostgreSQL's and PgBouncer's behaviour as well).
        config = with_pool(config, statement_timeout=5000)
    return {
        "config": config,
        "net": net,
        "faults": faults,
        "behaviour": behaviour(session=pool_mode == "session", allowed=frozenset(allowed)),
    }


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(100, 100 + SOAK))
def test_soak(seed: int) -> None:
    if "SIM_SEED" in os.environ and int(os.environ["SIM_SEED"]) != seed:
        pytest.skip("SIM_SEED selects another seed")
    check(simulate(seed, clients=CLIENTS, **_soak_case(seed)))  # type: ignore[arg-type]


# --- shards ----------------------------------------------------------------------------------


def check_shards(run: ShardRun) -> None:
    if run.problems:
        pytest.fail(run.failure_report(), pytrace=False)


@pytest.mark.parametrize("seed", SEEDS)
def test_shards_route_every_request(seed: int) -> None:
    """Three shards, each with a standby, sha1 keys: SET SHARD, SET SHARDING KEY,
    comments, transactions and session mode, every answer from the right shard."""
    config = make_shard_config(replicas=1, function="sha1")
    check_shards(simulate_shards(seed, clients=SHARD_CLIENTS, config=config))


@pytest.mark.parametrize("seed", SEEDS)
def test_a_shard_dies_and_reloads_change_the_shard_list(seed: int) -> None:
    """Shard 1 dies at t=0.8 and is back at t=1.6 (its requests may fail, the others'
    must not); a reload at t=1.5 drops shard 2 (sessions on it get 22023 until they
    choose again), another at t=3 makes it four shards."""
    run = simulate_shards(
        seed,
        clients=SHARD_CLIENTS,
        reloads=[(1.5, make_shard_config(2)), (3.0, make_shard_config(4))],
        kills=[(1, 0.8, 1.6)],
        think=0.1,
    )
    check_shards(run)


def _soak_shards_case(seed: int) -> dict[str, object]:
    rng = random.Random(f"soak-shards:{seed}")
    function = rng.choice(["pg_bigint_hash", "sha1"])
    replicas = rng.choice([0, 0, 1])
    pool_size = rng.choice([1, 2, 4])

    def config(shards: int) -> Config:
        return make_shard_config(shards, function=function, replicas=replicas, pool_size=pool_size)

    first = rng.randint(1, 4)
    reloads, when = [], 0.0
    for _ in range(rng.randint(0, 3)):
        when += rng.uniform(0.3, 2.0)
        reloads.append((when, config(rng.randint(1, 5))))
    kills = []
    for _ in range(rng.randint(0, 2)):
        at = rng.uniform(0.2, 4.0)
        kills.append((rng.randrange(first), at, at + rng.uniform(0.05, 2.0)))
    net = rng.choice([NetProfile(), NetProfile(split_chance=0.9, max_delay=0.01)])
    return {
        "config": config(first),
        "reloads": reloads,
        "kills": kills,
        "net": net,
        "think": rng.choice([0.02, 0.05, 0.1]),
        "session_share": rng.choice([0.0, 0.25, 0.5]),
    }


def test_bug_login_right_after_a_reload_waited_forever() -> None:
    """Sharded soak seed 517 (525, 536, 556, 592 ... too, before the fix): a client
    logged in just after a reload that changed its pool, so it waited in the new pool's
    login_waiters for that pool's first server; meanwhile a client of the old pool moved
    to the new one at its checkout and copied the old server parameters into it, so the
    first server's login (which welcomes the waiters only when it sets the parameters)
    welcomed no one: 08006 client login timeout after 60 s. The copy now waits until
    nobody is in login_waiters."""
    check_shards(simulate_shards(517, clients=60, **_soak_shards_case(517)))  # type: ignore[arg-type]


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(500, 500 + max(SOAK // 4, 1)))
def test_soak_shards(seed: int) -> None:
    if "SIM_SEED" in os.environ and int(os.environ["SIM_SEED"]) != seed:
        pytest.skip("SIM_SEED selects another seed")
    check_shards(simulate_shards(seed, clients=SHARD_CLIENTS * 2, **_soak_shards_case(seed)))  # type: ignore[arg-type]


# --- minimal reproductions of bugs the simulation found ---------------------------------------


def test_bug_unknown_statement_is_an_error_not_fatal() -> None:
    """PostgreSQL answers Bind of an unknown statement with ERROR 26000 and the session
    goes on (drivers such as pgjdbc re-prepare and retry); so must a pooler."""
    (replies,), world = run_scripts([[Bind("", "nope"), Execute(), Sync()], "SELECT 1"])
    assert world.violations() == []
    err = replies[1].errors[0]
    assert (err.sqlstate, err.severity) == ("26000", "ERROR")
    assert replies[2].rows == [(b"1",)]


def test_bug_duplicate_parse_is_an_error_not_fatal() -> None:
    """A second Parse of a statement name is ERROR 42P05 in PostgreSQL, whatever the text."""
    steps = [[Parse("s", "SELECT 1"), Sync()], [Parse("s", "SELECT 2"), Sync()], "SELECT 1"]
    (replies,), _ = run_scripts(steps)
    err = replies[2].errors[0]
    assert (err.sqlstate, err.severity) == ("42P05", "ERROR")
    assert replies[3].rows == [(b"1",)]


def test_bug_duplicate_parse_with_the_same_text_is_42p05_too() -> None:
    """PostgreSQL does not compare the text: a second Parse of a name in use is 42P05.
    (The pooler answered ParseComplete; minor, but a driver relying on the error to
    detect its own statement-cache bugs is misled.)"""
    steps = [[Parse("s", "SELECT 1"), Sync()], [Parse("s", "SELECT 1"), Sync()]]
    (replies,), _ = run_scripts(steps)
    assert replies[2].codes == ["42P05"], replies[2].brief()


def test_bug_session_mode_client_leaving_mid_transaction_leaks_statements() -> None:
    """Session mode: the first client leaves inside a transaction. The server must be
    reset (server_reset_query) before the next client gets it, not just rolled back."""
    config = with_pool(make_config(pool_size=1), pool_mode="session")
    first = [[Parse("s", "SELECT 1"), Sync()], "BEGIN"]
    second = [[Parse("s", "SELECT 2"), Sync()]]
    (_, replies), _ = run_scripts(first, second, config=config, stagger=0.5)
    assert replies[1].codes == [], replies[1].brief()


@pytest.mark.parametrize("reset", ["RESET ALL", "DISCARD ALL"])
def test_bug_reset_all_forgets_the_clients_settings(reset: str) -> None:
    """After the client's RESET ALL / DISCARD ALL, its earlier SET must not come back
    in the next transaction (the pooler re-applied work_mem = 8MB)."""
    (replies,), _ = run_scripts(["SET work_mem = '8MB'", reset, "SHOW work_mem"])
    assert replies[3].rows == [(b"4MB",)]


def test_bug_set_with_a_comment_is_followed() -> None:
    """ORMs append comments (sqlcommenter); ``SET x = v /* ... */`` is still a plain SET
    and must follow the client to its next transaction like one without the comment."""
    (replies,), _ = run_scripts(["SET work_mem = '8MB' /* app=web */", "SHOW work_mem"])
    assert replies[2].rows == [(b"8MB",)]


def test_bug_client_leaving_during_checkout_sync_leaks_the_server() -> None:
    """Client 1 (application_name=a) sends a query and disconnects at once. The pooler
    has just sent the server ``SET application_name = 'a'`` to prepare it; when that
    answer comes, the client is gone and the server must go back to the pool. It was
    kept forever instead, so with pool_size 1 client 2 waited connect_timeout for 53300.
    """
    net = NetProfile(min_delay=0.001, max_delay=0.001, spike_chance=0, split_chance=0)
    (_, second), _ = run_scripts(
        [("vanish", "SELECT 1")],
        [0.5, "SELECT 2"],
        net=net,
        params=[{"application_name": "a"}, {}],
    )
    assert second[1].rows == [(b"2",)], second[1].brief()


def test_bug_internal_query_on_a_hung_server_is_never_timed_out() -> None:
    """The only server hangs. Client 2's checkout makes the pooler send it
    ``RESET work_mem`` (client 1 had set it); client 2 then gets the statement timeout,
    but the server, still owing the answer to the pooler's own query, is neither closed
    nor reused: client 3 can never be served again (53300 forever)."""
    config = make_config(pool_size=1, statement_timeout=1000, connect_timeout=1000)
    (_, second, third), _ = run_scripts(
        ["SET work_mem = '2MB'"],
        [0.5, "SELECT 2"],
        [3.0, "SELECT 3"],
        config=config,
        faults=[stall_servers(0.3, 0.31, 1.0)],
    )
    assert second[1].codes == ["57014"]
    assert third[1].rows == [(b"3",)], third[1].brief()


@pytest.mark.parametrize("user", ["md5u", "scramu"])
def test_bug_reload_fails_logins_in_progress(user: str) -> None:
    """A reload that changes the user's pool, arriving between the client's
    authentication messages, made the login fail with 28P01 "password authentication
    failed" (for SCRAM even after AuthenticationSASLFinal had proved the password)."""
    net = NetProfile(min_delay=0.001, max_delay=0.001, spike_chance=0, split_chance=0)
    (replies,), _ = run_scripts(
        ["SELECT 1"],
        net=net,
        users=[user],
        faults=[reload_at(0.0025, make_config(pool_size=2))],
    )
    assert replies[0].codes == [], replies[0].brief()
    assert replies[1].rows == [(b"1",)]


def test_bug_cancel_request_refused_while_draining() -> None:
    """During a graceful shutdown a client's long query still runs; its CancelRequest
    (a new connection) was refused like a new client, so the query ran to the end."""
    steps = [("send", "SELECT pg_sleep(1.5)"), 0.3, ("cancel",), ("wait", 1)]
    (replies,), _ = run_scripts(steps, faults=[shutdown_at(0.1)])
    assert replies[1].codes == ["57014"], replies[1].brief()


@pytest.mark.parametrize("seed", [3, 11])
def test_a_pinned_client_keeps_its_server_and_nobody_else_gets_it(seed: int) -> None:
    """Pinning (pgsansio.engine._pinning): two clients make a SET the pooler cannot
    follow (inside a transaction); each of their later statements runs on one server,
    and none of six busy clients' statements runs on either of those servers while
    they are pinned. Their RESET ALL unpins them, and they share the pool again."""
    pinned_script: list[Any] = ["BEGIN", "SET work_mem = '5MB'", "COMMIT"]
    pinned_script += ["SELECT pg_backend_pid()", 0.01] * 25 + [3.0, "RESET ALL"]
    busy_script: list[Any] = ["SELECT pg_backend_pid()", 0.005] * 30
    scripts = [pinned_script, pinned_script, *([busy_script] * 6)]
    outs, _ = run_scripts(*scripts, config=make_config(pool_size=4), seed=seed, stagger=0.02)

    def pids(replies: list[Any]) -> list[bytes]:
        return [r.rows[0][0] for r in replies[1:] if r.rows and len(r.rows[0]) == 1]

    held = []
    for replies in outs[:2]:
        seen = set(pids(replies))
        assert len(seen) == 1, seen  # every statement on one server
        held.extend(seen)
        assert replies[-1].codes == [], replies[-1].brief()  # RESET ALL succeeded
    assert held[0] != held[1]
    others = [pid for replies in outs[2:] for pid in pids(replies)]
    assert len(others) == 6 * 30
    assert not set(others) & set(held), "a busy client got a pinned client's server"
