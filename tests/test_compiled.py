"""Which protocol core runs (pure Python or mypyc-compiled), as the operator sees it.

The same tests pass in both builds: ``make test`` runs them on the pure-Python source,
``make test-compiled`` on the modules ``setup.py`` compiles (docs/compiled.md). The
truth they compare with is the file each protocol module was imported from.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import signal
import subprocess
import sys

from test_frontends import VALID_TOML

from pgsansio import __version__
from pgsansio.cli import core_description

# The modules setup.py compiles, and those it leaves as Python on purpose.
COMPILABLE = ("_auth", "_connection", "_errors", "_readers", "_saslprep", "_span", "_state")
ALWAYS_PYTHON = ("_events", "_events_query", "_sentinels")


def _compiled(name: str) -> bool:
    path = importlib.import_module(f"pgsansio.protocol.{name}").__file__ or ""
    return not path.endswith(".py")


def test_the_core_is_all_compiled_or_all_python_and_says_which() -> None:
    compiled = [_compiled(name) for name in COMPILABLE]
    assert all(compiled) or not any(compiled), dict(zip(COMPILABLE, compiled, strict=True))
    assert not any(_compiled(name) for name in ALWAYS_PYTHON)
    if compiled[0]:
        assert core_description().startswith("compiled with mypyc (_connection.cpython-")
    else:
        assert core_description() == "pure Python"


def test_the_sentinels_read_the_same_in_both_builds() -> None:
    from pgsansio.protocol import NEED_DATA, PAUSED, SERVER, Connection

    assert repr(NEED_DATA) == "NEED_DATA" and repr(PAUSED) == "PAUSED"
    assert Connection(SERVER).next_event() is NEED_DATA


def test_run_says_which_core_in_its_first_log_line(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "pgcat.toml"
    path.write_text(VALID_TOML)  # servers need not be up: it only starts
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgsansio", "run", str(path), "--frontend", "asyncio"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "CONFIG_FILE"},
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()
    for line in proc.stderr:
        if " listening on " in line:
            break
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert first.rstrip("\n").endswith(
        f" INFO pgsansio: pgsansio {__version__}, protocol core: {core_description()}"
    ), first
