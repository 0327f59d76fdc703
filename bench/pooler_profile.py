#!/usr/bin/env python3
"""``make bench-profile``: where pgsansio's CPU goes under ``pgbench -S -c 32``.

Starts a throwaway cluster (as ``pooler_bench.py`` does) and pgsansio, warms the
pool, then attaches py-spy (``py-spy record --pid --format raw --function --native``;
py-spy leaves out samples where the process sleeps) while pgbench runs for
``--seconds``, so start-up is not in the profile. It prints pgsansio's user and system
CPU time per transaction (``/proc/<pid>/stat``), and the functions with the largest
self and cumulative share of the user-space samples, plus the share of each layer: the
protocol core (``pgsansio/protocol``), the engine (``pgsansio/engine``), the frontend
(``pgsansio/frontends``), and the event loop and everything else.
``bench/PROFILE.md`` quotes its output.

``--compiled`` profiles the mypyc build instead of pure Python: made as ``make bench``
makes it (``make compiled`` on a copy of the tree, or ``--compiled-lib DIR``) and checked
with ``pgsansio --version``. py-spy's ``--native`` shows a compiled function as a C
frame (``CPyDef_<module>___<Class>___<method>``); those frames are counted as the
function they compile, in its layer, instead of being charged to the Python code that
called them, so the two builds' tables read alike.

Usage::

    .venv/bin/python bench/pooler_profile.py [--frontend uvloop] [--seconds 20] [--top 30]
        [--compiled] [--connect --clients 16] [--tree DIR]
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import pooler_bench as pb

LAYERS = (
    ("protocol", "pgsansio/protocol/"),
    ("engine", "pgsansio/engine/"),
    ("frontend", "pgsansio/frontends/"),
)


def parse_raw(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) stacks: ``frame;frame;... count`` per line, root first."""
    stacks = []
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


_PY_FRAME = re.compile(r"\((?:.*\.py|<frozen [^>]*>|<string>):\d+\)$")
#: libc wrappers of the system calls an event loop makes: kernel time, not Python's.
SYSCALLS = frozenset(
    {"write", "writev", "send", "sendto", "sendmsg", "read", "readv", "recv", "recvfrom"}
    | {"recvmsg", "epoll_wait", "epoll_pwait", "epoll_ctl", "accept4", "connect", "close"}
)


#: A function compiled by mypyc, as py-spy's ``--native`` names it: ``CPyDef_`` (the
#: native body) or ``CPyPy_`` (its Python-callable wrapper), then the module's shortest
#: unique name, class and function joined by ``___``.
_MYPYC = re.compile(r"^CPy(?:Def|Py)_(\S+) \(")


def _module_dirs() -> dict[str, str]:
    """Module name -> its package directory under pgsansio (protocol, engine, ...)."""
    out: dict[str, str] = {}
    for path in sorted((pb.ROOT / "pgsansio").glob("*/*.py")):
        out.setdefault(path.stem, path.parent.name)
    return out


_DIRS = _module_dirs()


def mypyc_frame(frame: str) -> str | None:
    """A compiled function's native frame as ``Class.method (pgsansio/dir/module.py,
    compiled)``, so that it is counted like the Python function it was; None for any
    other frame."""
    match = _MYPYC.match(frame)
    if match is None:
        return None
    parts = match.group(1).split("___")
    for i, part in enumerate(parts):
        if part in _DIRS and part != "__init__":
            name = ".".join(parts[i + 1 :]) or "<module>"
            return f"{name} (pgsansio/{_DIRS[part]}/{part}.py, compiled)"
    return f"{'.'.join(parts)} (compiled)"


def layer_of(frame: str) -> str:
    for name, marker in LAYERS:
        if marker in frame:
            return name
    return "loop/other"


