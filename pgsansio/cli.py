"""The ``pgsansio`` command line.

typer is an optional dependency (the ``cli`` extra) because the protocol library itself
must install with no dependencies at all. So nothing here imports typer at module level:
:func:`main` imports it, and tells the operator how to install it if it is missing.

Adding a command: write a ``register(app: typer.Typer) -> None`` function in your own
module that declares it with ``@app.command(...)`` (import typer and your own heavy
modules inside it, so that ``pgsansio --help`` stays fast and one broken optional
dependency does not take down the other commands), then add it to :data:`COMMANDS`, in
the "tools" part: ``--help`` lists the operator's commands first (run, check, demo),
then the tools, in the list's order.

Help text is for an operator: no ``<bool>`` / ``<str>`` type labels (see
:func:`_quiet_type_labels`); an option that takes a value says what with ``metavar``.

No ``from __future__ import annotations`` here on purpose: typer reads the command
functions' annotations at runtime, and those mention ``typer`` and ``Annotated``, which
are only local names inside the register functions.
"""

import asyncio
import logging
import pathlib
import re
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from pgsansio._convert_cmd import register_convert
from pgsansio.conformance.cli import register as _register_conformance
from pgsansio.conformance.recorder import RECORDER_ID, AsyncRecordingRelay

if TYPE_CHECKING:
    import typer

__all__ = ["COMMANDS", "build_app", "main", "parse_host_port"]

_TRACE_FILE = re.compile(r"^c\d+\.jsonl(\.gz)?$")

_TYPER_MISSING = (
    "pgsansio: the command-line tool needs the 'typer' package, which is not installed; "
    "install it with: pip install typer (pgsansio's 'cli' extra)"
)


