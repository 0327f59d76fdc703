"""pgsansio conformance: the scenario format, the runner against real PostgreSQL 15, and
pgsansio itself (session and transaction pooling) judged by the suite.

Every scenario must pass or be correctly not applicable on each target; a pgsansio
failure is either fixed or recorded as a known finding in the scenario's metadata.
"""

from __future__ import annotations

import json
import pathlib
import socket
import subprocess
import sys
from xml.etree import ElementTree as ET

import pytest
from _pooler import make_config, running

from pgsansio.cli import main
from pgsansio.conformance import report
from pgsansio.conformance.from_trace import TraceNotConvertible, convert
from pgsansio.conformance.runner import Result, Target, run_suite, select
from pgsansio.conformance.scenario import (
    POOLING,
    ScenarioError,
    builtin_scenarios,
    parse_scenarios,
    quote,
    tokenize,
)
from pgsansio.conformance.trace import read_trace
from pgsansio.testing.cluster import TEST_DATABASE, TEST_USERS, Cluster

CORPUS = pathlib.Path(__file__).parent / "corpus"
USER = "md5_user"
PASSWORD = TEST_USERS[USER][1]


@pytest.fixture(scope="module")
def pg(pg15: Cluster) -> Cluster:
    # Scenarios create a schema of their own: the test role needs CREATE on the database.
    pg15.execute(f"GRANT CREATE ON DATABASE {TEST_DATABASE} TO PUBLIC;", dbname=TEST_DATABASE)
    return pg15


def _target(port: int, pooling: str = "session", label: str = "") -> Target:
    return Target("127.0.0.1", port, USER, PASSWORD, TEST_DATABASE, pooling, label)


def _failures(results: list[Result]) -> str:
    return report.render([r for r in results if r.status == "fail"], "text", "target")


# --- the format ------------------------------------------------------------------------


def test_builtin_suite_is_complete() -> None:
    scenarios = builtin_scenarios()
    assert len(scenarios) >= 80
    assert len({s.id for s in scenarios}) == len(scenarios)
    for s in scenarios:
        assert s.area and s.description and s.pooling in POOLING, s.id
    areas = {s.area for s in scenarios}
    assert {"simple", "extended", "copy", "startup", "cancel", "notify", "function"} <= areas


def test_tokens_round_trip() -> None:
    text = 'a\tb\n"c"\\ é \x01'
    assert tokenize(quote(text))[0].value == text
    toks = tokenize("""Bind "" "s" x'00 01' NULL word results=1""")
    assert [t.kind for t in toks] == ["word", "str", "str", "bytes", "null", "word", "word"]
    assert toks[3].value == b"\x00\x01"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("=== a\n", "header line"),
        ("# pgsansio-conformance 2\n=== a\n", "newer than this reader"),
        ("# pgsansio-conformance 1\n=== a\narea: x\npooling: x\n", "pooling must be"),
        ("# pgsansio-conformance 1\n=== a\narea: x\npooling: session\n> Query 1\n", "description"),
        ("# pgsansio-conformance 1\n=== a\nbogus: 1\n", "unknown key"),
        ("# pgsansio-conformance 1\n=== a\narea: x\n> Nope\n", "unknown frontend message"),
        ('# pgsansio-conformance 1\n=== a\narea: x\n> Query "abc\n', "unterminated"),
        ("# pgsansio-conformance 1\n> Query 1\n", "before the first"),
    ],
)
def test_malformed_files_name_the_problem(text: str, why: str) -> None:
    with pytest.raises(ScenarioError, match=why):
        parse_scenarios(text, "x.scenario")


def test_from_trace_converts_corpus_conversations() -> None:
    converted = refused = 0
    # The plain (small) recordings: the gzip-compressed ones are large data transfers.
    for path in sorted(CORPUS.glob("*/c1.jsonl")):
        scenario_dir = path.parent
        try:
            text = convert(read_trace(path), f"corpus.{scenario_dir.name}")
        except TraceNotConvertible:
            refused += 1
            continue
        (s,) = parse_scenarios("# pgsansio-conformance 1\n" + text, scenario_dir.name)
        assert s.steps
        converted += 1
    assert converted >= 30, (converted, refused)


# --- against real servers ----------------------------------------------------------------


def _check(results: list[Result]) -> None:
    assert not [r for r in results if r.status == "fail"], _failures(results)
    assert sum(r.status == "pass" for r in results) >= 80


def test_postgres15_passes_the_suite(pg: Cluster) -> None:
    results = run_suite(builtin_scenarios(), _target(pg.port))
    _check(results)
    na = {r.scenario.id for r in results if r.status == "n/a"}
    assert "startup.protocol-3.2" in na  # needs server>=18


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_pgsansio_passes_the_suite(pg: Cluster, mode: str) -> None:
    config = make_config(pg, pool_mode=mode, pool_size=6, users=(USER,))
    with running(config) as pooler:
        results = run_suite(builtin_scenarios(), _target(pooler.port, mode, f"pgsansio-{mode}"))
    _check(results)
    if mode == "transaction":
        na = {r.scenario.id for r in results if r.status == "n/a"}
        assert "notify.self" in na and "simple.select-one" not in na


