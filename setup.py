"""Build hook: compile the protocol core and the engine with mypyc, or install pure Python.

``pyproject.toml`` holds the metadata; this file only adds the compiled extension
modules, as black and charset-normalizer ship theirs. The compiled modules are the same
source: every ``.py`` stays in the package, so a missing or broken extension never
leaves a hole, and the library has no runtime dependency either way (mypyc's runtime
is compiled into the extensions).

``PGSANSIO_COMPILE`` chooses:

- unset (or ``auto``): compiled when the build can (mypy, which ships mypyc, is
  importable and a C compiler builds against the Python headers); otherwise pure
  Python, and one line on stderr says why (``pip install -v`` shows it). A C compile
  that fails midway also falls back to pure Python (the wheel then keeps a platform
  tag, holding only ``.py`` files).
- ``1``: compiled, or the build fails and says why (CI, ``make compiled``).
- ``0``: pure Python (a ``py3-none-any`` wheel), without looking for mypy or a compiler.

An editable install (``pip install -e .``, what ``make`` uses) is always pure Python:
setuptools would put the extensions beside the ``.py`` files, where they keep running
the old code after every edit.

Build requirements (the decision): ``[build-system] requires`` lists mypy, so that a
plain ``pip install .`` or ``pip wheel .`` in pip's isolated build environment can
compile. It is a build-time download only (about 18 MB with its dependencies), never a
runtime dependency of the installed package; ``PGSANSIO_COMPILE=0`` builds pure with
it unused, and ``--no-build-isolation`` builds with what the current environment has
(pure Python when it has no mypy). PEP 517 lets a backend ask for mypy only when it
will compile, but that needs an in-tree backend module beside this file for one
saved download; not worth it.

Compiling all of it takes about 1.5 min of one core (at ``opt_level`` 3): mypyc writes
one C file for all the modules, so that they call each other directly. Separate
extensions per module (``separate=True``, which ``build_ext --parallel`` can spread
over cores) cost a third more CPU in all, since each carries its own copy of mypyc's
runtime, and pay only with idle cores; ``make test`` keeps the second core busy with
the pure-Python run instead (docs/compiled.md). ``PGSANSIO_OPT_LEVEL`` (0-3, default
3) trades the speed of the result for build time.

Which modules compile, and why the others do not (docs/compiled.md has the figures):

- ``pgsansio.protocol`` except ``_events`` and ``_events_query``: the event classes
  build their ``_fields`` in ``__init_subclass__`` and are made immutable through
  ``object.__setattr__``, which mypyc's native classes do not support; compiling them
  would mean rewriting every event class. ``_sentinels`` holds the ``NEED_DATA`` /
  ``PAUSED`` classes, whose metaclass mypyc cannot compile.
- ``pgsansio.engine``: every module. Its parts call each other constantly, so it pays
  only when all of it is compiled.
- Not compiled: the config loader, the frontends (they spend their time in the event
  loop and the kernel), the CLI, routing (pglast) and the test helpers.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent

#: Modules compiled with mypyc (paths from the project root).
COMPILED = [
    "pgsansio/protocol/__init__.py",
    "pgsansio/protocol/_auth.py",
    "pgsansio/protocol/_connection.py",
    "pgsansio/protocol/_errors.py",
    "pgsansio/protocol/_readers.py",
    "pgsansio/protocol/_saslprep.py",
    "pgsansio/protocol/_span.py",
    "pgsansio/protocol/_state.py",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pgsansio" / "engine").glob("*.py")),
]

#: setup.py commands that build what gets installed (not egg_info, sdist, dist_info,
#: nor editable_wheel / develop, which stay pure Python).
BUILDING = {"build", "build_ext", "bdist_wheel", "install", "bdist"}


def _say(text: str) -> None:
    print(f"pgsansio: {text}", file=sys.stderr, flush=True)


def _mode() -> str:
    """ "pure", "auto" or "force", from PGSANSIO_COMPILE."""
    value = os.environ.get("PGSANSIO_COMPILE", "").strip().lower()
    if value in ("0", "false", "no", "pure"):
        return "pure"
    if value in ("1", "true", "yes"):
        return "force"
    return "auto"


def _compiler_problem() -> str | None:
    """Why no C extension can be built here (no compiler, no Python headers), or None."""
    from setuptools import Distribution  # noqa: PLC0415
    from setuptools.command.build_ext import build_ext as probe_cmd  # noqa: PLC0415

    cmd = probe_cmd(Distribution())
    cmd.finalize_options()
    try:
        from distutils.ccompiler import new_compiler  # noqa: PLC0415
        from distutils.sysconfig import customize_compiler  # noqa: PLC0415

        compiler = new_compiler()
        customize_compiler(compiler)
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp, "probe.c")
            source.write_text("#include <Python.h>\nint pgsansio_probe(void) { return 0; }\n")
            compiler.compile([str(source)], output_dir=tmp, include_dirs=cmd.include_dirs)
    except Exception as exc:  # whatever the toolchain raises, it means "cannot"
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc) else ''}"
    return None


def _ext_modules() -> list[object]:
    mode = _mode()
    commands = set(sys.argv[1:])
    if not commands & BUILDING:
        if commands & {"editable_wheel", "develop"}:
            _say("editable install: pure Python (compiled modules would go stale)")
        return []
    if mode == "pure":
        _say("PGSANSIO_COMPILE=0: installing pure Python")
        return []
    try:
        from mypyc.build import mypycify  # noqa: PLC0415 - only when compiling
    except ImportError as exc:
        if mode == "force":
            raise SystemExit(
                "PGSANSIO_COMPILE=1 needs mypy (which provides mypyc) in the build "
                f"environment ({exc})"
            ) from None
        _say(f"mypy (mypyc) is not installed, so installing pure Python ({exc})")
        return []
    problem = _compiler_problem()
    if problem is not None:
        if mode == "force":
            raise SystemExit(
                f"PGSANSIO_COMPILE=1 needs a C compiler and Python headers: {problem}"
            )
        _say(f"no working C compiler, so installing pure Python ({problem})")
        return []
    opt_level = os.environ.get("PGSANSIO_OPT_LEVEL", "3")
    _say(
        "compiling the protocol core and the engine with mypyc "
        "(a few minutes; PGSANSIO_COMPILE=0 installs pure Python)"
    )
    try:
        return list(
            mypycify(
                [
                    # its own mypy cache: `make test` runs mypy beside the compile
                    f"--cache-dir={os.path.join('build', 'mypyc', 'cache')}",
                    # a clean build environment lacks the optional dependencies
                    # (pglast for routing, which the engine imports); nothing
                    # compiled uses their types
                    "--ignore-missing-imports",
                    *COMPILED,
                ],
                opt_level=opt_level,
                debug_level="1",
                target_dir=os.path.join("build", "mypyc"),
            )
        )
    except (Exception, SystemExit) as exc:  # mypyc exits on a type error: fall back
        if mode == "force":
            raise
        why = "its type check failed (above)" if isinstance(exc, SystemExit) else repr(exc)
        _say(f"mypyc could not compile the package, so installing pure Python: {why}")
        return []


class BuildExt(build_ext):
    """build_ext that falls back to pure Python when a compile fails (unless forced)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            if _mode() == "force":
                raise
            _say(f"compiling failed, so installing pure Python ({type(exc).__name__}: {exc})")
            # The modules built before the failure import one another: none, or all.
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            self.extensions = []

    def get_outputs(self) -> list[str]:
        return super().get_outputs() if self.extensions else []


if __name__ == "__main__":  # setuptools runs this file as __main__; tests read COMPILED
    setup(ext_modules=_ext_modules(), cmdclass={"build_ext": BuildExt})
