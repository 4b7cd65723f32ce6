"""Thin Celery tasks: a decorator and one call into ``pipeline``.

The training import happens inside the task body, in the worker's child
process, so the worker's parent process never imports TensorFlow.
"""

from __future__ import annotations

from workers.celery_app import TRAIN_TASK, app


@app.task(name=TRAIN_TASK, acks_late=True, reject_on_worker_lost=True)
def train(run_id: str) -> str:
    """Train the queued run ``run_id`` (see ``pipeline.training.run_job``)."""
    from pipeline.training import run_job
    from workers.submit import release_waiting_trials

    try:
        return run_job(run_id)
    finally:
        release_waiting_trials(run_id)  # a sweep trial's end frees a place for the next one
