"""Issue 11, "Promotion": what the README's "Promote models" section promises, each checked against
real services — a real worker for job specs, the real promoter consuming the real Redis stream,
real SQL, real Keras files and the real ``fitstream`` CLI.

- ``promote: {on_complete, on_early_stop, name, force}`` in a job spec, submitted to a real worker;
- a cancelled run, and a store that is not writable or full: ``promotion_skipped`` published by
  the promoter itself, with the reason; nothing partial registered; the promoter goes on;
- ``load_model`` refusing a stored file whose sha256 no longer matches;
- refs ``NAME@3``, ``NAME@ALIAS`` and bare ``NAME`` (= ``@latest``); ``fitstream models NAME`` and
  ``fitstream alias``;
- the lineage metadata (spec hash, source, created time, data fingerprint) checked for its values.
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
from datetime import datetime, timezone

import keras
import numpy as np
import pytest
import redis

from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.jobs import load_spec, load_spec_text
from pipeline.model_registry import describe, list_versions, load_model
from pipeline.store import ChecksumMismatchError, open_store
from tests.conftest import run_cli, settings_env, wait_for
from tests.test_promotion import PromoterThread, _keras_file

SQLITE_ONLY = "the database plays no part in this promise; checked once, on SQLite"


def RunningPromoter(settings, engine, store, *, load_check: bool = False) -> PromoterThread:
    """The real Promoter on a store of the test's choosing (the load check off unless asked)."""
    return PromoterThread(settings, engine, store, load_check=load_check, name="promises-promoter")


def _outcomes(settings, run_id):
    """The promoter's announcements about ``run_id`` (model_promoted, promotion_skipped), in order."""
    client = redis.Redis.from_url(settings.redis_url)
    return [
        e
        for e in (ev.decode(f) for _i, f in client.xrange(settings.stream))
        if e.run_id == run_id and e.type in ("model_promoted", "promotion_skipped")
    ]


def _outcome(settings, run_id, timeout=60):
    wait_for(lambda: _outcomes(settings, run_id), timeout=timeout, message=f"the promoter's word on {run_id}")
    return _outcomes(settings, run_id)


def _drained(stream: EventStream, group: str = "promoter") -> bool:
    """Every event in the stream was delivered to ``group`` and acknowledged."""
    found = [g for g in stream.groups() if g["name"] == group]
    return bool(found) and found[0]["lag"] == 0 and found[0]["pending"] == 0


def _run_events(
    run_id,
    name,
    path,
    sha,
    value,
    *,
    source="model_checkpoint",
    trigger=True,
    finished=None,
    spec=None,
    data_fingerprint=None,
):
    """What a run publishes: (run_queued), run_started, one checkpoint, (early_stopped), (run_finished)."""
    events = []
    if spec is not None:
        events.append(
            ev.build(ev.RunQueued, run_id=run_id, seq=ev.QUEUED_SEQ, name=name, queue="cpu", spec=spec)
        )
    events += [
        ev.build(ev.RunStarted, run_id=run_id, seq=1_000_000, name=name, data_fingerprint=data_fingerprint),
        ev.build(
            ev.CheckpointSaved,
            run_id=run_id,
            seq=1_000_003,
            path=str(path),
            epoch=2,
            monitor="val_loss",
            mode="min",
            value=value,
            sha256=sha,
            source=source,
        ),
    ]
    if trigger:
        events.append(
            ev.build(
                ev.EarlyStopped,
                run_id=run_id,
                seq=1_000_006,
                stopped_epoch=5,
                best_epoch=2,
                best_value=value,
                monitor="val_loss",
                mode="min",
            )
        )
    if finished is not None:
        events.append(
            ev.build(ev.RunFinished, run_id=run_id, seq=1_000_007, status=finished, epochs_completed=6)
        )
    return events


def _in_window(stamp, started: datetime, ended: datetime) -> bool:
    if isinstance(stamp, str):
        stamp = datetime.fromisoformat(stamp)
    if stamp.tzinfo is None:  # SQLite keeps no zone: the registry writes UTC
        stamp = stamp.replace(tzinfo=timezone.utc)
    return started <= stamp <= ended


# -- promote: settings from a job spec, through a real worker ------------------------------------


