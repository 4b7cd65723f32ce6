"""``run_job(run_id)``: a queued job spec → ``model.fit`` with Keras' callbacks and the publisher.

A plain function: Celery's task only calls it, and tests call it directly.
It is idempotent per run id: a second delivery of a run whose lease is alive
does not train; one whose lease has expired resumes from the run's
``BackupAndRestore`` state, continuing the same run (same id, no repeated epochs).

Example:
    >>> run_job("3f2c0d…")      # doctest: +SKIP
    'early_stopped'
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from pipeline import events as ev
from pipeline.bus import connect
from pipeline.callbacks.keras_state import is_chief
from pipeline.callbacks.publisher import EventPublisher
from pipeline.callbacks.resume import ResumableBackup
from pipeline.config import Settings, get_settings
from pipeline.errors import FitstreamError
from pipeline.fingerprint import fingerprint_data
from pipeline.identity import process_identity
from pipeline.job_records import JobRecords, RunLease
from pipeline.job_references import check_importable, import_reference
from pipeline.jobs import CallableRef, JobSpec, LRSchedule

log = logging.getLogger(__name__)

DUPLICATE = "duplicate"
#: How often a running job checks for `fitstream cancel`.
CANCEL_POLL_S = 0.5


class JobNotFoundError(FitstreamError, LookupError):
    """No queued job with this run id (expired, or never submitted). Not retryable."""


@dataclass(frozen=True)
class RunPaths:
    """Where one run keeps its files (its own directory: two workers never share a file)."""

    root: Path

    @property
    def backup(self) -> Path:
        return self.root / "backup"

    @property
    def csv_log(self) -> Path:
        return self.root / "history.csv"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def restored_model(self) -> Path:
        """Where the model EarlyStopping restored to its best weights is saved at the end of training."""
        return self.root / "checkpoints" / "early_stopping_restored.keras"

    def checkpoint(self, filename: str) -> Path:
        return self.root / "checkpoints" / filename


def _call(ref: CallableRef) -> Any:
    return import_reference(ref.fn)(**ref.kwargs)


def _schedule(schedule: LRSchedule) -> keras.callbacks.Callback:
    if schedule.kind == "function":
        return keras.callbacks.LearningRateScheduler(import_reference(schedule.fn or ""))
    initial: dict[str, float] = {}

    def step(epoch: int, lr: float) -> float:
        base = initial.setdefault("lr", float(lr))
        if schedule.kind == "step":
            return max(schedule.min_lr, base * schedule.factor ** (epoch // schedule.every))  # type: ignore[operator]
        if schedule.kind == "exponential":
            return max(schedule.min_lr, base * schedule.factor**epoch)  # type: ignore[operator]
        total = schedule.total_epochs or 1
        return schedule.min_lr + 0.5 * (base - schedule.min_lr) * (
            1 + math.cos(math.pi * min(epoch, total) / total)
        )

    return keras.callbacks.LearningRateScheduler(step)


def _is_dataset(value: Any) -> bool:
    return hasattr(value, "element_spec") or hasattr(value, "__next__")


def _split_data(data: Any) -> tuple[Any, Any, Any]:
    """(x, y, validation_data) from what a data function returned:
    ``(x, y)``, ``((x, y), (x_val, y_val))``, ``(dataset, val_dataset)`` or a dataset."""
    if isinstance(data, tuple) and len(data) == 2:
        first, second = data
        if isinstance(first, tuple) and len(first) == 2:
            return first[0], first[1], second
        if _is_dataset(first):
            return first, None, second
        return first, second, None
    return data, None, None


def build_callbacks(
    spec: JobSpec, paths: RunPaths
) -> tuple[list[keras.callbacks.Callback], list[keras.callbacks.Callback]]:
    """(all callbacks, the monitoring ones the publisher watches) for ``spec``."""
    callbacks: list[keras.callbacks.Callback] = []
    watched: list[keras.callbacks.Callback] = []
    if spec.terminate_on_nan:
        callbacks.append(keras.callbacks.TerminateOnNaN())
    # The settings' fields are Keras' own keyword arguments (jobs.py), passed through as they are.
    if spec.early_stopping is not None:
        watched.append(keras.callbacks.EarlyStopping(**spec.early_stopping.model_dump()))
    if spec.checkpoint is not None and is_chief():  # only the chief writes checkpoints
        path = paths.checkpoint(spec.checkpoint.filename)
        path.parent.mkdir(parents=True, exist_ok=True)
        watched.append(
            keras.callbacks.ModelCheckpoint(str(path), **spec.checkpoint.model_dump(exclude={"filename"}))
        )
    if spec.reduce_lr is not None:
        watched.append(keras.callbacks.ReduceLROnPlateau(**spec.reduce_lr.model_dump()))
    callbacks += watched
    if spec.lr_schedule is not None:
        callbacks.append(_schedule(spec.lr_schedule))
    if spec.csv_log:
        callbacks.append(keras.callbacks.CSVLogger(str(paths.csv_log), append=True))
    if spec.tensorboard is not None:
        callbacks.append(
            keras.callbacks.TensorBoard(log_dir=str(paths.tensorboard), **spec.tensorboard.model_dump())
        )
    for extra in spec.callbacks:
        callbacks.append(import_reference(extra.cls)(**extra.kwargs))
    return callbacks, watched


class _Heartbeat(threading.Thread):
    """Renews the run's lease and passes a cancel request to the publisher."""

    def __init__(
        self, lease: RunLease, store: JobRecords, run_id: str, publisher: EventPublisher, interval: float
    ) -> None:
        super().__init__(name="fitstream-heartbeat", daemon=True)
        self.lease, self.store, self.run_id, self.publisher, self.interval = (
            lease,
            store,
            run_id,
            publisher,
            interval,
        )
        self.stopped = threading.Event()

    def run(self) -> None:
        last_renew = time.monotonic()
        while not self.stopped.wait(CANCEL_POLL_S):
            try:
                request = self.store.cancel_request(self.run_id)
                if request is not None and not self.publisher.cancel_requested:
                    self.publisher.request_cancel(request.status, request.reason)
                if time.monotonic() - last_renew >= self.interval:
                    last_renew = time.monotonic()
                    if not self.lease.renew():
                        log.error("run %s: lease lost; another worker may take this run over", self.run_id)
            except Exception as exc:  # Redis away: training goes on; the lease may expire
                log.warning("run %s: heartbeat failed: %s", self.run_id, exc)


