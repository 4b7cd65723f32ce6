"""Queued jobs on real Celery worker processes against the real Redis, recorded in SQL."""

from __future__ import annotations

import csv
import json
import time

import pytest
import redis
import sqlalchemy as sa

from pipeline import events as ev
from tests.conftest import RecorderThread, run_cli, wait_for

pytestmark = pytest.mark.slow


def _spec(
    tmp_path,
    name: str,
    *,
    epochs: int = 6,
    patience: int = 50,
    slow: float = 0.0,
    data: str = "tests.job_fixtures:slow_data",
    extra: str = "",
) -> str:
    callbacks = (
        f"callbacks: [{{class: 'tests.job_fixtures:SlowDown', kwargs: {{seconds: {slow}}}}}]\n"
        if slow
        else ""
    )
    text = (
        f"name: {name}\n"
        "model: tests.job_fixtures:small_model\n"
        f"data: {data}\n"
        f"fit: {{epochs: {epochs}, batch_size: 32, verbose: 0}}\n"
        f"early_stopping: {{monitor: val_loss, patience: {patience}}}\n"
        "checkpoint: {monitor: val_loss}\n"
        f"{callbacks}{extra}"
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def _submit(path: str, queue: str, env: dict, *args: str) -> dict:
    return json.loads(run_cli("submit", path, "--queue", queue, "--json", *args, env_extra=env).stdout)


def _run_row(engine, run_id):
    with engine.connect() as conn:
        return (
            conn.execute(sa.text("SELECT * FROM runs WHERE run_id = :r"), {"r": run_id})
            .mappings()
            .one_or_none()
        )


def _stream_events(settings, run_id):
    client = redis.Redis.from_url(settings.redis_url)
    return [e for e in (ev.decode(f) for _i, f in client.xrange(settings.stream)) if e.run_id == run_id]


def test_submitted_job_runs_on_a_real_worker_and_sql_matches(
    settings, engine, job_env, queue_name, start_worker, tmp_path
):
    start_worker()
    with RecorderThread(settings, engine):
        result = _submit(
            _spec(tmp_path, "digits-queued", epochs=5), queue_name, job_env, "--wait", "--timeout", "180"
        )
        assert result["status"] == "completed" and len(result["run_id"]) == 32
        run = wait_for(
            lambda: (
                (r := _run_row(engine, result["run_id"])) is not None and r["status"] == "completed" and r
            ),
            message="recorded run",
        )
    assert run["name"] == "digits-queued" and run["queue"] == queue_name and run["epochs_completed"] == 5
    assert run["queued_at"] is not None and run["started_at"] >= run["queued_at"]
    # The worker fingerprints the data the job's data function returned.
    from pipeline.fingerprint import fingerprint_data
    from tests.job_fixtures import slow_data

    (x, y), validation = slow_data()
    assert run["data_fingerprint"] == fingerprint_data(x, y, validation) and run[
        "data_fingerprint"
    ].startswith("sha256:")
    # The run's own CSVLogger (Keras' values) and the SQL history agree value for value.
    run_dir = settings.home / "runs" / result["run_id"]
    with open(run_dir / "history.csv") as handle:
        logged = list(csv.DictReader(handle))
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT epoch, name, value FROM epoch_metrics WHERE run_id = :r"), {"r": result["run_id"]}
        ).all()
    sql = {(e, n): v for e, n, v in rows}
    assert len(logged) == 5
    for row in logged:
        for name, value in row.items():
            if name != "epoch":
                assert sql[(int(row["epoch"]), name)] == pytest.approx(float(value), rel=1e-6)
    assert (run_dir / "checkpoints" / "best.keras").exists()


def test_failing_job_is_recorded_and_the_worker_takes_the_next(
    settings, engine, job_env, queue_name, start_worker, tmp_path
):
    start_worker()
    with RecorderThread(settings, engine):
        bad = _submit(_spec(tmp_path, "broken", data="tests.job_fixtures:broken_data"), queue_name, job_env)
        good = _submit(
            _spec(tmp_path, "after-broken", epochs=2), queue_name, job_env, "--wait", "--timeout", "180"
        )
        assert good["status"] == "completed"
        failed = wait_for(
            lambda: (r := _run_row(engine, bad["run_id"])) is not None and r["status"] == "failed" and r,
            message="failed run",
        )
    assert failed["error_type"] == "RuntimeError" and failed["error_message"] == "the data bucket is empty"


