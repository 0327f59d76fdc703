"""The simulation with shards: PgCat's sharding checked request by request.

:func:`simulate_shards` runs the engine with two sharded pools over the same shard
clusters (one fake cluster per shard, host ``shard<n>``, optionally with a standby that
shares its tables): ``simdb`` in transaction mode with ``shard_id_regex`` and
``sharding_key_regex`` comments, and ``simsess`` in session mode. Every backend's pid
says which cluster, so which shard, it belongs to (:func:`shard_of_pid`).

Each :class:`ShardClient` sends ``SET SHARD TO 'n'`` (sometimes out of range),
``SET SHARDING KEY TO 'k'``, ``SHOW SHARD``, queries with and without a shard comment,
transactions that try to move, and multi-statement shard commands, and checks each
answer against what it chose:

* a query is answered by a server of the shard it was routed to: the session's choice
  (``default_shard`` ``shard_0`` before any), the comment's shard, or the key's shard
  by :func:`pgsansio.sharding.shard_for_key` with the pool's function and shard count;
* every request gets exactly one answer, and it is its own (the row carries a value
  unique to the request; nothing is left over when the client leaves);
* the SQLSTATEs: 22023 for a shard out of range (a command, a comment, or a session's
  choice a reload removed, until the client chooses again), 25001 for a shard command
  inside a transaction, 0A000 for a session-mode move once the session has its server
  and for a shard command in a multi-statement query; a transaction stays on its
  server whatever its queries' comments say.

The shard count a request may see is known from :class:`ShardPlan`: between sending
and the answer a reload may have changed it, and then either count's answer is right.
Faults: a shard's clusters die and come back (:func:`kill_shard`): requests routed to
it meanwhile may fail with any error, requests to the other shards must not; reloads
that change ``simdb``'s shard list (:func:`reload_shards`). The end checks are the
world's and the fake servers' invariants, every client finished, and no backend left
in a transaction or busy.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NoReturn

from pgsansio.config.model import (
    Config,
    General,
    PoolConfig,
    ServerAddress,
    ShardConfig,
    UserConfig,
)
from pgsansio.protocol import NoticeResponse, ParameterStatus, Query, Terminate
from pgsansio.sharding import shard_for_key
from pgsansio.testing.fakepg import Database, FakeUser

from .client import Gone, Pause, Reply, Script, SimClient
from .harness import USERS, Fault, make_users, reload_at
from .world import NetProfile, SimFailure, World

TXN_POOL, SESSION_POOL = "simdb", "simsess"
PORT = 5432
SHARD_ID_RE = r"/\* shard_id: (\d+) \*/"
SHARDING_KEY_RE = r"/\* sharding_key: (-?\d+) \*/"
# Errors a request may get when no shard is at fault: the pool timed out.
ALWAYS_ALLOWED = frozenset({"53300"})


def shard_host(shard: int) -> str:
    return f"shard{shard}"


def shard_of_pid(pid: int) -> int:
    """Cluster ``(shard, replica)`` numbers its backends from
    ``100000 * (shard + 1) + 10000 * replica``."""
    return pid // 100000 - 1


def make_shard_config(
    shards: int = 3,
    *,
    pool_size: int = 4,
    function: str = "pg_bigint_hash",
    replicas: int = 0,
    connect_timeout: int = 2000,
    session_shards: int = 3,
) -> Config:
    """``simdb`` (transaction mode, ``shards`` shards, comment routing) and ``simsess``
    (session mode, ``session_shards`` shards) on the clusters ``shard<n>``."""

    def users(mode: str) -> dict[str, UserConfig]:
        return make_users(pool_size, connect_timeout=connect_timeout, pool_mode=mode)

    def shard_list(n: int, database: str) -> tuple[ShardConfig, ...]:
        return tuple(
            ShardConfig(
                i,
                database,
                (
                    ServerAddress(shard_host(i), PORT, "primary"),
                    *(
                        ServerAddress(shard_host(i), PORT + r, "replica")
                        for r in range(1, replicas + 1)
                    ),
                ),
            )
            for i in range(n)
        )

    def pool(name: str, mode: str, n: int, **more: Any) -> PoolConfig:
        return PoolConfig(
            name,
            users(mode),
            shard_list(n, name),
            pool_mode=mode,
            connect_timeout=connect_timeout,
            sharding_function=function,
            default_shard="shard_0",
            **more,
        )

    split = bool(replicas)
    txn = pool(
        TXN_POOL,
        "transaction",
        shards,
        shard_id_regex=SHARD_ID_RE,
        sharding_key_regex=SHARDING_KEY_RE,
        query_parser_enabled=split,
        query_parser_read_write_splitting=split,
    )
    sess = pool(SESSION_POOL, "session", session_shards)
    general = General(connect_timeout=connect_timeout, ban_time=1)
    return Config(general, {TXN_POOL: txn, SESSION_POOL: sess})


def make_shard_clusters(config: Config, seed: int) -> dict[tuple[str, int], Database]:
    """A fake cluster for every address any pool of ``config`` lists."""
    clusters: dict[tuple[str, int], Database] = {}
    users = {name: FakeUser(pw, server_auth) for name, (_, server_auth, pw) in USERS.items()}
    for pool in config.pools.values():
        for shard in pool.shards:
            primary: Database | None = None
            for address in shard.servers:
                key = (address.host, address.port)
                if key in clusters:
                    primary = primary or clusters[key]
                    continue
                replica = address.port - PORT
                db = Database(
                    users=users,
                    databases=[TXN_POOL, SESSION_POOL],
                    seed=seed,
                    name=f"{address.host}:{address.port}",
                    first_pid=100000 * (shard.index + 1) + 10000 * replica,
                    in_recovery=replica > 0,
                )
                if primary is None:
                    primary = db
                else:
                    db.tables = primary.tables  # replication without lag
                clusters[key] = db
    return clusters


@dataclass
class ShardPlan:
    """What the faults did when: ``simdb``'s shard count, and when each shard was down."""

    function: str
    counts: list[tuple[float, int]] = field(default_factory=list)  # (from, count)
    down: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    grace: float = 2.5  # after a shard is back, its pools may still fail (ban_time 1 s)
    session_count: int = 3
    outcomes: Counter[str] = field(default_factory=Counter)

    def count_at(self, when: float) -> int:
        count = self.counts[0][1]
        for start, n in self.counts:
            if start <= when:
                count = n
        return count

    def counts_between(self, start: float, end: float) -> set[int]:
        found = {self.count_at(start)}
        found.update(n for t, n in self.counts if start <= t <= end)
        return found

    def was_down(self, shard: int, start: float, end: float) -> bool:
        return any(a <= end and start <= b + self.grace for a, b in self.down.get(shard, []))


