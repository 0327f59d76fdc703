"""The pure half of ``pooler_bench.py``: reading pgbench and /proc, writing the results.

Nothing here starts a process or opens a socket, so ``tests/test_pooler_bench.py`` runs
all of it in the default suite on recorded pgbench output. matplotlib is imported only
by :func:`plot_ratios`, since it comes with the ``bench`` extra and not with ``dev``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

__all__ = [
    "CLK_TCK",
    "DIRECT",
    "HEADER",
    "PGBOUNCER",
    "BenchError",
    "Cell",
    "PgbenchSummary",
    "TargetName",
    "markdown_report",
    "parse_pgbench_log",
    "parse_pgbench_output",
    "parse_proc_stat",
    "parse_proc_stat_children",
    "parse_target",
    "percentile",
    "pgbench_error",
    "plot_ratios",
    "ratio_series",
    "result_rows",
    "summary_rows",
    "text_table",
]

DIRECT: Final = "direct"
PGBOUNCER: Final = "pgbouncer"
CLK_TCK: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# ----------------------------------------------------------------------- pure parsing


@dataclasses.dataclass(frozen=True)
class PgbenchSummary:
    """What pgbench prints at the end of a run."""

    tps: float
    latency_ms: float
    transactions: int
    failed: int
    duration_s: float


_TPS = re.compile(r"^tps = ([0-9.]+)", re.M)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.M)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)
_DURATION = re.compile(r"^duration: (\d+) s", re.M)


class BenchError(Exception):
    """A step of the benchmark failed; ``str()`` says which and why."""


def parse_pgbench_output(text: str) -> PgbenchSummary:
    """Read TPS, average latency and counts from pgbench's summary (PostgreSQL 13+).

    Raises BenchError naming what is missing, with pgbench's last lines, when the run
    did not get as far as its summary.
    """
    found = {
        name: pattern.search(text)
        for name, pattern in (
            ("tps", _TPS),
            ("latency average", _LATENCY),
            ("transactions processed", _PROCESSED),
        )
    }
    missing = [name for name, match in found.items() if match is None]
    if missing:
        tail = " | ".join(text.strip().splitlines()[-3:]) or "(no output)"
        raise BenchError(f"pgbench printed no {', '.join(missing)}: {tail}")
    tps, latency, processed = (m.group(1) for m in found.values() if m is not None)
    failed = _FAILED.search(text)
    duration = _DURATION.search(text)
    return PgbenchSummary(
        tps=float(tps),
        latency_ms=float(latency),
        transactions=int(processed),
        failed=int(failed.group(1)) if failed else 0,
        duration_s=float(duration.group(1)) if duration else 0.0,
    )


def pgbench_error(text: str) -> str:
    """The first line of pgbench's output that says what went wrong, for the table."""
    for line in text.splitlines():
        if "error" in line.lower() or "aborted" in line.lower() or "fatal" in line.lower():
            return line.strip()
    lines = text.strip().splitlines()
    return lines[-1].strip() if lines else "pgbench failed with no output"


def parse_pgbench_log(lines: Iterable[str]) -> list[float]:
    """Latencies in milliseconds from pgbench's per-transaction log (``-l``).

    Each line is ``client_id transaction_no time script_no time_epoch time_us [...]``
    with ``time`` the latency in microseconds. Lines of failed or skipped
    transactions carry a word there instead and are left out.
    """
    out: list[float] = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[2].isdigit():
            out.append(int(fields[2]) / 1000.0)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _stat_fields(text: str) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first).

    The command name (field 2) is in parentheses and may itself hold spaces and
    parentheses, so fields are counted from the last ``)``.
    """
    _, sep, rest = text.rpartition(")")
    fields = rest.split()
    if not sep or len(fields) < 15:
        raise ValueError(f"not the text of /proc/<pid>/stat: {text[:80]!r}")
    return fields


def parse_proc_stat(text: str) -> int:
    """utime + stime, in clock ticks, from the text of ``/proc/<pid>/stat``."""
    fields = _stat_fields(text)
    # After the name: state is field 3, so utime (14) and stime (15) are 11 and 12 here.
    return int(fields[11]) + int(fields[12])


def parse_proc_stat_children(text: str) -> int:
    """cutime + cstime: the CPU of the children this process has waited for.

    A pooler with worker processes is measured as its whole process tree: the live
    processes' own time plus this, so that a worker that exits (and is reaped by the
    supervisor) during a run keeps its time in the sum instead of dropping out of it.
    """
    fields = _stat_fields(text)
    return int(fields[13]) + int(fields[14])


# ------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class TargetName:
    """What a pgsansio target's name says: ``pgsansio-<frontend>-<build>[-w<N>]<suffix>``.

    ``build`` is ``compiled`` (the mypyc build) or ``pure``; ``suffix`` is whatever
    follows (``@baseline``, ``-3shards``).
    """

    frontend: str
    build: str
    workers: int = 1
    suffix: str = ""

    def __str__(self) -> str:
        workers = f"-w{self.workers}" if self.workers != 1 else ""
        return f"pgsansio-{self.frontend}-{self.build}{workers}{self.suffix}"


_TARGET = re.compile(r"^pgsansio-(\w+)-(compiled|pure)(?:-w(\d+))?(.*)$")


def parse_target(name: str) -> TargetName | None:
    """The parts of a pgsansio target's name; None for PgBouncer, direct and the like."""
    match = _TARGET.match(name)
    if match is None:
        return None
    frontend, build, workers, suffix = match.groups()
    return TargetName(frontend, build, int(workers or 1), suffix)