def test_cancel_running_and_queued_jobs(settings, engine, job_env, queue_name, start_worker, tmp_path):
    start_worker()
    with RecorderThread(settings, engine):
        long_run = _submit(_spec(tmp_path, "long", epochs=200, slow=0.02), queue_name, job_env)["run_id"]
        queued = _submit(_spec(tmp_path, "waiting", epochs=2), queue_name, job_env)["run_id"]
        wait_for(
            lambda: any(e.type == "epoch_end" for e in _stream_events(settings, long_run)),
            timeout=120,
            message="first epoch",
        )
        # The queued job first: once the running one stops, the warm spare takes the next job at once.
        assert "revoked" in run_cli("cancel", queued, env_extra=job_env).stderr
        assert "cancel requested" in run_cli("cancel", long_run, env_extra=job_env).stderr
        finished = wait_for(
            lambda: next((e for e in _stream_events(settings, long_run) if e.type == "run_finished"), None),
            timeout=60,
            message="cancelled run",
        )
        assert finished.status == "cancelled" and finished.epochs_completed < 200
        run = wait_for(
            lambda: (r := _run_row(engine, long_run)) is not None and r["status"] == "cancelled" and r,
            message="recorded cancel",
        )
        assert (
            settings.home / "runs" / long_run / "checkpoints" / "best.keras"
        ).exists()  # the best checkpoint is kept
        waiting = wait_for(
            lambda: (r := _run_row(engine, queued)) is not None and r["status"] == "cancelled" and r,
            message="revoked run",
        )
        assert waiting["epochs_completed"] == 0 and waiting["started_at"] is None
        # The worker is still there and takes the next job.
        nxt = _submit(_spec(tmp_path, "next", epochs=1), queue_name, job_env, "--wait", "--timeout", "180")
        assert nxt["status"] == "completed"
    again = run_cli("cancel", long_run, env_extra=job_env, check=False)
    assert again.returncode == 1 and "already finished" in again.stderr
    assert run["epochs_completed"] == finished.epochs_completed >= 1  # SQL agrees with the worker's own count


def test_worker_killed_mid_run_is_resumed_by_another_worker(
    settings, engine, job_env, queue_name, start_worker, tmp_path
):
    short = {"FITSTREAM_MAX_JOB_SECONDS": "4", "FITSTREAM_LEASE_TTL_SECONDS": "2"}
    first = start_worker("w1", **short)
    with RecorderThread(settings, engine):
        run_id = _submit(
            _spec(tmp_path, "resumable", epochs=12, slow=0.01), queue_name, {**job_env, **short}
        )["run_id"]
        wait_for(
            lambda: sum(e.type == "epoch_end" for e in _stream_events(settings, run_id)) >= 3,
            timeout=120,
            message="3 epochs",
        )
        first.kill()
        killed_at = time.monotonic()
        done_before = sum(e.type == "epoch_end" for e in _stream_events(settings, run_id))
        assert done_before < 12
        start_worker("w2", **short)
        finished = wait_for(
            lambda: next((e for e in _stream_events(settings, run_id) if e.type == "run_finished"), None),
            timeout=180,
            message="resumed run to finish",
        )
        resumed_after = time.monotonic() - killed_at
        run = wait_for(
            lambda: (
                (r := _run_row(engine, run_id)) is not None
                and r["status"] in ("completed", "early_stopped")
                and r
            ),
            message="recorded",
        )
    print(f"resumed and finished {resumed_after:.1f}s after the kill")
    assert finished.status in ("completed", "early_stopped")
    events = _stream_events(settings, run_id)
    starts = [e for e in events if e.type == "run_started"]
    assert len(starts) == 2 and starts[1].tags["attempt"] == "2"
    epochs = [e.epoch for e in events if e.type == "epoch_end"]
    assert sorted(set(epochs)) == list(range(12)), "every epoch trained, across both workers"
    # Resumed, not restarted: from the last snapshot — after the last epoch published before the kill,
    # or, when the kill fell between publishing an epoch and snapshotting it, at that epoch again
    # (then, and only then, one epoch was trained twice and is in the stream twice).
    resumed_from = min(e.epoch for e in events if e.type == "epoch_end" and e.seq >= 2_000_000)
    assert resumed_from in (done_before - 1, done_before)
    assert len(epochs) == 12 + (done_before - resumed_from)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM runs")).scalar() == 1
        assert (
            conn.execute(sa.text("SELECT count(*) FROM epochs WHERE run_id = :r"), {"r": run_id}).scalar()
            == 12
        )
    assert run["epochs_completed"] == 12


