"""The ``fitstream`` command: one group, one module per command group."""

from __future__ import annotations

import logging
import sys

import click

from pipeline import __version__
from pipeline.cli import consume, db, demo, runs, spool, sql, watch
from pipeline.cli.output import stderr_console
from pipeline.errors import FitstreamError


PLUGIN_GROUP = "fitstream.cli"


class FitstreamGroup(click.Group):
    """Turns Fitstream's own errors into a one-line message on stderr and exit code 1.

    Commands from other packages (``workers``: submit, cancel, worker, status) are
    registered as ``fitstream.cli`` entry points and loaded only when used, so that
    ``pipeline`` never imports ``workers`` and the CLI starts fast.
    """

    def _plugins(self) -> dict[str, object]:
        from importlib.metadata import entry_points

        return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in (plugins := self._plugins()):
            command = plugins[name].load()  # type: ignore[attr-defined]
        return command

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except FitstreamError as exc:
            stderr_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
            sys.exit(1)


@click.group(cls=FitstreamGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fitstream")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Fitstream: training events → Redis Streams → SQL history, alerts and model promotion.

    Settings come from FITSTREAM_* environment variables (see the README).
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


cli.add_command(db.db)
cli.add_command(consume.consume)
cli.add_command(sql.sql)
cli.add_command(runs.runs)
cli.add_command(runs.show)
cli.add_command(demo.demo)
cli.add_command(spool.spool)
cli.add_command(watch.watch)


def main() -> None:
    cli(prog_name="fitstream")


if __name__ == "__main__":
    main()
