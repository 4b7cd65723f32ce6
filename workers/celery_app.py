"""The Celery app, configured from Fitstream's settings. Queue names live here and only here.

Start a worker with ``fitstream worker`` (one per GPU, pinned with CUDA_VISIBLE_DEVICES).

Training jobs run in a fresh child process each (prefork, ``max_tasks_per_child=1``):
TensorFlow is never imported in the worker's parent process (it is not
fork-safe once initialised), GPU memory is handed back after every job, and a
job that crashes its process cannot poison the worker.

One job at a time, with a warm spare: the pool has two children (``FITSTREAM_WORKER_WARM_SPARES``,
default 1 spare), but the worker reserves one task at a time (``OneJobAtATime``: prefetch 1, and no
second task taken while one is reserved). The idle child has TensorFlow imported, so when a job
ends the next one starts in it at once, while the pool forks and warms a new spare; the next
job's process waits for the previous one to exit before it trains (``workers.handover``).
"""

from __future__ import annotations

import enum

from celery import Celery, bootsteps
from celery.signals import worker_process_init, worker_ready, worker_shutdown
from kombu import Queue as KombuQueue

from pipeline.config import Settings, get_settings


def visibility_timeout(settings: Settings) -> int:
    """Seconds before Redis re-delivers an unacknowledged task: above the longest job, plus
    two lease lifetimes, so a re-delivery finds a dead worker's lease already expired."""
    return int(settings.max_job_seconds * 1.25 + 2 * settings.lease_ttl_seconds)


class Queue(str, enum.Enum):
    """Celery queues. ``gpu``: training jobs (default). ``cpu``: jobs that need no GPU (a job
    spec's ``queue: cpu``, or ``fitstream submit --queue cpu``), served by ``fitstream worker -Q cpu``."""

    GPU = "gpu"
    CPU = "cpu"


TRAIN_TASK = "fitstream.train"


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("fitstream", broker=settings.celery_broker_url, include=["workers.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # One job at a time: with a warm spare the pool has two children (see OneJobAtATime).
        worker_concurrency=worker_processes(settings),
        worker_disable_prefetch=True,
        # Prefork, minus handing a job to a child that has finished its one job (workers/pool.py).
        worker_pool="workers.pool:OneJobPerChildPool",
        worker_max_tasks_per_child=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        task_default_queue=Queue.GPU.value,
        task_queues=[KombuQueue(q.value) for q in Queue],
        task_routes={TRAIN_TASK: {"queue": Queue.GPU.value}},
        # With acks_late, a task not acknowledged within the visibility timeout is delivered
        # again: keep it above the longest job (the run lease guards the rest).
        broker_transport_options={
            "visibility_timeout": visibility_timeout(settings),
            # How often workers look for tasks whose visibility timeout has passed (a dead
            # worker's job); kombu's default is about every 100 s.
            "unacked_restore_interval": max(1, min(60, visibility_timeout(settings) // 10)),
            "unacked_restore_throttle": 1,
        },
        task_track_started=False,
        # A fresh child imports TensorFlow while it waits for its job (see _warm_child).
        worker_proc_alive_timeout=120,
    )
    app.steps["worker"].add(OneJobAtATime)
    return app


def worker_processes(settings: Settings) -> int:
    """Children in a worker's pool: the one training and its warm spares (one by default)."""
    return 1 + settings.worker_warm_spares


class OneJobAtATime(bootsteps.Step):
    """The worker takes one task at a time, however many children its pool keeps warm.

    Celery sizes its prefetch count from ``max_concurrency`` when it is set, and with
    ``worker_disable_prefetch`` reserves no more tasks than ``max_concurrency`` (its autoscaler's
    mechanism, here with a fixed limit and no autoscaler): one task is reserved, and acknowledged
    late, when it ends; only then is the next one fetched and handed to the idle, warm child.
    """

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(worker, **kwargs)
        worker.max_concurrency = 1


@worker_process_init.connect
def _warm_child(**_kwargs: object) -> None:
    """Import the training stack (TensorFlow) in each fresh child as soon as it is forked.

    Each job gets a new child (max_tasks_per_child=1); importing TensorFlow there while the
    worker is idle takes ~4 s off the next job's start. Only children import it: the parent
    never does, so forking stays safe. FITSTREAM_WORKER_PRELOAD=0 turns this off.
    """
    if get_settings().worker_preload:
        import logging
        import time

        t0 = time.monotonic()
        logging.getLogger(__name__).debug("child up: importing the training stack")
        import pipeline.training  # noqa: F401

        logging.getLogger(__name__).info(
            "child warm: training stack imported in %.2f s", time.monotonic() - t0
        )


@worker_shutdown.connect
def _remove_handover_file(sender: object = None, **_kwargs: object) -> None:
    """The worker's handover file (see workers.handover) goes with it."""
    import os

    from workers.handover import handover_path

    hostname = getattr(sender, "hostname", None) or "worker"
    handover_path(f"{hostname}-{os.getpid()}").unlink(missing_ok=True)


@worker_ready.connect
def _release_open_sweeps(**_kwargs: object) -> None:
    """Queue the waiting trials of open sweeps that have room when a worker starts: a sweep whose
    release was interrupted (its submit or a trial's process killed at the wrong moment) goes on."""
    import logging

    from workers.submit import release_open_sweeps

    try:
        released = release_open_sweeps()
    except Exception as exc:  # Redis away: the next trial to end releases them
        logging.getLogger(__name__).warning("could not release the waiting trials of open sweeps: %s", exc)
        return
    if released:
        logging.getLogger(__name__).info("queued %d waiting sweep trial(s) at start-up", released)


app = make_app()