def parse_host_port(value: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Split ``HOST:PORT`` (also ``[v6addr]:PORT``, ``:PORT`` or a bare ``PORT``).

    Raises ValueError with a message meant for the operator.
    """
    text = value.strip()
    if text.isdigit():
        host, port_s = default_host, text
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep:
            raise ValueError(f"{value!r} is not HOST:PORT (for example 127.0.0.1:6432)")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        host = host or default_host
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"{value!r}: the port must be a number from 0 to 65535")
    return host, int(port_s)


def _register_record(app: "typer.Typer") -> None:
    import typer  # noqa: PLC0415 - optional dependency, see the module docstring

    def host_port(value: str) -> tuple[str, int]:
        try:
            return parse_host_port(value)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None

    @app.command(
        "record",
        no_args_is_help=True,
        help=(
            "Record PostgreSQL traffic byte for byte.\n\n"
            "Listens on --listen and forwards every connection unchanged to the PostgreSQL "
            "server (or pooler) at --target. Point your client at the --listen address; it "
            "will not notice the difference. Each client connection is written to "
            "DIR/c1.jsonl, DIR/c2.jsonl, ... (compressed to .jsonl.gz above 256 KiB) in "
            "the pgsansio trace format, which the conformance tests and "
            "pgsansio.conformance.trace.read_trace() read.\n\n"
            "Runs until Ctrl-C or SIGTERM, then waits for open connections to finish "
            "(see --grace) so that every trace is complete.\n\n"
            "The relay sees plain bytes only: connect the client with sslmode=disable (or "
            "prefer against a server without TLS). Traces contain everything the client "
            "and server said, including passwords sent in clear text and query results; "
            "treat them like a database dump."
        ),
    )
    def record(
        *,
        target: Annotated[
            str,
            typer.Option(
                "--target",
                metavar="HOST:PORT",
                help="The PostgreSQL server (or pooler) to forward connections to.",
            ),
        ],
        out: Annotated[
            pathlib.Path,
            typer.Option(
                "--out",
                metavar="DIR",
                file_okay=False,
                help="Directory for the trace files; created if missing.",
            ),
        ],
        listen: Annotated[
            str,
            typer.Option(
                "--listen",
                metavar="HOST:PORT",
                help=(
                    "Address to accept client connections on. Port 0 picks a free port "
                    "(printed at start)."
                ),
            ),
        ] = "127.0.0.1:6433",
        meta: Annotated[
            list[str] | None,
            typer.Option(
                "--meta",
                metavar="KEY=VALUE",
                help="Extra text stored in every trace's header line; repeat as needed.",
            ),
        ] = None,
        overwrite: Annotated[
            bool,
            typer.Option(
                "--overwrite",
                help="Delete trace files already in DIR instead of refusing to start.",
            ),
        ] = False,
        grace: Annotated[
            float,
            typer.Option(
                "--grace",
                metavar="SECONDS",
                min=0,
                help=(
                    "On Ctrl-C/SIGTERM, how long to wait for open connections to end "
                    "before closing them."
                ),
            ),
        ] = 10.0,
    ) -> None:
        listen_host, listen_port = host_port(listen)
        target_host, target_port = host_port(target)
        header: dict[str, str] = {"recorder": RECORDER_ID}
        for item in meta or []:
            key, sep, val = item.partition("=")
            if not sep or not key:
                raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--meta")
            if key in ("format", "version", "connection"):
                raise typer.BadParameter(
                    f"{key!r} is reserved by the trace format", param_hint="--meta"
                )
            header[key] = val
        if out.is_dir():
            existing = sorted(
                p for p in out.iterdir() if p.name.startswith("c") and ".jsonl" in p.name
            )
            if existing and not overwrite:
                typer.echo(
                    f"pgsansio record: {out} already holds traces ({existing[0].name} ...); "
                    "choose an empty directory, or pass --overwrite to delete them first.",
                    err=True,
                )
                raise typer.Exit(1)
            for p in existing:
                p.unlink()

        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr
        )

        async def serve() -> int:
            relay = AsyncRecordingRelay(
                listen_host, listen_port, target_host, target_port, out, meta=header
            )
            try:
                await relay.start()
            except OSError as e:
                from pgsansio.frontends import listen_failed  # noqa: PLC0415

                typer.echo(
                    f"pgsansio record: {listen_failed(listen_host, listen_port, e)}", err=True
                )
                return 1
            typer.echo(
                f"pgsansio record: connect clients to {listen_host}:{relay.port}; "
                "press Ctrl-C to stop.",
                err=True,
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, stop.set)
                except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows
                    pass
            await stop.wait()
            if relay.active:
                typer.echo(
                    f"pgsansio record: stopping; waiting up to {grace:g}s for "
                    f"{len(relay.active)} open connection(s).",
                    err=True,
                )
            await relay.stop(grace)
            written = sum(1 for r in relay.records if r.path is not None)
            typer.echo(f"pgsansio record: wrote {written} trace(s) to {out}.", err=True)
            return 0

        code = asyncio.run(serve())
        if code:
            raise typer.Exit(code)


EX_CONFIG = 78
"""Exit code for a configuration that does not load (``sysexits.h``; PgCat uses it too)."""


def _frontend_options() -> tuple[object, object, object]:
    """The --frontend, --log-level and --log-format options ``run`` and ``demo`` share."""
    import typer  # noqa: PLC0415 - optional dependency, see the module docstring

    from pgsansio.frontends import FRONTENDS  # noqa: PLC0415
    from pgsansio.logconfig import LOG_FORMATS, LOG_LEVELS  # noqa: PLC0415

    def choice(option: str, choices: tuple[str, ...], help: str) -> object:
        # A str checked by a callback rather than an Enum or Literal: it works on every
        # typer version the cli extra allows, and the command receives plain strings.
        def check(value: str) -> str:
            if value not in choices:
                raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
            return value

        return typer.Option(option, metavar="|".join(choices), callback=check, help=help)

    return (
        choice(
            "--frontend",
            FRONTENDS,
            "Runtime: asyncio, uvloop, anyio (on asyncio), trio (anyio on trio), curio, "
            "or auto (uvloop when it is installed, else asyncio). Each but asyncio needs "
            "its package installed (trio needs anyio too).",
        ),
        choice("--log-level", LOG_LEVELS, "Least severe level logged."),
        choice(
            "--log-format",
            LOG_FORMATS,
            "text: one readable line per record; json: one JSON object per line.",
        ),
    )


def _register_run(app: "typer.Typer") -> None:
    import typer  # noqa: PLC0415 - optional dependency, see the module docstring

    frontend_opt, log_level_opt, log_format_opt = _frontend_options()

    @app.command(
        "run",
        help=(
            "Run the connection pooler.\n\n"
            "CONFIG is a PgCat pgcat.toml (default: $CONFIG_FILE, else ./pgcat.toml); "
            "`pgsansio check CONFIG` validates it first.\n\n"
            "Signals: SIGHUP re-reads CONFIG without dropping clients (a file that does "
            "not load is logged and the running configuration stays). SIGINT shuts down "
            "now: new clients are refused, idle clients disconnected, open transactions "
            "may finish for up to shutdown_timeout. SIGTERM shuts down gently: new clients "
            "are refused and the pooler exits when the last client has left (PgBouncer "
            "1.23's meaning). A second SIGINT or SIGTERM exits at once. SIGUSR1 pauses "
            "every database, SIGUSR2 resumes.\n\n"
            "With general.workers = N (N > 1), the pooler is N processes sharing the "
            "port (docs/workers.md): this one supervises them, passes each signal on to "
            "every worker and restarts a worker that dies.\n\n"
            "Exit codes: 0 after a clean shutdown, 78 when the configuration does not "
            "load, 1 when the pooler cannot start (address in use, runtime missing)."
        ),
    )
    def run_command(
        config: Annotated[
            str,
            typer.Argument(
                envvar="CONFIG_FILE",
                metavar="CONFIG",
                show_default=False,
                help="Path of pgcat.toml (default: $CONFIG_FILE, else pgcat.toml).",
            ),
        ] = "pgcat.toml",
        frontend: Annotated[str, frontend_opt] = "auto",
        log_level: Annotated[str, log_level_opt] = "info",
        log_format: Annotated[str, log_format_opt] = "text",
    ) -> None:
        from pgsansio import __version__  # noqa: PLC0415
        from pgsansio.config import ConfigError, load_config  # noqa: PLC0415
        from pgsansio.frontends import FrontendError, run  # noqa: PLC0415
        from pgsansio.logconfig import configure_logging  # noqa: PLC0415

        configure_logging(log_level, log_format)
        logging.getLogger("pgsansio").info(
            "pgsansio %s, protocol core: %s", __version__, core_description()
        )
        try:
            loaded = load_config(config)
        except ConfigError as e:
            typer.echo(str(e), err=True)
            raise typer.Exit(EX_CONFIG) from None
        from pgsansio.procfiles import ProcFileError, process_files  # noqa: PLC0415

        try:
            with process_files(loaded.general, log_format):  # logfile, pidfile
                if loaded.general.workers > 1:
                    from pgsansio.workers import supervise  # noqa: PLC0415

                    code = supervise(frontend, loaded, config_path=config)
                else:
                    code = run(frontend, loaded, config_path=config)
        except (FrontendError, ProcFileError) as e:
            typer.echo(f"pgsansio: {e}", err=True)
            raise typer.Exit(1) from None
        if code:
            raise typer.Exit(code)


def _register_demo(app: "typer.Typer") -> None:
    import typer  # noqa: PLC0415 - optional dependency, see the module docstring

    frontend_opt, log_level_opt, log_format_opt = _frontend_options()

    @app.command(
        "demo",
        help=(
            "Try the pooler on a throwaway PostgreSQL primary and streaming replica.\n\n"
            "Starts both from this machine's PostgreSQL binaries in a temporary "
            "directory, writes a pgcat.toml for them, runs the pooler in the foreground "
            "and prints the psql command to connect. Ctrl-C stops everything and "
            "deletes the temporary data."
        ),
    )
    def demo_command(
        port: Annotated[
            int,
            typer.Option(
                "--port", metavar="PORT", min=0, max=65535, help="Port the pooler listens on."
            ),
        ] = 6432,
        frontend: Annotated[str, frontend_opt] = "auto",
        log_level: Annotated[str, log_level_opt] = "info",
        log_format: Annotated[str, log_format_opt] = "text",
    ) -> None:
        from pgsansio.demo import DemoError, run_demo  # noqa: PLC0415
        from pgsansio.frontends import FrontendError  # noqa: PLC0415
        from pgsansio.logconfig import configure_logging  # noqa: PLC0415

        configure_logging(log_level, log_format)
        try:
            code = run_demo(port=port, frontend=frontend)
        except (DemoError, FrontendError) as e:
            typer.echo(f"pgsansio demo: {e}", err=True)
            raise typer.Exit(1) from None
        if code:
            raise typer.Exit(code)


def _register_check(app: "typer.Typer") -> None:
    import typer  # noqa: PLC0415 - optional dependency, see the module docstring

    @app.command(
        "check",
        help=(
            "Check a pgcat.toml without starting the pooler.\n\n"
            "CONFIG defaults to $CONFIG_FILE, else ./pgcat.toml, as in PgCat. The file is "
            "validated as the pooler would at start. If it is valid, the effective "
            "configuration goes to stdout, with every default and inherited value written "
            "out and passwords masked, and warnings (unknown keys, settings pgsansio "
            "ignores) go to stderr; the exit code is 0. If it is not, what is wrong and "
            "where goes to stderr and the exit code is 78 (EX_CONFIG), as in PgCat."
        ),
    )
    def check_command(
        config: Annotated[
            str,
            typer.Argument(
                envvar="CONFIG_FILE",
                metavar="CONFIG",
                show_default=False,
                help="Path of pgcat.toml (default: $CONFIG_FILE, else pgcat.toml).",
            ),
        ] = "pgcat.toml",
    ) -> None:
        from pgsansio.config import (  # noqa: PLC0415 - keeps `pgsansio --help` fast
            ConfigError,
            effective_config_toml,
            load_config,
        )
        from pgsansio.engine import config_warnings  # noqa: PLC0415

        try:
            loaded = load_config(config)
        except ConfigError as e:
            typer.echo(str(e), err=True)
            raise typer.Exit(78) from None  # EX_CONFIG, PgCat's exit code for a bad file
        # The very list `run` logs (the engine logs it at start and reload).
        warnings = config_warnings(loaded)
        for warning in warnings:
            typer.echo(f"warning: {warning}", err=True)
        typer.echo(effective_config_toml(loaded), nl=False)
        users = sum(len(p.users) for p in loaded.pools.values())
        shards = sum(len(p.shards) for p in loaded.pools.values())
        typer.echo(
            f"{config}: OK ({len(loaded.pools)} pool(s), {users} user(s), {shards} shard(s), "
            f"{len(warnings)} warning(s))",
            err=True,
        )


COMMANDS: list[Callable[["typer.Typer"], None]] = [
    # What an operator needs, in the order they need it.
    _register_run,
    _register_check,
    _register_demo,
    # Tools: add yours here.
    register_convert,
    _register_record,
    _register_conformance,  # a command group: typer lists it last anyway
]
"""Functions that add their command(s) to the app, in ``--help`` order."""


def core_description() -> str:
    """What runs compiled in this installation, for ``--version`` and ``run``'s log.

    The one place that says it, read from the modules actually imported (a compiled
    build puts mypyc extension modules beside the ``.py`` files, and Python prefers
    them), so an operator sees what runs, not what was asked for: the protocol core
    (``pgsansio.protocol``) and the engine (``pgsansio.engine``) are compiled together
    by ``setup.py``, but a copy built before the engine compiled has only the first.
    """
    from pgsansio.engine import _engine  # noqa: PLC0415
    from pgsansio.protocol import _connection  # noqa: PLC0415

    protocol = _connection.__file__ or ""
    engine = not (_engine.__file__ or "").endswith(".py")
    if protocol.endswith(".py"):
        return "pure Python" + (" (but the engine compiled with mypyc)" if engine else "")
    engine_too = "the engine too" if engine else "not the engine"
    return f"compiled with mypyc, {engine_too} ({pathlib.PurePath(protocol).name})"


def version_text() -> str:
    """What ``pgsansio --version`` prints: the version and what this install can run."""
    import platform  # noqa: PLC0415
    from importlib.util import find_spec  # noqa: PLC0415

    from pgsansio import __version__  # noqa: PLC0415
    from pgsansio.frontends import FRONTENDS, missing  # noqa: PLC0415

    runnable = [f for f in FRONTENDS if f != "auto" and missing(f) is None]
    parser = (
        "installed (read/write splitting, automatic_sharding_key)"
        if find_spec("pglast") is not None
        else "not installed (pip install pglast, for query_parser_enabled)"
    )
    return "\n".join(
        (
            f"pgsansio {__version__}",
            f"Python {platform.python_version()} ({platform.python_implementation()}, "
            f"{sys.platform})",
            f"frontends available: {', '.join(runnable)}",
            f"query parser (pglast): {parser}",
            f"protocol core: {core_description()}",
        )
    )


def _quiet_type_labels() -> None:
    """Stop typer's rich help from printing ``<bool>`` / ``<str>`` after each name.

    Recent typer versions label every parameter with its Python type in the help;
    for an operator "--overwrite <bool>" reads as if the flag took a value. A flag
    gets no label, a parameter with a ``metavar`` shows it, the others keep typer's.
    Versions without the hook are left as they are.
    """
    from typer import core  # noqa: PLC0415

    for cls in (getattr(core, "TyperArgument", None), getattr(core, "TyperOption", None)):
        original = getattr(cls, "display_type_rich", None)
        if cls is None or original is None or getattr(original, "_pgsansio", False):
            continue

        def label(self: Any, ctx: Any, _original: Any = original) -> str | None:
            if getattr(self, "is_flag", False) or getattr(self, "count", False):
                return None
            if isinstance(self, core.TyperArgument):
                return None  # the name already is the metavar (CONFIG)
            text = _original(self, ctx)
            return None if text in ("<bool>", "<str>") else text

        label._pgsansio = True  # type: ignore[attr-defined]
        cls.display_type_rich = label


def build_app() -> "typer.Typer":
    """Create the typer app with every command in :data:`COMMANDS` (needs typer)."""
    import typer  # noqa: PLC0415 - optional dependency, see the module docstring

    _quiet_type_labels()
    app = typer.Typer(
        name="pgsansio",
        no_args_is_help=True,
        add_completion=False,
        help=(
            "pgsansio: a PostgreSQL connection pooler (PgCat's pgcat.toml, PgBouncer's "
            "admin console) and wire-protocol toolkit.\n\n"
            "Start with `pgsansio demo` to try it, `pgsansio check CONFIG` to validate a "
            "configuration, `pgsansio run CONFIG` to serve."
        ),
    )

    def show_version(value: bool) -> None:
        if value:
            typer.echo(version_text())
            raise typer.Exit()

    @app.callback()
    def _root(
        version: Annotated[
            bool,
            typer.Option(
                "--version",
                callback=show_version,
                is_eager=True,
                help="Print the version, the Python and the runtimes available, and exit.",
            ),
        ] = False,
    ) -> None:
        # A callback also makes typer keep subcommands even while only one exists.
        pass

    for register in COMMANDS:
        register(app)
    return app


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``pgsansio`` script and of ``python -m pgsansio``."""
    try:
        import typer  # noqa: F401, PLC0415 - optional dependency
    except ImportError:
        print(_TYPER_MISSING, file=sys.stderr)
        raise SystemExit(1) from None
    build_app()(args=argv, prog_name="pgsansio")
