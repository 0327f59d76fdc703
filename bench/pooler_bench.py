#!/usr/bin/env python3
r"""``make bench``: pgbench through pgsansio (every frontend), through PgBouncer, and direct.

One run starts a throwaway PostgreSQL cluster, loads ``pgbench -i``, starts one
pgsansio process per installed frontend and build and one PgBouncer, all in transaction
mode with the same pool size, and then runs every workload against every target. The
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
* ratio to uvloop: a pgsansio target's TPS divided by that of the uvloop target of the
  same build (and workers, and tree): how far each runtime is from the fastest loop.
* pooler CPU per transaction: utime + stime of the pooler's process tree (all threads of
  the process and of every live descendant, plus cutime + cstime, the CPU of children
  it has reaped) from ``/proc/<pid>/stat`` before and after each pgbench run, divided
  by the transactions pgbench completed. For a pooler with ``workers = N`` that is the
  supervisor and all its workers; a worker that exits during a run keeps its time in
  the sum. Only the poolers have it; PostgreSQL's and pgbench's own CPU is not counted.

Builds (``--compiled-frontends``, default all; ``--pure-frontends``, default uvloop):
pgsansio runs as the mypyc build and as pure Python. The compiled build is the tree's
own ``make compiled``, run on a copy of the tree in the run's temporary directory (so
benchmarking another tree writes nothing into it), or an existing build given with
``--compiled-lib``; targets run with ``PYTHONSAFEPATH=1`` and ``PYTHONPATH`` set to the
build (pure: the tree), and each build's ``pgsansio --version`` must say on its
``protocol core:`` line what the label says, or its targets do not run (Left out says
why). Targets are named ``pgsansio-<frontend>-<build>``. By default every frontend runs
compiled and uvloop also pure: the pure/compiled comparison on the frontend that
matters, at the cost of one more target instead of five.

Workers (``--workers N``, default 2): the workloads marked for it (``-S c200``, and
``-S -C c16``, which is login-bound, so that the pooler is the bottleneck even on two
cores) also run through ``pgsansio-uvloop-<build>-wN``, a pgsansio with ``workers = N``
in ``[general]`` (a supervisor and N worker processes sharing the port), beside its
one-worker twin and PgBouncer. A pgsansio that refuses the key, or ignores it (its log
says ``unknown key``, or no worker process appears), does not run them: their cells say
so, and Left out quotes its log.

The report (``bench/results/latest.md``) starts with a summary, one row per workload:
PgBouncer's TPS and CPU per transaction; uvloop pure and compiled as a ratio to
PgBouncer, with their CPU per transaction; every other runtime as a ratio to uvloop;
and N workers against one (TPS ratio, CPU per transaction of both).

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
``BENCH_COMPILED``, ``BENCH_PURE``, ``BENCH_WORKERS``, ``BENCH_ARGS=--quick``), or
directly: ``.venv/bin/python bench/pooler_bench.py --help``. ``--tree DIR`` benches
another tree's pgsansio (results still land here).
The pure parts (parsing pgbench's output and log, ``/proc/<pid>/stat``, the table and
Markdown writers) are tested in ``tests/test_pooler_bench.py`` on recorded text, and
the process-tree CPU sum on a real parent and child.
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
    TargetName,
    markdown_report,
    parse_pgbench_log,
    parse_pgbench_output,
    parse_proc_stat,
    parse_proc_stat_children,
    pgbench_error,
    plot_ratios,
    ratio_series,
    result_rows,
    summary_rows,
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
BUDGET: Final = 600.0
#: The two builds of pgsansio: the mypyc build (``make compiled``) and plain Python.
COMPILED: Final = "compiled"
PURE: Final = "pure"


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
    #: Also run through the pgsansio with ``workers = N`` (--workers), beside one worker.
    workers: bool = False

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
        Workload("-S c200", ("-S",), 200, workers=True),
        # Login-bound: the pooler, not PostgreSQL, is the bottleneck even on 2 cores.
        Workload("-S -C c16", ("-S", "-C"), 16, sampling=1.0, workers=True),
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
#: How long a pgsansio with ``workers = N`` may take to start its N worker processes.
WORKERS_WAIT: Final = 15.0


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
    """SIGINT, then SIGKILL; and SIGKILL to any of its processes left behind (workers
    whose supervisor did not take them down)."""
    kids = descendants(proc.pid) if proc.poll() is None else []
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    deadline = time.monotonic() + 5
    while kids and time.monotonic() < deadline:
        kids = [k for k in kids if os.path.exists(f"/proc/{k}")]
        time.sleep(0.1)
    for kid in kids:
        with contextlib.suppress(OSError):
            os.kill(kid, signal.SIGKILL)


# ------------------------------------------------------------- process trees and CPU

#: Whether this kernel has /proc/<pid>/task/<tid>/children (CONFIG_PROC_CHILDREN).
_CHILDREN_FILE: Final = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def children_of(pid: int) -> list[int]:
    """The live child processes of ``pid`` (children of any of its threads)."""
    kids: list[int] = []
    if _CHILDREN_FILE:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids += [int(k) for k in f.read().split()]
        return kids
    # Without the children file: every process's parent, from its stat line (field 4).
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError), open(f"/proc/{entry}/stat") as f:
                if int(f.read().rpartition(")")[2].split()[1]) == pid:
                    kids.append(int(entry))
    return kids


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (a supervisor's workers and theirs)."""
    out, todo = [], [pid]
    while todo:
        for kid in children_of(todo.pop()):
            out.append(kid)
            todo.append(kid)
    return out