def kill_shard(plan: ShardPlan, shard: int, at: float, back: float) -> Fault:
    """Every cluster of ``shard`` dies at ``at`` (connections drop, connects are
    refused) and accepts connections again at ``back``."""

    def install(world: World, db: Database, rng: random.Random) -> None:
        clusters = [c for (host, _), c in world.clusters.items() if host == shard_host(shard)]

        def die() -> None:
            world.log(f"FAULT: shard {shard} dies")
            for cluster in clusters:
                cluster.accepting = False
            for link in list(world.servers.values()):
                if link.db in clusters and link.server is not None and not link.server.closed:
                    fatal = link.server.logged_in and rng.random() < 0.5
                    world.kill_server(link, fatal=fatal)

        def restart() -> None:
            world.log(f"FAULT over: shard {shard} accepts connections again")
            for cluster in clusters:
                cluster.accepting = True

        plan.down.setdefault(shard, []).append((at, back))
        world.sched.at(at, die)
        world.sched.at(back, restart)

    return install


def reload_shards(plan: ShardPlan, when: float, config: Config) -> Fault:
    """A reload at ``when`` to ``config`` (``simdb``'s shard count may change)."""
    inner = reload_at(when, config)

    def install(world: World, db: Database, rng: random.Random) -> None:
        plan.counts.append((when, len(config.pools[TXN_POOL].shards)))
        plan.counts.sort()
        inner(world, db, rng)

    return install


