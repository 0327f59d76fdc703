"""The pure parts of ``make bench`` (bench/_pgbench_results.py) on recorded text.

pgbench's output and per-transaction log in tests/data/pgbench were recorded from
pgbench 15 against a throwaway cluster. No pgbench runs here. Also: the process-tree
CPU sum (on a real parent and child process) and how ``pooler_profile.py`` counts
mypyc-compiled frames.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import _pgbench_results as r  # noqa: E402
import pooler_bench as pb  # noqa: E402
import pooler_profile as pp  # noqa: E402

DATA = pathlib.Path(__file__).resolve().parent / "data" / "pgbench"


def test_summary_of_a_select_only_run() -> None:
    s = r.parse_pgbench_output((DATA / "select-only.txt").read_text())
    assert s == r.PgbenchSummary(
        tps=57477.777260, latency_ms=0.070, transactions=114728, failed=0, duration_s=2.0
    )


def test_summary_of_a_reconnecting_run() -> None:
    # -C prints "average connection time" and "(including reconnection times)".
    s = r.parse_pgbench_output((DATA / "reconnect.txt").read_text())
    assert (s.tps, s.latency_ms, s.transactions) == (350.795718, 5.701, 352)


def test_a_run_without_summary_is_an_error_that_quotes_pgbench() -> None:
    text = (DATA / "failed.txt").read_text()
    with pytest.raises(r.BenchError, match="printed no tps, latency average") as e:
        r.parse_pgbench_output(text)
    assert "Perhaps you need to do initialization" in str(e.value)
    assert r.pgbench_error(text) == (
        "pgbench: error: no pgbench_accounts table found in search_path"
    )
    assert r.pgbench_error("") == "pgbench failed with no output"
    assert r.pgbench_error("a\nlast words\n") == "last words"


def test_summary_of_an_older_pgbench_without_failure_counts() -> None:
    text = (DATA / "select-only.txt").read_text()
    lines = [ln for ln in text.splitlines() if not ln.startswith(("number of failed", "duration"))]
    s = r.parse_pgbench_output("\n".join(lines))
    assert (s.failed, s.duration_s, s.transactions) == (0, 0.0, 114728)


def test_transaction_log_latencies_and_p99() -> None:
    lines = (DATA / "transactions.log").read_text().splitlines()
    lat = r.parse_pgbench_log([*lines, "0 5 failed 0 1795580431 1", "", "garbage"])
    assert len(lat) == 20
    assert lat[:3] == [0.074, 0.064, 0.096]
    # nearest rank: the 20th of 20 sorted values is p99, the 10th is the median
    assert r.percentile(lat, 99) == 0.104
    assert r.percentile(lat, 50) == sorted(lat)[9]
    assert r.percentile([3.0], 99) == 3.0
    assert math.isnan(r.percentile([], 99))


def test_proc_stat_utime_plus_stime() -> None:
    # Field 14 utime = 7, field 15 stime = 5 (in clock ticks).
    rest = "R 1 1 1 0 -1 4194304 100 0 0 0 7 5 0 0 20 0 1 0 1466084 3133440 394"
    assert r.parse_proc_stat(f"25708 (cat) {rest}") == 12
    # The command name may hold spaces and parentheses.
    assert r.parse_proc_stat(f"25708 (a) b (c)) {rest}") == 12
    with pytest.raises(ValueError, match="not the text of /proc"):
        r.parse_proc_stat("25708 cat R 1")
    # Fields 16 cutime = 3 and 17 cstime = 2: the children it has reaped.
    rest = "S 1 1 1 0 -1 4194304 100 0 0 0 7 5 3 2 20 0 1 0 1466084 3133440 394"
    assert r.parse_proc_stat_children(f"25708 (pgsansio: supervisor) {rest}") == 5
    assert r.parse_proc_stat(f"25708 (pgsansio: supervisor) {rest}") == 12


def test_target_names() -> None:
    parts = r.parse_target("pgsansio-uvloop-compiled-w2")
    assert parts == r.TargetName("uvloop", "compiled", 2, "")
    assert str(parts) == "pgsansio-uvloop-compiled-w2"
    assert r.parse_target("pgsansio-curio-pure@baseline") == r.TargetName(
        "curio", "pure", 1, "@baseline"
    )
    assert r.parse_target("pgbouncer") is None
    assert r.parse_target("pgsansio-uvloop") is None  # no build: not a target of this run
    # x uvloop compares with uvloop of the same build, workers and tree
    assert r.uvloop_twin("pgsansio-anyio-pure-3shards") == "pgsansio-uvloop-pure-3shards"
    assert r.uvloop_twin("direct") is None


def _cell(target: str, name: str, tps: list[float], **kw: object) -> r.Cell:
    cell = r.Cell(target, name)
    for i, t in enumerate(tps):
        summary = r.PgbenchSummary(t, 1.0 + i, int(t * 10), 0, 10.0)
        cell.add(summary, [1.0, 2.0, 3.0], kw.get("ticks"))  # type: ignore[arg-type]
    return cell


def test_cells_average_rounds_and_weight_latency() -> None:
    cell = _cell("pgsansio-uvloop", "-S c32", [1000.0, 3000.0], ticks=100)
    assert cell.mean_tps == 2000.0
    # latencies 1.0 and 2.0 weighted by 10,000 and 30,000 transactions
    assert cell.mean_latency_ms == pytest.approx(1.75)
    assert cell.p99_ms == 3.0
    assert cell.cpu_us_per_tx == pytest.approx(200 / r.CLK_TCK * 1e6 / 40000)
    empty = r.Cell("direct", "x")
    assert not empty.ok
    assert math.isnan(empty.mean_tps) and math.isnan(empty.mean_latency_ms)
    assert empty.cpu_us_per_tx is None


UV = "pgsansio-uvloop-compiled"


def _cells() -> dict[tuple[str, str], r.Cell]:
    cells = {
        (UV, "-S c32"): _cell(UV, "-S c32", [15000.0], ticks=50),
        ("pgbouncer", "-S c32"): _cell("pgbouncer", "-S c32", [30000.0], ticks=20),
        ("direct", "-S c32"): _cell("direct", "-S c32", [60000.0]),
        (UV, "prep"): _cell(UV, "prep", [12000.0], ticks=40),
        ("pgbouncer", "prep"): r.Cell("pgbouncer", "prep", error="not run: too old | x"),
        ("direct", "prep"): _cell("direct", "prep", [48000.0]),
    }
    cells[UV, "-S c32"].failed = 3
    return cells


def test_rows_table_and_markdown() -> None:
    targets = [UV, "pgbouncer", "direct"]
    rows = r.result_rows(_cells(), targets, ["-S c32", "prep", "missing"])
    assert rows[0] == [
        "-S c32",
        UV,
        "15,000",
        "1.00",
        "3.00",
        "0.50",
        "1.00",
        "0.25",
        f"{50 / r.CLK_TCK * 1e6 / 150000:,.0f}",
        "3 failed transactions",
    ]
    assert rows[2][5:9] == ["2.00", "-", "1.00", "-"]
    # no PgBouncer figure: no ratio to it, but the ratio to direct stays
    assert rows[3][5:8] == ["-", "1.00", "0.25"]
    assert rows[4] == ["prep", "pgbouncer", *["-"] * 7, "not run: too old | x"]
    assert len(rows) == 6

    text = r.text_table(rows).splitlines()
    assert text[0].split()[:3] == ["workload", "target", "TPS"]
    assert set(text[1]) == {"-", " "}
    assert text[2].startswith("-S c32  ")
    assert text[2].index("15,000") + len("15,000") == text[0].index("TPS") + len("TPS")

    md = r.markdown_report(
        rows,
        {"CPU": "AMD EPYC", "cores": "2"},
        ["pool size 20"],
        ["PgBouncer -M prepared"],
        "x.png",
    )
    assert "| CPU | AMD EPYC |" in md
    assert "- pool size 20" in md
    assert "## Left out\n\n- PgBouncer -M prepared" in md
    assert "| prep | pgbouncer | - | - | - | - | - | - | - | not run: too old \\| x |" in md
    assert md.count("|---|---|---:|") == 1
    assert md.rstrip().endswith("![TPS relative to PgBouncer](x.png)")
    assert "Left out" not in r.markdown_report(rows, {}, [], [], None)
    assert "## Summary" not in md


def test_summary_of_builds_runtimes_and_workers() -> None:
    w2, pure, curio = f"{UV}-w2", "pgsansio-uvloop-pure", "pgsansio-curio-compiled"
    cells = _cells()
    cells[pure, "-S c32"] = _cell(pure, "-S c32", [12000.0], ticks=60)
    cells[curio, "-S c32"] = _cell(curio, "-S c32", [9000.0], ticks=60)
    cells[w2, "-S -C"] = _cell(w2, "-S -C", [3000.0], ticks=60)
    cells[UV, "-S -C"] = _cell(UV, "-S -C", [2000.0], ticks=60)
    cells["pgbouncer", "-S -C"] = _cell("pgbouncer", "-S -C", [4000.0], ticks=10)
    targets = [UV, w2, pure, curio, "pgbouncer", "direct"]
    header, rows = r.summary_rows(cells, targets, ["-S c32", "-S -C", "missing"])
    assert header == [
        "workload",
        "PgBouncer TPS",
        "PgBouncer us/tx",
        "uvloop compiled x PgBouncer",
        "uvloop compiled us/tx",
        "uvloop pure x PgBouncer",
        "uvloop pure us/tx",
        "curio x uvloop",
        "2 workers / 1 (uvloop compiled)",
        "us/tx 1 -> 2 workers",
    ]
    us = lambda ticks, tps: f"{ticks / r.CLK_TCK * 1e6 / (tps * 10):,.0f}"  # noqa: E731
    assert rows[0] == [
        "-S c32",
        "30,000",
        us(20, 30000),
        "0.50",
        us(50, 15000),
        "0.40",
        us(60, 12000),
        "0.60",
        "-",
        "-",
    ]
    assert rows[1][:5] == ["-S -C", "4,000", us(10, 4000), "0.50", us(60, 2000)]
    assert rows[1][5:] == ["-", "-", "-", "1.50", f"{us(60, 2000)} -> {us(60, 3000)}"]
    assert len(rows) == 2  # nothing ran "missing"
    # a workers target that did not run says so
    cells[w2, "-S -C"] = r.Cell(w2, "-S -C", error="not run: ignores workers")
    assert r.summary_rows(cells, targets, ["-S -C"])[1][0][-2:] == ["not run", "-"]
    md = r.markdown_report([], {}, [], [], None, summary=(header, rows))
    assert md.index("## Summary") < md.index("## Machine")
    assert "| -S c32 | 30,000 |" in md
    assert r.text_table(rows, header).splitlines()[0].startswith("workload  PgBouncer TPS")


def test_ratio_series_for_the_chart() -> None:
    series = r.ratio_series(_cells(), [UV, "pgbouncer", "direct"], ["-S c32", "prep", "gone"])
    assert list(series) == [UV, "direct"]
    assert series[UV][0] == 0.5
    assert series["direct"][0] == 2.0
    assert math.isnan(series[UV][1])  # no PgBouncer figure: n/a
    assert series[UV][2] is None  # not run at all: no bar
    cpu = r.ratio_series(_cells(), [UV, "pgbouncer", "direct"], ["-S c32", "prep"], cpu=True)
    assert list(cpu) == [UV]  # direct has no pooler CPU
    assert cpu[UV][0] == pytest.approx((50 / 150000) / (20 / 300000))
    assert math.isnan(cpu[UV][1])


def test_chart_or_the_reason_there_is_none(tmp_path: pathlib.Path) -> None:
    # matplotlib comes with the bench extra, not with dev: both outcomes are checked.
    path = tmp_path / "chart.png"
    series: dict[str, list[float | None]] = {UV: [0.5, math.nan], "direct": [2.0, None]}
    why_not = r.plot_ratios(series, ["-S c32", "prep"], path, {UV: [2.5, math.nan]})
    if importlib.util.find_spec("matplotlib") is None:
        assert "pip install -e '.[bench]'" in why_not
        assert not path.exists()
    else:
        assert why_not == ""
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_process_tree_cpu_counts_workers_and_reaped_children() -> None:
    # A supervisor stand-in: it starts a worker that burns CPU for a while and exits,
    # reaps it, and sleeps. Its tree's CPU keeps the worker's time after the worker is
    # gone (in the parent's cutime), and the worker is listed while it runs.
    burn = "import time\nend = time.process_time() + 0.15\nwhile time.process_time() < end: pass"
    parent = (
        "import subprocess, sys, time\n"
        f"w = subprocess.Popen([sys.executable, '-c', {burn!r}])\n"
        "print(w.pid, flush=True)\nw.wait()\nprint('reaped', flush=True)\ntime.sleep(30)"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        worker = int(proc.stdout.readline())
        assert worker in pb.descendants(proc.pid)
        assert proc.stdout.readline().strip() == "reaped"
        assert pb.descendants(proc.pid) == []
        # 0.15 s of the worker's CPU, whatever the clock tick
        assert pb.tree_ticks(proc.pid) >= 0.12 * r.CLK_TCK
    finally:
        pb.stop(proc)
    assert proc.returncode is not None


def test_profile_counts_compiled_frames_as_their_functions() -> None:
    body = "CPyDef__connection___Connection___take_answer (__native_ab.c:27852)"
    wrapper = "CPyPy__connection___Connection___take_answer (__native_ab.c:27800)"
    named = "Connection.take_answer (pgsansio/protocol/_connection.py, compiled)"
    assert pp.mypyc_frame(body) == named
    assert pp.mypyc_frame(wrapper) == named
    assert pp.mypyc_frame("Py_DECREF (object.h:537)") is None
    caller = "fast_answer (/x/pgsansio/engine/_relay.py:651)"
    stack = ["main (/x/pgsansio/cli.py:1)", caller, wrapper, body, "Py_DECREF (object.h:537)"]
    where, functions = pp.attribute(stack)
    assert where == named  # not charged to its Python caller
    assert functions == [stack[0], caller, named]  # wrapper and body: one call
    assert pp.layer_of(where) == "protocol"
    table = pp.summarize([(stack, 3), ([*stack[:2], "write (libc.so.6)"], 1)], 5)
    # shares of the user-space samples: the one with write() at its leaf is left out
    assert "1 (25 %) with a system call at the leaf" in table
    assert "| protocol | 100.0 | 100.0 |" in table
    assert "`Connection.take_answer (protocol/_connection.py, compiled)`" in table
