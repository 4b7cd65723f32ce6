"""The worker's promises, asked of the running worker with Celery's own client (issue 11): acks
late, reject on worker lost, prefetch 1, one child per job, JSON only; TensorFlow never imported in
the worker's parent process; a module outside FITSTREAM_ALLOWED_MODULES refused by the worker.
And (issue 13) one job at a time with a warm spare: the next job runs in a child that had TensorFlow
imported before the previous job ended, never beside it, and only once its process is gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, wait_for
from tests.test_workers import _run_row, _spec, _submit

pytestmark = pytest.mark.slow


def celery_inspect(env: dict[str, str], destination: str, *command: str) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.celery_app",
            "inspect",
            *command,
            "-d",
            destination,
            "--json",
            "--timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)[destination]


def tensorflow_mapped(pid: int) -> bool:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "libtensorflow" in maps or "_pywrap_tensorflow" in maps


def children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in found.read_text().split()] if found.exists() else []


def test_the_running_worker_says_how_it_is_configured_and_keeps_tensorflow_out_of_its_parent(
    settings, engine, job_env, queue_name, start_worker, tmp_path, database_url
):
    if database_url.startswith("postgresql"):
        pytest.skip("the worker's configuration does not depend on the database; checked once, on SQLite")
    # A name no other test file gives its worker: `celery inspect -d` reaches every worker so named
    # on the shared broker, and test_workers.py's "w1" may run at the same time (pytest-xdist).
    worker = start_worker("promises-w1")
    destination = "promises-w1@test"
    wait_for(
        lambda: (
            destination
            in (
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "workers.celery_app",
                        "inspect",
                        "ping",
                        "-d",
                        destination,
                        "--timeout",
                        "5",
                    ],
                    capture_output=True,
                    text=True,
                    env={**os.environ, **job_env},
                    cwd=REPO,
                ).stdout
            )
        ),
        timeout=90,
        message="the worker answers",
    )
    conf = celery_inspect(job_env, destination, "conf")
    assert conf["task_acks_late"] is True and conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1 and conf["worker_max_tasks_per_child"] == 1
    assert (
        conf["worker_concurrency"] == 2 and conf["worker_disable_prefetch"] is True
    )  # the one training + a warm spare
    assert conf["worker_pool"] == "workers.pool:OneJobPerChildPool"
    assert (
        conf["task_serializer"] == "json"
        and conf["accept_content"] == ["json"]
        and conf["result_serializer"] == "json"
    )
    stats = celery_inspect(job_env, destination, "stats")
    # Two children, one task reserved at a time (prefetch 1 although the pool has two processes).
    assert stats["pool"]["max-concurrency"] == 2 and stats["prefetch_count"] == 1
    parent = stats["pid"]
    assert parent == worker.proc.pid or parent in children(worker.proc.pid)

    done = _submit(_spec(tmp_path, "one-job", epochs=1), queue_name, job_env, "--wait", "--timeout", "180")
    assert done["status"] == "completed"
    assert not tensorflow_mapped(parent), "TensorFlow was imported in the worker's parent process"
    # The job ran in a child that has since been replaced (one child per job): TensorFlow lives there.
    wait_for(
        lambda: any(tensorflow_mapped(child) for child in children(parent)),
        timeout=60,
        message="a warm child with TensorFlow",
    )
    after = celery_inspect(job_env, destination, "stats")
    assert after["pid"] == parent and after["total"].get("fitstream.train") == 1


def test_a_module_outside_the_workers_allowed_list_is_refused_by_the_worker(
    settings, engine, job_env, queue_name, start_worker, tmp_path, database_url
):
    if database_url.startswith("postgresql"):
        pytest.skip("the refusal does not depend on the database; checked once, on SQLite")
    from tests.conftest import RecorderThread, run_cli

    start_worker(
        "w1", FITSTREAM_ALLOWED_MODULES="examples"
    )  # the submitter allows tests.*, the worker does not
    with RecorderThread(settings, engine):
        done = run_cli(
            "submit",
            _spec(tmp_path, "not-allowed", epochs=1),
            "--queue",
            queue_name,
            "--json",
            "--wait",
            "--timeout",
            "180",
            env_extra=job_env,
            check=False,
        )
        assert done.returncode == 1, done.stderr  # --wait exits 1 for a run that failed
        result = json.loads(done.stdout)
        run = wait_for(
            lambda: (r := _run_row(engine, result["run_id"])) is not None and r["status"] == "failed" and r,
            timeout=60,
            message="the refused run recorded",
        )
    assert result["status"] == "failed"
    assert run["error_type"] == "JobSpecError", run
    assert (
        "tests.job_fixtures" in run["error_message"] and "FITSTREAM_ALLOWED_MODULES" in run["error_message"]
    )
    assert run["epochs_completed"] == 0


def test_back_to_back_jobs_run_one_at_a_time_the_next_in_the_warm_spare(
    settings, engine, job_env, queue_name, start_worker, tmp_path, database_url
):
    if database_url.startswith("postgresql"):
        pytest.skip("the worker's process model does not depend on the database; checked once, on SQLite")
    from tests.test_workers import _stream_events

    worker = start_worker("w2")
    parent = worker.proc.pid  # `fitstream worker` runs Celery's main process in-process
    # Both children of a fresh worker import TensorFlow while it is idle.
    wait_for(
        lambda: len([c for c in children(parent) if tensorflow_mapped(c)]) >= 2,
        timeout=120,
        message="two warm children",
    )
    first = _submit(_spec(tmp_path, "first", epochs=3, slow=0.05), queue_name, job_env)
    second = _submit(_spec(tmp_path, "second", epochs=1), queue_name, job_env)

    def started(run_id):  # type: ignore[no-untyped-def]
        return next((e for e in _stream_events(settings, run_id) if e.type == "run_started"), None)

    first_started = wait_for(lambda: started(first["run_id"]), timeout=120, message="the first job trains")
    # While the first job trains: the worker's other children, TensorFlow already imported.
    assert first_started.pid in children(parent)
    warm_while_first_ran = {c for c in children(parent) if c != first_started.pid and tensorflow_mapped(c)}
    assert warm_while_first_ran, "no warm spare beside the training child"
    assert started(second["run_id"]) is None, "the second job started beside the first"

    def finished(run_id):  # type: ignore[no-untyped-def]
        return next((e for e in _stream_events(settings, run_id) if e.type == "run_finished"), None)

    wait_for(lambda: finished(second["run_id"]), timeout=180, message="the second job ends")
    first_finished, second_started = finished(first["run_id"]), started(second["run_id"])
    assert first_finished.status == "completed" and finished(second["run_id"]).status == "completed"
    assert second_started.ts >= first_finished.ts  # one job at a time
    assert (
        second_started.pid in warm_while_first_ran
    )  # it ran in a child that was warm before the first ended
    assert second_started.pid != first_started.pid  # a fresh process per job
