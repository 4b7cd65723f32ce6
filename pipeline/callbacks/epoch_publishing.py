"""How an ``EventPublisher`` publishes a finished epoch, and what it keeps of the epochs so far.

``EpochPublishing`` is the part of :class:`~pipeline.callbacks.publisher.EventPublisher` that turns
an epoch Keras has finished with (held back until the next epoch begins or training ends, so that
every callback has acted) into its events: ``epoch_end`` with the metrics as plain floats,
``learning_rate_changed`` when ReduceLROnPlateau (or another callback) changed it, the checkpoints
ModelCheckpoint wrote, and ``early_stopped`` once EarlyStopping decided to stop. It also holds the
state those decisions need across a resume (the monitor's history, epochs completed, early stops
reported): ``get_resume_state`` / ``set_resume_state``, used by
:class:`~pipeline.callbacks.resume.ResumableBackup`.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline import events as ev
from pipeline.callbacks.keras_state import REDUCE_LR, early_stopping_decision, resolved_mode

# The publisher's own logger name, so that logging configured for it still covers this part of it.
log = logging.getLogger("pipeline.callbacks.publisher")


class EpochPublishing:
    """Epoch events and the resumable per-run state of an ``EventPublisher`` (a mixin)."""

    def _finalize_pending(self) -> None:
        if self._pending is None:
            return
        epoch, logs, wall = self._pending
        self._pending = None
        try:
            self._publish_epoch(epoch, logs, wall)
        except Exception:
            log.exception("fitstream: could not publish epoch %d (training continues)", epoch)

    def _publish_epoch(self, epoch: int, logs: dict[str, Any], wall: float) -> None:
        if self._epoch_lr is None:  # an epoch without batches
            self._epoch_lr = self._learning_rate()
        metrics = {str(k): ev.to_float(v) for k, v in logs.items()}
        steps = self.params.get("steps") if self.params else None
        self._epochs_completed = max(self._epochs_completed, epoch + 1)
        self._run_monitor = self._primary_monitor(logs)
        monitor = self._run_monitor[0]
        self._monitor_history.append((epoch, metrics.get(monitor) if monitor else None))
        self._emit(
            ev.EpochEnd,
            epoch=epoch,
            metrics=metrics,
            learning_rate=self._epoch_lr,
            wall_time_s=wall,
            steps=steps,
            steps_per_second=(steps / wall) if steps and wall > 0 else None,
            samples_per_second=(steps * self.batch_size / wall)
            if steps and self.batch_size and wall > 0
            else None,
        )
        new_lr = self._learning_rate()
        if self._epoch_lr is not None and new_lr is not None and new_lr != self._epoch_lr:
            reducer = next((c for c in self.watch if isinstance(c, REDUCE_LR)), None)
            self._emit(
                ev.LearningRateChanged,
                epoch=epoch,
                old=self._epoch_lr,
                new=new_lr,
                reason=f"ReduceLROnPlateau on {reducer.monitor}" if reducer is not None else None,
                monitor=reducer.monitor if reducer is not None else None,
                mode=resolved_mode(reducer) if reducer is not None else None,
            )
        self._emit_checkpoints(self._checkpoints.epoch_files(epoch, logs, self._epoch_start_ns))
        stopper = self._early_stopping()
        if (
            stopper is not None
            and stopper.stopped_epoch == epoch
            and epoch > 0
            and epoch not in self._early_stopped_reported
        ):
            self._emit_restored_checkpoint()  # before early_stopped: the promoter acts on that
            self._early_stopped_reported.add(epoch)
            self._emit(ev.EarlyStopped, **early_stopping_decision(stopper))

    # -- resume (see pipeline.callbacks.resume.ResumableBackup) --------------------------------
    def finish_epoch(self) -> None:
        """Publish the finished epoch now (otherwise published when the next one begins), so that a
        resume snapshot taken next holds this publisher's state after it."""
        self._finalize_pending()

    def get_resume_state(self) -> dict[str, Any]:
        """What this publisher knows about the run so far, to survive a resume."""
        return {
            "monitor_history": [[epoch, value] for epoch, value in self._monitor_history],
            "epochs_completed": self._epochs_completed,
            "early_stopped_reported": sorted(self._early_stopped_reported),
        }

    def set_resume_state(self, state: dict[str, Any]) -> None:
        self._monitor_history = [(int(epoch), value) for epoch, value in state.get("monitor_history", [])]
        self._epochs_completed = max(self._epochs_completed, int(state.get("epochs_completed", 0)))
        self._early_stopped_reported = set(state.get("early_stopped_reported", []))
