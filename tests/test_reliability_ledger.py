"""Crashes under load and memory over time, against the real daemon (``make reliability``).

Two long runs of issue 18's suite, behind the ``reliability`` marker:

- a commit ledger under TPC-B-like load while PostgreSQL crashes twice (``kill -9`` of
  one backend, which makes the postmaster restart every backend, then an immediate
  shutdown and start, what ``pg_ctl restart -m immediate`` does): every commit a client
  saw confirmed must be there, none half-applied, and the time from each crash to the
  first commit through the pooler is reported, for pgsansio and PgBouncer 1.18 alike;
- the daemon's RSS sampled every second while clients prepare statement after
  statement that the pooler's prepared-statement cache cannot keep: the slope after a
  warm-up is reported and bounded (a leak grows linearly with the statements seen).

Each test uses a cluster of its own: crashing the session's cluster would fail
whatever runs after it.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psycopg
import pytest
from _daemons import USER, Daemon, pgbouncer, pgsansio, report

from pgsansio.testing.cluster import TEST_DATABASE, Cluster

pytestmark = pytest.mark.reliability

ACCOUNTS = 100
WORKERS = 8
FRONTENDS = ("uvloop", "asyncio", "anyio", "trio", "curio")
RECOVERY_CAP = 20.0
"""Longest wait for the first commit after a crash (PgBouncer retries a failed server
login after ``server_login_retry``, 15 s by default)."""


def own_cluster(factory: Callable[..., Cluster]) -> Cluster:
    """A cluster with the test roles and database, ours to crash.

    Test clusters run with ``synchronous_commit = off`` (fast, and nothing crashes
    them); here a confirmed commit must survive a crash of PostgreSQL, so it is on.
    ``fsync`` stays off: the operating system does not crash, its cache survives.
    """
    pg = factory(settings={"synchronous_commit": "on"})
    pg.add_test_users()
    pg.create_database(TEST_DATABASE)
    return pg


@dataclass
class Ledger:
    """What the clients were told: commits confirmed (number -> time) and failures."""

    confirmed: dict[int, float] = field(default_factory=dict)
    failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def confirm(self, n: int) -> None:
        with self.lock:
            self.confirmed[n] = time.monotonic()

    def fail(self) -> None:
        with self.lock:
            self.failures += 1

    def first_commit_after(self, t: float) -> float | None:
        with self.lock:
            later = [when for when in self.confirmed.values() if when > t]
        return min(later) if later else None


def tpcb_client(port: int, worker: int, stop: threading.Event, ledger: Ledger) -> None:
    """One client: UPDATE an account and write a numbered ledger row, in one transaction.

    A commit counts only once COMMIT has returned; one that failed (or whose answer
    was lost) is in doubt and may or may not be in the database.
    """
    dsn = f"host=127.0.0.1 port={port} user={USER} dbname={TEST_DATABASE} connect_timeout=5"
    conn: psycopg.Connection[tuple[object, ...]] | None = None
    i = 0
    while not stop.is_set():
        n = worker * 10_000_000 + i
        i += 1
        account, delta = n % ACCOUNTS, n % 97 - 48
        try:
            if conn is None:
                conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=None)
            with conn.transaction():
                conn.execute(
                    "UPDATE accounts SET balance = balance + %s WHERE id = %s", (delta, account)
                )
                conn.execute(
                    "INSERT INTO ledger (n, account, delta) VALUES (%s, %s, %s)",
                    (n, account, delta),
                )
            ledger.confirm(n)
        except psycopg.Error:
            ledger.fail()
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.02)
    if conn is not None:
        conn.close()


@contextlib.contextmanager
def tpcb_load(port: int, ledger: Ledger) -> Iterator[None]:
    stop = threading.Event()
    threads = [
        threading.Thread(target=tpcb_client, args=(port, w, stop, ledger), daemon=True)
        for w in range(WORKERS)
    ]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(15)


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_one_backend(pg: Cluster) -> float:
    """kill -9 of one client backend: the postmaster then ends every other backend.

    Returns when every backend there was is gone: no commit after this point can
    have been made by the old backends.
    """
    pids = [
        int(pid)
        for pid in pg.execute(
            f"SELECT pid FROM pg_stat_activity WHERE usename = '{USER}' ORDER BY pid",
            dbname=TEST_DATABASE,
        ).split()
    ]
    assert pids, "no backend of the load to kill"
    os.kill(pids[0], signal.SIGKILL)
    while any(_alive(pid) for pid in pids):
        time.sleep(0.002)
    return time.monotonic()


def restart_immediate(pg: Cluster) -> float:
    """``pg_ctl restart -m immediate``: stop without a checkpoint, start (crash recovery).

    Returns when the server is down (the stop returned); the start is part of the
    recovery time.
    """
    pg.stop("immediate")
    down = time.monotonic()
    pg.start()
    return down


def recovery(ledger: Ledger, crash: Callable[[], float]) -> float | None:
    """Crash, then wait for the first commit confirmed once the server was down.

    Seconds from the crash to that commit, or None if none came within RECOVERY_CAP.
    """
    t0 = time.monotonic()
    down = crash()
    deadline = t0 + RECOVERY_CAP
    while time.monotonic() < deadline:
        first = ledger.first_commit_after(down)
        if first is not None:
            return first - t0
        time.sleep(0.005)
    return None


@dataclass
class Audit:
    confirmed: int
    in_doubt_committed: int
    missing: int
    half_applied: int


def audit(pg: Cluster, ledger: Ledger) -> Audit:
    """Confirmed commits against the ledger; each balance against its ledger rows."""
    with psycopg.connect(pg.dsn(dbname=TEST_DATABASE)) as conn:
        rows = {n for (n,) in conn.execute("SELECT n FROM ledger")}
        disagree = conn.execute(
            "SELECT count(*) FROM accounts a LEFT JOIN "
            "(SELECT account, sum(delta) AS s FROM ledger GROUP BY account) l "
            "ON l.account = a.id WHERE a.balance <> coalesce(l.s, 0)"
        ).fetchone()
    confirmed = set(ledger.confirmed)
    assert disagree is not None
    return Audit(
        confirmed=len(confirmed),
        in_doubt_committed=len(rows - confirmed),
        missing=len(confirmed - rows),
        half_applied=int(disagree[0]),
    )


def fmt(seconds: float | None) -> str:
    return f"none within {RECOVERY_CAP:.0f} s" if seconds is None else f"{seconds:.2f} s"


DAEMONS: dict[str, Callable[[Cluster, pathlib.Path], contextlib.AbstractContextManager[Daemon]]]
DAEMONS = {
    **{
        f"pgsansio {fe}": lambda pg, work, fe=fe: pgsansio(pg, work, frontend=fe, pool_size=4)
        for fe in FRONTENDS
    },
    "PgBouncer 1.18": lambda pg, work: pgbouncer(pg, pool_size=4),
}


@pytest.mark.parametrize("daemon", list(DAEMONS))
def test_commit_ledger_survives_backend_kill_and_immediate_restart(
    pg_cluster_factory: Callable[..., Cluster], daemon: str
) -> None:
    started = time.monotonic()
    pg = own_cluster(pg_cluster_factory)
    pg.execute(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);"
        f"INSERT INTO accounts SELECT g, 0 FROM generate_series(0, {ACCOUNTS - 1}) g;"
        "CREATE TABLE ledger (n bigint PRIMARY KEY, account int NOT NULL, delta int NOT NULL);"
        "GRANT ALL ON accounts, ledger TO PUBLIC;",
        dbname=TEST_DATABASE,
    )
    ledger = Ledger()
    with (
        tempfile.TemporaryDirectory(prefix="pgsansio-ledger-") as work,
        DAEMONS[daemon](pg, pathlib.Path(work)) as d,
        tpcb_load(d.port, ledger),
    ):
        time.sleep(3)
        before = len(ledger.confirmed)
        assert before > 0, f"{daemon}: no commit before any crash"
        after_kill = recovery(ledger, lambda: kill_one_backend(pg))
        time.sleep(2)
        after_restart = recovery(ledger, lambda: restart_immediate(pg))
        time.sleep(2)
    result = audit(pg, ledger)
    elapsed = time.monotonic() - started
    report(
        f"commit ledger under crashes, {daemon} ({WORKERS} clients, pool_size 4)",
        [
            ("confirmed commits", f"{result.confirmed:,}"),
            ("missing / half-applied", f"{result.missing} / {result.half_applied}"),
            ("in doubt, found committed", f"{result.in_doubt_committed}"),
            ("client errors", f"{ledger.failures}"),
            ("recovery after kill -9 of a backend", fmt(after_kill)),
            ("recovery after restart -m immediate", fmt(after_restart)),
            ("test wall time", f"{elapsed:.1f} s"),
        ],
    )
    assert result.missing == 0, f"{daemon}: {result.missing} confirmed commits are missing"
    assert result.half_applied == 0, f"{daemon}: {result.half_applied} balances disagree"
    if daemon.startswith("pgsansio"):
        assert after_kill is not None and after_kill < 5, fmt(after_kill)
        assert after_restart is not None and after_restart < 5, fmt(after_restart)
    assert elapsed < 60


RSS_SECONDS = 45.0
WARM_UP = 10.0
CHURN_WORKERS = 4
CACHE_SIZE = 8
LEAK_BYTES_PER_STATEMENT = 64
"""The bound on the RSS slope, per statement prepared: far below what keeping any
trace of a statement costs (its text alone, a dict entry and a name run to well over
100 bytes), so a cache or a name map that never forgets fails it by a wide margin,
while the allocator's noise over 35 s of tens of thousands of statements passes."""


