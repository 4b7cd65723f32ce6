"""Fault 7 (and issue 9, case 3), on a real worker: a queued run whose training process is
SIGKILLed after its best epoch (the worker stays alive) resumes into its uninterrupted twin — one
run, no epoch twice, same history, same stop, same best checkpoint, same champion."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import redis
import sqlalchemy as sa

from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.model_registry import describe, load_model
from tests.conftest import RecorderThread, run_cli, wait_for
from tests.faults.conftest import count_recorded
from tests.stream_helpers import RECORDED_EVENT_IDS
from tests.test_promotion import PromoterThread

pytestmark = pytest.mark.slow


def _spec(tmp_path, name: str, *, kill_epoch: int, marker) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\n"
        "model: {fn: 'tests.job_fixtures:small_model', kwargs: {hidden: 16, learning_rate: 0.02}}\n"
        "data: tests.job_fixtures:slow_data\n"
        "fit: {epochs: 40, batch_size: 32, shuffle: false, verbose: 0}\n"
        "seed: 7\n"
        "early_stopping: {monitor: val_loss, patience: 4, restore_best_weights: true}\n"
        "checkpoint: {monitor: val_loss}\n"
        "reduce_lr: {monitor: val_loss, factor: 0.5, patience: 2}\n"
        f"callbacks: [{{class: 'tests.job_fixtures:KillOnce', kwargs: {{epoch: {kill_epoch}, batch: 2, marker: '{marker}'}}}}]\n"
    )
    return str(path)


def _events(settings, run_id):
    client = redis.Redis.from_url(settings.redis_url)
    return [e for e in (ev.decode(f) for _i, f in client.xrange(settings.stream)) if e.run_id == run_id]


def _finished(settings, run_id):
    return wait_for(
        lambda: next((e for e in _events(settings, run_id) if e.type == "run_finished"), None),
        timeout=240,
        message=f"{run_id} to finish",
    )


def _history(engine, run_id):
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT epoch, name, value FROM epoch_metrics WHERE run_id = :r"), {"r": run_id}
        ).all()
    return {(epoch, name): value for epoch, name, value in rows}


def _recorded_ids(engine):
    with engine.connect() as conn:
        return set(conn.execute(sa.text(RECORDED_EVENT_IDS)).scalars())


def _submit(path, queue, env):
    return json.loads(run_cli("submit", path, "--queue", queue, "--json", env_extra=env).stdout)["run_id"]


def test_a_killed_training_process_resumes_into_its_uninterrupted_twin(
    settings, engine, job_env, queue_name, start_worker, tmp_path, database_url, ledger
):
    if database_url.startswith("postgresql"):
        pytest.skip("the twin's decisions do not depend on the database; checked once, on SQLite")
    never = tmp_path / "never-kill"
    never.write_text("the straight twin is never killed")
    worker = start_worker()
    with RecorderThread(settings, engine), PromoterThread(settings, engine):
        straight = _submit(_spec(tmp_path, "twin-straight", kill_epoch=0, marker=never), queue_name, job_env)
        assert _finished(settings, straight).status == "early_stopped"
        stopped = next(e for e in _events(settings, straight) if e.type == "early_stopped")
        assert stopped.stopped_epoch >= stopped.best_epoch + 2
        kill_epoch = stopped.best_epoch + 1  # after the best epoch: EarlyStopping has something to forget
        marker = tmp_path / "killed"
        resumed = _submit(
            _spec(tmp_path, "twin-resumed", kill_epoch=kill_epoch, marker=marker), queue_name, job_env
        )
        finished = _finished(settings, resumed)
        wait_for(
            lambda: describe_or_none(engine, "twin-straight") and describe_or_none(engine, "twin-resumed"),
            timeout=120,
            message="both promoted",
        )
        wait_for(
            lambda: _history(engine, resumed).keys() == _history(engine, straight).keys(),
            timeout=60,
            message="the resumed history recorded",
        )
        wait_for(
            lambda: {e.id for e in _events(settings, resumed)} <= _recorded_ids(engine),
            timeout=60,
            message="every event recorded",
        )
    killed_pid = int(marker.read_text())
    events = _events(settings, resumed)
    starts = [e for e in events if e.type == "run_started"]
    assert (
        [s.tags["attempt"] for s in starts] == ["1", "2"]
        and starts[0].pid == killed_pid
        and starts[1].pid != killed_pid
    )
    assert "WorkerLostError" in worker.output() or "SIGKILL" in worker.output(), (
        "the training process was killed, the worker lived on"
    )
    assert finished.status == "early_stopped"
    resumed_stop = next(e for e in events if e.type == "early_stopped")
    assert (resumed_stop.stopped_epoch, resumed_stop.best_epoch) == (
        stopped.stopped_epoch,
        stopped.best_epoch,
    )
    assert resumed_stop.best_value == pytest.approx(stopped.best_value, rel=1e-6)
    # Epoch by epoch, the same history (each epoch recorded once).
    twin, mine = _history(engine, straight), _history(engine, resumed)
    assert mine.keys() == twin.keys()
    for key, value in twin.items():
        assert mine[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    epochs = sorted(e.epoch for e in events if e.type == "epoch_end")
    assert epochs == sorted(set(epochs)), "no epoch published twice"
    row = count_recorded(
        engine,
        EventStream(settings=settings),
        "7. training process SIGKILLed, worker alive",
        (e.id for e in events),
        note=f"resumed at epoch {kill_epoch}, 2 attempts, 1 run",
    )
    ledger.append(row)
    assert (row.recorded, row.lost, row.duplicated, row.dead_lettered) == (len(events), 0, 0, 0)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM runs WHERE name = 'twin-resumed'")).scalar() == 1
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT run_id, status, best_epoch, stopped_epoch, epochs_completed FROM runs WHERE run_id IN (:a, :b)"
            ),
            {"a": straight, "b": resumed},
        ).all()
    assert len({r[1:] for r in rows}) == 1, rows
    # The best checkpoint file and the champion: the same weights.
    files = [settings.home / "runs" / run / "checkpoints" / "best.keras" for run in (straight, resumed)]
    for got, expected in zip(*(keras.saving.load_model(str(f)).get_weights() for f in files)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    a, b = describe(engine, "twin-straight@champion"), describe(engine, "twin-resumed@champion")
    assert (
        (a["epoch"], a["metric"], a["mode"])
        == (b["epoch"], b["metric"], b["mode"])
        == (stopped.best_epoch, "val_loss", "min")
    )
    assert a["value"] == pytest.approx(b["value"], rel=1e-6)
    for got, expected in zip(
        load_model("twin-resumed@champion", settings=settings).get_weights(),
        load_model("twin-straight@champion", settings=settings).get_weights(),
    ):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def describe_or_none(engine, name):
    try:
        return describe(engine, f"{name}@champion")
    except Exception:
        return None
