"""The pruner's own state in SQL: the sweep trials it follows (``pruner_trials``) and their
monitored value per epoch (``pruner_values``). Every function takes the pruner's open connection,
so one batch of events is one transaction; trials come back as :class:`PrunerTrial` entities.

Example:
    >>> with transaction(engine) as conn:                      # doctest: +SKIP
    ...     trial = get_trial(conn, "run-1")
    ...     finished_values(conn, trial.sweep_id, 3, counted=("completed",))
    [0.41, 0.39]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pipeline.db import bulk
from pipeline.db.models import SqlPrunerTrial

_TRIALS = SqlPrunerTrial.__table__
_FINISHED_VALUES = sa.text(
    "SELECT v.value FROM pruner_values v JOIN pruner_trials t ON t.run_id = v.run_id "
    "WHERE t.sweep_id = :sweep AND v.epoch = :epoch AND t.status IN :counted"
).bindparams(sa.bindparam("counted", expanding=True))


@dataclass(frozen=True)
class PrunerTrial:
    """A sweep trial the pruner follows: how it is judged, and where it stands."""

    run_id: str
    sweep_id: str
    status: str  # queued, running, pruning, then the run's final status
    warmup_epochs: int
    min_trials: int
    monitor: str | None
    mode: str | None


def add_trial(conn: Connection, trial: PrunerTrial) -> None:
    """Follow a queued trial (once: a redelivered ``run_queued`` changes nothing)."""
    insert = bulk.upsert_insert(conn, _TRIALS)
    conn.execute(insert.on_conflict_do_nothing(index_elements=["run_id"]), [asdict(trial)])


def get_trial(conn: Connection, run_id: str) -> PrunerTrial | None:
    row = conn.execute(sa.select(_TRIALS).where(_TRIALS.c.run_id == run_id)).first()
    return None if row is None else PrunerTrial(**row._mapping)


def start_trial(conn: Connection, run_id: str, *, monitor: str, mode: str | None) -> None:
    """The trial's monitor and mode as it starts; a queued trial becomes running."""
    conn.execute(
        sa.update(_TRIALS)
        .where(_TRIALS.c.run_id == run_id)
        .values(
            monitor=monitor,
            mode=mode,
            status=sa.case((_TRIALS.c.status == "queued", "running"), else_=_TRIALS.c.status),
        )
    )


def set_trial_status(conn: Connection, run_id: str, status: str) -> None:
    conn.execute(sa.update(_TRIALS).where(_TRIALS.c.run_id == run_id).values(status=status))


def record_value(conn: Connection, trial: PrunerTrial, epoch: int, value: float) -> None:
    """The trial's monitored value at ``epoch`` (the first one recorded wins)."""
    bulk.insert_ignore(
        conn,
        "pruner_values",
        ("run_id", "epoch", "sweep_id", "value"),
        [(trial.run_id, epoch, trial.sweep_id, value)],
    )


def finished_values(conn: Connection, sweep_id: str, epoch: int, *, counted: Sequence[str]) -> list[float]:
    """The values at ``epoch`` of the sweep's trials that ended with a status in ``counted``."""
    result = conn.execute(_FINISHED_VALUES, {"sweep": sweep_id, "epoch": epoch, "counted": list(counted)})
    return list(result.scalars().all())
