"""Sweeps through a real worker (issue 12): a grid queued in one command, ``max_parallel`` held by
the queue side, every trial's parameters in SQL, ``sweep show`` and ``compare`` reading them back,
a bad value refused before anything is queued, a sweep cancelled, and a bad trial pruned while
the good ones finish."""

from __future__ import annotations

import json

import pytest
import redis
import sqlalchemy as sa

from pipeline import events as ev
from pipeline.consumers.pruner import Pruner
from pipeline.job_records import JobRecords
from tests.conftest import ConsumerThread, RecorderThread, run_cli, wait_for

pytestmark = pytest.mark.slow

BASE = (
    "name: {name}\n"
    "model: {{fn: tests.job_fixtures:small_model, kwargs: {{hidden: 16}}}}\n"
    "data: tests.job_fixtures:slow_data\n"
    "checkpoint: false\n"
    "promote: {{save_restored_model: false}}\n"
)


def write(tmp_path, name: str, body: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(BASE.format(name=name) + body)
    return str(path)


def query(engine, sql: str, **params) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


def states(settings, run_ids) -> list[str | None]:
    store = JobRecords(redis.Redis.from_url(settings.redis_url))
    return [store.state(r) for r in run_ids]


def terminal(engine, run_ids) -> bool:
    found = query(engine, "SELECT status FROM runs WHERE sweep_id IS NOT NULL")
    ended = query(
        engine,
        "SELECT count(*) FROM runs WHERE finished_at IS NOT NULL AND status IN ('completed', "
        "'early_stopped', 'failed', 'cancelled', 'pruned')",
    )[0][0]
    return bool(found) and ended >= len(run_ids)


def pruner(settings, engine) -> ConsumerThread:
    """The real pruner consuming in a thread."""
    return ConsumerThread(
        Pruner(engine, JobRecords(redis.Redis.from_url(settings.redis_url))), settings, "pruner-test"
    )


def _sqlite_only(database_url: str) -> None:
    if database_url.startswith("postgresql"):
        pytest.skip(
            "what a worker does with a sweep does not depend on the database; SQL is checked on both in test_experiment_sql"
        )


def test_a_grid_sweep_runs_every_trial_two_at_a_time_and_is_compared(
    settings, engine, job_env, queue_name, start_worker, tmp_path, database_url
):
    _sqlite_only(database_url)
    spec = write(
        tmp_path,
        "grid",
        "fit: {epochs: 2}\nsweep:\n  grid:\n    model.kwargs.hidden: [8, 32]\n"
        "    fit.batch_size: [32, 64]\n  max_parallel: 2\n",
    )
    submitted = json.loads(run_cli("submit", spec, "--queue", queue_name, "--json", env_extra=job_env).stdout)
    sweep_id, run_ids = submitted["sweep_id"], submitted["run_ids"]
    assert len(run_ids) == 4 and len(set(run_ids)) == 4
    # Before any worker: two trials in the queue, two waiting their turn.
    assert states(settings, run_ids) == ["queued", "queued", "waiting", "waiting"]
    broker = redis.Redis.from_url(settings.celery_broker_url)
    assert broker.llen(queue_name) == 2

    seen_active: list[int] = []
    with RecorderThread(settings, engine):
        start_worker()

        def all_ended() -> bool:
            now = states(settings, run_ids)
            seen_active.append(sum(s in ("queued", "running") for s in now))
            return now.count("finished") == 4 and terminal(engine, run_ids)

        wait_for(all_ended, timeout=300, interval=0.05, message="every trial trained and recorded")
    assert max(seen_active) <= 2, seen_active  # max_parallel held throughout
    assert len(seen_active) > 10  # sampled while trials ran, not only at the end

    # Every trial trained with its own values: params from the spec, the optimizer's from Keras.
    expected = [(8, 32), (8, 64), (32, 32), (32, 64)]
    for run_id, (hidden, batch_size) in zip(run_ids, expected):
        params = dict(query(engine, "SELECT key, value_num FROM params WHERE run_id = :r", r=run_id))
        assert params["model.kwargs.hidden"] == hidden and params["fit.batch_size"] == batch_size
        assert params["optimizer.learning_rate"] == pytest.approx(0.01)  # tests.job_fixtures:small_model's
        (params_count,) = query(engine, "SELECT params_count FROM runs WHERE run_id = :r", r=run_id)[0]
        assert (
            params_count == 64 * hidden + hidden + hidden * hidden + hidden + hidden * 10 + 10
        )  # `hidden` units, really
        (batch,) = query(engine, "SELECT batch_size FROM runs WHERE run_id = :r", r=run_id)[0]
        assert batch == batch_size
    summary = query(
        engine,
        "SELECT run_id, sweep_id, status, epochs, params FROM run_summary WHERE sweep_id = :s",
        s=sweep_id,
    )
    assert sorted(r[0] for r in summary) == sorted(run_ids)
    assert all(r[2] in ("completed", "early_stopped") and r[3] == 2 for r in summary)
    assert {json.loads(r[4])["model.kwargs.hidden"] for r in summary} == {8, 32}
    assert query(engine, "SELECT state, trials, name FROM sweeps WHERE id = :s", s=sweep_id) == [
        ("finished", 4, "grid")
    ]

    # sweep show: best first by val_loss (minimised), the best marked, the sweep's keys as columns.
    shown = json.loads(run_cli("sweep", "show", sweep_id, "--json", env_extra=job_env).stdout)
    values = [r["best_value"] for r in shown["runs"]]
    assert values == sorted(values) and shown["mode"] == "min" and shown["monitor"] == "val_loss"
    assert [r["best"] for r in shown["runs"]] == [True, False, False, False]
    assert shown["params"] == ["model.kwargs.hidden", "fit.batch_size"]
    best_recorded = query(
        engine, "SELECT run_id FROM runs WHERE sweep_id = :s ORDER BY best_value LIMIT 1", s=sweep_id
    )[0][0]
    assert shown["runs"][0]["run_id"] == best_recorded
    table = run_cli("sweep", "show", sweep_id[:10], env_extra=job_env).stdout
    assert "★" in table and "model.kwargs.hidden" in table

    # compare: only the params that differ become columns.
    compared = json.loads(run_cli("compare", sweep_id, "--json", env_extra=job_env).stdout)
    assert compared["params"] == ["fit.batch_size", "model.kwargs.hidden"]
    assert [r["run_id"] for r in compared["runs"]] == run_ids
    two = json.loads(run_cli("compare", run_ids[0], run_ids[1], "--json", env_extra=job_env).stdout)
    assert two["params"] == ["fit.batch_size"]  # same hidden, different batch size
    csv_lines = run_cli("compare", sweep_id, "--csv", env_extra=job_env).stdout.splitlines()
    assert csv_lines[0].split(",")[:6] == [
        "run_id",
        "name",
        "status",
        "epochs",
        "fit.batch_size",
        "model.kwargs.hidden",
    ]
    assert len(csv_lines) == 5
    by_accuracy = json.loads(
        run_cli("compare", sweep_id, "--metric", "val_accuracy", "--json", env_extra=job_env).stdout
    )
    for run in by_accuracy["runs"]:
        curve = [
            v
            for (v,) in query(
                engine,
                "SELECT value FROM epoch_metrics WHERE run_id = :r AND name = 'val_accuracy' ORDER BY epoch",
                r=run["run_id"],
            )
        ]
        assert run["best_value"] == max(curve) and run["mode"] == "max"
    listed = json.loads(run_cli("sweeps", "--json", env_extra=job_env).stdout)
    assert [(s["sweep_id"], s["state"], s["ended"]) for s in listed] == [(sweep_id, "finished", 4)]
    assert listed[0]["best_run_id"] == best_recorded


def test_a_bad_trial_value_is_refused_before_anything_is_queued(
    settings, job_env, queue_name, tmp_path, database_url
):
    _sqlite_only(database_url)
    spec = write(
        tmp_path, "bad", "sweep:\n  grid:\n    fit.batch_size: [32, 0]\n    model.kwargs.hidden: [8]\n"
    )
    result = run_cli("submit", spec, "--queue", queue_name, env_extra=job_env, check=False)
    assert result.returncode == 1
    assert "trial 2 of 2 (fit.batch_size=0, model.kwargs.hidden=8): fit.batch_size:" in result.stderr, (
        result.stderr
    )
    assert "greater than or equal to 1" in result.stderr
    assert redis.Redis.from_url(settings.redis_url).xlen(settings.stream) == 0  # nothing announced
    assert redis.Redis.from_url(settings.celery_broker_url).llen(queue_name) == 0  # nothing queued
    unknown = write(tmp_path, "typo", "sweep:\n  grid:\n    fit.batch_sise: [32]\n")
    result = run_cli("submit", unknown, "--queue", queue_name, env_extra=job_env, check=False)
    assert (
        result.returncode == 1 and "fit.batch_sise: unknown key; did you mean 'batch_size'?" in result.stderr
    ), result.stderr


def test_cancelling_a_sweep_cancels_its_running_and_waiting_trials(
    settings, engine, job_env, queue_name, start_worker, tmp_path, database_url
):
    _sqlite_only(database_url)
    spec = write(
        tmp_path,
        "cancelled",
        "fit: {epochs: 50}\ncallbacks: [{class: 'tests.job_fixtures:SlowDown', kwargs: {seconds: 0.05}}]\n"
        "sweep:\n  grid:\n    model.kwargs.hidden: [8, 16, 32]\n  max_parallel: 1\n",
    )
    submitted = json.loads(run_cli("submit", spec, "--queue", queue_name, "--json", env_extra=job_env).stdout)
    sweep_id, run_ids = submitted["sweep_id"], submitted["run_ids"]
    with RecorderThread(settings, engine):
        start_worker()
        wait_for(
            lambda: query(engine, "SELECT 1 FROM epochs WHERE run_id = :r", r=run_ids[0]),
            timeout=120,
            message="the first trial training",
        )
        result = run_cli("cancel", sweep_id, env_extra=job_env)
        assert "2 revoked, 1 stopping" in result.stderr, result.stderr
        wait_for(lambda: terminal(engine, run_ids), timeout=120, message="every trial ended")
        wait_for(
            lambda: query(engine, "SELECT state FROM sweeps WHERE id = :s", s=sweep_id) == [("cancelled",)],
            timeout=30,
            message="the sweep cancelled",
        )
    rows = query(
        engine, "SELECT run_id, status, status_reason, started_at FROM runs WHERE sweep_id = :s", s=sweep_id
    )
    by_id = {r[0]: r[1:] for r in rows}
    assert [by_id[r][:2] for r in run_ids] == [("cancelled", "sweep cancelled (fitstream cancel)")] * 3
    assert by_id[run_ids[0]][2] is not None  # it had started
    assert by_id[run_ids[1]][2] is None and by_id[run_ids[2]][2] is None  # the waiting ones never started
    assert states(settings, run_ids) == ["finished"] * 3
    (epochs,) = query(engine, "SELECT epochs_completed FROM runs WHERE run_id = :r", r=run_ids[0])[0]
    assert epochs < 50
    result = run_cli("cancel", sweep_id, env_extra=job_env, check=False)
    assert result.returncode == 1 and "already finished" in result.stderr


def test_a_trial_that_falls_behind_is_pruned_while_the_good_ones_finish(
    settings, engine, job_env, queue_name, start_worker, tmp_path, database_url
):
    _sqlite_only(database_url)
    # Two good trials, then one whose learning rate is far too small to learn: one at a time, so the
    # bad one meets the median of two finished trials (min_trials: 2 keeps the second good one safe).
    spec = write(
        tmp_path,
        "pruned",
        "fit: {epochs: 6, batch_size: 32}\nearly_stopping: false\n"
        "callbacks: [{class: 'tests.job_fixtures:SlowDown', kwargs: {seconds: 0.03}}]\n"
        "sweep:\n  grid:\n    model.kwargs.learning_rate: [0.01, 0.01, 0.0000001]\n"
        "  max_parallel: 1\n  prune: {kind: median, warmup_epochs: 1, min_trials: 2}\n",
    )
    submitted = json.loads(run_cli("submit", spec, "--queue", queue_name, "--json", env_extra=job_env).stdout)
    sweep_id, run_ids = submitted["sweep_id"], submitted["run_ids"]
    with RecorderThread(settings, engine), pruner(settings, engine):
        start_worker()
        wait_for(lambda: terminal(engine, run_ids), timeout=300, message="every trial ended")
    rows = {
        r[0]: r[1:]
        for r in query(
            engine,
            "SELECT run_id, status, epochs_completed, status_reason FROM runs WHERE sweep_id = :s",
            s=sweep_id,
        )
    }
    assert [rows[r][:2] for r in run_ids[:2]] == [("completed", 6), ("completed", 6)]
    status, epochs, reason = rows[run_ids[2]]
    assert status == "pruned" and epochs < 6, rows[run_ids[2]]
    assert (
        reason.startswith("pruned: val_loss ") and "median" in reason and "of 2 finished trials" in reason
    ), reason
    # The reason is true: at the epoch it names, the trial's val_loss was above the two good trials' median.
    epoch = int(reason.split(" at epoch ")[1].split()[0])
    value = query(
        engine,
        "SELECT value FROM epoch_metrics WHERE run_id = :r AND name = 'val_loss' AND epoch = :e",
        r=run_ids[2],
        e=epoch,
    )[0][0]
    good = sorted(
        query(
            engine,
            "SELECT value FROM epoch_metrics WHERE name = 'val_loss' AND epoch = :e AND run_id IN (:a, :b)",
            e=epoch,
            a=run_ids[0],
            b=run_ids[1],
        )
    )
    assert value > (good[0][0] + good[1][0]) / 2
    finished = [
        e
        for e in (ev.decode(f) for _i, f in redis.Redis.from_url(settings.redis_url).xrange(settings.stream))
        if e.run_id == run_ids[2] and e.type == "run_finished"
    ]
    assert [(e.status, e.reason) for e in finished] == [("pruned", reason)]
    assert query(engine, "SELECT state FROM sweeps WHERE id = :s", s=sweep_id) == [("finished",)]


def test_a_trial_whose_training_process_is_killed_still_hands_its_place_on(
    settings, engine, job_env, queue_name, start_worker, tmp_path, database_url
):
    """Nothing about a sweep lives in a process: the first trial's training process is SIGKILLed
    mid-epoch (its task never returns); Celery delivers it again, it resumes, and its end queues
    the next trial."""
    _sqlite_only(database_url)
    marker = tmp_path / "killed-once"
    spec = write(
        tmp_path,
        "killed",
        f"fit: {{epochs: 3}}\ncallbacks: [{{class: 'tests.job_fixtures:KillOnce', "
        f"kwargs: {{epoch: 1, marker: '{marker}'}}}}]\n"
        "sweep:\n  grid:\n    model.kwargs.hidden: [8, 16]\n  max_parallel: 1\n",
    )
    submitted = json.loads(run_cli("submit", spec, "--queue", queue_name, "--json", env_extra=job_env).stdout)
    run_ids = submitted["run_ids"]
    assert states(settings, run_ids) == ["queued", "waiting"]
    with RecorderThread(settings, engine):
        start_worker()
        wait_for(lambda: terminal(engine, run_ids), timeout=300, message="both trials ended")
    assert marker.exists()  # the kill happened
    rows = {
        r[0]: r[1:]
        for r in query(
            engine,
            "SELECT run_id, status, epochs_completed, tags FROM runs WHERE sweep_id = :s",
            s=submitted["sweep_id"],
        )
    }
    assert [rows[r][:2] for r in run_ids] == [("completed", 3), ("completed", 3)]
    assert (
        json.loads(rows[run_ids[0]][2])["attempt"] == "2"
        and json.loads(rows[run_ids[1]][2])["attempt"] == "1"
    )
    # The job process marks a run finished in Redis right after the fit, a moment after its
    # run_finished event may already be in SQL.
    wait_for(
        lambda: states(settings, run_ids) == ["finished", "finished"],
        timeout=30,
        message="both trials finished in Redis",
    )
