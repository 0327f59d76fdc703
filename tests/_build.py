"""Which build the tests run against: the pure-Python source or the mypyc-compiled one.

``make test`` runs the suite against the compiled build and the protocol, engine and
fast-lane tests against pure Python too (docs/compiled.md). A compiled module calls the
functions and methods of its own package directly, so a test that wraps one of them to
watch the calls can only see them in the pure build: :data:`pure_only` marks such a
test, and says why in its reason. Every other test runs the same in both builds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgsansio.engine import _engine
from pgsansio.protocol import _connection


def compiled(module: object) -> bool:
    """Whether ``module`` was imported from a compiled extension, not its ``.py``."""
    return not (getattr(module, "__file__", None) or "").endswith(".py")


ROOT = Path(__file__).resolve().parent.parent
PROTOCOL_COMPILED = compiled(_connection)
ENGINE_COMPILED = compiled(_engine)


def pure_only(why: str) -> pytest.MarkDecorator:
    """Skip in the compiled build, for a test that must patch code compiled code calls
    directly; ``why`` says what the test watches and where the compiled build is
    covered instead. ``make test`` runs it in its pure-Python pass."""
    return pytest.mark.skipif(ENGINE_COMPILED, reason=f"pure-Python build only: {why}")


def pythonpath(tree: Path = ROOT) -> str:
    """``PYTHONPATH`` for a ``python -m pgsansio`` child running ``tree``.

    For this checkout, the inherited path comes first, so that the child runs the build
    the tests run (make test's compiled run puts ``build/compiled/lib`` there, and its
    ``PYTHONSAFEPATH=1`` keeps the current directory out); another tree (a before/after
    figure) is that tree's own source alone.
    """
    inherited = os.environ.get("PYTHONPATH")
    if tree == ROOT and inherited:
        return os.pathsep.join((inherited, str(tree)))
    return str(tree)
