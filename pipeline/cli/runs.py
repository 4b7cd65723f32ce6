"""``fitstream runs`` and ``fitstream show``: the training history."""

from __future__ import annotations

import click
from rich.console import Console

from pipeline.cli.output import cell, print_json, print_rows
from pipeline.config import get_settings
from pipeline.db.entities import Run
from pipeline.db.models import RUN_STATUSES
from pipeline.db.queries import get_run, list_runs, monitored_curves
from pipeline.db.session import make_engine
from pipeline.sparkline import sparkline

LIST_COLUMNS = (
    "run_id",
    "name",
    "status",
    "started_at",
    "finished_at",
    "epochs_completed",
    "best_epoch",
    "stopped_epoch",
    "monitor",
    "best_value",
)
#: The narrow table's columns (fits 100 columns): ``--wide`` shows LIST_COLUMNS instead.
NARROW_COLUMNS = ("run", "name", "status", "epochs", "best", "started", "took", "curve")
SPARK_WIDTH = 12
ARROWS = {"min": "↓", "max": "↑"}


def _took(run: Run) -> str:
    seconds = run.wall_time_s
    if seconds is None and run.started_at is not None and run.finished_at is not None:
        seconds = (run.finished_at - run.started_at).total_seconds()
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def narrow_row(run: Run, curve: list[float | None]) -> tuple[str, ...]:
    """One run as the narrow table shows it: short id, ``metric↓=best``, a sparkline of the monitor."""
    best = ""
    if run.monitor:
        value = cell(run.best_value) if run.best_value is not None else "–"
        best = f"{run.monitor}{ARROWS.get(run.mode or '', '')}={value}"
    started = run.started_at.strftime("%m-%d %H:%M") if run.started_at is not None else ""
    return (
        run.run_id[:8],
        run.name or "",
        run.status,
        str(run.epochs_completed or 0),
        best,
        started,
        _took(run),
        sparkline(curve, width=SPARK_WIDTH),
    )


@click.command()
@click.option("--status", type=click.Choice(RUN_STATUSES), default=None, help="Only runs with this status.")
@click.option("--name", default=None, help="Only runs with this name.")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.option("--wide", is_flag=True, help="Every column, full run ids (wider than most terminals).")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of objects.")
def runs(status: str | None, name: str | None, limit: int, wide: bool, as_json: bool) -> None:
    """List runs, most recent first: short id, name, status, epochs, the best value of the
    monitored metric (↓ lower is better, ↑ higher), when it started, how long it took, and its curve."""
    engine = make_engine(get_settings().database_url, read_only=True)
    try:
        found = list_runs(engine, status=status, name=name, limit=limit)
        curves = monitored_curves(engine, found) if not (wide or as_json) else {}
    finally:
        engine.dispose()
    if wide or as_json:
        rows = [tuple(r.as_dict()[c] for c in LIST_COLUMNS) for r in found]
        print_rows(LIST_COLUMNS, rows, fmt="json" if as_json else "table", title="runs")
        return
    print_rows(
        NARROW_COLUMNS,
        [narrow_row(r, curves.get(r.run_id, [])) for r in found],
        title="runs",
        compact=True,
        shrink="name",
    )


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
                    {
                        "epoch": e.epoch,
                        "metrics": e.metrics,
                        "learning_rate": e.learning_rate,
                        "wall_time_s": e.wall_time_s,
                        "samples_per_second": e.samples_per_second,
                    }
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
    rows = [
        (e.epoch, *(e.metrics.get(n) for n in names), e.learning_rate, e.wall_time_s) for e in detail.epochs
    ]
    print_rows(columns, rows, title="epochs")
    if detail.checkpoints:
        # Short columns first, the long path last: a narrow terminal folds the path, never the numbers.
        print_rows(
            ["epoch", "monitor", "value", "size", "saved", "sha256", "path"],
            [
                (
                    c["epoch"],
                    c["monitor"],
                    c["value"],
                    _size(c["size_bytes"]),
                    c["saved_at"],
                    (c["sha256"] or "")[:12],
                    c["path"],
                )
                for c in detail.checkpoints
            ],
            title="checkpoints",
            compact=True,
            fold_last=True,
        )


def _size(size_bytes: int | None) -> str:
    """``1.2 MB`` (decimal units), as people read file sizes."""
    if size_bytes is None:
        return ""
    value = float(size_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return ""
