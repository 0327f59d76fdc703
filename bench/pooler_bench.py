#!/usr/bin/env python3
r"""``make bench``: pgbench through pgsansio (every frontend), through PgBouncer, and direct.

One run starts a throwaway PostgreSQL cluster, loads ``pgbench -i``, starts one
pgsansio process per installed frontend and one PgBouncer, all in transaction mode
with the same pool size, and then runs every workload against every target. The
targets of a workload take turns (round-robin, and in reverse order on every second
round), so a machine that gets slower or faster during the run hits all of them
alike; on a shared machine that matters more than the length of each run.

Figures, per workload and target:

* TPS and average latency: pgbench's own summary, averaged over the rounds (weighted
  by transactions for the latency).
* p99 latency: from pgbench's per-transaction log (``-l``), sampled with
  ``--sampling-rate`` (10 %, all transactions for ``-C``) so that logging stays cheap;
  the samples of all rounds are merged. ``-r`` gives per-statement averages only, and
  ``--aggregate-interval`` gives min/max/sum but no percentiles, so the sampled log is
  the cheapest way to a percentile.
* ratio to PgBouncer: the target's TPS divided by PgBouncer's in the same workload.
* pooler CPU per transaction: utime + stime of the pooler process (all its threads)
  from ``/proc/<pid>/stat`` before and after each pgbench run, divided by the
  transactions pgbench completed. Only the two poolers have it; PostgreSQL's and
  pgbench's own CPU is not counted.

Everything shares one machine (pgbench, the poolers and PostgreSQL), so a pooler
that burns CPU also slows PostgreSQL down: that is part of what is measured.
PgBouncer has no ``max_prepared_statements`` before 1.21; with an older one the
``-M prepared`` workload has no PgBouncer figure, and the run says so.

Sharded workloads (optional, by name only: ``--workloads "-S sharded c32"``; the
cross-shard read ``"count(*) fan-out c8"``, ``SELECT count(*), max(abalance)`` with no
key, runs on pool ``shard_fanout`` with ``cross_shard = "fan_out"``): the cost
of routing each query to one of three shards. Three more databases on the same cluster
(``bench_shard_0`` .. ``_2``) each hold only their REMAINDER of a ``pgbench_accounts``
hash-partitioned by ``aid`` (``MODULUS 3``, as PgCat's sharding tests lay them out), and
one more pgsansio process per frontend (``pgsansio-<frontend>-3shards``) serves two
3-shard pools: ``shard_comment`` routes by a ``/* sharding_key: n */`` comment
(``sharding_key_regex``), ``shard_auto`` by ``automatic_sharding_key =
"pgbench_accounts.aid"`` (the query parser reads the key from the WHERE clause). The
pgbench script is -S's own (``\set aid random(1, 100000 * :scale)``, one SELECT of
``abalance`` by ``aid``) with the comment for ``shard_comment``, and ends in ``\gset``:
a query sent to the wrong shard finds no row and pgbench aborts that client, so a run
that completes was routed right. The same script runs through the plain one-pool
pgsansio of the same frontend and directly (the unsplit table), in the same rounds, and
the run prints the routing cost: TPS and pooler CPU us/tx, sharded vs one pool. The
shards' pools hold ``ceil(pool size / 3)`` servers each (``--shard-pool-size``), so the
sharded pooler has about as many server connections as the one pool. PgBouncer cannot
route by shard and does not run these workloads (nor does ``--baseline-tree``).

Run it through ``make bench`` (``BENCH_SECONDS=n``, ``BENCH_FRONTENDS=asyncio,uvloop``,
``BENCH_ARGS=--quick``), or directly: ``.venv/bin/python bench/pooler_bench.py --help``.
The pure parts (parsing pgbench's output and log, ``/proc/<pid>/stat``, the table and
Markdown writers) are tested in ``tests/test_pooler_bench.py`` on recorded text.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.util
import os
import pathlib
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Final

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _pgbench_results import (
    CLK_TCK,
    DIRECT,
    PGBOUNCER,
    BenchError,
    Cell,
    markdown_report,
    parse_pgbench_log,
    parse_pgbench_output,
    parse_proc_stat,
    pgbench_error,
    plot_ratios,
    ratio_series,
    result_rows,
    text_table,
)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from pgsansio.testing.cluster import Cluster, ClusterError

ROOT: Final = pathlib.Path(__file__).resolve().parent.parent
RESULTS: Final = ROOT / "bench" / "results"
USER: Final = "bench"
PASSWORD: Final = "bench"
DATABASE: Final = "bench"
#: Name suffix of the targets run from --baseline-tree.
BASELINE_SUFFIX: Final = "@baseline"
#: Default time budget of the pgbench runs (seconds), when --seconds is not given.
BUDGET: Final = 660.0


# ---------------------------------------------------------------------------- workloads


@dataclasses.dataclass(frozen=True)
class Workload:
    """One pgbench invocation, as it runs against every target."""

    name: str
    args: tuple[str, ...]
    clients: int
    jobs: int = 2
    sampling: float = 0.1
    prepared: bool = False
    tpcb: bool = False
    #: pgbench script (``-f script_file``, written to pgbench's working directory).
    script: str = ""
    script_file: str = ""
    #: The 3-shard pool of the sharded pgsansio this workload is about ("": none).
    shard_pool: str = ""

    def argv(self, seconds: float) -> list[str]:
        return [
            *self.args,
            "-n",
            "-c",
            str(self.clients),
            "-j",
            str(self.jobs),
            "-T",
            str(max(1, round(seconds))),
        ]


SHARDS: Final = 3
SHARD_DATABASES: Final = tuple(f"{DATABASE}_shard_{r}" for r in range(SHARDS))
#: Name suffix of the 3-shard pgsansio targets (one process per frontend).
SHARDED_SUFFIX: Final = "-3shards"
COMMENT_POOL: Final = "shard_comment"
AUTO_POOL: Final = "shard_auto"
FANOUT_POOL: Final = "shard_fanout"
# -S's own script, the key in a comment for sharding_key_regex; \gset fails the client
# (no row) when a query reaches a shard that does not hold its aid.
COMMENT_SCRIPT: Final = """\
\\set aid random(1, 100000 * :scale)
/* sharding_key: :aid */ SELECT abalance FROM pgbench_accounts WHERE aid = :aid \\gset
"""
AUTO_SCRIPT: Final = """\
\\set aid random(1, 100000 * :scale)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid \\gset
"""
# A read with no key: on the fan-out pool it runs on the three shards, merged.
FANOUT_SCRIPT: Final = """\
SELECT count(*), max(abalance) FROM pgbench_accounts \\gset
"""


def sharded_workloads(scale: int) -> list[Workload]:
    """The optional routing-cost workloads: run only when named in --workloads."""
    return [
        Workload(
            "-S sharded c32",
            ("-f", "sharded_comment.sql", "-s", str(scale)),
            32,
            script=COMMENT_SCRIPT,
            script_file="sharded_comment.sql",
            shard_pool=COMMENT_POOL,
        ),
        Workload(
            "-S sharded auto-key c32",
            ("-f", "sharded_auto.sql", "-s", str(scale)),
            32,
            script=AUTO_SCRIPT,
            script_file="sharded_auto.sql",
            shard_pool=AUTO_POOL,
        ),
        Workload(
            "count(*) fan-out c8",
            ("-f", "fanout_count.sql", "-s", str(scale)),
            8,
            script=FANOUT_SCRIPT,
            script_file="fanout_count.sql",
            shard_pool=FANOUT_POOL,
        ),
    ]


def workloads(pool_size: int) -> list[Workload]:
    """The workloads of a full run, in order.

    ``-M prepared`` runs with one pgbench thread per client when clients outnumber the
    pool: pgbench prepares with a blocking call, which would stall the other clients
    of its thread while that client waits for a server (see the README's known limits).
    """
    return [
        Workload("-S c32", ("-S",), 32),
        Workload("-S c200", ("-S",), 200),
        Workload("-S -C c16", ("-S", "-C"), 16, sampling=1.0),
        Workload("TPC-B c32", (), 32, tpcb=True),
        Workload("-S -M extended c32", ("-S", "-M", "extended"), 32),
        Workload(
            "-S -M prepared c32",
            ("-S", "-M", "prepared"),
            32,
            jobs=32 if pool_size < 32 else 2,
            prepared=True,
        ),
    ]


QUICK_WORKLOADS: Final = ("-S c32", "-S -C c16")


# ------------------------------------------------------------------------- processes


def free_port() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port != 5432:
            return port
    raise BenchError("no free TCP port on 127.0.0.1")


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, log: pathlib.Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text("utf-8", "replace").strip().splitlines()[-5:]
            raise BenchError(f"{what} exited with status {proc.returncode}: {' | '.join(tail)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise BenchError(f"{what} did not accept connections on port {port} within 30 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def frontends_to_run(requested: str | None) -> tuple[list[str], list[str]]:
    """(frontends to bench, reasons for those left out), from FRONTENDS at run time."""
    from pgsansio.frontends import FRONTENDS  # noqa: PLC0415

    known = [name for name in FRONTENDS if name != "auto"]
    wanted = [n.strip() for n in requested.split(",") if n.strip()] if requested else known
    chosen, left_out = [], []
    for name in wanted:
        if name not in known:
            raise BenchError(f"unknown frontend {name!r}; pgsansio has {', '.join(known)}")
        if name != "asyncio" and importlib.util.find_spec(name) is None:
            left_out.append(f"pgsansio[{name}]: the {name!r} package is not installed")
            continue
        chosen.append(name)
    return chosen, left_out


def pgsansio_toml(listen: int, pg_port: int, pool_size: int) -> str:
    return f"""\
[general]
host = "127.0.0.1"
port = {listen}
admin_username = "admin"
admin_password = "admin"
shutdown_timeout = 2000

[pools.{DATABASE}]
pool_mode = "transaction"

[pools.{DATABASE}.users.0]
username = "{USER}"
password = "{PASSWORD}"
auth_type = "md5"
pool_size = {pool_size}

[pools.{DATABASE}.shards.0]
database = "{DATABASE}"
servers = [["127.0.0.1", {pg_port}, "primary"]]
"""


def sharded_pgsansio_toml(listen: int, pg_port: int, pool_size: int) -> str:
    """The 3-shard pgsansio: pool ``shard_comment`` (the key in a comment) and pool
    ``shard_auto`` (the key read from the query), each over the shard databases."""
    out = [
        f"""\
[general]
host = "127.0.0.1"
port = {listen}
admin_username = "admin"
admin_password = "admin"
shutdown_timeout = 2000
"""
    ]
    routing = {
        COMMENT_POOL: "sharding_key_regex = '/\\* sharding_key: (\\d+) \\*/'",
        AUTO_POOL: 'query_parser_enabled = true\nautomatic_sharding_key = "pgbench_accounts.aid"',
        FANOUT_POOL: 'query_parser_enabled = true\ncross_shard = "fan_out"',
    }
    for pool, lines in routing.items():
        out.append(
            f"""
[pools.{pool}]
pool_mode = "transaction"
sharding_function = "pg_bigint_hash"
{lines}

[pools.{pool}.users.0]
username = "{USER}"
password = "{PASSWORD}"
auth_type = "md5"
pool_size = {pool_size}
"""
        )
        for r, name in enumerate(SHARD_DATABASES):
            out.append(
                f"""
[pools.{pool}.shards.{r}]
database = "{name}"
servers = [["127.0.0.1", {pg_port}, "primary"]]
"""
            )
    return "".join(out)


def shard_sql(r: int, scale: int) -> str:
    """Shard ``r``'s pgbench_accounts: its REMAINDER of aid 1 .. 100000 * scale, in a
    table hash-partitioned like PgCat's sharding tests (a misplaced row is refused)."""
    return f"""\
CREATE TABLE pgbench_accounts (aid bigint NOT NULL, bid int, abalance int, filler char(84))
    PARTITION BY HASH (aid);
CREATE TABLE pgbench_accounts_{r} PARTITION OF pgbench_accounts
    FOR VALUES WITH (MODULUS {SHARDS}, REMAINDER {r});
INSERT INTO pgbench_accounts
    SELECT aid, (aid - 1) / 100000 + 1, 0, '' FROM generate_series(1, {100000 * scale}) AS aid
    WHERE satisfies_hash_partition('pgbench_accounts'::regclass, {SHARDS}, {r}, aid::bigint);
ALTER TABLE pgbench_accounts ADD PRIMARY KEY (aid);
GRANT SELECT ON pgbench_accounts, pgbench_accounts_{r} TO {USER};
VACUUM ANALYZE pgbench_accounts_{r};
"""


def pgbouncer_ini(listen: int, pg_port: int, pool_size: int, prepared: bool, dir_: str) -> str:
    extra = "max_prepared_statements = 200\n" if prepared else ""
    return f"""\
[databases]
{DATABASE} = host=127.0.0.1 port={pg_port} dbname={DATABASE}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = md5
auth_file = {dir_}/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 2000
log_connections = 0
log_disconnections = 0
logfile = {dir_}/pgbouncer.log
{extra}"""


def pgbouncer_version(binary: str) -> tuple[str, tuple[int, ...]]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).strip().splitlines()[0] if out.stdout or out.stderr else ""
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", first)
    numbers = tuple(int(g) for g in match.groups() if g is not None) if match else ()
    return first or "unknown", numbers