def _job(
    tmp_path,
    name,
    *,
    promote,
    epochs,
    early_stopping="{monitor: val_loss, patience: 50}",
    model="tests.job_fixtures:small_model",
):
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\n"
        f"model: {model}\n"
        "data: tests.job_fixtures:slow_data\n"
        f"fit: {{epochs: {epochs}, batch_size: 32, verbose: 0}}\n"
        f"early_stopping: {early_stopping}\n"
        "checkpoint: {monitor: val_loss}\n"
        f"promote: {promote}\n"
    )
    return path


def _submit(path, queue, env, *args):
    return json.loads(run_cli("submit", str(path), "--queue", queue, "--json", *args, env_extra=env).stdout)


def _spec_hash(path) -> str:
    """The spec hash as the registry defines it: sha256 of the submitted spec (as `fitstream submit` puts it
    into run_queued: the validated spec, JSON, aliases as written), serialised with sorted keys."""
    submitted = load_spec(path).model_dump(mode="json", by_alias=True)
    return hashlib.sha256(json.dumps(submitted, sort_keys=True).encode()).hexdigest()


@pytest.mark.slow
def test_promote_settings_of_a_job_spec_are_obeyed_on_a_real_worker(
    settings,
    engine,
    job_env,
    queue_name,
    start_worker,
    tmp_path,
    database_url,
):
    if database_url.startswith("postgresql"):
        pytest.skip("the settings travel in run_queued and the promoter's own table; checked once, on SQLite")
    first = _job(
        tmp_path,
        "promises-first",
        epochs=4,
        promote="{on_complete: true, on_early_stop: false, name: promises-model}",
    )
    # Barely trained (learning rate 1e-6, one epoch): worse than the first, champion only by force.
    worse = _job(
        tmp_path,
        "promises-worse",
        epochs=1,
        model="{fn: 'tests.job_fixtures:small_model', kwargs: {learning_rate: 0.000001}}",
        promote="{on_complete: true, on_early_stop: false, name: promises-model, force: true}",
    )
    # EarlyStopping fires at epoch 1 (no epoch beats the first by 100), but the job says: not on early stop.
    stops = _job(
        tmp_path,
        "promises-stops",
        epochs=6,
        promote="{on_early_stop: false}",
        early_stopping="{monitor: val_loss, patience: 0, min_delta: 100}",
    )
    start_worker()
    stream = EventStream(settings=settings)
    started = datetime.now(timezone.utc)
    with PromoterThread(settings, engine):
        first_run = _submit(first, queue_name, job_env, "--wait", "--timeout", "180")
        assert first_run["status"] == "completed"
        [promoted] = _outcome(settings, first_run["run_id"], timeout=90)
        # Only now the next jobs: the promoter must see the first promotion before the forced one.
        stopped_run = _submit(stops, queue_name, job_env)
        worse_run = _submit(worse, queue_name, job_env)
        [forced] = _outcome(settings, worse_run["run_id"], timeout=180)
        finished = wait_for(
            lambda: next(
                (e for e in _run_events_of(settings, stopped_run["run_id"]) if e.type == "run_finished"), None
            ),
            timeout=180,
            message="the stopped job",
        )
        wait_for(lambda: _drained(stream), timeout=60, message="the promoter to consume everything")
    ended = datetime.now(timezone.utc)

    # on_complete + name: the completed run became a version of the name the spec gave, not of the job's.
    assert promoted.type == "model_promoted", promoted
    assert (promoted.name, promoted.version, promoted.champion) == ("promises-model", 1, True)
    assert list_versions(engine, "promises-first") == []
    # force: the worse run took champion from the better one.
    assert forced.type == "model_promoted", forced
    assert (forced.name, forced.version, forced.champion) == ("promises-model", 2, True)
    assert forced.previous_champion_version == 1
    v1, v2 = describe(engine, "promises-model@1"), describe(engine, "promises-model@2")
    assert v2["value"] > v1["value"], "the second job was meant to be worse: force is what moved champion"
    assert describe(engine, "promises-model@champion")["version"] == 2
    # on_early_stop: false — EarlyStopping fired, the run ended early_stopped, and nothing was promoted.
    assert finished.status == "early_stopped"
    assert any(e.type == "early_stopped" for e in _run_events_of(settings, stopped_run["run_id"]))
    assert _outcomes(settings, stopped_run["run_id"]) == []
    assert list_versions(engine, "promises-stops") == []
    assert open_store(settings.model_store_url).versions("promises-stops") == []

    # Lineage, by value: the epoch and val_loss ModelCheckpoint kept (Keras' own CSV log), the spec hash
    # of the submitted spec, the checkpoint file, and a creation time inside this test.
    run_dir = settings.home / "runs" / first_run["run_id"]
    with open(run_dir / "history.csv") as handle:
        val_losses = [float(row["val_loss"]) for row in csv.DictReader(handle)]
    assert len(val_losses) == 4
    best_epoch = val_losses.index(min(val_losses))
    assert v1["epoch"] == best_epoch and v1["value"] == pytest.approx(min(val_losses), rel=1e-6)
    assert v1["spec_hash"] == _spec_hash(first) and v2["spec_hash"] == _spec_hash(worse)
    assert v1["spec_hash"] != v2["spec_hash"]
    assert v1["source"] == "model_checkpoint" and v1["source_path"] == str(
        run_dir / "checkpoints" / "best.keras"
    )
    assert _in_window(v1["created_at"], started, ended) and _in_window(v2["created_at"], started, ended)
    metadata = open_store(settings.model_store_url).get("promises-model", 1).metadata
    assert (metadata["spec_hash"], metadata["source"], metadata["epoch"], metadata["run_id"]) == (
        _spec_hash(first),
        "model_checkpoint",
        best_epoch,
        first_run["run_id"],
    )
    assert _in_window(metadata["created_at"], started, ended)


