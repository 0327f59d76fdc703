"""Build hook: compile the hot path with mypyc when asked, pure Python otherwise.

``pyproject.toml`` holds the metadata; this file only adds the compiled extension
modules, as black and charset-normalizer ship theirs. The build is opt-in for now:
``PGSANSIO_COMPILE=1`` compiles (and fails loudly if it cannot, since it was asked
for); anything else, or no variable, installs the pure-Python package, which needs
no compiler and no mypy. The compiled modules are the same source: every ``.py``
stays in the package, so a missing or broken extension never leaves a hole.

Which modules compile, and why the others do not (docs/compiled.md has the figures):

- ``pgsansio.protocol`` except ``_events`` and ``_events_query``: the event classes
  build their ``_fields`` in ``__init_subclass__`` and are made immutable through
  ``object.__setattr__``, which mypyc's native classes do not support; compiling them
  would mean rewriting every event class. The fast lane (``take_query`` / ``take_answer``
  / ``next_span``) builds few events, so the compiled readers, state machine and
  connection carry the per-transaction cost. ``_sentinels`` holds the ``NEED_DATA`` /
  ``PAUSED`` classes, whose metaclass mypyc cannot compile.
"""

from __future__ import annotations

import os

from setuptools import setup

#: Modules compiled with mypyc when PGSANSIO_COMPILE=1 (paths from the project root).
COMPILED = [
    "pgsansio/protocol/__init__.py",
    "pgsansio/protocol/_auth.py",
    "pgsansio/protocol/_connection.py",
    "pgsansio/protocol/_errors.py",
    "pgsansio/protocol/_readers.py",
    "pgsansio/protocol/_saslprep.py",
    "pgsansio/protocol/_span.py",
    "pgsansio/protocol/_state.py",
]


def _ext_modules() -> list[object]:
    if os.environ.get("PGSANSIO_COMPILE", "").strip().lower() not in ("1", "true", "yes"):
        return []
    try:
        from mypyc.build import mypycify  # noqa: PLC0415 - only when compiling
    except ImportError as exc:  # asked for a compiled build: say what is missing
        raise SystemExit(
            "PGSANSIO_COMPILE=1 needs mypy (which provides mypyc) in the build "
            "environment: pip install mypy, then build with --no-build-isolation "
            f"({exc})"
        ) from None
    return list(mypycify(COMPILED, opt_level="3", debug_level="1"))


setup(ext_modules=_ext_modules())