def test_differential_mode_and_reports(pg: Cluster, tmp_path: pathlib.Path) -> None:
    config = make_config(pg, pool_mode="transaction", pool_size=4, users=(USER,))
    with running(config) as pooler:
        out = tmp_path / "r.xml"
        with pytest.raises(SystemExit) as exit_info:
            main(
                [
                    "conformance", "run",
                    "--target", f"127.0.0.1:{pooler.port}",
                    "--reference", f"127.0.0.1:{pg.port}",
                    "--user", USER, "--password", PASSWORD, "--database", TEST_DATABASE,
                    "--pool-mode", "transaction",
                    "--only", "simple.*", "--only", "copy",
                    "--format", "junit", "--output", str(out),
                ]
            )  # fmt: skip
        assert exit_info.value.code == 0
    suite = ET.parse(out).getroot()
    assert int(suite.get("tests", "0")) >= 20 and suite.get("failures") == "0"


def test_a_wrong_answer_fails_with_both_sides_decoded(pg: Cluster) -> None:
    (s,) = parse_scenarios(
        "# pgsansio-conformance 1\n=== t.wrong\narea: t\npooling: transaction\n"
        "description: expects the wrong value\n"
        '> Query "SELECT 2 AS a"\n< RowDescription a:23\n< DataRow "1"\n'
    )
    (r,) = run_suite([s], _target(pg.port))
    assert r.status == "fail" and r.expected == 'DataRow "1"' and r.got == 'DataRow "2"'
    assert "DataRow(values=(b'2',))" in r.decoded
    doc = json.loads(report.render([r], "json", "x"))
    assert doc["results"][0]["status"] == "fail"
    assert report.exit_status([r]) == 1


def test_select_by_pattern() -> None:
    chosen = select(builtin_scenarios(), ["cancel"])
    assert chosen and all(s.area == "cancel" for s in chosen)


def test_the_documented_example_passes(pg: Cluster) -> None:
    doc = (pathlib.Path(__file__).parent.parent / "docs" / "conformance.md").read_text("utf-8")
    example = doc.split("```text\n", 1)[1].split("```", 1)[0]
    (s,) = parse_scenarios(example, "docs/conformance.md")
    (r,) = run_suite([s], _target(pg.port))
    assert r.status == "pass", report.render([r], "text", "PostgreSQL 15")


def test_from_trace_command_writes_a_scenario_that_replays(
    pg: Cluster, tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "psql-md5.scenario"
    with pytest.raises(SystemExit) as exit_info:
        main(["conformance", "from-trace", str(CORPUS / "psql-md5"), "--output", str(out)])
    assert exit_info.value.code == 0
    (s,) = parse_scenarios(out.read_text("utf-8"), str(out))
    assert s.id == "corpus.psql-md5" and s.pooling == "transaction"
    (r,) = run_suite([s], _target(pg.port))
    assert r.status == "pass", report.render([r], "text", "PostgreSQL 15")


def test_unreachable_target_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SystemExit) as exit_info:
        main(["conformance", "run", "--target", f"127.0.0.1:{port}", "--user", "x"])
    assert exit_info.value.code == 2
    assert "cannot reach" in capsys.readouterr().err


def test_differential_mode_shows_what_the_scenario_left_open(pg: Cluster) -> None:
    # The scenario accepts any FATAL; the comparison with PostgreSQL still tells the
    # SQLSTATEs apart (pgsansio answers an unknown database like a wrong password).
    (s,) = parse_scenarios(
        "# pgsansio-conformance 1\n=== t.any-fatal\narea: t\npooling: transaction\n"
        "startup: none\ndescription: any refusal\n"
        "> Startup 3.0 user={user} database=conformance_nope\n! login\n"
        "< ErrorResponse FATAL *\n< EOF\n"
    )
    config = make_config(pg, pool_mode="transaction", pool_size=2, users=(USER,))
    with running(config) as pooler:
        (r,) = run_suite([s], _target(pooler.port, "transaction"), _target(pg.port))
    assert r.status == "fail" and "differs from the reference" in r.why
    assert r.reference_got.startswith("ErrorResponse FATAL 3D000")
    assert r.got.startswith("ErrorResponse FATAL 28P01")


def test_the_package_imports_only_the_protocol_layer() -> None:
    # The tester's package must not lean on the pooler it judges.
    code = (
        "import sys, pgsansio.conformance.cli as c, pgsansio.conformance.runner, "
        "pgsansio.conformance.report, pgsansio.conformance.from_trace, "
        "pgsansio.conformance.recorder\n"
        "import typer\n"
        "c.register(typer.Typer())\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('pgsansio.engine', "
        "'pgsansio.frontends', 'pgsansio.config', 'pgsansio.routing')))\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout
