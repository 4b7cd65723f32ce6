"""The core path, for real: model.fit + Keras callbacks + EventPublisher → Redis → recorder → SQL.

Runs on SQLite and PostgreSQL. The SQL rows must equal Keras' History value for
value, and best/stopped epochs must equal EarlyStopping's own attributes.
"""

from __future__ import annotations

import json
import math

import keras
import pytest
import sqlalchemy as sa

from pipeline import EventPublisher
from pipeline.db.models import TERMINAL_STATUSES
from tests.conftest import run_cli, settings_env, wait_for
from tests.training_helpers import sha256, small_digits, small_model

pytestmark = pytest.mark.slow


def _fit(
    settings,
    tmp_path,
    *,
    publisher_first: bool,
    epochs: int = 12,
    patience: int = 2,
    learning_rate: float = 5e-2,
):
    (x, y), (x_val, y_val) = small_digits()
    model = small_model(learning_rate=learning_rate)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    ckpt_path = tmp_path / "best.keras"
    checkpoint = keras.callbacks.ModelCheckpoint(str(ckpt_path), monitor="val_loss", save_best_only=True)
    reduce_lr = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1)
    publisher = EventPublisher(
        name="core-path", watch=[stop, checkpoint, reduce_lr], settings=settings, batch_size=32
    )
    keras_callbacks = [stop, checkpoint, reduce_lr]
    callbacks = [publisher, *keras_callbacks] if publisher_first else [*keras_callbacks, publisher]
    history = model.fit(
        x, y, validation_data=(x_val, y_val), epochs=epochs, batch_size=32, verbose=0, callbacks=callbacks
    )
    return publisher, history, stop, ckpt_path


def _recorded(engine, run_id):
    with engine.connect() as conn:
        run = (
            conn.execute(sa.text("SELECT * FROM runs WHERE run_id = :r"), {"r": run_id})
            .mappings()
            .one_or_none()
        )
        return run


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("publisher_first", [True, False], ids=["publisher-first", "publisher-last"])
def test_sql_rows_equal_keras_history(settings, engine, recorder, tmp_path, publisher_first, database_url):
    if database_url.startswith("postgresql") and not publisher_first:
        pytest.skip("callback position is checked on SQLite; PostgreSQL runs the publisher-first case")
    publisher, history, stop, ckpt_path = _fit(settings, tmp_path, publisher_first=publisher_first)
    assert publisher.last_report is not None and publisher.last_report.complete

    run = wait_for(
        lambda: (
            (r := _recorded(engine, publisher.run_id)) is not None and r["status"] in TERMINAL_STATUSES and r
        ),
        message="run to be recorded",
    )
    epochs_run = len(history.history["loss"])
    assert stop.stopped_epoch > 0, (
        "this seeded fit is expected to stop early; adjust epochs/patience if Keras changed"
    )
    assert run["epochs_completed"] == epochs_run
    # Best and stopped epochs are exactly what EarlyStopping decided.
    assert run["best_epoch"] == stop.best_epoch
    assert run["best_value"] == pytest.approx(stop.best, rel=1e-12)
    if stop.stopped_epoch > 0:
        assert run["status"] == "early_stopped"
        assert run["stopped_epoch"] == stop.stopped_epoch
        assert epochs_run == stop.stopped_epoch + 1
    else:
        assert run["status"] == "completed"
        assert run["stopped_epoch"] is None
    assert run["restored_best_weights"] == 1
    assert run["monitor"] == "val_loss" and run["mode"] == "min"

    wait_for(
        lambda: (
            engine.connect()
            .execute(sa.text("SELECT count(*) FROM epoch_metrics WHERE run_id = :r"), {"r": publisher.run_id})
            .scalar()
            == sum(len(v) for v in history.history.values())
        ),
        message="every metric row",
    )
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT name, epoch, value FROM epoch_metrics WHERE run_id = :r ORDER BY name, epoch"),
            {"r": publisher.run_id},
        ).all()
        lr_rows = conn.execute(
            sa.text("SELECT epoch, learning_rate FROM epochs WHERE run_id = :r ORDER BY epoch"),
            {"r": publisher.run_id},
        ).all()
        checkpoints = conn.execute(
            sa.text(
                "SELECT epoch, path, value, size_bytes, sha256 FROM checkpoints WHERE run_id = :r ORDER BY epoch"
            ),
            {"r": publisher.run_id},
        ).all()
    recorded = {}
    for name, epoch, value in rows:
        recorded.setdefault(name, {})[epoch] = value
    assert set(recorded) == set(history.history)  # includes learning_rate added by ReduceLROnPlateau
    for name, values in history.history.items():
        assert [recorded[name][e] for e in range(epochs_run)] == [float(v) for v in values], name
    # The epochs table has the LR in effect during each epoch, as ReduceLROnPlateau logs it.
    assert [lr for _, lr in lr_rows] == [float(v) for v in history.history["learning_rate"]]

    # ModelCheckpoint(save_best_only) wrote at every improvement; the last row is the file on disk.
    improving = [
        e
        for e in range(epochs_run)
        if e == 0 or history.history["val_loss"][e] < min(history.history["val_loss"][:e])
    ]
    assert [c.epoch for c in checkpoints] == improving
    last = checkpoints[-1]
    assert last.path == str(ckpt_path.resolve()) and last.sha256 == sha256(ckpt_path)
    assert last.size_bytes == ckpt_path.stat().st_size
    assert last.value == pytest.approx(stop.best)


def test_cli_reads_back_the_run(settings, engine, recorder, tmp_path):
    publisher, history, stop, _ = _fit(settings, tmp_path, publisher_first=True, epochs=4)
    wait_for(
        lambda: (r := _recorded(engine, publisher.run_id)) is not None and r["status"] in TERMINAL_STATUSES,
        message="run recorded",
    )
    env = settings_env(settings)

    listing = json.loads(run_cli("runs", "--json", env_extra=env).stdout)
    assert [r["run_id"] for r in listing] == [publisher.run_id]
    for key in (
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
    ):
        assert key in listing[0]

    shown = json.loads(run_cli("show", publisher.run_id[:8], "--json", env_extra=env).stdout)
    assert shown["run_id"] == publisher.run_id
    assert [e["metrics"]["val_loss"] for e in shown["epochs"]] == [
        float(v) for v in history.history["val_loss"]
    ]

    query = f"SELECT epoch, value FROM epoch_metrics WHERE run_id = '{publisher.run_id}' AND name = 'loss' ORDER BY epoch"
    as_json = json.loads(run_cli("sql", query, "--json", env_extra=env).stdout)
    assert [r["value"] for r in as_json] == [float(v) for v in history.history["loss"]]
    as_csv = run_cli("sql", query, "--csv", env_extra=env).stdout.splitlines()
    assert as_csv[0] == "epoch,value" and len(as_csv) == len(history.history["loss"]) + 1

    missing = run_cli("show", "no-such-run", env_extra=env, check=False)
    assert (
        missing.returncode == 1 and "no run with id 'no-such-run'" in missing.stderr and missing.stdout == ""
    )
