"""``fitstream runs`` and ``fitstream show``: the training history."""

from __future__ import annotations

import click
from rich.console import Console

from pipeline.cli.output import print_json, print_rows
from pipeline.config import get_settings
from pipeline.db.models import RUN_STATUSES
from pipeline.db.queries import get_run, list_runs
from pipeline.db.session import make_engine

LIST_COLUMNS = ("run_id", "name", "status", "started_at", "finished_at", "epochs_completed", "best_epoch", "stopped_epoch", "monitor", "best_value")


@click.command()
@click.option("--status", type=click.Choice(RUN_STATUSES), default=None, help="Only runs with this status.")
@click.option("--name", default=None, help="Only runs with this name.")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array of objects.")
def runs(status: str | None, name: str | None, limit: int, as_json: bool) -> None:
    """List runs, most recent first."""
    engine = make_engine(get_settings().database_url, read_only=True)
    try:
        found = list_runs(engine, status=status, name=name, limit=limit)
    finally:
        engine.dispose()
    rows = [tuple(r.as_dict()[c] for c in LIST_COLUMNS) for r in found]
    print_rows(LIST_COLUMNS, rows, fmt="json" if as_json else "table", title="runs")


@click.command()
@click.argument("run")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: the run, its epochs and checkpoints.")
def show(run: str, as_json: bool) -> None:
    """Show one RUN (an id or its first characters): outcome, per-epoch metrics, checkpoints."""
    engine = make_engine(get_settings().database_url, read_only=True)
    try:
        detail = get_run(engine, run)
    finally:
        engine.dispose()
    if as_json:
        print_json(
            {
                **detail.run.as_dict(),
                "epochs": [
                    {"epoch": e.epoch, "metrics": e.metrics, "learning_rate": e.learning_rate,
                     "wall_time_s": e.wall_time_s, "samples_per_second": e.samples_per_second}
                    for e in detail.epochs
                ],
                "checkpoints": detail.checkpoints,
            }
        )
        return
    r = detail.run
    console = Console()
    console.print(f"[bold]{r.name}[/bold]  {r.run_id}  [bold]{r.status}[/bold]")
    console.print(
        f"epochs {r.epochs_completed}   monitor {r.monitor or '-'} ({r.mode or '-'})   "
        f"best epoch {r.best_epoch if r.best_epoch is not None else '-'} = {r.best_value if r.best_value is not None else '-'}   "
        f"stopped epoch {r.stopped_epoch if r.stopped_epoch is not None else '-'}"
    )
    if r.error_type:
        console.print(f"[red]{r.error_type}: {r.error_message}[/red]")
    if r.status_reason:
        console.print(f"{r.status}: {r.status_reason}", markup=False)
    if r.sweep_id:
        console.print(f"trial of sweep {r.sweep_id} (fitstream sweep show {r.sweep_id})", markup=False)
    names = sorted({n for e in detail.epochs for n in e.metrics})
    columns = ["epoch", *names, "lr", "time_s"]
    rows = [(e.epoch, *(e.metrics.get(n) for n in names), e.learning_rate, e.wall_time_s) for e in detail.epochs]
    print_rows(columns, rows, title="epochs")
    if detail.checkpoints:
        cols = list(detail.checkpoints[0])
        print_rows(cols, [tuple(c[k] for k in cols) for c in detail.checkpoints], title="checkpoints")