def tree_ticks(pid: int) -> int:
    """CPU ticks of ``pid``'s whole process tree: each live process's utime + stime
    (all its threads) plus cutime + cstime (the children it has reaped).

    For a pooler without workers it is the process's own time; with ``workers = N`` it
    is the supervisor's and every worker's. A worker that exits between two readings
    and is reaped keeps its time in the sum (now in its parent's cutime).
    """
    total = 0
    for p in (pid, *descendants(pid)):
        try:
            with open(f"/proc/{p}/stat", encoding="ascii") as f:
                text = f.read()
        except OSError:
            continue  # gone since it was listed
        total += parse_proc_stat(text) + parse_proc_stat_children(text)
    return total


# ------------------------------------------------------------------- pgsansio builds


@dataclasses.dataclass(frozen=True)
class Runner:
    """How to run pgsansio of one tree in one build (``-m pgsansio`` with this path)."""

    build: str
    cwd: pathlib.Path
    pythonpath: str
    #: What ``pgsansio --version`` says on its ``protocol core:`` line, checked.
    core: str

    def env(self) -> dict[str, str]:
        # PYTHONSAFEPATH: the working directory's package must not come before the path.
        return {**os.environ, "PYTHONSAFEPATH": "1", "PYTHONPATH": self.pythonpath}