def churn_client(
    port: int, worker: int, stop: threading.Event, counts: list[int], keep: bool
) -> None:
    """Prepare statement after statement, each text new: every one misses the cache.

    psycopg keeps its 100 latest statements and closes older ones; with ``keep`` it
    closes none, so the pooler must remember every one (the control: growth).
    """
    dsn = f"host=127.0.0.1 port={port} user={USER} dbname={TEST_DATABASE}"
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        if keep:
            conn.prepared_max = 10**9
        k = 0
        while not stop.is_set():
            row = conn.execute(f"SELECT %s::int + {k} /* w{worker} */", (k,)).fetchone()
            assert row == (2 * k,)
            k += 1
        counts[worker] = k


def slope_per_minute(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, KiB) samples, in KiB per minute."""
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_r = sum(r for _, r in samples) / n
    num = sum((t - mean_t) * (r - mean_r) for t, r in samples)
    den = sum((t - mean_t) ** 2 for t, _ in samples)
    return 60 * num / den


@dataclass
class Trend:
    statements: int
    samples: list[tuple[float, int]]
    steady: list[tuple[float, int]]
    slope: float
    bytes_per_statement: float


def rss_trend(pg: Cluster, seconds: float, warm_up: float, *, keep: bool) -> Trend:
    """Churn for ``seconds``, RSS sampled every second; the slope after ``warm_up``."""
    stop = threading.Event()
    counts = [0] * CHURN_WORKERS
    samples: list[tuple[float, int]] = []
    with (
        tempfile.TemporaryDirectory(prefix="pgsansio-rss-") as work,
        pgsansio(
            pg,
            pathlib.Path(work),
            pool_size=2,
            pool={"prepared_statements_cache_size": CACHE_SIZE},
        ) as d,
    ):
        threads = [
            threading.Thread(
                target=churn_client, args=(d.port, w, stop, counts, keep), daemon=True
            )
            for w in range(CHURN_WORKERS)
        ]
        for t in threads:
            t.start()
        start = time.monotonic()
        try:
            while (now := time.monotonic() - start) < seconds:
                samples.append((now, d.rss_kib()))
                time.sleep(1)
        finally:
            stop.set()
            for t in threads:
                t.join(15)
        assert d.proc.poll() is None, "the daemon died under the churn"
    assert all(counts), f"a client prepared nothing: {counts}"
    statements = sum(counts)
    steady = [(t, r) for t, r in samples if t >= warm_up]
    slope = slope_per_minute(steady)
    per_minute = statements / seconds * 60
    return Trend(statements, samples, steady, slope, slope * 1024 / per_minute)


def report_trend(title: str, trend: Trend, seconds: float) -> None:
    first, settled, last = trend.samples[0][1], trend.steady[0][1], trend.samples[-1][1]
    report(
        title,
        [
            ("statements prepared", f"{trend.statements:,} in {seconds:.0f} s"),
            ("RSS start / after warm-up / end", f"{first:,} / {settled:,} / {last:,} KiB"),
            ("slope after warm-up", f"{trend.slope:+.0f} KiB/min"),
            ("per statement", f"{trend.bytes_per_statement:+.2f} bytes"),
        ],
    )


def test_rss_trend_under_prepared_statement_churn(pg15: Cluster) -> None:
    """Prepared statements beyond the cache for 45 s: RSS flat after a warm-up."""
    trend = rss_trend(pg15, RSS_SECONDS, WARM_UP, keep=False)
    report_trend(
        f"RSS trend, pgsansio uvloop, prepare on every statement, each text new "
        f"(prepared_statements_cache_size = {CACHE_SIZE}, {CHURN_WORKERS} clients)",
        trend,
        RSS_SECONDS,
    )
    assert trend.bytes_per_statement < LEAK_BYTES_PER_STATEMENT, (
        f"RSS grows {trend.slope:.0f} KiB/min, {trend.bytes_per_statement:.1f} bytes per statement"
    )


def test_control_rss_trend_grows_when_statements_are_kept(pg15: Cluster) -> None:
    """The control: clients that never close a statement make the pooler remember each.

    The slope must then pass the bound, or the measurement could not see a leak.
    """
    trend = rss_trend(pg15, 20.0, 5.0, keep=True)
    report_trend("RSS trend, control: clients keep every statement prepared", trend, 20.0)
    assert trend.bytes_per_statement > LEAK_BYTES_PER_STATEMENT, (
        f"the control grew only {trend.bytes_per_statement:.1f} bytes per statement"
    )
