"""Issue 9: the right model, every time — promotion by the checkpoint's own rule, on ordinary
Keras callback stacks, with real fits, the real promoter (and its Keras load check) and real SQL."""

from __future__ import annotations

import json
import threading

import keras
import numpy as np
import pytest
import redis

from alerts.engine import Alerter, Deliverer, build_channels
from alerts.rules import parse_rules
from pipeline import EventPublisher
from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.consumers.base import ConsumerLoop
from pipeline.model_registry import describe, list_versions, load_model
from tests.conftest import run_cli, settings_env, wait_for
from tests.job_fixtures import f1_model
from tests.slack_server import SlackLikeServer
from tests.test_promotion import PromoterThread, _keras_file, _stream_types
from tests.training_helpers import small_digits, small_model

pytestmark = pytest.mark.slow


class WeightsByEpoch(keras.callbacks.Callback):
    """Keeps the model's weights at the end of every epoch (the oracle for "which weights were promoted")."""

    def __init__(self):
        super().__init__()
        self.weights = {}

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch] = self.model.get_weights()


def _assert_same_weights(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def _outcome(settings, run_id, timeout=90):
    wait_for(lambda: _stream_types(settings, run_id), timeout=timeout, message="promotion outcome")
    return _stream_types(settings, run_id)


def _first_best(values, mode):
    """The epoch a strict-improvement rule (ModelCheckpoint's) keeps: the first best value."""
    best = max(values) if mode == "max" else min(values)
    return values.index(best)


def test_standard_callback_stack_promotes_the_file_model_checkpoint_kept(settings, engine, tmp_path):
    """Case 1: ReduceLROnPlateau + EarlyStopping on val_loss + ModelCheckpoint on val_accuracy."""
    (x, y), (x_val, y_val) = small_digits()
    model = small_model(learning_rate=5e-2)
    snapshots = WeightsByEpoch()
    reduce_lr = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=8, restore_best_weights=True)
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "best.keras"), monitor="val_accuracy", save_best_only=True
    )
    publisher = EventPublisher(name="standard-stack", watch=[reduce_lr, stop, checkpoint], settings=settings)
    with PromoterThread(settings, engine):
        history = model.fit(
            x,
            y,
            validation_data=(x_val, y_val),
            epochs=60,
            batch_size=32,
            verbose=0,
            callbacks=[snapshots, reduce_lr, stop, checkpoint, publisher],
        )
        outcome = _outcome(settings, publisher.run_id)
    kept_epoch = _first_best(history.history["val_accuracy"], "max")
    assert stop.stopped_epoch > 0 and stop.best_epoch != kept_epoch, (
        "the two callbacks must disagree for this test to mean anything"
    )
    assert [e.type for e in outcome] == ["model_promoted"], outcome
    promoted = outcome[0]
    assert (promoted.metric, promoted.mode, promoted.epoch, promoted.source) == (
        "val_accuracy",
        "max",
        kept_epoch,
        "model_checkpoint",
    )
    info = describe(engine, "standard-stack@champion")
    assert (info["metric"], info["mode"], info["epoch"], info["source"]) == (
        "val_accuracy",
        "max",
        kept_epoch,
        "model_checkpoint",
    )
    assert info["value"] == pytest.approx(history.history["val_accuracy"][kept_epoch])
    _assert_same_weights(
        load_model("standard-stack@champion", settings=settings).get_weights(), snapshots.weights[kept_epoch]
    )
    shown = json.loads(
        run_cli(
            "models", "show", "standard-stack@champion", "--json", env_extra=settings_env(settings)
        ).stdout
    )
    assert {k: shown[k] for k in ("metric", "mode", "epoch", "source")} == {
        "metric": "val_accuracy",
        "mode": "max",
        "epoch": kept_epoch,
        "source": "model_checkpoint",
    }
    assert shown["value"] == pytest.approx(info["value"])


