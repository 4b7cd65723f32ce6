"""``fitstream demo``: the whole pipeline on embedded defaults, end to end.

Starts a Celery worker and a recorder, queues ``examples/digits_mlp.yaml``,
watches it live to the end, and prints the run read back from SQL. The
processes it started are stopped when it ends. ``--in-process`` instead trains
in this process with the EventPublisher, as a user's own script would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
from rich.console import Console

from pipeline import examples
from pipeline.bus import EventStream, connect
from pipeline.cli.output import print_rows
from pipeline.cli.watch import _watch_rich
from pipeline.config import get_settings
from pipeline.db import migrate
from pipeline.db.entities import RunDetail
from pipeline.db.queries import get_run
from pipeline.db.session import make_engine, mask_url
from pipeline.errors import FitstreamError, RunNotFoundError
from pipeline.job_records import JobRecords
from pipeline.run_watch import stream_id_at

RECORD_TIMEOUT_S = 60.0
#: The bundled examples ship inside the package (the repository's examples/ directory).
EXAMPLE_SPEC = Path(examples.__file__).resolve().parent / "digits_mlp.yaml"


def _wait_recorded(engine, run_id: str, timeout: float) -> RunDetail:  # type: ignore[no-untyped-def]
    from pipeline.db.models import TERMINAL_STATUSES

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            detail = get_run(engine, run_id)
            if detail.run.status in TERMINAL_STATUSES:
                return detail
        except RunNotFoundError:
            pass
        time.sleep(0.2)
    raise FitstreamError(f"the recorder did not record run {run_id} within {timeout:.0f}s; is it running?")


def _wait_promoted(engine, run_id: str, timeout: float) -> dict | None:  # type: ignore[no-untyped-def]
    """The model version the promoter registered for ``run_id`` (None if it did not)."""
    from pipeline.db.registry import version_of_run

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = version_of_run(engine, run_id)
        if found is not None:
            return found
        time.sleep(0.2)
    click.echo(
        f"the promoter registered no model for run {run_id} (see {get_settings().home / 'demo-logs' / 'promoter.log'})",
        err=True,
    )
    return None


def _validation_data(spec_path: str | None) -> tuple:
    """The job's validation data (as its data function returns it), to evaluate the champion on."""
    if spec_path is None:
        from pipeline.examples import digits

        return digits.load_data()[1]
    from pipeline.jobs import load_spec
    from pipeline.training import _call, _split_data

    spec = load_spec(spec_path)
    x, y, validation = _split_data(_call(spec.data))
    if validation is not None:
        return validation if isinstance(validation, tuple) else (validation,)
    if spec.fit.validation_split:  # Keras takes the last fraction, before shuffling
        first = int(len(x) * (1 - spec.fit.validation_split))
        return x[first:], y[first:]
    return (x, y) if y is not None else (x,)


def _evaluate_champion(promoted: dict, spec_path: str | None) -> None:
    """Load the champion back from the model store and evaluate it on the job's validation data."""
    from pipeline.model_registry import describe, load_model

    engine = make_engine(get_settings().database_url, read_only=True)
    champion = describe(engine, f"{promoted['name']}@champion")
    engine.dispose()
    model = load_model(f"{promoted['name']}@champion")
    results = model.evaluate(*_validation_data(spec_path), verbose=0, return_dict=True)
    click.echo(
        f"model store: {promoted['name']} v{promoted['version']} registered; champion is v{champion['version']} "
        f"(run {champion['run_id'][:12]}, epoch {champion['epoch']}, {champion['metric']}={champion['value']:.4f}, "
        f"{champion['source']})"
    )
    click.echo(
        "champion loaded back from the store and evaluated on the validation data: "
        + ", ".join(f"{k}={v:.4f}" for k, v in results.items())
    )