def attribute(frames: list[str]) -> tuple[str, list[str]]:
    """(where the sample's time goes, the functions of the stack).

    With py-spy's ``--native`` a stack ends in C frames. A libc system-call wrapper at
    the leaf is time in the kernel (``syscall write`` ...); any other C frame is
    charged to the innermost function that called it, as py-spy does without
    ``--native``. Functions are the Python frames and, in the compiled build, the
    native frames of mypyc-compiled functions (see :func:`mypyc_frame`).
    """
    python: list[str] = []
    for frame in frames:
        if _PY_FRAME.search(frame):
            python.append(frame)
        elif (compiled := mypyc_frame(frame)) is not None and python[-1:] != [compiled]:
            python.append(compiled)  # the wrapper and the body of one call count once
    leaf = frames[-1]
    name = leaf.partition(" (")[0]
    if not _PY_FRAME.search(leaf) and name in SYSCALLS:
        return f"syscall {name}", python
    return (python[-1] if python else leaf), python


def summarize(stacks: list[tuple[list[str], int]], top: int) -> str:
    """Markdown tables: per layer and per function, self and cumulative %.

    Percentages are of the samples spent in user space (Python and the C it calls),
    i.e. without the samples whose leaf is a system call: py-spy counts a process
    that is runnable but waiting for a CPU as busy, and on a loaded machine that
    happens most right after a write() woke the peer, so syscall samples overstate
    the kernel's share (compare utime and stime instead).
    """
    total = sum(n for _, n in stacks)
    syscalls: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    cumulative: collections.Counter[str] = collections.Counter()
    layer_self: collections.Counter[str] = collections.Counter()
    layer_cum: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        where, python = attribute(frames)
        if where.startswith("syscall "):
            syscalls[where] += n
            continue
        self_time[where] += n
        layer_self[layer_of(where)] += n
        for frame in set(python):
            cumulative[frame] += n
        for layer in {layer_of(f) for f in python}:
            layer_cum[layer] += n
    user = sum(self_time.values()) or 1
    out = [
        f"{total} samples on the CPU; {total - user} ({100 * (total - user) / total:.0f} %) "
        f"with a system call at the leaf ("
        + ", ".join(f"{k.split()[1]} {100 * v / total:.0f} %" for k, v in syscalls.most_common(4))
        + f"); the {user} others are 100 % below.",
        "",
        "| layer | self % | cumulative % |",
        "|---|---:|---:|",
    ]
    for layer in [name for name, _ in LAYERS] + ["loop/other"]:
        out.append(
            f"| {layer} | {100 * layer_self[layer] / user:.1f} | "
            f"{100 * layer_cum[layer] / user:.1f} |"
        )
    out += ["", "| function | layer | self % | cumulative % |", "|---|---|---:|---:|"]
    shown = [f for f, _ in self_time.most_common(top)]
    shown += [f for f, _ in cumulative.most_common(top) if f not in shown]
    shown.sort(key=lambda f: (-self_time[f], -cumulative[f]))
    for frame in shown:
        out.append(
            f"| `{_short(frame)}` | {layer_of(frame)} | {100 * self_time[frame] / user:.1f} | "
            f"{100 * cumulative[frame] / user:.1f} |"
        )
    return "\n".join(out)