def uvloop_twin(name: str) -> str | None:
    """The uvloop target of the same build, workers and tree, which ``name`` is
    compared with (``x uvloop``); None when ``name`` is not a pgsansio target."""
    parts = parse_target(name)
    return None if parts is None else str(dataclasses.replace(parts, frontend="uvloop"))


@dataclasses.dataclass
class Cell:
    """One workload against one target, summed over the rounds."""

    target: str
    workload: str
    tps: list[float] = dataclasses.field(default_factory=list)
    latency_ms: list[float] = dataclasses.field(default_factory=list)
    transactions: list[int] = dataclasses.field(default_factory=list)
    failed: int = 0
    samples: list[float] = dataclasses.field(default_factory=list)
    cpu_ticks: int | None = None
    error: str | None = None

    def add(self, summary: PgbenchSummary, samples: list[float], ticks: int | None) -> None:
        self.tps.append(summary.tps)
        self.latency_ms.append(summary.latency_ms)
        self.transactions.append(summary.transactions)
        self.failed += summary.failed
        self.samples.extend(samples)
        if ticks is not None:
            self.cpu_ticks = (self.cpu_ticks or 0) + ticks

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.tps)

    @property
    def mean_tps(self) -> float:
        return sum(self.tps) / len(self.tps) if self.tps else math.nan

    @property
    def mean_latency_ms(self) -> float:
        total = sum(self.transactions)
        if not total:
            return math.nan
        pairs = zip(self.latency_ms, self.transactions, strict=True)
        return sum(lat * n for lat, n in pairs) / total

    @property
    def p99_ms(self) -> float:
        return percentile(self.samples, 99.0)

    @property
    def cpu_us_per_tx(self) -> float | None:
        total = sum(self.transactions)
        if self.cpu_ticks is None or not total:
            return None
        return self.cpu_ticks / CLK_TCK * 1e6 / total


def _fmt(value: float | None, spec: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    return format(value, spec)


def result_rows(
    cells: dict[tuple[str, str], Cell], targets: Sequence[str], names: Sequence[str]
) -> list[list[str]]:
    """Rows of the result table, in :data:`HEADER`'s order, one per workload and target."""

    def tps_of(target: str, name: str) -> float | None:
        cell = cells.get((target, name))
        return cell.mean_tps if cell is not None and cell.ok else None

    rows: list[list[str]] = []
    for name in names:
        bouncer, direct = tps_of(PGBOUNCER, name), tps_of(DIRECT, name)
        for target in targets:
            cell = cells.get((target, name))
            if cell is None:
                continue
            if not cell.ok:
                rows.append([name, target, *["-"] * 7, cell.error or "no run"])
                continue
            note = f"{cell.failed} failed transactions" if cell.failed else ""
            twin = uvloop_twin(target)
            uvloop = tps_of(twin, name) if twin is not None else None
            rows.append(
                [
                    name,
                    target,
                    _fmt(cell.mean_tps, ",.0f"),
                    _fmt(cell.mean_latency_ms, ".2f"),
                    _fmt(cell.p99_ms, ".2f"),
                    _fmt(cell.mean_tps / bouncer if bouncer else None, ".2f"),
                    _fmt(cell.mean_tps / uvloop if uvloop else None, ".2f"),
                    _fmt(cell.mean_tps / direct if direct else None, ".2f"),
                    _fmt(cell.cpu_us_per_tx, ",.0f"),
                    note,
                ]
            )
    return rows


HEADER: Final = [
    "workload",
    "target",
    "TPS",
    "lat avg ms",
    "p99 ms",
    "x PgBouncer",
    "x uvloop",
    "x direct",
    "pooler CPU us/tx",
    "note",
]

_NUMERIC: Final = frozenset(range(2, len(HEADER) - 1))


def text_table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> str:
    """A plain fixed-width table for the terminal: the results (:data:`HEADER`), or
    ``header``'s table with every column but the first right-aligned."""
    numeric = _NUMERIC if header is None else frozenset(range(1, len(header)))
    grid = [HEADER if header is None else header, *rows]
    widths = [max(len(row[i]) for row in grid) for i in range(len(grid[0]))]
    lines = []
    for row in grid:
        cells = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Iterable[int]
) -> list[str]:
    right = frozenset(numeric)
    out = ["| " + " | ".join(_md_cell(c) for c in header) + " |"]
    out.append("|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|")
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return out