def _run_events_of(settings, run_id):
    client = redis.Redis.from_url(settings.redis_url)
    return [e for e in (ev.decode(f) for _i, f in client.xrange(settings.stream)) if e.run_id == run_id]


# -- refusals turned into promotion_skipped by the promoter itself -------------------------------


def test_a_cancelled_run_is_skipped_by_the_promoter_unless_its_job_forces_it(settings, engine, tmp_path):
    stream = EventStream(settings=settings)
    stream.ensure_group("promoter")
    plain, forced = tmp_path / "plain.keras", tmp_path / "forced.keras"
    forcing_spec = load_spec_text(
        "name: cancelled-model\nmodel: examples.digits:build_model\n"
        "data: examples.digits:load_data\npromote: {force: true}\n"
    )
    # EarlyStopping fired, then the run was cancelled (say, while it saved the restored model): the promoter
    # reads both in one batch, so it knows the run ended cancelled when it acts on early_stopped.
    stream.publish(
        _run_events("cancelled", "cancelled-model", plain, _keras_file(plain, 1), 0.1, finished="cancelled")
        + _run_events(
            "cancelled-forced",
            "cancelled-model",
            forced,
            _keras_file(forced, 2),
            0.2,
            finished="cancelled",
            spec=forcing_spec.model_dump(mode="json", by_alias=True),
        )
        # A sweep trial the pruner stopped is refused the same way (issue 12).
        + _run_events(
            "pruned",
            "cancelled-model",
            tmp_path / "pruned.keras",
            _keras_file(tmp_path / "pruned.keras", 3),
            0.05,
            finished="pruned",
        )
    )
    with RunningPromoter(settings, engine, open_store(settings.model_store_url)) as running:
        [skipped] = _outcome(settings, "cancelled")
        [promoted] = _outcome(settings, "cancelled-forced")
        [pruned] = _outcome(settings, "pruned")
        wait_for(lambda: _drained(stream), message="the promoter to consume everything")
    assert skipped.type == "promotion_skipped"
    assert "run cancelled ended cancelled; promote it anyway with --force" in skipped.reason
    assert (
        pruned.type == "promotion_skipped"
        and "run pruned ended pruned; promote it anyway with --force" in pruned.reason
    )
    # The job's `promote: {force: true}` is the "unless the job says otherwise".
    assert promoted.type == "model_promoted" and (promoted.name, promoted.version) == ("cancelled-model", 1)
    registered = [(v["version"], v["run_id"]) for v in list_versions(engine, "cancelled-model")]
    assert registered == [(1, "cancelled-forced")]
    store = open_store(settings.model_store_url)
    assert store.versions("cancelled-model") == [1] and store.discard_staging("cancelled-model") == 0
    assert running.loop.stats.dead_lettered == 0


