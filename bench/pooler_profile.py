#!/usr/bin/env python3
"""``make bench-profile``: where pgsansio's CPU goes under ``pgbench -S -c 32``.

Starts a throwaway cluster (as ``pooler_bench.py`` does), runs pgsansio under
py-spy (``py-spy record --format raw --function``, sampling only while the process is
on the CPU: py-spy leaves idle samples out), drives it with pgbench for
``--seconds``, and prints the functions with the largest self and cumulative share of
the samples, plus the share of each layer: the protocol core (``pgsansio/protocol``),
the engine (``pgsansio/engine``), the frontend (``pgsansio/frontends``) and the event
loop and everything else below them. ``bench/PROFILE.md`` quotes its output.

Usage::

    .venv/bin/python bench/pooler_profile.py [--frontend uvloop] [--seconds 20] [--top 30]
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import shutil
import signal
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


def layer_of(frame: str) -> str:
    for name, marker in LAYERS:
        if marker in frame:
            return name
    return "loop/other"


def summarize(stacks: list[tuple[list[str], int]], top: int) -> str:
    total = sum(n for _, n in stacks)
    self_time: collections.Counter[str] = collections.Counter()
    cumulative: collections.Counter[str] = collections.Counter()
    layer_self: collections.Counter[str] = collections.Counter()
    layer_cum: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        leaf = frames[-1]
        self_time[leaf] += n
        layer_self[layer_of(leaf)] += n
        for frame in set(frames):
            cumulative[frame] += n
        for layer in {layer_of(f) for f in frames}:
            layer_cum[layer] += n
    out = [
        f"{total} samples on the CPU",
        "",
        "| layer | self % | cumulative % |",
        "|---|---:|---:|",
    ]
    for layer in [name for name, _ in LAYERS] + ["loop/other"]:
        out.append(
            f"| {layer} | {100 * layer_self[layer] / total:.1f} | "
            f"{100 * layer_cum[layer] / total:.1f} |"
        )
    out += ["", "| function | layer | self % | cumulative % |", "|---|---|---:|---:|"]
    shown = [f for f, _ in self_time.most_common(top)]
    shown += [f for f, _ in cumulative.most_common(top) if f not in shown]
    shown.sort(key=lambda f: (-self_time[f], -cumulative[f]))
    for frame in shown:
        out.append(
            f"| `{_short(frame)}` | {layer_of(frame)} | {100 * self_time[frame] / total:.1f} | "
            f"{100 * cumulative[frame] / total:.1f} |"
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


def stop_traced(proc: subprocess.Popen[bytes]) -> None:
    """Stop pgsansio with SIGINT, as an operator would; py-spy then writes its file."""
    children = pathlib.Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    try:
        pids = [int(p) for p in children.read_text().split()]
    except OSError:
        pids = []
    for pid in pids:
        os.kill(pid, signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        pb.stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frontend", default="uvloop")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--pool-size", type=int, default=20)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--mode", default="simple", help="pgbench -M: simple, extended, prepared")
    parser.add_argument("--raw", type=pathlib.Path, help="keep py-spy's raw stacks here")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(pathlib.Path(sys.executable).parent / "py-spy")
    if not os.access(py_spy, os.X_OK):
        print("pooler_profile: py-spy is missing: pip install -e '.[bench]'", file=sys.stderr)
        return 1
    work = pathlib.Path(tempfile.mkdtemp(prefix="pgsansio-profile-"))
    raw = args.raw or work / "profile.txt"
    try:
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
            cmd = [py_spy, "record", "--format", "raw", "--function", "-r", str(args.rate)]
            cmd += ["-o", str(raw), "--", sys.executable, "-m", "pgsansio", "run", str(toml)]
            cmd += ["--frontend", args.frontend, "--log-level", "warning"]
            with open(log, "wb") as logf:
                proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=pb.ROOT)
            try:
                pb.wait_for_port(port, proc, "pgsansio under py-spy", log)
                warm = pb.Workload("warm-up", ("-S",), args.pool_size, sampling=0.01)
                pb.run_pgbench(warm, port, 1, work)
                w = pb.Workload("profile", ("-S", "-M", args.mode), args.clients, sampling=0.01)
                text, status, _ = pb.run_pgbench(w, port, args.seconds, work)
            finally:
                stop_traced(proc)
            if status != 0:
                print(f"pooler_profile: pgbench failed: {pb.pgbench_error(text)}", file=sys.stderr)
                return 1
            summary = pb.parse_pgbench_output(text)
            print(
                f"pgbench -S -M {args.mode} -c {args.clients} -j 2 -T {args.seconds} through "
                f"pgsansio --frontend {args.frontend} under py-spy ({args.rate} Hz): "
                f"{summary.tps:,.0f} tps\n"
            )
        with open(raw, encoding="utf-8", errors="replace") as f:
            print(summarize(parse_raw(f), args.top))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