def _short(frame: str) -> str:
    """``func (path/to/pgsansio/engine/_relay.py:123)`` -> ``func (engine/_relay.py:123)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("pgsansio/", "site-packages/", "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})" if where else name


def cpu_times(pid: int) -> tuple[int, int]:
    """(utime, stime) in clock ticks, from /proc/<pid>/stat (see parse_proc_stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]), int(fields[12])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frontend", default="uvloop")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--pool-size", type=int, default=20)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--mode", default="simple", help="pgbench -M: simple, extended, prepared")
    parser.add_argument(
        "--connect", action="store_true", help="pgbench -C: a new connection per transaction"
    )
    parser.add_argument(
        "--py-spy-flags",
        default="--function --native",
        help="extra py-spy record flags: '' for per-line samples, '--native' for C frames",
    )
    parser.add_argument("--raw", type=pathlib.Path, help="keep py-spy's raw stacks here")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="profile the compiled (mypyc) build: `make compiled` on a copy of the tree, "
        "checked with pgsansio --version (default: pure Python)",
    )
    parser.add_argument(
        "--compiled-lib",
        type=pathlib.Path,
        metavar="DIR",
        help="with --compiled: use this build (build/compiled/lib) instead of making one",
    )
    parser.add_argument(
        "--tree", type=pathlib.Path, metavar="DIR", help="profile the pgsansio in DIR"
    )
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(pathlib.Path(sys.executable).parent / "py-spy")
    if not os.access(py_spy, os.X_OK):
        print("pooler_profile: py-spy is missing: pip install -e '.[bench]'", file=sys.stderr)
        return 1
    work = pathlib.Path(tempfile.mkdtemp(prefix="pgsansio-profile-"))
    raw = args.raw or work / "profile.txt"
    tree = (args.tree or pb.ROOT).resolve()
    lib = args.compiled_lib.resolve() if args.compiled_lib else None
    try:
        try:
            runner = pb.make_runner(tree, pb.COMPILED if args.compiled else pb.PURE, work, lib)
        except pb.BenchError as e:
            print(f"pooler_profile: {e}", file=sys.stderr)
            return 1
        with pb.Cluster(host="127.0.0.1") as cluster:
            cluster.add_user(pb.USER, pb.PASSWORD, auth="md5")
            cluster.create_database(pb.DATABASE, owner=pb.USER)
            subprocess.run(
                ["pgbench", "-i", "-q", "-s", "10", "-h", "127.0.0.1", "-p", str(cluster.port)]  # noqa: RUF005
                + ["-U", pb.USER, pb.DATABASE],
                check=True,
                capture_output=True,
                env=pb.pg_env(),
            )
            port = pb.free_port()
            toml = work / "pgsansio.toml"
            toml.write_text(pb.pgsansio_toml(port, cluster.port, args.pool_size))
            log = work / "pgsansio.log"
            cmd = [sys.executable, "-m", "pgsansio", "run", str(toml)]
            cmd += ["--frontend", args.frontend, "--log-level", "warning"]
            with open(log, "wb") as logf:
                proc = subprocess.Popen(
                    cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=runner.cwd, env=runner.env()
                )
            try:
                pb.wait_for_port(port, proc, "pgsansio", log)
                warm = pb.Workload("warm-up", ("-S",), args.pool_size, sampling=0.01)
                pb.run_pgbench(warm, port, 1, work)
                # Attach only now, so start-up (imports, compiling) is not in the profile.
                spy = [py_spy, "record", "--pid", str(proc.pid), "--format", "raw"]
                spy += [*args.py_spy_flags.split(), "-r", str(args.rate), "-o", str(raw)]
                spy += ["--duration", str(max(1, args.seconds - 1))]
                spy_proc = subprocess.Popen(
                    spy, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
                )
                flags = ("-S", "-M", args.mode, *(("-C",) if args.connect else ()))
                w = pb.Workload("profile", flags, args.clients, sampling=0.01)
                before = cpu_times(proc.pid)
                text, status, _ = pb.run_pgbench(w, port, args.seconds, work)
                after = cpu_times(proc.pid)
                _, spy_err = spy_proc.communicate(timeout=60)
                if spy_proc.returncode != 0:
                    print(f"pooler_profile: py-spy failed: {spy_err.strip()}", file=sys.stderr)
                    return 1
            finally:
                pb.stop(proc)
            if status != 0:
                print(f"pooler_profile: pgbench failed: {pb.pgbench_error(text)}", file=sys.stderr)
                return 1
            summary = pb.parse_pgbench_output(text)
            per_tx = [
                (b - a) / pb.CLK_TCK * 1e6 / summary.transactions
                for a, b in zip(before, after, strict=True)
            ]
            print(
                f"pgbench {' '.join(flags)} -c {args.clients} -j 2 -T {args.seconds} through "
                f"pgsansio --frontend {args.frontend} (protocol core: {runner.core}) under "
                f"py-spy ({args.rate} Hz): "
                f"{summary.tps:,.0f} tps; pgsansio CPU per transaction: user "
                f"{per_tx[0]:.1f} us, system {per_tx[1]:.1f} us (/proc/<pid>/stat)\n"
            )
        with open(raw, encoding="utf-8", errors="replace") as f:
            print(summarize(parse_raw(f), args.top))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
