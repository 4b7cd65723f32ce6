"""The job spec's schema: one pydantic model per section (fit settings, Keras' callbacks' keyword
arguments, promotion) and :class:`JobSpec`, the whole spec. Reading a spec from text or a file, with
errors a user can act on, is :mod:`pipeline.jobs`' part; both modules export these models.

Example:
    >>> JobSpec(name="x", model="pipeline.examples.digits:build_model", data="pipeline.examples.digits:load_data").fit.epochs
    10
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.errors import ConfigurationError
from pipeline.job_errors import shown
from pipeline.job_references import check_reference_shape
from pipeline.monitor import MAXIMISED_METRICS, infer_mode

QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CallableRef(_Strict):
    """``module:function`` plus keyword arguments."""

    fn: str
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("fn")
    @classmethod
    def _shape(cls, value: str) -> str:
        return check_reference_shape(value, "function")

    @property
    def module(self) -> str:
        return self.fn.split(":", 1)[0]

    @property
    def attribute(self) -> str:
        return self.fn.split(":", 1)[1]


def _callable_ref(value: Any) -> Any:
    return {"fn": value} if isinstance(value, str) else value


class FitSettings(_Strict):
    epochs: int = Field(default=10, ge=1, le=100_000)
    batch_size: int | None = Field(default=32, ge=1)
    validation_split: float | None = Field(default=None, gt=0, lt=1)
    shuffle: bool = True
    steps_per_epoch: int | None = Field(default=None, ge=1)
    verbose: Literal[0, 1, 2] = 2


class _Monitored(_Strict):
    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"

    @model_validator(mode="after")
    def _mode_agrees(self) -> _Monitored:
        base = self.monitor.removeprefix("val_")
        try:
            natural = infer_mode(self.monitor)
        except ConfigurationError:
            if self.mode == "auto" and base not in MAXIMISED_METRICS:
                raise ValueError(
                    f"cannot tell whether {shown(self.monitor)} should be minimised or maximised; "
                    "set mode: min or mode: max"
                ) from None
            return self
        if self.mode != "auto" and self.mode != natural:
            raise ValueError(
                f"monitor {shown(self.monitor)} is a metric to {'maximise' if natural == 'max' else 'minimise'}, "
                f"but mode is {self.mode!r}; use mode: {natural} (or auto)"
            )
        return self


class EarlyStoppingSettings(_Monitored):
    """``keras.callbacks.EarlyStopping``'s keyword arguments (passed through by name)."""

    patience: int = Field(default=5, ge=0)
    min_delta: float = Field(default=0.0, ge=0)
    baseline: float | None = None
    start_from_epoch: int = Field(default=0, ge=0)
    restore_best_weights: bool = True


class CheckpointSettings(_Monitored):
    """``keras.callbacks.ModelCheckpoint``'s keyword arguments, and the file name inside the run's folder."""

    save_best_only: bool = True
    save_weights_only: bool = False
    save_freq: Any = "epoch"  # or every N batches
    initial_value_threshold: float | None = None
    filename: str = "best.keras"  # may hold Keras' placeholders, e.g. "ckpt-{epoch:02d}.keras"

    @field_validator("save_freq")
    @classmethod
    def _save_freq(cls, value: Any) -> Any:
        if value == "epoch" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError(f"must be 'epoch' or a number of batches (1 or more); got {shown(value)}")

    @field_validator("filename")
    @classmethod
    def _inside_run_dir(cls, value: str) -> str:
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or not value.strip():
            raise ValueError(f"must be a relative path inside the run's directory; got {shown(value)}")
        if not (value.endswith(".keras") or value.endswith(".weights.h5") or value.endswith(".h5")):
            raise ValueError(
                f"must end in .keras (or .weights.h5 with save_weights_only); got {shown(value)}"
            )
        return value


class ReduceLRSettings(_Monitored):
    """``keras.callbacks.ReduceLROnPlateau``'s keyword arguments (passed through by name)."""

    factor: float = Field(default=0.1, gt=0, lt=1)
    patience: int = Field(default=10, ge=0)
    min_delta: float = Field(default=1e-4, ge=0)
    cooldown: int = Field(default=0, ge=0)
    min_lr: float = Field(default=0.0, ge=0)


class LRSchedule(_Strict):
    kind: Literal["step", "exponential", "cosine", "function"]
    fn: str | None = None  # for kind: function — "module:function(epoch, lr)"
    every: int | None = Field(default=None, ge=1)  # step
    factor: float | None = Field(default=None, gt=0)  # step / exponential
    total_epochs: int | None = Field(default=None, ge=1)  # cosine
    min_lr: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _complete(self) -> LRSchedule:
        needs = {"step": ("every", "factor"), "exponential": ("factor",), "cosine": (), "function": ("fn",)}[
            self.kind
        ]
        missing = [n for n in needs if getattr(self, n) is None]
        if missing:
            raise ValueError(f"lr_schedule kind {self.kind!r} needs {', '.join(missing)}")
        return self