def run_job(run_id: str, *, settings: Settings | None = None, worker_name: str | None = None) -> str:
    """Train the queued job ``run_id``; returns the run's final status (or ``"duplicate"``).

    Raises:
        JobNotFoundError: no job record for ``run_id``.
    """
    settings = settings or get_settings()
    client = connect(settings.redis_url)
    store = JobRecords(client)
    record = store.load(run_id)
    if record is None:
        raise JobNotFoundError(f"no queued job with run id {run_id!r} (expired or never submitted)")
    spec = record.spec
    owner = worker_name or process_identity()
    lease = RunLease(client, run_id, owner=owner, ttl_s=settings.lease_ttl_seconds)
    if not lease.acquire_from_dead():
        log.warning("run %s is being trained by %s; this delivery does not train it", run_id, lease.holder())
        return DUPLICATE
    try:
        if store.state(run_id) == "finished":  # a second delivery of a run that already ended
            log.warning("run %s has already finished; this delivery does not train it", run_id)
            return DUPLICATE
        request = store.cancel_request(run_id)
        if request is not None:
            store.set_state(run_id, "finished")
            if (
                store.attempts(run_id) > 0
            ):  # it trained before (the stop was asked while it ran, then it died)
                _announce_stopped(run_id, request, settings=settings, attempt=store.next_attempt(run_id))
            return request.status
        store.set_state(run_id, "running")
        attempt = store.next_attempt(run_id)
        return _train(spec, run_id, settings=settings, store=store, lease=lease, attempt=attempt)
    finally:
        store.set_state(run_id, "finished")
        lease.release()


def _train(
    spec: JobSpec, run_id: str, *, settings: Settings, store: JobRecords, lease: RunLease, attempt: int
) -> str:
    allowed = settings.allowed_modules
    paths = RunPaths(settings.runs_dir / run_id)
    paths.root.mkdir(parents=True, exist_ok=True)
    publisher = EventPublisher(
        name=spec.name,
        run_id=run_id,
        settings=settings,
        batch_events_every=spec.batch_events_every,
        batch_size=spec.fit.batch_size,
        tags={**spec.tags, "attempt": str(attempt)},
        seq_start=ev.attempt_first_seq(attempt),
        save_restored_model=paths.restored_model if spec.promote.save_restored_model and is_chief() else None,
    )
    heartbeat = _Heartbeat(lease, store, run_id, publisher, interval=max(0.2, settings.lease_ttl_seconds / 3))
    heartbeat.start()
    status = "failed"
    try:
        with publisher:
            check_importable(spec, allowed)  # the deployment's rule, enforced where code is imported
            if spec.seed is not None:
                _seed_everything(spec.seed)
            model = _call(spec.model)
            x, y, validation = _split_data(_call(spec.data))
            publisher.data_fingerprint = fingerprint_data(x, y, validation)
            callbacks, watched = build_callbacks(spec, paths)
            publisher.watch = tuple(watched)
            # Resume support: weights, optimizer, epoch and what the callbacks knew, after a lost worker.
            callbacks.append(ResumableBackup(paths.backup, keep=[*watched, publisher]))
            fit = spec.fit
            model.fit(
                x,
                y,
                validation_data=validation,
                validation_split=fit.validation_split or 0.0,
                epochs=fit.epochs,
                batch_size=fit.batch_size if y is not None else None,
                steps_per_epoch=fit.steps_per_epoch,
                shuffle=fit.shuffle,
                verbose=fit.verbose,
                callbacks=[*callbacks, publisher],
            )
        status = _final_status(publisher)
    except Exception as exc:
        log.error("run %s failed: %s: %s", run_id, type(exc).__name__, exc)
        status = "failed"
    finally:
        heartbeat.stopped.set()
    return status


def _announce_stopped(run_id: str, request: Any, *, settings: Settings, attempt: int) -> None:
    """``run_finished`` for a run whose stop was asked while it trained and whose process died before
    it could stop: published by the delivery that finds the request, as the first (and only) event
    of its attempt, so the run still ends ``cancelled`` or ``pruned`` with the reason."""
    from pipeline.bus import EventStream

    EventStream(settings=settings).publish(
        [
            ev.build(
                ev.RunFinished,
                run_id=run_id,
                seq=ev.attempt_first_seq(attempt),
                status=request.status,
                epochs_completed=0,
                reason=request.reason,
            )
        ]
    )


def _seed_everything(seed: int) -> None:
    """Python, NumPy and backend seeds, and deterministic TensorFlow ops (a job's ``seed:``)."""
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def _final_status(publisher: EventPublisher) -> str:
    if publisher.cancel_requested:
        return publisher.cancel_status
    stopper = publisher._early_stopping()
    if stopper is not None and stopper.stopped_epoch > 0:
        return "early_stopped"
    return "completed"
