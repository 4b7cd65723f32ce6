"""``fitstream plot``: learning curves as a PNG (or SVG, PDF)."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.config import get_settings
from pipeline.db.session import make_engine


@click.command()
@click.argument("runs", nargs=-1, required=True)
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    help="Only this metric (repeat for several). Default: every metric recorded.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("curves.png"),
    show_default=True,
    help="The image to write: .png, .svg or .pdf.",
)
def plot(runs: tuple[str, ...], metrics: tuple[str, ...], output: Path) -> None:
    """Draw the learning curves of RUNS (ids or their first characters), overlaid: one panel per
    metric family, best epochs starred, early stops dotted, the learning rate as steps.

    \b
    Examples:
      fitstream plot 3f2a9c -o curves.png
      fitstream plot 3f2a9c 7b1e2d --metric val_loss --metric val_accuracy -o compare.svg
    """
    from pipeline.plot import plot_runs  # matplotlib only for this command

    engine = make_engine(get_settings().database_url, read_only=True)
    try:
        written = plot_runs(engine, list(runs), output, metrics=list(metrics) or None)
    finally:
        engine.dispose()
    click.echo(f"wrote {written}", err=True)