def test_a_redelivered_job_does_not_train_while_its_lease_is_alive(
    settings, engine, job_env, queue_name, start_worker, tmp_path, database_url
):
    if database_url.startswith("postgresql"):
        pytest.skip("the lease lives in Redis; checked once, on SQLite")
    # Visibility timeout ≈ 1.25 × 2 s + 2 × 2 s: the job (longer than that) is delivered to the second worker too.
    short = {"FITSTREAM_MAX_JOB_SECONDS": "2", "FITSTREAM_LEASE_TTL_SECONDS": "2"}
    start_worker("w1", **short)
    second = start_worker("w2", **short)
    run_id = _submit(_spec(tmp_path, "long-lease", epochs=40, slow=0.01), queue_name, {**job_env, **short})[
        "run_id"
    ]
    finished = wait_for(
        lambda: next((e for e in _stream_events(settings, run_id) if e.type == "run_finished"), None),
        timeout=240,
        message="run to finish",
    )
    assert finished.status == "completed"
    starts = [e for e in _stream_events(settings, run_id) if e.type == "run_started"]
    assert len(starts) == 1, "trained once"
    wait_for(
        lambda: (
            "does not train it" in second.output()
            or "does not train it" in open(tmp_path / "worker-w1.log").read()
        ),
        timeout=30,
        message="duplicate delivery logged",
    )


def test_watch_follows_a_queued_run_to_the_end_and_status_reports(
    settings, engine, job_env, queue_name, start_worker, tmp_path, database_url
):
    if database_url.startswith("postgresql"):
        pytest.skip("watch and status read Redis only; checked once, on SQLite")
    start_worker("watched")
    run_id = _submit(_spec(tmp_path, "watched", epochs=3), queue_name, job_env)["run_id"]
    watched = run_cli("watch", run_id, "--json", "--timeout", "180", env_extra=job_env)
    lines = [json.loads(line) for line in watched.stdout.splitlines()]
    assert [e["type"] for e in lines][0] == "run_queued"
    assert [e["type"] for e in lines][-1] == "run_finished" and lines[-1]["status"] == "completed"
    assert [e["epoch"] for e in lines if e["type"] == "epoch_end"] == [0, 1, 2]
    human = run_cli("watch", run_id, env_extra=job_env)  # the run is over: replays and exits 0
    assert "finished: completed after 3 epochs" in human.stdout and "3/3" in human.stdout

    with RecorderThread(settings, engine):
        wait_for(
            lambda: (r := _run_row(engine, run_id)) is not None and r["status"] == "completed",
            message="recorded",
        )
        report = json.loads(run_cli("status", "--json", env_extra=job_env).stdout)
    assert {"gpu", "cpu"} <= {q["queue"] for q in report["queues"]}
    assert any(w.startswith("watched@") for w in report["workers"])
    assert report["stream"]["name"] == settings.stream and report["stream"]["length"] >= 5
    recorder_group = next(g for g in report["consumer_groups"] if g["group"] == "recorder")
    assert recorder_group["pending"] == 0 and recorder_group["lag"] == 0
    assert report["dead_letters"] == 0