def find_or_install_pgbouncer(install: bool) -> tuple[str | None, str]:
    """(path of pgbouncer, '') or (None, why there is none)."""
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/local/bin/pgbouncer") if os.access(p, os.X_OK)),
        None,
    )
    if found:
        return found, ""
    if not install:
        return None, "PgBouncer is not installed and --no-install was given"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, (
            "PgBouncer is not installed, and it can only be installed automatically as root "
            "with apt-get; install it (apt-get install pgbouncer, dnf install pgbouncer, "
            "brew install pgbouncer) and run again"
        )
    print("Installing PgBouncer: apt-get install -y pgbouncer ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(
        ["apt-get", "install", "-y", "pgbouncer"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-2:])
        return None, f"apt-get install -y pgbouncer failed ({tail}); try apt-get update first"
    found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    return (
        (found, "") if os.access(found, os.X_OK) else (None, "pgbouncer not found after install")
    )


@dataclasses.dataclass
class Target:
    """Somewhere pgbench connects to; ``proc`` is the pooler whose CPU time is counted."""

    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    sharded: bool = False

    def ticks(self) -> int | None:
        return cpu_ticks(self.proc.pid) if self.proc is not None else None


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return parse_proc_stat(f.read())


def machine_info(pg_version: str, bouncer: str) -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    version = ["pgbench", "--version"]
    pgbench = subprocess.run(version, capture_output=True, text=True, check=False).stdout
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": cpu,
        "cores": str(os.cpu_count()),
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "PostgreSQL": pg_version,
        "pgbench": pgbench.strip(),
        "PgBouncer": bouncer,
        "kernel": platform.release(),
    }


