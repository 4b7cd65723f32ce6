"""The event types of schema version 1: the envelope every event shares, one pydantic model per
type, the :data:`Event` union that decoding validates against, and the run statuses, directions
and checkpoint sources those types use.

Producers and consumers import all of this from :mod:`pipeline.events`, which re-exports it beside
the encoding and decoding (see that module for the wire format and its rules).

Example:
    >>> RunFailed(id="e1", run_id="r1", seq=9, ts=0.0, error_type="OSError", message="disk full").v
    1
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.params import ParamValue

SCHEMA_VERSION = 1
#: 9999-12-31 23:59:59 UTC: the last second a timestamp column (and a Python datetime) can hold.
MAX_TS = 253_402_300_799.0

RunStatus = Literal["completed", "early_stopped", "failed", "cancelled", "pruned"]
#: Every status a run can have, in the order a run moves through them, and the terminal ones.
#: ``pruned``: a sweep trial stopped early because it fell behind its sweep (see pipeline.pruning).
RUN_STATUSES = ("queued", "running", "completed", "early_stopped", "failed", "cancelled", "pruned")
TERMINAL_STATUSES = ("completed", "early_stopped", "failed", "cancelled", "pruned")
#: A run that trained to its own end: what `submit --wait` and `watch` exit 0 for.
SUCCESSFUL_STATUSES = ("completed", "early_stopped")
#: Terminal statuses of a run that did not train to its own end: nothing of it is promoted.
STOPPED_FROM_OUTSIDE = ("cancelled", "pruned")
Mode = Literal["min", "max"]
#: Where a checkpoint file came from: a ModelCheckpoint, or the model EarlyStopping restored
#: to its best weights, saved once at the end of training.
CheckpointSource = Literal["model_checkpoint", "early_stopping_restore"]


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The integer 1: not 1.0, not true (``Literal[1]`` would take both, as equal to 1).
    v: int = Field(default=SCHEMA_VERSION, ge=SCHEMA_VERSION, le=SCHEMA_VERSION, strict=True)
    id: str = Field(min_length=1, max_length=64)
    run_id: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0)
    ts: float = Field(
        ge=0,
        le=MAX_TS,
        allow_inf_nan=False,
        description="Unix time (seconds) at which the event happened: 1970 to 9999.",
    )


class MonitoringCallback(BaseModel):
    """Settings of one of Keras' monitoring callbacks, as reported in ``run_started``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["early_stopping", "model_checkpoint", "reduce_lr_on_plateau"]
    monitor: str
    mode: str
    settings: dict[str, Any] = Field(default_factory=dict)


class SweepTrial(BaseModel):
    """Which sweep a queued run is a trial of (see pipeline.sweeps). The first trial's event
    carries the sweep's own section too, so that the recorder can write the ``sweeps`` row."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=64)
    name: str
    trial: int = Field(ge=0)
    trials: int = Field(ge=1)
    spec: dict[str, Any] | None = None


class RunQueued(_Event):
    """A job was accepted and queued (published by ``fitstream submit``)."""

    type: Literal["run_queued"] = "run_queued"
    name: str
    queue: str
    spec: dict[str, Any] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    params: dict[str, ParamValue] = Field(default_factory=dict, description="See pipeline.params.")
    sweep: SweepTrial | None = None


class RunStarted(_Event):
    type: Literal["run_started"] = "run_started"
    name: str
    model_name: str | None = None
    params_count: int | None = None
    optimizer: dict[str, Any] | None = None
    epochs: int | None = None
    steps_per_epoch: int | None = None
    batch_size: int | None = None
    monitor: str | None = None
    mode: Mode | None = None
    callbacks: list[MonitoringCallback] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)
    host: str | None = None
    pid: int | None = None
    data_fingerprint: str | None = Field(default=None, max_length=80, description="See pipeline.fingerprint.")
    params: dict[str, ParamValue] = Field(default_factory=dict, description="See pipeline.params.")


class EpochEnd(_Event):
    type: Literal["epoch_end"] = "epoch_end"
    epoch: int = Field(ge=0, description="Counted from 0, as Keras counts.")
    metrics: dict[str, float | None]
    learning_rate: float | None = None
    wall_time_s: float | None = None
    steps: int | None = None
    samples_per_second: float | None = None
    steps_per_second: float | None = None


class BatchEnd(_Event):
    type: Literal["batch_end"] = "batch_end"
    epoch: int = Field(ge=0)
    batch: int = Field(ge=0, description="Counted from 0 within the epoch.")
    step: int | None = Field(
        default=None, ge=0, description="Counted from 0 across epochs (batch_metrics' step)."
    )
    metrics: dict[str, float | None]


class CheckpointSaved(_Event):
    type: Literal["checkpoint_saved"] = "checkpoint_saved"
    path: str
    epoch: int = Field(ge=0)
    monitor: str | None = None
    value: float | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    mode: Mode | None = Field(
        default=None, description="The direction the saving callback used for `monitor`."
    )
    source: CheckpointSource = "model_checkpoint"
    batch: int | None = Field(
        default=None, ge=0, description="Set for a batch-level checkpoint (save_freq=N)."
    )


class LearningRateChanged(_Event):
    type: Literal["lr_changed"] = "lr_changed"
    epoch: int = Field(ge=0)
    old: float
    new: float
    reason: str | None = None
    monitor: str | None = None
    mode: Mode | None = None


class EarlyStopped(_Event):
    type: Literal["early_stopped"] = "early_stopped"
    stopped_epoch: int = Field(ge=0)
    best_epoch: int = Field(ge=0)
    best_value: float | None
    monitor: str
    mode: Mode
    patience: int | None = None
    min_delta: float | None = None
    restore_best_weights: bool = False


class RunFinished(_Event):
    type: Literal["run_finished"] = "run_finished"
    status: RunStatus
    epochs_completed: int = Field(ge=0)
    wall_time_s: float | None = None
    best_epoch: int | None = None
    best_value: float | None = None
    monitor: str | None = None
    mode: Mode | None = None
    restored_best_weights: bool = False
    reason: str | None = Field(
        default=None, max_length=2000, description="Why a run was cancelled or pruned."
    )


class RunFailed(_Event):
    type: Literal["run_failed"] = "run_failed"
    error_type: str
    message: str
    traceback: str | None = None


class ModelPromoted(_Event):
    """A run's best checkpoint became a model version (published by the promoter)."""

    type: Literal["model_promoted"] = "model_promoted"
    name: str
    version: int = Field(ge=1)
    epoch: int | None = None
    metric: str | None = None
    mode: Mode | None = None
    value: float | None = None
    aliases: list[str] = Field(default_factory=list)
    champion: bool = False
    previous_champion_version: int | None = None
    previous_champion_value: float | None = None
    source: CheckpointSource | None = None
    champion_reason: str | None = Field(
        default=None, description="Why `champion` did not move, when it did not."
    )


class PromotionSkipped(_Event):
    type: Literal["promotion_skipped"] = "promotion_skipped"
    name: str | None = None
    reason: str


Event = Annotated[
    RunQueued
    | RunStarted
    | EpochEnd
    | BatchEnd
    | CheckpointSaved
    | LearningRateChanged
    | EarlyStopped
    | RunFinished
    | RunFailed
    | ModelPromoted
    | PromotionSkipped,
    Field(discriminator="type"),
]
EVENT_TYPES: tuple[str, ...] = (
    "run_queued",
    "run_started",
    "epoch_end",
    "batch_end",
    "checkpoint_saved",
    "lr_changed",
    "early_stopped",
    "run_finished",
    "run_failed",
    "model_promoted",
    "promotion_skipped",
)
