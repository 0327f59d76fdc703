#!/usr/bin/env python3
"""Print the core's throughput as a table to paste into a note.

Runs the same workloads as ``test_bench_core.py`` with plain timing, best of
``--repeat`` runs (each on a fresh connection), and reports MB/s, messages/s,
ns/message, and the slowdown against a plain memory copy of the same bytes
(``bytearray(chunk)`` per chunk) measured in the same run: on a shared,
noisy machine the ratio is the figure to trust.

Usage::

    .venv/bin/python bench/report.py [--repeat 9] [--profile "rows: next_span (fast path)"]

``--profile NAME`` runs one workload under cProfile instead and prints where
its time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pathlib
import platform
import pstats
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _workloads


def best_of(workload: _workloads.Workload, repeat: int) -> float:
    """Best wall time of ``repeat`` runs, each on fresh state built untimed."""
    best = float("inf")
    for _ in range(repeat):
        run = workload.prepare()
        gc.collect()
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def table(repeat: int) -> str:
    rows = [
        "| workload | MB/s | messages/s | ns/message | x memory copy |",
        "|---|---:|---:|---:|---:|",
    ]
    copy_rate: dict[str, float] = {}
    for w in _workloads.workloads():
        seconds = best_of(w, repeat)
        mbps = w.nbytes / seconds / 1e6
        if w.baseline:
            copy_rate[w.group] = mbps
        ratio = copy_rate[w.group] / mbps
        rows.append(
            f"| {w.name} | {mbps:,.1f} | {w.messages / seconds:,.0f} | "
            f"{seconds / w.messages * 1e9:,.0f} | {ratio:,.1f} |"
        )
    return "\n".join(rows)


def profile(name: str) -> None:
    workload = next((w for w in _workloads.workloads() if w.name == name), None)
    if workload is None:
        names = ", ".join(repr(w.name) for w in _workloads.workloads())
        raise SystemExit(f"no workload {name!r}; choose from {names}")
    run = workload.prepare()
    profiler = cProfile.Profile()
    profiler.runcall(run)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--profile", metavar="NAME")
    args = parser.parse_args()
    if args.profile:
        profile(args.profile)
        return
    rows, _ = _workloads.rows_stream()
    front, back = _workloads.mix_streams()
    print(
        f"Python {platform.python_version()} on {platform.machine()}, best of {args.repeat}.\n"
        f"rows: {rows.messages:,} messages, {rows.nbytes:,} B "
        f"({rows.nbytes / rows.messages:.1f} B/message), "
        f"{len(rows.chunks)} chunks, {rows.source}.\n"
        f"mix: {_workloads.TRANSACTIONS:,} transactions; F {front.nbytes:,} B, "
        f"B {back.nbytes:,} B, in 64 KiB chunks.\n"
    )
    print(table(args.repeat))


if __name__ == "__main__":
    main()
