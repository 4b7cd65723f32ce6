"""The ``fitstream`` command: one group, one module per command group."""

from __future__ import annotations

import logging
import sys

import click
from rich.markup import escape

from pipeline import __version__
from pipeline.cli import (
    consume,
    db,
    dead_letters,
    demo,
    experiments,
    models,
    plot,
    runs,
    spool,
    sql,
    ui,
    watch,
)
from pipeline.cli.output import stderr_console
from pipeline.cli.plugins import PluginGroup
from pipeline.errors import FitstreamError


class FitstreamGroup(PluginGroup):
    """Turns Fitstream's own errors into a one-line message on stderr and exit code 1.

    Commands from other packages (``workers``: submit, cancel, worker, status; ``alerts``:
    alerts) are ``fitstream.cli`` entry points, loaded only when used, so that ``pipeline``
    never imports them and the CLI starts fast.
    """

    plugin_group = "fitstream.cli"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Run ids, names and paths go to Redis, SQL and file names as UTF-8: an argument that is not
        # UTF-8 (bytes a non-UTF-8 terminal or file system gave Python, which it keeps as lone
        # surrogates) or holds a NUL is refused here, once, rather than failing deep inside a command.
        for arg in args:
            problem = _argument_problem(arg)
            if problem is not None:
                raise click.UsageError(problem, ctx)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except FitstreamError as exc:
            # The message quotes what the user typed: escaped, so that "[red]" in a run id is shown
            # and not taken for markup; not wrapped, so that it stays one line in logs and pipes.
            stderr_console.print(
                f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True
            )
            sys.exit(1)


def _argument_problem(arg: str) -> str | None:
    if "\x00" in arg:
        return f"argument {arg!r} holds a NUL character, which no run id, name or path can"
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError:
        raw = arg.encode("utf-8", "surrogateescape")
        return f"argument {raw!r} is not UTF-8 text; check the encoding of the terminal (or of the file name)"
    return None


@click.group(cls=FitstreamGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fitstream")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Fitstream: training events → Redis Streams → SQL history, alerts and model promotion.

    Settings come from FITSTREAM_* environment variables (see the README).
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


cli.add_command(db.db)
cli.add_command(consume.consume)
cli.add_command(sql.sql)
cli.add_command(runs.runs)
cli.add_command(runs.show)
cli.add_command(plot.plot)
cli.add_command(ui.ui)
cli.add_command(demo.demo)
cli.add_command(spool.spool)
cli.add_command(watch.watch)
cli.add_command(models.models)
cli.add_command(models.promote)
cli.add_command(models.alias)
cli.add_command(dead_letters.dead_letters)
cli.add_command(experiments.sweeps)
cli.add_command(experiments.sweep)
cli.add_command(experiments.compare)


def main() -> None:
    cli(prog_name="fitstream")


if __name__ == "__main__":
    main()
