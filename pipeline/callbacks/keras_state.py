"""Reading what Keras' own callbacks decided: their kind, resolved mode and settings,
the optimizer's learning rate, whether this process is a tf.distribute chief, and which
monitors the model does not log. The publisher reports these; it never re-decides them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import keras

from pipeline import events as ev

EARLY_STOPPING = keras.callbacks.EarlyStopping
MODEL_CHECKPOINT = keras.callbacks.ModelCheckpoint
REDUCE_LR = keras.callbacks.ReduceLROnPlateau
WATCHABLE = (EARLY_STOPPING, MODEL_CHECKPOINT, REDUCE_LR)


def check_watchable(watch: Iterable[Any]) -> tuple[Any, ...]:
    """The callbacks ``EventPublisher(watch=...)`` can report on, or a ConfigurationError."""
    from pipeline.errors import ConfigurationError

    watch = tuple(watch)
    for callback in watch:
        if not isinstance(callback, WATCHABLE):
            raise ConfigurationError(
                "watch takes keras.callbacks.EarlyStopping, ModelCheckpoint or ReduceLROnPlateau "
                f"instances; got {type(callback).__name__}"
            )
    return watch


def primary_monitor(
    watch: Iterable[Any], logs: dict[str, Any] | None = None
) -> tuple[str | None, str | None]:
    """The run's monitor and mode: EarlyStopping's, else ModelCheckpoint's, else ReduceLROnPlateau's,
    else val_loss (or loss) when the logs are known."""
    for kind in (EARLY_STOPPING, MODEL_CHECKPOINT, REDUCE_LR):
        for callback in watch:
            if isinstance(callback, kind):
                return callback.monitor, resolved_mode(callback)
    if logs is not None:
        metric = "val_loss" if "val_loss" in logs else "loss" if "loss" in logs else None
        return metric, "min" if metric else None
    return None, None


def callback_kind(callback: Any) -> str:
    if isinstance(callback, EARLY_STOPPING):
        return "early_stopping"
    if isinstance(callback, MODEL_CHECKPOINT):
        return "model_checkpoint"
    return "reduce_lr_on_plateau"


def resolved_mode(callback: Any) -> str | None:
    """'min'/'max' as the callback itself decided it (after its first epoch), else its setting."""
    op = getattr(callback, "monitor_op", None)
    if op is keras.ops.greater or getattr(op, "__name__", "") in ("greater", "np_greater"):
        return "max"
    if op is keras.ops.less or getattr(op, "__name__", "") in ("less", "np_less"):
        return "min"
    mode = getattr(callback, "mode", None)
    return mode if mode in ("min", "max") else None


def callback_settings(callback: Any) -> dict[str, Any]:
    """The settings of a watched callback, as reported in ``run_started``."""
    if isinstance(callback, EARLY_STOPPING):
        return {
            "patience": callback.patience,
            "min_delta": abs(float(callback.min_delta)),
            "baseline": callback.baseline,
            "restore_best_weights": callback.restore_best_weights,
            "start_from_epoch": callback.start_from_epoch,
        }
    if isinstance(callback, MODEL_CHECKPOINT):
        return {
            "filepath": str(callback.filepath),
            "save_best_only": callback.save_best_only,
            "save_weights_only": callback.save_weights_only,
            "save_freq": callback.save_freq,
        }
    return {
        "factor": callback.factor,
        "patience": callback.patience,
        "min_lr": callback.min_lr,
        "cooldown": callback.cooldown,
        "min_delta": abs(float(callback.min_delta)),
    }


def describe_model(model: Any) -> dict[str, Any]:
    """model_name, params_count and optimizer (class and config) for ``run_started``."""
    try:
        params_count = int(model.count_params())
    except Exception:
        params_count = None
    optimizer = getattr(model, "optimizer", None)
    optimizer_info = None
    if optimizer is not None:
        try:
            optimizer_info = {
                "class_name": type(optimizer).__name__,
                "config": json_safe(optimizer.get_config()),
            }
        except Exception:
            optimizer_info = {"class_name": type(optimizer).__name__, "config": {}}
    return {
        "model_name": getattr(model, "name", None),
        "params_count": params_count,
        "optimizer": optimizer_info,
    }


def describe_callbacks(watch: Iterable[Any]) -> list[ev.MonitoringCallback]:
    return [
        ev.MonitoringCallback(
            kind=callback_kind(c),
            monitor=c.monitor,
            mode=str(getattr(c, "mode", "auto")),
            settings=json_safe(callback_settings(c)),
        )
        for c in watch
    ]


def early_stopping_decision(stopper: Any) -> dict[str, Any]:
    """The fields of ``early_stopped``, exactly as EarlyStopping decided them."""
    return {
        "stopped_epoch": int(stopper.stopped_epoch),
        "best_epoch": int(stopper.best_epoch),
        "best_value": ev.to_float(stopper.best),
        "monitor": stopper.monitor,
        "mode": resolved_mode(stopper) or "min",
        "patience": int(stopper.patience),
        "min_delta": abs(float(stopper.min_delta)),
        "restore_best_weights": bool(stopper.restore_best_weights),
    }


def json_safe(value: Any) -> Any:
    """Config values as JSON types; numbers stay numbers (NaN included), the rest become strings."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    converted = ev.to_float(value)
    return converted if converted is not None else str(value)


def learning_rate(model: Any) -> float | None:
    try:
        return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    except Exception:
        return None


def optimizer_iterations(model: Any) -> int | None:
    """How many steps the model's optimizer has taken (Keras' own counter), or None without one."""
    try:
        return int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    except Exception:
        return None


def monitor_problems(watch: Iterable[Any], logged: set[str]) -> tuple[str | None, list[str]]:
    """(the error for a monitor the model does not log, warnings for training-metric monitors)."""
    available = ", ".join(sorted(logged)) or "(nothing)"
    warnings: list[str] = []
    for callback in watch:
        if callback.monitor not in logged:
            return (
                f"{type(callback).__name__} monitors {callback.monitor!r}, which this model does not log; "
                f"it logs: {available}"
            ), warnings
        if not callback.monitor.startswith("val_") and f"val_{callback.monitor}" in logged:
            warnings.append(
                f"{type(callback).__name__} monitors the training metric {callback.monitor!r} although "
                f"validation data exists; did you mean 'val_{callback.monitor}'?"
            )
    return None, warnings


def is_chief() -> bool:
    """Whether this process is the chief of a ``tf.distribute`` multi-worker cluster (or alone).

    Reads ``TF_CONFIG`` as TensorFlow does: with a ``chief`` task in the cluster the chief is
    that task; without one it is worker 0. Only the chief publishes events and writes checkpoints.
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    try:
        config = json.loads(raw)
        task = config.get("task") or {}
        kind, index = task.get("type"), int(task.get("index", 0))
    except (ValueError, TypeError, AttributeError):
        return True
    if kind in (None, "chief"):
        return True
    if kind == "worker":
        return "chief" not in (config.get("cluster") or {}) and index == 0
    return False  # ps, evaluator
