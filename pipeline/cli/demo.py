"""``fitstream demo``: the whole core path on embedded defaults, end to end.

Trains a small MLP on scikit-learn's digits with Keras' EarlyStopping,
ModelCheckpoint and ReduceLROnPlateau plus the EventPublisher, runs a
recorder beside it, and prints the run's epochs read back from SQL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import click
from rich.console import Console

from pipeline.cli.output import print_rows
from pipeline.config import get_settings
from pipeline.db import migrate
from pipeline.db.queries import get_run
from pipeline.db.session import make_engine, mask_url
from pipeline.errors import FitstreamError

RECORD_TIMEOUT_S = 60.0


def _wait_recorded(engine, run_id: str, timeout: float) -> None:  # type: ignore[no-untyped-def]
    from pipeline.db.models import TERMINAL_STATUSES
    from pipeline.errors import RunNotFoundError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if get_run(engine, run_id).run.status in TERMINAL_STATUSES:
                return
        except RunNotFoundError:
            pass
        time.sleep(0.2)
    raise FitstreamError(f"the recorder did not record run {run_id} within {timeout:.0f}s; is it running?")


@click.command()
@click.option("--epochs", type=click.IntRange(1, 1000), default=40, show_default=True)
@click.option("--patience", type=click.IntRange(0), default=3, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
def demo(epochs: int, patience: int, batch_size: int) -> None:
    """Train on digits with the publisher and a recorder; print the epochs read back from SQL."""
    console = Console(stderr=True)
    settings = get_settings()
    console.print(f"database: {mask_url(settings.database_url)}   redis: {settings.redis_url}   stream: {settings.stream}")
    migrate.upgrade(settings.database_url)
    recorder = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.main", "consume", "recorder"],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        run_id = _train(console, epochs=epochs, patience=patience, batch_size=batch_size)
        engine = make_engine(settings.database_url, read_only=True)
        _wait_recorded(engine, run_id, RECORD_TIMEOUT_S)
        detail = get_run(engine, run_id)
        engine.dispose()
    finally:
        recorder.send_signal(signal.SIGTERM)
        try:
            recorder.wait(timeout=15)
        except subprocess.TimeoutExpired:
            recorder.kill()
    run = detail.run
    names = sorted({n for e in detail.epochs for n in e.metrics})
    # ReduceLROnPlateau already logs learning_rate; otherwise show the publisher's reading.
    lr_column = [] if "learning_rate" in names else ["learning_rate"]
    print_rows(
        ["epoch", *names, *lr_column, "wall_time_s"],
        [
            (e.epoch, *(e.metrics.get(n) for n in names), *([e.learning_rate] if lr_column else []), e.wall_time_s)
            for e in detail.epochs
        ],
        title=f"run {run.run_id} ({run.name}) — epoch_metrics read back from SQL",
    )
    click.echo(
        f"status={run.status} epochs_completed={run.epochs_completed} best_epoch={run.best_epoch} "
        f"best_{run.monitor}={run.best_value:.4f} stopped_epoch={run.stopped_epoch}"
        if run.best_value is not None
        else f"status={run.status} epochs_completed={run.epochs_completed}"
    )
    click.echo(f"query it yourself: fitstream sql \"SELECT epoch, name, value FROM epoch_metrics WHERE run_id = '{run.run_id}'\"")


def _train(console: Console, *, epochs: int, patience: int, batch_size: int) -> str:
    console.print("importing TensorFlow…")
    import keras

    from examples import digits
    from pipeline.callbacks.publisher import EventPublisher

    settings = get_settings()
    (x, y), (x_val, y_val) = digits.load_data()
    model = digits.build_model(learning_rate=1e-2)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    publisher = EventPublisher(name="demo-digits-mlp", watch=[stop], batch_size=batch_size)
    run_dir = settings.runs_dir / publisher.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = keras.callbacks.ModelCheckpoint(str(run_dir / "best.keras"), monitor="val_loss", save_best_only=True)
    reduce_lr = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2)
    publisher.watch = (stop, checkpoint, reduce_lr)
    console.print(f"training run {publisher.run_id} (digits MLP, up to {epochs} epochs)…")
    with publisher:
        model.fit(
            x, y, validation_data=(x_val, y_val), epochs=epochs, batch_size=batch_size, verbose=2,
            callbacks=[publisher, stop, checkpoint, reduce_lr],
        )
    return publisher.run_id