class ShardClient(SimClient):
    """Sessions on ``simdb`` or ``simsess`` that choose shards and check each answer."""

    def __init__(
        self,
        world: World,
        number: int,
        user: str,
        rng: random.Random,
        plan: ShardPlan,
        *,
        steps: tuple[int, int] = (10, 25),
        sessions: tuple[int, int] = (1, 2),
        think: float = 0.05,
        session_share: float = 0.25,
    ) -> None:
        super().__init__(world, number, user, USERS[user][2], rng)
        self.plan = plan
        self.steps = steps
        self.n_sessions = sessions
        self.think = think
        self.session_share = session_share
        self.seq = 0
        self.pool = TXN_POOL
        self.choice: int | None = None  # the session's shard, as we know it
        self.unsure = False  # a reload raced our choice: SHOW SHARD tells
        self.pid: int | None = None  # session mode: our server
        self.shaken = False  # session mode: our shard was down, our server may be new
        self.session_start = self.previous_sent = 0.0

    # --- helpers ---------------------------------------------------------------------

    @property
    def tag(self) -> str:
        return f"/*tag:{self.name}*/"

    def uniq(self) -> str:
        self.seq += 1
        return f"{self.name}.{self.sessions}.{self.seq}"

    def outcome(self, what: str) -> None:
        self.plan.outcomes[what] += 1

    def fail(self, what: str, reply: Reply | None = None) -> NoReturn:
        got = f"; got: {reply.brief()}" if reply is not None else ""
        raise SimFailure(f"{self.last_step}: {what}{got}")

    def counts(self, reply: Reply) -> set[int]:
        if self.pool == SESSION_POOL:
            return {self.plan.session_count}
        return self.plan.counts_between(reply.sent_at, reply.received_at)

    def request(self, sql: str) -> Script:
        """Send one Query and wait for its ReadyForQuery (exactly one answer)."""
        self.send(Query(sql))
        reply: Reply = yield from self.replies(1, 60.0)
        self.outcome("requests")
        previous, self.previous_sent = self.previous_sent, reply.sent_at
        if reply.closed or any(e.severity in ("FATAL", "PANIC") for e in reply.errors):
            # Session mode: the server the session holds may have died at any time
            # since it was taken (its FATAL is forwarded when it comes). Transaction
            # mode: the server of the previous request may have died just after its
            # answer, its FATAL still forwarded (reported as a pooler race).
            held = self.held_shard()
            since = self.session_start if self.pool == SESSION_POOL else previous
            shards = [held] if held is not None else range(8)
            if any(self.plan.was_down(x, since, reply.received_at) for x in shards):
                self.outcome("connection ended by a dead shard's server")
                raise Gone()
        return reply

    def infra(self, reply: Reply, shards: set[int]) -> bool:
        """An error (or a dropped connection) that a dead shard or a pool timeout
        explains; anything else is a failure. True: the caller gives up the scenario."""
        codes = set(reply.codes)
        if not codes and not reply.closed:
            return False
        if any(self.plan.was_down(s, reply.sent_at, reply.received_at) for s in shards):
            self.outcome("error (shard down): " + ",".join(sorted(c or "?" for c in codes)))
            if self.pool == SESSION_POOL:
                self.shaken = True
            if reply.closed:
                raise Gone()
            return True
        if codes <= ALWAYS_ALLOWED and not reply.closed:
            self.outcome("error 53300")
            return True
        self.fail(f"an error on shard(s) {sorted(shards)}, which were up", reply)
        return True

    def expected_shards(self, reply: Reply, routed: int | None = None) -> set[int | None]:
        """The shards a plain query may go to (None: a 22023 for a shard gone)."""
        out: set[int | None] = set()
        for n in self.counts(reply):
            want = routed if routed is not None else self.choice
            if want is None:
                want = 0
            out.add(want if want < n else None)
        return out

    def check_select(self, reply: Reply, v: str, allowed: set[int | None]) -> int | None:
        """A one-row answer (our value, a pid of one of ``allowed``'s shards) or a
        22023 if None is allowed; the pid, or None after an allowed error."""
        codes = reply.codes
        if codes == ["22023"] and None in allowed and not reply.closed:
            self.expect_status(reply, "I")
            self.outcome("22023 (shard out of range)")
            return None
        shards = {s for s in allowed if s is not None}
        if codes or reply.closed:
            self.infra(reply, shards)
            return None
        rows = reply.rows
        if len(rows) != 1 or rows[0][0] != v.encode() or len(reply.statuses) != 1:
            self.fail(f"one row ({v!r}, pid)", reply)
        pid = int(rows[0][1] or b"0")
        shard = shard_of_pid(pid)
        if shard not in shards:
            self.fail(f"an answer from shard {sorted(shards)}, not {shard} (pid {pid})", reply)
        self.outcome(f"answered by shard {shard}")
        return pid

    def expect_status(self, reply: Reply, status: str) -> None:
        if reply.status != status:
            self.fail(f"ReadyForQuery {status}", reply)

    def held_shard(self) -> int | None:
        """Session mode: the shard of the server the session holds, if we know it."""
        if self.pool != SESSION_POOL or self.pid is None:
            return None
        return shard_of_pid(self.pid)

    def select(self, prefix: str = "") -> tuple[str, str]:
        v = self.uniq()
        return v, f"{prefix}SELECT '{v}' AS v, pg_backend_pid() {self.tag}"

    def learn_shard(self) -> Script:
        """SHOW SHARD: what the pooler holds as our choice."""
        self.last_step = "show_shard"
        reply = yield from self.request("SHOW SHARD")
        if reply.errors or len(reply.rows) != 1 or reply.closed:
            self.fail("one SHOW SHARD row", reply)
        value = (reply.rows[0][0] or b"").decode()
        if self.unsure:
            self.choice = None if value == "unset" else int(value)
            self.unsure = False
        elif value != ("unset" if self.choice is None else str(self.choice)):
            self.fail(f"SHOW SHARD {self.choice}", reply)
        self.outcome("show_shard")

    # --- the life of a client ------------------------------------------------------------

    def main(self) -> Script:
        rng = self.rng
        for _ in range(rng.randint(*self.n_sessions)):
            self.pool = SESSION_POOL if rng.random() < self.session_share else TXN_POOL
            session = self.connect()
            self.choice, self.unsure, self.pid, self.shaken = None, False, None, False
            self.session_start = self.previous_sent = self.world.now
            try:
                self.last_step = "login"
                reply = yield from self.login(self.pool)
                if reply.closed or reply.status != "I":
                    # A pool's first login takes its server parameters from a server:
                    # with its shard down, it fails (the client tries again later).
                    down = range(8)
                    if not any(
                        self.plan.was_down(x, reply.sent_at, reply.received_at) for x in down
                    ):
                        self.fail("a login", reply)
                    self.outcome(f"login failed, a shard down: {reply.codes}")
                    raise Gone()
                steps = self.session_steps if self.pool == SESSION_POOL else self.txn_steps
                for _ in range(rng.randint(*self.steps)):
                    yield Pause(rng.expovariate(1 / self.think))
                    if self.unsure:
                        yield from self.learn_shard()
                    name = rng.choices(list(steps), list(steps.values()))[0]
                    self.last_step = name
                    yield from getattr(self, "st_" + name)()
                    if session.status != "I" and not session.closed:
                        self.last_step = "rollback after an error"
                        reply = yield from self.request(f"ROLLBACK {self.tag}")
                        if reply.closed:
                            raise Gone()  # its shard died (infra() checked that)
                        if reply.status != "I":
                            self.fail("ReadyForQuery I after ROLLBACK", reply)
                # A last SHOW SHARD: an answer sent twice would be taken for its answer.
                yield from self.learn_shard()
                left = [
                    e for e in self.events if not isinstance(e, (ParameterStatus, NoticeResponse))
                ]
                if left:
                    self.fail(f"nothing more after the last answer, not {left}")
                self.send(Terminate())
                self.close()
            except Gone:
                self.outcome("reconnect after a dead shard")
                self.close()
            yield Pause(rng.expovariate(1 / 0.05))

    txn_steps = {
        "query": 10,
        "set_shard": 4,
        "set_key": 4,
        "comment_id": 4,
        "comment_key": 4,
        "txn": 4,
        "show": 1,
        "multi": 0.5,
    }
    session_steps = {"query": 10, "set_shard": 3, "set_key": 2, "txn": 2, "show": 1}

    # --- steps ---------------------------------------------------------------------------

    def st_query(self) -> Script:
        v, sql = self.select()
        reply = yield from self.request(sql)
        pid = self.check_select(reply, v, self.expected_shards(reply))
        if self.pool == SESSION_POOL and pid is not None:
            if self.pid is not None and pid != self.pid and not self.shaken:
                self.fail(f"the session's server pid {self.pid}, not {pid}", reply)
            self.pid = pid

    def _set(self, command: str, shard_for: Any) -> Script:
        reply = yield from self.request(command)
        counts = self.counts(reply)
        # What each count makes of it: the shard chosen, or None (out of range).
        results = {shard_for(n) for n in counts}
        if reply.closed:
            self.fail("an answer to a shard command", reply)
        if reply.errors:
            code = reply.codes[0]
            held = self.held_shard()
            if code == "22023" and None in results:
                self.outcome("SET: 22023 (out of range)")
            elif code == "0A000" and (
                self.shaken
                or any(r is not None and r != held for r in results if held is not None)
            ):
                self.outcome("SET: 0A000 (session mode move)")
            else:
                self.fail(f"an answer to {command!r} for shard(s) {results}", reply)
            self.expect_status(reply, "I")
            return
        if reply.tags not in (["SET SHARD"], ["SET SHARDING KEY"]) or reply.status != "I":
            self.fail("SET SHARD / SET SHARDING KEY, ReadyForQuery I", reply)
        chosen = {r for r in results if r is not None}
        if not chosen:
            self.fail(f"22023 for {command!r}", reply)
        held = self.held_shard()
        if held is not None and not self.shaken and chosen != {held}:
            self.fail(f"0A000: the session has its server on shard {held}", reply)
        if len(chosen) == 1:
            self.choice, self.unsure = chosen.pop(), False
        else:
            self.unsure = True
        self.outcome("SET: ok")

    def st_set_shard(self) -> Script:
        top = max(self.plan.count_at(self.world.now), 1) if self.pool == TXN_POOL else 3
        n = self.rng.randrange(top + 1)
        if self.pool == SESSION_POOL and self.pid is not None and self.rng.random() < 0.5:
            n = shard_of_pid(self.pid)  # staying is allowed
        quoted = f"'{n}'" if self.rng.random() < 0.7 else str(n)
        yield from self._set(f"SET SHARD TO {quoted}", lambda c: n if n < c else None)

    def key(self) -> int:
        if self.rng.random() < 0.5:
            return self.rng.randrange(-1000, 1000)
        return self.rng.randrange(-(2**63), 2**63)

    def st_set_key(self) -> Script:
        k = self.key()
        f = self.plan.function
        yield from self._set(f"set sharding key to '{k}';", lambda c: shard_for_key(k, c, f))

    def st_comment_id(self) -> Script:
        top = max(self.plan.count_at(self.world.now), 1)
        n = self.rng.randrange(top + 1)
        v, sql = self.select(f"/* shard_id: {n} */ ")
        reply = yield from self.request(sql)
        self.check_select(reply, v, self.expected_shards(reply, n))

    def st_comment_key(self) -> Script:
        k = self.key()
        v, sql = self.select(f"/* sharding_key: {k} */ ")
        reply = yield from self.request(sql)
        allowed: set[int | None] = {
            shard_for_key(k, c, self.plan.function) for c in self.counts(reply)
        }
        self.check_select(reply, v, allowed)

    def st_show(self) -> Script:
        yield from self.learn_shard()

    def st_multi(self) -> Script:
        n = self.rng.randrange(3)
        reply = yield from self.request(f"SET SHARD TO '{n}'; SELECT 1 {self.tag}")
        if reply.codes != ["0A000"] or reply.status != "I" or reply.rows:
            self.fail("0A000 for a shard command in a multi-statement query", reply)
        self.outcome("multi: 0A000")

    def st_txn(self) -> Script:
        reply = yield from self.request(f"BEGIN {self.tag}")
        allowed = self.expected_shards(reply)
        if reply.errors or reply.closed:
            if reply.codes == ["22023"] and None in allowed:
                self.outcome("BEGIN: 22023 (shard gone)")
                return
            self.infra(reply, {s for s in allowed if s is not None})
            return
        if reply.status != "T":
            self.fail("ReadyForQuery T after BEGIN", reply)
        v, sql = self.select()
        reply = yield from self.request(sql)
        shards: set[int | None] = {s for s in allowed if s is not None}
        pid = self.check_select(reply, v, shards)
        if pid is None:
            return
        if reply.status != "T":
            self.fail("ReadyForQuery T", reply)
        if self.pool == SESSION_POOL:
            self.pid = pid
        for _ in range(self.rng.randint(1, 3)):
            what = self.rng.random()
            if what < 0.4:
                m = self.rng.randrange(3)
                counts = self.counts(reply)
                reply = yield from self.request(f"SET SHARD TO '{m}'")
                codes = {("25001" if m < c else "22023") for c in counts | self.counts(reply)}
                if self.plan.was_down(shard_of_pid(pid), reply.sent_at, reply.received_at) and (
                    reply.codes != ["25001"]
                ):
                    # Our server died meanwhile: the transaction is over, maybe the
                    # SET went through.
                    self.outcome("SET in a transaction whose shard died")
                    self.unsure = True
                    return
                if len(reply.codes) != 1 or reply.codes[0] not in codes or reply.status != "T":
                    self.fail(
                        f"one of {sorted(codes)} and ReadyForQuery T (in a transaction)", reply
                    )
                self.outcome(f"SET in a transaction: {reply.codes[0]}")
            else:
                # The transaction keeps its server; a comment naming a shard cannot
                # move it.
                comment = what < 0.6 and self.pool == TXN_POOL
                prefix = f"/* shard_id: {self.rng.randrange(3)} */ " if comment else ""
                v, sql = self.select(prefix)
                reply = yield from self.request(sql)
                again = self.check_select(reply, v, {shard_of_pid(pid)})
                if again is None:
                    return
                if again != pid:
                    self.fail(f"the transaction's server (pid {pid}), not pid {again}", reply)
                if comment:
                    self.outcome("comment in a transaction stays")
        end = "COMMIT" if self.rng.random() < 0.7 else "ROLLBACK"
        reply = yield from self.request(f"{end} {self.tag}")
        if reply.errors or reply.closed:
            self.infra(reply, {shard_of_pid(pid)})
            return
        if reply.status != "I" or reply.tags != [end]:
            self.fail(f"{end}, ReadyForQuery I", reply)
        if self.pool == SESSION_POOL:
            self.pid = pid
        self.outcome("txn")


