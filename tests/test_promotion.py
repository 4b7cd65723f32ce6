"""Promotion to the model store, against real Redis, SQL and a real Keras fit."""

from __future__ import annotations

import hashlib
import json
import threading
import zipfile

import keras
import numpy as np
import pytest

from pipeline import EventPublisher
from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.consumers.base import ConsumerLoop
from pipeline.consumers.promoter import Promoter, PromotionLocks
from pipeline.fingerprint import fingerprint_data
from pipeline.model_registry import describe, list_versions, load_model
from pipeline.promotion.load_check import KerasLoadCheck
from pipeline.store import open_store
from tests.conftest import run_cli, settings_env, wait_for
from tests.training_helpers import small_digits, small_model


class PromoterThread:
    """The real Promoter consuming in a thread: on the settings' store (or ``store``), with its Keras
    load-check helper process unless ``load_check`` is false."""

    def __init__(self, settings, engine, store=None, *, load_check: bool = True, name: str = "promoter-test"):
        stream = EventStream(settings=settings)
        self.load_check = KerasLoadCheck() if load_check else None
        promoter = Promoter(
            engine,
            store or open_store(settings.model_store_url),
            publish=stream.publish,
            load_check=self.load_check,
            locks=PromotionLocks(stream.client, stream.stream),
        )
        self.loop = ConsumerLoop(promoter, stream, consumer_name=name)
        self.thread = threading.Thread(target=self.loop.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.loop.stop_event.set()
        self.thread.join(timeout=30)
        if self.load_check is not None:
            self.load_check.close()


def _keras_file(path, seed: int) -> str:
    """A real (tiny) Keras model file whose weights depend on ``seed``; returns its sha256."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    model.save(str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _weights_only_zip(path) -> str:
    """Looks like a .keras file from outside (config.json and weights), but Keras cannot load it."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {}}))
        archive.writestr("model.weights.h5", b"not really hdf5" * 100)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _unsafe_keras_file(path) -> str:
    """A model with a Python lambda inside: loading it would run code, so safe_mode refuses it."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: t * 2), keras.layers.Dense(2)])
    model.save(str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _publish_run(stream, run_id, name, path, sha, value, *, best_epoch=2):
    stream.publish(
        [
            ev.build(ev.RunStarted, run_id=run_id, seq=0, name=name),
            ev.build(
                ev.CheckpointSaved,
                run_id=run_id,
                seq=3,
                path=str(path),
                epoch=best_epoch,
                monitor="val_loss",
                value=value,
                sha256=sha,
            ),
            ev.build(
                ev.EarlyStopped,
                run_id=run_id,
                seq=6,
                stopped_epoch=5,
                best_epoch=best_epoch,
                best_value=value,
                monitor="val_loss",
                mode="min",
            ),
        ]
    )


def _stream_types(settings, run_id):
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    return [
        e
        for e in (ev.decode(f) for _i, f in client.xrange(settings.stream))
        if e.run_id == run_id and e.type in ("model_promoted", "promotion_skipped")
    ]


@pytest.mark.slow
def test_early_stopping_promotes_the_best_epoch_and_it_loads_back(settings, engine, tmp_path):
    (x, y), (x_val, y_val) = small_digits()
    model = small_model(learning_rate=5e-2)
    weights_by_epoch = {}
    snapshot = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: weights_by_epoch.__setitem__(epoch, model.get_weights())
    )
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "best.keras"), monitor="val_loss", save_best_only=True
    )
    publisher = EventPublisher(
        name="digits-promoted",
        watch=[stop, checkpoint],
        settings=settings,
        data_fingerprint=fingerprint_data(x, y, (x_val, y_val)),
    )
    with PromoterThread(settings, engine):
        model.fit(
            x,
            y,
            validation_data=(x_val, y_val),
            epochs=15,
            batch_size=32,
            verbose=0,
            callbacks=[snapshot, stop, checkpoint, publisher],
        )
        assert stop.stopped_epoch > 0
        wait_for(lambda: _stream_types(settings, publisher.run_id), timeout=60, message="promotion")
    promoted = _stream_types(settings, publisher.run_id)
    assert (
        [e.type for e in promoted] == ["model_promoted"] and promoted[0].champion and promoted[0].version == 1
    )
    info = describe(engine, "digits-promoted@champion")
    assert (
        info["run_id"] == publisher.run_id
        and info["epoch"] == stop.best_epoch
        and info["metric"] == "val_loss"
    )
    assert info["value"] == pytest.approx(stop.best) and set(info["aliases"]) == {"champion", "latest"}
    assert info["sha256"] == hashlib.sha256((tmp_path / "best.keras").read_bytes()).hexdigest()
    assert info["data_fingerprint"] == fingerprint_data(x, y, (x_val, y_val)) and info[
        "data_fingerprint"
    ].startswith("sha256:")
    metadata = open_store(settings.model_store_url).get("digits-promoted", 1).metadata
    assert metadata["data_fingerprint"] == info["data_fingerprint"] and metadata["epoch"] == stop.best_epoch
    loaded = load_model("digits-promoted@champion", settings=settings)
    for got, best, restored in zip(
        loaded.get_weights(), weights_by_epoch[stop.best_epoch], model.get_weights()
    ):
        np.testing.assert_array_equal(got, best)
        np.testing.assert_array_equal(got, restored)
    last = weights_by_epoch[max(weights_by_epoch)]
    assert any(not np.array_equal(g, w) for g, w in zip(loaded.get_weights(), last)), (
        "not the last epoch's weights"
    )
    shown = json.loads(
        run_cli(
            "models",
            "show",
            "digits-promoted@champion",
            "--json",
            env_extra={**settings_env(settings), "FITSTREAM_MODEL_STORE": settings.model_store_url},
        ).stdout
    )
    for key in ("name", "version", "run_id", "epoch", "metric", "mode", "value", "path", "sha256", "aliases"):
        assert key in shown


def test_champion_moves_only_for_a_better_run_and_redelivery_registers_nothing(settings, engine, tmp_path):
    stream = EventStream(settings=settings)
    files = {}
    for seed, (run_id, value) in enumerate((("good", 0.30), ("worse", 0.50), ("better", 0.10))):
        path = tmp_path / f"{run_id}.keras"
        files[run_id] = (path, _keras_file(path, seed), value)
    with PromoterThread(settings, engine):
        for run_id, (path, sha, value) in files.items():
            _publish_run(stream, run_id, "ranker", path, sha, value)
            wait_for(lambda: _stream_types(settings, run_id), message=f"{run_id} promoted")
        assert describe(engine, "ranker@champion")["run_id"] == "better"
        # Redelivering (re-publishing) an early_stopped event registers nothing new.
        stream.publish(
            [
                ev.build(
                    ev.EarlyStopped,
                    run_id="worse",
                    seq=6,
                    stopped_epoch=5,
                    best_epoch=2,
                    best_value=0.5,
                    monitor="val_loss",
                    mode="min",
                )
            ]
        )
        wait_for(lambda: len(_stream_types(settings, "worse")) == 2, message="redelivery consumed")
    # The redelivery announces the same promotion again (a crash may have eaten the first), as the same event.
    first, again = _stream_types(settings, "worse")
    assert again.id == first.id and again.seq == first.seq and (again.version, again.champion) == (2, False)
    versions = list_versions(engine, "ranker")
    assert [(v["version"], v["run_id"]) for v in versions] == [(1, "good"), (2, "worse"), (3, "better")]
    champions = {v["run_id"]: v["aliases"] for v in versions}
    assert champions == {"good": [], "worse": [], "better": ["champion", "latest"]}
    worse_event = _stream_types(settings, "worse")[0]
    assert (
        worse_event.type == "model_promoted"
        and not worse_event.champion
        and worse_event.previous_champion_version == 1
    )
    assert open_store(settings.model_store_url).versions("ranker") == [1, 2, 3]


def test_a_changed_or_broken_checkpoint_is_refused_with_its_reason(settings, engine, tmp_path):
    stream = EventStream(settings=settings)
    changed = tmp_path / "changed.keras"
    sha = _keras_file(changed, 1)
    _keras_file(changed, 2)  # the file no longer matches its event
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    unloadable, unsafe = tmp_path / "unloadable.keras", tmp_path / "unsafe.keras"
    runs = ("changed", "broken", "missing", "unloadable", "unsafe")
    with PromoterThread(settings, engine):
        _publish_run(stream, "changed", "guarded", changed, sha, 0.2)
        _publish_run(stream, "broken", "guarded", broken, hashlib.sha256(b"not a zip").hexdigest(), 0.1)
        _publish_run(stream, "missing", "guarded", tmp_path / "nope.keras", "0" * 64, 0.1)
        # Right checksums, right structure — but Keras cannot (or, in safe mode, will not) load them.
        _publish_run(stream, "unloadable", "guarded", unloadable, _weights_only_zip(unloadable), 0.1)
        _publish_run(stream, "unsafe", "guarded", unsafe, _unsafe_keras_file(unsafe), 0.1)
        wait_for(lambda: all(_stream_types(settings, r) for r in runs), timeout=90, message="five refusals")
    reasons = {r: _stream_types(settings, r)[0] for r in runs}
    assert all(e.type == "promotion_skipped" for e in reasons.values())
    assert "checksum mismatch" in reasons["changed"].reason
    assert "not a Keras .keras file" in reasons["broken"].reason
    assert "checkpoint missing" in reasons["missing"].reason
    assert "unloadable.keras does not load in Keras with safe_mode=True" in reasons["unloadable"].reason
    assert "unsafe.keras does not load in Keras with safe_mode=True" in reasons["unsafe"].reason
    assert "Lambda" in reasons["unsafe"].reason and "arbitrary code execution" in reasons["unsafe"].reason
    assert list_versions(engine, "guarded") == []
    store = open_store(settings.model_store_url)
    assert store.versions("guarded") == [] and store.discard_staging("guarded") == 0


def test_promoter_killed_mid_copy_then_restarted_leaves_exactly_one_version(settings, engine, tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    stream = EventStream(settings=settings)
    stream.ensure_group("promoter")
    path = tmp_path / "ckpt.keras"
    sha = _keras_file(path, 3)
    _publish_run(stream, "crashy", "resilient", path, sha, 0.2)
    env = {
        **os.environ,
        **settings_env(settings),
        "FITSTREAM_MODEL_STORE": settings.model_store_url,
        "FITSTREAM_CLAIM_IDLE_MS": "1000",
        "FITSTREAM_LEADER_TTL_SECONDS": "1",
    }
    doomed = subprocess.run(
        [sys.executable, "-m", "tests.promoter_crash"], env=env, cwd=REPO, capture_output=True, timeout=120
    )
    assert doomed.returncode == -9, doomed.stderr[-2000:]
    store = open_store(settings.model_store_url)
    assert (
        store.versions("resilient") == [] and list_versions(engine, "resilient") == []
    )  # nothing partial is visible
    survivor = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli.main",
            "consume",
            "promoter",
            "--name",
            "survivor",
            "--exit-when-idle",
            "3",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert survivor.returncode == 0, survivor.stderr
    assert store.versions("resilient") == [1]
    assert [(v["version"], v["run_id"], v["sha256"]) for v in list_versions(engine, "resilient")] == [
        (1, "crashy", sha)
    ]
    assert (
        store.discard_staging("resilient") == 1
    )  # the dead copy's staging folder, never visible as a version


def test_failed_runs_are_not_promoted_unless_forced(settings, engine, tmp_path):
    from pipeline.promotion import PromotionRefusedError, promote_run

    stream = EventStream(settings=settings)
    stream.ensure_group("promoter")
    path = tmp_path / "f.keras"
    sha = _keras_file(path, 4)
    stream.publish(
        [
            ev.build(ev.RunStarted, run_id="f1", seq=0, name="careful"),
            ev.build(
                ev.CheckpointSaved,
                run_id="f1",
                seq=2,
                path=str(path),
                epoch=1,
                monitor="val_loss",
                value=0.3,
                sha256=sha,
            ),
            ev.build(ev.RunFinished, run_id="f1", seq=5, status="failed", epochs_completed=2),
        ]
    )
    with PromoterThread(settings, engine) as running:
        wait_for(
            lambda: stream.groups()[0]["lag"] == 0 and stream.groups()[0]["pending"] == 0,
            message="events consumed",
        )
    store = open_store(settings.model_store_url)
    with pytest.raises(PromotionRefusedError, match="ended failed; promote it anyway with --force"):
        promote_run(engine, store, "f1")
    # By hand, through the CLI (which loads the checkpoint with Keras in its helper process too).
    env = {**settings_env(settings), "FITSTREAM_MODEL_STORE": settings.model_store_url}
    refused = run_cli("promote", "f1", env_extra=env, check=False)
    assert refused.returncode == 1 and "ended failed; promote it anyway with --force" in " ".join(
        refused.stderr.split()
    )
    forced = run_cli("promote", "f1", "--force", "--alias", "audit", env_extra=env)
    assert "careful v1 registered and is the champion" in forced.stderr
    assert describe(engine, "careful@audit")["run_id"] == "f1" and store.versions("careful") == [1]
    assert running.loop.stats.batch_fallbacks == 0


def test_versions_left_unregistered_in_the_store_are_reused_by_their_run_or_skipped(
    settings, engine, tmp_path
):
    # A promoter that died between copying a version and registering it leaves it in the store only.
    from pipeline.promotion import promote_run

    stream = EventStream(settings=settings)
    stream.ensure_group("promoter")
    files = {}
    for seed, run_id in enumerate(("a", "b", "gone")):
        path = tmp_path / f"{run_id}.keras"
        files[run_id] = (path, _keras_file(path, seed))
        stream.publish(
            [
                ev.build(ev.RunStarted, run_id=run_id, seq=0, name="orphans"),
                ev.build(
                    ev.CheckpointSaved,
                    run_id=run_id,
                    seq=1,
                    path=str(path),
                    epoch=1,
                    monitor="val_loss",
                    value=0.5 - seed / 10,
                    sha256=files[run_id][1],
                ),
            ]
        )
    with PromoterThread(settings, engine):
        wait_for(
            lambda: stream.groups()[0]["lag"] == 0 and stream.groups()[0]["pending"] == 0,
            message="events consumed",
        )
    store = open_store(settings.model_store_url)
    store.put("orphans", 1, str(files["b"][0]), {"run_id": "b"})  # b's own, interrupted
    store.put("orphans", 2, str(files["gone"][0]), {"run_id": "gone"})  # somebody else's
    assert promote_run(engine, store, "b").version == 1  # its own copy, registered at last
    assert promote_run(engine, store, "a").version == 3  # past the unregistered v2, not refused
    assert [(v["version"], v["run_id"]) for v in list_versions(engine, "orphans")] == [(1, "b"), (3, "a")]


def test_a_starting_promoter_clears_day_old_partial_copies_only(settings, engine):
    import os
    import time

    store = open_store(settings.model_store_url)
    for name, age_s in (("digits", 86400), ("digits", 0), ("other", 86400)):
        folder = f"{store.root}/{name}/.staging-{name}-{age_s}"
        os.makedirs(folder)
        (open(f"{folder}/model.keras", "wb")).close()
        os.utime(folder, (time.time() - age_s, time.time() - age_s))
    Promoter(engine, store)
    left = sorted(entry for name in ("digits", "other") for entry in os.listdir(f"{store.root}/{name}"))
    assert left == [".staging-digits-0"]  # a young one may be a copy in progress


def test_promotions_of_one_model_take_turns_across_processes(settings, engine, tmp_path):
    # Two promoters (say, the consumer and `fitstream promote` by hand) promoting runs of one model at
    # once: each picks and takes its version number under the model's lock, so they take turns.
    import time

    from pipeline.promotion import promote_run
    from pipeline.store.fs import FsspecModelStore

    class WatchedStore(FsspecModelStore):
        """An in-memory object store that records when each put runs (and makes each last a while)."""

        def __init__(self, url):
            super().__init__(url)
            self.spans: list[tuple[float, float]] = []

        def put(self, *args, **kwargs):
            started = time.monotonic()
            time.sleep(0.3)
            try:
                return super().put(*args, **kwargs)
            finally:
                self.spans.append((started, time.monotonic()))

    stream = EventStream(settings=settings)
    stream.ensure_group("promoter")
    for seed, run_id in enumerate(("t1", "t2", "t3")):
        path = tmp_path / f"{run_id}.keras"
        stream.publish(
            [
                ev.build(ev.RunStarted, run_id=run_id, seq=0, name="turns"),
                ev.build(
                    ev.CheckpointSaved,
                    run_id=run_id,
                    seq=1,
                    path=str(path),
                    epoch=1,
                    monitor="val_loss",
                    value=0.5,
                    sha256=_keras_file(path, seed),
                ),
            ]
        )
    with PromoterThread(settings, engine):
        wait_for(
            lambda: stream.groups()[0]["lag"] == 0 and stream.groups()[0]["pending"] == 0,
            message="events consumed",
        )
    store = WatchedStore(f"memory://turns-{stream.stream}")
    results = {}
    threads = [
        threading.Thread(
            target=lambda r=run_id: results.__setitem__(
                r, promote_run(engine, store, r, locks=PromotionLocks(stream.client, stream.stream))
            )
        )
        for run_id in ("t1", "t2", "t3")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(r.version for r in results.values()) == [1, 2, 3]
    spans = sorted(store.spans)
    assert all(earlier[1] <= later[0] for earlier, later in zip(spans, spans[1:])), (
        f"puts overlapped: {spans}"
    )
    assert sorted((v["version"], v["run_id"]) for v in list_versions(engine, "turns")) == sorted(
        (r.version, k) for k, r in results.items()
    )


def test_promote_settings_of_the_wrong_shape_in_a_forged_run_queued_fall_back_to_the_defaults():
    from pipeline.consumers.promoter import _promote_settings
    from pipeline.jobs import PromoteSettings

    defaults = PromoteSettings().model_dump()
    for forged in (["not", "a", "mapping"], {"name": 7}, {"on_early_stop": "sometimes"}, "promote me"):
        event = ev.build(
            ev.RunQueued, run_id="forged", seq=0, name="forged", queue="gpu", spec={"promote": forged}
        )
        assert _promote_settings(event) == defaults, forged
    kept = ev.build(
        ev.RunQueued,
        run_id="ok",
        seq=0,
        name="ok",
        queue="gpu",
        spec={"promote": {"on_complete": True, "name": "m"}},
    )
    assert _promote_settings(kept) == {**defaults, "on_complete": True, "name": "m"}


def test_load_model_loads_with_safe_mode_even_what_was_promoted_without_the_load_check(
    settings, engine, tmp_path
):
    from pipeline.consumers.promoter import Promoter

    stream = EventStream(settings=settings)
    stream.ensure_group("promoter")
    unsafe = tmp_path / "lambda.keras"
    _publish_run(stream, "lambda-run", "lenient", unsafe, _unsafe_keras_file(unsafe), 0.1)
    store = open_store(settings.model_store_url)
    # A promoter run without its Keras load check (FITSTREAM_PROMOTER_LOAD_CHECK=false) registers it…
    promoter = Promoter(
        engine,
        store,
        publish=stream.publish,
        load_check=None,
        locks=PromotionLocks(stream.client, stream.stream),
    )
    loop = ConsumerLoop(promoter, stream, consumer_name="lenient")
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: list_versions(engine, "lenient"), timeout=60, message="the unchecked version registered"
        )
    finally:
        loop.stop_event.set()
        thread.join(timeout=30)
    # …but loading it never runs its Lambda: safe_mode refuses.
    with pytest.raises(ValueError, match="arbitrary code execution"):
        load_model("lenient@champion", settings=settings)
