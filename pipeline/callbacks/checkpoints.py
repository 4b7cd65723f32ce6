"""Noticing the checkpoint files ModelCheckpoint writes (every epoch or every N batches), and
describing them off the training thread."""

from __future__ import annotations

import os
from typing import Any, Callable

from pipeline import events as ev
from pipeline.store.copying import file_sha256


class CheckpointWatcher:
    """Tells which checkpoint file a ModelCheckpoint wrote (new or changed since it was last seen)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, int]] = {}

    def written(
        self, callback: Any, epoch: int, logs: dict[str, Any] | None, since_ns: int, *, batch: int | None = None
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


def _improved_now(callback: Any, logs: dict[str, Any] | None) -> bool:
    """Whether a save_best_only ModelCheckpoint took this epoch's value as its best (so it saved)."""
    current = ev.to_float((logs or {}).get(callback.monitor))
    best = ev.to_float(getattr(callback, "best", None))
    return current is None or best is None or current == best


def checkpoint_event_maker(
    *, run_id: str, seq: int, path: str, epoch: int, monitor: str, value: float | None, mode: str | None = None,
    source: str = "model_checkpoint", batch: int | None = None,
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
                ev.CheckpointSaved, run_id=run_id, seq=seq, path=path, epoch=epoch, monitor=monitor, value=value,
                size_bytes=size, sha256=digest, mode=mode, source=source, batch=batch,
            )
        )

    return make