@dataclass
class ShardRun:
    world: World
    clients: list[ShardClient]
    plan: ShardPlan
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"seed {self.world.seed}: {len(self.clients)} clients, t={self.world.now:.2f}s, "
            f"{self.world.sched.events} events, shard counts {self.plan.counts}, "
            f"down {self.plan.down}\noutcomes {dict(sorted(self.plan.outcomes.items()))}"
        )

    def failure_report(self, limit: int = 12) -> str:
        tail = int(os.environ.get("SIM_TAIL", "300" if self.world.verbose else "80"))
        shown = "\n".join(f"  - {p}" for p in self.problems[:limit])
        return (
            f"sharded simulation failed; replay with SIM_SEED={self.world.seed}\n"
            f"{self.summary()}\nproblems:\n{shown}\n{self.world.report(tail)}"
        )


def simulate_shards(
    seed: int,
    *,
    clients: int = 40,
    config: Config | None = None,
    reloads: list[tuple[float, Config]] = (),  # type: ignore[assignment]
    kills: list[tuple[int, float, float]] = (),  # type: ignore[assignment]
    net: NetProfile | None = None,
    horizon: float = 300.0,
    verbose: bool = os.environ.get("SIM_VERBOSE") == "1",
    **client_knobs: Any,
) -> ShardRun:
    """One sharded run from ``seed``; ``ShardRun.problems`` lists what broke.

    ``reloads``: (when, config) reloads; ``kills``: (shard, down at, back at). The
    session pool ``simsess`` must keep its shards across the reloads.
    """
    rng = random.Random(seed)
    config = config or make_shard_config()
    txn = config.pools[TXN_POOL]
    plan = ShardPlan(txn.sharding_function, [(0.0, len(txn.shards))])
    plan.session_count = len(config.pools[SESSION_POOL].shards)
    clusters: dict[tuple[str, int], Database] = {}
    for each in [config, *(c for _, c in reloads)]:
        for key, db in make_shard_clusters(each, seed).items():
            clusters.setdefault(key, db)
    faults = [reload_shards(plan, when, new) for when, new in reloads]
    faults += [kill_shard(plan, shard, at, back) for shard, at, back in kills]
    world = World(seed, config, clusters, net or NetProfile(), verbose=verbose)
    users = sorted(USERS)
    population = []
    for n in range(1, clients + 1):
        client = ShardClient(
            world,
            n,
            users[n % len(users)],
            random.Random(rng.getrandbits(64)),
            plan,
            **client_knobs,
        )
        client.start(rng.uniform(0, 0.5))
        population.append(client)
    first = next(iter(clusters.values()))
    for fault in faults:
        fault(world, first, random.Random(rng.getrandbits(64)))
    world.start()
    run = ShardRun(world, population, plan)
    try:
        world.run(horizon)
        if not world.failures:
            world.run(world.now + 30.0)
    except AssertionError:
        pass  # recorded in world.failures
    problems = world.violations()
    if not problems:
        for client in population:
            if not client.done:
                problems.append(f"client {client.name} never finished ({client.last_step})")
        for cluster in clusters.values():
            if cluster.stats["read_only_refusals"]:
                problems.append(f"a write reached {cluster.name} while it was a standby")
            for pid, server in cluster.backends.items():
                if server.in_txn or server._sleep is not None or server.status != "I":
                    problems.append(
                        f"backend {pid} on {cluster.name} left busy or in a transaction"
                    )
    run.problems = problems
    return run