def test_custom_metric_promotes_by_the_mode_keras_used(settings, engine, tmp_path):
    """Case 2: monitor="val_f1", mode="max" — a name that says nothing of its direction."""
    from pipeline.examples import breast_cancer

    (x, y), (x_val, y_val) = breast_cancer.load_data()
    model = f1_model()
    snapshots = WeightsByEpoch()
    stop = keras.callbacks.EarlyStopping(monitor="val_f1", mode="max", patience=3, restore_best_weights=True)
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "best.keras"), monitor="val_f1", mode="max", save_best_only=True
    )
    publisher = EventPublisher(name="custom-f1", watch=[stop, checkpoint], settings=settings)
    with PromoterThread(settings, engine) as promoter:
        history = model.fit(
            x,
            y,
            validation_data=(x_val, y_val),
            epochs=80,
            batch_size=32,
            verbose=0,
            callbacks=[snapshots, stop, checkpoint, publisher],
        )
        outcome = _outcome(settings, publisher.run_id)
    assert stop.stopped_epoch > 0, "EarlyStopping must fire for this test"
    kept_epoch = _first_best(history.history["val_f1"], "max")
    assert [e.type for e in outcome] == ["model_promoted"], outcome
    assert (outcome[0].metric, outcome[0].mode, outcome[0].epoch) == ("val_f1", "max", kept_epoch)
    assert promoter.loop.stats.dead_lettered == 0
    assert redis.Redis.from_url(settings.redis_url).xlen(f"{settings.stream}:dead") == 0
    info = describe(engine, "custom-f1@champion")
    assert (info["metric"], info["mode"], info["value"]) == (
        "val_f1",
        "max",
        pytest.approx(history.history["val_f1"][kept_epoch]),
    )
    # The custom metric is not registered with Keras: loaded without compiling, as the promoter checks it.
    _assert_same_weights(
        load_model("custom-f1@champion", settings=settings, compile=False).get_weights(),
        snapshots.weights[kept_epoch],
    )


def test_without_model_checkpoint_what_early_stopping_restored_is_promoted(settings, engine, tmp_path):
    (x, y), (x_val, y_val) = small_digits()
    model = small_model(learning_rate=5e-2)
    snapshots = WeightsByEpoch()
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    publisher = EventPublisher(
        name="restored-only", watch=[stop], settings=settings, save_restored_model=tmp_path / "restored.keras"
    )
    with PromoterThread(settings, engine):
        # The publisher first: the restored model is saved whatever the order.
        model.fit(
            x,
            y,
            validation_data=(x_val, y_val),
            epochs=40,
            batch_size=32,
            verbose=0,
            callbacks=[publisher, snapshots, stop],
        )
        outcome = _outcome(settings, publisher.run_id)
    assert stop.stopped_epoch > 0
    assert [e.type for e in outcome] == ["model_promoted"], outcome
    assert (outcome[0].epoch, outcome[0].source, outcome[0].metric) == (
        stop.best_epoch,
        "early_stopping_restore",
        "val_loss",
    )
    _assert_same_weights(
        load_model("restored-only@champion", settings=settings).get_weights(),
        snapshots.weights[stop.best_epoch],
    )


def test_a_checkpoint_file_that_changed_falls_back_to_the_restored_model(settings, engine, tmp_path):
    """ModelCheckpoint's file overwritten behind Fitstream's back: not intact, so the restored model goes."""
    (x, y), (x_val, y_val) = small_digits()
    model = small_model(learning_rate=5e-2)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "best.keras"), monitor="val_loss", save_best_only=True
    )
    tamper = keras.callbacks.LambdaCallback(
        on_train_end=lambda logs: _keras_file(tmp_path / "best.keras", seed=99)
    )
    publisher = EventPublisher(
        name="tampered",
        watch=[stop, checkpoint],
        settings=settings,
        save_restored_model=tmp_path / "restored.keras",
    )
    with PromoterThread(settings, engine):
        model.fit(
            x,
            y,
            validation_data=(x_val, y_val),
            epochs=40,
            batch_size=32,
            verbose=0,
            callbacks=[stop, checkpoint, tamper, publisher],
        )
        outcome = _outcome(settings, publisher.run_id)
    assert [e.type for e in outcome] == ["model_promoted"], outcome
    assert (outcome[0].source, outcome[0].epoch) == ("early_stopping_restore", stop.best_epoch)