def summary_rows(
    cells: dict[tuple[str, str], Cell], targets: Sequence[str], names: Sequence[str]
) -> tuple[list[str], list[list[str]]]:
    """(header, rows): per workload, the figures issue 14's closing note asks for.

    PgBouncer's TPS and CPU per transaction; for uvloop in each build (pure, compiled):
    TPS as a ratio to PgBouncer and CPU per transaction; every other runtime's TPS as a
    ratio to uvloop of the same build; and each multi-worker target against its one-worker
    twin (TPS ratio, CPU per transaction of both). Columns appear only for targets that
    ran; a workload a target did not run shows ``-``.
    """

    def cell_of(target: str, name: str) -> Cell | None:
        cell = cells.get((target, name))
        return cell if cell is not None and cell.ok else None

    def ratio(a: Cell | None, b: Cell | None) -> str:
        return _fmt(a.mean_tps / b.mean_tps if a and b else None, ".2f")

    def cpu(cell: Cell | None) -> str:
        return _fmt(cell.cpu_us_per_tx if cell else None, ",.0f")

    plain = {t: p for t in targets if (p := parse_target(t)) is not None and not p.suffix}
    uvloops = [t for t, p in plain.items() if p.frontend == "uvloop" and p.workers == 1]
    others = [t for t, p in plain.items() if p.frontend != "uvloop" and p.workers == 1]
    builds_of: dict[str, set[str]] = {}
    for p in plain.values():
        builds_of.setdefault(p.frontend, set()).add(p.build)
    header = ["workload", "PgBouncer TPS", "PgBouncer us/tx"]
    for t in uvloops:
        header += [f"uvloop {plain[t].build} x PgBouncer", f"uvloop {plain[t].build} us/tx"]
    for t in others:
        p = plain[t]
        label = p.frontend if len(builds_of[p.frontend]) == 1 else f"{p.frontend} {p.build}"
        header.append(f"{label} x uvloop")
    multi = [t for t, p in plain.items() if p.workers > 1]
    for t in multi:
        p = plain[t]
        header += [
            f"{p.workers} workers / 1 ({p.frontend} {p.build})",
            f"us/tx 1 -> {p.workers} workers",
        ]
    rows: list[list[str]] = []
    for name in names:
        if not any((t, name) in cells for t in targets):
            continue
        bouncer = cell_of(PGBOUNCER, name)
        row = [name, _fmt(bouncer.mean_tps if bouncer else None, ",.0f"), cpu(bouncer)]
        for t in uvloops:
            row += [ratio(cell_of(t, name), bouncer), cpu(cell_of(t, name))]
        for t in others:
            row.append(ratio(cell_of(t, name), cell_of(str(uvloop_twin(t)), name)))
        for t in multi:
            one = cell_of(str(dataclasses.replace(plain[t], workers=1)), name)
            many = cell_of(t, name)
            tried = cells.get((t, name))
            row.append("not run" if tried is not None and tried.error else ratio(many, one))
            row.append(f"{cpu(one)} -> {cpu(many)}" if one and many else "-")
        rows.append(row)
    return header, rows


