"""Plain records handed out by the query layer (never ORM rows)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Run:
    run_id: str
    name: str | None
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    epochs_completed: int
    best_epoch: int | None
    stopped_epoch: int | None
    monitor: str | None
    best_value: float | None
    mode: str | None = None
    model_name: str | None = None
    params_count: int | None = None
    wall_time_s: float | None = None
    error_type: str | None = None
    error_message: str | None = None
    data_fingerprint: str | None = None
    status_reason: str | None = None
    sweep_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of a run: Keras' logged metrics plus what the publisher measured."""

    epoch: int
    metrics: dict[str, float | None]
    learning_rate: float | None = None
    wall_time_s: float | None = None
    samples_per_second: float | None = None


@dataclass(frozen=True)
class RunDetail:
    run: Run
    epochs: list[EpochRecord] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