def test_every_epoch_file_is_a_candidate_and_batch_checkpoints_are_reported(settings, engine, tmp_path):
    (x, y), (x_val, y_val) = small_digits()
    model = small_model(learning_rate=5e-2)
    snapshots = WeightsByEpoch()
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=False)
    every = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "ckpt-{epoch:02d}.keras"), monitor="val_loss", save_best_only=False
    )
    batches = keras.callbacks.ModelCheckpoint(str(tmp_path / "batch.keras"), monitor="loss", save_freq=7)
    publisher = EventPublisher(name="every-epoch", watch=[stop, every, batches], settings=settings)
    with PromoterThread(settings, engine):
        history = model.fit(
            x,
            y,
            validation_data=(x_val, y_val),
            epochs=40,
            batch_size=32,
            verbose=0,
            callbacks=[publisher, snapshots, stop, every, batches],
        )
        outcome = _outcome(settings, publisher.run_id)
    best_epoch = _first_best(history.history["val_loss"], "min")
    assert [e.type for e in outcome] == ["model_promoted"] and outcome[0].epoch == best_epoch
    _assert_same_weights(
        load_model("every-epoch@champion", settings=settings).get_weights(), snapshots.weights[best_epoch]
    )
    saved = [
        e
        for e in (ev.decode(f) for _i, f in redis.Redis.from_url(settings.redis_url).xrange(settings.stream))
        if e.run_id == publisher.run_id and e.type == "checkpoint_saved"
    ]
    per_epoch = [e for e in saved if e.batch is None]
    assert sorted(e.epoch for e in per_epoch) == list(range(len(history.history["loss"])))
    assert all(e.mode == "min" and e.source == "model_checkpoint" for e in per_epoch)
    batch_level = [e for e in saved if e.batch is not None]
    steps = -(-len(x) // 32)
    assert len(batch_level) == (steps * len(history.history["loss"])) // 7  # one per 7 batches, none missed
    assert all(e.path.endswith("batch.keras") and e.monitor == "loss" for e in batch_level)
    # Keras counts batches across epochs: every 7th batch overall, credited to its epoch and index.
    saves = [divmod(n - 1, steps) for n in range(7, steps * len(history.history["loss"]) + 1, 7)]
    assert [(e.epoch, e.batch) for e in batch_level] == saves


def test_events_without_a_mode_take_it_from_run_started_or_are_skipped_with_the_reason(
    settings, engine, tmp_path
):
    stream = EventStream(settings=settings)
    with PromoterThread(settings, engine):
        for run_id, known in (("legacy-known", True), ("legacy-unknown", False)):
            path = tmp_path / f"{run_id}.keras"
            sha = _keras_file(path, seed=1)
            callbacks = (
                [ev.MonitoringCallback(kind="model_checkpoint", monitor="val_f1", mode="max")]
                if known
                else []
            )
            stream.publish(
                [
                    ev.build(ev.RunStarted, run_id=run_id, seq=1_000_000, name=run_id, callbacks=callbacks),
                    ev.build(
                        ev.CheckpointSaved,
                        run_id=run_id,
                        seq=1_000_003,
                        path=str(path),
                        epoch=2,
                        monitor="val_f1",
                        value=0.8,
                        sha256=sha,
                    ),
                    ev.build(
                        ev.EarlyStopped,
                        run_id=run_id,
                        seq=1_000_006,
                        stopped_epoch=5,
                        best_epoch=2,
                        best_value=0.8,
                        monitor="val_f1",
                        mode="max",
                    ),
                ]
            )
        known = _outcome(settings, "legacy-known")
        unknown = _outcome(settings, "legacy-unknown")
    assert [e.type for e in known] == ["model_promoted"] and known[0].mode == "max"
    assert [e.type for e in unknown] == ["promotion_skipped"]
    assert (
        "val_f1" in unknown[0].reason
        and "no direction" in unknown[0].reason
        and "no checkpoint was recorded" not in unknown[0].reason
    )


def test_a_champion_valued_on_another_metric_stays_and_the_skip_says_why(settings, engine, tmp_path):
    stream = EventStream(settings=settings)
    with PromoterThread(settings, engine):
        for index, (run_id, metric, mode, value) in enumerate(
            (("by-loss", "val_loss", "min", 0.3), ("by-accuracy", "val_accuracy", "max", 0.9))
        ):
            path = tmp_path / f"{run_id}.keras"
            sha = _keras_file(path, seed=index)
            stream.publish(
                [
                    ev.build(ev.RunStarted, run_id=run_id, seq=1_000_000, name="mixed"),
                    ev.build(
                        ev.CheckpointSaved,
                        run_id=run_id,
                        seq=1_000_003,
                        path=str(path),
                        epoch=1,
                        monitor=metric,
                        mode=mode,
                        value=value,
                        sha256=sha,
                    ),
                    ev.build(
                        ev.EarlyStopped,
                        run_id=run_id,
                        seq=1_000_006,
                        stopped_epoch=4,
                        best_epoch=1,
                        best_value=value,
                        monitor=metric,
                        mode=mode,
                    ),
                ]
            )
            wait_for(lambda r=run_id: _stream_types(settings, r), message=f"{run_id} outcome")
        wait_for(lambda: len(_stream_types(settings, "by-accuracy")) == 2, message="the champion's skip")
        second = _stream_types(settings, "by-accuracy")
    assert [e.type for e in second] == ["model_promoted", "promotion_skipped"]
    assert (
        second[0].version == 2
        and not second[0].champion
        and "cannot be compared" in second[0].champion_reason
    )
    assert second[1].reason.startswith("champion not moved") and "val_loss (min)" in second[1].reason
    assert second[1].seq > second[0].seq > ev.PROMOTION_BASE
    assert (
        describe(engine, "mixed@champion")["version"] == 1
        and describe(engine, "mixed@latest")["version"] == 2
    )
    assert [v["version"] for v in list_versions(engine, "mixed")] == [1, 2]


def test_a_lifecycle_rule_delivers_early_stopped_and_model_promoted(settings, engine, tmp_path):
    """Case 4: `on: [early_stopped, model_promoted]` lost the promotion (numbered below the run's events)."""
    hook = SlackLikeServer()
    hook.start()
    rules = parse_rules(
        {
            "channels": {"ops": {"type": "webhook", "url_env": "LIFECYCLE_HOOK"}},
            "rules": [{"name": "lifecycle", "on": ["early_stopped", "model_promoted"], "channels": ["ops"]}],
        }
    )
    loop = ConsumerLoop(
        Alerter(engine, rules), EventStream(settings=settings), consumer_name="alerter-lifecycle"
    )
    deliverer = Deliverer(engine, build_channels(rules, {"LIFECYCLE_HOOK": hook.url}), retry_max_s=5.0)
    threads = [
        threading.Thread(target=loop.run, daemon=True),
        threading.Thread(target=deliverer.run, daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        (x, y), (x_val, y_val) = small_digits()
        model = small_model(learning_rate=5e-2)
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
        checkpoint = keras.callbacks.ModelCheckpoint(
            str(tmp_path / "best.keras"), monitor="val_loss", save_best_only=True
        )
        publisher = EventPublisher(
            name="lifecycle-run",
            watch=[stop, checkpoint],
            settings=settings,
            seq_start=ev.attempt_first_seq(1),
        )
        with PromoterThread(settings, engine):
            model.fit(
                x,
                y,
                validation_data=(x_val, y_val),
                epochs=40,
                batch_size=32,
                verbose=0,
                callbacks=[stop, checkpoint, publisher],
            )
            wait_for(lambda: len(hook.accepted) >= 2, timeout=90, message="both lifecycle alerts")
        summaries = [r["json"]["summary"] for r in hook.accepted]
    finally:
        loop.stop_event.set()
        deliverer.stop_event.set()
        for thread in threads:
            thread.join(timeout=30)
        hook.stop()
    assert len(summaries) == 2, summaries
    assert summaries[0].startswith("early stopping at epoch") and summaries[1].startswith(
        "promoted as lifecycle-run v1"
    )
