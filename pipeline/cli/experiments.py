"""``fitstream sweeps``, ``fitstream sweep show`` and ``fitstream compare``: what was tried, side by side."""

from __future__ import annotations

from typing import Any

import click

from pipeline.cli.output import print_json, print_rows, stderr_console
from pipeline.config import get_settings
from pipeline.db.experiments import Compared, compare_runs, list_sweeps, sweep_trials
from pipeline.db.session import make_engine


def _engine() -> Any:
    return make_engine(get_settings().database_url, read_only=True)


def _shown(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


@click.command()
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array of objects.")
def sweeps(limit: int, as_json: bool) -> None:
    """List sweeps, most recent first: state, trials ended, the best trial so far."""
    engine = _engine()
    try:
        found = list_sweeps(engine, limit=limit)
    finally:
        engine.dispose()
    columns = [
        "sweep_id",
        "name",
        "state",
        "trials",
        "ended",
        "monitor",
        "best_value",
        "best_run_id",
        "created_at",
    ]
    print_rows(
        columns,
        [tuple(s[c] for c in columns) for s in found],
        fmt="json" if as_json else "table",
        title="sweeps",
    )


@click.group()
def sweep() -> None:
    """One sweep: its trials and their results (queue one with: fitstream submit SWEEP_FILE)."""


@sweep.command("show")
@click.argument("sweep_id")
@click.option(
    "--metric", default=None, help="Rank by this metric's best value (default: the trials' monitored metric)."
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object: the sweep and its trials, best first."
)
def show_sweep(sweep_id: str, metric: str | None, as_json: bool) -> None:
    """Show SWEEP_ID's trials with their parameters and status, best first (by the monitored
    metric, in its own direction); the best is marked."""
    engine = _engine()
    try:
        view = sweep_trials(engine, sweep_id, metric=metric)
    finally:
        engine.dispose()
    if as_json:
        print_json(
            {
                "sweep_id": view.sweep.id,
                "name": view.sweep.name,
                "state": view.sweep.state,
                "trials": view.sweep.trials,
                "created_at": view.sweep.created_at,
                "monitor": view.metric,
                "mode": view.mode,
                "params": view.varied,
                "spec": view.sweep.spec,
                "runs": [_as_json(t) for t in view.trials],
            }
        )
        return
    s = view.sweep
    stderr_console.print(
        f"sweep {s.id}  {s.name}  [bold]{s.state}[/bold]  {s.trials} trials", highlight=False
    )
    columns = [
        "",
        "run_id",
        "status",
        "epochs",
        *view.varied,
        f"best {view.metric or '-'} ({view.mode or '?'})",
        "best_epoch",
    ]
    rows = [
        (
            "★" if t.best else "",
            t.run_id,
            t.status,
            t.epochs,
            *(_shown(t.params.get(k)) for k in view.varied),
            _shown(t.best_value),
            t.best_epoch,
        )
        for t in view.trials
    ]
    print_rows(columns, rows, title=f"trials of {s.name}")


@click.command()
@click.argument("refs", nargs=-1, required=True)
@click.option(
    "--metric",
    default=None,
    help="Compare the best value of this metric (default: each run's monitored metric).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object: the differing params and one entry per run."
)
@click.option("--csv", "as_csv", is_flag=True, help="CSV: one row per run, the differing params as columns.")
def compare(refs: tuple[str, ...], metric: str | None, as_json: bool, as_csv: bool) -> None:
    """Compare runs (REFS: run ids, or sweep ids for all their trials): the params that differ
    between them, and the best value of the monitored metric and when it was reached."""
    if as_json and as_csv:
        raise click.UsageError("give --json or --csv, not both")
    engine = _engine()
    try:
        runs, differing = compare_runs(engine, list(refs), metric=metric)
    finally:
        engine.dispose()
    if as_json:
        print_json(
            {"metric": metric, "params": differing, "runs": [_as_json(r, only=differing) for r in runs]}
        )
        return
    columns = ["run_id", "name", "status", "epochs", *differing, "metric", "best_value", "best_epoch", "best"]
    rows = [
        (
            r.run_id,
            r.name,
            r.status,
            r.epochs,
            *(r.params.get(k) for k in differing),
            r.metric,
            r.best_value,
            r.best_epoch,
            r.best,
        )
        for r in runs
    ]
    if as_csv:
        print_rows(columns, rows, fmt="csv")
        return
    print_rows(
        columns[:-1], [(*row[:-4], row[-4], _shown(row[-3]), row[-2]) for row in rows], title="compare"
    )
    best = next((r for r in runs if r.best), None)
    if best is not None:
        stderr_console.print(
            f"best: {best.run_id} ({best.metric} = {best.best_value:.6g} at epoch {best.best_epoch})",
            highlight=False,
        )
    if not differing and len(runs) > 1:
        stderr_console.print("[dim]these runs share every parameter[/dim]")


def _as_json(run: Compared, only: list[str] | None = None) -> dict[str, Any]:
    params = run.params if only is None else {k: run.params.get(k) for k in only}
    return {
        "run_id": run.run_id,
        "name": run.name,
        "status": run.status,
        "status_reason": run.status_reason,
        "epochs": run.epochs,
        "sweep_id": run.sweep_id,
        "metric": run.metric,
        "mode": run.mode,
        "best_value": run.best_value,
        "best_epoch": run.best_epoch,
        "best": run.best,
        "params": params,
    }
