"""Thin Celery tasks: a decorator and one call into ``pipeline``.

The training import happens inside the task body, in the worker's child
process, so the worker's parent process never imports TensorFlow.
"""

from __future__ import annotations

import logging
import os

from workers.celery_app import TRAIN_TASK, app

log = logging.getLogger(__name__)


@app.task(name=TRAIN_TASK, acks_late=True, reject_on_worker_lost=True, bind=True)
def train(self, run_id: str) -> str:  # type: ignore[no-untyped-def]
    """Train the queued run ``run_id`` (see ``pipeline.training.run_job``)."""
    from pipeline.training import run_job
    from workers.handover import handover_path, wait_for_previous_job
    from workers.submit import release_waiting_trials

    # The warm spare may get this job while the previous job's process is still exiting. One handover
    # file per worker: its name and its main process (the children's parent), unique on this host.
    log.debug("run %s: task body starts in pid %d", run_id, os.getpid())
    waited = wait_for_previous_job(handover_path(f"{self.request.hostname or 'worker'}-{os.getppid()}"))
    if waited > 0.05:
        log.info("run %s: waited %.2f s for the previous job's process to exit", run_id, waited)
    try:
        return run_job(run_id)
    finally:
        release_waiting_trials(run_id)  # a sweep trial's end frees a place for the next one
