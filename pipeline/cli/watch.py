"""``fitstream watch RUN``: a run live, from the event stream."""

from __future__ import annotations

import json
import sys

import click
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from pipeline import events as ev
from pipeline.bus import EventStream, connect
from pipeline.cli.output import jsonable, make_console
from pipeline.config import get_settings
from pipeline.job_records import JobRecords
from pipeline.run_watch import follow_run, stream_id_at


def _format_metrics(metrics: dict[str, float | None]) -> str:
    return "  ".join(f"{k}={v:.4g}" if v is not None else f"{k}=nan" for k, v in sorted(metrics.items()))


@click.command()
@click.argument("run")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print each event as one JSON line instead.")
def watch(run: str, timeout: float | None, as_json: bool) -> None:
    """Follow RUN live: progress over epochs with ETA, metrics as they arrive, the outcome.

    Exits when the run ends (status 0 when it completed or stopped early, 1 otherwise).
    """
    settings = get_settings()
    stream = EventStream(settings=settings)
    record = JobRecords(connect(settings.redis_url)).load(run)
    start = stream_id_at(record.submitted_at) if record is not None else "0"
    final = None
    if as_json:
        for event in follow_run(stream, run, start_id=start, timeout=timeout):
            sys.stdout.write(json.dumps(jsonable(event.model_dump())) + "\n")
            sys.stdout.flush()
            final = event
    else:
        final = _watch_rich(stream, run, start, timeout)
    if final is None or final.type != "run_finished":
        raise click.ClickException(
            f"run {run} did not finish within {timeout}s"
            if timeout
            else f"run {run} ended without run_finished"
        )
    sys.exit(0 if final.status in ev.SUCCESSFUL_STATUSES else 1)


def _watch_rich(stream: EventStream, run: str, start: str, timeout: float | None) -> ev.Event | None:
    console = make_console()
    final = None
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(f"run {run[:12]}", total=None)
        for event in follow_run(stream, run, start_id=start, timeout=timeout):
            final = event
            if isinstance(event, ev.RunQueued):
                progress.console.print(f"queued on '{event.queue}' as {event.name}")
            elif isinstance(event, ev.RunStarted):
                progress.update(task, total=event.epochs, description=f"{event.name}")
                progress.console.print(
                    f"started on {event.host} (pid {event.pid}): {event.model_name}, {event.params_count:,} parameters"
                    if event.params_count
                    else f"started on {event.host}"
                )
            elif isinstance(event, ev.EpochEnd):
                progress.update(task, completed=event.epoch + 1)
                progress.console.print(
                    f"epoch {event.epoch:>3}  {_format_metrics(event.metrics)}  ({event.wall_time_s or 0:.2f}s)"
                )
            elif isinstance(event, ev.CheckpointSaved):
                progress.console.print(
                    f"          checkpoint saved: {event.path} ({event.monitor}={event.value:.4g})"
                    if event.value is not None
                    else f"          checkpoint saved: {event.path}"
                )
            elif isinstance(event, ev.LearningRateChanged):
                progress.console.print(f"          learning rate {event.old:.3g} → {event.new:.3g}")
            elif isinstance(event, ev.EarlyStopped):
                progress.console.print(
                    f"early stopping at epoch {event.stopped_epoch}: best {event.monitor}={event.best_value:.4g} at epoch {event.best_epoch}"
                )
            elif isinstance(event, ev.RunFailed):
                progress.console.print(f"[red]failed: {event.error_type}: {event.message}[/red]")
            elif isinstance(event, ev.RunFinished):
                progress.console.print(
                    f"[bold]finished: {event.status}[/bold] after {event.epochs_completed} epochs"
                    + (f" — {escape(event.reason)}" if event.reason else "")
                )
    return final