class TensorBoardSettings(_Strict):
    """``keras.callbacks.TensorBoard``'s keyword arguments (passed through by name); the logs go to
    the run's ``tensorboard/`` folder. ``tensorboard: true`` means these defaults."""

    histogram_freq: int = Field(default=0, ge=0)
    write_graph: bool = True
    write_images: bool = False
    write_steps_per_second: bool = False
    update_freq: Literal["epoch", "batch"] | int = "epoch"
    profile_batch: int | list[int] = 0
    embeddings_freq: int = Field(default=0, ge=0)

    @field_validator("update_freq")
    @classmethod
    def _update_freq(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise ValueError(f"must be 'epoch', 'batch' or a number of batches (1 or more); got {value!r}")
        return value

    @field_validator("profile_batch")
    @classmethod
    def _profile_batch(cls, value: Any) -> Any:
        if isinstance(value, list) and (len(value) != 2 or value[0] < 1 or value[1] < value[0]):
            raise ValueError(f"must be 0 (off), a batch number, or [first, last] batches; got {value!r}")
        return value


class ExtraCallback(_Strict):
    cls: str = Field(alias="class")
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("cls")
    @classmethod
    def _shape(cls, value: str) -> str:
        return check_reference_shape(value, "ClassName")


class PromoteSettings(_Strict):
    """When and how a run's best checkpoint goes to the model store."""

    on_early_stop: bool = True
    on_complete: bool = False
    force: bool = False  # move `champion` even if not better
    name: str | None = None  # model name; default: the job's name
    #: Save the model EarlyStopping restored to its best weights at the end of training (promoted
    #: when no ModelCheckpoint file can be).
    save_restored_model: bool = True


class JobSpec(_Strict):
    """A training job. See the module docstring for the file format."""

    name: str = Field(min_length=1, max_length=200)
    model: CallableRef
    data: CallableRef
    fit: FitSettings = Field(default_factory=FitSettings)
    early_stopping: EarlyStoppingSettings | None = Field(default_factory=EarlyStoppingSettings)
    checkpoint: CheckpointSettings | None = Field(default_factory=CheckpointSettings)
    reduce_lr: ReduceLRSettings | None = None
    lr_schedule: LRSchedule | None = None
    terminate_on_nan: bool = True
    csv_log: bool = True
    tensorboard: TensorBoardSettings | None = None
    callbacks: list[ExtraCallback] = Field(default_factory=list)
    batch_events_every: int | None = Field(default=None, ge=1)
    queue: str = "gpu"
    tags: dict[str, str] = Field(default_factory=dict)
    #: Alert rules for this job only, in the rules-file format; channels come from
    #: FITSTREAM_ALERT_RULES. Checked by `fitstream submit` (see workers/submit.py).
    alerts: list[dict[str, Any]] = Field(default_factory=list)
    promote: PromoteSettings = Field(default_factory=PromoteSettings)
    #: Seeds Python, NumPy and the backend and turns on TensorFlow's op determinism: the same job
    #: trains the same, also when it is resumed after its training process was killed.
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)

    @field_validator("model", "data", mode="before")
    @classmethod
    def _callable(cls, value: Any) -> Any:
        return _callable_ref(value)

    @field_validator("alerts", mode="before")
    @classmethod
    def _yaml_on_keys(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `on:` key (lifecycle rules) as the boolean true.
        if isinstance(value, list):
            return [
                {("on" if k is True else k): v for k, v in r.items()} if isinstance(r, dict) else r
                for r in value
            ]
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[\w.:-]+( [\w.:-]+)*", value):
            raise ValueError(f"use letters, digits, '_', '-', '.', ':' and single spaces; got {shown(value)}")
        return value

    @field_validator("queue")
    @classmethod
    def _queue(cls, value: str) -> str:
        if not QUEUE_NAME.match(value):
            raise ValueError(f"not a valid queue name: {shown(value)}")
        return value

    @field_validator("early_stopping", "checkpoint", "reduce_lr", "tensorboard", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        # `early_stopping: true` means the defaults; `false` turns it off.
        if value is True:
            return {}
        if value is False:
            return None
        return value

    def monitored(self) -> list[tuple[str, str]]:
        """(section, metric) for each monitoring callback, to check against the model's logs."""
        return [
            (section, getattr(self, section).monitor)
            for section in ("early_stopping", "checkpoint", "reduce_lr")
            if getattr(self, section) is not None
        ]