def copy_tree(tree: pathlib.Path, dest: pathlib.Path) -> None:
    """The files of ``tree`` as they are (edits not yet committed included), without
    its builds: git's tracked and untracked-but-not-ignored files, or, outside git,
    everything but caches and build output."""
    listed = subprocess.run(
        ["git", "-C", str(tree), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:
        skip = shutil.ignore_patterns(
            ".git", ".venv", "build", "__pycache__", "*.so", "*.egg-info"
        )
        shutil.copytree(tree, dest, ignore=skip)
        return
    for rel in listed.stdout.decode().split("\0"):
        source = tree / rel
        if rel and source.is_file():  # a file deleted but not committed is still listed
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / rel)


def tree_version(tree: pathlib.Path) -> str:
    """``<tree> at <commit>`` (and whether files differ from it), for the report."""
    head = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    if head.returncode != 0:
        return f"{tree} (not a git checkout)"
    dirty = subprocess.run(
        ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{tree} at {head.stdout.strip()}" + (" with uncommitted changes" if dirty else "")


def copy_of(tree: pathlib.Path, work: pathlib.Path, what: str) -> pathlib.Path:
    """A fresh copy of ``tree`` in ``work`` (see :func:`copy_tree`)."""
    src = work / f"{what}-{tree.name}-{len(list(work.glob(f'{what}-*')))}"
    copy_tree(tree, src)
    return src


def build_compiled(tree: pathlib.Path, work: pathlib.Path) -> pathlib.Path:
    """``make compiled`` on a copy of ``tree`` in ``work``; the copy's directory.

    A copy, so that benchmarking a tree writes nothing into it; the tree's own
    Makefile, so that the build is the one its tests run. The venv stamp is treated
    as up to date (``-o``): building must not reinstall anything.
    """
    src = copy_of(tree, work, "compiled")
    print(f"pooler_bench: make compiled (mypyc) on a copy of {tree} ...", flush=True)
    started = time.monotonic()
    proc = subprocess.run(
        ["make", "-C", str(src), "-o", ".venv/.installed", "compiled", f"PY={sys.executable}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        raise BenchError(f"make compiled failed for {tree}: {tail}")
    print(f"pooler_bench: compiled in {time.monotonic() - started:.0f} s", flush=True)
    return src


def make_runner(
    tree: pathlib.Path, build: str, work: pathlib.Path, compiled_lib: pathlib.Path | None
) -> Runner:
    """The runner of ``tree`` in ``build``, built if need be, and checked: its
    ``pgsansio --version`` must say the protocol core it is labelled with. Only this
    tree runs in place (pure); any other runs from a copy, so nothing is written into
    it."""
    if build == PURE and tree == ROOT:
        cwd, path = tree, str(tree)
    elif build == PURE:
        # Another tree runs from a copy too: Python writes its bytecode caches there.
        src = copy_of(tree, work, "pure")
        cwd, path = src, str(src)
    elif compiled_lib is not None:
        cwd, path = tree, f"{compiled_lib}:{tree}"
    else:
        src = build_compiled(tree, work)
        cwd, path = src, f"{src / 'build' / 'compiled' / 'lib'}:{src}"
    runner = Runner(build, cwd, path, "")
    out = subprocess.run(
        [sys.executable, "-m", "pgsansio", "--version"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=runner.env(),
        check=False,
    )
    core = next(
        (line for line in out.stdout.splitlines() if line.startswith("protocol core:")), ""
    )
    says = core.partition(":")[2].strip()
    if not says.startswith("compiled" if build == COMPILED else "pure"):
        got = repr(core) if core else f"no 'protocol core:' line ({out.stderr.strip()[-200:]})"
        raise BenchError(f"the {build} build of {tree} is not what it says: --version gives {got}")
    return dataclasses.replace(runner, core=says)


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


def pgsansio_toml(listen: int, pg_port: int, pool_size: int, workers: int = 1) -> str:
    """The one-pool pgsansio; ``workers = N`` in [general] when N > 1."""
    workers_line = f"workers = {workers}\n" if workers != 1 else ""
    return f"""\
[general]
host = "127.0.0.1"
port = {listen}
admin_username = "admin"
admin_password = "admin"
shutdown_timeout = 2000
{workers_line}
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
    """Somewhere pgbench connects to; ``proc`` is the pooler whose CPU time is counted
    (with its whole process tree: a supervisor and its workers)."""

    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    sharded: bool = False

    def ticks(self) -> int | None:
        return tree_ticks(self.proc.pid) if self.proc is not None else None


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


def pick_frontends(requested: str, available: Sequence[str]) -> list[str]:
    """``all``, ``none`` or a comma-separated list, kept to the frontends that run."""
    if requested.strip() == "all":
        return list(available)
    if requested.strip() in {"none", ""}:
        return []
    from pgsansio.frontends import FRONTENDS  # noqa: PLC0415

    wanted = {n.strip() for n in requested.split(",") if n.strip()}
    unknown = sorted(wanted - set(FRONTENDS))
    if unknown:
        known = ", ".join(n for n in FRONTENDS if n != "auto")
        raise BenchError(f"unknown frontend {unknown[0]!r}; pgsansio has {known}, or all, none")
    return [f for f in available if f in wanted]


class Bench:
    """One benchmark run: the cluster, the poolers in front of it, and the results."""

    def __init__(self, args: argparse.Namespace, chosen: list[Workload], rounds: int) -> None:
        from pgsansio.testing.cluster import _get_run_as  # noqa: PLC0415

        self.args = args
        self.chosen = chosen
        self.rounds = rounds
        self.tree: pathlib.Path = args.tree
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
        # The pgsansio targets: each frontend in each build asked for, uvloop first.
        compiled = pick_frontends(args.compiled_frontends, self.frontends)
        pure = pick_frontends(args.pure_frontends, self.frontends)
        if not compiled and not pure:
            raise BenchError(
                "no pgsansio target: --compiled-frontends and --pure-frontends name none of "
                f"the frontends that run ({', '.join(self.frontends) or 'none'})"
            )
        order = sorted(self.frontends, key=lambda f: f != "uvloop")
        plain = [
            TargetName(f, b)
            for f in order
            for b, fs in ((COMPILED, compiled), (PURE, pure))
            if f in fs
        ]
        specs = list(plain)
        # The workers target: the first build of --workers-frontend, with N workers,
        # after its one-worker twin.
        one = next((s for s in plain if s.frontend == args.workers_frontend), None)
        if args.workers > 1 and any(w.workers for w in chosen):
            if one is None:
                self.omitted.append(
                    f"workers = {args.workers}: --workers-frontend {args.workers_frontend} "
                    "is not among the frontends that run, so no workers target"
                )
            else:
                multi = dataclasses.replace(one, workers=args.workers)
                specs.insert(specs.index(one) + 1, multi)
        self.specs: dict[str, TargetName] = {str(s): s for s in specs}
        if args.baseline_tree:
            for spec in plain:
                twin = dataclasses.replace(spec, suffix=BASELINE_SUFFIX)
                self.specs[str(twin)] = twin
        self.targets = list(self.specs)
        self.targets += [PGBOUNCER] if self.bouncer_bin else []
        self.targets.append(DIRECT)
        # The 3-shard pgsansio processes run only the sharded workloads.
        self.sharded = any(w.shard_pool for w in chosen)
        self.sharded_targets: list[str] = []
        if self.sharded:
            for spec in plain:
                twin = dataclasses.replace(spec, suffix=SHARDED_SUFFIX)
                self.specs[str(twin)] = twin
                self.sharded_targets.append(str(twin))
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
        #: Targets that do not run, and the note their cells carry instead of figures.
        self.skipped: dict[str, str] = {}
        self.runners: dict[tuple[pathlib.Path, str], Runner] = {}
        self.cells: dict[tuple[str, str], Cell] = {}
        self.loads = [loadavg()]
        self.pg_version = "?"

    def targets_for(self, workload: Workload) -> list[str]:
        """Who runs ``workload``: a sharded one runs on the one-pool pgsansio of each
        frontend, the 3-shard pgsansio of each frontend and directly; a multi-worker
        pgsansio runs only the workers workloads."""
        if workload.shard_pool:
            keep = {DIRECT, *self.sharded_targets}
            keep |= {n for n, s in self.specs.items() if s.workers == 1 and not s.suffix}
            return [t for t in self.all_targets if t in keep]
        return [
            t
            for t in self.targets
            if workload.workers or t not in self.specs or self.specs[t].workers == 1
        ]

    @property
    def all_targets(self) -> list[str]:
        """Every target, each 3-shard pgsansio after the one-pool one of its frontend."""
        out: list[str] = []
        for name in self.targets:
            out.append(name)
            if name + SHARDED_SUFFIX in self.sharded_targets:
                out.append(name + SHARDED_SUFFIX)
        return out

    def skip(self, name: str, why: str, note: str) -> None:
        """``name`` does not run: Left out says ``why``; its cells say ``note``."""
        self.skipped[name] = note
        self.omitted.append(f"{name}: {why}")
        print(f"pooler_bench: {name} does not run: {why}", file=sys.stderr, flush=True)

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

    def tree_of(self, spec: TargetName) -> pathlib.Path:
        return self.args.baseline_tree if spec.suffix == BASELINE_SUFFIX else self.tree

    def prepare_builds(self, work: pathlib.Path) -> None:
        """Build (compiled) and check every (tree, build) a target needs; a build that
        fails or is not what it says skips its targets, with the reason."""
        failed: dict[tuple[pathlib.Path, str], str] = {}
        for name, spec in self.specs.items():
            key = (self.tree_of(spec), spec.build)
            if key not in self.runners and key not in failed:
                lib = self.args.compiled_lib if key[0] == self.tree else None
                try:
                    self.runners[key] = make_runner(key[0], spec.build, work, lib)
                except BenchError as e:
                    failed[key] = str(e)
            if key in failed:
                self.skip(
                    name, failed[key], f"not run: the {spec.build} build failed (see Left out)"
                )

    def start_pgsansio(self, name: str, pg_port: int, work: pathlib.Path) -> None:
        spec = self.specs[name]
        if name in self.skipped:
            return
        runner = self.runners[self.tree_of(spec), spec.build]
        port = free_port()
        toml = work / f"{name}.toml"
        if spec.suffix == SHARDED_SUFFIX:
            toml.write_text(sharded_pgsansio_toml(port, pg_port, self.shard_pool_size))
        else:
            toml.write_text(pgsansio_toml(port, pg_port, self.args.pool_size, spec.workers))
        log = work / f"{name}.log"
        cmd = [sys.executable, "-m", "pgsansio", "run", str(toml)]
        cmd += ["--frontend", spec.frontend, "--log-level", "warning"]
        with open(log, "wb") as logf:
            proc = subprocess.Popen(
                cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=runner.cwd, env=runner.env()
            )
        self.procs.append(proc)
        what = f"pgsansio --frontend {spec.frontend} ({spec.build}, {self.tree_of(spec)})"
        try:
            wait_for_port(port, proc, what, log)
        except BenchError as e:
            if spec.workers > 1:
                self.skip(
                    name,
                    f"this pgsansio does not start with workers = {spec.workers} in "
                    f"[general]: {e}",
                    f"not run: pgsansio refuses workers = {spec.workers} (see Left out)",
                )
            else:
                self.skip(name, str(e), "not run: pgsansio did not start (see Left out)")
            return
        if spec.workers > 1 and not self.wait_for_workers(proc, spec.workers, log):
            said = [
                line.strip()
                for line in log.read_text("utf-8", "replace").splitlines()
                if "workers" in line
            ]
            stop(proc)
            self.skip(
                name,
                f"this pgsansio ignores workers = {spec.workers} in [general]: it started "
                f"no worker processes (waited up to {WORKERS_WAIT:g} s)"
                + (f" (its log: {said[0]!r})" if said else ""),
                f"not run: pgsansio ignores workers = {spec.workers} (see Left out)",
            )
            return
        self.running[name] = Target(name, port, proc, spec.suffix == SHARDED_SUFFIX)

    @staticmethod
    def wait_for_workers(proc: subprocess.Popen[bytes], workers: int, log: pathlib.Path) -> bool:
        """Whether ``proc`` has ``workers`` child processes (its workers) in time; False
        at once when its log says it ignored the key (an older pgsansio)."""
        deadline = time.monotonic() + WORKERS_WAIT
        while time.monotonic() < deadline and proc.poll() is None:
            if len(children_of(proc.pid)) >= workers:
                return True
            said = log.read_text("utf-8", "replace")
            if "general.workers: unknown key" in said:
                return False
            time.sleep(0.2)
        return False

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
        if name in self.skipped:
            cell.error = self.skipped[name]
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
        self.prepare_builds(work)
        self.start_cluster(cluster)
        for name in self.specs:
            self.start_pgsansio(name, cluster.port, work)
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
            if name in self.running and name not in self.sharded_targets:
                run_pgbench(warm, self.running[name].port, 1, logdir)
        for name in self.sharded_targets:
            if name not in self.running:
                continue
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

    def build_lines(self) -> list[str]:
        """The setup's lines on the builds: what each one runs, as --version said it."""
        trees = [self.tree] + ([self.args.baseline_tree] if self.args.baseline_tree else [])
        out = [
            f"pgsansio tree{'s' if len(trees) > 1 else ''}: " + "; ".join(map(tree_version, trees))
        ]
        for (tree, build), runner in self.runners.items():
            where = "" if tree == self.tree else f" (tree {tree})"
            how = {
                COMPILED: "the mypyc build (make compiled, from a copy of the tree)",
                PURE: "plain Python",
            }[build]
            if build == COMPILED and self.args.compiled_lib and tree == self.tree:
                how = f"the mypyc build in {self.args.compiled_lib}"
            names = [
                n for n, s in self.specs.items() if s.build == build and self.tree_of(s) == tree
            ]
            out.append(
                f"pgsansio-*-{build}{where}: {how}; pgsansio --version says 'protocol core: "
                f"{runner.core}'; targets: {', '.join(names)}"
            )
        multi = [s for s in self.specs.values() if s.workers > 1]
        for spec in multi:
            out.append(
                f"{spec}: workers = {spec.workers} in [general] (a supervisor and "
                f"{spec.workers} worker processes sharing the port with SO_REUSEPORT), in "
                "the workloads marked for it ("
                + ", ".join(w.name for w in self.chosen if w.workers)
                + ") only; pool size and limits as the pooler applies them across workers"
            )
        return out

    def stop_all(self) -> None:
        for proc in self.procs:
            stop(proc)

    def routing_cost(self) -> list[str]:
        """Per sharded workload and frontend: the 3-shard pgsansio against the one pool."""
        lines = []
        for workload in self.chosen:
            if not workload.shard_pool:
                continue
            for sharded in self.sharded_targets:
                plain = str(dataclasses.replace(self.specs[sharded], suffix=""))
                one = self.cells.get((plain, workload.name))
                three = self.cells.get((sharded, workload.name))
                label = plain.removeprefix("pgsansio-")
                if one is None or three is None or not one.ok or not three.ok:
                    lines.append(f"{workload.name}, {label}: no figure (a run failed)")
                    continue
                text = (
                    f"{workload.name}, {label}: {three.mean_tps:,.0f} TPS through 3 shards "
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
        summary = summary_rows(
            self.cells, self.targets, [w.name for w in self.chosen if not w.shard_pool]
        )
        print()
        print(text_table(rows))
        if summary[1]:
            print("\nsummary:")
            print(text_table(summary[1], summary[0]))
        routing = self.routing_cost()
        if routing:
            print("\nrouting cost (same script, 3-shard pgsansio vs one pool):")
            for line in routing:
                print(f"  {line}")
        chart = out_dir / f"{stem}.png"
        # The chart is TPS / PgBouncer's: the sharded workloads have no PgBouncer.
        charted = [w.name for w in self.chosen if not w.shard_pool]
        shown = [t for t in self.targets if t not in self.skipped]
        series = ratio_series(self.cells, shown, charted)
        cpu = ratio_series(self.cells, shown, charted, cpu=True)
        why_no_chart = (
            plot_ratios(series, charted, chart, cpu)
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
            *self.build_lines(),
            f"{self.rounds} round(s) of {self.seconds:g} s per workload and target; targets "
            "take turns (rotated per workload, reversed every second round)",
            "pgbench -n -j 2 (-j 32 for -M prepared when clients outnumber the pool); "
            "TPC-B starts from vacuumed branches/tellers and an empty history table",
            "TPS: mean over rounds; latency: pgbench's average, weighted by transactions; "
            "p99: pgbench -l with --sampling-rate 0.1 (1.0 for -C), rounds merged",
            "pooler CPU: utime+stime over the run of the pooler's process tree (/proc/<pid>/"
            "stat of the process and of every descendant, all threads, plus the CPU of "
            "children it reaped: with workers, the supervisor and all workers), divided by the "
            "transactions; PostgreSQL's and pgbench's CPU not counted",
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
            rows,
            machine,
            setup,
            self.omitted,
            None if why_no_chart else chart.name,
            summary=summary,
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
    parser.add_argument(
        "--compiled-frontends",
        default="all",
        metavar="LIST",
        help="frontends that run the compiled (mypyc) build, built with `make compiled` from "
        "a copy of the tree: 'all' (default), 'none', or a comma-separated list",
    )
    parser.add_argument(
        "--pure-frontends",
        default="uvloop",
        metavar="LIST",
        help="frontends that also run as pure Python: 'uvloop' (default), 'all', 'none', "
        "or a comma-separated list",
    )
    parser.add_argument(
        "--compiled-lib",
        type=pathlib.Path,
        metavar="DIR",
        help="use this compiled build (say, build/compiled/lib after `make compiled`) "
        "instead of building one; --version must say it is compiled",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        metavar="N",
        help="also run the workers workloads ('-S c200', '-S -C c16') through a pgsansio "
        "with workers = N in [general] (default 2; 1 or 0: not run)",
    )
    parser.add_argument(
        "--workers-frontend", default="uvloop", help="frontend of the workers target (uvloop)"
    )
    parser.add_argument(
        "--tree",
        type=pathlib.Path,
        metavar="DIR",
        help="bench the pgsansio package in DIR (another worktree) instead of this one; the "
        "results still go to this tree's bench/results unless --out says otherwise",
    )
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
    args.tree = (args.tree or ROOT).resolve()
    for tree in (args.tree, args.baseline_tree):
        if tree is not None and not (tree / "pgsansio" / "__main__.py").is_file():
            print(f"pooler_bench: {tree} holds no pgsansio package", file=sys.stderr)
            return 2
    if args.baseline_tree is not None:
        args.baseline_tree = args.baseline_tree.resolve()
    if args.compiled_lib is not None:
        args.compiled_lib = args.compiled_lib.resolve()

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
