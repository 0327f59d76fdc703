"""The ``convert`` command (kept out of cli.py, which only registers it).

No ``from __future__ import annotations``: typer reads the parameters' annotations at
run time, in a scope where ``typer`` is imported (as in cli.py).
"""

from typing import TYPE_CHECKING, Annotated

if TYPE_CHECKING:
    import typer


def register_convert(app: "typer.Typer") -> None:
    import typer  # noqa: PLC0415 - optional dependency, as in cli.py

    @app.command(
        "convert",
        help=(
            "Print a pgbouncer.ini as the equivalent pgcat.toml.\n\n"
            "The TOML goes to stdout (secrets included: redirect it to a file you "
            "protect); what could not be carried over goes to stderr and to comments "
            "at the top. Exit code 78 when the file cannot be read."
        ),
    )
    def convert_command(
        config: Annotated[str, typer.Argument(metavar="PGBOUNCER_INI", show_default=False)],
    ) -> None:
        from pgsansio.config import ConfigError  # noqa: PLC0415
        from pgsansio.config.convert import convert_pgbouncer  # noqa: PLC0415

        try:
            text, lost = convert_pgbouncer(config)
        except ConfigError as e:
            typer.echo(str(e), err=True)
            raise typer.Exit(78) from None
        for line in lost:
            typer.echo(f"not carried over: {line}", err=True)
        typer.echo(text, nl=False)
