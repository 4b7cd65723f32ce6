"""Median pruning of sweep trials: the one rule that decides whether a trial has fallen behind.

At epoch ``e`` (from ``warmup_epochs`` on), a trial whose monitored value is worse than the median
of the values that the sweep's finished trials had at epoch ``e`` — when at least ``min_trials`` of
them reached it — is pruned. This is the rule of Optuna's ``MedianPruner`` (finished trials only,
``n_warmup_steps``, ``n_startup_trials``); "worse" is the run's own direction (``mode``, from Keras).

Example:
    >>> prune_reason("val_loss", "min", epoch=2, value=0.9, finished=[0.3, 0.4, 0.5], warmup_epochs=1, min_trials=2)
    'val_loss 0.9 at epoch 2 is worse than the median 0.4 of 3 finished trials at that epoch'
    >>> prune_reason("val_accuracy", "max", epoch=2, value=0.9, finished=[0.3, 0.4], warmup_epochs=1, min_trials=2) is None
    True
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from pipeline.monitor import Monitor


def prune_reason(
    monitor: str,
    mode: str,
    *,
    epoch: int,
    value: float | None,
    finished: Sequence[float | None],
    warmup_epochs: int = 0,
    min_trials: int = 1,
) -> str | None:
    """Why the trial should stop at ``epoch``, or None when it should go on.

    ``finished`` holds the finished trials' values of ``monitor`` at the same epoch. A value that is
    not a number (NaN) is worse than any number; finished trials' NaNs do not count.
    """
    if epoch < warmup_epochs or value is None:
        return None
    peers = [v for v in finished if v is not None and not math.isnan(v)]
    if len(peers) < max(1, min_trials):
        return None
    median = statistics.median(peers)
    # Worse: the median beats the trial's value by the one "better" rule (NaN is worse than any number).
    worse = math.isnan(value) or Monitor(monitor, mode=mode).is_improvement(median, value)
    if not worse:
        return None
    trials = "trial" if len(peers) == 1 else "trials"
    return f"{monitor} {value:.6g} at epoch {epoch} is worse than the median {median:.6g} of {len(peers)} finished {trials} at that epoch"
