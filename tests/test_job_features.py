"""Every job-spec feature the README lists, through a real worker (issue 11): each queued job's
effect is read back from SQL and the stream — the learning rate each epoch trained with, tags,
batch events, the validation set a split made, datasets with steps_per_epoch, NaN termination."""

from __future__ import annotations

import json
import math

import pytest
import redis
import sqlalchemy as sa

from pipeline import events as ev
from tests.conftest import RecorderThread, run_cli, wait_for
from tests.test_promotion import PromoterThread

pytestmark = pytest.mark.slow
LR = 0.01  # tests.job_fixtures:small_model's learning rate

JOBS = {
    "reduce-split-tags": (
        "data: tests.job_fixtures:xy_only\n"
        "fit: {epochs: 3, batch_size: 32, validation_split: 0.25, shuffle: false}\n"
        "early_stopping: false\n"
        "reduce_lr: {monitor: val_loss, factor: 0.5, patience: 0, min_delta: 10.0}\n"  # halves after epochs 1 and 2
        "batch_events_every: 5\n"
        "tags: {team: vision, owner: ml-platform}\n"
    ),
    "step": "data: tests.job_fixtures:slow_data\nfit: {epochs: 4, batch_size: 64}\nlr_schedule: {kind: step, every: 2, factor: 0.5}\n",
    "exponential-datasets": (
        "data: tests.job_fixtures:datasets\nfit: {epochs: 3, steps_per_epoch: 4}\n"
        "lr_schedule: {kind: exponential, factor: 0.5}\n"
    ),
    "cosine": "data: tests.job_fixtures:slow_data\nfit: {epochs: 4, batch_size: 64}\nlr_schedule: {kind: cosine, total_epochs: 4, min_lr: 0.001}\n",
    "function": (
        "data: tests.job_fixtures:slow_data\nfit: {epochs: 4, batch_size: 64}\n"
        "lr_schedule: {kind: function, fn: 'tests.job_fixtures:halve_after_one'}\n"
    ),
    "nan": "data: tests.job_fixtures:slow_data\nfit: {epochs: 5, batch_size: 32}\n",
    # min_delta above any improvement: EarlyStopping stops after epoch 1 (patience 1).
    "epoch-files-no-restore": (
        "data: tests.job_fixtures:slow_data\nfit: {epochs: 5, batch_size: 64}\n"
        "early_stopping: {monitor: val_loss, patience: 1, min_delta: 10.0, restore_best_weights: false}\n"
        "checkpoint: {monitor: val_loss, save_best_only: false, filename: 'ckpt-{epoch:02d}.keras'}\n"
    ),
    "batch-files": (
        "data: tests.job_fixtures:slow_data\nfit: {epochs: 2, batch_size: 64}\n"  # 400 samples: 7 batches per epoch
        "checkpoint: {monitor: val_loss, save_best_only: false, save_freq: 5, filename: 'batch.keras'}\n"
    ),
    "restored-only": (
        "data: tests.job_fixtures:slow_data\nfit: {epochs: 5, batch_size: 64}\n"
        "early_stopping: {monitor: val_loss, patience: 1, min_delta: 10.0}\ncheckpoint: false\n"
    ),
}
EXPECTED_LR = {
    "reduce-split-tags": [LR, LR, LR / 2],
    "step": [LR, LR, LR / 2, LR / 2],
    "exponential-datasets": [LR, LR / 2, LR / 4],
    "cosine": [0.001 + 0.5 * (LR - 0.001) * (1 + math.cos(math.pi * e / 4)) for e in range(4)],
    "function": [LR, LR, LR / 2, LR / 4],
}


def spec_file(tmp_path, name: str, body: str) -> str:
    path = tmp_path / f"{name}.yaml"
    model = "tests.job_fixtures:diverging_model" if name == "nan" else "tests.job_fixtures:small_model"
    default_checkpoint = "" if "checkpoint:" in body else "checkpoint: {monitor: val_loss}\n"
    path.write_text(f"name: {name}\nmodel: {model}\n{default_checkpoint}{body}")
    return str(path)


def rows(engine, sql: str, run_id: str) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), {"r": run_id}).all()


def stream_events(settings, run_id: str) -> list[ev.Event]:
    client = redis.Redis.from_url(settings.redis_url)
    return [e for e in (ev.decode(f) for _i, f in client.xrange(settings.stream)) if e.run_id == run_id]