def _fitstream(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli.main", *args]


class _Processes:
    """Background processes the demo starts, stopped (SIGTERM, then SIGKILL) when it ends."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, args: list[str], log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        handle = open(log, "ab")
        proc = subprocess.Popen(
            args,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        self.procs.append((name, proc))

    def stop(self) -> None:
        for _name, proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _name, proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@click.command()
@click.option(
    "--spec",
    type=click.Path(exists=True, dir_okay=False),
    default=str(EXAMPLE_SPEC),
    show_default="examples/digits_mlp.yaml",
)
@click.option(
    "--in-process", is_flag=True, help="Train here with the EventPublisher instead of queueing a job."
)
@click.option(
    "--epochs", type=click.IntRange(1, 1000), default=40, show_default=True, help="With --in-process."
)
@click.option(
    "--curves",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("curves.png"),
    show_default=True,
    help="Where to draw the run's learning curves (fitstream plot).",
)
@click.option(
    "--ui/--no-ui",
    "serve_ui",
    default=None,
    help="Serve the dashboard at the end until Ctrl-C. Default: when run in a terminal (not in scripts or CI).",
)
@click.option("--ui-port", type=click.IntRange(1, 65535), default=8765, show_default=True)
def demo(spec: str, in_process: bool, epochs: int, curves: Path, serve_ui: bool | None, ui_port: int) -> None:
    """Queue an example job, run it on a worker started here, watch it live, print it from SQL."""
    console = Console(stderr=True)
    settings = get_settings()
    console.print(
        f"database: {mask_url(settings.database_url)}   redis: {mask_url(settings.redis_url)}   stream: {settings.stream}"
    )
    migrate.upgrade(settings.database_url)
    logs = settings.home / "demo-logs"
    processes = _Processes()
    try:
        processes.start("recorder", _fitstream("consume", "recorder"), logs / "recorder.log")
        processes.start("promoter", _fitstream("consume", "promoter"), logs / "promoter.log")
        if in_process:
            run_id = _train_in_process(console, epochs=epochs)
        else:
            queue = f"demo-{os.getpid()}"
            processes.start(
                "worker",
                _fitstream("worker", "-Q", queue, "-n", f"demo-{os.getpid()}@%h"),
                logs / "worker.log",
            )
            console.print(f"started a worker (queue {queue}) and a recorder; logs in {logs}")
            submitted = subprocess.run(
                _fitstream("submit", spec, "--queue", queue, "--json"), capture_output=True, text=True
            )
            if submitted.returncode != 0:
                raise FitstreamError(submitted.stderr.strip())
            run_id = json.loads(submitted.stdout)["run_id"]
            console.print(f"queued run {run_id}; watching it live:")
            record = JobRecords(connect(settings.redis_url)).load(run_id)
            start = stream_id_at(record.submitted_at) if record is not None else "0-0"
            _watch_rich(EventStream(settings=settings), run_id, start, timeout=600)
        engine = make_engine(settings.database_url, read_only=True)
        detail = _wait_recorded(engine, run_id, RECORD_TIMEOUT_S)
        promoted = _wait_promoted(engine, run_id, RECORD_TIMEOUT_S)
        engine.dispose()
    finally:
        processes.stop()
    _print_run(detail)
    from pipeline.plot import plot_runs

    engine = make_engine(settings.database_url, read_only=True)
    try:
        click.echo(
            f"learning curves: {plot_runs(engine, [run_id], curves)}   (fitstream plot {run_id[:8]} -o curves.png)"
        )
    finally:
        engine.dispose()
    if promoted is None:
        raise FitstreamError(
            f"the promoter registered no model for run {run_id}; see {logs / 'promoter.log'}"
        )
    _evaluate_champion(promoted, None if in_process else spec)
    if serve_ui is None:
        serve_ui = sys.stdin.isatty() and sys.stdout.isatty()
    url = f"http://127.0.0.1:{ui_port}/runs/{run_id}"
    if not serve_ui:
        click.echo(f"see it in the dashboard: fitstream ui, then open {url}")
        return
    import uvicorn

    from pipeline.ui.app import create_app

    click.echo(f"dashboard: {url}   (Ctrl-C to stop)")
    uvicorn.run(create_app(settings), host="127.0.0.1", port=ui_port, log_level="warning")


def _print_run(detail: RunDetail) -> None:
    run = detail.run
    names = sorted({n for e in detail.epochs for n in e.metrics})
    # ReduceLROnPlateau already logs learning_rate; otherwise show the publisher's reading.
    lr_column = [] if "learning_rate" in names else ["learning_rate"]
    print_rows(
        ["epoch", *names, *lr_column, "wall_time_s"],
        [
            (
                e.epoch,
                *(e.metrics.get(n) for n in names),
                *([e.learning_rate] if lr_column else []),
                e.wall_time_s,
            )
            for e in detail.epochs
        ],
        title=f"run {run.run_id} ({run.name}) — read back from SQL",
    )
    best = (
        f" best_epoch={run.best_epoch} best_{run.monitor}={run.best_value:.4f}"
        if run.best_value is not None
        else ""
    )
    click.echo(
        f"status={run.status} epochs_completed={run.epochs_completed}{best} stopped_epoch={run.stopped_epoch}"
    )
    click.echo(
        f"query it yourself: fitstream sql \"SELECT epoch, name, value FROM epoch_metrics WHERE run_id = '{run.run_id}'\""
    )


def _train_in_process(console: Console, *, epochs: int) -> str:
    console.print("importing TensorFlow…")
    import keras

    from pipeline.callbacks.publisher import EventPublisher
    from pipeline.examples import digits

    settings = get_settings()
    (x, y), (x_val, y_val) = digits.load_data()
    model = digits.build_model(learning_rate=1e-2)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    publisher = EventPublisher(name="demo-digits-mlp", batch_size=32)
    run_dir = settings.runs_dir / publisher.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(run_dir / "best.keras"), monitor="val_loss", save_best_only=True
    )
    reduce_lr = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2)
    publisher.watch = (stop, checkpoint, reduce_lr)
    console.print(f"training run {publisher.run_id} (digits MLP, up to {epochs} epochs)…")
    with publisher:
        model.fit(
            x,
            y,
            validation_data=(x_val, y_val),
            epochs=epochs,
            batch_size=32,
            verbose=2,
            callbacks=[publisher, stop, checkpoint, reduce_lr],
        )
    return publisher.run_id
