"""``pgsansio conformance``: run the protocol conformance suite, convert traces to scenarios.

Registered in :mod:`pgsansio.cli` by :func:`register`. typer is imported inside it (the
``cli`` extra is optional) and, as in :mod:`pgsansio.cli`, there is no ``from __future__
import annotations`` here: typer reads the annotations at run time.

Exit status of ``run``: 0 when no scenario failed (known findings and scenarios that do
not apply do not count), 1 when one did, 2 when the target could not be reached, the
login failed, or a scenario file is malformed.
"""

import pathlib
import sys
from typing import TYPE_CHECKING, Annotated, Optional

if TYPE_CHECKING:
    import typer

__all__ = ["register"]


def register(app: "typer.Typer") -> None:
    """Add the ``conformance`` command group to the ``pgsansio`` app."""
    import typer  # noqa: PLC0415 - optional dependency

    group = typer.Typer(
        name="conformance",
        no_args_is_help=True,
        help=(
            "Judge whether a server, pooler or proxy speaks the PostgreSQL protocol the way "
            "PostgreSQL does: play scenarios against it and compare its answers."
        ),
    )
    app.add_typer(group, name="conformance")

    @group.command("run")
    def run(  # noqa: PLR0917 - typer options are parameters
        target: Annotated[str, typer.Option(help="The server or pooler to test, HOST:PORT.")],
        user: Annotated[Optional[str], typer.Option(help="User name (default $PGUSER).")] = None,  # noqa: UP045
        password: Annotated[
            Optional[str],  # noqa: UP045
            typer.Option(envvar="PGPASSWORD", help="Password (or $PGPASSWORD), if asked."),
        ] = None,
        database: Annotated[str, typer.Option(help="Database (default: the user name).")] = "",
        reference: Annotated[
            Optional[str],  # noqa: UP045
            typer.Option(
                help="Differential mode: also run every scenario against this HOST:PORT "
                "(PostgreSQL itself, typically) and compare the answers."
            ),
        ] = None,
        pool_mode: Annotated[
            str,
            typer.Option(
                help="What the target promises: 'session' (a server or session pooler) or "
                "'transaction' (scenarios needing a dedicated session are then n/a)."
            ),
        ] = "session",
        only: Annotated[
            Optional[list[str]],  # noqa: UP045
            typer.Option(help="Run only scenarios whose id or area matches (glob; repeatable)."),
        ] = None,
        scenarios: Annotated[
            Optional[list[pathlib.Path]],  # noqa: UP045
            typer.Option(
                "--scenarios", help="Scenario files or directories instead of the built-in suite."
            ),
        ] = None,
        label: Annotated[
            str,
            typer.Option(
                help="The kind of target (pgbouncer, pgsansio-transaction, ...): failures "
                "a scenario records as a known finding for it do not fail the run."
            ),
        ] = "",
        fmt: Annotated[
            str, typer.Option("--format", help="text, json or junit (JUnit XML).")
        ] = "text",
        output: Annotated[
            Optional[pathlib.Path],  # noqa: UP045
            typer.Option(help="Write the report to this file instead of standard output."),
        ] = None,
        timeout: Annotated[float, typer.Option(help="Seconds to wait for each answer.")] = 5.0,
    ) -> None:
        """Play the scenarios against --target and report pass / fail / n/a for each."""
        from pgsansio.cli import parse_host_port  # noqa: PLC0415

        from . import report  # noqa: PLC0415
        from .runner import ScenarioFailure, Target, default_user, run_suite, select  # noqa: PLC0415
        from .scenario import ScenarioError, builtin_scenarios, load_scenarios  # noqa: PLC0415

        if fmt not in ("text", "json", "junit"):
            raise typer.BadParameter(
                f"{fmt!r} is not one of text, json, junit", param_hint="--format"
            )
        if pool_mode not in ("session", "transaction"):
            raise typer.BadParameter("session or transaction", param_hint="--pool-mode")
        try:
            host, port = parse_host_port(target)
            ref_addr = parse_host_port(reference) if reference else None
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
        name = user or default_user()
        tgt = Target(host, port, name, password, database or name, pool_mode, label)
        ref = (
            Target(ref_addr[0], ref_addr[1], name, password, database or name)
            if ref_addr
            else None
        )
        try:
            chosen = select(
                load_scenarios(scenarios) if scenarios else builtin_scenarios(), only or ()
            )
        except ScenarioError as e:
            typer.echo(f"pgsansio conformance: {e}", err=True)
            raise typer.Exit(2) from None
        if not chosen:
            typer.echo("pgsansio conformance: no scenario matches --only", err=True)
            raise typer.Exit(2)

        def progress(r: object) -> None:
            # A dot per scenario on stderr while the report goes to a file: a long run
            # shows that it is alive.
            del r
            if output is not None:
                sys.stderr.write(".")
                sys.stderr.flush()

        try:
            results = run_suite(chosen, tgt, ref, timeout=timeout, progress=progress)
        except ScenarioFailure as e:
            typer.echo(f"pgsansio conformance: {e.why}", err=True)
            raise typer.Exit(2) from None
        where = tgt.address + (f" (reference {ref.address})" if ref else "")
        text = report.render(results, fmt, where)
        if output is not None:
            output.write_text(text, "utf-8")
        else:
            sys.stdout.write(text)
        raise typer.Exit(report.exit_status(results))

    @group.command("list")
    def list_(
        only: Annotated[
            Optional[list[str]],  # noqa: UP045
            typer.Option(help="Only scenarios whose id or area matches (glob; repeatable)."),
        ] = None,
    ) -> None:
        """List the built-in scenarios: id, area, pooling verdict, description."""
        from .runner import select  # noqa: PLC0415
        from .scenario import builtin_scenarios  # noqa: PLC0415

        for s in select(builtin_scenarios(), only or ()):
            typer.echo(f"{s.id:<44} {s.area:<12} {s.pooling:<11} {s.description}")

    @group.command("from-trace")
    def from_trace(
        trace: Annotated[
            pathlib.Path, typer.Argument(help="A trace file (c1.jsonl) or its directory.")
        ],
        scenario_id: Annotated[
            Optional[str],  # noqa: UP045
            typer.Option("--id", help="Scenario id (default: from the directory name)."),
        ] = None,
        area: Annotated[str, typer.Option(help="The scenario's area.")] = "corpus",
        output: Annotated[
            Optional[pathlib.Path],  # noqa: UP045
            typer.Option(help="Write here instead of standard output."),
        ] = None,
    ) -> None:
        """Turn a recorded conversation into a replayable scenario (authentication is redone)."""
        from .from_trace import TraceNotConvertible, convert  # noqa: PLC0415
        from .scenario import FORMAT_LINE  # noqa: PLC0415
        from .trace import read_trace  # noqa: PLC0415

        path = trace / "c1.jsonl" if trace.is_dir() else trace
        if trace.is_dir() and not path.exists():
            path = trace / "c1.jsonl.gz"
        try:
            tr = read_trace(path)
            sid = scenario_id or f"corpus.{path.parent.name}"
            text = convert(tr, sid, area)
        except (OSError, ValueError, TraceNotConvertible) as e:
            typer.echo(f"pgsansio conformance from-trace: {path}: {e}", err=True)
            raise typer.Exit(2) from None
        doc = f"{FORMAT_LINE}\n\n{text}"
        if output is not None:
            output.write_text(doc, "utf-8")
        else:
            sys.stdout.write(doc)