def loadavg() -> float:
    with open("/proc/loadavg", encoding="ascii") as f:
        return float(f.read().split()[0])


def pg_env() -> dict[str, str]:
    """The caller's environment without PG* variables, plus the benchmark's password."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = PASSWORD
    return env


def run_pgbench(
    workload: Workload,
    port: int,
    seconds: float,
    logdir: pathlib.Path,
    database: str = DATABASE,
) -> tuple[str, int, list[float]]:
    """Run pgbench once; (its output, exit status, latency samples in ms)."""
    prefix = logdir / "tx"
    for old in logdir.glob("tx.*"):
        old.unlink()
    argv = ["pgbench", *workload.argv(seconds), "-h", "127.0.0.1", "-p", str(port), "-U", USER]
    argv += ["-l", f"--log-prefix={prefix}", f"--sampling-rate={workload.sampling}", database]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=pg_env(),
        timeout=seconds + 120,
        cwd=logdir,
        check=False,
    )
    samples: list[float] = []
    for path in logdir.glob("tx.*"):
        with open(path, encoding="ascii", errors="replace") as f:
            samples.extend(parse_pgbench_log(f))
        path.unlink()
    return proc.stdout + proc.stderr, proc.returncode, samples


def order_for(targets: Sequence[str], workload_index: int, round_index: int) -> list[str]:
    """Rotate by workload; every second round runs in reverse, so positions even out."""
    k = workload_index % len(targets)
    order = list(targets[k:]) + list(targets[:k])
    return order[::-1] if round_index % 2 else order


class Bench:
    """One benchmark run: the cluster, the poolers in front of it, and the results."""

    def __init__(self, args: argparse.Namespace, chosen: list[Workload], rounds: int) -> None:
        from pgsansio.testing.cluster import _get_run_as  # noqa: PLC0415

        self.args = args
        self.chosen = chosen
        self.rounds = rounds
        self.frontends, self.omitted = frontends_to_run(args.frontends)
        if all(w.shard_pool for w in chosen):
            # Only sharded workloads: PgBouncer runs none of them (it cannot route).
            # Left out says so (below); no PgBouncer column note.
            self.bouncer_bin, why_not = None, ""
        else:
            self.bouncer_bin, why_not = find_or_install_pgbouncer(not args.no_install)
        if self.bouncer_bin is None:
            if why_not:
                self.omitted.append(f"PgBouncer column: {why_not}")
                print(f"pooler_bench: no PgBouncer column: {why_not}", file=sys.stderr)
            self.bouncer_text, version = "none", ()
        else:
            self.bouncer_text, version = pgbouncer_version(self.bouncer_bin)
        self.bouncer_prepared = version >= (1, 21)
        self.targets = [f"pgsansio-{f}" for f in self.frontends]
        if args.baseline_tree:
            self.targets += [f"pgsansio-{f}{BASELINE_SUFFIX}" for f in self.frontends]
        self.targets += [PGBOUNCER] if self.bouncer_bin else []
        self.targets.append(DIRECT)
        # The 3-shard pgsansio processes run only the sharded workloads.
        self.sharded = any(w.shard_pool for w in chosen)
        self.sharded_targets = (
            [f"pgsansio-{f}{SHARDED_SUFFIX}" for f in self.frontends] if self.sharded else []
        )
        if self.sharded:
            self.omitted.append(
                "PgBouncer (and --baseline-tree) in the sharded workloads: PgBouncer cannot "
                "route a query to a shard, so there is no PgBouncer figure for them"
            )
        if args.seconds:
            seconds = args.seconds
        elif args.quick:
            seconds = 3.0
        else:
            runs = sum(len(self.targets_for(w)) for w in chosen) or 1
            per_run = BUDGET / (runs * rounds)
            seconds = min(15.0, max(5.0, per_run))
        self.seconds = float(round(seconds))
        self.run_as = _get_run_as()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.running: dict[str, Target] = {}
        self.cells: dict[tuple[str, str], Cell] = {}
        self.loads = [loadavg()]
        self.pg_version = "?"

    def targets_for(self, workload: Workload) -> list[str]:
        """Who runs ``workload``: a sharded one runs on the one-pool pgsansio of each
        frontend, the 3-shard pgsansio of each frontend and directly."""
        if not workload.shard_pool:
            return self.targets
        plain = [f"pgsansio-{f}" for f in self.frontends]
        return [t for t in self.all_targets if t in (*plain, *self.sharded_targets, DIRECT)]

    @property
    def all_targets(self) -> list[str]:
        """Every target, each 3-shard pgsansio after the one-pool one of its frontend."""
        out: list[str] = []
        for name in self.targets:
            out.append(name)
            if name + SHARDED_SUFFIX in self.sharded_targets:
                out.append(name + SHARDED_SUFFIX)
        return out

    def _own(self, path: pathlib.Path) -> None:
        """Hand a file to the unprivileged user PgBouncer runs as (when we are root)."""
        if self.run_as is not None:
            os.chown(path, self.run_as.uid, self.run_as.gid)

    def start_cluster(self, cluster: Cluster) -> None:
        cluster.add_user(USER, PASSWORD, auth="md5")
        cluster.create_database(DATABASE, owner=USER)
        print(f"pooler_bench: pgbench -i -s {self.args.scale} ...", flush=True)
        init = subprocess.run(
            ["pgbench", "-i", "-q", "-s", str(self.args.scale), "-h", "127.0.0.1"]  # noqa: RUF005
            + ["-p", str(cluster.port), "-U", USER, DATABASE],
            capture_output=True,
            text=True,
            env=pg_env(),
            check=False,
        )
        if init.returncode != 0:
            raise BenchError(f"pgbench -i failed: {pgbench_error(init.stderr)}")
        cluster.execute("VACUUM ANALYZE;", dbname=DATABASE)
        self.pg_version = "{}.{}".format(*cluster.server_version)
        self.running[DIRECT] = Target(DIRECT, cluster.port)
        if self.sharded:
            started = time.monotonic()
            print(f"pooler_bench: {SHARDS} shard databases of pgbench_accounts ...", flush=True)
            for r, name in enumerate(SHARD_DATABASES):
                cluster.create_database(name, owner=USER)
                cluster.execute(shard_sql(r, self.args.scale), dbname=name, timeout=600)
            print(f"pooler_bench: shards ready in {time.monotonic() - started:.1f} s", flush=True)

    def start_pgsansio(
        self,
        frontend: str,
        pg_port: int,
        work: pathlib.Path,
        tree: pathlib.Path = ROOT,
        *,
        sharded: bool = False,
    ) -> None:
        name, port = f"pgsansio-{frontend}", free_port()
        if tree != ROOT:
            name += BASELINE_SUFFIX
        toml = work / f"{name}{SHARDED_SUFFIX if sharded else ''}.toml"
        if sharded:
            name += SHARDED_SUFFIX
            toml.write_text(sharded_pgsansio_toml(port, pg_port, self.shard_pool_size))
        else:
            toml.write_text(pgsansio_toml(port, pg_port, self.args.pool_size))
        log = work / f"{name}.log"
        cmd = [sys.executable, "-m", "pgsansio", "run", str(toml)]
        cmd += ["--frontend", frontend, "--log-level", "warning"]
        with open(log, "wb") as logf:
            # -m puts the working directory first on sys.path: the tree's own package.
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=tree)
        self.procs.append(proc)
        try:
            wait_for_port(port, proc, f"pgsansio --frontend {frontend} ({tree})", log)
        except BenchError as e:
            self.omitted.append(f"{name}: {e}")
            (self.sharded_targets if sharded else self.targets).remove(name)
            return
        self.running[name] = Target(name, port, proc, sharded)

    @property
    def shard_pool_size(self) -> int:
        return self.args.shard_pool_size or -(-self.args.pool_size // SHARDS)

    def start_pgbouncer(self, binary: str, pg_port: int, work: pathlib.Path) -> None:
        port = free_port()
        ini, users, log = work / "pgbouncer.ini", work / "userlist.txt", work / "pgbouncer.log"
        pool = self.args.pool_size
        ini.write_text(pgbouncer_ini(port, pg_port, pool, self.bouncer_prepared, str(work)))
        users.write_text(f'"{USER}" "{PASSWORD}"\n')
        log.touch()
        for path in (work, ini, users, log):
            self._own(path)
        # PgBouncer refuses to run as root: start it as the user PostgreSQL runs as.
        run_as = self.run_as
        proc = subprocess.Popen(
            [binary, str(ini)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=work,
            user=run_as.uid if run_as else None,
            group=run_as.gid if run_as else None,
            extra_groups=[] if run_as else None,
        )
        self.procs.append(proc)
        try:
            wait_for_port(port, proc, "pgbouncer", log)
        except BenchError as e:
            self.omitted.append(f"PgBouncer column: {e}")
            self.targets.remove(PGBOUNCER)
            return
        self.running[PGBOUNCER] = Target(PGBOUNCER, port, proc)
        if not self.bouncer_prepared and any(w.prepared for w in self.chosen):
            self.omitted.append(
                f"PgBouncer -M prepared: {self.bouncer_text} has no max_prepared_statements "
                "(added in 1.21), so pgbench's prepared statements break in transaction "
                "mode; that cell is not run"
            )

    def run_one(
        self, cluster: Cluster, workload: Workload, name: str, r: int, logdir: pathlib.Path
    ) -> None:
        cell = self.cells.setdefault((name, workload.name), Cell(name, workload.name))
        if cell.error is not None:
            return
        if name == PGBOUNCER and workload.prepared and not self.bouncer_prepared:
            cell.error = "not run: PgBouncer < 1.21 (see Left out)"
            return
        if workload.tpcb:
            cluster.execute(
                "VACUUM pgbench_branches, pgbench_tellers; TRUNCATE pgbench_history;",
                dbname=DATABASE,
            )
        target = self.running[name]
        database = workload.shard_pool if target.sharded else DATABASE
        self.loads.append(loadavg())
        before = target.ticks()
        text, status, samples = run_pgbench(workload, target.port, self.seconds, logdir, database)
        after = target.ticks()
        if status != 0:
            cell.error = pgbench_error(text)
            print(f"  {name:<18} FAILED: {cell.error}", flush=True)
            return
        try:
            summary = parse_pgbench_output(text)
        except BenchError as e:
            cell.error = str(e)
            return
        ticks = None if before is None or after is None else after - before
        cell.add(summary, samples, ticks)
        cpu = ""
        if ticks is not None and summary.transactions:
            cpu = f"{ticks / CLK_TCK * 1e6 / summary.transactions:,.0f} us/tx"
        print(
            f"  {name:<18} round {r + 1}: {summary.tps:>9,.0f} tps  "
            f"{summary.latency_ms:6.2f} ms  {cpu}",
            flush=True,
        )

    def run(self, cluster: Cluster, work: pathlib.Path) -> None:
        self.start_cluster(cluster)
        for frontend in self.frontends:
            self.start_pgsansio(frontend, cluster.port, work)
            if self.args.baseline_tree:
                self.start_pgsansio(frontend, cluster.port, work, self.args.baseline_tree)
            if self.sharded:
                self.start_pgsansio(frontend, cluster.port, work, sharded=True)
        if self.bouncer_bin:
            self.start_pgbouncer(self.bouncer_bin, cluster.port, work)
        logdir = work / "pgbench-logs"
        logdir.mkdir()
        for workload in self.chosen:
            if workload.script:
                (logdir / workload.script_file).write_text(workload.script, encoding="utf-8")
        # Warm every target up: the poolers open their server connections.
        warm = Workload("warm-up", ("-S",), self.args.pool_size, sampling=0.01)
        for name in self.targets:
            run_pgbench(warm, self.running[name].port, 1, logdir)
        for name in self.sharded_targets:
            for workload in self.chosen:
                if workload.shard_pool:
                    w = dataclasses.replace(workload, clients=self.args.pool_size, sampling=0.01)
                    port = self.running[name].port
                    run_pgbench(w, port, 1, logdir, workload.shard_pool)
        for wi, workload in enumerate(self.chosen):
            print(f"\n== {workload.name}: pgbench {' '.join(workload.argv(self.seconds))}")
            for r in range(self.rounds):
                for name in order_for(self.targets_for(workload), wi, r):
                    self.run_one(cluster, workload, name, r, logdir)
        self.loads.append(loadavg())

    def stop_all(self) -> None:
        for proc in self.procs:
            stop(proc)

    def routing_cost(self) -> list[str]:
        """Per sharded workload and frontend: the 3-shard pgsansio against the one pool."""
        lines = []
        for workload in self.chosen:
            if not workload.shard_pool:
                continue
            for frontend in self.frontends:
                one = self.cells.get((f"pgsansio-{frontend}", workload.name))
                three = self.cells.get((f"pgsansio-{frontend}{SHARDED_SUFFIX}", workload.name))
                if one is None or three is None or not one.ok or not three.ok:
                    lines.append(f"{workload.name}, {frontend}: no figure (a run failed)")
                    continue
                text = (
                    f"{workload.name}, {frontend}: {three.mean_tps:,.0f} TPS through 3 shards "
                    f"vs {one.mean_tps:,.0f} through one pool "
                    f"(x{three.mean_tps / one.mean_tps:.2f})"
                )
                cpu1, cpu3 = one.cpu_us_per_tx, three.cpu_us_per_tx
                if cpu1 is not None and cpu3 is not None:
                    text += (
                        f"; pooler CPU {cpu3:,.0f} vs {cpu1:,.0f} us/tx: routing costs "
                        f"{cpu3 - cpu1:+,.0f} us per query"
                    )
                lines.append(text)
        return lines

    def report(self, out_dir: pathlib.Path, stem: str, elapsed: float) -> None:
        names = [w.name for w in self.chosen]
        rows = result_rows(self.cells, self.all_targets, names)
        print()
        print(text_table(rows))
        routing = self.routing_cost()
        if routing:
            print("\nrouting cost (same script, 3-shard pgsansio vs one pool):")
            for line in routing:
                print(f"  {line}")
        chart = out_dir / f"{stem}.png"
        # The chart is TPS / PgBouncer's: the sharded workloads have no PgBouncer.
        charted = [w.name for w in self.chosen if not w.shard_pool]
        series = ratio_series(self.cells, self.targets, charted)
        why_no_chart = (
            plot_ratios(series, charted, chart)
            if charted
            else "only sharded workloads, which have no PgBouncer figure to chart against"
        )
        if why_no_chart:
            self.omitted.append(f"chart: {why_no_chart}")
        a = self.args
        setup = [
            f"PostgreSQL {self.pg_version} cluster, pgbench -i -s {a.scale}, max_connections "
            "400, shared_buffers 128MB, fsync off; MD5 password authentication on every target",
            f"pool size {a.pool_size} server connections for each pooler, transaction mode; "
            f"pgsansio frontends: {', '.join(self.frontends) or 'none'} (log level warning); "
            "PgBouncer with log_connections and log_disconnections off",
            f"{self.rounds} round(s) of {self.seconds:g} s per workload and target; targets "
            "take turns (rotated per workload, reversed every second round)",
            "pgbench -n -j 2 (-j 32 for -M prepared when clients outnumber the pool); "
            "TPC-B starts from vacuumed branches/tellers and an empty history table",
            "TPS: mean over rounds; latency: pgbench's average, weighted by transactions; "
            "p99: pgbench -l with --sampling-rate 0.1 (1.0 for -C), rounds merged",
            "pooler CPU: utime+stime of the pooler process (/proc/<pid>/stat) over the "
            "run, divided by the transactions; PostgreSQL's and pgbench's CPU not counted",
            "everything (pgbench, poolers, PostgreSQL) on one machine, shared with other "
            f"work; load average (1 min) during the run {min(self.loads):.2f} to "
            f"{max(self.loads):.2f}; whole run {elapsed / 60:.1f} min",
        ]
        if self.sharded:
            setup.append(
                f"sharded workloads: {SHARDS} shard databases on the same cluster, each "
                f"holding its REMAINDER of pgbench_accounts (hash-partitioned by aid, "
                f"MODULUS {SHARDS}); pgsansio-<frontend>{SHARDED_SUFFIX} has pools "
                f"{COMMENT_POOL} (sharding_key_regex on a /* sharding_key: n */ comment) and "
                f"{AUTO_POOL} (automatic_sharding_key pgbench_accounts.aid, query parser on) and "
                f"{FANOUT_POOL} (cross_shard = fan_out: count(*) on every shard, merged), "
                f"{self.shard_pool_size} servers per shard; the same script (-S's SELECT, "
                "ending in \\gset so that a misrouted query aborts pgbench) runs through the "
                "one-pool pgsansio and directly against the unsplit table"
            )
        machine = machine_info(self.pg_version, self.bouncer_text)
        md = markdown_report(
            rows, machine, setup, self.omitted, None if why_no_chart else chart.name
        )
        if routing:
            md += "\n## Routing cost (3 shards vs one pool, same script)\n\n"
            md += "".join(f"- {line}\n" for line in routing)
        (out_dir / f"{stem}.md").write_text(md, encoding="utf-8")
        for line in self.omitted:
            print(f"left out: {line}")
        print(f"\nwrote {out_dir / f'{stem}.md'}" + ("" if why_no_chart else f" and {chart}"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="pgbench through pgsansio, PgBouncer and directly, in one run."
    )
    parser.add_argument("--seconds", type=float, help="seconds per pgbench run")
    parser.add_argument("--rounds", type=int, help="runs per workload and target (default 2)")
    parser.add_argument("--frontends", help="comma-separated pgsansio frontends (default: all)")
    parser.add_argument("--pool-size", type=int, default=20, help="server connections per pooler")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i scale factor")
    parser.add_argument("--quick", action="store_true", help="3 s runs, two workloads, 1 round")
    parser.add_argument(
        "--workloads",
        help="comma-separated workload names to run; the sharded ones ('-S sharded c32', "
        "'-S sharded auto-key c32': routing cost through 3 shards; 'count(*) fan-out c8': "
        "a cross-shard read) run only when named",
    )
    parser.add_argument(
        "--shard-pool-size",
        type=int,
        help="server connections per shard in the sharded workloads (default: pool size / 3)",
    )
    parser.add_argument("--no-install", action="store_true", help="never apt-get PgBouncer")
    parser.add_argument("--out", type=pathlib.Path, help="results directory (bench/results)")
    parser.add_argument(
        "--baseline-tree",
        type=pathlib.Path,
        metavar="DIR",
        help="also bench the pgsansio package in DIR (say, `git worktree` or `git archive` "
        "of an older commit), as pgsansio-<frontend>@baseline, in the same run",
    )
    args = parser.parse_args(argv)
    if args.baseline_tree is not None:
        args.baseline_tree = args.baseline_tree.resolve()
        if not (args.baseline_tree / "pgsansio" / "__main__.py").is_file():
            print(f"pooler_bench: {args.baseline_tree} holds no pgsansio package", file=sys.stderr)
            return 2

    all_workloads = workloads(args.pool_size) + sharded_workloads(args.scale)
    names = [n.strip() for n in args.workloads.split(",")] if args.workloads else None
    if args.quick and names is None:
        names = list(QUICK_WORKLOADS)
    chosen = [
        w for w in all_workloads if (w.name in names if names is not None else not w.shard_pool)
    ]
    if names is not None and len(chosen) != len(names):
        known = ", ".join(repr(w.name) for w in all_workloads)
        print(f"pooler_bench: unknown workload in {names}; choose from {known}", file=sys.stderr)
        return 2
    if shutil.which("pgbench") is None:
        print(
            "pooler_bench: pgbench is not installed; it comes with PostgreSQL's client "
            "package (apt-get install postgresql-client, dnf install postgresql)",
            file=sys.stderr,
        )
        return 1
    rounds = args.rounds or (1 if args.quick else 2)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))

    try:
        bench = Bench(args, chosen, rounds)
    except BenchError as e:
        print(f"pooler_bench: {e}", file=sys.stderr)
        return 2
    out_dir = args.out or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"pooler_bench: {len(chosen)} workloads x {len(bench.all_targets)} targets x {rounds} "
        f"rounds, {bench.seconds:g} s each; pool size {args.pool_size}; "
        f"load average {loadavg():.2f}",
        flush=True,
    )
    started = time.monotonic()
    work = pathlib.Path(tempfile.mkdtemp(prefix="pgsansio-bench-"))
    try:
        cluster = Cluster(host="127.0.0.1")
        try:
            cluster.init(settings={"max_connections": "400", "shared_buffers": "128MB"})
        except BaseException:
            cluster.cleanup()
            raise
        with cluster:
            try:
                bench.run(cluster, work)
            finally:
                bench.stop_all()
    except (BenchError, ClusterError) as e:
        print(f"pooler_bench: {e}", file=sys.stderr)
        return 1
    finally:
        bench.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    bench.report(out_dir, "quick" if args.quick else "latest", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