def test_every_job_spec_feature_through_a_real_worker(
    settings, engine, job_env, queue_name, start_worker, tmp_path, database_url
):
    if database_url.startswith("postgresql"):
        pytest.skip("what a spec makes Keras do does not depend on the database; checked once, on SQLite")
    start_worker()
    with RecorderThread(settings, engine), PromoterThread(settings, engine):
        runs = {
            name: json.loads(
                run_cli(
                    "submit",
                    spec_file(tmp_path, name, body),
                    "--queue",
                    queue_name,
                    "--json",
                    env_extra=job_env,
                ).stdout
            )["run_id"]
            for name, body in JOBS.items()
        }
        for name, run_id in runs.items():
            wait_for(
                lambda: rows(
                    engine, "SELECT status FROM runs WHERE run_id = :r AND finished_at IS NOT NULL", run_id
                ),
                timeout=240,
                message=f"{name} finished and recorded",
            )
            wait_for(
                lambda: any(
                    e.type in ("run_finished", "run_failed") for e in stream_events(settings, run_id)
                ),
                timeout=60,
                message=f"{name}'s last event",
            )
        wait_for(
            lambda: any(e.type == "model_promoted" for e in stream_events(settings, runs["restored-only"])),
            timeout=90,
            message="the restored model promoted",
        )

    for name, expected in EXPECTED_LR.items():
        trained_with = [
            lr
            for (lr,) in rows(
                engine, "SELECT learning_rate FROM epochs WHERE run_id = :r ORDER BY epoch", runs[name]
            )
        ]
        assert trained_with == pytest.approx(expected, rel=1e-5), name

    # reduce_lr: two lr_changed events; validation_split made a validation set; tags; batch events.
    split = runs["reduce-split-tags"]
    changes = [(e.epoch, e.monitor) for e in stream_events(settings, split) if e.type == "lr_changed"]
    assert changes == [(1, "val_loss"), (2, "val_loss")]
    names = {n for (n,) in rows(engine, "SELECT DISTINCT name FROM epoch_metrics WHERE run_id = :r", split)}
    assert {"loss", "val_loss", "accuracy", "val_accuracy"} <= names
    (tags,) = rows(engine, "SELECT tags FROM runs WHERE run_id = :r", split)[0]
    assert {"team": "vision", "owner": "ml-platform"}.items() <= json.loads(tags).items()
    # 400 samples, a quarter held out: 300 → 10 batches of 32 per epoch; every 5th batch → 2 per epoch.
    batches = [(e.epoch, e.batch) for e in stream_events(settings, split) if e.type == "batch_end"]
    assert batches == [(epoch, batch) for epoch in range(3) for batch in (4, 9)]

    # Datasets with steps_per_epoch: each epoch took exactly 4 steps.
    steps = [
        s
        for (s,) in rows(
            engine, "SELECT steps FROM epochs WHERE run_id = :r ORDER BY epoch", runs["exponential-datasets"]
        )
    ]
    assert steps == [4, 4, 4]

    # terminate_on_nan: the loss overflows in epoch 1; TerminateOnNaN stops training there; the run says why.
    (status, epochs_completed, error_type, error_message) = rows(
        engine,
        "SELECT status, epochs_completed, error_type, error_message FROM runs WHERE run_id = :r",
        runs["nan"],
    )[0]
    assert epochs_completed == 2  # as Keras' History: epoch 0, and epoch 1 cut short at its first NaN batch
    assert (status, error_type) == ("failed", "TerminateOnNaN"), (status, error_type, error_message)
    assert error_message.startswith("training stopped: the loss became inf at epoch 1, batch "), error_message

    # Datasets: no fingerprint (the arrays are not at hand), as the README says.
    assert rows(
        engine, "SELECT data_fingerprint FROM runs WHERE run_id = :r", runs["exponential-datasets"]
    ) == [(None,)]

    # restore_best_weights: false, and a ModelCheckpoint filename with Keras' {epoch:02d}.
    files = runs["epoch-files-no-restore"]
    assert rows(
        engine, "SELECT status, stopped_epoch, restored_best_weights FROM runs WHERE run_id = :r", files
    ) == [("early_stopped", 1, False)]
    saved = sorted(
        path.rsplit("/", 1)[1]
        for (path,) in rows(engine, "SELECT path FROM checkpoints WHERE run_id = :r", files)
    )
    assert saved == ["ckpt-01.keras", "ckpt-02.keras"]

    # save_freq: N batches — the checkpoints carry the batch they were saved at (7 batches per epoch).
    # Keras counts batches across epochs: the 5th batch (epoch 0, index 4), then the 10th (epoch 1, index 2).
    batch_saves = rows(
        engine,
        "SELECT epoch, batch FROM checkpoints WHERE run_id = :r AND source = 'model_checkpoint' "
        "ORDER BY epoch, batch",
        runs["batch-files"],
    )
    assert batch_saves == [(0, 4), (1, 2)]

    # checkpoint: false — the model EarlyStopping restored is saved and promoted (the default for queued jobs).
    (source, epoch) = rows(
        engine, "SELECT source, epoch FROM model_versions WHERE run_id = :r", runs["restored-only"]
    )[0]
    assert (source, epoch) == ("early_stopping_restore", 0)
