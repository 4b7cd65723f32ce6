"""What the everyday commands print (issue 11): `submit` plain and `--json`, `status` queue
lengths for the queues jobs wait in, `runs`/`show` tables, the alerter refusing to start without
its rules, and the demo leaving no process behind."""

from __future__ import annotations

import json
import re

import keras  # at import time, not inside a test: TensorFlow's import recurses deeply (see tests/conftest.py)
import pytest
import redis
import sqlalchemy as sa

from pipeline import EventPublisher
from tests.conftest import run_cli, settings_env, wait_for
from tests.test_workers import _spec
from tests.training_helpers import small_digits, small_model

pytestmark = pytest.mark.slow


def test_submit_prints_the_run_id_and_status_counts_the_jobs_waiting_in_its_queue(
    job_env, queue_name, tmp_path, database_url
):
    if database_url.startswith("postgresql"):
        pytest.skip("submit and status read Redis only; checked once, on SQLite")
    plain = run_cli("submit", _spec(tmp_path, "plain", epochs=1), "--queue", queue_name, env_extra=job_env)
    assert re.fullmatch(r"[0-9a-f]{32}\n", plain.stdout), plain.stdout
    assert f"fitstream watch {plain.stdout.strip()}" in plain.stderr
    as_json = json.loads(
        run_cli(
            "submit", _spec(tmp_path, "json", epochs=1), "--queue", queue_name, "--json", env_extra=job_env
        ).stdout
    )
    assert as_json["queue"] == queue_name and re.fullmatch(r"[0-9a-f]{32}", as_json["run_id"])
    status = json.loads(run_cli("status", "--json", env_extra=job_env).stdout)
    waiting = {q["queue"]: q["waiting"] for q in status["queues"]}
    assert waiting[queue_name] == 2, status["queues"]  # no worker: both jobs wait
    assert {"gpu", "cpu"} <= set(waiting)
    human = run_cli("status", env_extra=job_env)
    assert re.search(rf"{re.escape(queue_name)}\D+2\b", human.stdout + human.stderr), human.stdout
    redis.Redis.from_url(job_env["FITSTREAM_REDIS_URL"]).delete(queue_name)  # leave no waiting job behind


def test_the_alerter_refuses_to_start_without_its_rules(settings, engine, job_env, database_url):
    if database_url.startswith("postgresql"):
        pytest.skip("a missing setting does not depend on the database; checked once, on SQLite")
    refused = run_cli("consume", "alerter", env_extra={**job_env, "FITSTREAM_ALERT_RULES": ""}, check=False)
    assert refused.returncode in (1, 2) and "FITSTREAM_ALERT_RULES" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr


def test_runs_and_show_report_the_recorded_values(settings, engine, recorder):
    (x, y), (x_val, y_val) = small_digits(300)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=1, min_delta=5.0)
    publisher = EventPublisher(name="shown", watch=[stop], settings=settings)
    small_model().fit(
        x, y, validation_data=(x_val, y_val), epochs=6, batch_size=64, verbose=0, callbacks=[stop, publisher]
    )
    run_id = publisher.run_id

    def status() -> str | None:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT status FROM runs WHERE run_id = :r"), {"r": run_id}).scalar()

    wait_for(lambda: status() == "early_stopped", message="the run recorded")
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM runs WHERE run_id = :r"), {"r": run_id}).mappings().one()
    env = settings_env(settings)
    listed = {r["run_id"]: r for r in json.loads(run_cli("runs", "--json", env_extra=env).stdout)}[run_id]
    for key in ("name", "status", "epochs_completed", "best_epoch", "stopped_epoch", "monitor"):
        assert listed[key] == row[key], key
    assert listed["best_value"] == pytest.approx(row["best_value"]) and (
        row["status"],
        row["stopped_epoch"],
    ) == ("early_stopped", 1)
    table = run_cli("runs", env_extra=env).stdout
    assert run_id[:8] in table and "early_stopped" in table and "shown" in table
    shown = json.loads(run_cli("show", run_id[:10], "--json", env_extra=env).stdout)
    assert shown["run_id"] == run_id and [e["epoch"] for e in shown["epochs"]] == [0, 1]
    with engine.connect() as conn:
        val_loss = dict(
            conn.execute(
                sa.text("SELECT epoch, value FROM epoch_metrics WHERE run_id = :r AND name = 'val_loss'"),
                {"r": run_id},
            ).all()
        )
    assert [e["metrics"]["val_loss"] for e in shown["epochs"]] == [val_loss[0], val_loss[1]]
    human = run_cli("show", run_id[:10], env_extra=env).stdout
    assert run_id in human and "early_stopped" in human and "val_loss" in human


def test_watch_shows_a_live_run_epoch_by_epoch_to_its_outcome(
    settings, engine, job_env, queue_name, start_worker, tmp_path, database_url
):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    if database_url.startswith("postgresql"):
        pytest.skip("watch reads Redis only; checked once, on SQLite")
    spec = tmp_path / "live.yaml"
    spec.write_text(
        "name: live\nmodel: tests.job_fixtures:small_model\ndata: tests.job_fixtures:slow_data\n"
        "fit: {epochs: 6, batch_size: 64}\n"
        "early_stopping: {monitor: val_loss, patience: 1, min_delta: 10.0}\ncheckpoint: {monitor: val_loss}\n"
    )
    run_id = json.loads(
        run_cli("submit", str(spec), "--queue", queue_name, "--json", env_extra=job_env).stdout
    )["run_id"]
    watching = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.main", "watch", run_id, "--timeout", "180"],
        env={**os.environ, **job_env},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    start_worker()  # the run starts while watch is already following it
    out, err = watching.communicate(timeout=240)
    assert watching.returncode == 0, err
    lines = out.splitlines()
    assert any(line.startswith("queued on") for line in lines) and any(
        line.startswith("started on") for line in lines
    )
    epochs = [line for line in lines if re.match(r"epoch +\d+ ", line)]
    assert [int(line.split()[1]) for line in epochs] == [0, 1] and all("val_loss=" in line for line in epochs)
    assert any("checkpoint saved:" in line and "best.keras (val_loss=" in line for line in lines)
    assert any(
        re.match(r"early stopping at epoch 1: best val_loss=[\d.]+ at epoch 0", line) for line in lines
    ), out
    assert "finished: early_stopped after 2 epochs" in out