def test_a_store_that_is_not_writable_is_skipped_and_the_promoter_goes_on(
    settings, engine, tmp_path, database_url
):
    if database_url.startswith("postgresql"):
        pytest.skip(SQLITE_ONLY)
    # Its parent is a regular file: no directory can be made there, whoever the test runs as (root too).
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the store's parent directory should be")
    store_url = str(blocker / "store")
    stream = EventStream(settings=settings)
    stream.ensure_group("promoter")
    first, second = tmp_path / "first.keras", tmp_path / "second.keras"
    first_sha, second_sha = _keras_file(first, 1), _keras_file(second, 2)
    with RunningPromoter(settings, engine, open_store(store_url), load_check=True) as running:
        stream.publish(_run_events("blocked", "unwritable", first, first_sha, 0.2))
        [skipped] = _outcome(settings, "blocked")
        assert skipped.type == "promotion_skipped", skipped
        assert f"cannot write to the model store {store_url}: Not a directory" in skipped.reason
        assert list_versions(engine, "unwritable") == []
        # The cause is fixed; the same promoter, still running, promotes the next run.
        blocker.unlink()
        stream.publish(_run_events("after", "unwritable", second, second_sha, 0.3))
        [promoted] = _outcome(settings, "after")
        assert running.loop.stats.dead_lettered == 0
    assert promoted.type == "model_promoted" and promoted.version == 1
    # And the refused run, by hand, through the same code path (README: "Once the cause is fixed …").
    env = {
        **settings_env(settings),
        "FITSTREAM_MODEL_STORE": store_url,
        "FITSTREAM_PROMOTER_LOAD_CHECK": "false",
    }
    assert "unwritable v2 registered" in run_cli("promote", "blocked", env_extra=env).stderr
    assert [(v["version"], v["run_id"], v["sha256"]) for v in list_versions(engine, "unwritable")] == [
        (1, "after", second_sha),
        (2, "blocked", first_sha),
    ]
    assert open_store(store_url).versions("unwritable") == [1, 2]


