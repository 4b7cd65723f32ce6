"""Noticing the checkpoint files a run produces — ModelCheckpoint's (every epoch or every N batches)
and the model EarlyStopping restored, saved once at the end — and describing them off the
training thread."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pipeline import events as ev
from pipeline.callbacks.keras_state import MODEL_CHECKPOINT, resolved_mode
from pipeline.store.copying import file_sha256

log = logging.getLogger(__name__)
#: The fields of one ``checkpoint_saved`` event but its run id and seq (the publisher adds those).
Saved = dict[str, Any]


class CheckpointWatcher:
    """Tells which checkpoint file a ModelCheckpoint wrote (new or changed since it was last seen)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, int]] = {}

    def written(
        self,
        callback: Any,
        epoch: int,
        logs: dict[str, Any] | None,
        since_ns: int,
        *,
        batch: int | None = None,
    ) -> str | None:
        """The absolute path written for ``epoch`` (or for ``batch`` of it, for a batch-level
        ModelCheckpoint) since ``since_ns``, else None."""
        if (callback.save_freq == "epoch") != (batch is None):
            return None
        if batch is None and callback.save_best_only and not _improved_now(callback, logs):
            return None  # the file changed, but not by this callback: it keeps its best
        try:
            path = os.path.abspath(callback._get_file_path(epoch, batch, dict(logs or {})))
            stat = os.stat(path)
        except Exception:
            return None
        signature = (stat.st_mtime_ns, stat.st_size)
        if signature[0] < since_ns or self._seen.get(path) == signature:
            return None
        self._seen[path] = signature
        return path


def _batch_of_last_save(callback: Any) -> int | None:
    """The batch at which a batch-level ModelCheckpoint last saved, from Keras' own counters (its
    count since the last save is 0 right after one); None where this Keras keeps no such counters.

    Without it, a file found while looking at both the previous and the current batch (the
    ModelCheckpoint may come before or after the publisher in ``callbacks=``) could be credited to
    the wrong one of the two.
    """
    if getattr(callback, "_batches_seen_since_last_saving", None) != 0:
        return None
    last = getattr(callback, "_last_batch_seen", None)
    return last if isinstance(last, int) else None


def batch_level_checkpoints(watch: Sequence[Any]) -> tuple[Any, ...]:
    """The watched ModelCheckpoints that save every N batches (``save_freq`` an integer)."""
    return tuple(c for c in watch if isinstance(c, MODEL_CHECKPOINT) and c.save_freq != "epoch")


class CheckpointReporter:
    """What checkpoint files the watched callbacks produced, as ``checkpoint_saved`` fields.

    Args:
        watch: The watched callbacks of the fit (ModelCheckpoints among them are reported).
    """

    def __init__(self, watch: Sequence[Any]) -> None:
        self._watcher = CheckpointWatcher()
        self._per_epoch = tuple(
            c for c in watch if isinstance(c, MODEL_CHECKPOINT) and c.save_freq == "epoch"
        )
        #: Batch-level ModelCheckpoints: empty for most fits, so the per-batch hook does nothing.
        self.per_batch = batch_level_checkpoints(watch)
        self._previous_batch: tuple[int, dict[str, Any]] | None = None
        self._restored: Saved | None = None

    def epoch_files(self, epoch: int, logs: dict[str, Any], since_ns: int) -> Iterator[Saved]:
        """The files epoch-level ModelCheckpoints wrote for ``epoch``."""
        for callback in self._per_epoch:
            path = self._watcher.written(callback, epoch, logs, since_ns)
            if path is not None:
                yield self._fields(callback, path, epoch, logs)

    def batch_files(
        self, epoch: int, batch: int | None, logs: dict[str, Any] | None, since_ns: int
    ) -> Iterator[Saved]:
        """The files batch-level ModelCheckpoints wrote by ``batch`` (None: the epoch's last look)."""
        # A ModelCheckpoint later in callbacks= saves after the publisher's hook: look at the
        # previous batch's file too (and at the last batch's, at the end of the epoch).
        looks = [self._previous_batch] if self._previous_batch is not None else []
        if batch is not None:
            looks.append((batch, dict(logs or {})))
        self._previous_batch = looks[-1] if batch is not None else None
        for callback in self.per_batch:
            saved_at = _batch_of_last_save(callback)
            for seen_batch, seen_logs in looks:
                if saved_at is not None and seen_batch != saved_at:
                    continue  # a file found now was written at the batch Keras says it saved at
                path = self._watcher.written(callback, epoch, seen_logs, since_ns, batch=seen_batch)
                if path is not None:
                    yield self._fields(callback, path, epoch, seen_logs, batch=seen_batch)

    @staticmethod
    def _fields(
        callback: Any, path: str, epoch: int, logs: dict[str, Any], *, batch: int | None = None
    ) -> Saved:
        return {
            "path": path,
            "epoch": epoch,
            "monitor": callback.monitor,
            "value": ev.to_float(logs.get(callback.monitor)),
            "mode": resolved_mode(callback),
            "batch": batch,
        }

    def save_restored(self, model: Any, stopper: Any, path: str | os.PathLike[str]) -> None:
        """Save the model EarlyStopping restores to its best weights (once, at the end of training);
        :meth:`take_restored` then gives its fields."""
        if not stopper.restore_best_weights or stopper.best_weights is None:
            return
        target = os.path.abspath(os.fspath(path))
        try:
            # EarlyStopping sets these same weights in its own on_train_end, before or after this one.
            model.set_weights(stopper.best_weights)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            model.save(target, overwrite=True)
        except Exception:
            log.exception(
                "fitstream: could not save the restored best model to %s (training is not affected)", target
            )
            return
        self._restored = {
            "path": target,
            "epoch": int(stopper.best_epoch),
            "monitor": stopper.monitor,
            "value": ev.to_float(stopper.best),
            "mode": resolved_mode(stopper),
            "source": "early_stopping_restore",
        }

    def take_restored(self) -> Saved | None:
        restored, self._restored = self._restored, None
        return restored


def _improved_now(callback: Any, logs: dict[str, Any] | None) -> bool:
    """Whether a save_best_only ModelCheckpoint took this epoch's value as its best (so it saved)."""
    current = ev.to_float((logs or {}).get(callback.monitor))
    best = ev.to_float(getattr(callback, "best", None))
    return current is None or best is None or current == best


def checkpoint_event_maker(
    *,
    run_id: str,
    seq: int,
    path: str,
    epoch: int,
    monitor: str,
    value: float | None,
    mode: str | None = None,
    source: str = "model_checkpoint",
    batch: int | None = None,
) -> Callable[[], dict[str, str]]:
    """A function that builds the ``checkpoint_saved`` event, hashing the file when called
    (on the sender thread: hashing a large checkpoint must not hold up training)."""

    def make() -> dict[str, str]:
        try:
            size, digest = os.path.getsize(path), file_sha256(path)
        except OSError:
            size, digest = None, None
        return ev.encode(
            ev.build(
                ev.CheckpointSaved,
                run_id=run_id,
                seq=seq,
                path=path,
                epoch=epoch,
                monitor=monitor,
                value=value,
                size_bytes=size,
                sha256=digest,
                mode=mode,
                source=source,
                batch=batch,
            )
        )

    return make
