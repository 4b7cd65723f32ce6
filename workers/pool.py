"""Celery's prefork pool, told that a child runs one job and then exits.

With ``max_tasks_per_child=1`` a child exits after its job, but it takes a moment to (it reports
its result, waits for the parent to read it, then sleeps a second before ``os._exit``). Celery's
pool marks it available as soon as the result arrives, so the next task may be written to that
dying child and wait for its death before being handed to another one — seconds, whatever warm
spare stands by. Here a child whose job is done stays out of the rotation until it is down.
"""

from __future__ import annotations

from typing import Any

from celery.concurrency.asynpool import AsynPool
from celery.concurrency.prefork import TaskPool


class _OneJobPerChildAsynPool(AsynPool):
    def on_job_ready(self, job: Any, i: Any, obj: Any, inqW_fd: int) -> None:
        if self._maxtasksperchild == 1:
            return  # still busy for the scheduler; on_process_down forgets it when it exits
        super().on_job_ready(job, i, obj, inqW_fd)


class OneJobPerChildPool(TaskPool):
    """``--pool prefork`` that never hands a job to a child which is about to exit."""

    Pool = _OneJobPerChildAsynPool