@pytest.fixture
def small_disk(tmp_path):
    """A 20 MB tmpfs of the test's own (CI runs as root, which may mount)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (CI runs as root and can): {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def _big_keras_file(path, size_bytes: int) -> str:
    """A zip shaped like a .keras file (config.json, weights) of about ``size_bytes`` random bytes."""
    import os
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {}}))
        archive.writestr("model.weights.h5", os.urandom(size_bytes))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_full_store_is_skipped_leaving_nothing_and_the_promoter_goes_on(
    settings,
    engine,
    tmp_path,
    small_disk,
    database_url,
):
    if database_url.startswith("postgresql"):
        pytest.skip(SQLITE_ONLY)
    stream = EventStream(settings=settings)
    stream.ensure_group("promoter")
    big, small = tmp_path / "big.keras", tmp_path / "small.keras"
    big_sha = _big_keras_file(big, 6 << 20)  # 6 MB + the 16 MB margin do not fit in 20 MB
    small_sha = _keras_file(small, 3)
    store = open_store(str(small_disk / "store"))
    with RunningPromoter(settings, engine, store) as running:
        stream.publish(_run_events("too-big", "crowded", big, big_sha, 0.1))
        [skipped] = _outcome(settings, "too-big")
        stream.publish(_run_events("fits", "crowded", small, small_sha, 0.2))
        [promoted] = _outcome(settings, "fits")
        assert running.loop.stats.dead_lettered == 0
    assert skipped.type == "promotion_skipped", skipped
    assert f"the model store {small_disk / 'store'} is full: the model needs 6.3 MB" in skipped.reason
    assert "free some space or point FITSTREAM_MODEL_STORE elsewhere" in skipped.reason
    assert promoted.type == "model_promoted" and promoted.version == 1
    assert [(v["version"], v["run_id"]) for v in list_versions(engine, "crowded")] == [(1, "fits")]
    assert sorted(p.name for p in (small_disk / "store" / "crowded").iterdir()) == ["v1"]  # no staging left


# -- reading the registry: refs, the CLI, load_model's checksum, lineage values -----------------


def _weights(path):
    return keras.saving.load_model(str(path), safe_mode=True).get_weights()


def _same_weights(got, expected):
    return len(got) == len(expected) and all(np.array_equal(a, b) for a, b in zip(got, expected))


def test_refs_cli_lineage_and_a_changed_stored_file(settings, engine, tmp_path):
    stream = EventStream(settings=settings)
    stream.ensure_group("promoter")
    spec = load_spec_text(
        "name: refs\nmodel: examples.digits:build_model\ndata: examples.digits:load_data\nfit: {epochs: 3}\n"
    ).model_dump(mode="json", by_alias=True)
    fingerprint = "sha256:" + "ab" * 32
    files = {}
    for seed, run_id in enumerate(("r1", "r2", "r3")):
        path = tmp_path / f"{run_id}.keras"
        files[run_id] = (path, _keras_file(path, seed))
    started = datetime.now(timezone.utc)
    with RunningPromoter(settings, engine, open_store(settings.model_store_url), load_check=True):
        # v1, then a better v2 (champion), then a worse v3 — from the model EarlyStopping restored (latest only).
        for run_id, value, extra in (
            ("r1", 0.3, {"spec": spec, "data_fingerprint": fingerprint}),
            ("r2", 0.1, {}),
            ("r3", 0.5, {"source": "early_stopping_restore"}),
        ):
            stream.publish(_run_events(run_id, "refs", *files[run_id], value, **extra))
            [outcome] = _outcome(settings, run_id)
            assert outcome.type == "model_promoted", outcome
    ended = datetime.now(timezone.utc)
    env = {**settings_env(settings), "FITSTREAM_MODEL_STORE": settings.model_store_url}

    listed = json.loads(run_cli("models", "refs", "--json", env_extra=env).stdout)
    assert [(r["version"], r["run_id"], r["aliases"]) for r in listed] == [
        (1, "r1", []),
        (2, "r2", ["champion"]),
        (3, "r3", ["latest"]),
    ]

    # NAME@3, NAME@ALIAS, and a bare NAME (= NAME@latest), in the registry, the CLI and load_model alike.
    for ref, version in (("refs@3", 3), ("refs@champion", 2), ("refs@latest", 3), ("refs", 3), ("refs@1", 1)):
        assert describe(engine, ref)["version"] == version, ref
    shown = json.loads(run_cli("models", "show", "refs", "--json", env_extra=env).stdout)
    assert (shown["version"], shown["run_id"], shown["aliases"]) == (3, "r3", ["latest"])
    for ref, run_id in (("refs@3", "r3"), ("refs@champion", "r2"), ("refs", "r3")):
        assert _same_weights(load_model(ref, settings=settings).get_weights(), _weights(files[run_id][0])), (
            ref
        )

    # fitstream alias: a new alias, and champion moved by hand (one champion at a time).
    assert "refs@production → v1" in run_cli("alias", "refs", "1", "production", env_extra=env).stderr
    run_cli("alias", "refs", "3", "champion", env_extra=env)
    assert [r["aliases"] for r in list_versions(engine, "refs")] == [
        ["production"],
        [],
        ["champion", "latest"],
    ]
    assert _same_weights(
        load_model("refs@production", settings=settings).get_weights(), _weights(files["r1"][0])
    )
    missing = run_cli("alias", "refs", "7", "production", env_extra=env, check=False)
    assert missing.returncode == 1 and "model 'refs' has no version 7" in missing.stderr
    assert describe(engine, "refs@production")["version"] == 1

    # Lineage values: the spec hash of the run's run_queued spec, the fingerprint of run_started, where the
    # file came from, and a creation time within this test — in SQL and in the store's metadata.json alike.
    store = open_store(settings.model_store_url)
    expected_hash = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    for version, run_id, source, spec_hash, data_fingerprint in (
        (1, "r1", "model_checkpoint", expected_hash, fingerprint),
        (3, "r3", "early_stopping_restore", None, None),
    ):
        row, metadata = describe(engine, f"refs@{version}"), store.get("refs", version).metadata
        for record in (row, metadata):
            assert (record["run_id"], record["source"], record["spec_hash"], record["data_fingerprint"]) == (
                run_id,
                source,
                spec_hash,
                data_fingerprint,
            )
            assert record["source_path"] == str(files[run_id][0]) and record["sha256"] == files[run_id][1]
            assert (record["epoch"], record["metric"], record["mode"]) == (2, "val_loss", "min")
            assert _in_window(record["created_at"], started, ended)

    # A stored file that no longer matches its registered sha256 is refused, saying which and what to do.
    stored_file = settings.home / "model-store" / "refs" / "v2" / "model.keras"
    assert store.get("refs", 2).uri == f"file://{stored_file}"
    stored_file.write_bytes(files["r1"][0].read_bytes())  # a valid model, just not the one registered
    with pytest.raises(ChecksumMismatchError) as refused:
        load_model("refs@2", settings=settings)
    assert str(refused.value) == (
        f"refs@2: file://{stored_file} has sha256 {files['r1'][1][:12]}…, but refs v2 was registered with "
        f"{files['r2'][1][:12]}… (the stored file changed after it was promoted); refusing to load it. Put the "
        "registered file back, or point the alias at another version: fitstream alias refs VERSION ALIAS"
    )
    # The other versions still load.
    assert _same_weights(load_model("refs@1", settings=settings).get_weights(), _weights(files["r1"][0]))
