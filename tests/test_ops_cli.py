"""The command line as an operator meets it: --version, help text, command order."""

from __future__ import annotations

import os
import pathlib
import platform
import re
import socket
import subprocess
import sys

import pytest

from pgsansio import __version__
from pgsansio.cli import COMMANDS, build_app


def cli(*args: str, block: str | None = None) -> subprocess.CompletedProcess[str]:
    """``pgsansio ARGS``; ``block`` runs it as if that package were not installed."""
    code = "import sys\n"
    if block:
        code += f"sys.modules[{block!r}] = None\n"
    code += "from pgsansio.cli import main\nmain(sys.argv[1:])\n"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "100", "NO_COLOR": "1"},
    )


def test_version_says_what_this_install_can_run() -> None:
    result = cli("--version")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"pgsansio {__version__}"
    assert lines[1].startswith(f"Python {platform.python_version()} (CPython, ")
    assert lines[2].startswith("frontends available: asyncio")
    assert (
        lines[3]
        == "query parser (pglast): installed (read/write splitting, automatic_sharding_key)"
    )
    # What runs: the package's own modules, compiled (make test-compiled) or not.
    from _build import ENGINE_COMPILED, PROTOCOL_COMPILED

    if not PROTOCOL_COMPILED and not ENGINE_COMPILED:
        assert lines[4] == "protocol core: pure Python"
    else:
        assert PROTOCOL_COMPILED and ENGINE_COMPILED
        assert lines[4].startswith(
            "protocol core: compiled with mypyc, the engine too (_connection.cpython-"
        )


def test_version_without_pglast_says_how_to_get_it() -> None:
    result = cli("--version", block="pglast")
    assert (
        "query parser (pglast): not installed (pip install pglast, for query_parser_enabled)"
    ) in result.stdout.splitlines()


def test_commands_come_in_the_order_an_operator_needs_them() -> None:
    result = cli("--help")
    names = re.findall(r"^│ (\w+) ", result.stdout, re.M)
    # typer lists command groups (conformance) after plain commands.
    assert names[:6] == ["run", "check", "demo", "convert", "record", "conformance"]
    assert "--version" in result.stdout
    # Registered functions are the same list, in the same order.
    app = build_app()
    assert [c.name for c in app.registered_commands][:4] == names[:4]
    assert len(COMMANDS) >= 4


@pytest.mark.parametrize("command", ["", "run", "check", "demo", "record"])
def test_help_has_no_type_labels(command: str) -> None:
    result = cli(*([command] if command else []), "--help")
    assert result.returncode == 0, result.stderr
    assert "<bool>" not in result.stdout and "<str>" not in result.stdout
    assert "<int>" not in result.stdout


def test_run_help_tells_sigint_and_sigterm_apart() -> None:
    text = " ".join(cli("run", "--help").stdout.replace("│", " ").split())
    assert (
        "SIGINT shuts down now: new clients are refused, idle clients disconnected, open "
        "transactions may finish for up to shutdown_timeout"
    ) in text
    assert (
        "SIGTERM shuts down gently: new clients are refused and the pooler exits when the "
        "last client has left"
    ) in text
    assert "A second SIGINT or SIGTERM exits at once" in text


def test_record_says_why_it_cannot_listen_once(tmp_path: pathlib.Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli(
            "record",
            "--listen",
            f"127.0.0.1:{port}",
            "--target",
            "127.0.0.1:1",
            "--out",
            str(tmp_path / "traces"),
        )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"pgsansio record: cannot listen on 127.0.0.1:{port}: address already in use (another "
        "program, perhaps a PostgreSQL, already listens there)"
    )
