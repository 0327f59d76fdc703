"""Which core runs (pure Python or mypyc-compiled), as the operator sees it.

The same tests pass in both builds: ``make test`` runs the whole suite on the modules
``setup.py`` compiles and the protocol, engine and fast-lane tests on the pure-Python
source too (docs/compiled.md). The truth they compare with is the file each module was
imported from.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import signal
import subprocess
import sys

from _build import compiled
from test_frontends import VALID_TOML

from pgsansio import __version__
from pgsansio.cli import core_description

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The modules setup.py compiles (every engine module), and those it leaves as Python
# on purpose.
COMPILABLE = (
    *(
        f"pgsansio.protocol.{name}"
        for name in ("_auth", "_connection", "_errors", "_readers", "_saslprep", "_span", "_state")
    ),
    *(f"pgsansio.engine.{p.stem}" for p in sorted((ROOT / "pgsansio" / "engine").glob("*.py"))),
)
ALWAYS_PYTHON = tuple(
    f"pgsansio.protocol.{name}" for name in ("_events", "_events_query", "_sentinels")
)


def _compiled(name: str) -> bool:
    return compiled(importlib.import_module(name))


def test_the_core_is_all_compiled_or_all_python_and_says_which() -> None:
    built = {name: _compiled(name) for name in COMPILABLE}
    assert all(built.values()) or not any(built.values()), built
    assert not any(_compiled(name) for name in ALWAYS_PYTHON)
    if all(built.values()):
        assert core_description().startswith(
            "compiled with mypyc, the engine too (_connection.cpython-"
        )
    else:
        assert core_description() == "pure Python"


def test_setup_compiles_every_engine_module_and_the_listed_protocol_ones() -> None:
    import runpy

    listed = runpy.run_path(str(ROOT / "setup.py"), run_name="not_main")["COMPILED"]
    assert {p.removesuffix(".py").replace("/", ".").removesuffix(".__init__") for p in listed} == {
        name.removesuffix(".__init__") for name in COMPILABLE
    } | {"pgsansio.protocol"}


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


def _build(tmp_path: pathlib.Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``setup.py build_py build_ext`` into ``tmp_path``, with ``env`` added."""
    lib, temp = tmp_path / "lib", tmp_path / "temp"
    argv = [sys.executable, "setup.py", "--quiet", "build_py", "--build-lib", str(lib)]
    argv += ["build_ext", "--build-lib", str(lib), "--build-temp", str(temp)]
    return subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_without_a_c_compiler_the_build_is_pure_python_and_says_why(
    tmp_path: pathlib.Path,
) -> None:
    done = _build(tmp_path, CC="false", PGSANSIO_COMPILE="")
    assert done.returncode == 0, done.stderr
    assert "pgsansio: no working C compiler, so installing pure Python" in done.stderr
    assert (tmp_path / "lib" / "pgsansio" / "engine" / "_engine.py").exists()
    assert not list((tmp_path / "lib").rglob("*.so"))


def test_a_compiled_build_asked_for_fails_without_a_c_compiler(tmp_path: pathlib.Path) -> None:
    done = _build(tmp_path, CC="false", PGSANSIO_COMPILE="1")
    assert done.returncode != 0
    assert "PGSANSIO_COMPILE=1 needs a C compiler and Python headers" in done.stderr


def test_pgsansio_compile_0_builds_pure_python_without_looking(tmp_path: pathlib.Path) -> None:
    done = _build(tmp_path, PGSANSIO_COMPILE="0")
    assert done.returncode == 0, done.stderr
    assert "pgsansio: PGSANSIO_COMPILE=0: installing pure Python" in done.stderr
    assert not list((tmp_path / "lib").rglob("*.so"))
