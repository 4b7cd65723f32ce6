"""The one rule for "is this value better?": metric, mode and min_delta.

It is the same rule as Keras' ``MonitorCallback._is_improvement`` (used by
EarlyStopping, ModelCheckpoint and ReduceLROnPlateau), written without
TensorFlow so that the publisher, the alert rules and the promoter agree with
Keras and with each other on what "best epoch" means.

Example:
    >>> m = Monitor("val_loss", mode="min", min_delta=0.01)
    >>> m.is_improvement(0.50, best=None)
    True
    >>> m.is_improvement(0.495, best=0.50)   # better, but by less than min_delta
    False
    >>> m.best_of([0.9, 0.7, 0.71, 0.65])
    (3, 0.65)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.errors import ConfigurationError

ModeName = Literal["min", "max"]

#: Metric names (without ``val_``) that Keras itself maximises. Keras decides
#: "auto" from the metric object's ``_direction``; this table covers its
#: built-in metrics for code that only sees names (consumers, alert rules).
MAXIMISED_METRICS = frozenset(
    {
        "accuracy",
        "acc",
        "binary_accuracy",
        "categorical_accuracy",
        "sparse_categorical_accuracy",
        "top_k_categorical_accuracy",
        "sparse_top_k_categorical_accuracy",
        "auc",
        "precision",
        "recall",
        "f1_score",
        "fbeta_score",
        "r2_score",
        "iou",
        "mean_iou",
        "one_hot_iou",
        "one_hot_mean_iou",
        "binary_iou",
        "true_positives",
        "true_negatives",
        "precision_at_recall",
        "recall_at_precision",
        "sensitivity_at_specificity",
        "specificity_at_sensitivity",
        "cosine_similarity",
    }
)


def infer_mode(metric: str) -> ModeName:
    """Direction of ``metric`` by name, as Keras' ``mode="auto"`` decides for built-in metrics.

    Raises:
        ConfigurationError: when the name does not say; pass ``mode`` explicitly.
    """
    base = metric.removeprefix("val_")
    if (
        base == "loss"
        or base.endswith("_loss")
        or base.endswith("error")
        or base in {"mse", "mae", "mape", "msle", "rmse"}
    ):
        return "min"
    if base in MAXIMISED_METRICS or base.endswith(("accuracy", "_auc")):
        return "max"
    raise ConfigurationError(
        f"cannot tell whether {metric!r} should be minimised or maximised; pass mode='min' or mode='max'"
    )


@dataclass(frozen=True)
class Monitor:
    """A monitored metric with its direction and the smallest change that counts.

    Args:
        metric: Log key, e.g. ``"val_loss"``.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (decided from the name, see :func:`infer_mode`).
        min_delta: Smallest absolute change that counts as an improvement. Default 0.
    """

    metric: str
    mode: str = "auto"
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max", "auto"):
            raise ConfigurationError(f"mode must be 'min', 'max' or 'auto'; got {self.mode!r}")
        if self.mode == "auto":
            object.__setattr__(self, "mode", infer_mode(self.metric))
        if not isinstance(self.min_delta, (int, float)) or math.isnan(self.min_delta):
            raise ConfigurationError(f"min_delta must be a number; got {self.min_delta!r}")
        object.__setattr__(self, "min_delta", abs(float(self.min_delta)))

    @classmethod
    def from_event(cls, event: Any, *, known_mode: str | None = None, min_delta: float = 0.0) -> Monitor:
        """The rule the callback behind ``event`` used: its ``monitor`` and the ``mode`` it carries.

        Events from before the ``mode`` field fall back to ``known_mode`` (e.g. what the run's
        ``run_started`` said about that monitor), and only then to the metric's name.

        Raises:
            ConfigurationError: the event names no monitor, or no direction can be known.

        Example:
            >>> from pipeline import events as ev
            >>> saved = ev.build(ev.CheckpointSaved, run_id="r", seq=1, path="b.keras", epoch=0,
            ...                  monitor="val_f1", mode="max", value=0.8)
            >>> Monitor.from_event(saved).mode
            'max'
        """
        kind = getattr(event, "type", None) or "checkpoint_saved"
        metric = getattr(event, "monitor", None)
        if not metric:
            raise ConfigurationError(f"the {kind} event names no monitored metric")
        mode = getattr(event, "mode", None) or known_mode
        if mode in ("min", "max"):
            return cls(metric, mode=mode, min_delta=min_delta)
        try:
            return cls(metric, mode="auto", min_delta=min_delta)
        except ConfigurationError:
            raise ConfigurationError(
                f"the {kind} event gives no direction for {metric!r} and its name does not "
                "say whether it is minimised or maximised (events from Fitstream ≥ 0.2 carry the callback's mode)"
            ) from None

    def is_improvement(self, value: float, best: float | None) -> bool:
        """Whether ``value`` beats ``best`` (always true when there is no best yet).

        Same arithmetic as Keras: ``value - min_delta > best`` in max mode,
        ``value + min_delta < best`` in min mode. NaN never improves.
        """
        if best is None:
            return not math.isnan(value)
        if self.mode == "max":
            return value - self.min_delta > best
        return value + self.min_delta < best

    def best_of(self, values: Iterable[float | None]) -> tuple[int, float] | None:
        """(index, value) of the best value, scanning in order as EarlyStopping does; None if none."""
        best_index, best = None, None
        for index, value in enumerate(values):
            if value is None or math.isnan(value):
                continue
            if self.is_improvement(value, best):
                best_index, best = index, value
        if best_index is None:
            return None
        return best_index, best  # type: ignore[return-value]