def markdown_report(
    rows: Sequence[Sequence[str]],
    machine: dict[str, str],
    setup: Sequence[str],
    omitted: Sequence[str],
    chart: str | None,
    *,
    summary: tuple[Sequence[str], Sequence[Sequence[str]]] | None = None,
) -> str:
    """The whole ``latest.md``: the summary, machine, setup, what was left out and why,
    the table."""
    out = ["# pgsansio vs PgBouncer vs direct: pgbench", ""]
    if summary is not None and summary[1]:
        out += ["## Summary", ""]
        out += [
            "TPS ratios (x PgBouncer, x uvloop: the uvloop target of the same build) and "
            "pooler CPU per transaction (us/tx, whole process tree); the full table is "
            "under Results.",
            "",
        ]
        out += _md_table(summary[0], summary[1], range(1, len(summary[0])))
        out.append("")
    out += ["## Machine", "", "| | |", "|---|---|"]
    out += [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in machine.items()]
    out += ["", "## Setup", ""]
    out += [f"- {line}" for line in setup]
    if omitted:
        out += ["", "## Left out", ""]
        out += [f"- {line}" for line in omitted]
    out += ["", "## Results", ""]
    out += _md_table(HEADER, rows, _NUMERIC)
    if chart:
        out += ["", f"![TPS relative to PgBouncer]({chart})"]
    return "\n".join(out) + "\n"


def ratio_series(
    cells: dict[tuple[str, str], Cell],
    targets: Sequence[str],
    names: Sequence[str],
    *,
    cpu: bool = False,
) -> dict[str, list[float | None]]:
    """TPS / PgBouncer TPS (``cpu``: pooler CPU per transaction / PgBouncer's) for each
    target other than PgBouncer: NaN where a figure is missing, None where the target
    does not run the workload at all (no bar, no "n/a"). With ``cpu``, only targets with
    a CPU figure (not direct)."""
    series: dict[str, list[float | None]] = {}
    for target in targets:
        if target == PGBOUNCER or (cpu and target == DIRECT):
            continue
        values: list[float | None] = []
        for name in names:
            cell, base = cells.get((target, name)), cells.get((PGBOUNCER, name))
            if cell is None:
                values.append(None)
                continue
            ok = cell.ok and base is not None and base.ok
            if not cpu:
                values.append(cell.mean_tps / base.mean_tps if ok else math.nan)  # type: ignore[union-attr]
                continue
            mine = cell.cpu_us_per_tx
            theirs = base.cpu_us_per_tx if ok else None  # type: ignore[union-attr]
            values.append(mine / theirs if mine and theirs else math.nan)
        series[target] = values
    return series


def _bars(ax: Any, series: dict[str, list[float | None]], names: Sequence[str]) -> None:
    """One group of bars per workload, one bar per target; "n/a" where a figure is
    missing."""
    width = 0.8 / max(1, len(series))
    for i, (target, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(names))]
        shown = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
        ax.bar(
            [x for x, _ in shown],
            [0 if math.isnan(v) else v for _, v in shown],
            width,
            label=target,
        )
        for x, v in shown:
            if math.isnan(v):
                ax.text(x, 0.02, "n/a", ha="center", va="bottom", fontsize="x-small", rotation=90)


def plot_ratios(
    series: dict[str, list[float | None]],
    names: Sequence[str],
    path: pathlib.Path,
    cpu: dict[str, list[float | None]] | None = None,
) -> str:
    """Write a grouped bar chart of TPS ratios (and, given ``cpu``, a second one of CPU
    per transaction ratios); return why not if matplotlib is missing."""
    try:
        import matplotlib  # noqa: PLC0415 - optional: the bench extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'), so no chart"
    panels = 2 if cpu else 1
    fig, axes = plt.subplots(
        panels, 1, figsize=(max(6.0, 1.6 * len(names)), 4.0 * panels), squeeze=False
    )
    ax = axes[0][0]
    _bars(ax, series, names)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(names)), list(names), rotation=20, ha="right")
    ax.set_ylabel("TPS relative to PgBouncer (1.0)")
    ax.set_title("pgbench TPS through each target / through PgBouncer")
    ax.legend(fontsize="small")
    if cpu:
        ax = axes[1][0]
        _bars(ax, cpu, names)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.axhline(1.5, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(names)), list(names), rotation=20, ha="right")
        ax.set_ylabel("pooler CPU per transaction / PgBouncer's")
        ax.set_title("pooler CPU per transaction relative to PgBouncer (dashed: 1.5x)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return ""
